"""MaxPool, AveragePool, GlobalMaxPool, GlobalAveragePool and Resize of domain ai.onnxcomp (docs/ops.md): the ONNX
ops on tensors that may be in onnxruntime's NCHWc layout, and PackWeightsPass keeping them inside blocked regions.

Tolerances: MaxPool, GlobalMaxPool and nearest Resize copy values, so every layout gives onnxruntime's ONNX op's
bits; AveragePool and GlobalAveragePool run onnxruntime's NCHWc kernels on blocked tensors, which sum in another
order (fp32 rounding: a few ulps of the mean, checked at rtol 1e-6 and atol 1e-6 of the largest value).
"""

from __future__ import annotations

import os
import platform

import numpy as np
import onnx
import pytest
from conftest import float_input, make_model, nodes_by_name, run_plain, session_with_env, weight
from onnx import helper, numpy_helper

import onnxcomp


def cpu_block() -> int:
    """onnxruntime's NCHWc channel block on this CPU as the library uses it (1: no NCHWc path, as under
    ONNXCOMP_CONV=ort)."""
    if platform.machine() not in ("x86_64", "AMD64") or os.environ.get("ONNXCOMP_CONV") == "ort":
        return 1
    with open("/proc/cpuinfo") as f:
        return 16 if " avx512f" in f.read() else 8


