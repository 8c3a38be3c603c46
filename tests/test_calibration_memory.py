"""Calibration in bounded memory: batches sized by the activations' bytes, the sequential walk's frontier on disk."""

import functools
import os
import tempfile

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxcomp
from onnxcomp.passes import calibration, compress_sequentially
from onnxcomp.passes.calibration import BatchStore
from onnxcomp.passes.compress_sequentially import CompressSequentiallyPass
from onnxcomp.pipeline import compression

from conftest import float_input, make_model, weight
from test_calibration import _branching_convs


def _conv_relu(rng, batch="n"):
    """x [batch, 3, 8, 8] -> Conv (8 channels, same padding) -> Relu: per sample 768 input bytes, 2 x 2,048 produced."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    return make_model(nodes, [float_input("x", [batch, 3, 8, 8])], [float_input("y", [batch, 8, 8, 8])],
                      [weight(rng, "w", (8, 3, 3, 3))])


def test_activation_bytes_sums_every_value_a_run_produces(rng):
    model = _conv_relu(rng)
    x = rng.standard_normal((5, 3, 8, 8)).astype(np.float32)
    assert calibration.activation_bytes(model, {"x": x[:1]}) == 3 * 64 * 4 + 2 * 8 * 64 * 4
    assert calibration.activation_bytes(model, {"x": x}) == 5 * (3 * 64 * 4 + 2 * 8 * 64 * 4)


def test_bounded_batch_fits_the_limit_and_keeps_a_batch_that_fits(rng):
    model = _conv_relu(rng)
    data = {"x": rng.standard_normal((40, 3, 8, 8)).astype(np.float32)}
    one = 3 * 64 * 4 + 2 * 8 * 64 * 4
    axes = {"x": 0}
    assert calibration.bounded_batch(model, data, axes, 32, limit=32 * one) == 32  # fits: the requested batch
    assert calibration.bounded_batch(model, data, axes, 32, limit=10 * one + 1) == 10
    assert calibration.bounded_batch(model, data, axes, 32, limit=10 * one, runs=2) == 5  # two models per batch
    assert calibration.bounded_batch(model, data, axes, 32, limit=1) == 1  # never below one sample
    fixed = _conv_relu(rng, batch=4)  # a batch the model fixes is kept whatever it costs
    assert calibration.bounded_batch(fixed, data, axes, 4, limit=1) == 4


def test_collect_in_bounded_batches_gives_the_statistics_of_whole_batches(monkeypatch, rng):
    """The same rows and samples; the sums agree to float64 rounding (their order changes with the batches)."""
    model = _conv_relu(rng)
    data = {"x": rng.standard_normal((12, 3, 8, 8)).astype(np.float32)}
    layers = {"w": calibration.LayerInput("x", "conv", (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))}
    whole = calibration.collect(model, layers, data, batch=12)["w"]
    runs = []
    real = calibration._session

    def counting(*args, **kwargs):  # count the batches the statistics' session runs
        session = real(*args, **kwargs)
        original_run = session.run
        session.run = lambda *a, **k: runs.append(len(a[1]["x"])) or original_run(*a, **k)
        return session
    monkeypatch.setattr(calibration, "_session", counting)
    monkeypatch.setattr(calibration, "ACTIVATION_BYTES", 5 * (3 * 64 * 4 + 2 * 8 * 64 * 4))
    bounded = calibration.collect(model, layers, data, batch=12)["w"]
    assert runs[1:] == [5, 5, 2]  # the first run is activation_bytes' one sample
    assert (bounded.rows, bounded.samples) == (whole.rows, whole.samples)
    np.testing.assert_allclose(bounded.gram, whole.gram, rtol=1e-12)
    np.testing.assert_allclose(bounded.sum_squares, whole.sum_squares, rtol=1e-12)


def test_batch_store_gives_back_the_same_bytes_from_disk_and_removes_its_folder(monkeypatch, tmp_path, rng):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    store = BatchStore(3, limit=50)  # batch 0 first takes 29 bytes (memory), the others 97 each
    values = [{"a": rng.standard_normal((2, 5)).astype(np.float32), "b/c:0": np.arange(7, dtype=np.int64),
               "flag": np.array(True)} for _ in range(3)]
    for b, v in enumerate(values):
        store.put(b, {k: a[:1] if a.ndim else a for k, a in v.items()} if b == 0 else v)  # batch 0: memory; 1, 2: disk
    assert store.types()["a"].shape == (0, 5) and store.types()["flag"].shape == () and 0 in store.memory
    store.put(0, values[0])  # replaced: now over the limit too
    assert store.held == 0 and sorted(store.on_disk) == [0, 1, 2]
    folder = store.folder
    assert len(os.listdir(folder)) == 9  # the replaced batch's files are gone
    for b, v in enumerate(values):
        got = store.get(b)
        assert got.keys() == v.keys() and all(got[k].dtype == v[k].dtype and got[k].tobytes() == v[k].tobytes() for k in v)
    assert store.types()["a"].dtype == np.float32 and store.types()["a"].shape == (0, 5)
    assert store.types()["flag"].dtype == bool and store.types()["flag"].shape == ()
    store.close()
    assert not os.path.exists(folder)


def _branching_convs_saved(monkeypatch, tmp_path, rng):
    """test_calibration's branching convs as in.onnx, 9 calibration samples as calib.npz, temporary folders in a
    folder of the test's (returned)."""
    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))
    onnx.save(_branching_convs(rng), tmp_path / "in.onnx")
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((9, 3, 8, 8)).astype(np.float32))
    return spill


