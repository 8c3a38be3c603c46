"""PackPortableWeightsPass: express each shared weight in standard ONNX ops, for runtimes without custom ops.

A weight W with codebook c (K float32 values) and indices i becomes ``W = Gather(c, i', axis=0)`` (then, for a
channel-scaled codebook, ``Mul`` by its scales shaped [1, .., C, .., 1]: the same binary32 product as a record's
reader; then its outliers scattered on, then ``Cast`` to float16 / bfloat16 for a weight of that type), the last
output keeping W's name so every consumer is
unchanged. The lookup sits in the innermost graph enclosing all of W's readers (the main graph, an If branch,
a Loop or Scan body); the names it adds are unique in the model (passes/names.py). The indices are stored with p bits each,
p the smallest of 1, 2, 4, 8, 16 that holds K - 1:
- p = 8 or 16: i is a uint8 / uint16 initializer in W's shape and i' = Cast(i, to=int32);
- p < 8: q = 8 / p indices per byte, first index in the high bits, in a uint8 initializer P of
  ceil(N / q) bytes, unpacked by i' = Reshape(Slice(Reshape(Mod(Div(Reshape(Cast(P), [-1, 1]), d), 2^p)), 0, N)),
  d = [2^(p(q-1)), ..., 2^p, 1]. Slice takes its bounds as inputs from opset 10; older models get p = 8.
Outliers (values kept exact beside the codebook, onnxcomp/core/outliers.py) are scattered onto the lookup:
``W = Reshape(ScatterElements(Reshape(lookup, [-1]), positions, values, axis=0), shape)`` with
``positions = CumSum(Cast(g, int64)) - 1`` from the stored gaps ``g_j = p_j - p_{j-1}`` (``p_{-1} = -1``;
uint16 when every gap fits, else uint32) and ``values = Cast(v, float)`` from binary16 or binary32 ``v`` (the
record's value-format rule). ScatterElements and CumSum need opset 11: older models get no outliers in this
format (ShareWeightsPass is told so).
Storage: N p / 8 bytes plus 4K, against 4N: 32/p times smaller at most, whatever the sparsity, since there
is no entropy coding; outliers add 4 to 8 bytes each. Runtimes fold the constant lookup at load time (onnxruntime does), so the weight
lives dense in memory and runs at dense speed.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto

from onnxcomp import progress
from onnxcomp.core import outliers as outlier_math

from .base import CompressionState, GraphPass, PassResult, WeightTarget, drop_if_not_smaller
from .names import UniqueNames, all_graphs, common_graph, parents

CODEBOOK_SUFFIX = ".codebook"
INDICES_SUFFIX = ".indices"
SLICE_INPUTS_OPSET = 10
SCATTER_OPSET = 11  # ScatterElements and CumSum
OUTLIER_GAPS_SUFFIX = ".outlier_gaps"
OUTLIER_VALUES_SUFFIX = ".outlier_values"


def packing_bits(codebook_size: int) -> int:
    """Bits per stored index: the smallest of 1, 2, 4, 8, 16 that holds indices 0..K-1."""
    return next(p for p in (1, 2, 4, 8, 16) if codebook_size <= 1 << p)


def pack_indices(indices: np.ndarray, bits: int) -> np.ndarray:
    """uint8 bytes holding 8 / bits indices each, the first in the high bits, zero padded at the end."""
    per_byte = 8 // bits
    flat = np.asarray(indices, dtype=np.uint8).ravel()
    padded = np.zeros(-(-len(flat) // per_byte) * per_byte, dtype=np.uint8)
    padded[:len(flat)] = flat
    shifts = bits * np.arange(per_byte - 1, -1, -1, dtype=np.uint8)
    return np.bitwise_or.reduce(padded.reshape(-1, per_byte) << shifts, axis=1).astype(np.uint8)


def outlier_arrays(positions: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The stored forms of outliers: gaps ``p_j - p_{j-1}`` (``p_{-1} = -1``) as uint16 or uint32, and the values
    as float16 or float32 (onnxcomp/core/outliers.py, value_format)."""
    gaps = np.diff(np.concatenate([[-1], np.asarray(positions, dtype=np.int64)]))
    gaps = gaps.astype(np.uint16 if gaps.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32)
    wide = outlier_math.value_format(values) == outlier_math.FLOAT32
    return gaps, np.asarray(values, dtype=np.float32 if wide else np.float16)


