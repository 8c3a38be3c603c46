"""CodebookConv (the record decoded once into a working weight, run by onnxruntime's own convolution kernels) and
the PackWeightsPass rewrite that emits it, against numpy and onnxruntime's Conv on random shapes.

Tolerance: the decoded weights are exact (codebook[index] * scale), so the kernel differs from a float64
reference only by fp32 rounding in each output's sum of C/group * prod(kernel) products (the recursive-summation
bound gamma_n * (|X| conv |W|), n the number of products) plus the bias add and, for fused activations, one more
rounding; the tests allow twice that bound. onnxruntime's blocked (NCHWc) and plain kernels order the sum
differently, so across the two paths results agree to that bound, not bit for bit. The instruction-set cap
(ONNXCOMP_ISA) does not change CodebookConv: its outputs are bit-identical under every cap. On an AVX-512 CPU the
3x3 stride-1 case with 16-channel multiples (CASES[0]) takes the library's Winograd path (docs/ops.md; its bound
and tests in tests/test_winograd.py); its error stays within this bound too (0.13 of it with F(4x4) forced).
"""

from __future__ import annotations

import os
import platform

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import (float_input, make_model, nodes_by_name, reference_model, run_compressed, run_plain, session_with_env,
                      weight)
from onnx import TensorProto, helper, numpy_helper

import onnxcomp
from onnxcomp.core.sidecar import decode_record, encode_record

EPS32 = 2.0 ** -24

# (X shape, W shape, Conv attributes): groups, depthwise, 1x1, strides, dilations, explicit and auto pads,
# 1-D/2-D/3-D, batch 1 and more, odd channel counts, channel counts that fit and miss the NCHWc blocks (and input
# channels a multiple of 4, not of the block: padded).
CASES = [
    ((1, 16, 12, 12), (32, 16, 3, 3), dict(pads=[1, 1, 1, 1])),
    ((2, 3, 13, 11), (16, 3, 3, 3), dict(strides=[2, 2], pads=[1, 0, 1, 2])),
    ((1, 32, 9, 9), (32, 1, 3, 3), dict(group=32, pads=[1, 1, 1, 1])),
    ((3, 32, 9, 10), (32, 1, 5, 5), dict(group=32, auto_pad="SAME_UPPER", strides=[2, 2])),
    ((2, 24, 7, 9), (24, 1, 3, 3), dict(group=24, auto_pad="SAME_LOWER")),
    ((1, 16, 8, 8), (24, 16, 1, 1), {}),
    ((2, 13, 8, 5), (21, 13, 1, 1), dict(strides=[2, 1])),
    ((2, 12, 9, 7), (24, 12, 3, 3), dict(pads=[1, 1, 1, 1])),  # 12 and 20 input channels: X padded to the block
    ((1, 20, 6, 6), (16, 20, 1, 1), {}),
    ((1, 7, 8, 8), (9, 7, 3, 3), dict(dilations=[2, 2], pads=[2, 1, 0, 3])),
    ((1, 32, 8, 8), (32, 8, 3, 3), dict(group=4, auto_pad="VALID")),
    ((2, 15, 11, 6), (10, 3, 2, 3), dict(group=5, dilations=[1, 2], strides=[3, 1])),
    ((2, 5, 20), (6, 5, 3), dict(pads=[1, 2])),
    ((1, 8, 17), (8, 1, 5), dict(group=8, auto_pad="SAME_UPPER", strides=[2])),
    ((1, 4, 5, 6, 7), (6, 2, 3, 3, 3), dict(group=2, strides=[1, 2, 1])),
    ((2, 3, 4, 5, 6), (5, 3, 1, 2, 2), dict(pads=[0, 1, 1, 0, 0, 1], dilations=[1, 1, 2])),
]
ACTIVATIONS = {"Relu": [], "Clip": [0.0, 6.0], "HardSigmoid": [0.2, 0.5], "LeakyRelu": [0.1], "Sigmoid": [], "Tanh": [],
               "HardSwish": []}


def random_weight(rng, shape, bits):
    size = 1 << bits
    codebook = np.sort(rng.standard_normal(size)).astype(np.float32) * np.float32(0.4)
    indices = rng.integers(0, size, shape)
    return codebook, indices, codebook[indices]


