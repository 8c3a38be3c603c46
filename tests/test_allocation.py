"""The data-free allocation (onnxcomp/core/allocation.py): its error measures agree with the real codebooks,
it picks the known optimum on synthetic tensors, and a tensor with extreme outliers stays accurate at the
default CLI settings."""

import json
import os

import numpy as np
import onnx
import pytest
from onnx import helper

from conftest import float_input, make_model, run_compressed, run_plain
from onnxcomp.core import allocation, codebook

import onnxcomp


def measured(w, sparsity, bits, fraction, levels=0):
    """e2 and einf of the candidate computed directly: mask, outliers, Lloyd from quantile starts, nearest centroid
    (``levels``: the pipeline's uniform codebook of that many values)."""
    if levels:
        from onnxcomp.core import outliers
        shared = outliers.share(w, np.ones(w.size, bool), bits, option=fraction, levels=levels)
        decoded = shared.codebook[shared.indices]
        decoded[shared.positions] = w[shared.positions]  # the proxy takes outliers as exact
        return np.linalg.norm(w - decoded) / np.linalg.norm(w), np.abs(w - decoded).max() / np.abs(w).max()
    order = np.sort(np.abs(w))
    pruned = int(round(sparsity * w.size))
    keep = np.ones(w.size, bool) if not pruned else np.abs(w) > order[pruned - 1]
    count = int(round(fraction * keep.sum()))
    exact = np.zeros(w.size, bool)
    if count:
        exact[np.argsort(-np.abs(np.where(keep, w, 0)), kind="stable")[:count]] = True
    clustered = np.sort(w[keep & ~exact]).astype(np.float64)
    size = (1 << bits) - (1 if pruned else 0)
    start = np.unique(clustered[((np.arange(size) + 0.5) / size * len(clustered)).astype(int)])
    table = codebook.fit_codebook(w[keep & ~exact], size, start=start)
    decoded = np.where(keep, table[codebook.assign(w, table)], 0)
    decoded[exact] = w[exact]
    return np.linalg.norm(w - decoded) / np.linalg.norm(w), np.abs(w - decoded).max() / np.abs(w).max()


@pytest.mark.parametrize("tail", [1.0, 50.0])
def test_error_measures_match_a_direct_computation(rng, tail):
    """The prefix-sum errors equal those of the decoded tensor, with pruning and outliers."""
    w = rng.standard_normal(40_000).astype(np.float32)
    w[:8] *= tail
    found = allocation.candidates(w, bits=(3, 5), sparsities=(0.0, 0.5), outliers=(0.0, 0.01))
    assert any(c.levels for c in found) and any(not c.levels for c in found)
    for c in found:
        e2, einf = measured(w, c.sparsity, c.bits, c.outliers, c.levels)
        assert c.relative_l2 == pytest.approx(e2, rel=1e-3, abs=1e-6)
        assert c.max_relative == pytest.approx(einf, rel=1e-3, abs=1e-6)


def test_errors_are_close_to_the_pipelines_codebook(rng):
    """The proxy's codebook skips the pipeline's first k-means on a sample; on a plain tensor the errors agree."""
    w = rng.standard_normal(40_000).astype(np.float32)
    for c in allocation.candidates(w, bits=(3, 5), outliers=(0.0,)):
        table, indices = codebook.quantize(w, None, c.bits, levels=c.levels)
        assert c.relative_l2 == pytest.approx(np.linalg.norm(w - table[indices]) / np.linalg.norm(w), rel=0.1)


def test_size_estimate_is_close_to_the_record(rng):
    from onnxcomp.core import sidecar
    w = rng.standard_normal((200, 100)).astype(np.float32)
    for c in allocation.candidates(w, bits=(3, 6), outliers=(0.0,)):
        table, indices = codebook.quantize(w, None, c.bits, levels=c.levels)
        record = sidecar.encode_record(table, indices, w.shape, c.bits)
        assert c.bytes == pytest.approx(len(record), rel=0.1)


