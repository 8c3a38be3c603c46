"""Activation statistics from calibration data run through onnxruntime (numpy; no graph editing here).

For a layer computing ``y = W x`` (rows of W = output units, columns = input features j), the statistics of
its input rows X (MatMul/Gemm: one row per sample and position; Conv: one im2col patch per output pixel,
features ordered channel, kernel row, kernel column, matching W reshaped to [O, C*kh*kw]) are accumulated
batch by batch, so memory is bounded by the statistics, never by the activations:
- ``sum_squares[j] = sum_rows x_j^2``  (Wanda's ||X_j||_2 is its square root)
- ``sum_abs[j] = sum_rows |x_j|``, ``fire_rows[j] = #rows with x_j > threshold``
- ``fire_samples[j] = #samples in which x_j exceeds the threshold at least once``
- ``gram = X^T X`` (for least-squares reconstruction), kept when the layer has at most ``GRAM_LIMIT`` inputs:
  float64 up to ``GRAM_FLOAT64_FEATURES`` inputs (at most 32 MiB), float32 above (the inputs^2 matrix is then as
  large as a weight of that many inputs and outputs; float32 accumulation changes the rounded weights of such
  layers, not their quality: docs/benchmarks.md, calibration memory).

Row sampling: a sample with more than ``ROW_SAMPLE_POSITIONS`` rows (a convolution's output pixels, a sequence's
positions) contributes the rows of ``m = ROW_SAMPLE_POSITIONS`` of its ``P`` positions, drawn uniformly without
replacement and independently per sample (seeded by the layer's input tensor and the sample's index: the same
positions for the same data), each row weighted ``P / m``. Every sum above (and the row count) is then a
Horvitz-Thompson estimate of the sum over all rows: unbiased, with the variance of simple random sampling without
replacement (Cochran 1977, ch. 2: var = P^2 (1 - m/P) S^2 / m per sample, S^2 the positions' variance of the
summed term). ``fire_samples`` counts a feature in a sample when one of its sampled rows fires (a lower bound).
The compressed and the original model's rows (sequential mode) use the same positions. Measured effect:
docs/benchmarks.md, section calzoo4.

Gram rows: X^T X costs K^2 per row where the other sums cost K, so it takes fewer rows. A pass over N samples
gives a layer of K features at most ``R = max(GRAM_ROWS_MIN, GRAM_ROWS_PER_FEATURE * K)`` Gram rows: each sample's
r rows (after row sampling) give ``g = min(r, max(1, ceil(R / N)))`` of them to X^T X, drawn uniformly without
replacement per sample (seeded by the tensor and the sample's index, another stream than the positions'), each
weighted ``r / g`` on top of its row-sampling weight. Uniform draws of g of r of uniform draws of m of P positions
are uniform draws of g of P, so X^T X stays a Horvitz-Thompson estimate of the sum over all rows, unbiased, with
the variance above for m = g; the other sums and counts keep every sampled row. The cross terms of sequential mode
take the same rows of both models. What it changes downstream: OBS/GPTQ rounding and the least-squares refits
solve with X^T X (plus a damping relative to its diagonal), so they see the estimate; a common scale cancels in
them, the sampling noise does not: K x 16 rows is more than the deepest layers of the zoo's convolution models had
before it (VGG-16's 15 x 15 block-5 layers: 225 rows per image, 9.8 K over 200 images). The layer errors the
budget's sensitivity curves predict read it too. Measured cost and effect: docs/benchmarks.md, calvgg10
(`bench/gram_rows.py`).

Weights whose layers read the same tensor the same way (the query, key and value projections of one input) share
one statistics object. A model whose weights are stored as external data is run in segments of consecutive nodes
holding at most ``SEGMENT_BYTES`` of those weights (``collect_segments``): each segment's session holds only its
own weights, the tensors later segments read are carried between them per batch, and a layer's statistics are
complete after the segment that produces its input, so the caller can compress it and drop them before the next.

Batches in bounded memory: onnxruntime holds every value a probe asks for (all the layers' inputs of a batch at
once) besides its own intermediates, so a batch costs about the bytes its run produces. ``bounded_batch`` runs one
sample with every node output asked (``activation_bytes``: their bytes plus the feeds', an upper bound of what
the run holds) and takes ``min(requested, ACTIVATION_BYTES // (that x models run at once))`` samples, at least
one; a model whose inputs fix the batch keeps it. The sequential walk runs two models on one segment of nodes at a
time (its values a part of the whole run's), and counts one whole run. The statistics, the sequential walk (compress_sequentially),
the budget search's runs (pipeline/autotune.py) and the fidelity runs on more than fidelity.SAMPLES samples use
it. When the requested batch fits, nothing changes; when it does not, the same samples are summed in more batches,
which changes the float sums' order (the statistics in their last bits, so possibly the output's bytes), never
which samples or rows are used. Models whose weights are external data keep the requested batch (measuring
would read every such weight once more; they are run in segments, below, when large).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from onnxcomp import progress
from onnxcomp.errors import CalibrationError
from onnxcomp.runtime import quiet_session_options

GRAM_LIMIT = 8192
GRAM_FLOAT64_FEATURES = 2048  # more inputs: float32 Gram matrices (memory: inputs^2 * 4 bytes)
LOW_RANK_RATIO = 4  # float32 layers keep their input rows while there are at most features / 4 of them
ROW_SAMPLE_POSITIONS = 4096  # rows one sample gives a layer's statistics at most; above, positions are sampled
ROW_SAMPLE_SEED = 20261201
GRAM_ROWS_PER_FEATURE = 16  # Gram rows a layer of K input features takes over a pass: at most max(GRAM_ROWS_MIN, 16 K)
GRAM_ROWS_MIN = 65536
ROW_CHUNK_BYTES = 256 << 20  # float64 input rows one statistics update takes at most (whole samples; one may exceed it)
SEGMENT_BYTES = 256 << 20  # external-data weight bytes one calibration session holds at most (one weight may exceed it)
ACTIVATION_BYTES = 2 << 30  # the values one batch's run produces (every node output summed) at most: bounded_batch


@dataclass
class LayerInput:
    """Where a weight's input activations come from and how they line up with its rows."""

    tensor: str
    layout: str  # "kn": W is [K, N] (MatMul, Gemm transB=0); "nk": W is [N, K]; "conv": W is [O, C, kh, kw]
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()


