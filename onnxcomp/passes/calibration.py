"""Activation statistics from calibration data run through onnxruntime (numpy; no graph editing here).

For a layer computing ``y = W x`` (rows of W = output units, columns = input features j), the statistics of
its input rows X (MatMul/Gemm: one row per sample and position; Conv: one im2col patch per output pixel,
features ordered channel, kernel row, kernel column, matching W reshaped to [O, C*kh*kw]) are accumulated
batch by batch, so memory is bounded by the statistics, never by the activations:
- ``sum_squares[j] = sum_rows x_j^2``  (Wanda's ||X_j||_2 is its square root)
- ``sum_abs[j] = sum_rows |x_j|``, ``fire_rows[j] = #rows with x_j > threshold``
- ``fire_samples[j] = #samples in which x_j exceeds the threshold at least once``
- ``gram = X^T X`` (for least-squares reconstruction), kept when the layer has at most ``GRAM_LIMIT`` inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from onnxcomp import progress
from onnxcomp.errors import CalibrationError
from onnxcomp.runtime import quiet_session_options

GRAM_LIMIT = 8192


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
    gram: np.ndarray | None = None
    keep_gram: bool = True
    cross: np.ndarray | None = None  # sequential mode: X_c^T X_o (inputs after upstream compression vs original)
    gram_original: np.ndarray | None = None  # sequential mode: X_o^T X_o
    factor_cache: dict | None = None  # a dict keeps the OBS inverse factor of gram (obs.cached_inverse_factor); None: never kept

    def __post_init__(self):
        k = self.features
        self.sum_squares, self.sum_abs = np.zeros(k), np.zeros(k)
        self.fire_rows, self.fire_samples = np.zeros(k), np.zeros(k)
        if self.keep_gram and k <= GRAM_LIMIT:
            self.gram = np.zeros((k, k))

    def add(self, rows: np.ndarray, samples: int, threshold: float) -> None:
        """Accumulate ``rows`` [samples * rows_per_sample, K]."""
        rows = rows.astype(np.float64, copy=False)
        fires = rows > threshold
        self.rows += len(rows)
        self.samples += samples
        self.sum_squares += np.einsum("rk,rk->k", rows, rows)
        self.sum_abs += np.abs(rows).sum(axis=0)
        self.fire_rows += fires.sum(axis=0)
        self.fire_samples += fires.reshape(samples, -1, rows.shape[1]).any(axis=1).sum(axis=0)
        if self.gram is not None:
            self.gram += rows.T @ rows

    def add_original(self, rows: np.ndarray, original: np.ndarray) -> None:
        """Sequential mode: accumulate the cross terms with the original model's rows for the same samples."""
        if self.gram is None:
            return
        rows, original = rows.astype(np.float64, copy=False), original.astype(np.float64, copy=False)
        if self.cross is None:
            self.cross = np.zeros_like(self.gram)
            self.gram_original = np.zeros_like(self.gram)
        self.cross += rows.T @ original
        self.gram_original += original.T @ original

    @property
    def norms(self) -> np.ndarray:
        return np.sqrt(self.sum_squares)


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


def im2col(x: np.ndarray, spec: LayerInput) -> np.ndarray:
    """Patches of a 2-D convolution input [B, C, H, W] as rows [B * OH * OW, C * kh * kw]."""
    kh, kw = spec.kernel
    sh, sw = spec.strides
    dh, dw = spec.dilations
    top, left, bottom, right = spec.pads
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    windows = windows[:, :, ::sh, ::sw, ::dh, ::dw]  # [B, C, OH, OW, kh, kw]
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1] * kh * kw)


def input_rows(x: np.ndarray, spec: LayerInput) -> np.ndarray:
    if spec.layout == "conv":
        return im2col(x, spec)
    return x.reshape(-1, x.shape[-1])


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


def accepted_batch(session: ort.InferenceSession, wanted: int, count: int | None = None, names=None) -> int:
    """The batch size to feed ``session``: ``wanted``, unless an input (of ``names``, default all) fixes every
    dimension (``sample_axis`` is then 0), in which case its first. With ``count`` (the samples to feed), a count the fixed size does not divide
    is refused with a CalibrationError naming the sizes."""
    fixed = set()
    for value in session.get_inputs():
        if names is not None and value.name not in names:
            continue
        axis = sample_axis(value.shape)
        size = value.shape[axis] if axis is not None else None
        if isinstance(size, int) and size > 0:
            fixed.add(size)
    if not fixed:
        return wanted
    if len(fixed) > 1:
        raise CalibrationError(f"the model's inputs fix different batch sizes {sorted(fixed)}; onnxcomp cannot feed them samples")
    size = fixed.pop()
    if count is not None and count % size:
        raise CalibrationError(f"the model takes batches of exactly {size} samples; {count} samples do not divide into them: "
                               f"give a multiple of {size}")
    return size


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


def _probe_session(model: onnx.ModelProto, wanted: list[str]) -> ort.InferenceSession:
    """A session computing the values ``wanted`` (and no node they do not depend on), unoptimised."""
    options = quiet_session_options()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor observable
    try:
        return ort.InferenceSession(probe_model(model, wanted).SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types
        raise CalibrationError(f"onnxruntime cannot run the model for calibration: {error}") from error


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


def collect(model: onnx.ModelProto, layers: dict[str, LayerInput], data: dict[str, np.ndarray], *,
            batch: int = 64, threshold: float = 0.0, keep_gram: bool = True,
            original: onnx.ModelProto | None = None) -> dict[str, LayerStatistics]:
    """Run ``model`` on ``data`` (arrays keyed by input name) and gather each layer's input statistics.

    With ``original`` (sequential mode: ``model`` holds already-compressed upstream weights), the same
    layers' inputs in the original model are captured too, for the cross terms of the reconstruction."""
    wanted = sorted({spec.tensor for spec in layers.values()})
    session = _probe_session(model, wanted)
    reference = _probe_session(original, wanted) if original is not None else None
    names = [o.name for o in session.get_outputs()]
    input_names = [i.name for i in session.get_inputs()]
    axes = sample_axes([i for i in session.get_inputs() if i.name in data])
    total = count_samples({n: data[n] for n in input_names}, axes)
    batch = accepted_batch(session, batch, total, set(data))
    stats: dict[str, LayerStatistics] = {}
    for start in progress.track(range(0, total, batch), "calibration batches"):
        feeds = take_samples({n: data[n] for n in input_names}, slice(start, start + batch), axes)
        values = dict(zip(names, session.run(None, feeds)))
        values.update(feeds)
        if reference is not None:
            original_values = dict(zip([o.name for o in reference.get_outputs()], reference.run(None, feeds)))
            original_values.update(feeds)
        samples = count_samples(feeds, axes)
        for layer, spec in layers.items():
            x = values[spec.tensor]
            if spec.layout != "conv" and x.ndim >= 2 and x.shape[0] != samples:
                raise CalibrationError(f"the input of {layer} does not keep the batch axis first; activation-aware pruning cannot use it")
            rows = input_rows(np.asarray(x), spec)
            if layer not in stats:
                stats[layer] = LayerStatistics(rows.shape[1], keep_gram=keep_gram)
            stats[layer].add(rows, samples, threshold)
            if reference is not None:
                stats[layer].add_original(rows, input_rows(np.asarray(original_values[spec.tensor]), spec))
    return stats
