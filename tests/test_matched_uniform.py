"""With calibration data, ShareWeightsPass replaces a k-means codebook by the uniform one of fewest values that
matches its error, when that record is smaller (share_weights._matched_uniform; branch cal11a)."""

from types import SimpleNamespace

import numpy as np
import onnx

import onnxcomp
from onnxcomp.core import outliers, sidecar
from onnxcomp.passes import share_weights

from conftest import budget_mlp


def _matmul_target(shape, bits, keep=None):
    """The attributes _matched_uniform and output_rows read, for a MatMul B [K, N] (outputs on axis 1)."""
    return SimpleNamespace(name="w", shape=shape, keep=keep, bits=bits, layer_input=None,
                           uses=[(SimpleNamespace(op="MatMul", attrs={}), 1)])


def _record_bytes(shared, shape):
    bits = max(1, int(np.ceil(np.log2(len(shared.codebook)))))
    return len(sidecar.encode_record(shared.codebook, shared.indices, shape, bits, shared.positions, shared.values))


def test_matched_uniform_codebook_keeps_the_kmeans_error_in_fewer_bytes(rng):
    """On heavy-tailed weights (Student's t with 5 degrees of freedom, as trained matrices are) at 3-6 bits, with input energies as importance,
    pruned and not: in most cases the uniform codebook chosen has no larger weighted error and worst-channel error than the k-means
    one it replaces and a smaller record (estimated and as encoded); one value fewer (same outliers) would not match (the
    bisection stops where the test turns)."""
    share = share_weights.ShareWeightsPass(matched_uniform=True)
    shape = (256, 96)
    w = (rng.standard_t(5, shape) * 0.05).astype(np.float32)
    importance = rng.exponential(size=shape[0])
    won = []
    for keep in (None, np.abs(w) > np.quantile(np.abs(w), 0.5)):
        for bits in (3, 4, 5, 6):
            target = _matmul_target(shape, bits, keep)
            rows = share_weights.output_rows(target)
            kmeans = outliers.share(w, keep, bits, rows=rows, importance=importance)
            chosen = share._matched_uniform(target, w, kmeans, importance, {})
            pruned = keep is not None
            if chosen is kmeans:  # no uniform codebook matched it at least MATCHED_GAIN smaller
                assert target.bits == bits
                won.append(False)
                continue
            won.append(True)
            if pruned:
                assert chosen.codebook[0] == 0 and np.all(chosen.indices[~keep.ravel()] == 0)
            assert chosen.error <= kmeans.error and chosen.damage <= kmeans.damage
            assert chosen.estimated_bytes < kmeans.estimated_bytes
            assert _record_bytes(chosen, shape) < _record_bytes(kmeans, shape)
            assert target.bits == int(np.ceil(np.log2(len(chosen.codebook))))
            levels = len(chosen.codebook) - pruned
            fraction = len(chosen.positions) / (w.size if keep is None else np.count_nonzero(keep))
            fewer = outliers.share(w, keep, bits + 1, option=fraction, levels=levels - 1, rows=rows,
                                   importance=importance)
            assert len(fewer.positions) == len(chosen.positions)
            assert fewer.error > kmeans.error or fewer.damage > kmeans.damage
            # the error it reports is the weighted error of the weight it decodes to
            decoded = chosen.codebook[chosen.indices].astype(np.float64)
            decoded[chosen.positions] = chosen.values
            reference = w if keep is None else np.where(keep, w, 0)
            direct = ((decoded.reshape(shape) - reference) ** 2 * importance[:, None]).sum()
            np.testing.assert_allclose(chosen.error, direct, rtol=1e-9)
    assert sum(won[:4]) >= 3 and sum(won[4:]) >= 2  # most: a pruned weight's kept values leave a gap around 0


def test_kmeans_is_kept_when_no_uniform_codebook_matches_it(rng):
    """Values in a few tight, unevenly spaced clusters: 3-bit k-means puts one value on each, and no uniform grid
    of up to 15 values comes near its error, so the k-means share itself is returned and the bits stay."""
    centres = np.array([-1.0, -0.93, 0.31, 0.33, 2.0, 5.0], np.float32)
    w = (centres[rng.integers(0, len(centres), (64, 48))] + rng.normal(0, 1e-4, (64, 48))).astype(np.float32)
    target = _matmul_target(w.shape, 3)
    kmeans = outliers.share(w, None, 3, option=0.0, rows=share_weights.output_rows(target))
    chosen = share_weights.ShareWeightsPass(matched_uniform=True)._matched_uniform(target, w, kmeans, None, {})
    assert chosen is kmeans and target.bits == 3