def codebook_conv_model(record: bytes, attrs: dict, bias=None, scale=None, activation=None) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.frombuffer(record, np.uint8), "record")]
    inputs = ["x", "record", "", ""]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "bias"))
        inputs[2] = "bias"
    if scale is not None:
        inits.append(numpy_helper.from_array(scale, "scale"))
        inputs[3] = "scale"
    while inputs[-1] == "":
        inputs.pop()
    attrs = dict(attrs)
    if activation:
        attrs["activation"] = activation
        if ACTIVATIONS[activation]:
            attrs["activation_params"] = ACTIVATIONS[activation]
    node = helper.make_node("CodebookConv", inputs, ["y"], domain=onnxcomp.DOMAIN, **attrs)
    graph = helper.make_graph([node], "conv", [float_input("x", None)], [float_input("y", None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(onnxcomp.DOMAIN, 1)],
                             ir_version=8)


def ort_conv(x, w, bias, attrs, activation=None, abs_inputs=False):
    """onnxruntime's own Conv (graph optimisations off) with the activation as its own node."""
    inits = [numpy_helper.from_array(np.abs(w) if abs_inputs else w, "w")]
    inputs = ["x", "w"]
    if bias is not None:
        inits.append(numpy_helper.from_array(np.abs(bias) if abs_inputs else bias, "b"))
        inputs.append("b")
    nodes = [helper.make_node("Conv", inputs, ["c" if activation else "y"], **attrs)]
    params = ACTIVATIONS.get(activation)
    if activation == "Clip":
        inits += [numpy_helper.from_array(np.float32(params[0]), "lo"), numpy_helper.from_array(np.float32(params[1]), "hi")]
        nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"]))
    elif activation == "HardSigmoid":
        nodes.append(helper.make_node("HardSigmoid", ["c"], ["y"], alpha=params[0], beta=params[1]))
    elif activation == "LeakyRelu":
        nodes.append(helper.make_node("LeakyRelu", ["c"], ["y"], alpha=params[0]))
    elif activation:
        nodes.append(helper.make_node(activation, ["c"], ["y"]))
    graph = helper.make_graph(nodes, "ref", [float_input("x", None)], [float_input("y", None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.abs(x) if abs_inputs else x})[0]


def numpy_conv(x, w, bias, attrs):
    """Direct N-D convolution in float64 (ONNX Conv semantics, explicit pads or auto_pad)."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    spatial = w.ndim - 2
    group = attrs.get("group", 1)
    strides = attrs.get("strides", [1] * spatial)
    dilations = attrs.get("dilations", [1] * spatial)
    pads = list(attrs.get("pads", [0] * 2 * spatial))
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad == "VALID":
        pads = [0] * 2 * spatial
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        for i in range(spatial):
            out = -(-x.shape[2 + i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (w.shape[2 + i] - 1) * dilations[i] + 1 - x.shape[2 + i])
            small, large = total // 2, total - total // 2
            pads[i], pads[i + spatial] = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + spatial]) for i in range(spatial)])
    out_shape = [(xp.shape[2 + i] - (w.shape[2 + i] - 1) * dilations[i] - 1) // strides[i] + 1 for i in range(spatial)]
    n, o = x.shape[0], w.shape[0]
    per_group_in, per_group_out = w.shape[1], o // group
    y = np.zeros((n, o, *out_shape))
    for offset in np.ndindex(*w.shape[2:]):
        window = tuple(slice(offset[i] * dilations[i], offset[i] * dilations[i] + (out_shape[i] - 1) * strides[i] + 1,
                             strides[i]) for i in range(spatial))
        patch = xp[(slice(None), slice(None)) + window]  # [N, C, out...]
        for g in range(group):
            taps = w[g * per_group_out:(g + 1) * per_group_out, :, *offset]  # [O/g, C/g]
            y[:, g * per_group_out:(g + 1) * per_group_out] += np.einsum(
                "oc,nc...->no...", taps, patch[:, g * per_group_in:(g + 1) * per_group_in])
    if bias is not None:
        y += bias.astype(np.float64).reshape((1, -1) + (1,) * spatial)
    return y


def session_output(model: onnx.ModelProto, x: np.ndarray, env: dict | None = None, threads: int = 1) -> np.ndarray:
    return session_with_env(model, env, threads).run(None, {"x": x})[0]


def summation_bound(x, w, bias, attrs) -> np.ndarray:
    terms = w[0].size  # C/group * prod(kernel) products per output
    magnitude = ort_conv(x, w, bias, attrs, abs_inputs=True).astype(np.float64)
    return 2 * ((terms + 2) * EPS32 * magnitude + 1e-30)


@pytest.mark.parametrize("path", ["default", "ort"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_codebook_conv_against_numpy_and_onnxruntime(case, path):
    x_shape, w_shape, attrs = CASES[case]
    rng = np.random.default_rng(100 + case)
    codebook, indices, w = random_weight(rng, w_shape, 4 if case % 2 else 6)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32) if case % 3 else None
    scale = (rng.random(w_shape[0]) + 0.5).astype(np.float32) if case % 4 == 1 else None
    w_effective = w if scale is None else (w * scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    model = codebook_conv_model(encode_record(codebook, indices, w_shape, 4 if case % 2 else 6), attrs, bias, scale)
    y = session_output(model, x, {"ONNXCOMP_CONV": "ort"} if path == "ort" else None)
    reference = numpy_conv(x, w_effective, bias, attrs)
    assert y.shape == reference.shape and y.dtype == np.float32
    bound = summation_bound(x, w_effective, bias, attrs)
    err = np.abs(y.astype(np.float64) - reference)
    assert (err <= bound).all(), f"max error {err.max()}, worst ratio to the bound {(err / bound).max()}"
    np.testing.assert_allclose(y, ort_conv(x, w_effective, bias, attrs), rtol=0, atol=float(bound.max()))


@pytest.mark.parametrize("channels", [8, 24, 40, 200])
def test_depthwise_channels_off_the_block_equal_onnxruntimes_padded_nchwc_conv(channels):
    """A depthwise layer whose channels are not a multiple of the NCHWc block (8 and 24 under blocks of 16) runs the
    blocked convolution with its channels, filter and group padded to the block, as onnxruntime's NCHWc transformer
    runs the same dense Conv: bit for bit the dense model's output (graph optimisations on), and within the
    summation bound of numpy's."""
    rng = np.random.default_rng(channels)
    attrs = dict(group=channels, pads=[2, 2, 2, 2], strides=[2, 1])
    w_shape = (channels, 1, 5, 5)
    codebook, indices, w = random_weight(rng, w_shape, 6)
    bias = rng.standard_normal(channels).astype(np.float32)
    x = rng.standard_normal((2, channels, 11, 9)).astype(np.float32)
    y = session_output(codebook_conv_model(encode_record(codebook, indices, w_shape, 6), attrs, bias, None, "Relu"), x)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["c"], **attrs), helper.make_node("Relu", ["c"], ["y"])],
                              "dense", [float_input("x", None)], [float_input("y", None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")])
    dense = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    want = ort.InferenceSession(dense.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(y, want)
    reference = np.maximum(numpy_conv(x, w, bias, attrs), 0)
    assert (np.abs(y.astype(np.float64) - reference) <= summation_bound(x, w, bias, attrs)).all()


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("case", [0, 2, 6, 10])
def test_codebook_conv_fused_activation(case, activation):
    x_shape, w_shape, attrs = CASES[case]
    rng = np.random.default_rng(7 + case)
    codebook, indices, w = random_weight(rng, w_shape, 5)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    x = (3 * rng.standard_normal(x_shape)).astype(np.float32)  # reaches both Clip bounds
    model = codebook_conv_model(encode_record(codebook, indices, w_shape, 5), attrs, bias, None, activation)
    y = session_output(model, x)
    bound = summation_bound(x, w, bias, attrs).max()
    np.testing.assert_allclose(y, ort_conv(x, w, bias, attrs, activation), rtol=0, atol=float(bound))


def test_codebook_conv_is_the_same_under_every_isa_cap_and_thread_count():
    x_shape, w_shape, attrs = CASES[0]
    rng = np.random.default_rng(5)
    codebook, indices, _ = random_weight(rng, w_shape, 4)
    model = codebook_conv_model(encode_record(codebook, indices, w_shape, 4), attrs, rng.standard_normal(32).astype(np.float32))
    x = rng.standard_normal(x_shape).astype(np.float32)
    outputs = [session_output(model, x, {"ONNXCOMP_ISA": isa}) for isa in ("scalar", "avx2", "avx512")]
    outputs.append(session_output(model, x, threads=2))
    for y in outputs[1:]:
        np.testing.assert_array_equal(y, outputs[0])


@pytest.mark.parametrize("case", [0, 2, 10, 12])
def test_codebook_conv_applies_record_outliers(case):
    """A version-2 record's outliers reach the working weight (the numpy reference decoder's dense values)."""
    x_shape, w_shape, attrs = CASES[case]
    rng = np.random.default_rng(30 + case)
    codebook, indices, _ = random_weight(rng, w_shape, 4)
    count = max(1, indices.size // 50)
    positions = np.sort(rng.choice(indices.size, count, replace=False))
    values = (rng.standard_normal(count) * 20).astype(np.float32)
    record = encode_record(codebook, indices, w_shape, 4, positions, values)
    w = decode_record(record).to_dense().reshape(w_shape)
    np.testing.assert_allclose(w.ravel()[positions], values, rtol=2 ** -10)  # values may be stored as float16
    x = rng.standard_normal(x_shape).astype(np.float32)
    for env in (None, {"ONNXCOMP_CONV": "ort"}):
        y = session_output(codebook_conv_model(record, attrs), x, env)
        bound = summation_bound(x, w, None, attrs)
        assert (np.abs(y.astype(np.float64) - numpy_conv(x, w, None, attrs)) <= bound).all()


def test_codebook_conv_record_that_is_a_graph_input():
    """A record that is not a constant is decoded in every run (and still computes the convolution)."""
    x_shape, w_shape, attrs = CASES[2]
    rng = np.random.default_rng(11)
    codebook, indices, w = random_weight(rng, w_shape, 4)
    record = np.frombuffer(encode_record(codebook, indices, w_shape, 4), np.uint8)
    node = helper.make_node("CodebookConv", ["x", "record"], ["y"], domain=onnxcomp.DOMAIN, **attrs)
    graph = helper.make_graph([node], "g", [float_input("x", None), helper.make_tensor_value_info("record", TensorProto.UINT8, None)],
                              [float_input("y", None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(onnxcomp.DOMAIN, 1)],
                              ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), onnxcomp.runtime.session_options(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal(x_shape).astype(np.float32)
    y = session.run(None, {"x": x, "record": record})[0]
    np.testing.assert_allclose(y, numpy_conv(x, w, None, attrs), rtol=0, atol=float(summation_bound(x, w, None, attrs).max()))


def test_codebook_conv_errors_name_the_node():
    rng = np.random.default_rng(2)
    codebook, indices, _ = random_weight(rng, (8, 4, 3, 3), 4)
    model = codebook_conv_model(encode_record(codebook, indices, (8, 4, 3, 3), 4), {})
    model.graph.node[0].name = "conv1"
    session = ort.InferenceSession(model.SerializeToString(), onnxcomp.runtime.session_options(), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match=r"onnxcomp: node 'conv1' \(CodebookConv\): X shape \[1, 5, 6, 6\] does not fit"):
        session.run(None, {"x": np.zeros((1, 5, 6, 6), np.float32)})
    bad = codebook_conv_model(encode_record(codebook, indices, (8, 4, 3, 3), 4), {"group": 3})
    with pytest.raises(Exception, match=r"output channels 8 are not a multiple of group 3"):
        ort.InferenceSession(bad.SerializeToString(), onnxcomp.runtime.session_options(), providers=["CPUExecutionProvider"])
    matrix = codebook_conv_model(encode_record(codebook, indices.reshape(8, 36), (8, 36), 4), {})
    with pytest.raises(Exception, match=r"the record must have rank >= 3"):
        ort.InferenceSession(matrix.SerializeToString(), onnxcomp.runtime.session_options(), providers=["CPUExecutionProvider"])


# ---- the pass: Conv (+ BatchNormalization + activation) -> CodebookConv ----------------------------------------

def mobile_block(rng) -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Clip(0, 6), depthwise Conv (bias) -> Relu, 1x1 Conv -> HardSigmoid, a Conv
    whose output is also a graph output (nothing fused after it) and a 1x1 Conv -> HardSwish."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["n1"], epsilon=1e-3),
        helper.make_node("Clip", ["n1", "lo", "hi"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], group=16, pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["a2"]),
        helper.make_node("Conv", ["a2", "w3"], ["c3"], name="conv3"),
        helper.make_node("HardSigmoid", ["c3"], ["y"], alpha=0.25, beta=0.4),
        helper.make_node("Conv", ["a2", "w4"], ["side"], auto_pad="SAME_UPPER", name="conv4"),
        helper.make_node("Conv", ["a2", "w5"], ["c5"], name="conv5"),
        helper.make_node("HardSwish", ["c5"], ["swish"]),
    ]
    inits = [weight(rng, "w1", (16, 3, 3, 3), 0.3), numpy_helper.from_array((rng.random(16) + 0.5).astype(np.float32), "gamma"),
             weight(rng, "beta", (16,)), weight(rng, "mean", (16,), 0.1),
             numpy_helper.from_array((rng.random(16) + 0.2).astype(np.float32), "var"),
             numpy_helper.from_array(np.float32(0.0), "lo"), numpy_helper.from_array(np.float32(6.0), "hi"),
             weight(rng, "w2", (16, 1, 3, 3), 0.5), weight(rng, "b2", (16,)), weight(rng, "w3", (24, 16, 1, 1), 0.3),
             weight(rng, "w4", (8, 16, 3, 3), 0.2), weight(rng, "w5", (16, 16, 1, 1), 0.3)]
    return make_model(nodes, [float_input("x", ["n", 3, 16, 16])],
                      [float_input("y", ["n", 24, 8, 8]), float_input("side", ["n", 8, 8, 8]),
                       float_input("swish", ["n", 16, 8, 8])], inits)


@pytest.mark.parametrize("min_elements", [100, 200])
def test_pass_fuses_batch_norm_and_activations_into_codebook_conv(tmp_path, min_elements):
    """With --min-elements 200 the depthwise weight w2 (144 values) stays dense: its Conv, between CodebookConv
    nodes, becomes a CodebookConv reading that weight (join_dense_convs), with the same folding and layout."""
    rng = np.random.default_rng(21)
    model = mobile_block(rng)
    source, out, dense = tmp_path / "in.onnx", tmp_path / "out.onnx", tmp_path / "dense.onnx"
    onnx.save(model, source)
    # 5 bits: at 8 bits the 144-weight depthwise record (a 256-entry codebook) would not be smaller than the weight,
    # and such weights stay dense.
    onnxcomp.compress(source, out, bits=5, min_elements=min_elements, keep_names=True)
    compressed = onnx.load(out, load_external_data=False)
    joined = min_elements > 144
    w2 = next(t for t in compressed.graph.initializer if t.name == "w2") if joined else None
    assert joined == (w2 is not None) and (w2 is None or w2.data_type == TensorProto.FLOAT)
    ops = [(n.domain, n.op_type) for n in compressed.graph.node]
    assert ops.count((onnxcomp.DOMAIN, "CodebookConv")) == 5
    assert not {"BatchNormalization", "Clip", "Relu", "HardSigmoid", "HardSwish", "Conv"} & {op for _, op in ops}
    by_name, attrs = nodes_by_name(compressed)
    assert attrs["conv1"]["activation"] == b"Clip" and attrs["conv1"]["activation_params"] == [0.0, 6.0]
    assert len(by_name["conv1"].input) == 4  # X, record, folded bias, BatchNormalization's scale
    assert attrs["conv2"]["activation"] == b"Relu" and attrs["conv2"]["group"] == 16
    assert attrs["conv3"]["activation"] == b"HardSigmoid" and attrs["conv3"]["activation_params"] == pytest.approx([0.25, 0.4])
    assert "activation" not in attrs["conv4"] and attrs["conv4"]["auto_pad"] == b"SAME_UPPER"
    assert attrs["conv5"]["activation"] == b"HardSwish" and "activation_params" not in attrs["conv5"]
    # NCHWc layout kept between CodebookConv nodes: conv1 -> conv2 (16 channels) and conv2 -> conv3/4/5; conv3's
    # 24 output channels are no multiple of 16 and conv4/conv5 write graph outputs.
    layout = {name: (a.get("nchwc_input", 0), a.get("nchwc_output", 0)) for name, a in attrs.items() if name.startswith("conv")}
    assert layout == {"conv1": (0, 1), "conv2": (1, 1), "conv3": (1, 0), "conv4": (1, 0), "conv5": (1, 0)}

    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    got = run_compressed(out, {"x": x})
    # Without NCHWc kernels (ONNXCOMP_CONV=ort) the layout attributes are no-ops: the same function, NCHW throughout.
    plain_path = session_with_env(onnx.load(out), {"ONNXCOMP_CONV": "ort"}).run(None, {"x": x})
    for g, p in zip(got, plain_path):
        np.testing.assert_allclose(g, p, rtol=1e-5, atol=1e-5 * float(np.abs(p).max()))
    # Decompressed: standard ops only, and the same function (BatchNormalization stays folded into the weight).
    onnxcomp.decompress(out, dense)
    plain = onnx.load(dense)
    assert all(n.domain in ("", "ai.onnx") for n in plain.graph.node)
    assert {n.op_type for n in plain.graph.node} == {"Conv", "Clip", "Relu", "HardSigmoid", "HardSwish"}
    for g, d in zip(got, run_plain(plain, {"x": x})):
        np.testing.assert_allclose(g, d, rtol=1e-5, atol=1e-5 * float(np.abs(d).max()))
    # Against the original: 5-bit codebooks (about 3 % relative error per weight) through three layers.
    for g, o in zip(got, run_plain(model, {"x": x})):
        assert np.linalg.norm(g - o) <= 0.1 * float(np.linalg.norm(o))
    # inspect and verify see the convolution weights.
    kinds = {w.name: (w.op, w.kind, w.storage) for w in onnxcomp.inspect(out).weights}
    assert kinds["w1"] == ("CodebookConv", "conv", "record") and kinds["w3"] == ("CodebookConv", "conv", "record")
    assert kinds["w2"] == ("CodebookConv", "conv", "dense" if joined else "record")
    result = onnxcomp.verify(source, out, samples=4, per_layer=True)
    assert {layer.name for layer in result.layers} == {"w1", "w3", "w4", "w5"} | (set() if joined else {"w2"})
    assert result.min_cosine > 0.99


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="NCHWc convolutions run on x86-64 only")
def test_nchwc_layout_attributes_on_a_layer_that_cannot_take_them_fail_session_creation():
    """A record-level guard: nchwc_input on a layer whose channels miss the blocks is refused with a clear error
    (the pass never emits it), where this CPU runs NCHWc convolutions."""
    x_shape, w_shape, attrs = CASES[7]  # 7 input channels, 9 output channels
    rng = np.random.default_rng(2)
    codebook, indices, _ = random_weight(rng, w_shape, 4)
    model = codebook_conv_model(encode_record(codebook, indices, w_shape, 4), dict(attrs, nchwc_input=1))
    session_output(model, rng.standard_normal(x_shape).astype(np.float32), {"ONNXCOMP_CONV": "ort"})  # no-op there
    with pytest.raises(Exception, match=r"nchwc_input/nchwc_output set on a layer that cannot run"):
        session_output(model, rng.standard_normal(x_shape).astype(np.float32))


def test_pass_leaves_a_shared_batch_norm_input_alone(tmp_path):
    """A Conv whose output feeds BatchNormalization and another node keeps the BatchNormalization as a node."""
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"]),
             helper.make_node("Add", ["n", "c"], ["y"])]
    inits = [weight(rng, "w", (8, 8, 3, 3), 0.3)] + [
        numpy_helper.from_array((rng.random(8) + 0.5).astype(np.float32), name) for name in "gbmv"]
    model = make_model(nodes, [float_input("x", [1, 8, 6, 6])], [float_input("y", [1, 8, 6, 6])], inits)
    onnx.save(model, tmp_path / "in.onnx")
    onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", bits=8, min_elements=100)
    ops = [n.op_type for n in onnx.load(tmp_path / "out.onnx", load_external_data=False).graph.node]
    assert ops.count("CodebookConv") == 1 and "BatchNormalization" in ops
    x = rng.standard_normal((1, 8, 6, 6)).astype(np.float32)
    want = run_plain(model, {"x": x})[0]
    assert np.abs(run_compressed(tmp_path / "out.onnx", {"x": x})[0] - want).max() <= 0.05 * float(np.abs(want).max())


def csp_block(rng) -> onnx.ModelProto:
    """A YOLO-style block: Conv -> x * Sigmoid(x) (SiLU) -> Split along the channels -> Conv -> SiLU -> residual Add
    with the Split's piece -> Concat -> Conv -> HardSwish written out as Add/Clip/Div/Mul -> Conv, plus a
    squeeze-excitation branch (GlobalAveragePool -> Conv -> Sigmoid -> Mul broadcasting [N, C, 1, 1]) whose
    operands must stay NCHW (an Identity between its Conv and Sigmoid, as some exporters write). The bias of the
    Split's Conv is an Add of a float16 constant reshaped to [1, C, 1, 1]."""
    def silu(x, y):
        return [helper.make_node("Sigmoid", [x], [y + ".s"]), helper.make_node("Mul", [x, y + ".s"], [y])]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"), *silu("c1", "a1"),
             helper.make_node("Split", ["a1", "halves"], ["p1", "p2"], axis=1),
             helper.make_node("Conv", ["p2", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Cast", ["b2h"], ["b2f"], to=TensorProto.FLOAT),
             helper.make_node("Reshape", ["b2f", "bshape"], ["b2r"]),
             helper.make_node("Add", ["c2", "b2r"], ["c2b"]), *silu("c2b", "a2"),
             helper.make_node("Add", ["p2", "a2"], ["r2"]),
             helper.make_node("Concat", ["p1", "r2", "p2"], ["cat"], axis=1),
             helper.make_node("Conv", ["cat", "w3"], ["c3"], name="conv3"),
             helper.make_node("Add", ["c3", "three"], ["h1"]), helper.make_node("Clip", ["h1", "lo", "hi"], ["h2"]),
             helper.make_node("Div", ["h2", "six"], ["h3"]), helper.make_node("Mul", ["c3", "h3"], ["a3"]),
             helper.make_node("Conv", ["a3", "w4"], ["c4"], name="conv4"),
             helper.make_node("GlobalAveragePool", ["c4"], ["g"]),
             helper.make_node("Conv", ["g", "w5"], ["c5"], name="conv5"), helper.make_node("Identity", ["c5"], ["c5i"]),
             helper.make_node("Sigmoid", ["c5i"], ["s5"]),
             helper.make_node("Mul", ["c4", "s5"], ["y"])]
    inits = [weight(rng, "w1", (32, 3, 3, 3), 0.3), weight(rng, "w2", (16, 16, 3, 3), 0.1),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float16), "b2h"),
             numpy_helper.from_array(np.array([1, -1, 1, 1], np.int64), "bshape"),
             numpy_helper.from_array(np.array([16, 16], np.int64), "halves"), weight(rng, "w3", (32, 48, 1, 1), 0.2),
             numpy_helper.from_array(np.float32(3.0), "three"), numpy_helper.from_array(np.float32(0.0), "lo"),
             numpy_helper.from_array(np.float32(6.0), "hi"), numpy_helper.from_array(np.float32(6.0), "six"),
             weight(rng, "w4", (32, 32, 3, 3), 0.1), weight(rng, "w5", (32, 32, 1, 1), 0.2)]
    return make_model(nodes, [float_input("x", ["n", 3, 10, 12])], [float_input("y", ["n", 32, 8, 10])], inits)


def test_pass_keeps_nchwc_layout_through_layout_agnostic_ops_and_folds_a_bias_add(tmp_path):
    """SiLU, Split/Concat along the channels and a residual Add between CodebookConv nodes keep the blocked layout
    (no reorders); the squeeze-excitation Mul broadcasting [N, C, 1, 1] and the pooled tensor stay NCHW. The
    decomposed HardSwish after conv3 becomes its activation. The per-channel Add after conv2 folds into its bias, and the Sigmoid after it is no activation
    onnxruntime's FusedConv fuses for SiLU (x * Sigmoid(x)), so it stays a node; conv5's Sigmoid after an Identity
    fuses. Outputs equal the NCHW-throughout
    run (ONNXCOMP_CONV=ort) to fp32 rounding, and the original to the codebook error."""
    rng = np.random.default_rng(31)
    model = csp_block(rng)
    source, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, source)
    onnxcomp.compress(source, out, bits=6, min_elements=100, keep_names=True)
    compressed = onnx.load(out, load_external_data=False)
    by_name, attrs = nodes_by_name(compressed)
    layout = {name: (attrs[name].get("nchwc_input", 0), attrs[name].get("nchwc_output", 0))
              for name in ("conv1", "conv2", "conv3", "conv4", "conv5")}
    assert layout == {"conv1": (0, 1), "conv2": (1, 1), "conv3": (1, 1), "conv4": (1, 0), "conv5": (0, 0)}
    assert len(by_name["conv2"].input) == 3 and by_name["conv2"].op_type == "CodebookConv"
    assert not {"Cast", "Reshape", "Identity"} & {n.op_type for n in compressed.graph.node}  # the bias Add folded
    assert attrs["conv5"]["activation"] == b"Sigmoid"  # fused through the Identity
    # The written-out HardSwish after conv3 folds into its activation: the residual Add is the one Add left.
    assert attrs["conv3"]["activation"] == b"HardSwish" and "activation_params" not in attrs["conv3"]
    assert sum(n.op_type == "Add" for n in compressed.graph.node) == 1
    assert not {"Clip", "Div"} & {n.op_type for n in compressed.graph.node}

    x = rng.standard_normal((2, 3, 10, 12)).astype(np.float32)
    got = run_compressed(out, {"x": x})[0]
    plain_path = session_with_env(onnx.load(out), {"ONNXCOMP_CONV": "ort"}).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, plain_path, rtol=1e-5, atol=1e-5 * float(np.abs(plain_path).max()))
    original = run_plain(model, {"x": x})[0]
    assert np.linalg.norm(got - original) <= 0.1 * float(np.linalg.norm(original))  # 6-bit codebooks, five layers


