"""A constant bias Add after CodebookMatMul folded into the node's ``bias`` input (pack_weights.fold_bias_adds).

The kernel adds the bias as it stores each output, the one float32 addition the Add did: on the decode-once dense
panels, the per-run dense panels and the fused kernel of a record without outliers the folded model's outputs must
equal the unfolded graph's (the same CodebookMatMul, then the Add) bit for bit, under every instruction-set cap,
at a few rows and at thousands (past the per-run GEMM threshold), with odd K and N. With outliers on the fused and
per-run paths the corrections follow the bias instead of preceding it: equal within fp32 rounding.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcomp
from conftest import float_input, make_model, reference_model, run_compressed, run_plain, session_with_env
from test_kernels import ISAS, isa_available

K, N = 37, 29  # odd: N past one 16-column panel, K no multiple of any vector width


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def projection(rng, bias_shape=None, extra_nodes=(), outputs=("y",), bias_input=False, bias_type=np.float32, n=N):
    """x [b, s, K] -> MatMul(W [K, n]) -> "product" -> Add(bias, default shape [n]) -> "y" (a transformer's
    projection)."""
    bias_shape = bias_shape or (n,)
    inits = [numpy_helper.from_array(rng.standard_normal((K, n)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(bias_shape).astype(bias_type), "bias")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["product"])]
    if bias_type == np.float32:
        nodes.append(helper.make_node("Add", ["product", "bias"], ["y"]))
    else:
        nodes += [helper.make_node("Cast", ["bias"], ["bias32"], to=TensorProto.FLOAT),
                  helper.make_node("Add", ["bias32", "product"], ["y"])]
    nodes += list(extra_nodes)
    inputs = [float_input("x", ["b", "s", K])] + ([float_input("bias", list(bias_shape))] if bias_input else [])
    return make_model(nodes, inputs, [float_input(name, ["b", "s", n]) for name in outputs], inits)


def compress(tmp_path, model, **options):
    source, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, source)
    report = onnxcomp.compress(source, out, **{"sparsity": 0.5, "bits": 4, "min_elements": 16, **options})
    onnx.checker.check_model(str(out), full_check=True)
    return out, report


def matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "CodebookMatMul"]


def unfolded(folded: onnx.ModelProto) -> onnx.ModelProto:
    """The folded model with its CodebookMatMul's bias taken out again into an Add after it."""
    model = onnx.ModelProto()
    model.CopyFrom(folded)
    node = matmuls(model)[0]
    bias, y = node.input[2], node.output[0]
    del node.input[2]
    node.output[0] = y + ".product"
    model.graph.node.append(helper.make_node("Add", [y + ".product", bias], [y]))
    return model


def with_decode_once(model: onnx.ModelProto, value: int) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    node = matmuls(copy)[0]
    kept = [a for a in node.attribute if a.name != "decode_once"]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute("decode_once", value)])
    return copy


