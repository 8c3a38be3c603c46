"""CodebookConv's Winograd path (F(2x2,3x3) and F(4x4,3x3) on onnxruntime's NCHWc layout of this CPU: blocks of 16
channels with AVX-512F, of 8 with AVX2; cpu/winograd.h) against a numpy float64 convolution, across instruction-set
caps and thread counts, and the rule that picks it.

Tolerance: Winograd computes each output as A^T [(G g G^T) . (B^T d B)] A, so rounding errors of the transformed
values reach every output of a tile, scaled by the transforms' coefficients (up to 8 in F(4x4)'s A, 5 in its B;
Lavin & Gray 2016; Barabasz et al., "Error analysis and improving the accuracy of Winograd convolution for deep
neural networks", ACM TOMS 2020, bound the error by the norms of the three transforms times the products' sum).
The tests bound |y - reference| by K_m * (C * 9 + 2) * 2^-24 * M, with M the largest |X| conv |W| (+ |bias|) of the
output's channel and image (the magnitude the tile's transformed values carry): K_2 = 0.05, K_4 = 1, about 5x the
largest ratio measured on these shapes (F(2x2) 0.011, F(4x4) 0.20; onnxruntime's direct convolution 0.03), an
empirical bound with those seeds, not a proof; with G's 1/24 off by one part in 10^4 four of the F(4x4) cases exceed
it (up to 4.4x).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import session_with_env
from onnx import TensorProto, helper, numpy_helper
from test_blocked_spatial import cpu_block
from test_conv import ACTIVATIONS, dense_conv_model, numpy_conv, ort_conv

import onnxcomp

EPS32 = 2.0 ** -24
K = {"2": 0.05, "4": 1.0}


def dense_model(w: np.ndarray, attrs: dict, bias=None, activation=None) -> onnx.ModelProto:
    """One CodebookConv node on the float32 weight w (a constant initializer), X and Y in NCHW."""
    return dense_conv_model(w, attrs, bias, None, activation)


def run(model, x, env=None, threads=1):
    return session_with_env(model, env, threads).run(None, {"x": x})[0]


def activate(y: np.ndarray, activation) -> np.ndarray:
    params = ACTIVATIONS.get(activation)
    if activation == "Relu":
        return np.maximum(y, 0)
    if activation == "LeakyRelu":
        return np.where(y >= 0, y, y * params[0])
    if activation == "Clip":
        return np.clip(y, params[0], params[1])
    return y


def plane_magnitude(x, w, bias, attrs) -> np.ndarray:
    """max over each (image, channel) plane of |X| conv |W| + |bias|, broadcast to Y's shape."""
    magnitude = numpy_conv(np.abs(x), np.abs(w), None if bias is None else np.abs(bias), attrs)
    return np.broadcast_to(magnitude.max(axis=(2, 3), keepdims=True), magnitude.shape)


# (X shape, W shape, attributes): C and O multiples of 16, spatial sizes off the 2x2 and 4x4 tiles, asymmetric and
# VALID pads, batch > 1, one block of tiles and many (the 64 x 48 layer has 4 x 10 x 8 tiles of 4x4 outputs).
SHAPES = [
    ((1, 16, 7, 9), (16, 16, 3, 3), dict(pads=[1, 1, 1, 1])),
    ((2, 32, 11, 6), (48, 32, 3, 3), dict(pads=[0, 1, 2, 1])),
    ((3, 16, 13, 13), (32, 16, 3, 3), dict(auto_pad="VALID")),
    ((1, 48, 5, 5), (16, 48, 3, 3), {}),
    ((4, 16, 38, 30), (48, 16, 3, 3), dict(pads=[1, 1, 1, 1])),
    ((1, 64, 17, 23), (64, 64, 3, 3), dict(pads=[2, 0, 1, 2])),
]


