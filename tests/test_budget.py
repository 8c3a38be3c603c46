"""Quality budgets: parsing, the allocation on synthetic curves, and the end-to-end command on a tiny model."""

import itertools

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import helper

import onnxcomp
from onnxcomp.pipeline.autotune import budget_split, compress_to_budget, holdout_split
from onnxcomp.core.budget import allocate, allocation_metric, error, nested_path, parse_budget
from onnxcomp.errors import InvalidOptionError, OnnxcompError

from conftest import budget_mlp, float_input, make_model, weight


def brute_force(curves, max_error):
    best = None
    names = list(curves)
    for combo in itertools.product(*[range(len(curves[n])) for n in names]):
        err = sum(curves[n][i][1] for n, i in zip(names, combo))
        size = sum(curves[n][i][0] for n, i in zip(names, combo))
        if err <= max_error + 1e-12 and (best is None or size < best[0]):
            best = (size, dict(zip(names, combo)))
    return best


def test_allocation_finds_the_known_optimum():
    # Errors are multiples of budget/20, so rounding cannot hide the optimum.
    rng = np.random.default_rng(7)
    for _ in range(100):
        curves = {f"layer{i}": [(int(rng.integers(1, 1000)), float(rng.integers(0, 20)) / 20 * 0.1) for _ in range(5)]
                  for i in range(4)}
        budget = float(rng.integers(1, 30)) / 20 * 0.1
        expected = brute_force(curves, budget)
        got = allocate(curves, budget)
        if expected is None:
            assert got is None
        else:
            assert sum(curves[n][i][0] for n, i in got.items()) == expected[0]


def allocate_with_lists(curves, max_error, max_states, resolution):
    """The allocation's dynamic program as lists of (error, bytes, picks) tuples: what budget.allocate computes
    with arrays and back-pointers, kept here to show both pick the same candidates."""
    import math
    states = [(0.0, 0, ())]
    for name in curves:
        combined = [(err + e, size + b, picks + (i,)) for err, size, picks in states
                    for i, (b, e) in enumerate(curves[name]) if err + max(e, 0.0) <= max_error + 1e-12]
        if not combined:
            return None
        if len(combined) > max_states:
            unit = max(max_error, 1e-12) / resolution
            combined = [(math.ceil(err / unit - 1e-9) * unit, size, picks) for err, size, picks in combined]
        combined.sort(key=lambda state: (state[0], state[1]))
        states = []
        for state in combined:
            if not states or state[1] < states[-1][1]:
                states.append(state)
    best = min(states, key=lambda state: state[1])
    return dict(zip(curves, best[2]))


def test_rel_l2_errors_add_as_squares_in_the_allocation():
    """For rel_l2 (budget.QUADRATURE) the weights' errors add up as squares: two weights that each may cost 0.05
    alone fit a 0.06 budget together at 0.05 and 0.03 (root sum of squares 0.0583), 70 bytes, where summed as they
    are the best within 0.06 is 0.03 + 0.03 at 100 bytes; cosine keeps the plain sum."""
    from onnxcomp.core.budget import additive, allocate, combined
    curve = [(100, 0.0), (50, 0.03), (20, 0.05)]
    summed = allocate({"a": curve, "b": curve}, 0.06)
    assert sorted(summed.values()) == [1, 1]
    squares = {n: [(b, additive("rel_l2", e)) for b, e in curve] for n in "ab"}
    choice = allocate(squares, additive("rel_l2", 0.06))
    assert sorted(choice.values()) == [1, 2]
    assert combined("rel_l2", [curve[i][1] for i in choice.values()]) == pytest.approx(np.hypot(0.05, 0.03))
    assert additive("cosine", 0.05) == 0.05 and combined("cosine", [0.05, 0.03]) == pytest.approx(0.08)
    assert combined(None, [0.05, 0.03]) == pytest.approx(0.08)


def test_two_weights_compressed_together_add_their_rel_l2_errors_as_squares(tmp_path, rng):
    """What budget.QUADRATURE assumes, on the budget tests' MLP: each weight compressed alone (3 bits, half pruned)
    and both together; the output's relative L2 error of both lies within 25 % of the root sum of the two errors'
    squares and below 0.85x their sum."""
    _, data = budget_mlp(tmp_path, rng)
    x = {"x": np.load(data)["x"]}
    reference = onnxruntime.InferenceSession(str(tmp_path / "in.onnx")).run(None, x)[0]
    setting = {"sparsity": 0.5, "bits": 3}

    def rel_l2(names) -> float:
        out = tmp_path / ("-".join(names) + ".onnx")
        onnxcomp.compress(tmp_path / "in.onnx", out, min_elements=16, settings={
            n: setting if n in names else {"skip": True} for n in ("w1", "w2")})
        return error("rel_l2", reference, onnxcomp.InferenceSession(str(out)).run(None, x)[0])
    alone = [rel_l2(["w1"]), rel_l2(["w2"])]
    both = rel_l2(["w1", "w2"])
    assert min(alone) > 0.01
    assert both == pytest.approx(np.hypot(*alone), rel=0.25), (alone, both)
    assert both < 0.85 * sum(alone), (alone, both)


@pytest.mark.parametrize("max_states", [200_000, 40])
def test_allocation_with_arrays_picks_what_the_list_version_picks(monkeypatch, max_states):
    from onnxcomp.core import budget
    monkeypatch.setattr(budget, "MAX_STATES", max_states)
    rng = np.random.default_rng(11)
    for _ in range(60):
        layers = int(rng.integers(1, 7))
        # ties in bytes and in error (coarse values), a dense candidate of error 0 per layer, as the curves have
        curves = {f"w{i}": [(int(rng.integers(1, 50)) * 8, float(rng.integers(0, 12)) / 1000) for _ in range(int(rng.integers(1, 9)))]
                  + [(4000, 0.0)] for i in range(layers)}
        limit = float(rng.uniform(0, 0.02))
        assert allocate(curves, limit) == allocate_with_lists(curves, limit, max_states, budget.RESOLUTION)
    assert allocate({}, 0.1) == {}


def test_allocation_prefers_compressing_the_insensitive_layer():
    curves = {"big_robust": [(1000, 0.0), (100, 0.001)], "small_sensitive": [(100, 0.0), (10, 0.05)]}
    assert allocate(curves, 0.01) == {"big_robust": 1, "small_sensitive": 0}
    assert allocate({"a": [(10, 0.5)]}, 0.1) is None


def test_nested_path_switches_a_few_more_weights_per_rung(rng):
    """The rungs between two allocations of random curves: each holds the switches of the one before it (a weight
    once switched to the end's candidate stays switched), the predicted error never falls after the switches that
    add none, rung k stays within k / steps of the way, and the start and end are not repeated. Same list twice."""
    curves = {}
    for i in range(30):
        errors = np.sort(rng.uniform(0, 0.01, 4)) * rng.choice([1, 10]) * [0, 1, 1, 1]  # the first: dense, exact
        curves[f"w{i:02d}"] = [(int(b), float(e)) for b, e in zip(np.sort(rng.integers(10, 1000, 4))[::-1], errors)]
    start, end = allocate(curves, 0.02), allocate(curves, 0.08)
    predicted = lambda choice: sum(curves[n][i][1] for n, i in choice.items())
    path = nested_path(curves, start, end, 4)
    assert 1 <= len(path) <= 3 and path == nested_path(curves, start, end, 4)
    switched = [{n for n in choice if choice[n] != start[n]} for choice in [start, *path, end]]
    assert all(a < b for a, b in zip(switched, switched[1:]))  # strictly nested, start and end excluded
    assert all(choice[n] in (start[n], end[n]) for choice in path for n in choice)
    way = predicted(end) - predicted(start)
    assert way > 0
    for choice in path:  # each within its fraction of the way (k unknown after duplicates: the largest fraction)
        assert predicted(choice) <= predicted(start) + 3 / 4 * way + 1e-12
    costly = [predicted(choice) for choice in path]
    assert costly == sorted(costly)
    # the greedy order: of two weights that add error, the one saving more bytes per error is switched first
    first = [n for n in switched[1] if curves[n][end[n]][1] > curves[n][start[n]][1]]
    later = [n for n in switched[-1] - switched[1] if curves[n][end[n]][1] > curves[n][start[n]][1]]
    ratio = lambda n: (curves[n][start[n]][0] - curves[n][end[n]][0]) / (curves[n][end[n]][1] - curves[n][start[n]][1])
    assert not first or not later or min(map(ratio, first)) >= max(map(ratio, later))
    assert nested_path(curves, start, start, 4) == []


def test_budget_parsing_and_metrics():
    assert parse_budget("cosine=0.99").max_error == pytest.approx(0.01)
    assert parse_budget("rel_l2=0.05").max_error == 0.05
    assert parse_budget("accuracy=-1").max_error == pytest.approx(0.01)  # points
    assert parse_budget("accuracy=0.01").max_error == pytest.approx(0.01)  # a fraction
    for bad in ("cosine", "speed=3", "top1=1.5", "kl=-0.1", "kl=nan"):
        with pytest.raises(InvalidOptionError):
            parse_budget(bad)
    reference = np.array([[1.0, 0.0], [0.0, 1.0]])
    output = np.array([[1.0, 0.1], [1.0, 0.0]])
    assert error("top1", reference, output) == 0.5
    assert error("cosine", reference, output) == pytest.approx(1.0)  # the second row is orthogonal
    assert error("accuracy", reference, output, labels=np.array([0, 1])) == 0.5
    assert parse_budget("kl=0.05").max_error == 0.05
    p = np.exp(reference) / np.exp(reference).sum(1, keepdims=True)
    q = np.exp(output) / np.exp(output).sum(1, keepdims=True)
    assert error("kl", reference, output) == pytest.approx(np.mean((p * np.log(p / q)).sum(1)))
    assert error("kl", reference, reference) == pytest.approx(0.0, abs=1e-12)


def test_discrete_budgets_allocate_on_a_smooth_stand_in():
    assert allocation_metric("top1", np.zeros((4, 10))) == "kl"
    assert allocation_metric("accuracy", np.zeros((4, 10))) == "kl"
    assert allocation_metric("top1", np.zeros((4, 3, 5))) == "rel_l2"
    assert allocation_metric("cosine", np.zeros((4, 10))) == "cosine"


def test_accuracy_budget_holds_back_a_random_part_of_a_sorted_file(tmp_path, rng):
    """Calibration files are often sorted by class: the held-back part must not be the last classes only."""
    model, _ = budget_mlp(tmp_path, rng)
    x = rng.standard_normal((80, 32)).astype(np.float32)
    from conftest import run_plain
    labels = np.sort(run_plain(model, {"x": x})[0].argmax(1))  # sorted labels, the model's own predictions
    order = np.argsort(run_plain(model, {"x": x})[0].argmax(1), kind="stable")
    np.savez(tmp_path / "sorted.npz", x=x[order], labels=labels)
    report = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), budget="accuracy=0.05",
                                calib=str(tmp_path / "sorted.npz"), sparsities=(0.0, 0.5), bits=(4, 8), min_elements=16,
                                cache_dir=str(tmp_path / "cache"))
    assert report.budget["allocation_metric"] == "kl" and report.budget["measured_error"] <= 0.05 + 1e-9
    fit_rows, held, checked = budget_split(80, 20, 20, seed=0)  # the split compress_to_budget made above
    assert sorted(np.concatenate([fit_rows, held, checked]).tolist()) == list(range(80)) and len(held) == len(checked) == 20
    for part in (fit_rows, held, checked):
        assert np.all(np.diff(part) > 0)  # each part in file order
        assert len(set(labels[part])) > 1 and part.max() >= 60 and part.min() < 60