def _sequential(tmp_path, name, frontier_bytes, **options):
    compression_pass = functools.partial(CompressSequentiallyPass, frontier_bytes=frontier_bytes)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compression, "CompressSequentiallyPass", compression_pass)
        (tmp_path / name).mkdir()
        onnxcomp.compress(tmp_path / "in.onnx", tmp_path / name / "out.onnx", calib=str(tmp_path / "calib.npz"),
                          sequential=True, fidelity=False, **options)
    return (tmp_path / name / "out.onnx").read_bytes() + (tmp_path / name / "out.onnxcomp").read_bytes()


def test_sequential_walk_with_its_frontier_on_disk_writes_the_same_bytes(monkeypatch, tmp_path, rng):
    """Branches, a skip connection and several batches (9 samples in batches of 4): the frontier kept on disk
    (limit 0: every batch) or half on disk gives the bytes of the walk that keeps it in memory; the folder is
    gone afterwards."""
    spill = _branching_convs_saved(monkeypatch, tmp_path, rng)
    options = dict(prune="activation", sparsity=0.5, bits=3, min_elements=16, calib_batch=4)
    spilled = []
    real_put = BatchStore.put

    def put(store, b, values):
        real_put(store, b, values)
        if values:  # an empty frontier takes no bytes: memory
            spilled.append(b in store.on_disk)
    monkeypatch.setattr(BatchStore, "put", put)
    in_memory = _sequential(tmp_path, "memory", compress_sequentially.FRONTIER_BYTES, **options)
    assert not any(spilled)
    spilled.clear()
    on_disk = _sequential(tmp_path, "disk", 0, **options)
    assert all(spilled) and len(spilled) > 0
    spilled.clear()
    one_batch = 2 * 8 * 64 * 4 * 4  # about one batch's frontier ([4, 8, 8, 8] float32, a tensor or two): some spill
    part = _sequential(tmp_path, "part", 2 * one_batch, **options)
    assert any(spilled) and not all(spilled)
    assert on_disk == in_memory and part == in_memory
    assert os.listdir(spill) == []


def test_the_frontier_folder_is_removed_when_the_pass_is_interrupted(monkeypatch, tmp_path, rng):
    """SystemExit (what the CLI makes of SIGTERM) in the middle of the layers: no folder left behind."""
    spill = _branching_convs_saved(monkeypatch, tmp_path, rng)
    seen = []
    real = compress_sequentially._settings_of

    def interrupted(target):
        seen.append(os.listdir(spill))
        if len(seen) == 3:
            raise SystemExit(143)
        return real(target)
    monkeypatch.setattr(compress_sequentially, "_settings_of", interrupted)
    with pytest.raises(SystemExit):
        _sequential(tmp_path, "stopped", 0, prune="activation", sparsity=0.5, bits=3, min_elements=16,
                    calib_batch=4)
    assert seen[-1]  # the frontier was on disk when it stopped
    assert os.listdir(spill) == []


def test_budget_trials_with_their_boundary_values_on_disk_give_the_same_output(monkeypatch, tmp_path, rng):
    """A weight's downstream runs (autotune._Downstream) in batches of 16 with every batch's boundary values on disk
    (DOWNSTREAM_BYTES 0) give the whole model's output bit for bit, and close() removes the folder."""
    from onnxcomp.pipeline import autotune
    from test_budget import budget_mlp
    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))
    monkeypatch.setattr(autotune, "DOWNSTREAM_BYTES", 0)
    model, data = budget_mlp(tmp_path, rng)
    x = {"x": np.load(data)["x"]}
    reference = calibration.run_batched(autotune._session(model), x)[0]
    w2 = onnx.numpy_helper.to_array(model.graph.initializer[1])
    whole = autotune._session(autotune._weight_as_input(model, "w2"))
    suffix = autotune._Downstream(model, "w2", w2, x, reference, whole, 1, batch=16)
    assert suffix.session is not None and suffix.parts.batches == -(-len(x["x"]) // 16) > 1
    assert sorted(suffix.parts.on_disk) == list(range(suffix.parts.batches))
    trial = (w2 * (1 + 0.1 * rng.standard_normal(w2.shape))).astype(np.float32)
    np.testing.assert_array_equal(suffix.run(trial), calibration.run_batched(whole, x, extra={"w2": trial})[0])
    suffix.close()
    assert os.listdir(spill) == []


def test_fidelity_on_many_samples_runs_in_bounded_batches(monkeypatch, tmp_path, rng):
    """40 samples (more than fidelity.SAMPLES) with a bound of 12 samples' values per model: both models run in
    batches of at most 12, and the figures are those of one whole batch (the same outputs per sample)."""
    from onnxcomp.pipeline import fidelity
    onnx.save(_conv_relu(rng), tmp_path / "in.onnx")
    onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", min_elements=16, bits=3, fidelity=False)
    feeds = [{"x": rng.standard_normal((40, 3, 8, 8)).astype(np.float32)}]
    whole = fidelity.compare_runs(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), feeds, "calibration").to_dict()
    sizes = []
    real = fidelity.run_batched

    def recorded(session, feed, batch=256, *args, **kwargs):
        sizes.append(batch)
        return real(session, feed, batch, *args, **kwargs)
    monkeypatch.setattr(fidelity, "run_batched", recorded)
    monkeypatch.setattr(calibration, "ACTIVATION_BYTES", 2 * 12 * (3 * 64 * 4 + 2 * 8 * 64 * 4))  # two models
    bounded = fidelity.compare_runs(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), feeds, "calibration").to_dict()
    assert sizes == [12, 12]
    assert bounded == whole
