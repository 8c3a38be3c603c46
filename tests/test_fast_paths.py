"""The fast paths of default compression (issue #16) against the straightforward code they replace: same values,
same bytes. Each fast path is compared with its reference on inputs built to hit its edge cases (ties, signed
zeros, pruned ranges, models read once or re-read)."""

import os

import numpy as np
import onnx
import pytest
from onnx import helper

from conftest import float_input, make_model
from onnxcomp.core import allocation
from onnxcomp.passes import model_io
from onnxcomp.pipeline import fidelity


def tensors(rng):
    """Tensors above allocation.SAMPLE values: Gaussian, heavy-tailed, and few levels with signed zeros (ties)."""
    n = allocation.SAMPLE + 40_000
    gaussian = rng.standard_normal(n).astype(np.float32)
    heavy = (rng.standard_t(2, n) * 0.01).astype(np.float32)
    levels = rng.choice(np.array([-0.5, -0.0, 0.0, 0.25, 1.0], np.float32), n)
    return {"gaussian": gaussian, "heavy": heavy, "levels": levels}


def test_sample_matches_the_reference(rng):
    """Radix-selected extremes and a sorted union give the reference's values (no tie at the EXTREMES-th |w|)."""
    for name, w in tensors(rng).items():
        if name == "levels":
            continue  # ties at the cut: the reference's argpartition picks any of them (next test)
        for seed in (0, 3):
            fast, reference = allocation._sample(w, seed), allocation._sample_reference(w, seed)
            assert fast.dtype == np.float64
            np.testing.assert_array_equal(fast.view(np.int64), reference.view(np.int64))
    small = rng.standard_normal(1000).astype(np.float32)
    np.testing.assert_array_equal(allocation._sample(small, 0), small.astype(np.float64))


def test_sample_takes_the_earliest_tied_extremes(rng):
    """With the EXTREMES-th largest |w| tied, the earliest positions of that magnitude are the ones sampled."""
    w = np.zeros(allocation.SAMPLE + 1000, np.float32)
    w[::7] = 2.0  # far more than EXTREMES values of the largest magnitude, of both signs
    w[3::14] = -2.0
    chosen = np.random.default_rng(0).choice(w.size, allocation.SAMPLE - allocation.EXTREMES, replace=False)
    largest = np.flatnonzero(np.abs(w) == 2.0)[:allocation.EXTREMES]
    expected = w[np.union1d(chosen, largest)].astype(np.float64)
    np.testing.assert_array_equal(allocation._sample(w, 0), expected)


@pytest.mark.parametrize("kind", ["gaussian", "heavy", "levels"])
def test_fit_values_match_the_reference(rng, kind):
    """The codebook's fit values read off the sorted sample equal the masked, sorted ones, signed zeros included."""
    w = tensors(rng)[kind]
    allocator = allocation.Allocator(w, sparsities=(0.0, 0.3, 0.5))
    v = allocator.v
    for sparsity in (0.0, 0.3, 0.5):
        for fraction in allocation.OUTLIERS:
            lo, hi, a, b = allocator._blocks(sparsity, fraction)
            kept = np.concatenate([v[a:lo], v[hi:b]])
            if not len(kept):
                continue
            pruned = (v[lo], v[hi - 1]) if hi > lo else None
            fast = allocator.fit_values(kept[0], kept[-1], pruned)
            reference = allocator.fit_values_reference(kept[0], kept[-1], pruned)
            assert fast.dtype == np.float32
            np.testing.assert_array_equal(fast.view(np.uint32), reference.view(np.uint32))


@pytest.mark.parametrize("kind", ["gaussian", "heavy", "levels"])
def test_candidates_match_the_reference(rng, kind, monkeypatch):
    """Every candidate (errors and estimated bytes) is the same with the reference fit values."""
    w = tensors(rng)[kind]
    grid = dict(sparsities=(0.0, 0.3), outliers=allocation.OUTLIERS, bits=(2, 4, 6))
    fast = allocation.candidates(w, **grid)
    monkeypatch.setattr(allocation.Allocator, "fit_values", allocation.Allocator.fit_values_reference)
    monkeypatch.setattr(allocation, "_sample", allocation._sample_reference)
    assert allocation.candidates(w, **grid) == fast


