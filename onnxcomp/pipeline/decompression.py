"""``onnxcomp decompress``: a compressed model back to a plain dense ONNX model in standard ops.

Each record is decoded with the numpy reference decoder (onnxcomp/core/sidecar.py) into a float32 initializer
carrying the original weight's name and orientation, and the custom ops become their standard equivalents:
CodebookMatMul(X, record[, bias]) -> MatMul(X, W) (+ Add bias), or Gemm(X, W, bias, transB=1) when the
directory says the record holds W transposed (records for CodebookMatMul are always [K, N]);
CodebookGather(record, indices) -> Gather(W, indices); CodebookDecode(record) -> the initializer itself;
CodebookConv(X, record[, bias[, scale]]) -> Conv(X, W * scale, bias) with its attributes, then the fused activation
as its own node (a folded BatchNormalization stays folded: W * scale is a new initializer).
Portable lookups Gather(codebook, Cast(indices)), with their outliers scattered on when present, become the
initializer they compute; record outliers are applied by the reference decoder. The values equal the
compressed model's weights exactly; outputs agree up to fp32 summation order.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcomp.passes import model_io
from onnxcomp.errors import UnsupportedModelError
from onnxcomp.pipeline.inspection import DOMAIN, stored_weights


def decompress_model(model: onnx.ModelProto, model_path: str) -> onnx.ModelProto:
    """The dense equivalent of ``model`` (loaded without external data; records read beside ``model_path``)."""
    weights = stored_weights(model, model_path)
    graph = model.graph
    folder = os.path.dirname(os.path.abspath(model_path))
    record_names = {w.tensor for w in weights.values() if w.storage == "record"}
    for tensor in graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL and tensor.name not in record_names:
            onnx.external_data_helper.load_external_data_for_tensor(tensor, folder)
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
    dense: dict[str, onnx.TensorProto] = {}  # original name -> initializer

    def initializer_for(weight) -> str:
        if weight.name not in dense:
            dense[weight.name] = numpy_helper.from_array(weight.dense(), weight.name)
        return weight.name

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 11)
    renamed: dict[str, str] = {}  # tensor -> the tensor that replaces it
    nodes = []
    for node in graph.node:
        weight = weights.get(node.input[1] if node.op_type in ("CodebookMatMul", "CodebookConv") else node.input[0]) if node.input else None
        if node.domain == DOMAIN:
            if weight is None:
                raise UnsupportedModelError(f"{model_path}: node {node.name!r} ({node.op_type}) has no readable record")
            name = initializer_for(weight)
            if node.op_type == "CodebookMatMul":
                x, bias, y = node.input[0], node.input[2] if len(node.input) > 2 and node.input[2] else None, node.output[0]
                if weight.transposed:
                    nodes.append(helper.make_node("Gemm", [x, name] + ([bias] if bias else []), [y], node.name, transB=1))
                elif bias:
                    nodes.append(helper.make_node("MatMul", [x, name], [y + ".matmul"], node.name))
                    nodes.append(helper.make_node("Add", [y + ".matmul", bias], [y], node.name + ".bias"))
                else:
                    nodes.append(helper.make_node("MatMul", [x, name], [y], node.name))
            elif node.op_type == "CodebookConv":
                nodes.extend(_conv_nodes(node, name, weight, graph, dense, opset))
            elif node.op_type == "CodebookGather":
                nodes.append(helper.make_node("Gather", [name, node.input[1]], [node.output[0]], node.name, axis=0))
            elif node.op_type == "CodebookDecode":
                if weight.transposed:  # the node yields the stored orientation
                    nodes.append(helper.make_node("Transpose", [name], [node.output[0]], node.name, perm=[1, 0]))
                else:
                    renamed[node.output[0]] = name
            else:
                raise UnsupportedModelError(f"{model_path}: unknown onnxcomp op {node.op_type!r}; upgrade onnxcomp")
        elif node.output and node.output[0] in weights and weights[node.output[0]].storage == "portable":
            # the lookup (Gather), or with outliers the Reshape after their ScatterElements
            renamed[node.output[0]] = initializer_for(weights[node.output[0]])
        else:
            nodes.append(node)
    graph_outputs = {o.name for o in graph.output}
    for source, target in renamed.items():
        if source in graph_outputs and source != target:
            nodes.append(helper.make_node("Identity", [target], [source], source + ".identity"))
    for node in nodes:
        for i, name in enumerate(node.input):
            if name in renamed and not (node.op_type == "Identity" and node.output[0] == name):
                node.input[i] = renamed[name]
    nodes = _live(nodes, graph_outputs)
    used = {name for node in nodes for name in node.input} | graph_outputs
    kept = [t for t in graph.initializer if t.name in used and t.name not in dense] + list(dense.values())
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs = [i for i in graph.input if i.name not in record_names]
    del graph.input[:]
    graph.input.extend(inputs)
    opsets = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    return model


def _conv_nodes(node: onnx.NodeProto, weight_name: str, weight, graph: onnx.GraphProto,
                dense: dict[str, onnx.TensorProto], opset: int) -> list[onnx.NodeProto]:
    """Conv (+ activation) nodes equal to a CodebookConv node; a scale input makes a scaled copy of the weight."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    activation = attrs.pop("activation", None)
    params = list(attrs.pop("activation_params", []))
    if isinstance(activation, bytes):
        activation = activation.decode()
    inputs = list(node.input) + [""] * (4 - len(node.input))
    x, bias, scale = inputs[0], inputs[2], inputs[3]
    if scale:
        scale_values = _initializer_array(graph, scale, node)
        values = weight.dense().astype(np.float32)
        values = (values * scale_values.reshape((-1,) + (1,) * (values.ndim - 1))).astype(np.float32)
        weight_name = _unused_name(graph, dense, f"{weight_name}.{node.name or 'conv'}.scaled")
        dense[weight_name] = numpy_helper.from_array(values, weight_name)
    y = node.output[0]
    conv_out = y + ".conv" if activation else y
    nodes = [helper.make_node("Conv", [x, weight_name] + ([bias] if bias else []), [conv_out], node.name, **attrs)]
    if activation in ("Relu", "Tanh", "Sigmoid"):
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
                bound = _unused_name(graph, dense, f"{y}.clip_{'min' if i == 0 else 'max'}")
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


def _unused_name(graph: onnx.GraphProto, dense: dict, base: str) -> str:
    taken = {t.name for t in graph.initializer} | set(dense) | {o for n in graph.node for o in n.output}
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}.{i}"
    return name


def _live(nodes: list, graph_outputs: set[str]) -> list:
    """``nodes`` without those whose outputs nobody reads (the index unpacking of portable lookups)."""
    while True:
        read = {name for node in nodes for name in node.input} | graph_outputs
        alive = [n for n in nodes if any(o in read for o in n.output)]
        if len(alive) == len(nodes):
            return nodes
        nodes = alive


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