@pytest.mark.parametrize("shape,folds", [((1, 8, 1, 1), True), ((8, 1, 1), True), ((), True), ((1,), True),
                                         ((8,), False), ((1, 8, 8, 8), False), ((2, 8, 1, 1), False)])
def test_pass_folds_an_add_into_the_bias_only_when_it_varies_along_the_channels(tmp_path, shape, folds):
    """Conv (8 output channels, 8x8 output) -> Add(constant of ``shape``): folded into CodebookConv's bias when the
    constant broadcasts along the channel axis alone ([8] aligns with the width axis, [1, 8, 8, 8] varies over
    space, [2, 8, 1, 1] widens the batch: those stay Add nodes); outputs match onnxruntime's Conv + Add either way."""
    rng = np.random.default_rng(41)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Add", ["k", "c"], ["y"])]
    k = rng.standard_normal(shape).astype(np.float32)
    inits = [weight(rng, "w", (8, 8, 3, 3), 0.3), weight(rng, "b", (8,)), numpy_helper.from_array(k, "k")]
    out_shape = list(np.broadcast_shapes((1, 8, 8, 8), shape))
    model = make_model(nodes, [float_input("x", [1, 8, 8, 8])], [float_input("y", out_shape)], inits)
    source, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, source)
    onnxcomp.compress(source, out, bits=6, min_elements=576)  # the weight, not the constant
    ops = [n.op_type for n in onnx.load(out, load_external_data=False).graph.node]
    assert ops == (["CodebookConv"] if folds else ["CodebookConv", "Add"])
    x = rng.standard_normal((1, 8, 8, 8)).astype(np.float32)
    got = run_compressed(out, {"x": x})[0]
    dense = tmp_path / "dense.onnx"
    onnxcomp.decompress(out, dense)
    want = run_plain(onnx.load(dense), {"x": x})[0]
    assert got.shape == want.shape == tuple(out_shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.parametrize("form", ["div_after", "div_before", "mul_sixth", "third_reader", "clip_5", "opset_11"])
def test_pass_folds_a_scalar_affine_and_a_written_out_hard_swish(tmp_path, form):
    """Conv -> BatchNormalization -> Mul(scalar) -> Add(scalar) -> HardSwish written out as x * Clip(x + 3, 0, 6) / 6
    (PaddleOCR's learnable affine block and MobileNetV3 activation): the Mul folds into scale and bias, the Add into
    the bias, the four HardSwish nodes into ``activation`` (the division by 6 after the product, before it, or a Mul
    by 1/6). Not when x has a third reader or the Clip's bound is not 6. Outputs match the original's function on
    the decoded weight (decompress) to fp32 rounding, and onnxruntime's Conv with the original graph to the
    codebook error. In an opset 11 model (PaddleOCR's), where ONNX has no HardSwish op, decompress writes
    x * HardSigmoid(x) (it wrote HardSwish, which the checker refused)."""
    rng = np.random.default_rng(47)
    sixth = [helper.make_node("Div", ["h2", "six"], ["h3"])] if form != "mul_sixth" else \
        [helper.make_node("Mul", ["sixth", "h2"], ["h3"])]
    if form == "div_before":
        swish = [helper.make_node("Div", ["h2", "six"], ["h3"]), helper.make_node("Mul", ["a", "h3"], ["y"])]
    else:
        swish = [helper.make_node("Mul", ["h2", "a"], ["h4"]), *[helper.make_node(n.op_type, [("h4" if i == "h2" else i) for i in n.input], ["y"]) for n in sixth]]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"]),
             helper.make_node("Mul", ["n", "lab_w"], ["s"]), helper.make_node("Add", ["lab_b", "s"], ["a"]),
             helper.make_node("Add", ["a", "three"], ["h1"]), helper.make_node("Clip", ["h1", "lo", "hi"], ["h2"]),
             *swish]
    outputs = [float_input("y", [1, 8, 8, 8])]
    if form == "third_reader":
        nodes.append(helper.make_node("Relu", ["a"], ["side"]))
        outputs.append(float_input("side", [1, 8, 8, 8]))
    inits = [weight(rng, "w", (8, 8, 3, 3), 0.3)] + [
        numpy_helper.from_array((rng.random(8) + 0.5).astype(np.float32), name) for name in "gbmv"] + [
        numpy_helper.from_array(np.array([1.7], np.float32), "lab_w"), numpy_helper.from_array(np.float32(-0.3), "lab_b"),
        numpy_helper.from_array(np.float32(3.0), "three"), numpy_helper.from_array(np.float32(0.0), "lo"),
        numpy_helper.from_array(np.float32(5.0 if form == "clip_5" else 6.0), "hi"),
        numpy_helper.from_array(np.float32(6.0), "six"), numpy_helper.from_array(np.float32(1.0 / 6.0), "sixth")]
    model = make_model(nodes, [float_input("x", [1, 8, 8, 8])], outputs, inits, opset=11 if form == "opset_11" else 17)
    source, out, dense = tmp_path / "in.onnx", tmp_path / "out.onnx", tmp_path / "dense.onnx"
    onnx.save(model, source)
    onnxcomp.compress(source, out, bits=6, min_elements=576)
    compressed = onnx.load(out, load_external_data=False)
    ops = [n.op_type for n in compressed.graph.node]
    conv = next(n for n in compressed.graph.node if n.op_type == "CodebookConv")
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    assert len(conv.input) == 4  # X, record, bias (BatchNormalization's shift, times 1.7, plus -0.3), scale
    scale = numpy_helper.to_array(next(t for t in compressed.graph.initializer if t.name == conv.input[3]))
    assert scale.shape == (8,)  # BatchNormalization's, times 1.7
    if form in ("third_reader", "clip_5"):
        assert "activation" not in attrs and sorted(ops) == sorted(["CodebookConv", "Add", "Clip", "Mul", "Div"] +
                                                                   (["Relu"] if form == "third_reader" else []))
    else:
        assert attrs["activation"] == b"HardSwish" and ops == ["CodebookConv"]
    x = rng.standard_normal((1, 8, 8, 8)).astype(np.float32)
    got = run_compressed(out, {"x": x})
    onnxcomp.decompress(out, dense)
    decompressed = onnx.load(dense)
    if form == "opset_11":
        assert "HardSwish" not in {n.op_type for n in decompressed.graph.node}
    for g, d in zip(got, run_plain(decompressed, {"x": x})):
        np.testing.assert_allclose(g, d, rtol=1e-5, atol=1e-5 * float(np.abs(d).max()))
    for g, o in zip(got, run_plain(model, {"x": x})):
        assert np.linalg.norm(g - o) <= 0.05 * float(np.linalg.norm(o))  # 6-bit codebook


