"""What a model stores per weight: ``onnxcomp inspect`` and the reader ``decompress`` and reports share.

A weight is a float32 constant in a weight slot (see passes/select_weights.py), a record in the sidecar
(custom-op format), or a codebook lookup ``Gather(codebook, Cast(indices))`` (portable format), in either
format possibly with outliers (exact values at listed positions: a record's outlier section, or a
ScatterElements onto the lookup). Outlier bytes are the record's outlier section, or the portable form's
stored gaps and values.
Per weight: N elements, K codebook entries, b index bits, stored bytes S; bits per weight = 8 S / N.
The entropy bound is the zeroth-order entropy of the stored symbols, H = -sum_j p_j log2 p_j with p_j the
share of elements holding codebook entry j (for a dense float weight: distinct value j), plus the codebook:
N H / 8 + 4 K bytes (for a dense weight at most its 4 N bytes). Sparse gap coding may land slightly below
it, dense Huffman coding never does.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcomp import parallel
from onnxcomp.passes import model_io
from onnxcomp.core import sidecar
from onnxcomp.core.native import native as _native
from onnxcomp.passes.model_io import model_bytes
from onnxcomp.passes.select_weights import CHAIN_OPS, FC_OPS
from onnxcomp.errors import CorruptSidecarError, UnsupportedModelError

DOMAIN = "ai.onnxcomp"
KIND_OF_OP = {"Conv": "conv", "ConvTranspose": "conv", "CodebookConv": "conv", "CodebookLSTM": "fc", "Gather": "embedding",
              "CodebookGather": "embedding", "CodebookMatMul": "fc", **{op: "fc" for op in FC_OPS}}
DENSE_BITS = {onnx.TensorProto.FLOAT: 32, onnx.TensorProto.FLOAT16: 16, onnx.TensorProto.BFLOAT16: 16}
DENSE_LISTED = 1024  # dense float tensors read in no weight slot are listed from this many elements
# Inputs that hold a layer's weights (None: every input); a dense float tensor read there is always listed.
WEIGHT_SLOTS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (0, 1), "MatMul": (0, 1), "Gather": (0,), "LSTM": (1, 2),
                "GRU": (1, 2), "RNN": (1, 2), "Einsum": None, "CodebookMatMul": (1,), "CodebookGather": (0,),
                "CodebookConv": (1,), "CodebookLSTM": (1, 2)}
# The ops that hand a record's decoded tensor to standard ops: float32 (value type 1), uint8 (2) and int8 (3) records.
DECODE_OPS = ("CodebookDecode", "CodebookDecodeUInt8", "CodebookDecodeInt8")
PORTABLE_CODEBOOK = ".codebook"
PORTABLE_INDICES = ".indices"
PORTABLE_CODEBOOK_NAME = re.compile(r"\.codebook(\.\d+)?$")  # passes/names.py may number a generated name
PORTABLE_OUTLIER_GAPS = ".outlier_gaps"
PORTABLE_OUTLIER_VALUES = ".outlier_values"


@dataclass
class StoredWeight:
    """One compressed weight as a model stores it (indices in the stored orientation)."""

    name: str  # the original initializer's name
    storage: str  # "record" (sidecar) or "portable"
    codebook: np.ndarray
    indices: np.ndarray  # integer, stored dims
    bits: int
    stored_bytes: int
    transposed: bool = False  # stored as the transpose of the original 2-D weight
    tensor: str = ""  # the record initializer (record) or the Gather output (portable)
    outlier_positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # flat, stored dims
    outlier_values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    outlier_bytes: int = 0
    scales: np.ndarray | None = None  # channel scales along scale_axis of the stored dims (record versions 3, 4)
    scale_axis: int = 0
    value_type: int = sidecar.FLOAT32  # an integer record (UINT8, INT8) decodes to exact integers of that type

    @property
    def itemsize(self) -> int:
        """Bytes per element of the decoded tensor: 4 (float32) or 1 (uint8, int8)."""
        return sidecar.VALUE_TYPES[self.value_type].itemsize

    @property
    def stored_dims(self) -> tuple[int, ...]:
        return tuple(self.indices.shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.stored_dims[::-1] if self.transposed else self.stored_dims

    @property
    def sparsity(self) -> float:
        """Fraction of elements pruned: their index points at a 0.0 entry and no outlier overrides it."""
        if not self.indices.size:
            return 0.0
        pruned = np.isin(self.indices, np.flatnonzero(self.codebook == 0.0)).ravel()
        pruned[self.outlier_positions] = False  # an outlier's own index is a placeholder
        return float(pruned.mean())

    def dense(self) -> np.ndarray:
        """The decoded weight in its original orientation."""
        if (_native is not None and self.scales is None and self.value_type == sidecar.FLOAT32
                and self.indices.dtype in (np.uint8, np.uint16) and (not self.transposed or self.indices.ndim == 2)):
            # gathered on the cores, a transposed record straight into the original orientation (tiles, not a
            # float32 transpose: an outlier at stored position r * cols + c lands at c * rows + r); the same array
            # as dense_reference (tests/test_fast_paths.py)
            values = _native.decode_indices(np.asarray(self.codebook, dtype=np.float32), self.indices, self.transposed,
                                            parallel.default_workers())
            positions = np.asarray(self.outlier_positions, dtype=np.int64)
            if self.transposed:
                rows, cols = self.indices.shape
                positions = (positions % cols) * rows + positions // cols
            values.reshape(-1)[positions] = self.outlier_values
            return values
        return self.dense_reference()

    def dense_reference(self) -> np.ndarray:
        """The straightforward ``dense``: decoded in the stored orientation, then transposed."""
        # codebook.take and apply_scales make fresh arrays; the outliers are written into the last one in place
        values = np.asarray(self.codebook, dtype=np.float32)[self.indices]  # indexing, not take: take casts small integer indices slowly (10x)
        if self.scales is not None:
            values = sidecar.apply_scales(values, self.stored_dims, self.scale_axis, self.scales).reshape(self.stored_dims)
        values.reshape(-1)[np.asarray(self.outlier_positions, dtype=np.int64)] = self.outlier_values
        if self.value_type != sidecar.FLOAT32:  # integer codebook values convert exactly (the readers checked them)
            values = values.astype(sidecar.VALUE_TYPES[self.value_type])
        return np.ascontiguousarray(values.T) if self.transposed else values


@dataclass
class WeightInfo:
    name: str
    op: str
    kind: str
    shape: list[int]
    params: int
    sparsity: float
    bits: int  # index bits, 32 for a dense float32 weight
    codebook_size: int | None  # None for dense weights with too many distinct values to matter
    stored_bytes: int
    bits_per_weight: float
    entropy_bytes: int
    storage: str  # "dense", "record" or "portable"
    outliers: int = 0  # values stored exactly beside the codebook
    outlier_bytes: int = 0  # bytes they take (included in stored_bytes)
    dense_bytes: int = 0  # the weight uncompressed: 4 bytes per element (float32; compressed weights), 2 for float16/bfloat16


@dataclass
class Inspection:
    path: str
    format: str  # "original", "custom-op" or "portable"
    file_bytes: int  # model plus the external data files it references (the sidecar)
    weights: list[WeightInfo] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(w.params for w in self.weights)

    @property
    def dense_bytes(self) -> int:
        return sum(w.dense_bytes or 4 * w.params for w in self.weights)

    @property
    def stored_bytes(self) -> int:
        return sum(w.stored_bytes for w in self.weights)

    @property
    def ratio(self) -> float:
        """Weight bytes as float32 over weight bytes as stored."""
        return self.dense_bytes / max(self.stored_bytes, 1)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(params=self.params, dense_bytes=self.dense_bytes, stored_bytes=self.stored_bytes, ratio=self.ratio)
        return data


def entropy_bits(symbols: np.ndarray) -> float:
    """Zeroth-order entropy of ``symbols`` in bits per symbol."""
    _, counts = np.unique(np.asarray(symbols).ravel(), return_counts=True)
    if len(counts) <= 1:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def stored_weights(model: onnx.ModelProto, model_path: str) -> dict[str, StoredWeight]:
    """Compressed weights of ``model`` keyed by the tensor the graph uses (record initializer or Gather output).

    Records are read from the sidecar beside ``model_path`` and matched to the directory by offset.
    """
    found: dict[str, StoredWeight] = {}
    graphs = list(model_io.graphs_of(model.graph))
    initializers = {t.name: t for g in graphs for t in g.initializer}
    custom_reads = {name for g in graphs for n in g.node if n.domain == DOMAIN for name in n.input}
    records = {t.name: t for t in initializers.values() if t.data_location == onnx.TensorProto.EXTERNAL
               and t.name in custom_reads and t.data_type == onnx.TensorProto.UINT8}  # (CodebookConv: dense W too)
    if records:
        folder = os.path.dirname(os.path.abspath(model_path))
        by_file: dict[str, list] = {}
        for tensor in records.values():
            info = {e.key: e.value for e in tensor.external_data}
            by_file.setdefault(info["location"], []).append((tensor.name, int(info.get("offset", 0))))
        for location, tensors in by_file.items():
            path = os.path.join(folder, location)
            if not os.path.isfile(path):
                raise UnsupportedModelError(f"{model_path}: its sidecar {location} is missing; keep it beside the model")
            entries = {e.offset: e for e in sidecar.read_directory(path)}
            with open(path, "rb") as f:
                data = f.read()
            for tensor_name, offset in tensors:
                if offset not in entries:
                    raise CorruptSidecarError(f"{path}: no directory entry for record {tensor_name!r} at offset {offset}")
            chosen = [entries[offset] for _, offset in tensors]  # decoded on the cores (the compiled decoder releases the GIL)
            decoded = parallel.ordered_map(lambda entry: sidecar.decode_record_fast(data[entry.offset:entry.offset + entry.length]),
                                           chosen)
            for (tensor_name, _), entry, record in zip(tensors, chosen, decoded):
                found[tensor_name] = StoredWeight(entry.name, "record", record.codebook, record.indices.reshape(record.dims),
                                                  record.bits, entry.length, entry.transposed, tensor_name,
                                                  record.outlier_positions, record.outlier_values, record.outlier_bytes,
                                                  record.scales, record.scale_axis, record.value_type)
    producers = {out: n for g in graphs for n in g.node for out in n.output}
    readers: dict[str, list] = {}
    for g in graphs:
        for n in g.node:
            for slot, name in enumerate(n.input):
                readers.setdefault(name, []).append((n, slot))
    for node in (n for g in graphs for n in g.node):
        # portable: Gather(codebook, indices computed by standard ops from constants), see passes/pack_portable.py
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        codebook = initializers.get(node.input[0])
        if codebook is None or not PORTABLE_CODEBOOK_NAME.search(codebook.name):
            continue
        chain, leaves = _constant_producers(node.input[1], producers, initializers)
        if chain is None:
            continue
        indices = _evaluate(model, chain, leaves, node.input[1]).astype(np.int64)
        values = numpy_helper.to_array(codebook).astype(np.float32)
        index_bytes = sum(numpy_helper.to_array(initializers[leaf]).nbytes for leaf in leaves)
        bits = max(1, round(8 * index_bytes / max(indices.size, 1)))
        weight = StoredWeight(PORTABLE_CODEBOOK_NAME.sub("", codebook.name), "portable", values, indices,
                              bits, values.nbytes + index_bytes, False, node.output[0])
        _portable_scales(weight, initializers, readers)
        final = _portable_outliers(model, weight, producers, initializers, readers)
        found[final or weight.tensor] = weight
    return found


def _portable_scales(weight: StoredWeight, initializers: dict, readers: dict) -> None:
    """Reads the channel scales a portable lookup is multiplied by (passes/pack_portable.py: Mul of the Gather's
    output by a constant of shape [1, .., C, .., 1]) into ``weight``, and moves ``weight.tensor`` past the Mul."""
    found = readers.get(weight.tensor, [])
    if len(found) != 1 or found[0][0].op_type != "Mul" or found[0][1] != 0 or len(found[0][0].input) != 2:
        return
    constant = initializers.get(found[0][0].input[1])
    if constant is None:
        return
    scales = numpy_helper.to_array(constant).astype(np.float32)
    if scales.ndim != weight.indices.ndim or sum(d != 1 for d in scales.shape) > 1:
        return
    axis = int(np.argmax(scales.shape)) if scales.size > 1 else 0
    if scales.shape[axis] != weight.indices.shape[axis]:
        return
    weight.scales, weight.scale_axis = scales.ravel(), axis
    weight.stored_bytes += scales.nbytes
    weight.tensor = found[0][0].output[0]


def _portable_outliers(model, weight: StoredWeight, producers: dict, initializers: dict, readers: dict) -> str | None:
    """Reads the outliers scattered onto a portable lookup (passes/pack_portable.py: Reshape -> ScatterElements ->
    Reshape after the Gather) into ``weight``; returns the tensor holding the final weight, or None when the lookup
    has no outliers. Recognised by structure, not by names (generated names may be numbered)."""
    def only_reader(tensor: str, op: str, slot: int = 0):
        found = readers.get(tensor, [])
        return found[0][0] if len(found) == 1 and found[0][0].op_type == op and found[0][1] == slot else None
    flat = only_reader(weight.tensor, "Reshape")
    scatter = flat and only_reader(flat.output[0], "ScatterElements")
    final = scatter and only_reader(scatter.output[0], "Reshape")
    if final is None or len(scatter.input) != 3:
        return None
    arrays, stored = [], 0
    for tensor in scatter.input[1:]:
        chain, leaves = _constant_producers(tensor, producers, initializers)
        if chain is None:
            return None
        arrays.append(_evaluate(model, chain, leaves, tensor))
        stored += sum(numpy_helper.to_array(initializers[leaf]).nbytes for leaf in leaves
                      if PORTABLE_OUTLIER_GAPS in leaf or PORTABLE_OUTLIER_VALUES in leaf)
    weight.outlier_positions = arrays[0].astype(np.int64)
    weight.outlier_values = arrays[1].astype(np.float32)
    weight.outlier_bytes = stored
    weight.stored_bytes += stored
    weight.tensor = final.output[0]
    return final.output[0]


def _constant_producers(tensor: str, producers: dict, initializers: dict):
    """The nodes computing ``tensor`` from initializers only, in graph order, and those initializers."""
    chain, leaves, queue = {}, set(), [tensor]
    while queue:
        name = queue.pop()
        if name in initializers:
            leaves.add(name)
            continue
        node = producers.get(name)
        if node is None or node.domain not in ("", "ai.onnx"):
            return None, None
        if id(node) not in chain:
            chain[id(node)] = node
            queue.extend(i for i in node.input if i)
    return list(chain.values()), sorted(leaves)


def _evaluate(model: onnx.ModelProto, nodes: list, leaves: list[str], output: str) -> np.ndarray:
    from onnx.reference import ReferenceEvaluator
    graphs = list(model_io.graphs_of(model.graph))
    initializers = {t.name: t for g in graphs for t in g.initializer}
    order = {id(n): i for i, n in enumerate(n for g in graphs for n in g.node)}
    graph = onnx.helper.make_graph(sorted(nodes, key=lambda n: order[id(n)]), "indices", [],
                                   [onnx.helper.make_tensor_value_info(output, onnx.TensorProto.UNDEFINED, None)],
                                   [initializers[name] for name in leaves])
    sub = onnx.helper.make_model(graph, opset_imports=[o for o in model.opset_import if o.domain in ("", "ai.onnx")])
    return np.asarray(ReferenceEvaluator(sub).run(None, {})[0])


def _consumers(model: onnx.ModelProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    """tensor name -> (node, slot) reading it, in every graph (subgraphs read outer-scope names)."""
    uses: dict[str, list] = {}
    for graph in model_io.graphs_of(model.graph):
        for node in graph.node:
            for slot, name in enumerate(node.input):
                uses.setdefault(name, []).append((node, slot))
    return uses


def _describe_uses(name: str, uses: dict) -> tuple[str, str, bool]:
    """(op, kind, in a weight slot) for a tensor, looking through CodebookDecode, portable lookups and shape-only
    ops (CHAIN_OPS) to the real consumers; kind as passes/select_weights.py decides it; the flag says whether a
    consumer reads it as a weight (WEIGHT_SLOTS), not as a bias or an operand of an elementwise op."""
    ops, queue, seen, weight_slot = [], [name], set(), False
    while queue:
        tensor = queue.pop()
        for node, slot in uses.get(tensor, []):
            if id(node) in seen:
                continue
            seen.add(id(node))
            chain = CHAIN_OPS.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ()
            if node.op_type in DECODE_OPS or (node.op_type in CHAIN_OPS and (chain is None or slot in chain)) or (
                    node.op_type == "Gather" and PORTABLE_CODEBOOK_NAME.search(node.input[0])) or (
                    node.op_type == "ScatterElements" and slot == 0):
                queue.extend(node.output)
            else:
                ops.append(node.op_type)
                slots = WEIGHT_SLOTS.get(node.op_type, ())
                weight_slot |= slots is None or slot in slots
    ops = sorted(set(ops)) or ["-"]
    kinds = {KIND_OF_OP.get(op, "other") for op in ops}
    kind = next((k for k in ("conv", "embedding", "fc", "other") if k in kinds), "other")
    return "+".join(ops), kind, weight_slot


def _widened_name(tensor: onnx.TensorProto, uses: dict) -> str:
    """The name a dense weight is listed under: a float16/bfloat16 initializer whose one reader is a Cast to float32
    is listed under the Cast's output (the tensor the graph computes with; onnxcomp's float16 weights keep the
    weight's own name there, passes/half_dense.py, while their stored tensor has a short name), else its own."""
    readers = uses.get(tensor.name, [])
    if tensor.data_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16) and len(readers) == 1:
        node = readers[0][0]
        if node.op_type == "Cast" and node.domain in ("", "ai.onnx") and len(node.output) == 1 and any(
                a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in node.attribute):
            return node.output[0]
    return tensor.name


