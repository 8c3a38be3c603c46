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
constant inputs as initializers; except a CodebookMatMul bias named in ``biases``, one PackWeightsPass
folded from an Add: CodebookMatMul reads its bias in every run, so it is halved as it was while the Add read it) or in a model whose default-domain opset is below 6 (Cast-1
takes the type as a string) are left alone; the exception is a dense Conv weight that PackWeightsPass gave to a
CodebookConv (join_dense_convs): read only as CodebookConv's W, it becomes float16 under its own name, without a
Cast, by the weight-slot rule (CodebookConv takes a float16 W and widens it exactly). So is any tensor not read in a weight slot whose values reach a
rounding op (Round, Floor, Ceil, QuantizeLinear, DynamicQuantizeLinear, a Cast to an integer type, the integer and
QLinear ops) through at most ROUNDING_DEPTH nodes that are not weight ops: a requantisation scale (x / s, then
Round) changes which integer a value rounds to for any error at all (measured: halving the 12 such Div scales of
the zoo's ddddocr-ocr-old, an already quantised model, changed 5 of 120 decoded sequences for 0.4 % of its bytes).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcomp.core.outliers import (FLOAT16, FLOAT16_RELATIVE_ERROR, half_rounding_within, value_format,
                                    value_format_reference)

from .base import DOMAIN
from .fold_weights import FOLDED_NAME
from .model_io import graphs_of

HALF_MIN_ELEMENTS = 64
SUFFIX = "__float16"
ROUNDING_DEPTH = 6
ROUNDING_OPS = {"Round", "Floor", "Ceil", "QuantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
                "QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "DynamicQuantizeMatMul"}
INTEGER_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
                 onnx.TensorProto.INT32, onnx.TensorProto.UINT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT64,
                 onnx.TensorProto.BOOL}


def holds(values: np.ndarray, weight: bool) -> bool:
    """Whether binary16 holds ``values`` (float32) closely enough (module docstring); ``weight``: read in a
    weight slot (each error measured against the largest magnitude of its row along axis 0 and along axis 1,
    whichever is smaller: output and input channels of a Conv or MatMul weight)."""
    if not weight:
        return value_format(values) == FLOAT16
    values = np.asarray(values, dtype=np.float32)
    with np.errstate(over="ignore"):
        half = values.astype(np.float16)
    if not np.isfinite(half).all():
        return False
    # float32 throughout, decided exactly (outliers.half_rounding_within): no float64 copy of the weight
    magnitude = np.abs(values)
    scale = magnitude
    if values.ndim >= 1:
        scale = magnitude.max(axis=tuple(range(1, values.ndim)), keepdims=True)
    if values.ndim >= 2:
        scale = np.minimum(scale, magnitude.max(axis=(0, *range(2, values.ndim)), keepdims=True))
    del magnitude
    return half_rounding_within(values, half, scale)


def holds_reference(values: np.ndarray, weight: bool) -> bool:
    """The straightforward ``holds``: errors and bounds in float64 copies of the tensor."""
    if not weight:
        return value_format_reference(values) == FLOAT16
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


def _rounds(node: onnx.NodeProto) -> bool:
    if node.op_type in ROUNDING_OPS:
        return True
    if node.op_type == "Cast":
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        return to in INTEGER_TYPES
    return False


