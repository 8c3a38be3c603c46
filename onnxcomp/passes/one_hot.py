"""One-hot rows times a compressed weight become row lookups (docs/ops.md, CodebookGather's ``one_hot``).

A model that embeds integers by multiplying a one-hot matrix into a weight (magika, from jax2tf:
``Cast(Equal(Expand(Reshape(bytes)), arange(257)), float) @ W``) builds a float tensor of K values per index
(2 MiB at batch 1 and 128 MiB at batch 64 for magika) to read one row of W per index. Once W is a record read by
CodebookMatMul, that product is rewritten here into ``CodebookGather(record, indices)`` with attribute ``one_hot``,
which copies the rows out (and a row of zeros for an index that matches no row), followed by ``Add(bias)`` when the
CodebookMatMul had one.

Forms matched (each only when every condition below is proven from the graph, else the product stays):

- ``Cast(Equal(A, R), to=FLOAT)`` (either operand order) with R a constant integer tensor of shape [1, ..., 1, K]
  holding 0, 1, .., K - 1 (an initializer, a Constant, or ``Range(0, K, 1)`` of constants), A an int32 or int64
  tensor (Equal's operands share a type: R's) whose last dimension is 1 (``last_dim_is_one``); then ``one_hot=1`` (an index outside [0, K) matches nothing: a row of zeros) and the indices are A without its
  last axis (the Unsqueeze's input when A is ``Unsqueeze(ids, [-1])``, else ``Squeeze(A, [-1])``).
- ``OneHot(ids, depth, values, axis=-1)`` with depth a constant K, values the constant [0.0, 1.0] (float32) and
  ids of a known int32 or int64 type: ``one_hot=2`` (ONNX OneHot: a negative index counts from the end; one
  outside [-K, K) gives a row of zeros); the indices are ids.

In both, the CodebookMatMul's record must have dims [K, N] with that K.

Why the outputs are the same bits: a one-hot row holds one 1.0 and zeros. CodebookMatMul computes each output as a
fused multiply-add chain from 0.0 (docs/ops.md), and onnxruntime's MatMul on the decoded weight sums the same
products: 1.0 * w is w exactly, each 0 * w' is a zero (records hold finite values only), and adding a zero to a
nonzero sum leaves it unchanged, so the sum is w + 0.0: w itself, except that -0.0 becomes +0.0; a row with no 1.0
sums to +0.0. The lookup writes w + 0.0 and +0.0 rows, then the same bias Add. Where the record has outliers,
CodebookMatMul applies them as corrections after its bias (``fma(1, outlier - c, c + b)``, within fp32 rounding of
the exact product), while the lookup reads the exact decoded value, as the dense model's MatMul does.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .base import DOMAIN
from .names import UniqueNames
from .pack_weights import _constant_array

INDEX_TYPES = (np.dtype(np.int32), np.dtype(np.int64))


def _int_attr_or_input(node: gs.Node, name: str, slot: int) -> np.ndarray | None:
    """An integer list given as attribute ``name`` (older opsets) or as constant input ``slot`` (newer ones)."""
    if name in node.attrs:
        return np.asarray(node.attrs[name], dtype=np.int64).reshape(-1)
    if len(node.inputs) > slot and node.inputs[slot].name:
        values = _constant_array(node.inputs[slot])
        return None if values is None else np.asarray(values).astype(np.int64).reshape(-1)
    return None


def _last_value(tensor, depth: int = 0) -> int | None:
    """The last element of a 1-D integer tensor computed from constants through Cast and Concat, else None."""
    if depth > 8 or tensor is None:
        return None
    values = _constant_array(tensor)
    if values is not None:
        return int(values.reshape(-1)[-1]) if values.size and np.issubdtype(values.dtype, np.integer) else None
    producer = tensor.inputs[0] if isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1 else None
    if producer is None or producer.domain:
        return None
    if producer.op == "Cast":
        return _last_value(producer.inputs[0], depth + 1)
    if producer.op == "Concat" and int(producer.attrs.get("axis", 0)) in (0, -1) and producer.inputs:
        return _last_value(producer.inputs[-1], depth + 1)
    return None


def last_dim_is_one(tensor, depth: int = 0) -> bool:
    """True when ``tensor``'s last dimension is 1 in every run, proven from its declared shape or its producers:
    ``Unsqueeze`` onto the last axis, ``Reshape`` to a constant shape ending in 1, ``Expand`` of such a tensor to a
    shape whose last entry is a constant 1 (``_last_value``), or ``Cast``/``Identity`` of such a tensor."""
    if depth > 8 or tensor is None:
        return False
    shape = getattr(tensor, "shape", None)
    if shape is not None and len(shape) and isinstance(shape[-1], (int, np.integer)) and int(shape[-1]) == 1:
        return True
    producer = tensor.inputs[0] if isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1 else None
    if producer is None or producer.domain:
        return False
    if producer.op == "Unsqueeze":
        axes = _int_attr_or_input(producer, "axes", 1)
        return axes is not None and -1 in axes.tolist()
    if producer.op == "Reshape":
        target = _constant_array(producer.inputs[1]) if len(producer.inputs) > 1 else None
        return target is not None and target.size > 0 and int(target.reshape(-1)[-1]) == 1
    if producer.op == "Expand":
        return last_dim_is_one(producer.inputs[0], depth + 1) and _last_value(producer.inputs[1]) == 1
    if producer.op in ("Cast", "Identity"):
        if producer.op == "Cast" and len(producer.inputs) != 1:
            return False
        return last_dim_is_one(producer.inputs[0], depth + 1)
    return False


def min_rank(tensor, depth: int = 0) -> int:
    """A lower bound of ``tensor``'s rank: its declared shape's, a constant-shape Reshape's, an Unsqueeze's (its
    input's bound plus the axes), an Expand's (its input's bound) or a Cast's/Identity's input's; else 0."""
    if depth > 8 or tensor is None:
        return 0
    shape = getattr(tensor, "shape", None)
    if shape is not None:
        return len(shape)
    producer = tensor.inputs[0] if isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1 else None
    if producer is None or producer.domain:
        return 0
    if producer.op == "Reshape":
        target = _constant_array(producer.inputs[1]) if len(producer.inputs) > 1 else None
        return int(target.size) if target is not None else 0
    if producer.op == "Unsqueeze":
        axes = _int_attr_or_input(producer, "axes", 1)
        return (len(axes) if axes is not None else 0) + min_rank(producer.inputs[0], depth + 1)
    if producer.op in ("Expand", "Cast", "Identity"):
        return min_rank(producer.inputs[0], depth + 1)
    return 0


def _arange(tensor) -> np.ndarray | None:
    """The values of an integer constant (or ``Range(0, K, 1)`` of constants), when they are 0, 1, .., K - 1 along
    the last axis with every other dimension 1; else None."""
    values = _constant_array(tensor)
    if values is None and isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1:
        producer = tensor.inputs[0]
        if producer.op == "Range" and not producer.domain and len(producer.inputs) == 3:
            start, limit, delta = (_constant_array(t) for t in producer.inputs)
            if all(v is not None and v.size == 1 and np.issubdtype(v.dtype, np.integer) for v in (start, limit, delta)) \
                    and int(start.reshape(-1)[0]) == 0 and int(delta.reshape(-1)[0]) == 1:
                values = np.arange(int(limit.reshape(-1)[0]), dtype=start.dtype)
    if values is None or values.ndim < 1 or values.dtype not in INDEX_TYPES or values.size == 0:
        return None
    if any(d != 1 for d in values.shape[:-1]):
        return None
    return values if np.array_equal(values.reshape(-1), np.arange(values.shape[-1])) else None


def _equal_form(x: gs.Variable, k: int):
    """(A, R's dtype, R's rank) when ``x`` is Cast(Equal(A, R), FLOAT) as the module docstring says, else None."""
    cast = x.inputs[0] if len(x.inputs) == 1 else None
    if cast is None or cast.op != "Cast" or cast.domain or int(cast.attrs.get("to", 0)) != 1:
        return None
    flag = cast.inputs[0]
    equal = flag.inputs[0] if isinstance(flag, gs.Variable) and len(flag.inputs) == 1 else None
    if equal is None or equal.op != "Equal" or equal.domain or len(equal.inputs) != 2:
        return None
    for a, r in (equal.inputs, equal.inputs[::-1]):
        values = _arange(r)
        if values is None or values.shape[-1] != k:
            continue
        if isinstance(a, gs.Constant) or not last_dim_is_one(a):
            continue
        return a, values.dtype, values.ndim
    return None


def _one_hot_form(x: gs.Variable, k: int):
    """ids when ``x`` is OneHot(ids, K, [0.0, 1.0], axis=-1) with int32/int64 ids, else None."""
    node = x.inputs[0] if len(x.inputs) == 1 else None
    if node is None or node.op != "OneHot" or node.domain or int(node.attrs.get("axis", -1)) != -1 or len(node.inputs) != 3:
        return None
    ids, depth, values = node.inputs
    depth, values = _constant_array(depth), _constant_array(values)
    if depth is None or depth.size != 1 or int(depth.reshape(-1)[0]) != k or values is None:
        return None
    if values.dtype != np.float32 or values.shape != (2,) or values.tolist() != [0.0, 1.0] or np.signbit(values[0]):
        return None
    dtype = getattr(ids, "dtype", None)
    if dtype is None or np.dtype(dtype) not in INDEX_TYPES:
        return None
    return ids


def _squeezed(graph: gs.Graph, a: gs.Variable, dtype: np.dtype, rank: int, names: UniqueNames) -> gs.Variable:
    """``a`` broadcast against R (of rank ``rank``, every dim but the last 1) without its last axis (of size 1): the
    Unsqueeze's input when ``a`` is Unsqueeze(ids, [-1]) alone and ``rank`` is 1, else a new Squeeze node's output,
    after ``Expand(a, [1] * rank)`` (which only adds leading axes) unless ``min_rank(a)`` is at least ``rank``."""
    producer = a.inputs[0] if len(a.inputs) == 1 else None
    if producer is not None and producer.op == "Unsqueeze" and rank == 1:
        axes = _int_attr_or_input(producer, "axes", 1)
        if axes is not None and axes.tolist() == [-1]:
            return producer.inputs[0]
    if min_rank(a) < rank:
        wide = gs.Variable(names(a.name + ".ranked"), dtype=dtype)
        ones = gs.Constant(names(a.name + ".rank_shape"), np.ones(rank, np.int64))
        graph.nodes.append(gs.Node("Expand", names(a.name + ".rank"), inputs=[a, ones], outputs=[wide]))
        a = wide
    out = gs.Variable(names(a.name + ".squeezed"), dtype=dtype)
    opset = graph.opset or 13
    if opset >= 13:
        axes = gs.Constant(names(a.name + ".squeeze_axes"), np.array([-1], np.int64))
        graph.nodes.append(gs.Node("Squeeze", names(a.name + ".squeeze"), inputs=[a, axes], outputs=[out]))
    else:
        graph.nodes.append(gs.Node("Squeeze", names(a.name + ".squeeze"), attrs={"axes": [-1]}, inputs=[a], outputs=[out]))
    return out


def one_hot_lookups(graph: gs.Graph, emitted: list, names: UniqueNames) -> str:
    """Rewrites each CodebookMatMul of ``emitted`` ((node, WeightTarget) pairs, nodes of ``graph``'s main graph)
    whose X is a one-hot tensor of a form the module docstring lists into CodebookGather(record, indices) with
    attribute one_hot (+ Add of its bias); removes those pairs from ``emitted``; returns a log line. The one-hot
    nodes are left for the caller's cleanup (removed when nothing else reads them)."""
    in_main = {id(node) for node in graph.nodes}
    rewritten = []
    for node, target in list(emitted):
        if node.op != "CodebookMatMul" or node.domain != DOMAIN or id(node) not in in_main:
            continue
        shape = tuple(int(d) for d in target.shape)
        if len(shape) != 2:
            continue
        k = shape[1] if target.transposed else shape[0]
        x = node.inputs[0]
        if not isinstance(x, gs.Variable):
            continue
        mode, indices = 1, None
        found = _equal_form(x, k)
        if found is not None:
            indices = _squeezed(graph, *found, names)
        else:
            mode, indices = 2, _one_hot_form(x, k)
        if indices is None:
            continue
        record, bias = node.inputs[1], node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        base = node.name or node.outputs[0].name
        output = node.outputs[0]
        if bias is not None:
            rows = gs.Variable(names(base + ".rows"), dtype=np.float32)
            graph.nodes.append(gs.Node("Add", names(base + ".bias"), inputs=[rows, bias], outputs=[output]))
            output = rows
        node.op, node.domain, node.attrs = "CodebookGather", DOMAIN, {"one_hot": mode}
        node.inputs, node.outputs = [record, indices], [output]
        rewritten.append((node, f"{base} (one_hot={mode})"))
    done = {id(node) for node, _ in rewritten}
    emitted[:] = [e for e in emitted if id(e[0]) not in done]
    rewritten = [text for _, text in rewritten]
    return f"one-hot products as row lookups: {len(rewritten)}" + (f" ({', '.join(rewritten)})" if rewritten else "")