@pytest.mark.parametrize("m", ["2", "4"])
@pytest.mark.parametrize("case", range(len(SHAPES)))
def test_winograd_against_numpy_float64(case, m):
    x_shape, w_shape, attrs = SHAPES[case]
    rng = np.random.default_rng(40 + case)
    w = (rng.standard_normal(w_shape) * 0.3).astype(np.float32)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32) if case % 2 == 0 else None
    activation = [None, "Relu", "LeakyRelu", "Clip"][case % 4]
    x = (2 * rng.standard_normal(x_shape)).astype(np.float32)
    model = dense_model(w, attrs, bias, activation)
    y = run(model, x, {"ONNXCOMP_WINOGRAD": m})
    reference = activate(numpy_conv(x, w, bias, attrs), activation)
    assert y.shape == reference.shape
    bound = K[m] * (w[0].size + 2) * EPS32 * plane_magnitude(x, w, bias, attrs)
    assert (np.abs(y.astype(np.float64) - reference) <= bound).all()
    # The path was taken: its rounding differs from onnxruntime's direct convolution somewhere. It runs on
    # onnxruntime's NCHWc blocks (16 channels with AVX-512, 8 with AVX2); without NCHWc kernels (not x86-64, or
    # ONNXCOMP_CONV=ort) no layer takes it and the bound above checked onnxruntime's convolution.
    y_direct = run(model, x, {"ONNXCOMP_WINOGRAD": "0"})
    assert np.array_equal(y, y_direct) if cpu_block() == 1 else not np.array_equal(y, y_direct)


@pytest.mark.parametrize("m", ["2", "4", ""])
def test_winograd_is_the_same_under_every_isa_cap_and_thread_count(m):
    """scalar, AVX2 and AVX-512 caps (on an AVX-512F CPU, blocks of 16: the AVX2 cap runs the portable kernel; on an
    AVX2 CPU, blocks of 8: the AVX2 kernel, and the higher cap is the same), 1 and 2 threads, on a layer whose tiles
    and weight transform are split over the pool; "" is the rule's choice of m."""
    x_shape, w_shape, attrs = SHAPES[4]
    rng = np.random.default_rng(9)
    w = (rng.standard_normal(w_shape) * 0.3).astype(np.float32)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    model = dense_model(w, attrs, bias, "Relu")
    env = {"ONNXCOMP_WINOGRAD": m} if m else {}
    outputs = [run(model, x, {**env, "ONNXCOMP_ISA": isa}) for isa in ("scalar", "avx2", "avx512")]
    outputs.append(run(model, x, env, threads=2))
    outputs.append(run(model, x, {**env, "ONNXCOMP_WINOGRAD_TILES": "5"}, threads=2))
    for y in outputs[1:]:
        np.testing.assert_array_equal(y, outputs[0])


# Layers the rule leaves to onnxruntime's NCHWc convolution: stride 2, dilation 2, 5x5, grouped, C or O off the
# channel block (20: off blocks of 16 and of 8), an activation other than Relu, LeakyRelu and Clip, SAME pads, 1-D.
OTHERS = [
    ((1, 16, 9, 9), (16, 16, 3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2]), None),
    ((1, 16, 9, 9), (16, 16, 3, 3), dict(pads=[2, 2, 2, 2], dilations=[2, 2]), None),
    ((1, 16, 9, 9), (16, 16, 5, 5), dict(pads=[2, 2, 2, 2]), None),
    ((1, 32, 9, 9), (32, 16, 3, 3), dict(pads=[1, 1, 1, 1], group=2), None),
    ((1, 20, 9, 9), (16, 20, 3, 3), dict(pads=[1, 1, 1, 1]), None),
    ((1, 16, 9, 9), (20, 16, 3, 3), dict(pads=[1, 1, 1, 1]), None),
    ((1, 16, 9, 9), (16, 16, 3, 3), dict(pads=[1, 1, 1, 1]), "HardSwish"),
    ((1, 16, 9, 9), (16, 16, 3, 3), dict(auto_pad="SAME_UPPER"), None),
    ((1, 16, 9), (16, 16, 3), dict(pads=[1, 1]), None),
]


@pytest.mark.parametrize("case", range(len(OTHERS)))
def test_layers_outside_the_rule_keep_onnxruntimes_convolution(case):
    x_shape, w_shape, attrs, activation = OTHERS[case]
    rng = np.random.default_rng(60 + case)
    w = (rng.standard_normal(w_shape) * 0.3).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    model = dense_model(w, attrs, None, activation)
    np.testing.assert_array_equal(run(model, x, {"ONNXCOMP_WINOGRAD": "4"}), run(model, x, {"ONNXCOMP_WINOGRAD": "0"}))