def test_pass_folds_a_scalar_mul_without_batch_norm_into_a_one_element_scale(tmp_path):
    """Conv(X, W, B) -> Mul(scalar) -> Relu: the factor becomes a scale of shape [1] (4 bytes, not 4 per channel),
    which the kernel repeats over the channels, and B times it the bias; decompress multiplies W by it. Outputs
    match the decompressed model to fp32 rounding on both convolution paths."""
    rng = np.random.default_rng(53)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Mul", ["c", "f"], ["m"]), helper.make_node("Relu", ["m"], ["y"])]
    inits = [weight(rng, "w", (16, 16, 3, 3), 0.3), weight(rng, "b", (16,)),
             numpy_helper.from_array(np.array([[[[-0.7]]]], np.float32), "f")]
    model = make_model(nodes, [float_input("x", [1, 16, 8, 8])], [float_input("y", [1, 16, 8, 8])], inits)
    source, out, dense = tmp_path / "in.onnx", tmp_path / "out.onnx", tmp_path / "dense.onnx"
    onnx.save(model, source)
    onnxcomp.compress(source, out, bits=6, min_elements=1000)
    compressed = onnx.load(out, load_external_data=False)
    assert [n.op_type for n in compressed.graph.node] == ["CodebookConv"]
    conv = compressed.graph.node[0]
    arrays = {t.name: numpy_helper.to_array(t) for t in compressed.graph.initializer
              if t.data_location != TensorProto.EXTERNAL}
    np.testing.assert_array_equal(arrays[conv.input[3]], np.array([-0.7], np.float32))
    np.testing.assert_array_equal(arrays[conv.input[2]], (numpy_helper.to_array(inits[1]) * np.float32(-0.7)))
    x = rng.standard_normal((1, 16, 8, 8)).astype(np.float32)
    onnxcomp.decompress(out, dense)
    want = run_plain(onnx.load(dense), {"x": x})[0]
    for env in ({}, {"ONNXCOMP_CONV": "ort"}):
        got = session_with_env(onnx.load(out), env).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    original = run_plain(model, {"x": x})[0]
    assert np.linalg.norm(got - original) <= 0.05 * float(np.linalg.norm(original))