def test_budget_end_to_end_on_a_tiny_model(tmp_path, rng):
    model, data = budget_mlp(tmp_path, rng)
    kwargs = dict(budget="cosine=0.95", calib=str(data), sparsities=(0.0, 0.5, 0.8), bits=(2, 4, 8),
                  min_elements=16, cache_dir=str(tmp_path / "cache"))
    report = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), **kwargs)
    assert report.budget["measured_error"] <= 0.05
    assert set(report.budget["settings"]) == {"w1", "w2"}
    # Measured independently on the check samples (a seeded random 25 % the search never saw) in onnxruntime.
    held = np.load(data)["x"][budget_split(80, 20, 20)[2]]
    from conftest import run_plain
    want = run_plain(model, {"x": held})[0]
    got = onnxcomp.InferenceSession(tmp_path / "out.onnx").run(None, {"x": held})[0]
    assert error("cosine", want, got) <= 0.05
    # The curves were cached, per value of a budget in its own metric (its value caps them, autotune.CAP): a
    # run with the same budget reuses them and writes the same records; another cosine budget measures its own.
    assert len(list((tmp_path / "cache").iterdir())) == 1
    again = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "again.onnx"), **kwargs)
    assert again.budget["cache"] == report.budget["cache"]
    assert again.budget["settings"] == report.budget["settings"]  # (the model names its own sidecar file)
    assert (tmp_path / "again.onnxcomp").read_bytes() == (tmp_path / "out.onnxcomp").read_bytes()
    strict = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "strict.onnx"), **dict(kwargs, budget="cosine=0.98"))
    assert strict.budget["cache"] != report.budget["cache"]
    assert strict.output_bytes >= report.output_bytes


def test_settings_can_leave_a_weight_dense(tmp_path, rng):
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])]
    model = make_model(nodes, [float_input("x", ["n", 32])], [float_input("y", ["n", 8])],
                       [weight(rng, "w1", (32, 48)), weight(rng, "w2", (48, 8))])
    onnx.save(model, tmp_path / "in.onnx")
    report = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", min_elements=16,
                               settings={"w1": {"skip": True}, "w2": {"sparsity": 0.25, "bits": 2}})
    assert [layer.name for layer in report.layers] == ["w2"]
    assert report.layers[0].codebook_size <= 4 and report.layers[0].sparsity == 0.25
    assert ("w1", "left dense by the budget allocation") in report.skipped


def test_error_bounds_add_a_margin_for_counted_metrics():
    """Wilson upper bound of the disagreement rate; for the accuracy change the larger of the paired standard error
    and the Wilson bound of the hurt rate minus the helped rate."""
    from onnxcomp.core.budget import error_bound
    n = 250
    reference = np.zeros((n, 3))
    reference[:, 0] = 1
    output = reference.copy()
    assert error_bound("top1", reference, output) == pytest.approx(1 / (n + 1))  # k = 0: z^2 / (n + z^2)
    output[0] = [0, 1, 0]  # one disagreement: 0.4 % measured, above 1 % at one standard error
    assert error("top1", reference, output) == pytest.approx(0.004)
    assert 0.0100 < error_bound("top1", reference, output) < 0.0106
    labels = np.zeros(n, dtype=int)
    assert error_bound("accuracy", reference, reference, labels) == pytest.approx(1 / (n + 1))  # no flip: a margin
    labels[1] = 2  # the original is wrong on sample 1 and the compressed model right, the reverse on sample 0
    output[1] = [0, 0, 1]
    assert error("accuracy", reference, output, labels) == 0.0
    # paired standard error sqrt(2)/n = 0.0057 < Wilson bound of 1 hurt in 250 (0.0104) minus 1 helped (0.004)
    assert error_bound("accuracy", reference, output, labels) == pytest.approx(0.010423 - 1 / n, abs=1e-5)
    out2, lab2 = reference.copy(), np.zeros(n, dtype=int)  # 30 hurt, 30 helped: the paired standard error is larger
    out2[:30] = [0, 1, 0]
    lab2[30:60] = 1
    out2[30:60] = [0, 1, 0]
    assert error_bound("accuracy", reference, out2, lab2) == pytest.approx(np.sqrt(60) / n)
    scores = np.random.default_rng(1).standard_normal((n, 3))  # kl: the mean plus one standard error of the mean
    noisy = scores + 0.1 * np.random.default_rng(2).standard_normal((n, 3))
    p = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    terms = (p * (np.log(p) - (noisy - np.log(np.exp(noisy).sum(1, keepdims=True))))).sum(1)
    assert error("kl", scores, noisy) == pytest.approx(terms.mean())
    assert error_bound("kl", scores, noisy) == pytest.approx(terms.mean() + terms.std(ddof=1) / np.sqrt(n))


def test_rel_l2_bound_is_the_ratio_estimators_standard_error():
    """rel_l2 pools all samples (sqrt of summed squared errors over summed squared norms): one standard error of
    that ratio (Cochran's first-order variance) lies above the population's value about 84 % of the time on
    symmetric data (measured 0.83 with Gaussian terms; 0.80 here, moderately skewed; 0.69 with heavy log-normal
    spreads of 0.5 and 0.7, where the first-order variance is too small)."""
    from onnxcomp.core.budget import error_bound
    rng = np.random.default_rng(3)

    def draw(n):
        ref = rng.standard_normal((n, 8)) * rng.lognormal(0, 0.3, (n, 1))
        return ref, ref + 0.02 * rng.standard_normal((n, 8)) * rng.lognormal(0, 0.3, (n, 1))
    population = error("rel_l2", *draw(400_000))
    covered = 0
    for _ in range(1000):
        seen = draw(64)
        bound = error_bound("rel_l2", *seen)
        assert bound > error("rel_l2", *seen)
        covered += population <= bound
    assert 0.74 < covered / 1000 < 0.88
    same = rng.standard_normal((64, 8))
    assert error_bound("rel_l2", same, same.copy()) == 0.0


def test_cosine_bound_keeps_a_margin_from_the_sample_count():
    """A min-cosine budget is judged on the worst sample: the bound raises the worst per-sample error by one standard
    deviation of the largest of n fresh samples (the tail scale from the median of the weighted log spacings of the
    round(sqrt(n)) largest errors), which covers a fresh set of the same size about 84 % of the time (one standard
    error), the measured worst only about half of the time."""
    from onnxcomp.core.budget import _tail_bound, error_bound
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((32, 16))
    output = reference + 0.05 * rng.standard_normal((32, 16)) * rng.lognormal(0, 0.5, (32, 1))
    errors = 1 - (reference * output).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(output, axis=1)
    top = np.sort(errors)[::-1]
    gamma = np.median(np.arange(1, 7) * np.log(top[:6] / top[1:7])) / np.log(2)  # k = round(sqrt(32)) = 6
    want = top[0] * np.exp(gamma * np.sqrt(np.pi ** 2 / 6 + np.log(32 / 6) ** 2 / (6 * np.log(2) ** 2)))
    assert error_bound("cosine", reference, output) == pytest.approx(want)
    assert error_bound("cosine", reference, output) > error("cosine", reference, output) == pytest.approx(top[0])
    assert error_bound("cosine", reference, reference.copy()) <= 1e-12  # nothing changed: no margin
    assert error_bound("cosine", reference[:2], output[:2]) == 2  # no tail to estimate on 2 samples: 1 - cos <= 2
    covered = {0.0: 0, 1.0: 0}
    for _ in range(2000):  # per-sample errors log-normal, as a weight change spreads over varied inputs
        seen, fresh = rng.lognormal(-5, 0.5, 32), rng.lognormal(-5, 0.5, 32)
        for z in covered:
            covered[z] += fresh.max() <= _tail_bound(seen, z)
    assert 0.45 < covered[0.0] / 2000 < 0.55 and 0.78 < covered[1.0] / 2000 < 0.92


def test_cosine_bound_stays_meaningful_with_a_few_far_out_samples():
    """Magika's case: a small set whose few worst samples err far more than the rest. Hill's mean of the log
    ratios (the bound before) lands above 2, which says nothing about 1 - cos; the median of the weighted log
    spacings stays within a small multiple of the worst measured (14x here), and no bound exceeds 2. Where the few far-out samples are
    a real part of the data (4 of 34 here, a fresh set holds about as many), the bound still covers the worst of a
    fresh set most of the time."""
    from onnxcomp.core.budget import _tail_bound
    rng = np.random.default_rng(1)

    def draw(n):  # 10 % of the samples err about 1,000x more than the rest
        far = rng.random(n) < 0.1
        return np.where(far, rng.lognormal(np.log(0.01), 0.5, n), rng.lognormal(np.log(1e-5), 1.0, n))
    seen = np.concatenate([rng.lognormal(np.log(1e-5), 1.0, 30), [0.004, 0.008, 0.012, 0.0207]])
    top = np.sort(seen)[::-1]
    hill = top[0] * np.exp(np.mean(np.log(top[:6] / top[6])) * np.sqrt(np.pi ** 2 / 6 + np.log(34 / 6) ** 2 / 6))
    assert hill > 2  # the estimate before: degenerate
    assert top[0] < _tail_bound(seen, 1.0) < 20 * top[0]
    assert _tail_bound(np.geomspace(1.0, 1e-8, 34), 1.0) == 2.0  # a tail this heavy: capped at the range of 1 - cos
    bounds, covered = [], 0
    for _ in range(1000):
        seen, fresh = draw(34), draw(34)
        bounds.append(_tail_bound(seen, 1.0) / seen.max())
        covered += fresh.max() <= _tail_bound(seen, 1.0)
    assert np.median(bounds) < 20 and covered / 1000 > 0.84


def test_budget_is_checked_on_samples_the_search_never_saw(tmp_path, rng):
    """A top-1 budget: the written model meets it at its confidence bound on the check set, measured here."""
    model, data = budget_mlp(tmp_path, rng)
    report = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), budget="top1=0.9", calib=str(data),
                                sparsities=(0.0, 0.5, 0.8), bits=(2, 4, 8), min_elements=16, cache_dir=str(tmp_path / "cache"))
    b = report.budget
    assert b["check_samples"] == 20 and b["holdout_samples"] == 20 and b["check_bound"] <= 0.1
    x = np.load(data)["x"][budget_split(80, 20, 20)[2]]
    from conftest import run_plain
    want = run_plain(model, {"x": x})[0]
    got = onnxcomp.InferenceSession(tmp_path / "out.onnx").run(None, {"x": x})[0]
    assert error("top1", want, got) == pytest.approx(b["check_error"])
    from onnxcomp.core.budget import error_bound
    assert error_bound("top1", want, got) <= 0.1
    # A fixed sequence (those that met the bound on the held-back samples first): every one but the last tested passed,
    # and the smallest that passed is the one written.
    passed = [c for c in b["checks"] if c["bound"] <= 0.1 + 1e-12]
    assert b["checks"][:len(passed)] == passed and len(b["checks"]) - len(passed) <= 1
    assert report.output_bytes == min(c["bytes"] for c in passed)


