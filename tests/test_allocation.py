"""The data-free allocation (onnxcomp/core/allocation.py): its error measures agree with the real codebooks,
it picks the known optimum on synthetic tensors, and a tensor with extreme outliers stays accurate at the
default CLI settings."""

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from conftest import float_input, make_model, run_compressed, run_plain
from onnxcomp.core import allocation, codebook

import onnxcomp


def measured(w, sparsity, bits):
    keep = None if sparsity == 0 else np.abs(w) > np.sort(np.abs(w))[int(round(sparsity * w.size)) - 1]
    table, indices = codebook.quantize(w, keep, bits)
    decoded = table[indices].reshape(w.shape)
    return np.linalg.norm(w - decoded) / np.linalg.norm(w), np.abs(w - decoded).max() / np.abs(w).max()


@pytest.mark.parametrize("tail", [1.0, 50.0])
def test_error_measures_match_the_codebook(rng, tail):
    w = rng.standard_normal(40_000).astype(np.float32)
    w[:8] *= tail
    for c in allocation.candidates(w, bits=(3, 5), sparsities=(0.0, 0.5)):
        e2, einf = measured(w, c.sparsity, c.bits)
        assert c.relative_l2 == pytest.approx(e2, rel=0.05, abs=1e-4)
        assert c.max_relative == pytest.approx(einf, rel=0.05, abs=1e-4)


def test_size_estimate_is_close_to_the_record(rng):
    from onnxcomp.core import sidecar
    w = rng.standard_normal((200, 100)).astype(np.float32)
    for c in allocation.candidates(w, bits=(3, 6)):
        table, indices = codebook.quantize(w, None, c.bits)
        record = sidecar.encode_record(table, indices, w.shape, c.bits)
        assert c.bytes == pytest.approx(len(record), rel=0.1)


def test_picks_the_fewest_bits_that_represent_the_levels_exactly(rng):
    """A tensor of exactly 2^b distinct levels: b bits are exact, b - 1 bits are not; the rule picks b."""
    for b in (2, 4, 6):
        levels = np.linspace(-1, 1, 1 << b).astype(np.float32)
        w = rng.choice(levels, 50_000)
        choice = allocation.choose(allocation.candidates(w), dense_bytes=4 * w.size)
        assert (choice.bits, choice.sparsity) == (b, 0.0)
        assert choice.relative_l2 < 1e-6 and choice.max_relative < 1e-6


def test_picks_the_smallest_acceptable_among_all_candidates(rng):
    """Against a brute force over the candidate list: no acceptable candidate is smaller than the choice."""
    w = rng.laplace(size=30_000).astype(np.float32)
    options = allocation.candidates(w, sparsities=(0.0, 0.3, 0.5))
    choice = allocation.choose(options)
    acceptable = [c for c in options if c.proxy() <= 1]
    assert choice in acceptable and choice.bytes == min(c.bytes for c in acceptable)
    tighter = allocation.choose(options, scale=0.5)
    assert tighter.proxy() <= 0.5 and tighter.bytes >= choice.bytes


def test_mostly_pruned_tensor_picks_sparsity(rng):
    """Half the weights exactly zero: pruning half costs no error and fewer bytes, so the rule prunes."""
    w = rng.standard_normal(40_000).astype(np.float32)
    w[rng.permutation(w.size)[:20_000]] = 0
    choice = allocation.choose(allocation.candidates(w, sparsities=(0.0, 0.5)))
    assert choice.sparsity == 0.5


def test_worst_case_error_rejects_what_mean_error_accepts(rng):
    """A few weights 50x the rest: the relative L2 error alone would accept 3 bits; the worst-case error does not."""
    w = rng.standard_normal(40_000).astype(np.float32)
    w[rng.permutation(w.size)[:4]] = np.float32(50 * np.quantile(np.abs(w), 0.999))
    options = {c.bits: c for c in allocation.candidates(w)}
    assert any(c.relative_l2 <= allocation.L2_LIMIT and c.max_relative > allocation.MAX_LIMIT for c in options.values())
    choice = allocation.choose(list(options.values()))
    assert choice.max_relative <= allocation.MAX_LIMIT


def test_extreme_outliers_keep_the_output_at_default_settings(tmp_path, rng):
    """A conv-free MLP whose first weight has max |w| = 50x its 99.9th percentile: `compress IN OUT` with no
    options keeps the output within a relative L2 error of 5 % and a cosine of 0.99 on fresh inputs."""
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
    assert np.linalg.norm(actual - expected) / np.linalg.norm(expected) < 0.05
    cos = (actual * expected).sum(1) / np.linalg.norm(actual, axis=1) / np.linalg.norm(expected, axis=1)
    assert cos.min() > 0.99
