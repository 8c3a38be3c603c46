"""Pass infrastructure: the state passes share, their result type, and the pipeline that runs them."""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field

import os
import sys

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnxcomp.core import sidecar

log = logging.getLogger("onnxcomp")


class ExternalValues(LazyValues):
    """Values of an initializer stored as ONNX external data, read from its file only when asked for.

    ``load`` reads just this tensor's bytes (its offset and length), so a model with external data is
    compressed one weight at a time; graphsurgeon exports the original (external) TensorProto untouched.
    """

    def __init__(self, tensor: onnx.TensorProto, path: str, offset: int, length: int | None) -> None:
        super().__init__(tensor)
        self.path, self.offset, self.length = path, offset, length

    def load(self) -> np.ndarray:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(self.tensor.data_type)
        count = int(np.prod(self.shape, dtype=np.int64))
        want = count * dtype.itemsize
        if self.length is not None and self.length != want:
            raise ValueError(f"{self.tensor.name}: external data length {self.length} != {want} bytes for shape {list(self.shape)}")
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = np.fromfile(f, dtype=dtype.newbyteorder("<"), count=count)
        if data.size != count:
            raise ValueError(f"{self.tensor.name}: its external data file {os.path.basename(self.path)} is too short")
        return data.astype(dtype, copy=False).reshape(self.shape)


def read_values(constant: gs.Constant) -> np.ndarray:
    """A constant's values without caching them in the graph (a lazy constant reads its data again next time),
    so that a weight's float copy lives only as long as the pass using it. Read-only for a float32 or float16
    initializer held in the model (a view of one copy of its protobuf bytes; graphsurgeon's own read copies them
    once more into a writable array): callers that modify values copy them first. Inside ``reads_kept`` that view
    is kept and given again for the same TensorProto object (``raw_view``)."""
    values = constant._values
    if isinstance(values, LazyValues) and not isinstance(values, ExternalValues):
        view = raw_view(values.tensor)
        return view if view is not None else values.load()
    return values.load() if isinstance(values, LazyValues) else values


# id(TensorProto) -> (that TensorProto, its read-only view) while a ``reads_kept`` block runs (None otherwise), and
# how many such blocks run (threads of one process may compress at once).
_kept_views: dict | None = None
_kept_users = 0
_kept_lock = threading.Lock()


@contextlib.contextmanager
def reads_kept():
    """Inside this block ``raw_view`` keeps each view it makes and gives it again for the same TensorProto object
    (identity: the entry holds the object, so its id is not reused), instead of copying the protobuf bytes once
    more. Reading a 64 MB ``raw_data`` field costs 35-50 ms here, most of it the page faults of the fresh bytes
    object (docs/benchmarks.md, branch toolspeed8), and compress's rounds and gain measurement read each weight of
    the input it holds three times or more. For callers that do not change the ``raw_data`` of the tensors read
    inside the block (compress: the input it loaded is only read, model copies get new objects); the views stay
    alive until the last block ends, so about the float bytes of the weights read stay in memory that long."""
    global _kept_views, _kept_users
    with _kept_lock:
        if _kept_users == 0:
            _kept_views = {}
        _kept_users += 1
    try:
        yield
    finally:
        with _kept_lock:
            _kept_users -= 1
            if _kept_users == 0:
                _kept_views = None


_VIEWABLE = {onnx.TensorProto.FLOAT: np.dtype("<f4"), onnx.TensorProto.FLOAT16: np.dtype("<f2")}


def raw_view(tensor: onnx.TensorProto) -> np.ndarray | None:
    """``_raw_view(tensor)``, or inside ``reads_kept`` the view made earlier for this very TensorProto object (the
    same values: tests/test_fast_paths.py)."""
    kept = _kept_views
    if kept is None:
        return _raw_view(tensor)
    entry = kept.get(id(tensor))
    if entry is not None and entry[0] is tensor:
        return entry[1]
    view = _raw_view(tensor)
    if view is not None:
        with _kept_lock:
            if _kept_views is kept:
                kept[id(tensor)] = (tensor, view)
    return view