def test_picks_the_fewest_bits_that_represent_the_levels_exactly(rng):
    """A tensor of exactly 2^b distinct levels: b bits are exact, b - 1 bits are not; the rule picks b."""
    for b in (2, 4, 6):
        levels = np.linspace(-1, 1, 1 << b).astype(np.float32)
        w = rng.choice(levels, 50_000)
        choice = allocation.Allocator(w).choose(scale=0.01, dense_bytes=4 * w.size, uniform=False)  # only (nearly) exact qualifies
        assert (choice.bits, choice.sparsity, choice.outliers) == (b, 0.0, 0.0)
        assert choice.relative_l2 < 1e-6 and choice.max_relative < 1e-6


def test_picks_the_smallest_acceptable_among_all_candidates(rng):
    """The lazy walk equals a brute force over the whole grid: no acceptable candidate is smaller than the choice
    (uniform codebooks of every count from 2 to MAX_LEVELS included)."""
    w = rng.laplace(size=30_000).astype(np.float32)
    options = allocation.candidates(w, sparsities=(0.0, 0.3, 0.5), levels=range(2, allocation.MAX_LEVELS + 1))
    kmeans = [c for c in options if not c.levels]
    for scale in (1.0, 0.5, 0.25):
        acceptable = [c for c in options if c.proxy() <= scale]
        brute = min(acceptable, key=lambda c: c.bytes, default=None)
        assert allocation.choose(options, scale) == brute
        assert allocation.Allocator(w, sparsities=(0.0, 0.3, 0.5)).choose(scale) == brute
        brute = min([c for c in kmeans if c.proxy() <= scale], key=lambda c: c.bytes, default=None)
        assert allocation.Allocator(w, sparsities=(0.0, 0.3, 0.5)).choose(scale, uniform=False) == brute
    assert allocation.choose(options, 1e-6) is None  # nothing that close: the weight stays dense


def test_worst_case_error_rejects_what_mean_error_accepts(rng):
    """Three weights 9-12 sigma out in a Gaussian: at 4 bits without outliers the relative L2 error is 12 % but
    the largest weight is off by over 70 % of its value. A mean-error rule takes that; the worst-case term
    rejects it and keeps the large weights exact instead."""
    w = rng.standard_normal(40_000).astype(np.float32)
    w[:3] = [9.0, 12.0, -10.5]
    options = allocation.candidates(w, outliers=(0.0, 0.002), levels=())  # k-means: a uniform grid keeps the max
    mean_only = allocation.choose(options, l2_limit=0.12, max_limit=np.inf)
    assert (mean_only.bits, mean_only.outliers) == (4, 0.0) and mean_only.max_relative > 0.7
    both = allocation.choose(options, l2_limit=0.12, max_limit=0.25)
    assert both.max_relative <= 0.25 and both.outliers > 0 and both.bits == 4