def test_pass_marks_tensors_of_24_channels_blocked_only_under_blocks_of_8(tmp_path):
    """24 channels are whole blocks of 8 (AVX2) but not of 16 (AVX-512F): the pass marks such a region with 2, which
    the kernels read as blocked where the CPU's block is 8 and as NCHW where it is 16, both ends alike. Outputs
    equal the NCHW-throughout run (ONNXCOMP_CONV=ort) to fp32 rounding on this CPU."""
    rng = np.random.default_rng(43)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Sigmoid", ["c1"], ["s1"]), helper.make_node("Mul", ["c1", "s1"], ["a1"]),
             helper.make_node("Conv", ["a1", "w2"], ["c2"], name="conv2"), helper.make_node("Relu", ["c2"], ["a2"]),
             helper.make_node("Conv", ["a2", "w3"], ["y"], name="conv3")]
    inits = [weight(rng, "w1", (24, 8, 3, 3), 0.3), weight(rng, "w2", (24, 24, 1, 1), 0.3),
             weight(rng, "w3", (16, 24, 1, 1), 0.3)]
    model = make_model(nodes, [float_input("x", ["n", 8, 10, 10])], [float_input("y", ["n", 16, 10, 10])], inits)
    source, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, source)
    onnxcomp.compress(source, out, bits=6, min_elements=100, keep_names=True)
    compressed = onnx.load(out, load_external_data=False)
    attrs = {n.name: {a.name: helper.get_attribute_value(a) for a in n.attribute} for n in compressed.graph.node}
    layout = {name: (attrs[name].get("nchwc_input", 0), attrs[name].get("nchwc_output", 0))
              for name in ("conv1", "conv2", "conv3")}
    # Every tensor holds 24 channels: blocked only under blocks of 8. (Under 16, conv2 and conv3 pad their NCHW
    # input to 32 channels.)
    assert layout == {"conv1": (0, 2), "conv2": (2, 2), "conv3": (2, 0)}
    x = rng.standard_normal((2, 8, 10, 10)).astype(np.float32)
    got = run_compressed(out, {"x": x})[0]
    plain_path = session_with_env(onnx.load(out), {"ONNXCOMP_CONV": "ort"}).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, plain_path, rtol=1e-5, atol=1e-5 * float(np.abs(plain_path).max()))