def test_winograd_off_is_onnxruntimes_nchwc_convolution_bit_for_bit():
    """ONNXCOMP_WINOGRAD=0 runs the layer as before this path: the bits of onnxruntime's own optimised graph of the
    same Conv (its NCHWc transformer's blocked convolution and reorders)."""
    x_shape, w_shape, attrs = SHAPES[1]
    rng = np.random.default_rng(3)
    w = (rng.standard_normal(w_shape) * 0.3).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    original = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    want = ort.InferenceSession(original.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    np.testing.assert_array_equal(run(dense_model(w, attrs), x, {"ONNXCOMP_WINOGRAD": "0"}), want)
    # and the default (Winograd) agrees with onnxruntime's unoptimised Conv to the bound above
    y = run(dense_model(w, attrs), x)
    bound = K["4"] * (w[0].size + 2) * EPS32 * plane_magnitude(x, w, None, attrs)
    assert (np.abs(y.astype(np.float64) - ort_conv(x, w, None, attrs).astype(np.float64)) <= 2 * bound).all()


def nchwc_block() -> int:
    """onnxruntime's NCHWc channel block on this CPU (MLAS: 16 with AVX-512F, else 8 on x86-64)."""
    with open("/proc/cpuinfo") as f:
        return 16 if " avx512f" in f.read() else 8


@pytest.mark.parametrize("m", ["2", "4"])
def test_blocks_of_8_channels_on_avx2_cpus(m):
    """Channel counts that are multiples of 8 and not of 16 (24 in, 40 out): on an AVX2 CPU (blocks of 8) the AVX2
    Winograd kernel runs them, within the bound of the numpy float64 convolution and bit for bit as the portable
    kernel on blocks of 8 (ONNXCOMP_ISA=scalar); on an AVX-512F CPU (blocks of 16) onnxruntime's convolution does."""
    x_shape, w_shape, attrs = (2, 24, 14, 11), (40, 24, 3, 3), dict(pads=[1, 0, 1, 2])
    rng = np.random.default_rng(70)
    w = (rng.standard_normal(w_shape) * 0.3).astype(np.float32)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    x = (2 * rng.standard_normal(x_shape)).astype(np.float32)
    model = dense_model(w, attrs, bias, "LeakyRelu")
    y = run(model, x, {"ONNXCOMP_WINOGRAD": m})
    reference = activate(numpy_conv(x, w, bias, attrs), "LeakyRelu")
    bound = K[m] * (w[0].size + 2) * EPS32 * plane_magnitude(x, w, bias, attrs)
    assert (np.abs(y.astype(np.float64) - reference) <= bound).all()
    direct = run(model, x, {"ONNXCOMP_WINOGRAD": "0"})
    if nchwc_block() == 8:
        assert not np.array_equal(y, direct)  # the Winograd path was taken
        np.testing.assert_array_equal(run(model, x, {"ONNXCOMP_WINOGRAD": m, "ONNXCOMP_ISA": "scalar"}), y)
        np.testing.assert_array_equal(run(model, x, {"ONNXCOMP_WINOGRAD": m}, threads=2), y)
    else:
        np.testing.assert_array_equal(y, direct)


def test_blocks_of_8_take_winograd_by_the_rule_only_from_64_tiles():
    """On an AVX2 CPU (blocks of 8) the rule's Winograd runs where Y has at least 64 tiles of 4x4 outputs per run
    (the batch counts), and fewer tiles keep onnxruntime's direct convolution bit for bit; one session does both."""
    if nchwc_block() != 8:
        pytest.skip("blocks of 8: an x86-64 CPU without AVX-512F")
    rng = np.random.default_rng(71)
    w = (rng.standard_normal((16, 16, 3, 3)) * 0.3).astype(np.float32)
    model = dense_model(w, dict(pads=[1, 1, 1, 1]), None, "Relu")
    rule = session_with_env(model, {})
    direct = session_with_env(model, {"ONNXCOMP_WINOGRAD": "0"})
    few = rng.standard_normal((1, 16, 28, 28)).astype(np.float32)  # 7 x 7 = 49 tiles
    many = rng.standard_normal((2, 16, 28, 28)).astype(np.float32)  # 98 tiles
    np.testing.assert_array_equal(rule.run(None, {"x": few})[0], direct.run(None, {"x": few})[0])
    assert not np.array_equal(rule.run(None, {"x": many})[0], direct.run(None, {"x": many})[0])