def _raw_view(tensor: onnx.TensorProto) -> np.ndarray | None:
    """``tensor``'s values as numpy_helper.to_array gives them, read-only, over the one bytes copy that reading
    the protobuf field makes (tests/test_fast_paths.py compares them); None unless they are float32/float16
    little-endian raw_data in the model whose length matches the dims (graphsurgeon's read then gives the error)."""
    dtype = _VIEWABLE.get(tensor.data_type)
    if (dtype is None or sys.byteorder != "little" or not tensor.HasField("raw_data")
            or tensor.data_location == onnx.TensorProto.EXTERNAL):
        return None
    raw = tensor.raw_data
    dims = tuple(tensor.dims)
    if len(raw) != dtype.itemsize * int(np.prod(dims, dtype=np.int64)):
        return None
    return np.frombuffer(raw, dtype=dtype).reshape(dims)

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def onnx_type(tensor: gs.Tensor) -> int | None:
    """The ONNX element type (TensorProto.FLOAT, ...) of a graphsurgeon tensor, None when unknown."""
    dtype = tensor.dtype
    if dtype is None:
        return None
    if isinstance(dtype, (int, np.integer)):  # graphsurgeon gives the ONNX number for types numpy lacks (bfloat16)
        return int(dtype)
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    except (TypeError, KeyError, ValueError):
        return None


def as_float32(values: np.ndarray, element_type: int, copy: bool = True) -> np.ndarray:
    """float32 copy of an array holding ``element_type`` values (bfloat16 arrives as its raw 16-bit words); with
    ``copy=False`` a float32 array the caller owns is returned as it is."""
    values = np.asarray(values)
    if element_type == onnx.TensorProto.BFLOAT16 and values.dtype.kind in "ui":
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float32, copy=copy)


def to_element_type(values: np.ndarray, element_type: int) -> np.ndarray:
    """float32 ``values`` rounded to ``element_type`` and back (what a Cast to that type keeps), as float32.

    bfloat16 rounds to nearest even on the upper 16 bits, as onnxruntime's Cast does."""
    values = np.asarray(values, dtype=np.float32)
    if element_type == onnx.TensorProto.FLOAT16:
        return values.astype(np.float16).astype(np.float32)
    if element_type == onnx.TensorProto.BFLOAT16:
        bits = values.view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        return rounded.astype(np.uint32).view(np.float32)
    return values


def float_values(constant: gs.Constant) -> np.ndarray:
    """A float constant's values as float32 (float16 and bfloat16 widened exactly), not cached. Never modified in
    place by callers: a float32 initializer read from the model is a read-only view of its bytes (read_values);
    a lazy constant's read is not copied again."""
    fresh = isinstance(constant._values, LazyValues)
    return as_float32(read_values(constant), onnx_type(constant), copy=not fresh)


DOMAIN = "ai.onnxcomp"
DOMAIN_VERSION = 1


