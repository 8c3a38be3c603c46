"""FoldRecurrentWeightsPass: fold constant data-movement chains into the weight inputs of LSTM, GRU and RNN nodes.

Exporters often feed a recurrent node's ``W``, ``R`` or ``B`` through a chain of Slice / Concat / Unsqueeze ops
on an initializer (PyTorch reorders its gates i, f, g, o into ONNX's i, o, f, c that way). onnxruntime folds such a
chain when the session is created, so the dense model runs on one constant. A compressed weight would be
decoded (CodebookDecode) into the chain instead, which then runs in every run and leaves the recurrent node a
non-constant weight; so this pass, run before weights are selected, replaces each such chain by the one
constant it computes (exactly: the ops only move, select or reshape values). The recurrent node then reads an
initializer directly, which PackWeightsPass turns into a CodebookLSTM record input (or one CodebookDecode for GRU
and RNN). Identical folded tensors (the same weight folded in both branches of an If) become one initializer,
which ``model_io.hoist_shared_initializers`` stores once, in the main graph.

Folded ops (ONNX semantics, every input a constant: an initializer or a Constant node): Identity, Slice (opset 1-9 attributes or opset 10+ inputs),
Concat, Unsqueeze and Squeeze (axes as attribute or input), Reshape (with allowzero), Transpose.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .base import CompressionState, GraphPass, PassResult, log, read_values
from .names import UniqueNames, all_graphs

RECURRENT_WEIGHT_SLOTS = {"LSTM": (1, 2, 3), "GRU": (1, 2, 3), "RNN": (1, 2, 3)}
FOLDED_OPS = ("Identity", "Slice", "Concat", "Unsqueeze", "Squeeze", "Reshape", "Transpose")
FOLD_DEPTH = 16  # longest chain folded (a guard against pathological graphs)
FOLDED_NAME = re.compile(r"\.folded(\.\d+)?$")  # the suffix of a folded constant's name (UniqueNames may number it)


def _axes(node: gs.Node, values: list, rank: int) -> list[int] | None:
    """Normalised axes of Unsqueeze/Squeeze (attribute before opset 13, else optional input 1)."""
    axes = node.attrs.get("axes")
    if axes is None and len(values) > 1 and values[1] is not None:
        axes = values[1].tolist()
    return None if axes is None else [int(a) + rank if int(a) < 0 else int(a) for a in np.ravel(axes)]


def _slice(node: gs.Node, values: list) -> np.ndarray:
    data = values[0]
    if "starts" in node.attrs:  # opset 1-9
        starts, ends = node.attrs["starts"], node.attrs["ends"]
        axes, steps = node.attrs.get("axes", list(range(len(starts)))), [1] * len(starts)
    else:
        starts, ends = values[1].tolist(), values[2].tolist()
        axes = values[3].tolist() if len(values) > 3 and values[3] is not None else list(range(len(starts)))
        steps = values[4].tolist() if len(values) > 4 and values[4] is not None else [1] * len(starts)
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step == 0:
            raise ValueError("Slice step 0")
        index[int(axis) % data.ndim] = slice(int(start), int(end), int(step))  # Python clamps as ONNX does
    return data[tuple(index)]


def _reshape(node: gs.Node, values: list) -> np.ndarray:
    data, shape = values[0], [int(d) for d in values[1].tolist()]
    if not node.attrs.get("allowzero", 0):
        shape = [data.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return data.reshape(shape)


def apply_op(node: gs.Node, values: list) -> np.ndarray:
    """The output of data-movement op ``node`` (one of FOLDED_OPS) on constant ``values`` (None: absent input)."""
    op, data = node.op, values[0]
    if op == "Identity":
        return data
    if op == "Slice":
        return _slice(node, values)
    if op == "Concat":
        return np.concatenate(values, axis=int(node.attrs["axis"]))
    if op == "Unsqueeze":
        rank = data.ndim + len(_axes(node, values, 0) or [])
        out = data
        for axis in sorted(_axes(node, values, rank)):
            out = np.expand_dims(out, axis)
        return out
    if op == "Squeeze":
        axes = _axes(node, values, data.ndim)
        return np.squeeze(data, axis=None if axes is None else tuple(axes))
    if op == "Reshape":
        return _reshape(node, values)
    if op == "Transpose":
        perm = node.attrs.get("perm")
        return np.transpose(data, None if perm is None else [int(p) for p in perm])
    if op == "Cast" and int(node.attrs.get("to", 0)) == onnx.TensorProto.FLOAT:  # not among FOLDED_OPS: callers opt in
        return data.astype(np.float32)
    raise ValueError(f"{op} is not folded")


def _constant_node_value(node: gs.Node) -> np.ndarray | None:
    if "value" in node.attrs:
        value = node.attrs["value"]
        return np.asarray(value.values if isinstance(value, gs.Constant) else value)
    for key, dtype in (("value_int", np.int64), ("value_ints", np.int64), ("value_float", np.float32),
                       ("value_floats", np.float32)):
        if key in node.attrs:
            return np.asarray(node.attrs[key], dtype=dtype)
    return None


def fold_value(tensor: gs.Tensor, overridable: set[str], depth: int = FOLD_DEPTH,
               ops: tuple[str, ...] = FOLDED_OPS) -> np.ndarray | None:
    """The value of ``tensor`` when it is a constant or a chain of ``ops`` (FOLDED_OPS, or a subset of them plus
    Cast to float32) ending in constants; else None. A constant named in ``overridable`` (an initializer that is
    also a graph input) is not a constant here."""
    if isinstance(tensor, gs.Constant):
        return None if tensor.name in overridable else np.asarray(read_values(tensor))
    if depth == 0 or len(tensor.inputs) != 1:
        return None
    node = tensor.inputs[0]
    if node.op == "Constant" and not node.domain:  # shape and index constants stay Constant nodes
        return _constant_node_value(node)
    if node.op not in ops or node.domain or len(node.outputs) != 1:
        return None
    values = []
    for source in node.inputs:
        if not source.name:  # an absent optional input
            values.append(None)
            continue
        value = fold_value(source, overridable, depth - 1, ops)
        if value is None:
            return None
        values.append(value)
    try:
        return np.ascontiguousarray(apply_op(node, values))
    except (ValueError, IndexError, KeyError, TypeError):
        return None  # not a well-formed chain: left for onnxruntime to judge


def _largest_leaf(tensor: gs.Tensor, depth: int = FOLD_DEPTH) -> gs.Constant | None:
    """The largest initializer a folded chain reads (its name names the folded constant)."""
    if isinstance(tensor, gs.Constant):
        return tensor
    if depth == 0 or len(tensor.inputs) != 1:
        return None
    leaves = [_largest_leaf(source, depth - 1) for source in tensor.inputs[0].inputs if source.name]
    leaves = [leaf for leaf in leaves if leaf is not None]
    return max(leaves, key=lambda leaf: int(np.prod(leaf.shape, dtype=np.int64)), default=None)


class FoldRecurrentWeightsPass(GraphPass):
    def run(self, state: CompressionState) -> PassResult:
        names = UniqueNames(state.graph)
        folded: dict[tuple, gs.Constant] = {}  # content -> the one constant holding it
        count = 0
        for graph in all_graphs(state.graph):
            for node in graph.nodes:
                if node.domain or node.op not in RECURRENT_WEIGHT_SLOTS:
                    continue
                for slot in RECURRENT_WEIGHT_SLOTS[node.op]:
                    if slot >= len(node.inputs) or isinstance(node.inputs[slot], gs.Constant) or not node.inputs[slot].name:
                        continue
                    tensor = node.inputs[slot]
                    value = fold_value(tensor, state.graph_inputs)
                    if value is None:
                        continue
                    key = (value.dtype.str, value.shape, hashlib.sha256(value.tobytes()).digest())
                    if key not in folded:
                        leaf = _largest_leaf(tensor)
                        folded[key] = gs.Constant(names((leaf.name if leaf is not None else tensor.name) + ".folded"), value)
                    node.inputs[slot] = folded[key]
                    count += 1
                    log.debug("folded the constant chain into %s input %d of %s (%s)", node.op, slot, node.name,
                              folded[key].name)
        if count:
            state.graph.cleanup(remove_unused_graph_inputs=False).toposort()
        return PassResult(count > 0, f"folded {count} recurrent weight inputs into {len(folded)} constants")