def to_blocked(x: np.ndarray, block: int) -> np.ndarray:
    """NCHW -> onnxruntime's NCHWc layout ([N, C/B, H, W, B] in memory), returned with the NCHW shape."""
    n, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(n, c // block, block, h, w).transpose(0, 1, 3, 4, 2)).reshape(x.shape)


def from_blocked(y: np.ndarray, block: int) -> np.ndarray:
    n, c, h, w = y.shape
    return np.ascontiguousarray(y.reshape(n, c // block, h, w, block).transpose(0, 1, 4, 2, 3)).reshape(y.shape)


NEAREST = dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
OPS = [("MaxPool", dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
       ("MaxPool", dict(kernel_shape=[5, 5], pads=[2, 2, 2, 2], dilations=[1, 1], strides=[1, 1])),
       ("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
       ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 1, 0], dilations=[2, 1])),
       ("AveragePool", dict(kernel_shape=[3, 2], strides=[3, 2], count_include_pad=0)),
       ("AveragePool", dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)),
       ("GlobalMaxPool", {}), ("GlobalAveragePool", {}), ("Resize", NEAREST)]


def spatial_model(op: str, attrs: dict, domain: str, scales=(1, 1, 2, 3)) -> onnx.ModelProto:
    inputs, inits = ["x"], []
    if op == "Resize":
        inputs += ["", "scales"]
        inits.append(numpy_helper.from_array(np.array(scales, np.float32), "scales"))
    node = helper.make_node(op, inputs, ["y"], domain=domain, **attrs)
    graph = helper.make_graph([node], "g", [float_input("x", None)], [float_input("y", None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnxcomp", 1)],
                             ir_version=8)


@pytest.mark.parametrize("op,attrs", OPS)
@pytest.mark.parametrize("layout", [(0, 0), (1, 0), (0, 1), (1, 1), (2, 2)])
def test_blocked_spatial_ops_equal_onnx_op_in_every_layout(op, attrs, layout):
    """Each op with nchwc_input / nchwc_output (0: NCHW, 1: blocked, 2: blocked where the block is 8) against
    onnxruntime's ONNX op on NCHW tensors, 32 channels (whole blocks of 8 and 16), two images, odd spatial dims."""
    if op == "Resize" and layout[0] != layout[1]:
        pytest.skip("Resize reads and writes one layout")
    block = cpu_block()
    blocked_in = block > 1 and (layout[0] == 1 or (layout[0] == 2 and block == 8))
    blocked_out = block > 1 and (layout[1] == 1 or (layout[1] == 2 and block == 8))
    x = np.random.default_rng(7).standard_normal((2, 32, 9, 11)).astype(np.float32)
    want = run_plain(spatial_model(op, attrs, ""), {"x": x})[0]
    custom = dict(attrs, nchwc_input=layout[0], nchwc_output=layout[1])
    session = session_with_env(spatial_model(op, custom, "ai.onnxcomp"))
    got = session.run(None, {"x": to_blocked(x, block) if blocked_in else x})[0]
    got = from_blocked(got, block) if blocked_out else got
    assert got.shape == want.shape
    if op in ("AveragePool", "GlobalAveragePool") and (blocked_in or blocked_out):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * float(np.abs(want).max()))
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("op,attrs,scales,message", [
    ("Resize", dict(NEAREST, mode="linear"), (1, 1, 2, 2), "only mode 'nearest'"),
    ("Resize", NEAREST, (1, 1, 1.5, 2), "scales must be integers"),
    ("Resize", NEAREST, (1, 2, 2, 2), "scales must be integers"),
    ("Resize", dict(NEAREST, nchwc_input=1), (1, 1, 2, 2), "must agree"),
    ("MaxPool", dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER"), None, "auto_pad must be NOTSET"),
    ("MaxPool", dict(kernel_shape=[3]), None, "2-D pool"),
    ("MaxPool", dict(kernel_shape=[3, 3], nchwc_output=3), None, "must be 0, 1 or 2"),
    ("AveragePool", dict(kernel_shape=[0, 3]), None, "must be >= 1")])
def test_blocked_spatial_ops_refuse_forms_they_do_not_run(op, attrs, scales, message):
    """Forms outside the op's definition fail session creation with a message naming the node and the problem."""
    model = spatial_model(op, attrs, "ai.onnxcomp", scales=scales or (1, 1, 1, 1))
    model.graph.node[0].name = "bad"
    with pytest.raises(Exception, match=f"onnxcomp: node 'bad' \\({op}\\):.*{message}"):
        session_with_env(model)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("ceil_mode", [0, 1])
def test_pool_output_sizes_follow_onnxruntime_for_windows_near_and_beyond_the_input(op, ceil_mode):
    """Output sizes (and values) equal onnxruntime's ONNX op for inputs of 1-7 rows against windows of 1-5 rows,
    strides 1-3 and pads below the window: its division truncates toward zero (a window one row larger than the
    padded input still gives one output row), ceil_mode's last window starts inside the input; where onnxruntime
    refuses the shape (negative size), so does the op, in a run."""
    block = cpu_block()
    for height in range(1, 8):
        x = np.random.default_rng(height).standard_normal((1, 16, height, 4)).astype(np.float32)
        for kernel in (1, 2, 3, 5):
            for stride in (1, 2, 3):
                for pad in range(min(kernel, 3)):
                    attrs = dict(kernel_shape=[kernel, 1], strides=[stride, 1], pads=[pad, 0, pad, 0],
                                 ceil_mode=ceil_mode)
                    try:
                        want = run_plain(spatial_model(op, attrs, ""), {"x": x})[0]
                    except Exception:
                        want = None
                    session = session_with_env(spatial_model(op, dict(attrs, nchwc_input=1, nchwc_output=1),
                                                             "ai.onnxcomp"))
                    if want is None:
                        with pytest.raises(Exception, match="larger than the padded input"):
                            session.run(None, {"x": to_blocked(x, block)})
                        continue
                    got = from_blocked(session.run(None, {"x": to_blocked(x, block)})[0], block)
                    assert got.shape == want.shape, (height, kernel, stride, pad)
                    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def spp_model(rng) -> onnx.ModelProto:
    """conv1 -> MaxPool(5, stride 1) twice -> Concat with conv1's output -> conv2 -> nearest Resize x2 -> conv3, and a
    final GlobalAveragePool the graph output reads (so it stays the ONNX op)."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["a1"]),
             helper.make_node("MaxPool", ["a1"], ["m1"], kernel_shape=[5, 5], pads=[2, 2, 2, 2], name="pool1"),
             helper.make_node("MaxPool", ["m1"], ["m2"], kernel_shape=[5, 5], pads=[2, 2, 2, 2], name="pool2"),
             helper.make_node("Concat", ["a1", "m1", "m2"], ["cat"], axis=1),
             helper.make_node("Conv", ["cat", "w2"], ["c2"], name="conv2"),
             helper.make_node("Resize", ["c2", "", "scales"], ["up"], name="up", **NEAREST),
             helper.make_node("Conv", ["up", "w3"], ["c3"], pads=[1, 1, 1, 1], name="conv3"),
             helper.make_node("GlobalAveragePool", ["c3"], ["y"], name="gap")]
    inits = [weight(rng, "w1", (16, 3, 3, 3), 0.3), weight(rng, "w2", (32, 48, 1, 1), 0.2),
             weight(rng, "w3", (16, 32, 3, 3), 0.1), numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    return make_model(nodes, [float_input("x", ["n", 3, 10, 12])], [float_input("y", ["n", 16, 1, 1])], inits)


def test_pass_keeps_pools_and_resize_inside_the_blocked_region(tmp_path):
    """The MaxPools and the Resize between CodebookConv nodes become the ai.onnxcomp ops with both layouts blocked
    (16 and 32 channels: value 1), so the convolutions around them read and write the blocked layout; the pool
    feeding the graph output stays ONNX. Outputs equal the NCHW-throughout run (ONNXCOMP_CONV=ort) to fp32 rounding
    (the convolutions sum in another order there), and decompress gives back the ONNX ops, which run without the
    library to the same values."""
    rng = np.random.default_rng(53)
    model = spp_model(rng)
    source, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, source)
    onnxcomp.compress(source, out, bits=6, min_elements=100, keep_names=True)
    compressed = onnx.load(out, load_external_data=False)
    by_name, attrs = nodes_by_name(compressed)
    for name in ("pool1", "pool2", "up"):
        assert by_name[name].domain == "ai.onnxcomp"
        assert (attrs[name]["nchwc_input"], attrs[name]["nchwc_output"]) == (1, 1)
    assert by_name["gap"].domain == "" and "nchwc_input" not in attrs["gap"]
    layout = {name: (attrs[name].get("nchwc_input", 0), attrs[name].get("nchwc_output", 0))
              for name in ("conv1", "conv2", "conv3")}
    assert layout == {"conv1": (0, 1), "conv2": (1, 1), "conv3": (1, 0)}

    x = rng.standard_normal((2, 3, 10, 12)).astype(np.float32)
    full = onnx.load(out)
    got = session_with_env(full).run(None, {"x": x})[0]
    plain_path = session_with_env(full, {"ONNXCOMP_CONV": "ort"}).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, plain_path, rtol=1e-5, atol=1e-5 * float(np.abs(plain_path).max()))
    dense = tmp_path / "dense.onnx"
    onnxcomp.decompress(out, dense)
    decompressed = onnx.load(dense)
    assert not [n for n in decompressed.graph.node if n.domain]
    want = run_plain(decompressed, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