def test_extreme_outliers_keep_the_output_at_default_settings(tmp_path, rng):
    """An MLP whose first weight has max |w| = 50x its 99.9th percentile: `compress IN OUT` with no options keeps
    the six extreme weights to within binary16 rounding (2^-11 relative) and the output, on fresh standard-normal
    inputs, within a relative L2 error of 0.15 (the model-level error budget, compression.BUDGET, which bounds
    the predicted output error) and a mean cosine of 1 - BUDGET^2 (cosine ~ 1 - r^2 / 2 for a relative error r,
    with a factor 2 for the spread between rows)."""
    w1 = rng.standard_normal((128, 96)).astype(np.float32) * 0.1
    p999 = np.quantile(np.abs(w1), 0.999)
    spots = rng.permutation(w1.size)[:6]
    w1.ravel()[spots] = 50 * p999 * np.sign(rng.standard_normal(6))
    assert np.abs(w1).max() / np.quantile(np.abs(w1), 0.999) > 40  # still extreme after the change
    w2 = (rng.standard_normal((96, 10)) * 0.1).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    model = make_model(nodes, [float_input("x", ["n", 128])], [float_input("y", ["n", 10])],
                       [onnx.numpy_helper.from_array(w1, "w1"), onnx.numpy_helper.from_array(w2, "w2")])
    onnx.save(model, tmp_path / "in.onnx")
    from test_cli import onnxcomp as cli
    result = cli("compress", tmp_path / "in.onnx", tmp_path / "out.onnx", "--report", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["fallback"] is None and report["ratio"] > 1.5  # compressed, not copied
    x = rng.standard_normal((256, 128)).astype(np.float32)
    expected, = run_plain(model, {"x": x})
    actual, = run_compressed(tmp_path / "out.onnx", {"x": x})
    from onnxcomp.pipeline.compression import BUDGET
    assert np.linalg.norm(actual - expected) / np.linalg.norm(expected) < BUDGET
    cos = (actual * expected).sum(1) / np.linalg.norm(actual, axis=1) / np.linalg.norm(expected, axis=1)
    assert cos.mean() > 1 - BUDGET ** 2
    assert report["fidelity"]["min_cosine"] >= 0.99  # the run's own check, on its synthesised inputs
    from onnxcomp.pipeline.compression import decoded_weights
    decoded = decoded_weights(str(tmp_path / "out.onnxcomp"))["w1"].ravel()
    np.testing.assert_allclose(decoded[spots], w1.ravel()[spots], rtol=2.0 ** -11)


def test_fallback_copy_leaves_no_sidecar_beside_it(tmp_path, monkeypatch):
    """When the measured fidelity stays low, the output is a copy of the input: neither the sidecar of a
    compressed round nor a previous output's sidecar may be left beside it (the copy needs none)."""
    from onnxcomp.pipeline import fidelity
    rng = np.random.default_rng(5)
    w = rng.standard_normal((128, 64)).astype(np.float32)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [float_input("x", ["n", 128])],
                       [float_input("y", ["n", 64])], [onnx.numpy_helper.from_array(w, "w")])
    onnx.save(model, tmp_path / "in.onnx")
    onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx")
    assert (tmp_path / "out.onnxcomp").exists()  # a previous, compressed output
    real = fidelity.compare_runs

    def low(original, compressed, feeds, inputs, *args):  # every round measures badly
        result = real(original, compressed, feeds, inputs, *args)
        result.min_cosine = 0.5
        return result
    monkeypatch.setattr(fidelity, "compare_runs", low)
    report = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx")
    assert report.backoff  # tightened, then a copy (or every weight left dense)
    assert (report.fallback and "copy of the input" in report.fallback) or not report.layers
    assert report.sidecar_path is None and not (tmp_path / "out.onnxcomp").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "out.onnx"]
    x = rng.standard_normal((4, 128)).astype(np.float32)
    np.testing.assert_array_equal(run_plain(onnx.load(tmp_path / "out.onnx"), {"x": x})[0], run_plain(model, {"x": x})[0])