def test_an_interrupted_sensitivity_analysis_resumes_from_its_cache(tmp_path, rng, monkeypatch):
    """Interrupted while measuring the second weight, a rerun measures only that one and writes the same bytes as
    a run that was never interrupted (and as one with a cold cache)."""
    from onnxcomp.pipeline import autotune
    budget_mlp(tmp_path, rng)
    kwargs = dict(budget="cosine=0.95", calib=str(tmp_path / "calib.npz"), sparsities=(0.0, 0.5), bits=(2, 4, 8),
                  min_elements=16, cache_dir=str(tmp_path / "cache"))
    measured = []
    real_shared = autotune._shared

    def shared(pruned, bits, options, codebook_size=0):
        if interrupt and pruned.name == "w2":
            raise KeyboardInterrupt  # stopped while measuring the second weight
        return real_shared(pruned, bits, options, codebook_size)

    class Proxy(autotune._Proxy):  # one per weight whose sensitivity is measured
        def __init__(self, target, metric):
            measured.append(target.name)
            super().__init__(target, metric)

    monkeypatch.setattr(autotune, "_shared", shared)
    monkeypatch.setattr(autotune, "_Proxy", Proxy)
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), **kwargs)
    assert not (tmp_path / "out.onnx").exists()
    interrupt, measured[:] = False, []
    report = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), **kwargs)
    assert set(measured) == {"w2"}  # only the unfinished weight again
    assert set(report.budget["settings"]) == {"w1", "w2"}
    (tmp_path / "cold").mkdir(), (tmp_path / "warm").mkdir()  # same file names: the output records its sidecar's name
    cold = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "cold" / "out.onnx"),
                              **dict(kwargs, cache_dir=str(tmp_path / "cold-cache")))
    warm = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "warm" / "out.onnx"), **kwargs)  # all cached
    output = (tmp_path / "out.onnx").read_bytes()
    sidecar = (tmp_path / "out.onnxcomp").read_bytes()
    for folder in ("cold", "warm"):
        assert (tmp_path / folder / "out.onnx").read_bytes() == output
        assert (tmp_path / folder / "out.onnxcomp").read_bytes() == sidecar
    assert cold.budget["settings"] == warm.budget["settings"] == report.budget["settings"]


def test_line_progress_writes_whole_lines_with_the_time_left():
    import io
    from onnxcomp.front.terminal import LineProgress
    stream = io.StringIO()
    lines = LineProgress(stream, interval=0.0)
    for done in range(5):
        lines("sensitivity analysis", done, 4)
    text = stream.getvalue()
    assert "\r" not in text and text.endswith("\n")
    rows = text.splitlines()
    assert rows[0] == "sensitivity analysis: 4 to do" and "1/4, about" in rows[1] and "left" in rows[1]
    assert rows[-1].startswith("sensitivity analysis: 4/4 done in ")


def test_activation_budget_with_biases_selected(tmp_path, rng, monkeypatch):
    """README's calibrated recipe on a model whose biases are selected too (--min-elements 1): a bias has no layer
    input to score by, so the search tries it unpruned and the sequential run does not ask it for activations (the
    data-free candidate, which would win here, is left out: the search's own allocation is what is tested)."""
    from onnxcomp.pipeline import autotune
    monkeypatch.setattr(autotune, "DATA_FREE", False)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)]
    model = make_model(nodes, [float_input("x", ["n", 32])], [float_input("y", ["n", 8])],
                       [weight(rng, "w1", (48, 32), 0.3), weight(rng, "b1", (48,), 0.1),
                        weight(rng, "w2", (8, 48), 0.3), weight(rng, "b2", (8,), 0.1)])
    onnx.save(model, tmp_path / "in.onnx")
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((160, 32)).astype(np.float32))
    report = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), budget="cosine=0.95",
                                calib=str(tmp_path / "calib.npz"), prune="activation", sequential=True, min_elements=1,
                                sparsities=(0.0, 0.5), bits=(4, 8), cache_dir=str(tmp_path / "cache"))
    assert {"b1", "b2"} <= set(report.budget["settings"])
    assert all(s.get("skip") or s["sparsity"] == 0.0 for name, s in report.budget["settings"].items() if name.startswith("b"))
    assert report.budget["measured_error"] <= 0.05


def test_calibration_with_a_state_batched_on_its_second_axis_and_a_scalar(tmp_path, rng):
    """A recurrent model's own feed (silero-vad's): x [N, 32], state [2, N, 16] (samples second), a scalar
    int64 ``sr``. Compressing with --calib, and a budget search splitting it, keep each sample's state row with it."""
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1),
             helper.make_node("ReduceSum", ["state", "axes0"], ["s"], keepdims=0),  # [N, 16]
             helper.make_node("Concat", ["h", "s"], ["hs"], axis=1), helper.make_node("Relu", ["hs"], ["r"]),
             helper.make_node("Gemm", ["r", "w2"], ["y0"], transB=1),
             helper.make_node("Cast", ["sr"], ["srf"], to=onnx.TensorProto.FLOAT),
             helper.make_node("Mul", ["y0", "srf"], ["y"])]
    inputs = [float_input("x", ["n", 32]), float_input("state", [2, "n", 16]),
              helper.make_tensor_value_info("sr", onnx.TensorProto.INT64, [])]
    model = make_model(nodes, inputs, [float_input("y", ["n", 8])],
                       [weight(rng, "w1", (48, 32), 0.3), weight(rng, "w2", (8, 64), 0.3),
                        onnx.numpy_helper.from_array(np.array([0], np.int64), "axes0")])
    onnx.save(model, tmp_path / "in.onnx")
    count = 80
    feeds = {"x": rng.standard_normal((count, 32)).astype(np.float32),
             "state": rng.standard_normal((2, count, 16)).astype(np.float32), "sr": np.array(2, np.int64)}
    np.savez(tmp_path / "calib.npz", **feeds)
    report = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "plain.onnx", calib=str(tmp_path / "calib.npz"),
                               prune="activation", min_elements=16)
    assert report.fidelity["min_cosine"] is not None and report.fidelity["inputs"] == "calibration"
    # cosine 0.9: on 20 check samples the worst-sample margin (budget.error_bound) is about 1.7x the measured worst
    report = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), budget="cosine=0.9",
                                calib=str(tmp_path / "calib.npz"), sparsities=(0.0, 0.5), bits=(4, 8), min_elements=16,
                                cache_dir=str(tmp_path / "cache"))
    check = budget_split(count, 20, 20)[2]
    from conftest import run_plain
    subset = {"x": feeds["x"][check], "state": feeds["state"][:, check], "sr": feeds["sr"]}
    want = run_plain(model, subset)[0]
    got = onnxcomp.InferenceSession(tmp_path / "out.onnx").run(None, subset)[0]
    assert error("cosine", want, got) == pytest.approx(report.budget["check_error"], abs=1e-6)
    assert report.budget["check_error"] <= 0.05


@pytest.mark.parametrize("budget, limit", [("top1=0.95", 0.05), ("accuracy=-3", 0.03)])
def test_counted_budgets_hold_on_separate_evaluation_data(tmp_path, rng, budget, limit):
    """Top-1 agreement and accuracy budgets are confirmed with a margin on samples the search never saw, so they
    hold on new data of the same kind: 2,000 evaluation samples drawn apart from the 400 calibration ones."""
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1)]
    model = make_model(nodes, [float_input("x", ["n", 32])], [float_input("y", ["n", 10])],
                       [weight(rng, "w1", (64, 32), 0.3), weight(rng, "w2", (10, 64), 0.3)])
    onnx.save(model, tmp_path / "in.onnx")
    from conftest import run_plain
    x = rng.standard_normal((2400, 32)).astype(np.float32)
    scores = run_plain(model, {"x": x})[0]
    labels = np.where(rng.random(len(x)) < 0.85, scores.argmax(1), rng.integers(0, 10, len(x)))  # ~87 % accurate
    np.savez(tmp_path / "calib.npz", x=x[:400], labels=labels[:400])
    report = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), budget=budget,
                                calib=str(tmp_path / "calib.npz"), sparsities=(0.0, 0.5, 0.7, 0.85), bits=(2, 3, 4, 8),
                                min_elements=16, cache_dir=str(tmp_path / "cache"))
    assert report.output_bytes < report.input_bytes
    got = onnxcomp.InferenceSession(tmp_path / "out.onnx").run(None, {"x": x[400:]})[0].argmax(1)
    want = scores[400:].argmax(1)
    if budget.startswith("top1"):
        assert np.mean(got != want) <= limit
    else:
        assert np.mean(want == labels[400:]) - np.mean(got == labels[400:]) <= limit


def test_trials_are_predicted_from_the_layer_error_only_where_the_proxy_holds():
    """_Proxy: measured while it has fewer than ANCHORS anchors, for the first setting of a sparsity, outside the
    anchors' range; else alpha * eps (cosine) or alpha * sqrt(eps) (rel_l2), alpha the anchors' mean ratio, or their
    largest when they spread by more than SPREAD."""
    from types import SimpleNamespace
    from onnxcomp.pipeline.autotune import ANCHORS, EXTRAPOLATE, SPREAD, _Proxy
    target = SimpleNamespace(statistics=None, original=np.ones((4, 4), np.float32))
    proxy = _Proxy(target, "cosine")
    assert proxy.layer_error(np.ones((4, 4))) == 0.0 and proxy.layer_error(np.zeros((4, 4))) == 1.0
    for eps in (0.01, 0.02, 0.04)[:ANCHORS]:
        assert proxy.predict(eps, False) is None
        proxy.measured(eps, 0.5 * eps)
    assert proxy.predict(0.03, False) == pytest.approx(0.015)
    assert proxy.predict(0.03, True) is None  # the spot check of a new sparsity
    assert proxy.predict(0.04 * EXTRAPOLATE * 1.1, False) is None
    proxy.measured(0.05, 0.5 * 0.05 * SPREAD * 1.1)  # the proxy stops holding: everything is measured (by default)
    assert proxy.predict(0.03, False) is None
    root = _Proxy(target, "rel_l2")
    for eps in (0.01, 0.02, 0.04):
        root.measured(eps, 2 * eps ** 0.5)
    assert root.predict(0.03, False) == pytest.approx(2 * 0.03 ** 0.5)


