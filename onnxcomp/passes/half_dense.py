"""Float32 weights left dense, stored as binary16 and cast back in the graph (the data-free default's last step).

A weight the allocation keeps dense (its measured effect on the output makes every codebook too costly, or it is
below --min-elements) costs 4 bytes per value. Stored as IEEE binary16 and widened by a standard ``Cast`` node
(to float32, opset 6 and later), it costs 2, and the graph computes with the same float32 type as before:
onnxruntime folds the Cast of a constant when it creates the session, so inference reads the same float32 tensor.

A weight is halved only when binary16 keeps **every** value within a relative error of 2^-11 (the rounding
bound for binary16 normal numbers, onnxcomp.core.outliers.value_format): none overflows, none falls to a
subnormal or to zero from a non-zero value. Its relative L2 error is then at most 2^-11 (about 5e-4), a tenth of
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

from onnxcomp.core.outliers import FLOAT16, value_format

from .model_io import graphs_of

HALF_MIN_ELEMENTS = 64
SUFFIX = "__float16"


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
            if value_format(values) != FLOAT16:
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