def test_backoff_search_keeps_the_smallest_passing_output(tmp_path, monkeypatch):
    """On real fidelity inputs, after a back-off round passes, REFINE_ROUNDS rounds at geometric midpoints between
    the passing and the failing budget run, and the smallest output that passed is installed (whichever round
    wrote it), byte for byte the same on a second run; on synthesised inputs the first passing round ends the
    back-off (no search). The measurement is replaced by one that fails every output no larger than the first
    measured round's (the model's budget), so larger budgets than the halved one can pass."""
    from onnxcomp.passes import model_io
    from onnxcomp.pipeline import compression, fidelity
    rng = np.random.default_rng(11)
    _, model = _three_matmuls(rng)
    onnx.save(model, tmp_path / "in.onnx")
    monkeypatch.setattr(compression, "TARGETED_ROUNDS", 0)  # the budget search alone (targeted rounds: below)
    measure = fidelity.compare_runs
    measured = []

    def by_size(original, compressed, feeds, inputs, *args):
        result = measure(original, compressed, feeds, inputs, *args)
        size = model_io.model_bytes(compressed)
        measured.append(size)
        result.min_cosine = 0.999 if size > measured[0] else 0.5
        return result
    monkeypatch.setattr(fidelity, "compare_runs", by_size)
    synthesised = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx")
    first = compression.BUDGET
    assert [(r["budget"], r["passed"]) for r in synthesised.backoff] == [(first, False), (first / 2, True)]
    assert synthesised.output_bytes == synthesised.backoff[1]["bytes"] and synthesised.fidelity["inputs"] == "synthesised"
    real = {"x": rng.standard_normal((16, 256)).astype(np.float32)}
    measured.clear()
    report = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", fidelity_data=real)
    budgets = [round_["budget"] for round_ in report.backoff]
    assert budgets[:3] == pytest.approx([first, first / 2, first / np.sqrt(2)])
    assert len(budgets) == 2 + compression.REFINE_ROUNDS
    assert [r["passed"] for r in report.backoff][:2] == [False, True]
    passed = [r["bytes"] for r in report.backoff if r["passed"]]
    assert report.fallback is None and report.output_bytes == min(passed) == model_io.model_bytes(tmp_path / "out.onnx")
    assert min(passed) < report.backoff[1]["bytes"]  # the search found a smaller passing output than the halving's
    assert report.fidelity["min_cosine"] == 0.999
    x = rng.standard_normal((8, 256)).astype(np.float32)
    assert run_compressed(tmp_path / "out.onnx", {"x": x})[0].shape == (8, 32)
    first_bytes = [(tmp_path / name).read_bytes() for name in ("out.onnx", "out.onnxcomp")]
    measured.clear()
    onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "again.onnx", fidelity_data=real)
    assert [(tmp_path / name).read_bytes() for name in ("again.onnx", "again.onnxcomp")][1] == first_bytes[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.onnx", "again.onnxcomp", "in.onnx", "out.onnx", "out.onnxcomp"]


def _three_matmuls(rng, shapes=((256, 256), (256, 128), (128, 32))):
    """(weights, model): x -> MatMul w0 -> Relu -> MatMul w1 -> Relu -> MatMul w2 -> y, the weights standard normal
    float32 of the given [inputs, outputs] shapes, drawn from ``rng`` in that order."""
    weights = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"]), helper.make_node("Relu", ["h0"], ["r0"]),
             helper.make_node("MatMul", ["r0", "w1"], ["h1"]), helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "w2"], ["y"])]
    return weights, make_model(nodes, [float_input("x", ["n", shapes[0][0]])], [float_input("y", ["n", shapes[-1][1]])],
                               [onnx.numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)])