def test_a_weight_whose_anchors_spread_is_predicted_at_or_above_every_anchor(monkeypatch):
    """Anchors spread by more than SPREAD (vgg16-tumor's block4_conv2 in a trace: KL / eps of 0.24, 0.56 and 0.087
    at 2, 3, 4 bits): every trial from the lowest anchor's eps to EXTRAPOLATE x the highest is predicted, at least
    each anchor's ratio-implied error (the largest ratio's); below the lowest, measured; anchors spread by less, the
    mean ratio as before. ENVELOPE on (ONNXCOMP_ENVELOPE=1); off, every trial of such a weight is measured."""
    from types import SimpleNamespace
    from onnxcomp.pipeline import autotune
    from onnxcomp.pipeline.autotune import EXTRAPOLATE, SPREAD, _Proxy
    monkeypatch.setattr(autotune, "ENVELOPE", True)
    target = SimpleNamespace(statistics=None, original=np.ones((4, 4), np.float32))
    for metric, power in (("kl", 1.0), ("rel_l2", 0.5)):
        proxy = _Proxy(target, metric)
        anchors = [(1.44e-3, 0.24), (1.50e-4, 0.56), (3.15e-5, 0.087)]
        for eps, ratio in anchors:
            proxy.measured(eps, ratio * eps ** power)
        assert max(r for _, r in anchors) > SPREAD * min(r for _, r in anchors)
        for eps in np.geomspace(3.15e-5, 1.44e-3 * EXTRAPOLATE, 25):
            predicted = proxy.predict(float(eps), False)
            assert predicted is not None
            assert all(predicted >= ratio * eps ** power * (1 - 1e-12) for _, ratio in anchors)
            assert predicted == pytest.approx(0.56 * eps ** power)
        assert proxy.predict(3.15e-5 * 0.9, False) is None  # below the anchors: measured (a floor would be missed)
        assert proxy.predict(1.44e-3 * EXTRAPOLATE * 1.1, False) is None  # beyond EXTRAPOLATE: measured
        assert proxy.predict(1e-4, True) is None  # spot checks: measured
    close = _Proxy(target, "kl")
    for eps, ratio in [(1e-3, 0.3), (1e-4, 0.6), (1e-5, 0.45)]:  # a spread of 2: the geometric mean
        close.measured(eps, ratio * eps)
    assert close.predict(1e-4, False) == pytest.approx((0.3 * 0.6 * 0.45) ** (1 / 3) * 1e-4)


def _curve_inputs(tmp_path, rng, fitted: int):
    """The budget MLP, its first ``fitted`` calibration samples to fit, the rest held back with the model's outputs on
    them, and the options of a calibrated run: _measure's arguments."""
    from onnxcomp.pipeline import autotune
    from onnxcomp.passes.calibration import run_batched
    model, data = budget_mlp(tmp_path, rng)
    x = np.load(data)["x"]
    fit, hold = {"x": x[:fitted]}, {"x": x[fitted:]}
    options = dict(prune="activation", score="wanda", reconstruct=True, ridge=1e-2, init="quantile", seed=0,
                   rounding="obs", outliers="auto")
    return model, fit, hold, run_batched(autotune._session(model), hold)[0], options


def test_the_envelope_predicts_a_spread_weights_trials_only_when_on(tmp_path, rng, monkeypatch):
    """_measure on the budget MLP with every other measured error 8x the true one (anchors spread by 8 > SPREAD):
    with ENVELOPE, trials are still predicted, each at or above every anchor's ratio-implied error at the time;
    without, every trial after the anchors spread is measured."""
    from onnxcomp.pipeline import autotune
    model, fit, hold, reference, options = _curve_inputs(tmp_path, rng, 60)
    real, calls, predictions = autotune.budget_math.error, [0], []

    def spread(metric, reference, output, labels=None):
        calls[0] += 1
        return real(metric, reference, output, labels) * (8.0 if calls[0] % 2 else 1.0)

    class Proxy(autotune._Proxy):
        def predict(self, eps, spot_check):
            predicted = super().predict(eps, spot_check)
            if predicted is not None:
                predictions.append((predicted, [ratio * eps for ratio in self._ratios()]))
            return predicted

    monkeypatch.setattr(autotune.budget_math, "error", spread)
    monkeypatch.setattr(autotune, "_Proxy", Proxy)
    monkeypatch.setattr(autotune.parallel, "default_workers", lambda: 1)  # the 8x pattern in one order of trials
    sparsities, bits = (0.0, 0.3, 0.5, 0.6), (2, 3, 4, 5, 6)
    monkeypatch.setattr(autotune, "ENVELOPE", True)
    curves = autotune._measure(model, fit, hold, reference, None, "cosine", sparsities, bits, options, 16)
    trials = sum(len(points) - 1 for points in curves.values())
    assert calls[0] < trials and len(predictions) == trials - calls[0]
    assert any(max(implied) > autotune.SPREAD * min(implied) for _, implied in predictions)
    assert all(predicted >= max(implied) * (1 - 1e-12) for predicted, implied in predictions)
    monkeypatch.setattr(autotune, "ENVELOPE", False)
    enveloped, calls[0], predictions[:] = calls[0], 0, []
    autotune._measure(model, fit, hold, reference, None, "cosine", sparsities, bits, options, 16)
    assert calls[0] > enveloped and all(max(implied) <= autotune.SPREAD * min(implied) for _, implied in predictions)


def test_a_spread_weights_trials_skip_its_row_sample(tmp_path, rng, monkeypatch):
    """Once a weight's anchors spread (ENVELOPE off), no trial of it is predicted again, so none compresses its row
    sample (it did before: 1-2 CPU s a trial for nothing on vgg16-tumor's block 4/5), and the curves are those of a
    run whose row samples are compressed anyway (the same measured points)."""
    from onnxcomp.pipeline import autotune
    model, fit, hold, reference, options = _curve_inputs(tmp_path, rng, 60)
    real, calls, sampled = autotune.budget_math.error, [0], []

    def spread(metric, reference, output, labels=None):
        calls[0] += 1
        return real(metric, reference, output, labels) * (8.0 if calls[0] % 2 else 1.0)

    proxies = {}

    class Proxy(autotune._Proxy):
        def __init__(self, target, *args, **kwargs):
            super().__init__(target, *args, **kwargs)
            proxies.setdefault(target.name, self)  # the whole weight's comes first, then its row sample's

    real_shared = autotune._shared

    def shared(pruned, *args, **kwargs):
        whole = proxies[pruned.name]
        if int(np.prod(pruned.shape)) < whole.original.size:  # a row sample: smaller than its weight
            sampled.append(whole.spread())
        return real_shared(pruned, *args, **kwargs)

    monkeypatch.setattr(autotune.budget_math, "error", spread)
    monkeypatch.setattr(autotune, "_Proxy", Proxy)
    monkeypatch.setattr(autotune, "_shared", shared)
    monkeypatch.setattr(autotune, "SAMPLE_ELEMENTS", 256)  # w1 [48, 32] is tried on a row sample of 8 rows
    monkeypatch.setattr(autotune.parallel, "default_workers", lambda: 1)
    monkeypatch.setattr(autotune, "ENVELOPE", False)
    sparsities, bits = (0.0, 0.3, 0.5, 0.6), (2, 3, 4, 5, 6)
    curves = autotune._measure(model, fit, hold, reference, None, "cosine", sparsities, bits, options, 16)
    assert sampled and not any(sampled)  # row samples compressed while the proxy held, none after it spread
    assert any(p.spread() for p in proxies.values())
    proxies.clear()
    calls[0], sampled[:] = 0, []
    monkeypatch.setattr(Proxy, "spread", lambda self: False)  # the old condition: every trial's row sample compressed
    again = autotune._measure(model, fit, hold, reference, None, "cosine", sparsities, bits, options, 16)
    assert len(sampled) > 0
    assert again == curves


def test_messages_reach_line_progress_whole():
    import io
    from onnxcomp import progress
    from onnxcomp.front.terminal import LineProgress
    assert progress.messages()("nothing installed") is None  # no callback: dropped
    stream = io.StringIO()
    with progress.reporting(LineProgress(stream)):
        progress.messages()("sensitivity analysis: about 3 min")
    assert stream.getvalue() == "sensitivity analysis: about 3 min\n"


def test_large_weights_are_tried_on_a_row_sample(tmp_path, rng, monkeypatch):
    """With a small SAMPLE_ELEMENTS both weights of the MLP are tried on output-channel samples (the Gram matrix's
    inputs kept whole); the result still meets the budget on the check set, and is the same on a second run."""
    from onnxcomp.pipeline import autotune
    model, data = budget_mlp(tmp_path, rng)
    monkeypatch.setattr(autotune, "SAMPLE_ELEMENTS", 64)
    sampled = []
    real = autotune._row_sample

    def row_sample(target, seed):
        sample = real(target, seed)
        if sample is not None:
            axis = 1 if target.layer_input.layout == "kn" else 0
            assert sample.shape[1 - axis] == target.shape[1 - axis] and sample.shape[axis] < target.shape[axis]
            sampled.append(target.name)
        return sample

    monkeypatch.setattr(autotune, "_row_sample", row_sample)
    kwargs = dict(budget="cosine=0.95", calib=str(data), sparsities=(0.0, 0.5, 0.8), bits=(2, 3, 4, 8), min_elements=16)
    report = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), cache_dir=str(tmp_path / "a"), **kwargs)
    assert set(sampled) == {"w1", "w2"}
    (tmp_path / "again").mkdir()
    again = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "again" / "out.onnx"), cache_dir=str(tmp_path / "b"),
                               **kwargs)
    assert (tmp_path / "out.onnx").read_bytes() == (tmp_path / "again" / "out.onnx").read_bytes()
    assert report.budget["settings"] == again.budget["settings"] and report.budget["check_bound"] <= 0.05


def test_trial_models_compute_what_the_compressed_model_computes(tmp_path, rng):
    """The search's trial models (decoded weights in place, no file written) give the compressed model's outputs
    (to float rounding) and its size to within the format's framing."""
    from onnxcomp.pipeline.autotune import _TrialModels
    from onnxcomp.passes import model_io
    model, data = budget_mlp(tmp_path, rng)
    x = {"x": np.load(data)["x"]}
    settings = {"w1": {"sparsity": 0.5, "bits": 3}, "w2": {"sparsity": 0.0, "bits": 4}}
    options = dict(prune="magnitude", score="wanda", reconstruct=True, ridge=1e-2, init="quantile", seed=0,
                   rounding="obs", outliers="auto")
    trials = _TrialModels(model, x, options, 16, model_io.model_bytes(str(tmp_path / "in.onnx")))
    output, size = trials.run(settings, x)
    report = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", calib=x, min_elements=16, settings=settings,
                               fidelity=False)
    want = onnxcomp.InferenceSession(tmp_path / "out.onnx").run(None, x)[0]
    np.testing.assert_allclose(output, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert abs(size - report.output_bytes) < 1024  # records counted; nodes, sidecar header and names not


def test_trials_run_only_the_nodes_downstream_of_the_weight(tmp_path, rng):
    """A sensitivity trial of w2 runs the suffix (Gemm w2) fed with the Relu output computed once: the same output
    as the whole model with the trial weight in place; a weight the first output does not depend on gets None."""
    from onnxcomp.pipeline.autotune import _Downstream, _session, _weight_as_input
    from onnxcomp.passes.calibration import run_batched
    model, data = budget_mlp(tmp_path, rng)
    x = {"x": np.load(data)["x"]}
    reference = run_batched(_session(model), x)[0]
    w2 = onnx.numpy_helper.to_array(model.graph.initializer[1])
    whole = _session(_weight_as_input(model, "w2"))
    suffix = _Downstream(model, "w2", w2, x, reference, whole, 1)
    assert {i.name for i in suffix.session.get_inputs()} == {"r", "w2"}
    trial = (w2 * (1 + 0.1 * rng.standard_normal(w2.shape))).astype(np.float32)
    np.testing.assert_array_equal(suffix.run(trial), run_batched(whole, x, extra={"w2": trial})[0])
    # a second output branch that w2 does not feed: the first output does not depend on the extra weight
    extra = helper.make_node("MatMul", ["x", "w3"], ["z"])
    model.graph.node.append(extra)
    model.graph.initializer.append(weight(rng, "w3", (32, 4), 0.3))
    model.graph.output.append(float_input("z", ["n", 4]))
    w3 = onnx.numpy_helper.to_array(model.graph.initializer[2])
    assert _Downstream(model, "w3", w3, x, reference, _session(_weight_as_input(model, "w3")), 1).run(w3) is None


def test_a_failing_check_compress_leaves_no_staging_folder(tmp_path, rng, monkeypatch):
    """An error while an allocation is compressed for the check set (the silero-vad run hit one) removes that
    allocation's staging folder: nothing partial stays beside the output."""
    _, data = budget_mlp(tmp_path, rng)
    from onnxcomp.pipeline import compression

    def broken(*args, **kwargs):
        raise OnnxcompError("broken on purpose")
    monkeypatch.setattr(compression, "compress", broken)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OnnxcompError, match="broken on purpose"):
        compress_to_budget(str(tmp_path / "in.onnx"), str(out / "m.onnx"), budget="cosine=0.9", calib=str(data),
                           sparsities=(0.0, 0.5), bits=(4, 8), min_elements=16, cache_dir=str(tmp_path / "cache"))
    assert list(out.iterdir()) == []


