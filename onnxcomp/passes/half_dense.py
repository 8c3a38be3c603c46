"""Float32 weights left dense, stored as binary16 and cast back in the graph (the data-free default's last step).

A weight the allocation keeps dense (its measured effect on the output makes every codebook too costly, or it is
below --min-elements) costs 4 bytes per value. Stored as IEEE binary16 and widened by a standard ``Cast`` node
(to float32, opset 6 and later), it costs 2, and the graph computes with the same float32 type as before:
onnxruntime folds the Cast of a constant when it creates the session, so inference reads the same float32 tensor.

A tensor is halved only when binary16 holds it closely. A weight read in a weight slot (Conv, ConvTranspose and
the recurrent ops' weights, MatMul/Gemm operands, a Gather table: onnxcomp.pipeline.inspection.WEIGHT_SLOTS)
must keep every value within 2^-11 of the largest magnitude of its channel: of its slice along axis 0 and of its
slice along axis 1, whichever is smaller (output and input channels of a Conv or MatMul weight; none overflows;
values far below their channel's largest may become binary16 subnormals or 0, as they add nothing next to it:
trained convolutions hold values 1e-11 beside 0.1, while a whole channel of small values keeps its precision). Any other float tensor (biases, normalisation scales and statistics: each value counts on
its own) must keep every value within a relative error of 2^-11 of itself (onnxcomp.core.outliers.value_format:
no subnormal, no value rounded to 0). Either way the relative L2 error is at most 2^-11 (about 5e-4), a tenth of
the smallest error the allocation gives any codebook. Tensors below HALF_MIN_ELEMENTS values are left alone: the
Cast node would cost about what they save, and small float constants are often scales, sizes or thresholds whose
exact value matters (Resize scales, Clip bounds). Initializers stored as external data (a streamed model), listed
among the graph inputs (a caller may override them), read by a custom op (onnxcomp's kernels take their
constant inputs as initializers) or in a model whose default-domain opset is below 6 (Cast-1
takes the type as a string) are left alone.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcomp.core.outliers import FLOAT16, FLOAT16_RELATIVE_ERROR, value_format

from .model_io import graphs_of

HALF_MIN_ELEMENTS = 64
SUFFIX = "__float16"


def holds(values: np.ndarray, weight: bool) -> bool:
    """Whether binary16 holds ``values`` (float32) closely enough (module docstring); ``weight``: read in a
    weight slot (each error measured against the largest magnitude of its row along axis 0 and along axis 1,
    whichever is smaller: output and input channels of a Conv or MatMul weight)."""
    if not weight:
        return value_format(values) == FLOAT16
    with np.errstate(over="ignore"):
        half = values.astype(np.float16)
    if not np.isfinite(half).all():
        return False
    magnitude = np.abs(values.astype(np.float64))
    scale = magnitude
    if values.ndim >= 1:
        scale = np.broadcast_to(magnitude.max(axis=tuple(range(1, values.ndim)), keepdims=True), values.shape)
    if values.ndim >= 2:
        others = (0, *range(2, values.ndim))
        scale = np.minimum(scale, magnitude.max(axis=others, keepdims=True))
    error = np.abs(half.astype(np.float64) - values.astype(np.float64))
    return bool((error <= FLOAT16_RELATIVE_ERROR * scale).all())


def _weight_inputs(graphs) -> set[str]:
    """Names read only in weight slots (inspection.WEIGHT_SLOTS of default-domain ops), nowhere else."""
    from onnxcomp.pipeline.inspection import WEIGHT_SLOTS
    slot, elsewhere = set(), set()
    for graph in graphs:
        for node in graph.node:
            slots = WEIGHT_SLOTS.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ()
            for i, name in enumerate(node.input):
                (slot if slots is None or i in slots else elsewhere).add(name)
    return slot - elsewhere


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def halve_dense_weights(model: onnx.ModelProto) -> list[tuple[str, int]]:
    """Rewrite ``model`` in place: each float32 initializer of at least HALF_MIN_ELEMENTS values that binary16
    holds within 2^-11 relative (module docstring) becomes a float16 initializer ``NAME__float16`` (a fresh
    name) and a ``Cast(to=FLOAT)`` node, first in its graph, whose output takes the original name, so every
    consumer (subgraphs included) reads it unchanged. Returns (name, elements) of each halved weight."""
    if _opset(model) < 6:
        return []
    graphs = list(graphs_of(model.graph))
    taken = {name for g in graphs for name in
             [*(t.name for t in g.initializer), *(v.name for v in g.input), *(v.name for v in g.output),
              *(o for n in g.node for o in n.output), *(n.name for n in g.node)]}
    custom = {name for g in graphs for n in g.node if n.domain not in ("", "ai.onnx") for name in n.input}
    weights = _weight_inputs(graphs)
    halved = []
    for graph in graphs:
        listed = {value.name for value in graph.input}
        casts = []
        for tensor in graph.initializer:
            if (tensor.data_type != onnx.TensorProto.FLOAT or tensor.name in listed or tensor.name in custom
                    or tensor.data_location == onnx.TensorProto.EXTERNAL):
                continue
            size = int(np.prod(tensor.dims, dtype=np.int64)) if len(tensor.dims) else 1
            if size < HALF_MIN_ELEMENTS:
                continue
            values = numpy_helper.to_array(tensor)
            if not holds(values, tensor.name in weights):
                continue
            name, fresh = tensor.name, tensor.name + SUFFIX
            while fresh in taken:
                fresh += "_"
            taken.add(fresh)
            tensor.CopyFrom(numpy_helper.from_array(values.astype(np.float16), fresh))
            casts.append(onnx.helper.make_node("Cast", [fresh], [name], name=fresh + "_cast", to=onnx.TensorProto.FLOAT))
            halved.append((name, size))
        if casts:
            nodes = list(graph.node)
            del graph.node[:]
            graph.node.extend(casts + nodes)
    return halved
