"""``onnxcomp decompress``: a compressed model back to a plain dense ONNX model in standard ops.

Each record is decoded by the compiled, bounds-checked decoder (``sidecar.decode_record_fast``; the numpy reference
decoder when the compiled module is missing) into a float32 initializer
carrying the original weight's name and orientation, and the custom ops become their standard equivalents:
CodebookMatMul(X, record[, bias]) -> MatMul(X, W) (+ Add bias); when the directory says the record holds W
transposed (records for CodebookMatMul are always [K, N]), Gemm(X, W, bias, transB=1) where onnx shape inference
finds X 2-D, else MatMul(X, Transpose(W)) (+ Add bias): Gemm takes 2-D X only;
CodebookGather(record, indices) -> Gather(W, indices) (with ``one_hot``: the one-hot product it replaced, OneHot or
Cast(Equal(ids, arange)) times W); CodebookDecode(record) -> the initializer itself;
CodebookConv(X, record[, bias[, scale]]) -> Conv(X, W * scale, bias) with its attributes, then the fused activation
as its own node (a folded BatchNormalization stays folded: W * scale is a new initializer); a CodebookConv reading a
dense float32 / float16 W instead of a record gets the same, W widened to float32;
CodebookLSTM -> LSTM with each record input (W, R, B) replaced by its initializer; CodebookDecodeUInt8 /
CodebookDecodeInt8 (integer records) -> the exact uint8 / int8 initializer the quantized op read, CodebookGatherUInt8 /
CodebookGatherInt8 -> Gather on it; MaxPool, AveragePool, GlobalMaxPool, GlobalAveragePool and Resize of domain
ai.onnxcomp -> the ONNX op of the same name and attributes (without nchwc_input / nchwc_output).
Portable lookups Gather(codebook, Cast(indices)), with their outliers scattered on when present, become the
initializer they compute; record outliers are applied as the record is decoded. Every graph is rewritten, If
branches and Loop/Scan bodies included; decoded weights live in the main graph. The values equal the
compressed model's weights exactly; outputs agree up to fp32 summation order.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcomp.staging import writes_output
from onnxcomp.passes import model_io
from onnxcomp.passes.pack_weights import BLOCKED_SPATIAL
from onnxcomp.errors import UnsupportedModelError
from onnxcomp.pipeline.inspection import DECODE_OPS, DOMAIN, stored_weights


def decompress_model(model: onnx.ModelProto, model_path: str) -> onnx.ModelProto:
    """The dense equivalent of ``model`` (loaded without external data; records read beside ``model_path``).

    Every graph is rewritten (If branches, Loop and Scan bodies too). The decoded initializers go into the main
    graph, where every subgraph can read them; a decoded weight only a Cast to float16/bfloat16 reads becomes
    an initializer of that type in place of the Cast."""
    weights = stored_weights(model, model_path)
    graphs = list(model_io.graphs_of(model.graph))
    folder = os.path.dirname(os.path.abspath(model_path))
    record_names = {w.tensor for w in weights.values() if w.storage == "record"}
    for graph in graphs:
        for tensor in graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL and tensor.name not in record_names:
                onnx.external_data_helper.load_external_data_for_tensor(tensor, folder)
                tensor.data_location = onnx.TensorProto.DEFAULT
                del tensor.external_data[:]
    taken = {name for g in graphs for n in g.node for name in [*n.input, *n.output, n.name]}
    taken |= {t.name for g in graphs for t in [*g.initializer, *g.input, *g.output]}
    dense: dict[str, onnx.TensorProto] = {}  # tensor replaced (record or lookup output) -> its initializer
    flipped: list[str] = []  # Transpose outputs of weights stored transposed, read by one MatMul each

    def initializer_for(weight) -> str:
        if weight.tensor not in dense:
            name, number = weight.name, 0
            while name in taken:
                number += 1
                name = f"{weight.name}.dense{'' if number == 1 else number}"
            taken.add(name)
            dense[weight.tensor] = numpy_helper.from_array(weight.dense(), name)
        return dense[weight.tensor].name

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 11)
    renamed: dict[str, str] = {}  # tensor -> the tensor that replaces it
    # Innermost graphs first: replacing a graph's node list copies its nodes, subgraphs included.
    for graph in reversed(graphs):
        nodes = []
        for node in graph.node:
            if node.domain == DOMAIN and node.op_type in BLOCKED_SPATIAL:  # the ONNX op itself, on NCHW tensors
                kept = [a for a in node.attribute if a.name not in ("nchwc_input", "nchwc_output")]
                del node.attribute[:]
                node.attribute.extend(kept)
                node.domain = ""
                nodes.append(node)
                continue
            if node.domain == DOMAIN and node.op_type == "CodebookLSTM":  # W, R, B: each a record or float32
                for slot in range(1, min(4, len(node.input))):
                    if node.input[slot] in weights:
                        node.input[slot] = initializer_for(weights[node.input[slot]])
                node.op_type, node.domain = "LSTM", ""
                nodes.append(node)
                continue
            weight = weights.get(node.input[1] if node.op_type in ("CodebookMatMul", "CodebookConv") else node.input[0]) if node.input else None
            if weight is None and node.domain == DOMAIN and node.op_type == "CodebookConv" and len(node.input) > 1:
                weight = _DenseConvWeight.find(graphs, node.input[1])
            if node.domain == DOMAIN:
                if weight is None:
                    raise UnsupportedModelError(f"{model_path}: node {node.name!r} ({node.op_type}) has no readable record")
                nodes.extend(_standard_nodes(node, weight, initializer_for(weight), renamed, model_path,
                                             conv=(graph, dense, opset, taken, flipped)))
            elif node.output and node.output[0] in weights and weights[node.output[0]].storage == "portable":
                # the lookup (Gather), or with outliers the Reshape after their ScatterElements
                renamed[node.output[0]] = initializer_for(weights[node.output[0]])
            else:
                nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)
    graphs = list(model_io.graphs_of(model.graph))
    for graph in graphs:
        outputs = {o.name for o in graph.output}
        for source, target in renamed.items():
            if source in outputs and source != target:
                graph.node.append(helper.make_node("Identity", [target], [source], source + ".identity"))
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name in renamed and not (node.op_type == "Identity" and node.output[0] == name):
                    node.input[i] = renamed[name]
    _fold_casts(graphs, dense)
    graphs = _remove_dead(model.graph)
    used = {name for g in graphs for node in g.node for name in node.input} | {o.name for g in graphs for o in g.output}
    for graph in graphs:
        kept = [t for t in graph.initializer if t.name in used and t.name not in record_names]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    model.graph.initializer.extend(t for t in dense.values() if t.name in used)
    inputs = [i for i in model.graph.input if i.name not in record_names]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    opsets = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    _gemms_for_2d_inputs(model, set(flipped))
    return model


def _gemms_for_2d_inputs(model: onnx.ModelProto, flipped: set[str]) -> None:
    """Each ``MatMul(X, Transpose(W))`` (+ ``Add`` of the bias) written for a record stored transposed becomes
    ``Gemm(X, W, bias, transB=1)`` where onnx shape inference finds X 2-D (Gemm takes 2-D X only; a MatMul over a
    3-D X, as exporters write a Linear on a sequence, keeps the Transpose, which onnxruntime folds at load)."""
    if not flipped:
        return
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - no inferred shapes: every product keeps its Transpose, which is valid
        return
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*inferred.graph.input, *inferred.graph.value_info]
             if v.type.tensor_type.HasField("shape")}
    for graph in model_io.graphs_of(model.graph):
        readers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        drop = set()
        for transpose in [n for n in graph.node if n.op_type == "Transpose" and n.output[0] in flipped]:
            matmul = readers.get(transpose.output[0], [])
            if len(matmul) != 1 or matmul[0].op_type != "MatMul" or ranks.get(matmul[0].input[0]) != 2:
                continue
            matmul = matmul[0]
            add = readers.get(matmul.output[0], [])
            add = add[0] if len(add) == 1 and add[0].op_type == "Add" and add[0].name == matmul.name + ".bias" else None
            inputs = [matmul.input[0], transpose.input[0]] + ([add.input[1]] if add is not None else [])
            gemm = helper.make_node("Gemm", inputs, [(add if add is not None else matmul).output[0]], matmul.name, transB=1)
            matmul.CopyFrom(gemm)
            drop |= {("Transpose", transpose.output[0])} | ({("Add", add.output[0])} if add is not None else set())
        if drop:
            kept = [n for n in graph.node if (n.op_type, n.output[0]) not in drop]
            del graph.node[:]
            graph.node.extend(kept)


def _standard_nodes(node, weight, name: str, renamed: dict, model_path: str, conv: tuple) -> list:
    """The standard nodes replacing one onnxcomp node reading ``weight`` (its dense initializer ``name``);
    ``conv`` = (graph, dense, opset, taken) for CodebookConv."""
    if node.op_type == "CodebookMatMul":
        x, bias, y = node.input[0], node.input[2] if len(node.input) > 2 and node.input[2] else None, node.output[0]
        transpose = []
        if weight.transposed:  # becomes Gemm(transB=1) where X turns out 2-D (_gemms_for_2d_inputs)
            flipped = _unused_name(conv[3], name + ".T")
            transpose = [helper.make_node("Transpose", [name], [flipped], node.name + ".T", perm=[1, 0])]
            conv[4].append(flipped)
            name = flipped
        if bias:
            return transpose + [helper.make_node("MatMul", [x, name], [y + ".matmul"], node.name),
                                helper.make_node("Add", [y + ".matmul", bias], [y], node.name + ".bias")]
        return transpose + [helper.make_node("MatMul", [x, name], [y], node.name)]
    if node.op_type == "CodebookConv":
        return _conv_nodes(node, name, weight, *conv[:4])
    one_hot = next((a.i for a in node.attribute if a.name == "one_hot"), 0)
    if node.op_type == "CodebookGather" and one_hot:
        return _one_hot_nodes(node, name, weight, one_hot, *conv[2:4])
    if node.op_type in ("CodebookGather", "CodebookGatherUInt8", "CodebookGatherInt8"):
        return [helper.make_node("Gather", [name, node.input[1]], [node.output[0]], node.name, axis=0)]
    if node.op_type in DECODE_OPS:
        if weight.transposed:  # the node yields the stored orientation
            return [helper.make_node("Transpose", [name], [node.output[0]], node.name, perm=[1, 0])]
        renamed[node.output[0]] = name
        return []
    raise UnsupportedModelError(f"{model_path}: unknown onnxcomp op {node.op_type!r}; upgrade onnxcomp")


def _one_hot_nodes(node: onnx.NodeProto, weight_name: str, weight, mode: int, opset: int,
                   taken: set[str]) -> list[onnx.NodeProto]:
    """The one-hot product a CodebookGather with ``one_hot`` (docs/ops.md) stands for, in standard ops: mode 1
    ``MatMul(Cast(Equal(Unsqueeze(Cast(ids, int64), -1), arange(V)), float), W)``, mode 2
    ``MatMul(OneHot(ids, V, [0, 1], axis=-1), W)``: the same values (a one-hot row's product is the row)."""
    ids, y = node.input[1], node.output[0]
    rows = int(weight.dense().shape[0])

    def constant(base: str, values: np.ndarray) -> tuple[str, onnx.NodeProto]:
        name = _unused_name(taken, f"{y}.{base}")
        return name, helper.make_node("Constant", [], [name], name, value=numpy_helper.from_array(values, name))

    one_hot = _unused_name(taken, f"{y}.one_hot")
    if mode == 2:
        depth, depth_node = constant("depth", np.array(rows, np.int64))
        values, values_node = constant("values", np.array([0.0, 1.0], np.float32))
        nodes = [depth_node, values_node, helper.make_node("OneHot", [ids, depth, values], [one_hot], one_hot, axis=-1)]
    else:
        wide, column, equal = (_unused_name(taken, f"{y}.{part}") for part in ("ids64", "column", "equal"))
        arange, arange_node = constant("arange", np.arange(rows, dtype=np.int64))
        nodes = [arange_node, helper.make_node("Cast", [ids], [wide], wide, to=onnx.TensorProto.INT64)]
        if opset >= 13:
            axes, axes_node = constant("axes", np.array([-1], np.int64))
            nodes += [axes_node, helper.make_node("Unsqueeze", [wide, axes], [column], column)]
        else:
            nodes.append(helper.make_node("Unsqueeze", [wide], [column], column, axes=[-1]))
        nodes += [helper.make_node("Equal", [column, arange], [equal], equal),
                  helper.make_node("Cast", [equal], [one_hot], one_hot, to=onnx.TensorProto.FLOAT)]
    return nodes + [helper.make_node("MatMul", [one_hot, weight_name], [y], node.name)]


class _DenseConvWeight:
    """A CodebookConv's dense W (float32 or float16 initializer, docs/ops.md), as much of a StoredWeight as
    decompression reads: ``name``, ``tensor`` and ``dense()`` (float32)."""

    def __init__(self, tensor: onnx.TensorProto) -> None:
        self.name = self.tensor = tensor.name
        self.values = numpy_helper.to_array(tensor)
        self.transposed = False

    def dense(self) -> np.ndarray:
        return self.values.astype(np.float32)

    @staticmethod
    def find(graphs: list, name: str) -> "_DenseConvWeight | None":
        for graph in graphs:
            for tensor in graph.initializer:
                if tensor.name == name and tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
                    return _DenseConvWeight(tensor)
        return None


def _fold_casts(graphs: list, dense: dict) -> None:
    """A decoded float32 initializer read only by one Cast (to float16/bfloat16, not a graph output) becomes an
    initializer of that type named like the Cast's output, and the Cast goes."""
    by_name = {t.name: t for t in dense.values()}
    readers: dict[str, list] = {}
    for graph in graphs:
        for node in graph.node:
            for name in node.input:
                readers.setdefault(name, []).append((graph, node))
    outputs = {o.name for g in graphs for o in g.output}
    for name, tensor in by_name.items():
        found = readers.get(name, [])
        if len(found) != 1:
            continue
        graph, node = found[0]
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if node.op_type != "Cast" or node.output[0] in outputs or to not in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
            continue
        tensor.CopyFrom(model_io.float_tensor(numpy_helper.to_array(tensor), node.output[0], to))
        graph.node.remove(node)


def _conv_nodes(node: onnx.NodeProto, weight_name: str, weight, graph: onnx.GraphProto,
                dense: dict[str, onnx.TensorProto], opset: int, taken: set[str]) -> list[onnx.NodeProto]:
    """Conv (+ activation) nodes equal to a CodebookConv node; a scale input makes a scaled copy of the weight."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    activation = attrs.pop("activation", None)
    params = list(attrs.pop("activation_params", []))
    for layout in ("nchwc_input", "nchwc_output"):  # the dense Conv reads and writes NCHW
        attrs.pop(layout, None)
    if isinstance(activation, bytes):
        activation = activation.decode()
    inputs = list(node.input) + [""] * (4 - len(node.input))
    x, bias, scale = inputs[0], inputs[2], inputs[3]
    if scale:
        scale_values = _initializer_array(graph, scale, node)
        values = weight.dense().astype(np.float32)
        values = (values * scale_values.reshape((-1,) + (1,) * (values.ndim - 1))).astype(np.float32)
        weight_name = _unused_name(taken, f"{weight_name}.{node.name or 'conv'}.scaled")
        dense[weight_name] = numpy_helper.from_array(values, weight_name)
    y = node.output[0]
    conv_out = y + ".conv" if activation else y
    nodes = [helper.make_node("Conv", [x, weight_name] + ([bias] if bias else []), [conv_out], node.name, **attrs)]
    if activation == "HardSwish" and opset < 14:
        # HardSwish is an ONNX op from opset 14 (the models whose written-out x * Clip(x + 3, 0, 6) / 6 the pack fused
        # are often older: PaddleOCR's are opset 11): x * HardSigmoid(x) with alpha 1/6, beta 1/2, the same function
        # (ONNX's HardSwish definition), within fp32 rounding
        gate = _unused_name(taken, f"{y}.hard_sigmoid")
        nodes += [helper.make_node("HardSigmoid", [conv_out], [gate], node.name + ".activation",
                                   alpha=1.0 / 6.0, beta=0.5),
                  helper.make_node("Mul", [conv_out, gate], [y], node.name + ".activation_mul")]
    elif activation in ("Relu", "Tanh", "Sigmoid", "HardSwish"):
        nodes.append(helper.make_node(activation, [conv_out], [y], node.name + ".activation"))
    elif activation == "LeakyRelu":
        nodes.append(helper.make_node("LeakyRelu", [conv_out], [y], node.name + ".activation", alpha=params[0]))
    elif activation == "HardSigmoid":
        nodes.append(helper.make_node("HardSigmoid", [conv_out], [y], node.name + ".activation",
                                      alpha=params[0], beta=params[1]))
    elif activation == "Clip":
        if opset >= 11:
            bounds = []
            for i, value in enumerate(params[:2]):
                bound = _unused_name(taken, f"{y}.clip_{'min' if i == 0 else 'max'}")
                dense[bound] = numpy_helper.from_array(np.array(value, np.float32), bound)
                bounds.append(bound)
            nodes.append(helper.make_node("Clip", [conv_out] + bounds, [y], node.name + ".activation"))
        else:
            nodes.append(helper.make_node("Clip", [conv_out], [y], node.name + ".activation", min=params[0], max=params[1]))
    elif activation:
        raise UnsupportedModelError(f"node {node.name!r} (CodebookConv): unknown activation {activation!r}")
    return nodes


def _initializer_array(graph: onnx.GraphProto, name: str, node: onnx.NodeProto) -> np.ndarray:
    for tensor in graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor).astype(np.float32)
    raise UnsupportedModelError(f"node {node.name!r} (CodebookConv): its scale {name!r} is not an initializer")


def _unused_name(taken: set[str], base: str) -> str:
    """``base``, numbered if needed so that it names nothing in ``taken``; the name is added to ``taken``."""
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}.{i}"
    taken.add(name)
    return name


def _remove_dead(main) -> list:
    """Drop nodes whose outputs nothing reads (the index unpacking of portable lookups), in every graph; a tensor
    read inside a subgraph counts as read. Returns the graphs as they are afterwards."""
    while True:
        graphs = list(model_io.graphs_of(main))
        read = {name for g in graphs for node in g.node for name in node.input} | {o.name for g in graphs for o in g.output}
        dead = [g for g in reversed(graphs) if any(not any(o in read for o in n.output) for n in g.node)]
        if not dead:
            return graphs
        graph = dead[0]  # innermost first; the list is rebuilt after each change
        alive = [n for n in graph.node if any(o in read for o in n.output)]
        del graph.node[:]
        graph.node.extend(alive)


@writes_output
def decompress(compressed_path: str, output_path: str) -> str:
    """Write the dense equivalent of ``compressed_path`` to ``output_path``; returns ``output_path``."""
    compressed_path, output_path = os.fspath(compressed_path), os.fspath(output_path)
    model_io.check_output_path(compressed_path, output_path)
    model = model_io.load_model(compressed_path, external_data=False)
    dense = decompress_model(model, compressed_path)
    try:
        onnx.checker.check_model(dense)
    except onnx.checker.ValidationError as error:
        raise UnsupportedModelError(f"{compressed_path}: the decompressed graph is not valid ONNX ({error})") from error
    model_io.write_compressed(dense, [], output_path)
    return output_path