def test_budget_measures_the_first_output_that_depends_on_a_weight(rng):
    """An export that lists an Identity of an input first (the zoo's MiniLM-L3) would give every allocation an
    error of 0: the budget measures the first output that depends on a weight instead; a model whose first
    output does depend on one keeps its order."""
    from onnxcomp.pipeline.autotune import _weight_output_first
    nodes = [helper.make_node("Identity", ["x"], ["echo"]), helper.make_node("MatMul", ["x", "w"], ["y"]),
             helper.make_node("Relu", ["y"], ["z"])]
    outputs = [float_input("echo", [None, 8]), float_input("z", [None, 4]), float_input("y", [None, 4])]
    model = make_model(nodes, [float_input("x", [None, 8])], outputs, [weight(rng, "w", (8, 4))])
    _weight_output_first(model)
    assert [o.name for o in model.graph.output] == ["z", "echo", "y"]
    _weight_output_first(model)
    assert [o.name for o in model.graph.output] == ["z", "echo", "y"]


def test_budget_output_names_the_output_measured(rng):
    """--budget-output puts the named output first (the zoo's MiniLM-L3 lists its token embeddings before the
    pooled sentence embedding its users read); a name that is no output, or an output no weight feeds, is refused."""
    from onnxcomp.pipeline.autotune import _weight_output_first
    nodes = [helper.make_node("Identity", ["x"], ["echo"]), helper.make_node("MatMul", ["x", "w"], ["y"]),
             helper.make_node("ReduceMean", ["y"], ["pooled"], axes=[1], keepdims=0)]
    outputs = [float_input("echo", [None, 8]), float_input("y", [None, 4]), float_input("pooled", [None])]
    model = make_model(nodes, [float_input("x", [None, 8])], outputs, [weight(rng, "w", (8, 4))])
    _weight_output_first(model, "pooled")
    assert [o.name for o in model.graph.output] == ["pooled", "echo", "y"]
    with pytest.raises(OnnxcompError, match="'nothing' is not an output of the model"):
        _weight_output_first(model, "nothing")
    with pytest.raises(OnnxcompError, match="'echo' depends on no weight"):
        _weight_output_first(model, "echo")


def test_budget_measured_on_the_named_output_holds_there(tmp_path, rng):
    """End to end: a budget on the second output (a mean over the rows of the first, which averages the weight's
    error across rows) is confirmed on the check set in that output, the report names it, and the written model
    keeps its outputs in the given order."""
    from onnxcomp.runtime import InferenceSession
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1),
             helper.make_node("ReduceMean", ["y"], ["pooled"], axes=[1], keepdims=1)]
    model = make_model(nodes, [float_input("x", ["n", 32])], [float_input("y", ["n", 8]), float_input("pooled", ["n", 1])],
                       [weight(rng, "w1", (48, 32), 0.3), weight(rng, "w2", (8, 48), 0.3)])
    onnx.save(model, tmp_path / "in.onnx")
    x = rng.standard_normal((80, 32)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    report = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), budget="rel_l2=0.05",
                                calib=str(tmp_path / "calib.npz"), cache_dir=str(tmp_path / "cache"), min_elements=16,
                                sparsities=(0.0, 0.5, 0.8), bits=(2, 4, 8), budget_output="pooled")
    assert report.budget["output"] == "pooled"
    assert 0 < report.budget["check_error"] <= report.budget["check_bound"] <= 0.05
    session = InferenceSession(str(tmp_path / "out.onnx"))
    assert [o.name for o in session.get_outputs()] == ["y", "pooled"]
    # the pooled output holds the budget on all 80 samples (the check set's 20 among them) within a factor 2
    expected = onnxruntime.InferenceSession(str(tmp_path / "in.onnx")).run(["pooled"], {"x": x})[0]
    got = session.run(["pooled"], {"x": x})[0]
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) <= 0.1


def test_budget_run_on_a_model_whose_first_output_is_an_identity_of_its_input(tmp_path, rng):
    """End to end: the search and the check set both measure the weight-dependent output (the check used to
    read the written model's first output, the Identity, and failed on the shapes)."""
    nodes = [helper.make_node("Identity", ["x"], ["echo"]), helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]), helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1)]
    model = make_model(nodes, [float_input("x", ["n", 32])], [float_input("echo", ["n", 32]), float_input("y", ["n", 8])],
                       [weight(rng, "w1", (48, 32), 0.3), weight(rng, "w2", (8, 48), 0.3)])
    onnx.save(model, tmp_path / "in.onnx")
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((80, 32)).astype(np.float32))
    report = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), budget="cosine=0.95",
                                calib=str(tmp_path / "calib.npz"), cache_dir=str(tmp_path / "cache"), min_elements=16,
                                sparsities=(0.0, 0.5, 0.8), bits=(2, 4, 8))
    assert 0 < report.budget["check_error"] <= report.budget["check_bound"] <= 0.05


def test_trial_models_compressed_in_parallel_equal_one_thread(tmp_path, rng, monkeypatch):
    """The search rounds compress an allocation's weights on parallel threads (_TrialModels.prepare): the same
    codebooks, indices and outliers as compressing each on the calling thread (_values alone, the reference)."""
    from onnxcomp.pipeline.autotune import _TrialModels
    from onnxcomp.passes import model_io
    model, data = budget_mlp(tmp_path, rng)
    x = {"x": np.load(data)["x"]}
    settings = {"w1": {"sparsity": 0.5, "bits": 3}, "w2": {"sparsity": 0.3, "bits": 4}}
    options = dict(prune="activation", score="wanda", reconstruct=True, ridge=1e-2, init="quantile", seed=0,
                   rounding="obs", outliers="auto")
    monkeypatch.setenv("ONNXCOMP_THREADS", "2")
    both = _TrialModels(model, x, options, 16, model_io.model_bytes(str(tmp_path / "in.onnx")))
    both.prepare(settings)
    alone = _TrialModels(model, x, options, 16, model_io.model_bytes(str(tmp_path / "in.onnx")))
    for name, setting in settings.items():
        want, want_size = alone._values(name, setting)
        got, got_size = both._values(name, setting)
        assert got_size == want_size
        np.testing.assert_array_equal(got, want)


def test_saturated_bit_widths_are_not_tried(tmp_path, rng):
    """At a sparsity above 0, once one more bit leaves more than SATURATION of the error (the pruning error
    dominates), the higher bit widths are not in the curve; at sparsity 0, and before saturation, every width is."""
    from onnxcomp.pipeline import autotune
    budget_mlp(tmp_path, rng)
    bits = (2, 3, 4, 5, 6, 8)
    report = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), budget="cosine=0.95",
                                calib=str(tmp_path / "calib.npz"), sparsities=(0.0, 0.5, 0.8), bits=bits,
                                min_elements=16, cache_dir=str(tmp_path / "cache"))
    import json
    with open(report.budget["cache"]) as f:
        curves = json.load(f)
    skipped = 0
    for points in curves.values():
        points = [p for p in points if p[0] is not None]
        for sparsity in sorted({p[0] for p in points}):
            tried = [p for p in points if p[0] == sparsity]
            errors, widths = [p[3] for p in tried], [p[1] for p in tried]
            if sparsity == 0:
                assert widths == list(bits)  # nothing is capped or saturated at the first sparsity
                continue
            # widths capped at a lower sparsity (error past CAP x the budget) are left out at the bottom
            assert widths == [b for b in bits if b >= widths[0]][:len(widths)]
            saturated = next((i for i in range(1, len(errors)) if errors[i] > autotune.SATURATION * errors[i - 1]), None)
            if saturated is None:
                assert widths[-1] == bits[-1]
            else:
                assert widths[-1] == widths[saturated]
                skipped += bits.index(bits[-1]) - bits.index(widths[-1])
    assert skipped > 0  # this model's pruned curves do saturate


def test_weights_no_codebook_can_hold_are_left_dense_as_float16(tmp_path, rng):
    """A budget no 2-bit codebook meets: both weights stay dense, stored as float16 (half the bytes, a Cast back to
    float32), not as float32; the float16 candidates' error is measured on a trial model and the output still meets
    the budget on the check samples, measured here in onnxruntime."""
    model, data = budget_mlp(tmp_path, rng)
    report = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), budget="cosine=0.9999",
                                calib=str(data), sparsities=(0.0,), bits=(2,), min_elements=16,
                                cache_dir=str(tmp_path / "cache"))
    b = report.budget
    assert b["settings"] == {"w1": {"skip": True, "float16": True}, "w2": {"skip": True, "float16": True}}
    assert 0 <= b["float16_error"] < 1e-4
    assert sorted(name for name, _ in report.float16) == ["w1", "w2"]
    written = onnx.load(tmp_path / "out.onnx")
    assert {report.names.get(t.name, t.name): t.data_type for t in written.graph.initializer} == {
        "w1__float16": onnx.TensorProto.FLOAT16, "w2__float16": onnx.TensorProto.FLOAT16}
    assert report.output_bytes < report.input_bytes * 0.6
    x = np.load(data)["x"][budget_split(80, 20, 20)[2]]
    from conftest import run_plain
    got = onnxcomp.InferenceSession(tmp_path / "out.onnx").run(None, {"x": x})[0]
    assert error("cosine", run_plain(model, {"x": x})[0], got) <= 1e-4


def test_float16_candidates_share_the_measured_error_by_sensitivity():
    from onnxcomp.pipeline.autotune import HALF_BITS, _setting, _with_float16
    curves = {"a": [(0.0, 4, 300, 0.02), (None, None, 4000, 0.0)], "b": [(0.0, 4, 100, 0.01), (None, None, 1000, 0.0)],
              "c": [(0.0, 4, 50, 0.001), (None, None, 800, 0.0)]}
    extended = _with_float16(curves, {"a", "b"}, 0.006)  # shared as the 4-bit errors: a 2/3, b 1/3
    assert extended["a"][-1] == (None, HALF_BITS, 2000, pytest.approx(0.004))
    assert extended["b"][-1] == (None, HALF_BITS, 500, pytest.approx(0.002))
    by_size = _with_float16({n: [p for p in ps if p[0] is None] for n, ps in curves.items()}, {"a", "b"}, 0.005)
    assert by_size["a"][-1][3] == pytest.approx(0.004) and by_size["b"][-1][3] == pytest.approx(0.001)
    assert extended["c"] == curves["c"]
    assert _setting(extended["a"][-1]) == {"skip": True, "float16": True}
    assert _setting(extended["a"][-2]) == {"skip": True}
    # a budget the 4-bit codebooks of a and b miss: float16, not float32, for both
    chosen = allocate({n: [(p[2], p[3]) for p in ps] for n, ps in extended.items()}, 0.0075)
    assert chosen == {"a": 2, "b": 2, "c": 0}