def mlp(rng, folder, sigmoid=False, constant=False):
    """A two-layer MLP saved in ``folder``; ``sigmoid`` ends it with a Sigmoid (fidelity taps its logits),
    ``constant`` holds the second weight in a Constant node."""
    w1 = (rng.standard_normal((64, 96)) / 8).astype(np.float32)
    w2 = (rng.standard_normal((96, 10)) / 10).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"])]
    inits = [onnx.numpy_helper.from_array(w1, "w1")]
    if constant:
        nodes.append(helper.make_node("Constant", [], ["w2"], value=onnx.numpy_helper.from_array(w2, "w2")))
    else:
        inits.append(onnx.numpy_helper.from_array(w2, "w2"))
    nodes.append(helper.make_node("MatMul", ["r", "w2"], ["z" if sigmoid else "y"]))
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", ["z"], ["y"]))
    model = make_model(nodes, [float_input("x", ["n", 64])], [float_input("y", ["n", 10])], inits)
    path = os.path.join(folder, "in.onnx")
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("sigmoid,constant", [(False, False), (True, False), (False, True)])
def test_measurements_from_the_parsed_model_match_a_fresh_read(tmp_path, rng, sigmoid, constant):
    """compare_runs, attribute and model_bytes given the already parsed input agree with their own reads, and leave
    the given model unchanged."""
    import onnxcomp
    path = mlp(rng, str(tmp_path), sigmoid, constant)
    out = str(tmp_path / "out.onnx")
    onnxcomp.compress(path, out, bits=4, min_elements=1)
    loaded = model_io.load_model(path, external_data=False)
    before = loaded.SerializeToString()
    feeds, source, _ = fidelity.prepare(path, model=loaded)
    fresh = fidelity.compare_runs(path, out, feeds, source)
    given = fidelity.compare_runs(path, out, feeds, source, loaded)
    assert given.to_dict() == fresh.to_dict() and given.min_cosine < 1.0
    feed = {k: v[:2] for k, v in feeds[0].items()}
    errors = fidelity.attribute(path, out, feed, loaded)
    assert errors == fidelity.attribute(path, out, feed) and set(errors) == {"w1", "w2"} and min(errors.values()) > 0
    assert model_io.model_bytes(path, loaded) == model_io.model_bytes(path)
    assert loaded.SerializeToString() == before


def test_share_with_prepared_values_matches_a_fresh_share(rng):
    """outliers.share reusing a ``prepared`` dict (the sorted kept values, channel norms and largest-magnitude
    positions of an earlier share of the same weight, as ShareWeightsPass's uniform and k-means codebooks do)
    gives the bytes of a share that computes everything itself; in either call order, for a smaller and a larger
    outlier count than the first call's."""
    from onnxcomp.core import outliers
    transposed = lambda a: np.moveaxis(a, a.ndim - 1, 0).reshape(a.shape[-1], -1)
    w = (rng.standard_t(3, (120, 90)) * 0.05).astype(np.float32)
    w[rng.random(w.shape) < 0.03] = -0.0
    importance = rng.exponential(size=120)
    calls = [dict(bits=4, option=0.0, levels=11), dict(bits=5, option=0.02), dict(bits=3, option="auto"),
             dict(bits=6, option=0.001, levels=40)]
    for keep in (None, np.ones(w.shape, bool), rng.random(w.shape) < 0.7):
        for order in (calls, calls[::-1]):
            prepared = {}
            for call in order:
                kwargs = dict(option=call["option"], levels=call.get("levels", 0), rows=transposed, importance=importance)
                reused = outliers.share(w, keep, call["bits"], prepared=prepared, **kwargs)
                fresh = outliers.share(w, keep, call["bits"], **kwargs)
                for field in ("codebook", "indices", "positions", "values"):
                    assert getattr(reused, field).tobytes() == getattr(fresh, field).tobytes(), field
                for field in ("fraction", "damage", "estimated_bytes", "score"):
                    assert getattr(reused, field) == getattr(fresh, field), field
            assert set(prepared) == {"kept", "order", "ordered", "norms"}