def test_targeted_backoff_tightens_the_weight_carrying_the_error(tmp_path, monkeypatch):
    """When the round at the model's budget misses the check, the next round halves the limit of the weight whose
    measured output error (alone, at its allocated error) is the largest and keeps every other weight's limit; the
    output is byte for byte the same on a second run. The gains are replaced so that w1 looks 4x less harmful
    than the others (it gets the largest error); the first measured round is reported as failing, the later ones as
    passing (the random weights' real cosine is beside the point here)."""
    from onnxcomp.pipeline import compression, fidelity
    rng = np.random.default_rng(12)
    weights, model = _three_matmuls(rng)
    onnx.save(model, tmp_path / "in.onnx")
    monkeypatch.setattr(compression, "_gains", lambda *args: {"w0": 1.0, "w1": 0.25, "w2": 1.0})
    measure, runs = fidelity.compare_runs, []

    def first_fails(original, compressed, feeds, inputs, *args):
        result = measure(original, compressed, feeds, inputs, *args)
        runs.append(result.min_cosine)
        result.min_cosine = 0.985 if len(runs) == 1 else 0.999  # (a miss within reach of targeted rounds)
        return result
    monkeypatch.setattr(fidelity, "compare_runs", first_fails)
    once, limits = compression._compress_once, []

    def recorded(*args, **kwargs):
        limits.append(dict(kwargs.get("allocation_limits") or {}))
        return once(*args, **kwargs)
    monkeypatch.setattr(compression, "_compress_once", recorded)
    report = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx")
    assert [(r["budget"], r["passed"], r["tightened"]) for r in report.backoff] == [
        (compression.BUDGET, False, []), (compression.BUDGET, True, ["w1"])]
    assert len(limits) == 3  # round 0 (per-weight limits), the model's budget, the targeted round
    assert limits[1]["w1"] > limits[1]["w0"]  # the gains gave w1 the largest error
    assert limits[2] == {**limits[1], "w1": limits[1]["w1"] * compression.BACKOFF_FACTOR}
    assert report.fallback is None and report.output_bytes == report.backoff[1]["bytes"] > report.backoff[0]["bytes"]
    decoded = compression.decoded_weights(str(tmp_path / "out.onnxcomp"))
    assert np.linalg.norm(decoded["w1"] - weights[1]) / np.linalg.norm(weights[1]) <= limits[2]["w1"]
    x = rng.standard_normal((8, 256)).astype(np.float32)
    assert run_compressed(tmp_path / "out.onnx", {"x": x})[0].shape == (8, 32)
    runs.clear()
    (tmp_path / "again").mkdir()
    onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "again" / "out.onnx")
    for name in ("out.onnx", "out.onnxcomp"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / name).read_bytes()


def test_targeted_backoff_falls_back_to_halving_every_budget(tmp_path, monkeypatch):
    """When the targeted rounds miss too, the back-off halves the model's budget as before (every weight)."""
    from onnxcomp.pipeline import compression, fidelity
    rng = np.random.default_rng(13)
    _, model = _three_matmuls(rng)
    onnx.save(model, tmp_path / "in.onnx")
    measure, runs = fidelity.compare_runs, []

    def late_pass(original, compressed, feeds, inputs, *args):  # only a round after the targeted ones passes
        result = measure(original, compressed, feeds, inputs, *args)
        runs.append(result.min_cosine)
        if len(runs) <= 1 + compression.TARGETED_ROUNDS:
            result.min_cosine = 0.985  # (within reach of TARGETED_REACH)
        return result
    monkeypatch.setattr(fidelity, "compare_runs", late_pass)
    report = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx")
    rounds = [(r["budget"], r["passed"], bool(r["tightened"])) for r in report.backoff]
    first = compression.BUDGET
    assert rounds == [(first, False, False)] + [(first, False, True)] * compression.TARGETED_ROUNDS + [
        (first * compression.BACKOFF_FACTOR, True, False)]
    assert report.fallback is None and report.output_bytes == report.backoff[-1]["bytes"]


def test_defaults_copy_a_model_compression_would_barely_shrink(tmp_path):
    """An (already quantised) model whose float weights are under 2 % of its bytes is copied at the defaults, with
    the reason in the report; fixed settings still compress it as asked."""
    rng = np.random.default_rng(6)
    w = rng.standard_normal((32, 64)).astype(np.float32)  # 8 KB of float32 beside 512 KB of uint8
    table = rng.integers(0, 255, (4096, 128), dtype=np.uint8)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Gather", ["table", "ids"], ["g"])]
    model = make_model(nodes, [float_input("x", ["n", 32]), helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["n"])],
                       [float_input("y", ["n", 64]), helper.make_tensor_value_info("g", onnx.TensorProto.UINT8, ["n", 128])],
                       [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(table, "table")])
    onnx.save(model, tmp_path / "in.onnx")
    report = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx")
    assert report.fallback and "would save only" in report.fallback and "copy of the input" in report.fallback
    assert report.sidecar_path is None and not (tmp_path / "out.onnxcomp").exists()
    assert (tmp_path / "out.onnx").read_bytes() == (tmp_path / "in.onnx").read_bytes()
    fixed = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "fixed.onnx", bits=4)
    assert fixed.fallback is None and fixed.layers and (tmp_path / "fixed.onnxcomp").exists()