def test_check_set_tests_rungs_between_the_safe_rung_and_the_searched_allocation(tmp_path, rng):
    """After the search, the safe rung (the allocation within SAFE_RUNG x the bisection's largest allowed error that
    met its bound) and rungs on a nested path from it to the search's allocation (budget.nested_path), whose
    predicted errors grow rung by rung: the check set tests them from the largest down, so it can stop between the
    two instead of writing the safe rung when the searched allocation misses. Same input, same bytes twice."""
    from onnxcomp.pipeline.autotune import SAFE_RUNG
    model, data = budget_mlp(tmp_path, rng)
    kwargs = dict(budget="cosine=0.96", calib=str(data), sparsities=(0.0, 0.3, 0.5, 0.7, 0.8), bits=(2, 3, 4, 5, 6, 8),
                  min_elements=16, cache_dir=str(tmp_path / "cache"))
    report = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), **kwargs)
    rounds = report.budget["rounds"]
    searched = [r for r in rounds if r["steered_by"] == "bound"]
    base = max(r["allowed"] for r in searched if r["bound"] <= 0.04 + 1e-12)
    passed_at = max([base] + [r["allowed"] for r in rounds if r["steered_by"] == "probe" and r["bound"] <= 0.04 + 1e-12])
    safe = [r for r in rounds if r["steered_by"] == "safe rung"]
    # the bisection's largest passing allowed error lies between base and the smallest failing one above it (a round
    # whose allocation an earlier round already tried is not listed)
    failed = min([r["allowed"] for r in searched if r["bound"] > 0.04 + 1e-12 and r["allowed"] > base], default=np.inf)
    assert not safe or SAFE_RUNG * base * (1 - 1e-9) <= safe[0]["allowed"] < SAFE_RUNG * failed
    rungs = [r for r in rounds if r["steered_by"] == "rung"]  # a rung an earlier round already tried is not listed again
    assert all(r["allowed"] <= passed_at + 1e-12 for r in rungs)
    between = [r["predicted"] for r in rungs if r["allowed"] < passed_at]  # the path's own, not the search's allocation
    assert between == sorted(between)
    checks = report.budget["checks"]
    passed = [c for c in checks if c["bound"] <= 0.04 + 1e-12]
    assert checks[:len(passed)] == passed and report.output_bytes == min(c["bytes"] for c in passed)
    again = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "again.onnx"), **kwargs)
    assert [(c["measured"], c["bound"]) for c in again.budget["checks"]] == [(c["measured"], c["bound"]) for c in checks]
    assert (tmp_path / "again.onnxcomp").read_bytes() == (tmp_path / "out.onnxcomp").read_bytes()


def test_data_free_output_is_a_candidate_the_search_must_beat(tmp_path, rng):
    """The data-free default output (its back-off measured on the held-back samples) joins the check set's sequence
    when it meets the budget at its bound there: when it passes the check, the written model is no larger than it."""
    model, data = budget_mlp(tmp_path, rng)
    kwargs = dict(budget="cosine=0.95", calib=str(data), sparsities=(0.0,), bits=(8,), min_elements=16,
                  cache_dir=str(tmp_path / "cache"))
    report = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), **kwargs)
    x = np.load(data)["x"]
    _, hold, _ = budget_split(80, 20, 20)
    (tmp_path / "free").mkdir()
    free = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "free" / "out.onnx", min_elements=16, fidelity_data={"x": x[hold]})
    tested = [c for c in report.budget["checks"] if c["bytes"] == free.output_bytes]
    assert tested and free.output_bytes < 0.5 * report.input_bytes  # 8-bit codebooks alone could not get there
    if tested[0]["bound"] <= 0.05:
        assert report.output_bytes <= free.output_bytes
    assert report.budget["data_free"] == (report.output_bytes == free.output_bytes)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".onnxcomp-")] == []


def test_data_free_output_is_tested_by_written_size_not_after_overstated_trial_sizes(tmp_path, rng, monkeypatch):
    """The allocations' sizes in the search are trial estimates, the data-free output's its written size. With the
    trial sizes overstated (here 3x, so by them every allocation looks larger than the data-free output), the
    data-free output is still tested before the first allocation written no larger than it, and an allocation
    written no smaller than one accepted before it is not tested: the check set's sizes fall strictly (before, the
    data-free output came last, so a smaller allocation's miss could leave it untested, and a larger allocation
    tested after it could stop the sequence)."""
    from onnxcomp.pipeline import autotune
    real = autotune._TrialModels.run

    def overstated(self, settings, feeds):
        output, size = real(self, settings, feeds)
        return output, size * 3
    monkeypatch.setattr(autotune._TrialModels, "run", overstated)
    model, data = budget_mlp(tmp_path, rng)
    report = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), budget="cosine=0.95",
                                calib=str(data), sparsities=(0.0, 0.5), bits=(2, 3, 4, 8), min_elements=16,
                                cache_dir=str(tmp_path / "cache"))
    x = np.load(data)["x"]
    _, hold, _ = budget_split(80, 20, 20)
    (tmp_path / "free").mkdir()
    free = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "free" / "out.onnx", min_elements=16, fidelity_data={"x": x[hold]})
    sizes = [c["bytes"] for c in report.budget["checks"]]
    assert len(sizes) >= 2 and free.output_bytes in sizes, sizes  # it met its bound on the held-back samples here
    assert sizes == sorted(set(sizes), reverse=True)  # each tested only if smaller than every one before it
    assert report.output_bytes <= free.output_bytes
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".onnxcomp-")] == []


def test_near_misses_on_the_held_back_samples_are_tested_last_on_the_check_set(tmp_path, rng, monkeypatch):
    """Trials that missed the budget as measured on the held-back samples by at most NEAR_MISS x its error are tested
    on the check set after every other allocation, smaller than all of them, from the largest down (the trials' error
    on the held-back samples is made 1.3x what it is, so the search's own allocations sit well inside the budget and
    some trials just outside it); one that passes there is written. Without them (NEAR_MISSES = 0, the default) the
    sequence ends at a larger allocation."""
    import sys
    from onnxcomp.core import budget as budget_math
    from onnxcomp.pipeline import autotune
    error, bound = budget_math.error, budget_math.error_bound

    def trial(function):
        def inflated(*args):
            value = function(*args)
            return value * 1.3 if sys._getframe(1).f_code.co_name == "try_choice" else value
        return inflated
    monkeypatch.setattr(budget_math, "error", trial(error))
    monkeypatch.setattr(budget_math, "error_bound", trial(bound))
    _, data = budget_mlp(tmp_path, rng)
    run = lambda name: compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / f"{name}.onnx"), budget="cosine=0.95",
                                          calib=str(data), sparsities=(0.0, 0.5, 0.7), bits=(2, 3, 4, 8), min_elements=16,
                                          cache_dir=str(tmp_path / "cache"))
    monkeypatch.setattr(autotune, "NEAR_MISSES", 2)
    report = run("near")
    checks = report.budget["checks"]
    limit = 0.05
    near = [i for i, c in enumerate(checks) if c["held_back"] > limit]
    assert near, checks
    assert all(limit < checks[i]["held_back"] <= autotune.NEAR_MISS * limit for i in near)
    assert near == list(range(near[0], len(checks)))  # last in the sequence
    assert all(checks[i]["bytes"] < min(c["bytes"] for c in checks[:near[0]]) for i in near)
    assert report.output_bytes == min(c["bytes"] for c in checks if c["bound"] <= limit)
    assert report.output_bytes in [checks[i]["bytes"] for i in near] and report.budget["check_bound"] <= limit
    monkeypatch.setattr(autotune, "NEAR_MISSES", 0)
    without = run("without")
    assert all(c["held_back"] <= limit for c in without.budget["checks"])
    assert without.output_bytes > report.output_bytes
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".onnxcomp-")] == []


def test_a_check_set_miss_names_the_closest_allocation_and_writes_nothing(tmp_path, rng, monkeypatch):
    """When every allocation misses on the check set (its bound forced past any budget there, the search's own
    bounds untouched), the run fails with one message that says by how much the closest missed, and leaves no
    output."""
    import sys
    from onnxcomp.core import budget as budget_math
    _, data = budget_mlp(tmp_path, rng)
    bound = budget_math.error_bound

    def missing_on_the_check_set(metric, reference, output, labels, z):
        if sys._getframe(1).f_locals.get("expected") is reference:  # compress_to_budget's check-set call
            return 0.5
        return bound(metric, reference, output, labels, z)
    monkeypatch.setattr(budget_math, "error_bound", missing_on_the_check_set)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OnnxcompError, match=r"missed it on the \d+ check samples \(closest: cosine [0-9.e-]+ measured, "
                                            r"0\.5 with its margin, 0\.1 allowed\)"):
        compress_to_budget(str(tmp_path / "in.onnx"), str(out / "m.onnx"), budget="cosine=0.9", calib=str(data),
                           sparsities=(0.0, 0.5), bits=(4, 8), min_elements=16, cache_dir=str(tmp_path / "cache"))
    assert list(out.iterdir()) == []


def test_trial_models_take_the_sensitivity_analysis_calibration(tmp_path, rng):
    """The trial models take the statistics the sensitivity analysis's calibration pass gathered (_measure's
    ``keep``) instead of a second pass on the same samples: the same codebooks, indices, outliers and bytes, bit for
    bit, as trial models that calibrate themselves; every weight's statistics are handed over once, without the
    inverse factors the curves cached."""
    from onnxcomp.pipeline.autotune import _TrialModels, _measure, _session
    from onnxcomp.passes import model_io
    from onnxcomp.passes.calibration import run_batched
    model, data = budget_mlp(tmp_path, rng)
    x = {"x": np.load(data)["x"]}
    fit, hold = {"x": x["x"][:60]}, {"x": x["x"][60:]}
    options = dict(prune="activation", score="wanda", reconstruct=True, ridge=1e-2, init="quantile", seed=0,
                   rounding="obs", outliers="auto")
    reference = run_batched(_session(model), hold)[0]
    kept = {}
    _measure(model, fit, hold, reference, None, "cosine", (0.0, 0.5), (3, 4), options, 16, keep=kept)
    assert set(kept) == {"w1", "w2"} and all(s.dense_gram is not None or s.activations is not None for _, s in kept.values())
    assert all(s.factor_cache is None for _, s in kept.values())
    given = _TrialModels(model, fit, options, 16, model_io.model_bytes(str(tmp_path / "in.onnx")), kept)
    assert kept == {}  # handed over, not copied
    fresh = _TrialModels(model, fit, options, 16, model_io.model_bytes(str(tmp_path / "in.onnx")))
    for name in ("w1", "w2"):
        np.testing.assert_array_equal(given.targets[name].statistics.gram, fresh.targets[name].statistics.gram)
    for settings in ({"w1": {"sparsity": 0.5, "bits": 3}, "w2": {"sparsity": 0.0, "bits": 4}},
                     {"w1": {"sparsity": 0.3, "bits": 2}, "w2": {"skip": True}}):
        got, got_size = given.run(settings, hold)
        want, want_size = fresh.run(settings, hold)
        assert got_size == want_size
        np.testing.assert_array_equal(got, want)
        for key in given.compressed:
            for a, b in zip(given.compressed[key], fresh.compressed[key]):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("text, axis, start, stop, step, index", [
    ("y[..., 4:6]", -1, 4, 6, 1, np.s_[..., 4:6]), ("y[:, 4:]", 1, 4, None, 1, np.s_[:, 4:]),
    ("y[:, :, -2:]", 2, -2, None, 1, np.s_[:, :, -2:]), ("y[..., 1:5:2, :]", -2, 1, 5, 2, np.s_[..., 1:5:2, :]),
    ("y[..., -1]", -1, -1, None, 1, np.s_[..., -1:]), ("y[:, 3]", 1, 3, 4, 1, np.s_[:, 3:4]),
    ("y[ : , 2 : 4 ]", 1, 2, 4, 1, np.s_[:, 2:4])])