# ---- CodebookConv with a dense weight (join_dense_convs: dense Convs inside a blocked region) ------------------

def dense_conv_model(w: np.ndarray, attrs: dict, bias=None, scale=None, activation=None) -> onnx.ModelProto:
    """codebook_conv_model with the dense weight ``w`` (float32 or float16) in place of a record."""
    model = codebook_conv_model(b"", attrs, bias, scale, activation)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "record"))
    return model


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_codebook_conv_with_a_dense_weight_is_the_record_path_bit_for_bit(case, dtype):
    """A float32 / float16 W gives the bits of a record holding the same values (the working weight is the same),
    on both paths, and matches onnxruntime's Conv on the widened weight within the summation bound."""
    x_shape, w_shape, attrs = CASES[case]
    rng = np.random.default_rng(200 + case)
    w = (rng.standard_normal(w_shape) * 0.3).astype(dtype)
    wide = w.astype(np.float32)
    codebook, inverse = np.unique(wide, return_inverse=True)
    bits = max(1, int(np.ceil(np.log2(max(len(codebook), 2)))))
    record = encode_record(codebook.astype(np.float32), inverse.reshape(w_shape), w_shape, bits)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32) if case % 2 else None
    scale = (rng.random(w_shape[0]) + 0.5).astype(np.float32) if case % 3 == 1 else None
    activation = "HardSwish" if case % 4 == 2 else None
    x = rng.standard_normal(x_shape).astype(np.float32)
    for env in (None, {"ONNXCOMP_CONV": "ort"}):
        y = session_output(dense_conv_model(w, attrs, bias, scale, activation), x, env)
        np.testing.assert_array_equal(y, session_output(codebook_conv_model(record, attrs, bias, scale, activation), x, env))
    effective = wide if scale is None else (wide * scale.reshape((-1,) + (1,) * (wide.ndim - 1))).astype(np.float32)
    np.testing.assert_allclose(y, ort_conv(x, effective, bias, attrs, activation), rtol=0,
                               atol=float(summation_bound(x, effective, bias, attrs).max()))


