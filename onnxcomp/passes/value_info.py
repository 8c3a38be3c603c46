"""Graph value_info that onnxruntime recomputes anyway, left out of the written model.

``value_info`` lists the type and shape of intermediate tensors. Exporters write it (PyTorch's with symbolic dims
such as ``floor(floor(height/2 - 1/2)/2) + 1``: 36 kB of YOLOv8n's 106 kB graph after compression); onnxruntime
does not need it: when it creates a session it infers every standard op's output type and shape from the
graph inputs and initializers, with the same ONNX shape inference functions ``onnx.shape_inference`` runs.
An entry is dropped when ``onnx.shape_inference.infer_shapes`` on the graph without the dropped entries gives the
tensor the same element type and rank, and the same value for every dimension that has one (a symbolic name,
``dim_param``, may differ: it only names an unknown size, and onnxruntime makes up its own); entries inference
does not reproduce (a custom op's outputs: onnx knows no schema for them, so they and what depends on them are kept,
as are shapes inference cannot work out, a Reshape to a computed shape) stay. Only the main graph's entries are
considered; subgraphs keep theirs. A model inference rejects keeps all of them. Inference runs on a copy of the
graph without the data of tensors above SMALL elements (``_probe``), so a large model is not copied whole.

In the entries kept, a symbolic dim that no graph input or output names is renamed ``_s0``, ``_s1``, .. (the
first name no dim of the model uses), the same name for the same symbol: onnxruntime reads a ``dim_param`` as an
opaque name whose only meaning is which dims share it, and that is kept; the names a caller sees (the graph's
inputs and outputs) are not touched.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

log = logging.getLogger("onnxcomp")

STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
SMALL = 1024  # initializers of at most this many elements stay in the probe with their values (shape constants)


def _probe(model: onnx.ModelProto, value_info: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
    """A copy of ``model``'s main graph for shape inference without its large tensors' data: initializers above
    SMALL elements (or stored externally) become graph inputs of their type and shape (inference needs only
    those; the values it reads, Reshape's shape and the like, are small), so a large model is not copied whole."""
    graph = model.graph
    probe = onnx.ModelProto(ir_version=model.ir_version)
    probe.opset_import.extend(model.opset_import)
    probe.functions.extend(model.functions)
    copy = probe.graph
    copy.name = graph.name
    copy.node.extend(graph.node)
    copy.input.extend(graph.input)
    copy.output.extend(graph.output)
    copy.value_info.extend(value_info)
    copy.sparse_initializer.extend(graph.sparse_initializer)
    inputs = {v.name for v in graph.input}
    for tensor in graph.initializer:
        elements = 1
        for d in tensor.dims:
            elements *= d
        if elements <= SMALL and tensor.data_location != onnx.TensorProto.EXTERNAL:
            copy.initializer.append(tensor)
        elif tensor.name not in inputs:
            copy.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    return probe


def _reproduced(stored: onnx.TypeProto, inferred: onnx.TypeProto | None) -> bool:
    """True when ``inferred`` says at least what ``stored`` says about a tensor: same element type, and, if
    ``stored`` has a shape, the same rank and every dim value ``stored`` has (symbolic names may differ)."""
    if inferred is None or stored.WhichOneof("value") != "tensor_type" or inferred.WhichOneof("value") != "tensor_type":
        return False
    a, b = stored.tensor_type, inferred.tensor_type
    if a.elem_type != b.elem_type:
        return False
    if not a.HasField("shape"):
        return True
    if not b.HasField("shape") or len(a.shape.dim) != len(b.shape.dim):
        return False
    return all(not x.HasField("dim_value") or (y.HasField("dim_value") and y.dim_value == x.dim_value)
               for x, y in zip(a.shape.dim, b.shape.dim))


def _dims(values) -> list:
    return [d for v in values if v.type.WhichOneof("value") == "tensor_type" for d in v.type.tensor_type.shape.dim]


def _shorten_symbols(graph: onnx.GraphProto) -> None:
    """Rename the symbolic dims of ``graph.value_info`` that the graph's inputs and outputs do not use (module
    docstring), in order of first use."""
    visible = {d.dim_param for d in _dims([*graph.input, *graph.output]) if d.HasField("dim_param")}
    used = {d.dim_param for d in _dims(graph.value_info) if d.HasField("dim_param")} | visible
    names: dict[str, str] = {}
    counter = 0
    for dim in _dims(graph.value_info):
        if not dim.HasField("dim_param") or dim.dim_param in visible:
            continue
        if dim.dim_param not in names:
            while f"_s{counter}" in used:
                counter += 1
            names[dim.dim_param] = f"_s{counter}"
            counter += 1
        dim.dim_param = names[dim.dim_param]


def drop_inferable_value_info(model: onnx.ModelProto) -> int:
    """Remove from ``model`` (in place) the main graph's value_info entries that shape inference reproduces and
    shorten the symbolic dims of the others (module docstring); returns the bytes saved. Deterministic: entries
    keep their order."""
    graph = model.graph
    if not len(graph.value_info):
        return 0
    producers = {o: n for n in graph.node for o in n.output}
    custom = [v for v in graph.value_info if v.name in producers and producers[v.name].domain not in STANDARD_DOMAINS]
    try:
        inferred = onnx.shape_inference.infer_shapes(_probe(model, custom))
    except Exception as error:  # onnx's own error types on a graph it cannot check: keep every entry
        log.debug("value_info kept: shape inference failed (%s)", str(error).strip().splitlines()[0])
        return 0
    found = {v.name: v.type for v in inferred.graph.value_info}
    custom_names = {v.name for v in custom}
    before = sum(v.ByteSize() for v in graph.value_info)
    kept = [onnx.ValueInfoProto.FromString(v.SerializeToString()) for v in graph.value_info
            if v.name in custom_names or not _reproduced(v.type, found.get(v.name))]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    _shorten_symbols(graph)
    return before - sum(v.ByteSize() for v in graph.value_info)


def declare_custom_outputs(original: onnx.ModelProto, compressed: onnx.ModelProto) -> int:
    """Give the outputs of ``compressed``'s onnxcomp nodes the type and shape ONNX shape inference finds for the
    tensors of the same name in ``original`` (in place; every graph, subgraphs included); returns how many entries
    it added.

    onnxruntime cannot infer a custom op's output shape (the op's schema has no inference function, and a record's
    dims are not visible to one), so without a value_info entry every shape downstream of a CodebookConv,
    CodebookMatMul, CodebookGather or CodebookLSTM is unknown to its graph optimiser, which then leaves undone what
    it does for the dense model: constant-folding a Shape -> Slice -> Concat chain into a Reshape's shape and
    fusing MatMul + Add into Gemm (ppocr-cls), fusing the Slices of one tensor into a Split (silero-vad's STFT;
    docs/benchmarks.md, branch speed8). A packed node writes the tensor its dense node (or the last node it folds:
    BatchNormalization, the bias Add, the activation) wrote, under the same name and with the same shape, so the
    original's inferred type is the output's. Only tensors whose shape reaches a node that uses it are declared
    (``_shapes_used``; each entry costs ~40 bytes of the model). Left out: tensors the original has no inferred
    type for, names
    two of its graphs type differently, graph outputs (typed already), tensors that already have an entry, and
    tensors in onnxruntime's NCHWc layout (``nchwc_output`` 1 or 2: a blocked region's tensors keep no declared
    shape, docs/ops.md). Shape inference runs on ``_probe(original)`` (no large tensor data); a model it rejects
    gets no entries. Deterministic: entries follow node order."""
    from onnxcomp.passes.model_io import graphs_of
    from onnxcomp.runtime import DOMAIN
    try:
        inferred = onnx.shape_inference.infer_shapes(_probe(original, []))
    except Exception as error:  # onnx's own error types on a graph it cannot check: declare nothing
        log.debug("custom-op outputs left undeclared: shape inference failed (%s)", str(error).strip().splitlines()[0])
        return 0
    types: dict[str, onnx.TypeProto | None] = {}
    for graph in graphs_of(inferred.graph):
        for value in graph.value_info:
            if value.type.WhichOneof("value") != "tensor_type" or not value.type.tensor_type.HasField("shape"):
                continue
            known = types.get(value.name, value.type)
            types[value.name] = value.type if known == value.type else None  # typed twice, differently: ambiguous
    wanted = _shapes_used(compressed)
    added = 0
    for graph in graphs_of(compressed.graph):
        declared = {v.name for v in [*graph.value_info, *graph.input, *graph.output]}
        for node in graph.node:
            if node.domain != DOMAIN or any(a.name == "nchwc_output" and a.i != 0 for a in node.attribute):
                continue
            for name in node.output:
                if name and name in wanted and name not in declared and types.get(name) is not None:
                    graph.value_info.append(onnx.helper.make_value_info(name, types[name]))
                    declared.add(name)
                    added += 1
    return added


# Standard ops whose optimisation in onnxruntime needs no shapes (the NCHWc transformer converts them from their
# weights and attributes, elementwise chains with scalar constants fuse without shapes): a shape reaching only these
# (and onnxcomp's ops) is not worth declaring. Elementwise ops with a tensor constant (a bias: BiasGelu and
# SkipLayerNormalization fusions check its dims) and every other op count as using shapes.
SHAPE_FREE_UNARY = ("Relu", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "HardSwish", "Elu", "Softplus", "Neg",
                    "Abs", "Exp", "Erf", "Identity", "Clip", "Conv", "MaxPool", "AveragePool", "GlobalAveragePool",
                    "GlobalMaxPool", "BatchNormalization")
SHAPE_FREE_BINARY = ("Add", "Sub", "Mul", "Div", "Max", "Min")


def _shapes_used(model: onnx.ModelProto) -> set[str]:
    """Names of the tensors from which a standard node that uses shapes is reachable through standard nodes that
    do not (SHAPE_FREE_UNARY, SHAPE_FREE_BINARY with scalar constants); onnxcomp's nodes end a path (they infer
    nothing). Every graph of ``model``; a subgraph's nodes may read the outer graphs' tensors."""
    from onnxcomp.passes.model_io import graphs_of
    graphs = list(graphs_of(model.graph))
    tensors = {t.name for g in graphs for t in g.initializer if int(np.prod(t.dims)) > 1}  # constants, not scalars
    tensors.update(n.output[0] for g in graphs for n in g.node if n.op_type == "Constant" and n.output and not all(
        int(np.prod(a.t.dims)) <= 1 for a in n.attribute if a.type == onnx.AttributeProto.TENSOR))
    readers: dict[str, list[onnx.NodeProto]] = {}
    for graph in graphs:
        for node in graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)
    memo: dict[str, bool] = {}

    def used(name: str) -> bool:  # iterative depth-first search: graphs may be deep
        if name in memo:
            return memo[name]
        seen, stack, found = {name}, [name], False
        while stack and not found:
            for node in readers.get(stack.pop(), []):
                if node.domain not in STANDARD_DOMAINS:
                    continue
                free = node.op_type in SHAPE_FREE_UNARY or (node.op_type in SHAPE_FREE_BINARY and
                                                             not any(i in tensors for i in node.input))
                if not free:
                    found = True
                    break
                for output in node.output:
                    if output and output not in seen:
                        if memo.get(output):
                            found = True
                            break
                        seen.add(output)
                        stack.append(output)
        memo[name] = found
        return found

    return {o for g in graphs for n in g.node if n.domain not in STANDARD_DOMAINS for o in n.output if o and used(o)}