@dataclass
class WeightTarget:
    """One weight tensor chosen for compression and what the passes decided for it."""

    name: str
    constant: gs.Constant
    kind: str  # "conv", "fc", "embedding" or "other": selects per-kind defaults
    uses: list[tuple[gs.Node, int]]  # (consumer node, input slot)
    keep: np.ndarray | None = None  # pruning mask, True = kept
    codebook: np.ndarray | None = None
    indices: np.ndarray | None = None
    bits: int | None = None
    record: bytes | None = None
    transposed: bool = False
    portable: bool = False  # expressed as a standard-op codebook lookup instead of a record
    layer_input: object | None = None  # onnxcomp.calibration.LayerInput, when activations can be observed
    statistics: object | None = None  # onnxcomp.calibration.LayerStatistics
    refit: np.ndarray | None = None  # reconstructed weights, replacing the original values for sharing
    sparsity_override: float | None = None  # per-weight settings (budget allocation, recipes) beat per-kind ones
    bits_override: int | None = None
    # > 0: a k-means codebook of at most this many entries K (the pruned 0.0 included), 2^(bits - 1) < K <= 2^bits with
    # bits_override = ceil(log2 K), instead of 2^bits: a rate between two bit widths (a budget allocation's setting)
    codebook_size_override: int = 0
    outliers_override: float | None = None  # outlier fraction chosen per weight (AllocateWeightsPass)
    levels_override: int = 0  # > 0: a uniform codebook of this many values instead of k-means (AllocateWeightsPass)
    # With levels_override: (bits, outlier fraction) of the k-means codebook the uniform one must beat (ShareWeightsPass)
    alternative: tuple[int, float] | None = None
    # (levels, outlier fraction) of a channel-scaled uniform codebook ShareWeightsPass tries beside the choice
    # (AllocateWeightsPass; with ``alternative`` set)
    scaled_alternative: tuple[int, float] | None = None
    # Channel scales of the shared values (record versions 3, 4): float32 [shape[scale_axis]] or None (ShareWeightsPass)
    scales: np.ndarray | None = None
    scale_axis: int = 0
    packed: bool = False  # consumers rewritten to the record (PackWeightsPass)
    dtype: int = onnx.TensorProto.FLOAT  # the constant's ONNX element type (FLOAT, FLOAT16 or BFLOAT16)
    record_name: str | None = None  # the record initializer's name (unique in the model), once packed
    # Per use (aligned with ``uses``): the MatMul/Gemm nodes a CodebookMatMul can replace, each with whether it
    # multiplies by the transpose (select_weights.fused_route), or None.
    routes: list | None = None
    # Outliers kept exact beside the codebook (onnxcomp/core/outliers.py): flat row-major positions, increasing, and
    # their float32 values as a reader gets them back.
    outlier_positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    outlier_values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    # False while its values are not yet checked for NaN/Inf: a weight streamed from external data is checked by
    # the first pass that reads it (select_weights.non_finite_reason), so it is not read just for the check.
    checked: bool = True

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.constant.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def original(self) -> np.ndarray:
        return float_values(self.constant)

    @property
    def values(self) -> np.ndarray:
        """The weights to share: the reconstructed ones if a reconstruction ran, else the original."""
        return self.refit if self.refit is not None else self.original

    @property
    def dense_bytes(self) -> int:
        """Bytes the weight takes uncompressed: 4 per element for float32, 2 for float16 and bfloat16, 1 for int8 and
        uint8 (IntegerWeightsPass)."""
        size = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1}.get(self.dtype, 2)
        return self.size * size

    @property
    def sparsity(self) -> float:
        return 0.0 if self.keep is None or self.size == 0 else 1.0 - float(self.keep.mean())

    def release(self) -> None:
        """Drop the per-weight arrays once the record is encoded (the weight is then only its record)."""
        self.indices = self.refit = None

    def decoded(self) -> np.ndarray:
        """The weight as the compressed model computes it, in the original orientation (float32 values; for a
        float16 or bfloat16 weight the codebook and outliers hold values of that type)."""
        decoded = self.codebook[self.indices].astype(np.float32)
        if self.scales is not None:
            decoded = sidecar.apply_scales(decoded, self.shape, self.scale_axis, self.scales)
        decoded[self.outlier_positions] = self.outlier_values
        return decoded.reshape(self.shape)


@dataclass
class CompressionState:
    graph: gs.Graph
    targets: list[WeightTarget] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (tensor, reason)
    # Initializers the model also lists as graph inputs (graphsurgeon drops them from graph.inputs).
    graph_inputs: set[str] = field(default_factory=set)
    float_params: int = 0  # elements of every float constant in the input, for the report's coverage
    # Initializers that PackWeightsPass moved from a bias Add into CodebookMatMul's bias input (fold_bias_adds): the
    # writer stores them as float16 where half_dense's rules allow, as it did while the Add read them.
    folded_biases: set[str] = field(default_factory=set)


def drop_if_not_smaller(state: CompressionState, target: WeightTarget, stored_bytes: int) -> bool:
    """Leave ``target`` dense (out of ``state.targets``, into ``state.skipped``) when its compressed form of
    ``stored_bytes`` would not be smaller than the dense tensor; returns True if it was dropped."""
    if stored_bytes < target.dense_bytes:
        return False
    reason = f"compressed it would take {stored_bytes} bytes, not fewer than its {target.dense_bytes} dense bytes"
    log.info("left %s dense: %s", target.name, reason)
    state.targets.remove(target)
    state.skipped.append((target.name, reason))
    return True


@dataclass
class PassResult:
    modified: bool
    message: str = ""


class GraphPass:
    """Base class: ``check`` states preconditions (a broken contract raises), ``run`` does the work."""

    def __call__(self, state: CompressionState) -> PassResult:
        self.check(state)
        result = self.run(state)
        log.debug("%s: modified=%s %s", type(self).__name__, result.modified, result.message)
        return result

    def check(self, state: CompressionState) -> None:  # pragma: no cover - default: no preconditions
        pass

    def run(self, state: CompressionState) -> PassResult:
        raise NotImplementedError


class Pipeline:
    """Runs passes in order on one state; returns each pass's result."""

    def __init__(self, passes: list[GraphPass]) -> None:
        self.passes = list(passes)

    def __call__(self, state: CompressionState) -> list[PassResult]:
        return [compression_pass(state) for compression_pass in self.passes]
