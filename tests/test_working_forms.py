"""Decode-once working forms: PackWeightsPass's rule (docs/ops.md: working copies may spend half of the bytes
compression saved; CodebookConv's copies count first, then CodebookDecode nodes, then CodebookMatMul nodes, each
group smallest first) and the compressed model it emits, run in onnxruntime against the decompressed model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from conftest import float_input, make_model, run_compressed, run_plain, weight
from onnx import helper

import onnxcomp
from onnxcomp.passes.pack_weights import DECODE_ONCE_SHARE, assign_decode_once, working_copy_bytes


def fake_target(elements: int, record_bytes: int, shape: tuple[int, int] | None = None, transposed: bool = False):
    """A packed weight of `elements` floats, by default one row of a [1, elements] matrix."""
    return SimpleNamespace(size=elements, dense_bytes=4 * elements, record=b"\0" * record_bytes, transposed=transposed,
                           constant=SimpleNamespace(shape=shape or (1, elements)))


def node(op: str) -> gs.Node:
    return gs.Node(op, attrs={})


def test_rule_spends_half_the_saving_conv_first_then_decode_then_matmul_smallest_first():
    conv, decode, small, middle, large = (fake_target(e, e // 2) for e in (1000, 3000, 500, 2000, 8000))
    targets = [conv, decode, small, middle, large]
    saved = sum(t.dense_bytes - len(t.record) for t in targets)  # 14500 elements * 3.5 bytes
    assert DECODE_ONCE_SHARE * saved == 25375
    emitted = [(node("CodebookMatMul"), large), (node("CodebookMatMul"), middle), (node("CodebookConv"), conv),
               (node("CodebookMatMul"), small), (node("CodebookDecode"), decode)]
    line = assign_decode_once(targets, emitted)
    granted = {id(t) for n, t in emitted if n.attrs.get("decode_once") == 1}
    # conv 4000 bytes, then decode 12000, then the smallest matmul 2048 (its 500 columns padded to 512 in the
    # dense panels); the next (8000) would pass 25375.
    assert granted == {id(decode), id(small)}
    assert "1 CodebookDecode, 1 CodebookMatMul; 18048 bytes" in line
    assert "decode_once" not in emitted[2][0].attrs  # CodebookConv has no such attribute


def test_matmul_working_copy_counts_the_padded_panels():
    """CodebookMatMul keeps [K, N] in dense panels of 16 columns: N rounds up to a multiple of 16 (the record is
    [K, N] = W^T of a transposed [N, K] constant)."""
    assert working_copy_bytes(node("CodebookMatMul"), fake_target(1024 * 8210, 1, (1024, 8210))) == 4 * 1024 * 8224
    assert working_copy_bytes(node("CodebookMatMul"), fake_target(8210 * 1024, 1, (8210, 1024), True)) == 4 * 1024 * 8224
    assert working_copy_bytes(node("CodebookMatMul"), fake_target(384 * 1536, 1, (384, 1536))) == 4 * 384 * 1536
    assert working_copy_bytes(node("CodebookDecode"), fake_target(33, 1, (3, 11))) == 4 * 33


def test_rule_grants_nothing_when_convolutions_take_the_budget():
    conv, matmul = fake_target(10000, 1000), fake_target(100, 50)
    emitted = [(node("CodebookConv"), conv), (node("CodebookMatMul"), matmul)]
    assign_decode_once([conv, matmul], emitted)
    assert "decode_once" not in emitted[1][0].attrs


def test_compressed_model_with_decode_once_nodes_runs_like_its_decompressed_form(tmp_path):
    """MatMul, Gemm and ConvTranspose readers: at 4 bits about 7/16 of the dense bytes may become working copies, so
    the ConvTranspose weight (CodebookDecode) and the smaller Gemm weight get one, the large MatMul weight keeps its
    packed form; the 256-element bias read by an Add stays dense (SMALL_DECODED_ELEMENTS); the compressed model
    gives what its decompressed form gives."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m"]), helper.make_node("Add", ["m", "hb"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["g"], transB=1),
             helper.make_node("Concat", ["g", "g", "g", "g"], ["y"], axis=1),
             helper.make_node("Reshape", ["y", "shape"], ["img"]),
             helper.make_node("ConvTranspose", ["img", "w3"], ["z"], strides=[2, 2])]
    inits = [weight(rng, "w1", (64, 256), 0.2), weight(rng, "hb", (256,)), weight(rng, "w2", (16, 256), 0.2),
             weight(rng, "b2", (16,)), onnx.numpy_helper.from_array(np.array([-1, 4, 4, 4], np.int64), "shape"),
             weight(rng, "w3", (4, 64, 5, 5), 0.3)]
    model = make_model(nodes, [float_input("x", ["n", 64])], [float_input("z", ["n", 64, 11, 11])], inits)
    onnx.save(model, tmp_path / "in.onnx")
    report = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", bits=4, min_elements=100)
    compressed = onnx.load(tmp_path / "out.onnx", load_external_data=False)
    custom = [n for n in compressed.graph.node if n.domain == onnxcomp.DOMAIN]
    assert sorted(n.op_type for n in custom) == ["CodebookDecode", "CodebookMatMul", "CodebookMatMul"]
    record = {short: name.split(".")[0] for short, name in report.names.items()}  # short record name -> its weight
    once = {record[n.input[0 if n.op_type == "CodebookDecode" else 1]]: {a.name: helper.get_attribute_value(a)
            for a in n.attribute}.get("decode_once") for n in custom}
    assert once == {"w1": None, "w2": 1, "w3": 1}
    assert "hb" in {i.name for i in compressed.graph.initializer}
    x = rng.standard_normal((3, 64)).astype(np.float32)
    onnxcomp.decompress(tmp_path / "out.onnx", tmp_path / "dense.onnx")
    got, want = run_compressed(tmp_path / "out.onnx", {"x": x})[0], run_plain(tmp_path / "dense.onnx", {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