def _feeding_rounding(graphs, names: set[str]) -> set[str]:
    """Those of ``names`` whose values reach a rounding op (module docstring) through at most ROUNDING_DEPTH nodes,
    not passing through a weight op (inspection.WEIGHT_SLOTS: its output is an activation, no longer a scale)."""
    from onnxcomp.pipeline.inspection import WEIGHT_SLOTS
    readers: dict[str, list[onnx.NodeProto]] = {}
    for graph in graphs:
        for node in graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)

    def reaches(start: str) -> bool:
        frontier, seen = [start], {start}
        for _ in range(ROUNDING_DEPTH):
            following = []
            for node in (n for name in frontier for n in readers.get(name, ())):
                if _rounds(node):
                    return True
                if node.op_type not in WEIGHT_SLOTS or node.domain not in ("", "ai.onnx"):
                    following.extend(o for o in node.output if o and o not in seen)
                    seen.update(node.output)
            frontier = following
        return False

    return {name for name in names if reaches(name)}


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def halve_dense_weights(model: onnx.ModelProto, names: set[str] | None = None,
                        exclude: set[str] | None = None, biases: set[str] = frozenset()) -> list[tuple[str, int]]:
    """Rewrite ``model`` in place: each float32 initializer of at least HALF_MIN_ELEMENTS values that binary16
    holds within 2^-11 relative (module docstring) becomes a float16 initializer ``NAME__float16`` (a fresh
    name) and a ``Cast(to=FLOAT)`` node, first in its graph, whose output takes the original name, so every
    consumer (subgraphs included) reads it unchanged; a dense weight read only by CodebookConv nodes (as W) becomes
    float16 under its own name instead, without a Cast (held to the weight-slot rule). ``names``: only these
    initializers are considered (a budget allocation's weights left dense as float16; a recurrent weight folded to
    ``NAME.folded`` counts as ``NAME``), by the same rules; None: all. ``exclude``: initializers never halved (named
    alike; a budget allocation's weights it keeps dense as float32), whatever ``names`` says. ``biases``: the
    CodebookMatMul bias inputs PackWeightsPass folded from Adds (CompressionState.folded_biases), which are
    considered as the Add's input was; other inputs of custom ops are left alone. Returns (name, elements) of each
    halved weight."""
    if _opset(model) < 6:
        return []
    graphs = list(graphs_of(model.graph))
    taken = {name for g in graphs for name in
             [*(t.name for t in g.initializer), *(v.name for v in g.input), *(v.name for v in g.output),
              *(o for n in g.node for o in n.output), *(n.name for n in g.node)]}
    # Read by a custom op: left alone, except a dense CodebookConv weight (its slot 1 only), which is stored as
    # float16 in place (same name, no Cast): CodebookConv widens it when it builds its working weight.
    custom, conv_weights, elsewhere = set(), set(), set()
    for g in graphs:
        for n in g.node:
            for slot, name in enumerate(n.input):
                if n.domain == DOMAIN and n.op_type == "CodebookConv" and slot == 1:
                    conv_weights.add(name)
                elif n.domain == DOMAIN and n.op_type == "CodebookMatMul" and slot == 2 and name in biases:
                    elsewhere.add(name)  # a bias folded from an Add, read in every run: a Cast's output serves
                else:
                    (custom if n.domain not in ("", "ai.onnx") else elsewhere).add(name)
    in_place = conv_weights - custom - elsewhere
    custom |= conv_weights - in_place
    weights = _weight_inputs(graphs)
    others = {t.name for g in graphs for t in g.initializer if t.name not in weights and t.name not in in_place
              and t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims, dtype=np.int64) >= HALF_MIN_ELEMENTS}
    scales = _feeding_rounding(graphs, others)
    halved = []
    for graph in graphs:
        listed = {value.name for value in graph.input}
        casts = []
        for tensor in graph.initializer:
            if names is not None and tensor.name not in names and FOLDED_NAME.sub("", tensor.name) not in names:
                continue
            if exclude and (tensor.name in exclude or FOLDED_NAME.sub("", tensor.name) in exclude):
                continue
            if (tensor.data_type != onnx.TensorProto.FLOAT or tensor.name in listed
                    or tensor.name in custom
                    or tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.name in scales):
                continue
            size = int(np.prod(tensor.dims, dtype=np.int64)) if len(tensor.dims) else 1
            if size < HALF_MIN_ELEMENTS:
                continue
            values = numpy_helper.to_array(tensor)
            if not holds(values, tensor.name in weights or tensor.name in in_place):
                continue
            if tensor.name in in_place:
                tensor.CopyFrom(numpy_helper.from_array(values.astype(np.float16), tensor.name))
                halved.append((tensor.name, size))
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