@dataclass
class LayerStatistics:
    features: int
    rows: int = 0
    samples: int = 0
    sum_squares: np.ndarray = None
    sum_abs: np.ndarray = None
    fire_rows: np.ndarray = None
    fire_samples: np.ndarray = None
    keep_gram: bool = True
    cross: np.ndarray | None = None  # sequential mode: X_c^T X_o (inputs after upstream compression vs original)
    gram_original: np.ndarray | None = None  # sequential mode: X_o^T X_o
    factor_cache: dict | None = None  # a dict keeps the OBS inverse factor of gram (obs.cached_inverse_factor); None: never kept
    dense_gram: np.ndarray | None = None  # X^T X, [features, features]
    # float32 layers seen on at most features / LOW_RANK_RATIO rows keep those rows X [rows, features] instead of
    # X^T X (a quarter of its size or less); ``gram`` is then computed when asked for, and the compensated rounding
    # and codebook refit work from X (onnxcomp/core/obs.py, reconstruction.py).
    activations: np.ndarray | None = None

    def __post_init__(self):
        k = self.features
        self.sum_squares, self.sum_abs = np.zeros(k), np.zeros(k)
        self.fire_rows, self.fire_samples = np.zeros(k), np.zeros(k)
        if self.keep_gram and k <= GRAM_LIMIT:
            if gram_dtype(k) == np.float32:
                self.activations = np.zeros((0, k), dtype=np.float32)
            else:
                self.dense_gram = np.zeros((k, k))

    @property
    def gram(self) -> np.ndarray | None:
        """X^T X [features, features] (float64, or float32 above GRAM_FLOAT64_FEATURES inputs), None without one.
        Kept as rows X, it is computed on each access."""
        if self.dense_gram is None and self.activations is not None:
            return self.activations.T @ self.activations
        return self.dense_gram

    @gram.setter
    def gram(self, value: np.ndarray | None) -> None:
        self.dense_gram, self.activations = value, None

    def add(self, rows: np.ndarray, samples: int, threshold: float, weight: float = 1.0,
            gram_rows: tuple[np.ndarray, float] | None = None) -> None:
        """Accumulate ``rows`` [samples * rows_per_sample, K], each standing for ``weight`` rows (row sampling:
        P / m; module docstring). ``gram_rows`` (indices into ``rows``, factor; ``gram_subset``): X^T X takes only
        those rows, each standing for ``weight * factor`` rows; the other sums take every row."""
        single = rows.astype(np.float32, copy=False) if self.activations is not None or (
            self.dense_gram is not None and self.dense_gram.dtype == np.float32) else None
        # the sums in float64 without a float64 copy of every row: each value converted exactly before it is
        # squared, compared or summed, in the same order, so the same bits as on float64 rows
        fires = rows > np.float64(threshold)
        self.rows += round(len(rows) * weight)
        self.samples += samples
        self.sum_squares += weight * np.einsum("rk,rk->k", rows, rows, dtype=np.float64)
        self.sum_abs += weight * np.abs(rows).sum(axis=0, dtype=np.float64)
        self.fire_rows += weight * fires.sum(axis=0)
        self.fire_samples += fires.reshape(samples, -1, rows.shape[1]).any(axis=1).sum(axis=0)
        del fires
        if gram_rows is not None:
            index, factor = gram_rows
            weight *= factor
            rows = rows[index] if single is None else None
            single = None if single is None else single[index]
        if single is None:
            rows = rows.astype(np.float64, copy=False)
        if self.activations is not None:
            self.activations = np.concatenate([self.activations, single if weight == 1.0 else
                                               single * np.float32(np.sqrt(weight))])
            if len(self.activations) * LOW_RANK_RATIO > self.features:  # X^T X is now the smaller form
                self.gram = self.gram
        elif single is not None:
            self.dense_gram += _weighted(single.T @ single, weight)
        elif self.dense_gram is not None:
            self.dense_gram += _weighted(rows.T @ rows, weight)

    def add_original(self, rows: np.ndarray, original: np.ndarray, weight: float = 1.0, with_gram: bool = True,
                     gram_rows: tuple[np.ndarray, float] | None = None) -> None:
        """Sequential mode: accumulate the cross terms with the original model's rows for the same samples (and
        positions), each standing for ``weight`` rows. ``with_gram`` False leaves out X_o^T X_o (``gram_original``
        stays None: the caller has it from an earlier walk with the same rows). ``gram_rows``: as in ``add``
        (the same rows of both models)."""
        if self.dense_gram is None and self.activations is None:
            return
        if gram_rows is not None:
            index, factor = gram_rows
            rows, original, weight = rows[index], original[index], weight * factor
        if self.activations is not None:  # the cross terms need the dense form
            self.gram = self.gram
        dtype = self.dense_gram.dtype
        rows, original = rows.astype(dtype, copy=False), original.astype(dtype, copy=False)
        if self.cross is None:
            self.cross = np.zeros_like(self.dense_gram)
            self.gram_original = np.zeros_like(self.dense_gram) if with_gram else None
        self.cross += _weighted(rows.T @ original, weight)
        if with_gram:
            self.gram_original += _weighted(original.T @ original, weight)

    @property
    def norms(self) -> np.ndarray:
        return np.sqrt(self.sum_squares)


