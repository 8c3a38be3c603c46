"""CodebookConv's depthwise path (path 1b: the library's depthwise kernel on onnxruntime's NCHWc layout of this CPU,
blocks of 16 with AVX-512F, of 8 with AVX2; cpu/depthwise.h) against a numpy float64 convolution, across
instruction-set caps and thread counts, and the rule that picks it.

Tolerance: each output is one chain of fused multiply-adds over its k_h * k_w in-bounds taps, then + bias, then the
activation, so |y - reference| <= (k_h * k_w + 2) * 2^-24 * M (the usual bound of a recursive sum, Higham,
"Accuracy and Stability of Numerical Algorithms", 2002, section 4.2), M = sum of |x| |w| + |bias| of the output;
the activations after it are 1-Lipschitz (HardSwish: at most 1.5 times the input's change on these magnitudes, so
the test doubles the bound).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_conv import ACTIVATIONS, dense_conv_model, numpy_conv
from test_winograd import activate as winograd_activate
from test_winograd import run

EPS32 = 2.0 ** -24


def activate(y: np.ndarray, activation) -> np.ndarray:
    params = ACTIVATIONS.get(activation)
    if activation == "HardSigmoid":
        return np.clip(params[0] * y + params[1], 0, 1)
    if activation == "HardSwish":
        return y * np.clip(y / 6 + 0.5, 0, 1)
    return winograd_activate(y, activation)


# (X shape, kernel, attributes): channels a multiple of 16 or (NCHW input) of 4, strides 1 and 2, dilation 2, 3x3,
# 5x5 and 3x5 kernels, asymmetric and VALID pads, batch > 1, rows of 8 to 40 interior positions.
SHAPES = [
    ((1, 16, 12, 12), (3, 3), dict(pads=[1, 1, 1, 1])),
    ((2, 32, 20, 17), (3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2])),
    ((1, 48, 14, 14), (5, 5), dict(pads=[2, 2, 2, 2])),
    ((3, 16, 15, 23), (3, 5), dict(pads=[0, 2, 1, 1])),
    ((1, 32, 19, 19), (3, 3), dict(pads=[2, 2, 2, 2], dilations=[2, 2])),
    ((2, 16, 13, 21), (3, 3), dict(auto_pad="VALID")),
    ((1, 24, 16, 18), (3, 3), dict(pads=[1, 1, 1, 1])),
    ((2, 64, 42, 42), (5, 5), dict(pads=[2, 2, 2, 2], strides=[2, 2])),
]
ACTS = [None, "Relu", "HardSwish", "LeakyRelu", "Clip", "HardSigmoid", "HardSwish", "Relu"]


def case_inputs(case):
    x_shape, kernel, attrs = SHAPES[case]
    c = x_shape[1]
    rng = np.random.default_rng(80 + case)
    w = (rng.standard_normal((c, 1, *kernel)) * 0.3).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32) if case % 3 != 1 else None
    x = (2 * rng.standard_normal(x_shape)).astype(np.float32)
    return x, w, bias, {**attrs, "group": c}


def checked_against_numpy(x, w, bias, attrs, activation) -> tuple:
    """(the CodebookConv model on dense w, its output), the output checked against the float64 bound above."""
    model = dense_conv_model(w, attrs, bias, None, activation)
    y = run(model, x)
    reference = activate(numpy_conv(x, w, bias, attrs), activation)
    assert y.shape == reference.shape
    magnitude = numpy_conv(np.abs(x), np.abs(w), None if bias is None else np.abs(bias), attrs)
    bound = 2 * (w[0].size + 2) * EPS32 * magnitude + 1e-30
    assert (np.abs(y.astype(np.float64) - reference) <= bound).all()
    return model, y


def assert_same_under_every_isa_cap_and_thread_count(model, x):
    """scalar, AVX2 and AVX-512 caps (an AVX-512F CPU, blocks of 16: the AVX2 cap runs the portable kernel; an AVX2
    CPU, blocks of 8: the AVX2 kernel, and the portable one of blocks of 8 under the scalar cap), 1 and 2 threads."""
    outputs = [run(model, x, {"ONNXCOMP_ISA": isa}) for isa in ("scalar", "avx2", "avx512")]
    outputs.append(run(model, x, threads=2))
    for y in outputs[1:]:
        np.testing.assert_array_equal(y, outputs[0])


@pytest.mark.parametrize("case", range(len(SHAPES)))
def test_depthwise_against_numpy_float64(case):
    x, w, bias, attrs = case_inputs(case)
    model, y = checked_against_numpy(x, w, bias, attrs, ACTS[case])
    # onnxruntime's NCHWc depthwise kernel (MLAS) computes the same chain (from 0.0, taps in order, padding skipped,
    # then the bias and the activation): on these shapes its bits are the library kernel's.
    np.testing.assert_array_equal(y, run(model, x, {"ONNXCOMP_DEPTHWISE": "0"}))


@pytest.mark.parametrize("case", [1, 6, 7])
def test_depthwise_is_the_same_under_every_isa_cap_and_thread_count(case):
    """Case 7 is split over the pool."""
    x, w, bias, attrs = case_inputs(case)
    assert_same_under_every_isa_cap_and_thread_count(dense_conv_model(w, attrs, bias, None, ACTS[case]), x)


# Depthwise layers the rule leaves to onnxruntime's NCHWc convolution: rows with fewer than 8 interior positions
# (5x5 at 7 x 7), Sigmoid and Tanh, SAME pads.
OTHERS = [
    ((1, 32, 7, 7), (5, 5), dict(pads=[2, 2, 2, 2]), None),
    ((1, 16, 12, 12), (3, 3), dict(pads=[1, 1, 1, 1]), "Sigmoid"),
    ((1, 16, 12, 12), (3, 3), dict(pads=[1, 1, 1, 1]), "Tanh"),
    ((1, 16, 12, 12), (3, 3), dict(auto_pad="SAME_UPPER"), None),
]


@pytest.mark.parametrize("case", range(len(OTHERS)))
def test_depthwise_layers_outside_the_rule_keep_onnxruntimes_convolution(case):
    x_shape, kernel, attrs, activation = OTHERS[case]
    rng = np.random.default_rng(90 + case)
    c = x_shape[1]
    w = (rng.standard_normal((c, 1, *kernel)) * 0.3).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    model = dense_conv_model(w, {**attrs, "group": c}, None, None, activation)
    np.testing.assert_array_equal(run(model, x), run(model, x, {"ONNXCOMP_DEPTHWISE": "0"}))


# Path 1c: group 1, fewer than 16 input channels read as NCHW (a first convolution on an image), O off and on the
# block (padded to it), strides 1 and 2, asymmetric pads, dilation, batch > 1.
NCHW_SHAPES = [
    ((1, 3, 40, 40), (16, 3, 3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2])),
    ((2, 1, 21, 30), (24, 1, 5, 5), dict(pads=[2, 1, 0, 2])),
    ((1, 4, 25, 19), (32, 4, 3, 3), dict(pads=[2, 2, 2, 2], dilations=[2, 2])),
    ((3, 8, 18, 18), (16, 8, 1, 1), {}),
    ((1, 3, 33, 64), (48, 3, 7, 7), dict(pads=[3, 3, 3, 3], strides=[2, 2])),
]
NCHW_ACTS = ["HardSwish", None, "Relu", "Clip", "HardSigmoid"]


def nchw_inputs(case):
    x_shape, w_shape, attrs = NCHW_SHAPES[case]
    rng = np.random.default_rng(120 + case)
    w = (rng.standard_normal(w_shape) * 0.3).astype(np.float32)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32) if case != 1 else None
    x = (2 * rng.standard_normal(x_shape)).astype(np.float32)
    return x, w, bias, attrs


@pytest.mark.parametrize("case", range(len(NCHW_SHAPES)))
def test_nchw_input_path_against_numpy_float64_and_onnxruntime(case):
    x, w, bias, attrs = nchw_inputs(case)
    model, y = checked_against_numpy(x, w, bias, attrs, NCHW_ACTS[case])
    # onnxruntime's NCHW-input kernel sums each channel's chain into the output the same way: the same bits.
    np.testing.assert_array_equal(y, run(model, x, {"ONNXCOMP_NCHW_INPUT": "0"}))


@pytest.mark.parametrize("case", [0, 4])
def test_nchw_input_path_is_the_same_under_every_isa_cap_and_thread_count(case):
    x, w, bias, attrs = nchw_inputs(case)
    assert_same_under_every_isa_cap_and_thread_count(dense_conv_model(w, attrs, bias, None, NCHW_ACTS[case]), x)


@pytest.mark.parametrize("case", [0, 1])
def test_nchw_input_kernel_on_blocks_of_8_under_its_setting(case):
    """On an AVX2 CPU (blocks of 8) path 1c runs only under ONNXCOMP_NCHW_INPUT=1 (its kernel measured slower than
    onnxruntime's there): then the bits of onnxruntime's NCHW-input kernel, under the scalar cap and two threads too."""
    from test_winograd import nchwc_block

    if nchwc_block() != 8:
        pytest.skip("blocks of 8: an x86-64 CPU without AVX-512F")
    x, w, bias, attrs = nchw_inputs(case)
    model = dense_conv_model(w, attrs, bias, None, NCHW_ACTS[case])
    want = run(model, x, {"ONNXCOMP_NCHW_INPUT": "0"})
    np.testing.assert_array_equal(run(model, x), want)
    for env, threads in (({"ONNXCOMP_NCHW_INPUT": "1"}, 1), ({"ONNXCOMP_NCHW_INPUT": "1", "ONNXCOMP_ISA": "scalar"}, 1),
                         ({"ONNXCOMP_NCHW_INPUT": "1"}, 2)):
        np.testing.assert_array_equal(run(model, x, env, threads=threads), want)