def test_budget_output_slice_is_parsed_as_numpy_reads_it(text, axis, start, stop, step, index):
    """An integer keeps its axis (i:i+1); items after '...' count from the last axis."""
    from onnxcomp.pipeline.budget_output import parse
    chosen = parse(text, ["y", "z"])
    assert (chosen.name, chosen.axis, chosen.start, chosen.stop, chosen.step) == ("y", axis, start, stop, step)
    array = np.arange(2 * 5 * 6).reshape(2, 5, 6)
    assert np.array_equal(chosen.take(array), array[index])


@pytest.mark.parametrize("text, words", [
    ("nothing[..., 4:6]", "is not an output of the model"), ("y[..., a:b]", "is not a slice"),
    ("y[..., 4:6, ...]", "'...' may appear once"), ("y[:, 1:2, 3:4]", "slice one axis only"),
    ("y[0:4, ...]", "axis 0 holds the calibration samples"), ("y[:, ::-1]", "the step must be 1 or more"),
    ("y[:, :]", "selects the whole output"), ("y[:, 1:2:3:4]", "is not a slice"), ("y[, 1:2]", "an empty item")])
def test_budget_output_bad_slices_are_refused_in_one_line(text, words):
    from onnxcomp.pipeline.budget_output import parse
    with pytest.raises(OnnxcompError, match=words) as raised:
        parse(text, ["y", "z"])
    assert "\n" not in str(raised.value)


def test_budget_output_whole_name_wins_over_a_slice():
    from onnxcomp.pipeline.budget_output import parse
    assert not parse("y[0]", ["y", "y[0]"]).sliced


def _detector_like(rng, tmp_path):
    """A model whose output y [n, 6, 10] holds 4 rows of large 'box coordinates' (from w1) and 2 rows of small
    'scores' (sigmoid, from w2) per anchor, as a YOLOv8 export lays them out; and 80 calibration samples."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["boxes_flat"]), helper.make_node("Reshape", ["boxes_flat", "box_shape"], ["boxes"]),
             helper.make_node("MatMul", ["x", "w2"], ["logits_flat"]), helper.make_node("Reshape", ["logits_flat", "score_shape"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["scores"]), helper.make_node("Concat", ["boxes", "scores"], ["y"], axis=1)]
    shapes = [onnx.numpy_helper.from_array(np.array([-1, 4, 10], np.int64), "box_shape"),
              onnx.numpy_helper.from_array(np.array([-1, 2, 10], np.int64), "score_shape")]
    model = make_model(nodes, [float_input("x", ["n", 32])], [float_input("y", ["n", 6, 10])],
                       [weight(rng, "w1", (32, 40), 30.0), weight(rng, "w2", (32, 20), 0.3)] + shapes)
    onnx.save(model, tmp_path / "in.onnx")
    x = rng.standard_normal((80, 32)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    return model, x


@pytest.mark.parametrize("text", ["y[:, 4:]", "y[..., 4:6, :]", "y[:, -2:]", "y[..., 1:9:3]", "y[:, 5]", "y[..., -1]"])
def test_budget_output_slice_node_computes_what_take_computes(tmp_path, rng, text):
    """The measured model's Slice node and the numpy slice applied to a written model's output agree exactly."""
    from onnxcomp.pipeline.autotune import _weight_output_first
    model, x = _detector_like(rng, tmp_path)
    chosen = _weight_output_first(model, text)
    assert [o.name for o in model.graph.output] == [text, "y"]
    full, sliced = onnxruntime.InferenceSession(model.SerializeToString()).run(["y", text], {"x": x})
    assert sliced.size and np.array_equal(sliced, chosen.combine([full]))


def test_budget_output_parts_are_joined_balanced(tmp_path, rng):
    """Several parts: the measured model's first output is the parts flattened, each divided by its RMS on the
    samples balance() is given, and concatenated; the numpy combine() of a written model's output computes the same,
    and its pooled relative L2 error is the RMS of the parts' own."""
    from onnxcomp.pipeline import budget_output as output_slice
    from onnxcomp.pipeline.autotune import _weight_output_first
    model, x = _detector_like(rng, tmp_path)
    measured = _weight_output_first(model, ["y[:, :4]", "y[:, 4:]"])
    session = onnxruntime.InferenceSession(model.SerializeToString())
    flats = session.run([o.name for o in model.graph.output[:2]], {"x": x})
    output_slice.balance(model, measured, flats)
    assert [o.name for o in model.graph.output] == ["y[:, :4] + y[:, 4:]", "y"]
    joined, full = onnxruntime.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    assert joined.dtype == np.float64 and joined.shape == (80, 60)
    assert np.array_equal(joined, measured.combine([full]))
    assert np.array_equal(joined, measured.join(flats))  # the search's reference, taken from the flats without a run
    assert np.mean((joined[:, :40] ** 2).sum(1)) == pytest.approx(1.0) and np.mean((joined[:, 40:] ** 2).sum(1)) == pytest.approx(1.0)
    noisy = full * (1 + 0.01 * rng.standard_normal(full.shape)).astype(np.float32)
    parts = [np.linalg.norm(noisy[:, s] - full[:, s].astype(np.float64)) / np.linalg.norm(full[:, s].astype(np.float64))
             for s in (np.s_[:4], np.s_[4:])]
    assert error("rel_l2", joined, measured.combine([noisy])) == pytest.approx(np.sqrt(np.mean(np.square(parts))), rel=1e-9)
    with pytest.raises(OnnxcompError, match="several --budget-output parts .* not top1"):
        compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), budget="top1=0.99",
                           calib=str(tmp_path / "calib.npz"), budget_output=["y[:, :4]", "y[:, 4:]"])


def test_budget_output_slice_past_the_rank_or_of_nothing_is_refused(tmp_path, rng):
    from onnxcomp.pipeline.autotune import _weight_output_first
    model, _ = _detector_like(rng, tmp_path)
    with pytest.raises(OnnxcompError, match="axis -4 is outside output 'y' of rank 3"):
        _weight_output_first(model, "y[..., 1:2, :, :, :]")
    with pytest.raises(OnnxcompError, match="axis 0 holds the calibration samples"):
        _weight_output_first(model, "y[..., 1:2, :, :]")
    with pytest.raises(OnnxcompError, match="selects nothing from axis 1 of length 6"):
        _weight_output_first(model, "y[:, 6:]")


def test_budget_on_a_slice_holds_on_that_slice(tmp_path, rng):
    """End to end on a detector-like output (boxes from w1 only, scores from w2 only): a rel_l2 budget on the score
    rows (y[:, 4:]) is confirmed on the check set in those rows, the report names the slice, and the written model
    keeps its outputs (no Slice node). The same budget on the whole output, dominated by the large 'box' rows,
    leaves the scores far more error; on the scores alone it leaves the boxes unguarded (w1 compressed as far as
    the candidates go); on both parts, balanced, each part stays within sqrt(2) x the budget."""
    from onnxcomp.runtime import InferenceSession
    _detector_like(rng, tmp_path)
    options = dict(budget="rel_l2=0.02", calib=str(tmp_path / "calib.npz"), cache_dir=str(tmp_path / "cache"),
                   min_elements=16, sparsities=(0.0, 0.5, 0.8), bits=(2, 3, 4, 8))
    report = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "sliced.onnx"), budget_output="y[:, 4:]", **options)
    assert report.budget["output"] == "y[:, 4:]"
    assert 0 < report.budget["check_error"] <= report.budget["check_bound"] <= 0.02
    written = onnx.load(str(tmp_path / "sliced.onnx"))
    assert [o.name for o in written.graph.output] == ["y"] and all(n.op_type != "Slice" for n in written.graph.node)
    compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "whole.onnx"), **options)
    both = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "both.onnx"),
                              budget_output=["y[:, :4]", "y[:, 4:]"], **options)
    assert both.budget["output"] == "y[:, :4] + y[:, 4:]" and both.budget["check_bound"] <= 0.02
    x = np.load(tmp_path / "calib.npz")["x"]
    expected = onnxruntime.InferenceSession(str(tmp_path / "in.onnx")).run(["y"], {"x": x})[0]

    def errors(name):  # (boxes, scores) relative L2 errors on all 80 samples
        got = InferenceSession(str(tmp_path / name)).run(["y"], {"x": x})[0]
        return [np.linalg.norm(got[:, s] - expected[:, s]) / np.linalg.norm(expected[:, s]) for s in (np.s_[:4], np.s_[4:])]
    sliced, whole, balanced = errors("sliced.onnx"), errors("whole.onnx"), errors("both.onnx")
    assert sliced[1] <= 0.04  # the budget within a factor 2 on all 80 samples
    assert whole[1] > 2 * sliced[1]
    assert sliced[0] > 0.1  # the boxes, which the scores' budget does not see
    assert max(balanced) <= 2 * np.sqrt(2) * 0.02


def _scores(rows, classes=4):
    """One-hot-ish per-position scores [samples, positions, classes] whose argmax is ``rows``."""
    rows = np.asarray(rows)
    scores = np.full((*rows.shape, classes), 0.1, np.float32)
    np.put_along_axis(scores, rows[..., None], 0.9, axis=-1)
    return scores


def test_ctc_metric_counts_edits_of_greedy_decodings():
    """ctc: argmax per position, repeats merged, blank 0 dropped, then edits over the reference's characters."""
    from onnxcomp.core.budget import ctc_decode, ctc_edits, edit_distance, error_bound
    reference = _scores([[1, 1, 0, 2, 2, 3], [0, 2, 0, 2, 0, 0]])
    output = _scores([[1, 0, 1, 2, 0, 3], [0, 2, 2, 2, 0, 0]])
    assert [d.tolist() for d in ctc_decode(reference)] == [[1, 2, 3], [2, 2]]
    assert [d.tolist() for d in ctc_decode(output)] == [[1, 1, 2, 3], [2]]
    assert edit_distance(np.array([1, 2, 3]), np.array([3, 2, 1, 4])) == 3
    edits, chars = ctc_edits(reference, output)
    assert edits.tolist() == [1, 1] and chars.tolist() == [3, 2]
    assert error("ctc", reference, output) == pytest.approx(2 / 5)
    assert error("ctc", reference, reference) == 0.0
    # no edit: the Wilson bound over the characters, about 1 / (characters + 1)
    assert error_bound("ctc", reference, reference) == pytest.approx(1 / 6)
    assert parse_budget("ctc=0.99").max_error == pytest.approx(0.01)
    assert allocation_metric("ctc", reference) == "rel_l2"
    with pytest.raises(InvalidOptionError, match="per-position class scores"):
        allocation_metric("ctc", reference[:, 0])