def _weighted(product: np.ndarray, weight: float) -> np.ndarray:
    if weight != 1.0:
        product *= product.dtype.type(weight)
    return product


def gram_dtype(features: int) -> type:
    """float64 for at most GRAM_FLOAT64_FEATURES inputs, float32 above."""
    return np.float64 if features <= GRAM_FLOAT64_FEATURES else np.float32


def to_rows(weight: np.ndarray, layout: str) -> np.ndarray:
    """The weight as [outputs, inputs], inputs ordered like the statistics' features."""
    if layout == "kn":
        return weight.T
    if layout == "nk":
        return weight
    return weight.reshape(weight.shape[0], -1)


def from_rows(rows: np.ndarray, layout: str, shape: tuple[int, ...]) -> np.ndarray:
    if layout == "kn":
        return np.ascontiguousarray(rows.T)
    return np.ascontiguousarray(rows.reshape(shape))


def _windows(x: np.ndarray, spec: LayerInput) -> np.ndarray:
    """A view [B, C, OH, OW, kh, kw] of the patches of a 2-D convolution input [B, C, H, W] (the padded copy)."""
    kh, kw = spec.kernel
    sh, sw = spec.strides
    dh, dw = spec.dilations
    top, left, bottom, right = spec.pads
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    return windows[:, :, ::sh, ::sw, ::dh, ::dw]