def inspect(model_path: str) -> Inspection:
    """Per-weight storage of an original, custom-op or portable model (see the module docstring)."""
    model_path = os.fspath(model_path)
    model = model_io.load_model(model_path, external_data=False)
    compressed = stored_weights(model, model_path)
    fmt = "original"
    if any(w.storage == "record" for w in compressed.values()):
        fmt = "custom-op"
    elif compressed:
        fmt = "portable"
    uses = _consumers(model)
    result = Inspection(model_path, fmt, model_bytes(model_path))
    for tensor_name, weight in compressed.items():
        op, kind, _ = _describe_uses(tensor_name, uses)
        sparsity = weight.sparsity
        n = int(weight.indices.size)
        entropy = entropy_bits(weight.indices) if n else 0.0
        result.weights.append(WeightInfo(weight.name, op, kind, list(weight.shape), n, round(sparsity, 6), weight.bits,
                                         len(weight.codebook), weight.stored_bytes, 8 * weight.stored_bytes / max(n, 1),
                                         int(np.ceil(n * entropy / 8)) + 4 * len(weight.codebook), weight.storage,
                                         len(weight.outlier_positions), weight.outlier_bytes, weight.itemsize * n))
    folder = os.path.dirname(os.path.abspath(model_path))
    listed = set()
    for tensor in (t for g in model_io.graphs_of(model.graph) for t in g.initializer):
        if tensor.data_type not in DENSE_BITS or PORTABLE_CODEBOOK_NAME.search(tensor.name) or tensor.name in listed \
                or not uses.get(tensor.name):
            continue
        op, kind, weight_slot = _describe_uses(tensor.name, uses)
        size = int(np.prod(tensor.dims, dtype=np.int64))
        if not weight_slot and size < DENSE_LISTED:
            continue
        listed.add(tensor.name)
        name = _widened_name(tensor, uses)
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            onnx.external_data_helper.load_external_data_for_tensor(tensor, folder)
        values = numpy_helper.to_array(tensor)
        n = int(values.size)
        distinct = np.unique(values)
        entropy = entropy_bits(values) if n else 0.0
        bits = DENSE_BITS[tensor.data_type]
        result.weights.append(WeightInfo(name, op, kind, list(values.shape), n,
                                         round(float((values == 0).mean()) if n else 0.0, 6), bits,
                                         len(distinct) if len(distinct) <= 1 << 16 else None, bits * n // 8, float(bits),
                                         min(bits * n // 8, int(np.ceil(n * entropy / 8)) + bits // 8 * len(distinct)), "dense",
                                         dense_bytes=bits * n // 8))
    order = {}
    for position, node in enumerate(model.graph.node):
        for name in node.input:
            order.setdefault(name, position)
    first_use = {w.name: order.get(w.tensor, 0) for w in compressed.values()}
    result.weights.sort(key=lambda w: (first_use.get(w.name, order.get(w.name, 0)), w.name))
    return result