def portable_bytes(target: WeightTarget, opset: int = SLICE_INPUTS_OPSET) -> int:
    """Bytes the portable form stores for ``target``: packed indices, the float32 codebook and the outliers."""
    bits = packing_bits(len(target.codebook))
    if opset < SLICE_INPUTS_OPSET:
        bits = max(bits, 8)
    gaps, values = outlier_arrays(target.outlier_positions, target.outlier_values)
    extra = gaps.nbytes + values.nbytes if len(gaps) else 0
    extra += 0 if target.scales is None else 4 * len(target.scales)
    return -(-target.size * bits // 8) + 4 * len(target.codebook) + extra


class PackPortableWeightsPass(GraphPass):
    def run(self, state: CompressionState) -> PassResult:
        targets = [t for t in state.targets if t.codebook is not None and t.record is None and not t.portable]
        owners = {id(node): graph for graph in all_graphs(state.graph) for node in graph.nodes}
        names, parent = UniqueNames(state.graph), parents(state.graph)
        for target in progress.track(targets, "packing lookups"):
            if drop_if_not_smaller(state, target, portable_bytes(target, state.graph.opset or 0)):
                continue
            graph = common_graph([owners.get(id(node), state.graph) for node, _ in target.uses], parent, state.graph)
            self._pack(graph, target, names, state.graph.opset or 0)
        if targets:
            state.graph.cleanup().toposort()
        return PassResult(bool(targets), f"expressed {len(targets)} tensors as codebook lookups")

    def _pack(self, graph: gs.Graph, target: WeightTarget, names: UniqueNames, opset: int) -> None:
        nodes: list[gs.Node] = []
        codebook = gs.Constant(names(target.name + CODEBOOK_SUFFIX), np.asarray(target.codebook, dtype=np.float32))
        bits = packing_bits(len(target.codebook))
        if opset < SLICE_INPUTS_OPSET:
            bits = max(bits, 8)
        name = target.name
        if bits >= 8:
            stored = target.indices.reshape(target.shape).astype(np.uint8 if bits == 8 else np.uint16)
            indices = gs.Constant(names(name + INDICES_SUFFIX), stored)
            wide = gs.Variable(names(name + ".indices_int32"), dtype=np.int32, shape=list(target.shape))
            nodes.append(gs.Node("Cast", names(name + ".cast_indices"), attrs={"to": TensorProto.INT32}, inputs=[indices], outputs=[wide]))
        else:
            packed = gs.Constant(names(name + INDICES_SUFFIX), pack_indices(target.indices, bits))
            wide = self._unpack(nodes, names, name, packed, bits, target)
        target.constant.name = names(name + ".original")  # frees the name for the lookup's output
        # Gather (float32) [-> outliers scattered on] [-> Cast to the weight's float16/bfloat16 type] -> W's name
        steps_after = bool(len(target.outlier_positions)) + (target.dtype != TensorProto.FLOAT)
        final_dtype = np.float32 if target.dtype == TensorProto.FLOAT else np.float16 if target.dtype == TensorProto.FLOAT16 \
            else target.dtype
        dense = gs.Variable(name, dtype=final_dtype, shape=list(target.shape))
        current = dense if not steps_after else gs.Variable(names(name + ".lookup_float"), dtype=np.float32, shape=list(target.shape))
        if target.scales is not None:  # channel scales (docs/format.md, versions 3 and 4): the same binary32 product
            shape = [1] * len(target.shape)
            shape[target.scale_axis] = len(target.scales)
            scales = gs.Constant(names(name + ".scales"), np.asarray(target.scales, np.float32).reshape(shape))
            unscaled = gs.Variable(names(name + ".lookup_normalised"), dtype=np.float32, shape=list(target.shape))
            nodes.append(gs.Node("Gather", names(name + ".lookup"), attrs={"axis": 0}, inputs=[codebook, wide], outputs=[unscaled]))
            nodes.append(gs.Node("Mul", names(name + ".scale"), inputs=[unscaled, scales], outputs=[current]))
        else:
            nodes.append(gs.Node("Gather", names(name + ".lookup"), attrs={"axis": 0}, inputs=[codebook, wide], outputs=[current]))
        if len(target.outlier_positions):
            scattered = dense if target.dtype == TensorProto.FLOAT else \
                gs.Variable(names(name + ".with_outliers"), dtype=np.float32, shape=list(target.shape))
            self._scatter_outliers(nodes, names, target, current, scattered)
            current = scattered
        if target.dtype != TensorProto.FLOAT:  # the codebook and outliers hold values of the weight's type: the Cast is exact
            nodes.append(gs.Node("Cast", names(name + ".cast"), attrs={"to": target.dtype}, inputs=[current], outputs=[dense]))
        graph.nodes[0:0] = nodes  # reads constants only: first in its graph, before any reader
        for node, slot in target.uses:
            node.inputs[slot] = dense
        target.portable = True

    @staticmethod
    def _scatter_outliers(nodes: list[gs.Node], names: UniqueNames, target: WeightTarget, lookup: gs.Variable,
                          dense: gs.Variable) -> None:
        """Standard ops writing the outlier values over the lookup (see the module docstring)."""
        name = target.name
        gaps, values = outlier_arrays(target.outlier_positions, target.outlier_values)

        def node(op, suffix, inputs, dtype, attrs=None) -> gs.Variable:
            unique = names(f"{name}.{suffix}")  # the node and its output share the name (separate namespaces in ONNX)
            output = gs.Variable(unique, dtype=dtype)
            nodes.append(gs.Node(op, unique, attrs=attrs or {}, inputs=inputs, outputs=[output]))
            return output

        def constant(suffix, array) -> gs.Constant:
            return gs.Constant(names(f"{name}{suffix}"), np.asarray(array))

        wide_gaps = node("Cast", "outlier_gaps_int64", [constant(OUTLIER_GAPS_SUFFIX, gaps)], np.int64, {"to": TensorProto.INT64})
        summed = node("CumSum", "outlier_cumsum", [wide_gaps, constant(".outlier_axis", np.array(0, np.int64))], np.int64)
        positions = node("Sub", "outlier_positions", [summed, constant(".outlier_one", np.array(1, np.int64))], np.int64)
        stored = constant(OUTLIER_VALUES_SUFFIX, values)
        exact = stored if values.dtype == np.float32 else node("Cast", "outlier_values_float", [stored], np.float32,
                                                                  {"to": TensorProto.FLOAT})
        flat = node("Reshape", "lookup_flat", [lookup, constant(".lookup_flat_shape", np.array([-1], np.int64))], np.float32)
        scattered = node("ScatterElements", "outliers", [flat, positions, exact], np.float32, {"axis": 0})
        nodes.append(gs.Node("Reshape", names(f"{name}.outliers_reshape"),
                             inputs=[scattered, constant(".weight_shape", np.array(target.shape, np.int64))],
                             outputs=[dense]))

    @staticmethod
    def _unpack(nodes: list[gs.Node], names: UniqueNames, name: str, packed: gs.Constant, bits: int,
                target: WeightTarget) -> gs.Variable:
        """Standard ops turning packed bytes back into int32 indices in the weight's shape."""
        per_byte = 8 // bits

        def variable(unique: str) -> gs.Variable:
            return gs.Variable(unique, dtype=np.int32)

        def constant(suffix: str, values) -> gs.Constant:
            return gs.Constant(names(f"{name}.{suffix}"), np.asarray(values))

        steps = [  # (op, extra inputs, attributes)
            ("Cast", [], {"to": TensorProto.INT32}),
            ("Reshape", [constant("column_shape", np.array([-1, 1], np.int64))], {}),
            ("Div", [constant("divisors", (1 << (bits * np.arange(per_byte - 1, -1, -1))).astype(np.int32))], {}),
            ("Mod", [constant("modulus", np.array(1 << bits, np.int32))], {}),
            ("Reshape", [constant("flat_shape", np.array([-1], np.int64))], {}),
            ("Slice", [constant("slice_start", np.array([0], np.int64)), constant("slice_end", np.array([target.size], np.int64))], {}),
            ("Reshape", [constant("shape", np.array(target.shape, np.int64))], {}),
        ]
        current: gs.Tensor = packed
        for step, (op, extra, attrs) in enumerate(steps):
            unique = names(f"{name}.unpack{step}")  # the node and its output share the name
            output = variable(unique)
            nodes.append(gs.Node(op, unique, attrs=attrs, inputs=[current] + extra, outputs=[output]))
            current = output
        return current