def test_codebook_conv_float16_weight_widens_every_value_exactly():
    """Subnormal, largest and non-finite binary16 values widen as onnxruntime's Cast widens them."""
    w = np.array([6.0e-8, -3.0e-5, 65504.0, -0.0, 1.0, np.inf, -np.inf, 0.5], np.float16).reshape(8, 1, 1, 1)
    x = np.ones((1, 1, 2, 2), np.float32)
    y = session_output(dense_conv_model(w, {}), x)
    np.testing.assert_array_equal(y[0, :, 0, 0], w.astype(np.float32).ravel())


def test_codebook_conv_dense_weight_errors():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 4, 3, 3))
    with pytest.raises(Exception, match=r"the weight input must be a uint8 record or a float32 or float16 tensor"):
        session_output(dense_conv_model(w.astype(np.float64), {}), np.zeros((1, 4, 6, 6), np.float32))
    with pytest.raises(Exception, match=r"the weight must have rank >= 3"):
        session_output(dense_conv_model(w.reshape(8, 36).astype(np.float32), {}), np.zeros((1, 4, 6, 6), np.float32))
    node = helper.make_node("CodebookConv", ["x", "w"], ["y"], domain=onnxcomp.DOMAIN)
    graph = helper.make_graph([node], "g", [float_input("x", None), float_input("w", None)], [float_input("y", None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(onnxcomp.DOMAIN, 1)],
                              ir_version=8)
    with pytest.raises(Exception, match=r"a float32 or float16 weight input must be a constant initializer"):
        ort.InferenceSession(model.SerializeToString(), onnxcomp.runtime.session_options(), providers=["CPUExecutionProvider"])


def test_pass_leaves_a_dense_conv_outside_every_codebook_conv_region_alone(tmp_path):
    """Two dense Convs of their own region (their weights below --min-elements), beside a compressed one: they
    stay Conv (join_dense_convs joins only regions holding a CodebookConv)."""
    rng = np.random.default_rng(22)
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1], name="big"),
             helper.make_node("GlobalAveragePool", ["a"], ["p"]),
             helper.make_node("Conv", ["x", "wb"], ["b"], name="small1"),
             helper.make_node("Conv", ["b", "wc"], ["c"], name="small2")]
    inits = [weight(rng, "wa", (16, 8, 3, 3), 0.3), weight(rng, "wb", (8, 8, 1, 1), 0.3), weight(rng, "wc", (8, 8, 1, 1), 0.3)]
    separate = make_model(nodes, [float_input("x", [1, 8, 6, 6])], [float_input("p", [1, 16, 1, 1]),
                                                                   float_input("c", [1, 8, 6, 6])], inits)
    onnx.save(separate, tmp_path / "sep.onnx")
    onnxcomp.compress(tmp_path / "sep.onnx", tmp_path / "sep_out.onnx", bits=5, min_elements=100, keep_names=True)
    ops = {n.name: n.op_type for n in onnx.load(tmp_path / "sep_out.onnx", load_external_data=False).graph.node}
    assert ops["big"] == "CodebookConv" and ops["small1"] == ops["small2"] == "Conv"