def test_calibrated_compress_writes_smaller_records_at_the_same_settings(tmp_path, monkeypatch):
    """compress with --calib at 4 bits (OBS rounding and the codebook refit after the codebook's choice): uniform
    codebooks where they match, a smaller sidecar than with k-means alone (MATCHED_UNIFORM off), the same bytes
    twice, and an output error on the calibration inputs within 10 % of k-means's; the data-free path is unchanged
    (no calibration data: the flag is off)."""
    _, data = budget_mlp(tmp_path, np.random.default_rng(5))
    x = np.load(data)["x"]
    reference = onnxcomp.InferenceSession(str(tmp_path / "in.onnx")).run(None, {"x": x})[0]
    written, errors, reports = {}, {}, {}
    for matched in (True, False, True):
        monkeypatch.setattr(share_weights, "MATCHED_UNIFORM", matched)
        folder = tmp_path / f"{matched}-{len(written)}"
        folder.mkdir()
        reports[matched] = onnxcomp.compress(tmp_path / "in.onnx", folder / "out.onnx", calib=str(data), bits=4,
                                             min_elements=1, fidelity=False)
        side = (folder / "out.onnxcomp").read_bytes()
        if matched in written:
            assert side == written[matched]  # deterministic
        written[matched] = side
        output = onnxcomp.InferenceSession(str(folder / "out.onnx")).run(None, {"x": x})[0]
        errors[matched] = np.linalg.norm(output - reference) / np.linalg.norm(reference)
    assert len(written[True]) < len(written[False])
    assert any(layer.codebook_size > 16 for layer in reports[True].layers)
    assert all(layer.codebook_size <= 16 for layer in reports[False].layers)
    assert errors[True] <= 1.1 * errors[False]
    for matched in (True, False):  # the defaults, no calibration data: the same output either way
        monkeypatch.setattr(share_weights, "MATCHED_UNIFORM", matched)
        folder = tmp_path / f"free-{matched}"
        folder.mkdir()
        onnxcomp.compress(tmp_path / "in.onnx", folder / "out.onnx", min_elements=1, fidelity=False)
        written[f"free-{matched}"] = (folder / "out.onnxcomp").read_bytes()
    assert written["free-True"] == written["free-False"]
    assert onnx.load(str(tmp_path / "in.onnx")) is not None


def test_only_weights_with_layer_statistics_or_gather_tables_take_matched_codebooks(tmp_path, monkeypatch):
    """Under --calib at 4 bits: a Gather table (its row errors are its output error; matched on the summed error
    alone) and a MatMul weight (calibration statistics) take uniform codebooks, a table added to the activations (kind "other": no statistics, its squared
    error says nothing of the output's) keeps its k-means codebook of at most 16 values."""
    from onnx import TensorProto, helper
    from conftest import make_model, float_input
    rng = np.random.default_rng(11)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]), helper.make_node("Add", ["e", "shift"], ["s"]),
             helper.make_node("MatMul", ["s", "w"], ["y"])]
    tensors = [onnx.numpy_helper.from_array((rng.standard_t(5, shape) * 0.05).astype(np.float32), name)
               for name, shape in (("table", (400, 32)), ("shift", (8, 32)), ("w", (32, 48)))]
    model = make_model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 8])],
                       [float_input("y", ["n", 8, 48])], tensors)
    onnx.save(model, tmp_path / "in.onnx")
    np.savez(tmp_path / "calib.npz", ids=rng.integers(0, 400, (64, 8)).astype(np.int64))
    monkeypatch.setattr(share_weights, "MATCHED_UNIFORM", True)
    report = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", calib=str(tmp_path / "calib.npz"), bits=4,
                               min_elements=1, fidelity=False)
    sizes = {layer.name: layer.codebook_size for layer in report.layers}
    assert sizes["table"] > 16 and sizes["w"] > 16 and sizes["shift"] <= 16