def _brute_force(choices, gains, achieved):
    """The fewest summed bytes over every combination whose sum (g e2)^2 is at most ``achieved``."""
    import itertools
    names = sorted(choices)
    best = np.inf
    for combo in itertools.product(*(choices[n] for n in names)):
        error = sum((gains[n] * c.relative_l2) ** 2 for n, c in zip(names, combo))
        if error <= achieved * (1 + 1e-12):
            best = min(best, sum(c.bytes for c in combo))
    return best


@pytest.mark.parametrize("budget", [0.02, 0.05, 0.1])
def test_budget_allocation_is_optimal_for_the_error_it_meets(rng, budget):
    """solve_budget meets the budget, and (Everett's theorem for the Lagrangian) no combination of candidates with
    at most the same summed error costs fewer bytes: checked by brute force over real candidates of four
    synthetic tensors of different sizes, tails and gains."""
    weights = {"big": rng.standard_normal(60_000), "small": rng.standard_normal(2_000),
               "tail": rng.standard_t(3, 20_000), "flat": rng.uniform(-1, 1, 8_000)}
    gains = {"big": 0.5, "small": 3.0, "tail": 1.0, "flat": 1.5}
    choices = {}
    for name, w in weights.items():
        allocator = allocation.Allocator(w.astype(np.float32), outliers=(0.0, 0.01))
        choices[name] = allocation.options(allocator, 4.0 * w.size)
        assert choices[name][0].dense and all(c.max_relative <= allocation.MAX_LIMIT for c in choices[name])
    chosen = allocation.solve_budget(choices, gains, budget)
    achieved = sum((gains[n] * c.relative_l2) ** 2 for n, c in chosen.items())
    assert achieved <= budget ** 2
    assert sum(c.bytes for c in chosen.values()) <= _brute_force(choices, gains, achieved) * (1 + 1e-9)


def test_budget_spends_bits_where_they_are_cheap(rng):
    """Two weights of the same distribution and gain, 100x apart in size: the optimum gives the small one at least
    as many bits (its bits cost 100x fewer bytes per unit of error removed); a weight with a 10x larger gain gets
    more bits than an equal one."""
    w = rng.standard_normal(200_000).astype(np.float32)
    big, small = allocation.Allocator(w), allocation.Allocator(w[:2_000])
    choices = {"big": allocation.options(big, 4.0 * w.size), "small": allocation.options(small, 8_000.0)}
    chosen = allocation.solve_budget(choices, {"big": 1.0, "small": 1.0}, 0.05)
    assert chosen["small"].dense or chosen["small"].bits >= chosen["big"].bits
    assert chosen["big"].bits < 8  # the budget is spent where it buys the most
    same = allocation.Allocator(rng.standard_normal(200_000).astype(np.float32))
    choices = {"a": allocation.options(big, 4.0 * w.size), "b": allocation.options(same, 4.0 * w.size)}
    chosen = allocation.solve_budget(choices, {"a": 10.0, "b": 1.0}, 0.2)
    assert chosen["a"].bits > chosen["b"].bits


def test_budget_larger_than_any_error_takes_the_smallest_records(rng):
    w = rng.standard_normal(20_000).astype(np.float32)
    found = allocation.options(allocation.Allocator(w), 4.0 * w.size)
    chosen = allocation.solve_budget({"w": found}, {"w": 1.0}, 10.0)
    assert chosen["w"].bytes == min(c.bytes for c in found)
    unreachable = allocation.solve_budget({"w": found}, {"w": 1.0}, 0.0)  # only the dense weight meets it
    assert unreachable["w"].dense