def im2col(x: np.ndarray, spec: LayerInput, positions: np.ndarray | None = None) -> np.ndarray:
    """Patches of a 2-D convolution input [B, C, H, W] as rows [B * OH * OW, C * kh * kw]; with ``positions``
    [B, m] (flat output-pixel indices per sample), only those: rows [B * m, C * kh * kw], sample by sample."""
    windows = _windows(x, spec)
    features = x.shape[1] * spec.kernel[0] * spec.kernel[1]
    if positions is None:
        return windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, features)
    ow = windows.shape[3]
    picked = windows[np.arange(len(x))[:, None], :, positions // ow, positions % ow]  # [B, m, C, kh, kw]
    return picked.reshape(-1, features)


def positions_per_sample(x: np.ndarray, spec: LayerInput) -> int:
    """Rows one sample of ``x`` (samples first) gives: a convolution's output pixels, else the positions between
    the sample axis and the features."""
    if spec.layout == "conv":
        windows = _windows(x[:1, :1], spec)
        return windows.shape[2] * windows.shape[3]
    return int(np.prod(x.shape[1:-1], dtype=np.int64)) if x.ndim > 2 else 1


def sampled_positions(total: int, samples: int, tensor: str, first: int) -> np.ndarray | None:
    """Row sampling (module docstring): for ``samples`` samples of ``total`` positions each, the sorted flat
    positions [samples, ROW_SAMPLE_POSITIONS] each keeps, drawn without replacement by a generator seeded with
    (ROW_SAMPLE_SEED, crc32 of ``tensor``, the sample's index ``first + i``); None when ``total`` fits."""
    if total <= ROW_SAMPLE_POSITIONS:
        return None
    import zlib
    key = zlib.crc32(tensor.encode())
    return np.stack([np.sort(np.random.default_rng((ROW_SAMPLE_SEED, key, first + i)).choice(
        total, ROW_SAMPLE_POSITIONS, replace=False)) for i in range(samples)])


def gram_positions(features: int, per_sample: int, total: int | None) -> int:
    """Rows of each sample X^T X takes (module docstring, Gram rows): ``per_sample`` (all) unless the pass's
    ``total`` samples would give more than max(GRAM_ROWS_MIN, GRAM_ROWS_PER_FEATURE * features) rows, then
    ceil(that / total), at least 1. ``total`` None: all."""
    if total is None or total <= 0:
        return per_sample
    cap = max(GRAM_ROWS_MIN, GRAM_ROWS_PER_FEATURE * features)
    return min(per_sample, max(1, -(-cap // total)))


def gram_subset(samples: int, per_sample: int, features: int, total: int | None, tensor: str,
                first: int) -> tuple[np.ndarray, float] | None:
    """The rows X^T X takes of a chunk's rows [samples * per_sample, features] (sample by sample): indices into
    them [samples * g] (g = gram_positions; each sample's g of its rows drawn uniformly without replacement by a
    generator seeded with (ROW_SAMPLE_SEED, crc32 of ``tensor``, the sample's index ``first + i``, 1), sorted),
    and the factor per_sample / g each such row stands for; None when every row is taken."""
    g = gram_positions(features, per_sample, total)
    if g >= per_sample:
        return None
    import zlib
    key = zlib.crc32(tensor.encode())
    index = np.concatenate([i * per_sample + np.sort(np.random.default_rng((ROW_SAMPLE_SEED, key, first + i, 1)).choice(
        per_sample, g, replace=False)) for i in range(samples)])
    return index, per_sample / g


def input_rows(x: np.ndarray, spec: LayerInput, positions: np.ndarray | None = None) -> np.ndarray:
    """The layer's input rows [rows, features] of ``x`` (samples first when ``positions`` [samples, m] selects
    rows sample by sample)."""
    if spec.layout == "conv":
        return im2col(x, spec, positions)
    if positions is None:
        return x.reshape(-1, x.shape[-1])
    flat = x.reshape(len(x), -1, x.shape[-1])
    return flat[np.arange(len(x))[:, None], positions].reshape(-1, x.shape[-1])


def sample_axis(shape) -> int | None:
    """The axis of an input (or output) with declared ``shape`` (ints for fixed dims, 0 included; names, None or
    negative ints for dynamic ones) that counts samples: the first, unless it is fixed to a size other than 1
    and a later one is dynamic (a recurrent state [layers, batch, hidden] has its samples second; an image
    [1, 1, 64, width] exported with a fixed batch of 1 has them first); None for a scalar, which is fed whole
    to every run."""
    if shape is None or len(shape) == 0:
        return None
    def fixed(d) -> bool:
        return isinstance(d, int) and d >= 0
    if not fixed(shape[0]) or shape[0] == 1:
        return 0
    return next((axis for axis, d in enumerate(shape) if not fixed(d)), 0)


def sample_axes(values) -> dict[str, int | None]:
    """``sample_axis`` of each of a session's inputs or outputs (``session.get_inputs()``) or of
    ``(name, shape, ...)`` specs, by name. When some of them have a dynamic dimension, those with none (all
    dims fixed) hold no samples: they are fed whole, like scalars; so are all of them when every one is fixed
    and their first dims differ (a Scan's initial state [1, H] beside its sequence [T, 1, D])."""
    shapes = {v.name: v.shape for v in values} if values and hasattr(values[0], "shape") else {s[0]: s[1] for s in values}
    fixed = {name for name, shape in shapes.items() if shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)}
    dynamic = any(shape for name, shape in shapes.items() if name not in fixed)
    whole = fixed if dynamic else fixed if len({shapes[name][0] for name in fixed if shapes[name]}) > 1 else set()
    return {name: None if name in whole else sample_axis(shape) for name, shape in shapes.items()}


def count_samples(arrays: dict[str, np.ndarray], axes: dict[str, int | None]) -> int:
    """The sample count of ``arrays`` (samples on each input's axis in ``axes``, default 0; scalars count none);
    1 when every array is a scalar. Raises CalibrationError when the inputs disagree."""
    counts = {name: array.shape[axes.get(name, 0)] for name, array in arrays.items()
              if np.ndim(array) and axes.get(name, 0) is not None}
    if len(set(counts.values())) > 1:
        raise CalibrationError("the inputs hold different sample counts: " + ", ".join(f"{n} {c}" for n, c in counts.items()))
    return next(iter(counts.values()), 1)


def take_samples(arrays: dict[str, np.ndarray], rows, axes: dict[str, int | None]) -> dict[str, np.ndarray]:
    """``arrays`` restricted to the samples ``rows`` (indices or a slice) on each array's sample axis in ``axes``
    (default 0); scalars and arrays whose axis is None are kept whole."""
    out = {}
    for name, array in arrays.items():
        axis = axes.get(name, 0)
        if not np.ndim(array) or axis is None:
            out[name] = array
        elif isinstance(rows, slice):
            out[name] = array[(slice(None),) * axis + (rows,)]
        else:
            out[name] = np.take(array, rows, axis=axis)
    return out


class BatchStore:
    """Values kept per batch (name -> array), for ``batches`` batches (the sequential walk's frontier, a budget
    trial's boundary values): in memory while they take at most ``limit`` bytes in all, each further batch's
    written to a temporary folder (``tempfile``'s, so TMPDIR; one ``.npy`` file per value, numpy's own format: the
    same bytes come back) and read back when that batch is asked for. The folder is removed by ``close`` (callers
    call it in a ``finally``: also on an error or SIGTERM, which the CLI turns into SystemExit) or, failing that,
    when the store is garbage-collected or the interpreter exits (weakref.finalize)."""

    def __init__(self, batches: int, limit: int) -> None:
        self.limit, self.batches = limit, batches
        self.memory: dict[int, dict[str, np.ndarray]] = {b: {} for b in range(batches)}
        self.on_disk: dict[int, dict[str, tuple]] = {}  # batch -> name -> (file, dtype, shape)
        self.folder: str | None = None
        self.held = 0  # bytes in memory
        self.spilled = 0  # batches written to disk so far (for tests and logs)
        self._finalizer = None

    def get(self, b: int) -> dict[str, np.ndarray]:
        if b in self.memory:
            return dict(self.memory[b])
        return {name: np.load(path) for name, (path, _, _) in self.on_disk[b].items()}

    def types(self) -> dict[str, np.ndarray]:
        """Arrays with the dtypes and ranks of the first batch's values, holding nothing (scalars: one zero), for
        the callers that type a model's inputs from them."""
        if 0 in self.memory:
            shapes = {name: (np.asarray(value).dtype, np.shape(value)) for name, value in self.memory[0].items()}
        else:
            shapes = {name: (dtype, shape) for name, (_, dtype, shape) in self.on_disk.get(0, {}).items()}
        return {name: np.zeros((), dtype) if not shape else np.empty((0,) + tuple(shape[1:]), dtype)
                for name, (dtype, shape) in shapes.items()}

    def put(self, b: int, values: dict[str, np.ndarray]) -> None:
        """``values`` become batch ``b``'s (replacing what it held)."""
        self._forget(b)
        size = sum(np.asarray(v).nbytes for v in values.values())
        if self.held + size <= self.limit:
            self.memory[b] = dict(values)
            self.held += size
            return
        if self.folder is None:
            self.folder = tempfile.mkdtemp(prefix="onnxcomp-frontier-")
            self._finalizer = weakref.finalize(self, _remove_folder, self.folder)
        files = {}
        for index, (name, value) in enumerate(values.items()):
            path = os.path.join(self.folder, f"{b}-{self.spilled}-{index}.npy")
            value = np.asarray(value)
            np.save(path, value, allow_pickle=False)
            files[name] = (path, value.dtype, value.shape)
        self.on_disk[b] = files
        self.spilled += 1

    def _forget(self, b: int) -> None:
        if b in self.memory:
            self.held -= sum(np.asarray(v).nbytes for v in self.memory.pop(b).values())
        for path, _, _ in self.on_disk.pop(b, {}).values():
            os.remove(path)

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()


def _remove_folder(folder: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _fixed_batches(session, names=None) -> set[int]:
    """The batch sizes the inputs of ``session`` (of ``names``, default all) fix (every dimension fixed)."""
    fixed = set()
    for value in session.get_inputs():
        if names is not None and value.name not in names:
            continue
        axis = sample_axis(value.shape)
        size = value.shape[axis] if axis is not None else None
        if isinstance(size, int) and size > 0:
            fixed.add(size)
    return fixed


def accepted_batch(session: ort.InferenceSession, wanted: int, count: int | None = None, names=None) -> int:
    """The batch size to feed ``session``: ``wanted``, unless an input (of ``names``, default all) fixes every
    dimension (``sample_axis`` is then 0), in which case its first. With ``count`` (the samples to feed), a count the fixed size does not divide
    is refused with a CalibrationError naming the sizes."""
    fixed = _fixed_batches(session, names)
    if not fixed:
        return wanted
    if len(fixed) > 1:
        raise CalibrationError(f"the model's inputs fix different batch sizes {sorted(fixed)}; onnxcomp cannot feed them samples")
    size = fixed.pop()
    if count is not None and count % size:
        raise CalibrationError(f"the model takes batches of exactly {size} samples; {count} samples do not divide into them: "
                               f"give a multiple of {size}")
    return size


def activation_bytes(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> int | None:
    """The bytes of every value the main graph's nodes produce on ``feeds`` (one run, optimisations off), plus the
    feeds': an upper bound of what onnxruntime holds for that run (its arena reuses a buffer once nothing reads
    it; onnxcomp's probes ask for many values, which it keeps). None when the model does not run so (a node output
    that is no tensor, e.g. a sequence): the caller then keeps its batch."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    graph_inputs = {i.name for i in model.graph.input}
    names = list(dict.fromkeys(out for node in model.graph.node for out in node.output if out and out not in graph_inputs))
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    try:
        session = _session(probe)
        reads = {i.name for i in session.get_inputs()}
        values = session.run(None, {n: v for n, v in feeds.items() if n in reads})
        return int(sum(np.asarray(v).nbytes for v in values) + sum(np.asarray(v).nbytes for v in feeds.values()))
    except Exception:  # onnxruntime's own error types, or outputs numpy cannot hold: no bound
        return None


def bounded_batch(model: onnx.ModelProto, data: dict[str, np.ndarray], axes: dict[str, int | None], wanted: int,
                  *, runs: int = 1, limit: int | None = None) -> int:
    """``wanted``, or fewer samples (at least one) when ``wanted`` samples of ``data`` (samples on ``axes``) would
    make ``model`` produce more than ``limit`` bytes (default ACTIVATION_BYTES) / ``runs`` (the models the caller
    runs per batch, each with its own values) of values in one run: the bytes of one sample's run
    (``activation_bytes`` on the first sample) times the samples. For a model whose batch the caller left free
    (accepted_batch); a model whose inputs fix the batch keeps it. A smaller batch changes the order in which
    float sums over the samples are taken (the statistics, in their last bits), never which samples are used."""
    limit = (ACTIVATION_BYTES if limit is None else limit) // runs
    if wanted <= 1 or _fixed_batches(_DeclaredSession([_Declared(name, shape) for name, shape in _declared_shapes(model)
                                                          if name in data])):
        return wanted
    one = activation_bytes(model, take_samples(data, slice(0, 1), axes))
    if one is None or one * wanted <= limit:
        return wanted
    size = max(1, limit // max(one, 1))
    logging.getLogger("onnxcomp").info("batches of %d samples instead of %d: one sample's run produces %.1f MiB of values "
                                       "(at most %.0f MiB a batch)", size, wanted, one / 2**20, limit / 2**20)
    return size


def _declared_shapes(model: onnx.ModelProto) -> list[tuple[str, list]]:
    from onnxcomp.pipeline.evaluate import model_specs
    return [(name, shape) for name, shape, _ in model_specs(model)]


def run_batched(session: ort.InferenceSession, feeds: dict[str, np.ndarray], batch: int = 256,
                outputs: list[str] | None = None, extra: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """``session``'s outputs on ``feeds`` (arrays with samples on each input's ``sample_axis``, the first unless
    the declared shape says otherwise), computed in batches the model accepts (accepted_batch) and concatenated
    on each output's sample axis; ``extra`` feeds and scalar feeds are passed whole to every run. Outputs without a batch
    axis (scalars) come from the first run."""
    runs = [session.run(outputs, {**part, **(extra or {})}) for part in feed_batches(session, feeds, batch)]
    return join_batches(session, runs, outputs)


def feed_batches(session: ort.InferenceSession, feeds: dict[str, np.ndarray], batch: int = 256) -> list[dict[str, np.ndarray]]:
    """The feeds of ``run_batched``'s runs, in order: ``feeds`` cut into batches the model accepts on each input's
    sample axis, scalar feeds whole in each."""
    axes = sample_axes([i for i in session.get_inputs() if i.name in feeds])
    batched = {k: v for k, v in feeds.items() if np.ndim(v) and axes.get(k, 0) is not None}  # scalars go whole to each run
    whole = {k: v for k, v in feeds.items() if k not in batched}
    count = count_samples(batched, axes) if batched else 1
    batch = accepted_batch(session, batch, count, set(batched))
    return [{**take_samples(batched, slice(start, start + batch), axes), **whole} for start in range(0, count, batch)]


def join_batches(session: ort.InferenceSession, runs: list[list], outputs: list[str] | None = None) -> list[np.ndarray]:
    """The outputs of ``runs`` (one ``session.run(outputs, ...)`` result per batch of ``feed_batches``) joined on
    each output's sample axis; outputs without one (scalars) from the first run."""
    declared = {o.name: o.shape for o in session.get_outputs()}
    names = outputs or list(declared)

    def output_axis(name: str, value) -> int:
        shape = declared.get(name)
        axis = sample_axis(shape) if shape is not None and len(shape) == np.ndim(value) else 0
        return 0 if axis is None else axis
    return [np.concatenate([np.asarray(r[i]) for r in runs], axis=output_axis(names[i], runs[0][i]))
            if np.ndim(runs[0][i]) else np.asarray(runs[0][i]) for i in range(len(runs[0]))]


def _session(model: onnx.ModelProto, externals: dict | None = None) -> ort.InferenceSession:
    """A session on ``model`` (optimizations off: every tensor stays observable). ``externals`` maps the names of
    initializers stored as external data to functions reading their values (numpy arrays): those of the main graph
    are handed to onnxruntime as they are (SessionOptions.add_external_initializers), those inside subgraphs are
    written into the model's copy; both live only as long as the session."""
    options = quiet_session_options()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor observable
    held = []
    if externals:
        from onnxcomp.passes.model_io import graphs_of
        names, values = [], []
        for depth, graph in enumerate(graphs_of(model.graph)):
            for tensor in graph.initializer:
                if tensor.data_location != onnx.TensorProto.EXTERNAL or tensor.name not in externals:
                    continue
                array = np.ascontiguousarray(externals[tensor.name]())
                native = tensor.data_type != onnx.TensorProto.BFLOAT16 and \
                    array.dtype == onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
                if depth == 0 and native:
                    names.append(tensor.name)
                    values.append(ort.OrtValue.ortvalue_from_numpy(array))
                    held.append(array)
                else:  # a subgraph's (or a type numpy does not hold): its bytes go into the model
                    del tensor.external_data[:]
                    tensor.data_location = onnx.TensorProto.DEFAULT
                    tensor.raw_data = array.tobytes()
        if names:
            options.add_external_initializers(names, values)
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types
        raise CalibrationError(f"onnxruntime cannot run the model for calibration: {error}") from error
    session._onnxcomp_held = held  # the arrays onnxruntime reads the external initializers from
    return session


def names_read(node: onnx.NodeProto) -> set[str]:
    """The values ``node`` reads: its inputs and every name its subgraphs (If, Loop, Scan bodies) read, which
    includes the outer-scope values they capture."""
    names = set(node.input)
    for attribute in node.attribute:
        for graph in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
            for inner in graph.node:
                names |= names_read(inner)
    return names


def needed_nodes(graph: onnx.GraphProto, outputs: list[str]) -> list[onnx.NodeProto]:
    """The nodes of ``graph`` (in their order) that ``outputs`` depend on. onnxruntime runs every node of a
    graph whatever the requested outputs, so a probe for an early layer's input would compute the whole model."""
    producer = {name: i for i, node in enumerate(graph.node) for name in node.output if name}
    keep, todo = set(), [producer[name] for name in outputs if name in producer]
    while todo:
        index = todo.pop()
        if index in keep:
            continue
        keep.add(index)
        todo += [producer[name] for name in names_read(graph.node[index]) if name in producer]
    return [node for i, node in enumerate(graph.node) if i in keep]


def _probe_session(model: onnx.ModelProto, wanted: list[str], externals: dict | None = None) -> ort.InferenceSession:
    """A session computing the values ``wanted`` (and no node they do not depend on), unoptimised; ``externals``:
    see _session."""
    return _session(probe_model(model, wanted), externals)


def probe_model(model: onnx.ModelProto, wanted: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are the values ``wanted`` (its first output if they are all graph
    inputs), without the nodes and initializers those do not need."""
    graph_inputs = {i.name for i in model.graph.input}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    for name in wanted:
        if name not in graph_inputs:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    if not probe.graph.output:  # every layer reads a graph input: still need one output to run
        probe.graph.output.append(model.graph.output[0])
    kept = needed_nodes(probe.graph, [o.name for o in probe.graph.output])
    if len(kept) < len(probe.graph.node):
        del probe.graph.node[:]
        probe.graph.node.extend(kept)
        used = set().union(*(names_read(node) for node in kept)) if kept else set()
        initializers = [t for t in probe.graph.initializer if t.name in used or t.name in graph_inputs]
        del probe.graph.initializer[:]
        probe.graph.initializer.extend(initializers)
    return probe


@dataclass
class Segment:
    """Consecutive nodes of the main graph run by one session (collect_segments)."""

    nodes: list[int]  # node positions in the graph
    carried: list[str]  # tensors earlier segments produce that these nodes read
    outputs: list[str]  # tensors these nodes produce that later segments read or a layer observes
    initializers: list[str]
    external_bytes: int = 0


def plan_segments(model: onnx.ModelProto, wanted: set[str], external_bytes: dict[str, int],
                  limit: int) -> list[Segment]:
    """Split the main graph's nodes (in their topological order) into segments whose external-data initializers
    (``external_bytes``: bytes by name) sum to at most ``limit`` each (a node alone may exceed it)."""
    graph = model.graph
    reads = [names_read(node) - {''} for node in graph.node]
    groups, current, held, size = [], [], set(), 0
    for position, names in enumerate(reads):
        new = {n for n in names if n in external_bytes and n not in held}
        extra = sum(external_bytes[n] for n in new)
        if current and size + extra > limit:
            groups.append((current, size))
            current, held, size = [], set(), 0
            new = {n for n in names if n in external_bytes}
            extra = sum(external_bytes[n] for n in new)
        current.append(position)
        held |= new
        size += extra
    if current or not groups:
        groups.append((current, size))
    producer = {out: g for g, (positions, _) in enumerate(groups) for p in positions for out in graph.node[p].output if out}
    last_read = {}
    for g, (positions, _) in enumerate(groups):
        for p in positions:
            for name in reads[p]:
                last_read[name] = g
    initializers = {t.name for t in graph.initializer}
    segments = []
    for g, (positions, size) in enumerate(groups):
        read = set().union(*(reads[p] for p in positions)) if positions else set()
        made = [out for p in positions for out in graph.node[p].output if out]
        segments.append(Segment(
            positions, sorted(n for n in read if producer.get(n, g) < g),
            [out for out in made if last_read.get(out, -1) > g or out in wanted],
            sorted(n for n in read if n in initializers and n not in producer), size))
    return segments


def _segment_model(model: onnx.ModelProto, segment: Segment, carried: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The segment's nodes as a model: the graph inputs they read, the carried tensors (typed from ``carried``,
    shapes left open) and their initializers in, ``segment.outputs`` out."""
    graph = model.graph
    part = onnx.ModelProto(ir_version=model.ir_version)
    part.opset_import.extend(model.opset_import)
    part.functions.extend(model.functions)
    read = set().union(*(names_read(graph.node[p]) for p in segment.nodes)) if segment.nodes else set()
    part.graph.name = graph.name
    part.graph.node.extend(graph.node[p] for p in segment.nodes)
    wanted_initializers = set(segment.initializers)
    part.graph.initializer.extend(t for t in graph.initializer if t.name in wanted_initializers)
    part.graph.input.extend(i for i in graph.input if i.name in read and i.name not in wanted_initializers)
    for name in segment.carried:
        value = np.asarray(carried[name])
        part.graph.input.append(onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(value.dtype), None))
    outputs = segment.outputs or [graph.node[segment.nodes[-1]].output[0]]
    part.graph.output.extend(onnx.ValueInfoProto(name=name) for name in outputs)
    return part


@dataclass
class _Declared:  # what accepted_batch and sample_axes read from a session input
    name: str
    shape: list


def _observe(stats: dict, layers: dict[str, LayerInput], values: dict, samples: int, threshold: float, keep_gram: bool,
             shared: dict, original_values: dict | None = None, original_gram: bool = True,
             total: int | None = None) -> None:
    """Accumulate the statistics of ``layers`` from this batch's ``values`` (layers reading the same tensor the
    same way share one LayerStatistics, filled once). ``original_gram`` False: with ``original_values``, the
    cross terms only (LayerStatistics.add_original's ``with_gram``). ``total``: the samples of the whole pass,
    which caps the rows X^T X takes (gram_subset); None: every row."""
    done = set()
    for layer, spec in layers.items():
        key = (spec.tensor, spec.layout == "conv", spec.kernel, spec.strides, spec.pads, spec.dilations)
        if original_values is None and layer not in stats and key in shared:
            stats[layer] = shared[key]
        if original_values is None and key in done:
            continue
        x = _samples_first(np.asarray(values[spec.tensor]), spec, samples, layer)
        original = None if original_values is None else \
            _samples_first(np.asarray(original_values[spec.tensor]), spec, samples, layer)
        per_sample = positions_per_sample(x, spec) if x.ndim >= 2 and x.shape[0] == samples else 0
        sampled = per_sample > ROW_SAMPLE_POSITIONS
        weight = per_sample / ROW_SAMPLE_POSITIONS if sampled else 1.0
        chunks = _row_chunks(x, spec, samples)
        for start, stop in chunks:
            whole = len(chunks) == 1
            first = stats[layer].samples if layer in stats else 0  # the sample's index: the seed of its positions
            positions = sampled_positions(per_sample, stop - start, spec.tensor, first) if sampled else None
            rows = input_rows(x if whole else x[start:stop], spec, positions)
            if layer not in stats:
                stats[layer] = LayerStatistics(rows.shape[1], keep_gram=keep_gram)
                if original_values is None:
                    shared[key] = stats[layer]
            count = samples if whole else stop - start
            subset = gram_subset(count, len(rows) // count, rows.shape[1], total, spec.tensor, first) \
                if len(rows) % count == 0 else None
            if original is not None and subset is None:  # add and add_original both read them as float64: once
                rows = rows.astype(np.float64, copy=False)
            stats[layer].add(rows, count, threshold, weight, subset)
            if original is not None:
                stats[layer].add_original(rows, input_rows(original if whole else original[start:stop], spec, positions),
                                          weight, original_gram, subset)
        done.add(key)


def _row_chunks(x: np.ndarray, spec: LayerInput, samples: int) -> list[tuple[int, int]]:
    """Sample ranges of ``x`` (samples first) whose input rows take at most ROW_CHUNK_BYTES as float64 (at least
    one sample each): a convolution's im2col rows are its input times the kernel's area over the stride's, and the
    statistics hold a few float64 copies of them at once (8 GB and more for 24 pages of 480x640 before)."""
    if x.ndim < 2 or samples <= 1 or x.shape[0] != samples:
        return [(0, samples)]
    features = x.shape[1] * spec.kernel[0] * spec.kernel[1] if spec.layout == "conv" else x.shape[-1]
    per_sample = min(positions_per_sample(x, spec), ROW_SAMPLE_POSITIONS) * features * 8  # rows kept, sampled or not
    step = max(1, ROW_CHUNK_BYTES // max(per_sample, 1))
    return [(start, min(start + step, samples)) for start in range(0, samples, step)]


def _samples_first(x: np.ndarray, spec: LayerInput, samples: int, layer: str) -> np.ndarray:
    """A MatMul/Gemm input with its sample axis first. A layer may read a tensor whose samples sit on another axis
    than the first (a recurrent model's [time, batch, features] sequence before its classifier): that axis is moved
    first (the rows, and so the Gram matrix, stay the same; per-sample counts need it first). The first axis that
    is not the features' and holds ``samples`` entries is taken; a batch of one sample without such an axis (its
    rows flattened to [rows, features]) gets a leading one."""
    if spec.layout == "conv" or x.ndim < 2 or x.shape[0] == samples:
        return x
    axis = next((a for a in range(x.ndim - 1) if x.shape[a] == samples), None)
    if axis is None and samples == 1:  # one sample (a model fed one at a time) whose rows were flattened: all its own
        return x[None]
    if axis is None:
        raise CalibrationError(f"the input of {layer} has no axis of {samples} samples; activation-aware pruning cannot use it")
    return np.moveaxis(x, axis, 0)


def collect_segments(model: onnx.ModelProto, layers: dict[str, LayerInput], data: dict[str, np.ndarray], *,
                     batch: int = 64, threshold: float = 0.0, keep_gram: bool = True, externals: dict | None = None,
                     external_bytes: dict[str, int] | None = None, limit: int | None = None):
    """Run ``model`` on ``data`` and yield, after each segment (plan_segments; one for a model whose external
    data, ``external_bytes`` by initializer name, fits ``limit``), the statistics of the layers whose inputs that
    segment produced (dict layer -> LayerStatistics). ``externals`` reads the external initializers (see _session);
    a segment's session and weights are released before its statistics are yielded."""
    wanted = sorted({spec.tensor for spec in layers.values()})
    external_bytes = external_bytes or {}
    limit = SEGMENT_BYTES if limit is None else limit
    shared: dict = {}
    if sum(external_bytes.values()) <= limit:  # one session for the whole model
        probe = probe_model(model, wanted)
        session = _session(probe, externals)
        names = [o.name for o in session.get_outputs()]
        input_names = [i.name for i in session.get_inputs()]
        axes = sample_axes([i for i in session.get_inputs() if i.name in data])
        total = count_samples({n: data[n] for n in input_names}, axes)
        size = accepted_batch(session, batch, total, set(data))
        if not externals:  # measuring would read every external weight once more: those models keep the batch
            size = bounded_batch(probe, {n: data[n] for n in input_names}, axes, size)
        stats: dict[str, LayerStatistics] = {}
        for start in progress.track(range(0, total, size), "calibration batches"):
            feeds = take_samples({n: data[n] for n in input_names}, slice(start, start + size), axes)
            values = dict(zip(names, session.run(None, feeds)))
            values.update(feeds)
            _observe(stats, layers, values, count_samples(feeds, axes), threshold, keep_gram, shared, total=total)
        del session
        yield stats
        return
    from onnxcomp.pipeline.evaluate import model_specs
    declared = [_Declared(name, shape) for name, shape, _ in model_specs(model) if name in data]
    axes = sample_axes(declared)
    inputs = {d.name: data[d.name] for d in declared}
    total = count_samples(inputs, axes)
    size = accepted_batch(_DeclaredSession(declared), batch, total, set(data))
    starts = list(range(0, total, size))
    feeds = [take_samples(inputs, slice(start, start + size), axes) for start in starts]
    samples = [count_samples(f, axes) for f in feeds]
    carried: list[dict[str, np.ndarray]] = [{} for _ in starts]
    segments = plan_segments(model, set(wanted), external_bytes, limit)
    graph_inputs = set(inputs)
    later = [set().union(*(set(s.carried) for s in segments[i + 1:])) for i in range(len(segments))]
    for index, segment in enumerate(progress.track(segments, "calibration segments")):
        observed = {layer: spec for layer, spec in layers.items()
                    if spec.tensor in segment.outputs or (index == 0 and spec.tensor in graph_inputs)}
        stats = {}
        if segment.nodes:
            session = _session(_segment_model(model, segment, carried[0]), externals)
            names = [o.name for o in session.get_outputs()]
            reads = {i.name for i in session.get_inputs()}
            for b in range(len(starts)):
                run_feeds = {n: v for n, v in {**feeds[b], **carried[b]}.items() if n in reads}
                values = dict(zip(names, session.run(None, run_feeds)))
                values.update(feeds[b])
                if observed:
                    _observe(stats, observed, values, samples[b], threshold, keep_gram, shared, total=total)
                carried[b] = {n: v for n, v in {**carried[b], **values}.items() if n in later[index] and n not in graph_inputs}
            del session
        yield stats


class _DeclaredSession:  # the part of an InferenceSession accepted_batch reads
    def __init__(self, declared):
        self.declared = declared

    def get_inputs(self):
        return self.declared


def collect(model: onnx.ModelProto, layers: dict[str, LayerInput], data: dict[str, np.ndarray], *,
            batch: int = 64, threshold: float = 0.0, keep_gram: bool = True,
            original: onnx.ModelProto | None = None, externals: dict | None = None,
            external_bytes: dict[str, int] | None = None) -> dict[str, LayerStatistics]:
    """Run ``model`` on ``data`` (arrays keyed by input name) and gather each layer's input statistics.

    With ``original`` (sequential mode: ``model`` holds already-compressed upstream weights), the same
    layers' inputs in the original model are captured too, for the cross terms of the reconstruction.
    ``externals``/``external_bytes``: see collect_segments (not with ``original``)."""
    if original is None:
        stats: dict[str, LayerStatistics] = {}
        for part in collect_segments(model, layers, data, batch=batch, threshold=threshold, keep_gram=keep_gram,
                                     externals=externals, external_bytes=external_bytes):
            stats.update(part)
        return stats
    wanted = sorted({spec.tensor for spec in layers.values()})
    probe = probe_model(model, wanted)
    session = _session(probe)
    reference = _probe_session(original, wanted)
    names = [o.name for o in session.get_outputs()]
    input_names = [i.name for i in session.get_inputs()]
    axes = sample_axes([i for i in session.get_inputs() if i.name in data])
    total = count_samples({n: data[n] for n in input_names}, axes)
    batch = bounded_batch(probe, {n: data[n] for n in input_names}, axes, accepted_batch(session, batch, total, set(data)))
    stats = {}
    for start in progress.track(range(0, total, batch), "calibration batches"):
        feeds = take_samples({n: data[n] for n in input_names}, slice(start, start + batch), axes)
        values = dict(zip(names, session.run(None, feeds)))
        values.update(feeds)
        original_values = dict(zip([o.name for o in reference.get_outputs()], reference.run(None, feeds)))
        original_values.update(feeds)
        _observe(stats, layers, values, count_samples(feeds, axes), threshold, True, {}, original_values, total=total)
    return stats