def test_pass_writes_only_the_conv_attributes_that_differ_from_the_defaults(tmp_path):
    """PyTorch writes all six Conv attributes on every Conv; CodebookConv takes ONNX Conv's defaults (docs/ops.md),
    so the pass writes only those that differ (explicit_conv_attributes). A model spelling every default out and
    the same model without them compress to the same nodes and sidecar, and run to bit-identical outputs."""
    rng = np.random.default_rng(23)
    spelled = dict(auto_pad="NOTSET", dilations=[1, 1], group=1, kernel_shape=[3, 3])
    layers = [  # (name, input, weight shape, the attributes beyond the defaults, the defaults written out)
        ("conv1", "x", (16, 8, 3, 3), dict(pads=[1, 1, 1, 1]), dict(spelled, strides=[1, 1])),
        ("conv2", "a1", (16, 16, 3, 3), dict(strides=[2, 2]), dict(spelled, pads=[0, 0, 0, 0])),
        ("conv3", "a2", (8, 1, 3, 3), dict(group=8, pads=[1, 1, 1, 1], dilations=[1, 2], kernel_shape=[3, 3]),
         dict(auto_pad="NOTSET", strides=[1, 1])),
    ]
    inits = [weight(rng, "w1", (16, 8, 3, 3), 0.3), weight(rng, "w2", (16, 16, 3, 3), 0.2), weight(rng, "w3", (8, 1, 3, 3), 0.5)]

    def model(spell: bool) -> onnx.ModelProto:
        nodes = [helper.make_node("Conv", [source, f"w{i + 1}"], [f"c{i + 1}"], name=name, **needed, **(defaults if spell else {}))
                 for i, (name, source, _, needed, defaults) in enumerate(layers)]
        nodes.insert(1, helper.make_node("Relu", ["c1"], ["a1"]))
        nodes.insert(3, helper.make_node("Slice", ["c2", "starts", "ends", "axes"], ["a2"]))
        extra = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("starts", [0]), ("ends", [8]), ("axes", [1]))]
        return make_model(nodes, [float_input("x", [1, 8, 12, 12])], [float_input("c3", [1, 8, 5, 3])], inits + extra)

    outputs, written = [], []
    for spell in (True, False):
        source, out = tmp_path / f"in{spell}.onnx", tmp_path / f"out{spell}.onnx"
        onnx.save(model(spell), source)
        onnxcomp.compress(source, out, bits=5, min_elements=50, keep_names=True)
        compressed = onnx.load(out, load_external_data=False)
        nodes = [n for n in compressed.graph.node if n.op_type == "CodebookConv"]
        assert len(nodes) == 3
        written.append({n.name: {a.name: helper.get_attribute_value(a) for a in n.attribute} for n in nodes})
        outputs.append(run_compressed(out, {"x": np.random.default_rng(5).standard_normal((1, 8, 12, 12)).astype(np.float32)}))
    assert written[0] == written[1]
    kept = {name: {k: v for k, v in attrs.items() if not k.startswith("nchwc") and k != "activation"}
            for name, attrs in written[0].items()}
    assert kept == {"conv1": {"pads": [1, 1, 1, 1]}, "conv2": {"strides": [2, 2]},
                    "conv3": {"group": 8, "pads": [1, 1, 1, 1], "dilations": [1, 2]}}
    assert (tmp_path / "outTrue.onnxcomp").read_bytes() == (tmp_path / "outFalse.onnxcomp").read_bytes()
    (tmp_path / "again").mkdir()  # deterministic: a second run writes the same bytes (same file name, other folder)
    onnxcomp.compress(tmp_path / "inTrue.onnx", tmp_path / "again" / "outTrue.onnx", bits=5, min_elements=50, keep_names=True)
    for name in ("outTrue.onnx", "outTrue.onnxcomp"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / name).read_bytes()
    for a, b in zip(*outputs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(platform.system() != "Linux", reason="reads the resident set from /proc/self/statm")
def test_released_sessions_release_their_memory():
    """A layer with an NCHW output runs the blocked convolution into a scratch tensor from the run's allocator, which
    the kernel context hands out as a new wrapper holding the session's allocator (onnxruntime_c_api.h: the caller
    releases it). Left unreleased, every run leaked one and every released session's arena stayed resident: 30
    sessions of this 2 MiB layer kept about 48 MiB before the fix, under 1 MiB after."""
    rng = np.random.default_rng(5)
    codebook, indices, _ = random_weight(rng, (32, 32, 3, 3), 4)
    model = codebook_conv_model(encode_record(codebook, indices.ravel(), (32, 32, 3, 3), 4),
                                dict(pads=[1, 1, 1, 1])).SerializeToString()
    x = rng.standard_normal((1, 32, 64, 64)).astype(np.float32)

    def resident() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def one_session(runs: int) -> None:
        session = ort.InferenceSession(model, onnxcomp.runtime.session_options(), providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, {"x": x})

    one_session(3)
    before = resident()
    for _ in range(30):
        one_session(3)
    assert resident() - before < 16 << 20


@pytest.mark.parametrize("form", ["mul_add", "add_mul", "mul", "add", "padded_reader", "graph_output"])
def test_pass_folds_a_scalar_affine_of_x_into_convolutions_that_read_no_padding(tmp_path, form):
    """Conv -> HardSwish -> Mul(scalar a) -> Add(scalar b) -> t, t read by a 1x1 Conv with a bias and a grouped 1x1
    Conv without one (PaddleOCR's learnable affine block before pointwise convolutions): ``Conv(h * a + b, W) + c =
    Conv(h, W * a) + c + b * sum(W[o])``, so both readers take a scale and a bias and the Mul and Add go (also an Add
    before the Mul, or either alone). Not when a reader pads (it would read b at the border where the affine is
    absent) or t is a graph output. Outputs equal the original graph on the decoded weights to fp32 rounding."""
    rng = np.random.default_rng(61)
    if form == "add_mul":
        affine = [helper.make_node("Add", ["h", "b_"], ["s"]), helper.make_node("Mul", ["a_", "s"], ["t"])]
    elif form in ("mul", "add"):
        affine = [helper.make_node(form.capitalize(), ["h", {"mul": "a_", "add": "b_"}[form]], ["t"])]
    else:
        affine = [helper.make_node("Mul", ["h", "a_"], ["s"]), helper.make_node("Add", ["b_", "s"], ["t"])]
    kernel, pads = ((3, 3), [1, 1, 1, 1]) if form == "padded_reader" else ((1, 1), [0, 0, 0, 0])
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("HardSwish", ["c"], ["h"]), *affine,
             helper.make_node("Conv", ["t", "w2", "bias2"], ["y2"], name="conv2"),
             helper.make_node("Conv", ["t", "w3"], ["y3"], group=2, pads=pads, name="conv3")]
    outputs = [float_input("y2", [1, 16, 8, 8]), float_input("y3", [1, 16, 8, 8])]
    if form == "graph_output":
        outputs.append(float_input("t", [1, 16, 8, 8]))
    inits = [weight(rng, "w1", (16, 8, 3, 3), 0.3), weight(rng, "w2", (16, 16, 1, 1), 0.3), weight(rng, "bias2", (16,)),
             weight(rng, "w3", (16, 8) + kernel, 0.3), numpy_helper.from_array(np.float32(1.7), "a_"),
             numpy_helper.from_array(np.array([-0.4], np.float32), "b_")]
    model = make_model(nodes, [float_input("x", [1, 8, 8, 8])], outputs, inits)
    source, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, source)
    report = onnxcomp.compress(source, out, bits=6, min_elements=100, keep_names=True)
    compressed = onnx.load(out, load_external_data=False)
    ops = sorted(n.op_type for n in compressed.graph.node)
    folds = form not in ("padded_reader", "graph_output")
    assert ops == sorted(["CodebookConv"] * 3 + ([] if folds else [n.op_type for n in affine]))
    by_name, attrs = nodes_by_name(compressed)
    if folds:
        assert all(by_name[name].input[0] == "h" for name in ("conv2", "conv3"))
    x = rng.standard_normal((1, 8, 8, 8)).astype(np.float32)
    got = run_compressed(out, {"x": x})
    want = run_plain(reference_model(model, str(tmp_path / "out.onnxcomp"), report.float16), {"x": x})
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=2e-5 * float(np.abs(w).max()))


# Short 1-D convolutions, group 1 (CodebookConv's direct path, docs/ops.md): batch x output length <= 16 positions.
SHORT_1D = [
    ((1, 1, 640), (258, 1, 256), dict(strides=[128])),  # Silero's STFT: 4 positions
    ((1, 129, 4), (128, 129, 3), dict(pads=[1, 1])),
    ((1, 128, 4), (64, 128, 3), dict(pads=[1, 1], strides=[2])),
    ((2, 7, 5), (9, 7, 3), dict(pads=[2, 1], dilations=[2])),
    ((3, 17, 6), (5, 17, 2), dict(auto_pad="VALID", strides=[2])),
    ((1, 33, 16), (20, 33, 1), {}),  # 16 positions: the limit
]


@pytest.mark.parametrize("activation", [None, "Relu"])
@pytest.mark.parametrize("case", range(len(SHORT_1D)))
def test_short_1d_convolutions_direct_against_numpy_and_onnxruntime(case, activation):
    x_shape, w_shape, attrs = SHORT_1D[case]
    rng = np.random.default_rng(300 + case)
    codebook, indices, w = random_weight(rng, w_shape, 5)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32) if case % 2 == 0 else None
    x = rng.standard_normal(x_shape).astype(np.float32)
    model = codebook_conv_model(encode_record(codebook, indices, w_shape, 5), attrs, bias, None, activation)
    y = session_output(model, x)
    off = session_output(model, x, {"ONNXCOMP_CONV_DIRECT": "0"})  # onnxruntime's Conv on the same weight
    reference = numpy_conv(x, w, bias, attrs)
    if activation:
        reference = np.maximum(reference, 0.0)
    bound = summation_bound(x, w, bias, attrs)
    assert y.shape == reference.shape
    assert (np.abs(y.astype(np.float64) - reference) <= bound).all()
    np.testing.assert_allclose(y, off, rtol=0, atol=float(bound.max()))
    if case < 3:  # hundreds of terms per output summed in another order: some bits differ, so the direct path ran
        assert not np.array_equal(y, off)
    outputs = [session_output(model, x, {"ONNXCOMP_ISA": isa}) for isa in ("scalar", "avx2", "avx512")]
    for other in outputs:
        np.testing.assert_array_equal(other.view(np.uint32), y.view(np.uint32))


def test_1d_convolutions_past_16_positions_run_onnxruntimes_conv():
    rng = np.random.default_rng(9)
    codebook, indices, _ = random_weight(rng, (20, 33, 1), 5)
    model = codebook_conv_model(encode_record(codebook, indices, (20, 33, 1), 5), {}, rng.standard_normal(20).astype(np.float32))
    for x_shape in [(1, 33, 17), (2, 33, 9)]:
        x = rng.standard_normal(x_shape).astype(np.float32)
        np.testing.assert_array_equal(session_output(model, x).view(np.uint32),
                                      session_output(model, x, {"ONNXCOMP_CONV_DIRECT": "0"}).view(np.uint32))