def test_ctc_bound_treats_one_sample_s_characters_as_a_cluster():
    """Edits concentrated in one sample are not independent characters: the ratio estimator's standard error over
    samples sets the bound (10 samples of 10 characters, one with 5 edits: 0.05 + 0.05), above the Wilson bound
    over 100 characters (0.077)."""
    from onnxcomp.core.budget import _ctc_bound, _wilson_upper
    chars = np.full(10, 10)
    clustered = np.array([5] + [0] * 9)
    assert _ctc_bound(clustered, chars, 1.0) == pytest.approx(0.10)
    assert _wilson_upper(0.05, 100, 1.0) < 0.08
    spread = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])  # the same 5 edits over 5 samples: a smaller spread
    assert _ctc_bound(spread, chars, 1.0) < _ctc_bound(clustered, chars, 1.0)
    assert _ctc_bound(np.zeros(3, np.int64), np.zeros(3, np.int64), 1.0) == float("inf")  # nothing read: nothing confirmed


def test_a_ctc_budget_holds_on_the_check_samples(tmp_path, rng):
    """A per-position classifier (a CTC recogniser's shape, [samples, positions, classes]) compressed to ctc=0.97:
    the check set's bound meets it, and the written model's character agreement with the original on the check
    samples, decoded here, is what the report says."""
    from onnxcomp.core.budget import ctc_edits
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["s"]), helper.make_node("Softmax", ["s"], ["y"], axis=-1)]
    w1 = weight(rng, "w1", (16, 48), 0.5)
    w2 = weight(rng, "w2", (48, 6), 0.5)
    model = make_model(nodes, [float_input("x", ["n", 12, 16])], [float_input("y", ["n", 12, 6])], [w1, w2])
    onnx.save(model, tmp_path / "in.onnx")
    data = tmp_path / "calib.npz"
    np.savez(data, x=rng.standard_normal((80, 12, 16)).astype(np.float32))
    report = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), budget="ctc=0.97",
                                calib=str(data), sparsities=(0.0, 0.5), bits=(2, 3, 4, 8), min_elements=16,
                                cache_dir=str(tmp_path / "cache"))
    b = report.budget
    assert b["metric"] == "ctc" and b["allocation_metric"] == "rel_l2"
    assert b["check_bound"] <= 0.03 and report.output_bytes < report.input_bytes
    x = np.load(data)["x"][budget_split(80, 20, 20)[2]]
    from conftest import run_plain
    got = onnxcomp.InferenceSession(tmp_path / "out.onnx").run(None, {"x": x})[0]
    edits, chars = ctc_edits(run_plain(model, {"x": x})[0], got)
    assert edits.sum() / chars.sum() == pytest.approx(b["check_error"])


def test_distilled_rungs_are_tested_last_on_the_check_set(tmp_path, rng):
    """With --sequential on a fully connected chain the check set's allocations are distilled, and allocations beyond
    the search's own (DISTILLED_RUNGS x its largest allowed error that met the budget) follow every other entry of
    the sequence, smaller than all of them, with no held-back measurement; without distillation there are none."""
    from onnxcomp.pipeline import autotune
    _, data = budget_mlp(tmp_path, rng)
    np.savez(data, x=rng.standard_normal((400, 32)).astype(np.float32))  # a check set of 100: room for the rungs
    run = lambda name, distill: compress_to_budget(
        str(tmp_path / "in.onnx"), str(tmp_path / f"{name}.onnx"), budget="rel_l2=0.3", calib=str(data), prune="activation",
        sequential=True, sparsities=(0.0, 0.5, 0.7, 0.9), bits=(2, 3, 4, 8), min_elements=16, cache_dir=str(tmp_path / "cache"),
        distill=distill)
    report = run("on", None)
    checks = report.budget["checks"]
    assert report.budget["distilled"] and autotune.DISTILLED_RUNGS
    rungs = [i for i, c in enumerate(checks) if c["held_back"] is None]
    assert rungs and rungs == list(range(rungs[0], len(checks))), checks  # reached, and last in the sequence
    assert all(checks[i]["bytes"] < min(c["bytes"] for c in checks[:rungs[0]]) for i in rungs)
    assert report.output_bytes == min(c["bytes"] for c in checks if c["bound"] <= 0.3)
    without = run("off", False)
    assert not without.budget["distilled"] and all(c["held_back"] is not None for c in without.budget["checks"])
    assert without.budget["measured_error"] is not None


def test_multiply_adds_counts_convolutions_and_products():
    """multiply_adds: a 3x3 Conv (4 outputs of 3 channels, pads 1) on an 8 x 8 image, a Gemm [256 -> 10] and a
    MatMul [10 -> 6]: each output element times its dot product's length, from the sample's own shape."""
    from onnxcomp.pipeline.autotune import multiply_adds
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("Gemm", ["f", "g"], ["h"], transB=1), helper.make_node("MatMul", ["h", "m"], ["y"])]
    model = make_model(nodes, [float_input("x", ["n", 3, "height", "width"])], [float_input("y", ["n", 6])],
                       [weight(rng, "w", (4, 3, 3, 3), 0.3), weight(rng, "g", (10, 256), 0.3), weight(rng, "m", (10, 6), 0.3)])
    one = {"x": np.zeros((1, 3, 8, 8), np.float32)}
    assert multiply_adds(model, one) == 4 * 8 * 8 * 27 + 10 * 256 + 6 * 10
    assert multiply_adds(model, {"x": np.zeros((2, 3, 8, 8), np.float32)}) == 2 * multiply_adds(model, one)


def test_a_held_back_subset_only_where_a_run_on_them_is_costly(tmp_path, rng, monkeypatch):
    """held_subset: None for the budget MLP (1,920 multiply-adds a sample, far below SUBSET_WORK) and when no more
    than held_subset_size's are held back; else that many of them, seeded, in file order, with their reference
    rows and labels, the same on every call. held_subset_size: 60 of 100 samples, the mean's relative standard
    error then within SUBSET_ERROR at SAMPLE_SPREAD, not at one sample fewer."""
    from onnxcomp.pipeline import autotune
    def relative_error(n, count):
        return autotune.SAMPLE_SPREAD * np.sqrt((count - n) / ((count - 1) * n))
    assert autotune.held_subset_size(100) == 60
    for count in (2, 10, 100, 1000):
        n = autotune.held_subset_size(count)
        assert relative_error(n, count) <= autotune.SUBSET_ERROR and (n == 1 or relative_error(n - 1, count) > autotune.SUBSET_ERROR)
    model, data = budget_mlp(tmp_path, rng)
    x = np.load(data)["x"]
    hold, reference, labels = {"x": x[40:]}, x[40:, :8] * 2, np.arange(40)
    assert autotune.multiply_adds(model, {"x": x[:1]}) == 48 * 32 + 8 * 48
    assert autotune.held_subset(model, hold, reference, labels, {"x": 0}, 0) is None
    monkeypatch.setattr(autotune, "SUBSET_WORK", 1920 * 40 - 1)
    monkeypatch.setattr(autotune, "held_subset_size", lambda count: 12)
    feeds, wanted, truth, rows = autotune.held_subset(model, hold, reference, labels, {"x": 0}, 0)
    assert np.array_equal(rows, truth) and len(truth) == 12 and np.all(np.diff(truth) > 0)
    assert np.array_equal(feeds["x"], hold["x"][truth]) and np.array_equal(wanted, reference[truth])
    again = autotune.held_subset(model, hold, reference, labels, {"x": 0}, 0)
    assert np.array_equal(again[2], truth)
    assert not np.array_equal(autotune.held_subset(model, hold, reference, labels, {"x": 0}, 1)[2], truth)
    assert autotune.held_subset(model, hold, reference, None, {"x": 0}, 0)[2] is None
    monkeypatch.setattr(autotune, "held_subset_size", lambda count: count)
    assert autotune.held_subset(model, hold, reference, labels, {"x": 0}, 0) is None
    monkeypatch.setattr(autotune, "SUBSET_WORK", 1920 * 40)
    monkeypatch.setattr(autotune, "held_subset_size", lambda count: 12)
    assert autotune.held_subset(model, hold, reference, labels, {"x": 0}, 0) is None


def test_a_spread_weights_trials_are_measured_on_the_subset(tmp_path, rng, monkeypatch):
    """_measure with a subset of the held-back samples, on the budget MLP with every other measured error 8x (anchors
    spread by 8 > SPREAD): each weight's trials until its anchors spread run on every held-back sample, every later one
    on the subset alone, against the subset's reference rows. Where no anchors spread (SPREAD huge), the subset
    changes nothing: the same curves, every trial on all the samples."""
    from onnxcomp.pipeline import autotune
    model, fit, hold, reference, options = _curve_inputs(tmp_path, rng, 40)
    rows = np.array([1, 4, 5, 9, 13, 20, 22, 30, 31, 38])
    subset = ({"x": hold["x"][rows]}, reference[rows], None, rows)
    real, calls = autotune.budget_math.error, []

    def spread(metric, wanted, output, labels=None):
        calls.append(len(wanted))
        if len(wanted) == len(rows):
            assert np.array_equal(wanted, subset[1]) and len(output) == len(rows)
        return real(metric, wanted, output, labels) * (8.0 if len(calls) % 2 else 1.0)

    monkeypatch.setattr(autotune.budget_math, "error", spread)
    monkeypatch.setattr(autotune.parallel, "default_workers", lambda: 1)  # one order of trials
    sparsities, bits = (0.0, 0.3, 0.5, 0.6), (2, 3, 4, 5, 6)
    whole = autotune._measure(model, fit, hold, reference, None, "cosine", sparsities, bits, options, 16)
    on_all = list(calls)
    calls[:] = []
    sampled = autotune._measure(model, fit, hold, reference, None, "cosine", sparsities, bits, options, 16, subset=subset)
    assert set(on_all) == {40}
    first = calls.index(len(rows))
    assert first >= autotune.ANCHORS and set(calls[:first]) == {40} and calls.count(len(rows)) > len(bits)
    assert calls[:first] == on_all[:first] and sampled != whole
    monkeypatch.setattr(autotune.budget_math, "error", lambda *args: (calls.append(len(args[1])), real(*args))[1])
    monkeypatch.setattr(autotune, "SPREAD", 1e12)
    calls[:] = []
    plain = autotune._measure(model, fit, hold, reference, None, "cosine", sparsities, bits, options, 16)
    calls_plain, calls[:] = list(calls), []
    assert autotune._measure(model, fit, hold, reference, None, "cosine", sparsities, bits, options, 16,
                             subset=subset) == plain
    assert set(calls) == {40} and calls == calls_plain