@pytest.mark.parametrize("outliers", [0, 0.05])
@pytest.mark.parametrize("rows", [(1, 3), (2, 7), (4, 550)])
def test_folded_bias_equals_the_add_after_the_product(tmp_path, rng, rows, outliers):
    out, _ = compress(tmp_path, projection(rng), outliers=outliers)
    folded = onnx.load(str(out))  # records inline: the sessions below are made from bytes
    node = matmuls(folded)[0]
    assert len(node.input) == 3 and node.input[2], "the bias Add was not folded"
    assert not [n for n in folded.graph.node if n.op_type == "Add"]
    x = rng.standard_normal((*rows, K)).astype(np.float32)
    x[0, 0, :5] = 0.0  # a sparse leading row: the sparse-row path on the dense panels
    x[0, 0, 5:] = 0.0
    for once in (0, 1):
        first = None  # every path and cap of one working form gives the same bits
        for gemm_rows in ("0", "1", "512"):  # the fused kernel at every M, the per-run dense panels, the default
            for isa in [i for i in ISAS if isa_available(i)]:
                env = {"ONNXCOMP_ISA": isa, "ONNXCOMP_GEMM_ROWS": gemm_rows}
                a = session_with_env(with_decode_once(folded, once), env).run(None, {"x": x})[0]
                b = session_with_env(with_decode_once(unfolded(folded), once), env).run(None, {"x": x})[0]
                if outliers == 0 or once:
                    np.testing.assert_array_equal(bits(a), bits(b), err_msg=f"decode_once={once} rows={gemm_rows} {isa}")
                else:  # corrections after the bias instead of before it: fp32 rounding of the same sum
                    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))
                first = a if first is None else first
                np.testing.assert_array_equal(bits(a), bits(first), err_msg=f"decode_once={once} rows={gemm_rows} {isa}")
        want = run_plain(reference_model(onnx.load(str(tmp_path / "in.onnx")), str(out) + "comp"), {"x": x})[0]
        np.testing.assert_allclose(first, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_folded_bias_survives_decompress(tmp_path, rng):
    out, _ = compress(tmp_path, projection(rng))
    dense = tmp_path / "dense.onnx"
    onnxcomp.decompress(str(out), str(dense))
    x = rng.standard_normal((2, 5, K)).astype(np.float32)
    np.testing.assert_allclose(run_plain(dense, {"x": x})[0], run_compressed(out, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_float16_bias_chain_is_folded_and_kept(tmp_path, rng):
    """A bias stored as float16 and widened by a Cast: the Cast's output becomes the bias input (onnxruntime folds the
    Cast of a constant at session creation), the stored bytes stay float16."""
    out, _ = compress(tmp_path, projection(rng, bias_type=np.float16))
    model = onnx.load(str(out), load_external_data=False)
    node = matmuls(model)[0]
    producer = next(n for n in model.graph.node if node.input[2] in n.output)
    assert producer.op_type == "Cast"
    assert not [n for n in model.graph.node if n.op_type == "Add"]
    x = rng.standard_normal((3, 4, K)).astype(np.float32)
    a = run_compressed(out, {"x": x})[0]
    b = session_with_env(unfolded(onnx.load(str(out)))).run(None, {"x": x})[0]
    np.testing.assert_array_equal(bits(a), bits(b))


def test_defaults_store_the_folded_bias_as_float16(tmp_path, rng):
    """The data-free defaults halve a bias read by an Add; folded into CodebookMatMul it is halved the same way (a
    Cast feeding the node's bias input), so the output is no larger than before the fold."""
    model = projection(rng, n=96)  # a bias of at least half_dense.HALF_MIN_ELEMENTS values
    out, report = compress(tmp_path, model, sparsity=None, bits=None)  # the defaults' allocation
    assert "bias" in dict(report.float16)
    compressed = onnx.load(str(out), load_external_data=False)
    node = matmuls(compressed)[0]
    assert len(node.input) == 3
    producer = next(n for n in compressed.graph.node if node.input[2] in n.output)
    assert producer.op_type == "Cast"
    assert onnx.numpy_helper.to_array(next(t for t in compressed.graph.initializer if t.name == producer.input[0])).dtype == np.float16
    x = rng.standard_normal((2, 3, K)).astype(np.float32)
    want = run_plain(reference_model(model, str(out) + "comp", float16=report.float16), {"x": x})[0]
    np.testing.assert_allclose(run_compressed(out, {"x": x})[0], want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.parametrize("case", ["product_is_output", "product_read_twice", "bias_1xN", "bias_is_graph_input",
                                  "bias_not_constant"])
def test_bias_adds_not_folded(tmp_path, rng, case):
    if case == "product_is_output":
        model = projection(rng, outputs=("y", "product"))
    elif case == "product_read_twice":
        model = projection(rng, extra_nodes=[helper.make_node("Relu", ["product"], ["r"])], outputs=("y", "r"))
    elif case == "bias_1xN":  # broadcasting could change the output's rank: left to the Add
        model = projection(rng, bias_shape=(1, N))
    elif case == "bias_is_graph_input":  # an initializer a caller may override
        model = projection(rng, bias_input=True)
    else:  # a bias computed from a graph input
        model = projection(rng, bias_input=True)
        model.graph.node[1].input[1] = "bias_relu"
        model.graph.node.insert(1, helper.make_node("Relu", ["bias"], ["bias_relu"]))
        del model.graph.initializer[1]
    out, _ = compress(tmp_path, model)
    compressed = onnx.load(str(out), load_external_data=False)
    node = matmuls(compressed)[0]
    assert len(node.input) == 2
    assert [n for n in compressed.graph.node if n.op_type == "Add"]