def test_uniform_codebook_needs_fewer_bytes_at_equal_error(rng):
    """On a Laplacian tensor (as conv weights are), the uniform codebook with entropy-coded indices reaches each
    k-means codebook's relative L2 error with fewer bytes (about 0.2-0.5 bit per weight here: entropy-coded
    scalar quantisation beats the fixed-rate optimum) and a far smaller worst-case error; ``choose`` takes it."""
    w = rng.laplace(size=100_000).astype(np.float32)
    allocator = allocation.Allocator(w, outliers=(0.0,))
    for bits in (4, 5, 6):
        kmeans = allocator.measure(0.0, bits, 0.0)
        uniform = allocator.choose(l2_limit=kmeans.relative_l2, max_limit=1.0)
        assert uniform.levels and uniform.relative_l2 <= kmeans.relative_l2
        assert uniform.bytes < kmeans.bytes - 0.15 * w.size / 8
        assert uniform.max_relative < kmeans.max_relative / 4
        table, indices = codebook.quantize(w, np.ones(w.size, bool), uniform.bits, levels=uniform.levels)
        assert np.linalg.norm(w - table[indices]) / np.linalg.norm(w) == pytest.approx(uniform.relative_l2, rel=1e-3)


def test_targeted_rounds_skipped_when_the_miss_is_out_of_their_reach(tmp_path, monkeypatch):
    """A first miss further below the check than TARGETED_ROUNDS rounds can recover (1 - min cosine above
    (1 - 0.99) * TARGETED_REACH ** TARGETED_ROUNDS) goes straight to halving every weight's budget: no per-weight
    measurement, no targeted round, and the output of the back-off without targeted rounds, byte for byte."""
    from onnxcomp.pipeline import compression, fidelity
    _, model = _three_matmuls(np.random.default_rng(13))
    onnx.save(model, tmp_path / "in.onnx")
    measure, runs = fidelity.compare_runs, []

    def far_miss(*args):
        result = measure(*args)
        runs.append(result)
        result.min_cosine = 0.5 if len(runs) == 1 else 0.999
        return result
    monkeypatch.setattr(fidelity, "compare_runs", far_miss)
    files = []
    for targeted in (compression.TARGETED_ROUNDS, 0):
        monkeypatch.setattr(compression, "TARGETED_ROUNDS", targeted)
        if targeted:
            monkeypatch.setattr(compression, "_error_carriers", lambda *args: pytest.fail("measured the carriers"))
        runs.clear()
        folder = tmp_path / str(targeted)
        folder.mkdir()
        report = onnxcomp.compress(tmp_path / "in.onnx", folder / "out.onnx")
        assert [(r["budget"], r["passed"], r["tightened"]) for r in report.backoff] == [
            (compression.BUDGET, False, []), (compression.BUDGET * compression.BACKOFF_FACTOR, True, [])]
        files.append(((folder / "out.onnx").read_bytes(), (folder / "out.onnxcomp").read_bytes()))
    assert files[0] == files[1]
    assert 1 - 0.5 > (1 - fidelity.WARN_COSINE) * compression.TARGETED_REACH ** compression.TARGETED_ROUNDS


def test_sorted_magnitudes_of_the_sample_are_numpys_sort(rng):
    """Allocator.magnitude (|v| of the sorted sample by a stable merge of its two runs) is np.sort(np.abs(v)) byte
    for byte: signed zeros, ties and a sample of only one sign."""
    for weight in ((rng.standard_normal(5000) / 64).astype(np.float32),
                   np.concatenate([np.zeros(30), -np.zeros(40), np.round(rng.standard_normal(2000) * 3) / 3]).astype(np.float32),
                   np.abs(rng.standard_normal(999)).astype(np.float32), -np.abs(rng.standard_normal(999)).astype(np.float32)):
        allocator = allocation.Allocator(weight)
        assert allocator.magnitude.tobytes() == np.sort(np.abs(allocator.v)).tobytes()
