"""How close the compressed model's outputs stay to the original's: measured after every ``compress`` run.

Both models run in onnxruntime (the output with the onnxcomp library registered) on the same inputs: real
ones (``--fidelity-data``, else the calibration data, at most ``SAMPLES`` samples) or inputs synthesised from the
declared inputs. Per float output and per sample (a row along the first axis when the output has one row per
sample, else the whole output of one run), the cosine similarity a.b / (||a|| ||b||) of original a and
compressed b (for an output a final Sigmoid computes, through shape-only ops: of the Sigmoid's input, the logits,
since a saturated sigmoid hides damage: a map at exactly 0 in float32 on both sides gives no cosine at all. Not
for Softmax: on synthesised inputs a classifier's logits are small and nearly uniform, and their relative error
says nothing; measured on PP-LCNet, logits relative L2 error 0.75 where the probabilities kept cosine 0.999 and
top-1 agreement on real images stayed 1.000); the report
gives their minimum and mean over all outputs and samples, and, for outputs that look
like class scores (float, rank 2, at least 2 columns), the top-1 agreement (share of rows whose argmax is the
same). Below ``WARN_COSINE`` a run prints a warning; ``--min-cosine`` turns the check into a gate.

Synthesised inputs (seeded): a dynamic first dimension gets the sample count, other dynamic dimensions
``DYNAMIC_DIM``; floats are uniform in [0, 1) (an image scaled to [0, 1]; an input shaped like an image batch,
rank 4 with 1, 3 or 4 channels first or last and both other dimensions >= ``IMAGE_MIN``, gets smooth random images
with edges instead of iid noise: ``smooth_images``; inputs named like a recurrent state,
``state``/``h0``/``c0``/``hidden``/``past``/``cache``, are zeros, a model's initial state); integer inputs that index
an embedding table (they reach a Gather's index slot through shape-preserving ops) are uniform over the table's
rows, integer masks (``mask`` in the name) are ones, token type / segment ids zeros. Any other integer or boolean
input (a sample rate, a flag, a count) has no value that can be guessed safely: the measurement is then
``unavailable`` with the input named and how to supply it (``--input-range NAME=LO,HI`` or real inputs).
``--input-shape NAME=D0,D1,..`` fixes an input's shape, ``--input-range NAME=LO,HI`` its value range (integers
inclusive). Random inputs catch gross damage; they do not measure accuracy on real data.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from onnxcomp import parallel
from onnxcomp.core.native import digest
from onnxcomp.passes.calibration import bounded_batch, count_samples, run_batched, sample_axes, take_samples

from onnxcomp.errors import CalibrationError, InvalidOptionError

log = logging.getLogger("onnxcomp")

SAMPLES = 16  # samples compared (real or synthesised)
BATCH = 16
DYNAMIC_DIM = 32  # a dynamic dimension other than the first
WARN_COSINE = 0.99
CONE_MIN_SECONDS = 0.25  # attribute's cones only where the original's run on the feed takes this much CPU time
STATE_NAMES = re.compile(r"(state|hidden|^h0$|^c0$|^h$|^c$|past|cache)", re.IGNORECASE)
ZERO_ID_NAMES = re.compile(r"(token_type|segment)", re.IGNORECASE)
FINAL_ACTIVATIONS = {"Sigmoid"}
SHAPE_ONLY = {"Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze", "Flatten", "Cast"}
IMAGE_MIN = 16
SHAPE_PRESERVING = {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity", "Expand", "Transpose"}


class InputsUnavailable(Exception):
    """The model's inputs cannot be synthesised; the message says which input and how to supply it."""


@dataclass
class Fidelity:
    inputs: str  # "calibration", "data FILE", "synthesised (seed S)", or "" when unavailable
    samples: int = 0
    min_cosine: float | None = None
    mean_cosine: float | None = None
    top1_agreement: float | None = None  # over the class-score outputs; None when none looks like class scores
    outputs: list[dict] = field(default_factory=list)  # per output: name, min_cosine, mean_cosine, top1_agreement
    unavailable: str | None = None  # why fidelity was not measured
    threshold: float = WARN_COSINE

    @property
    def below(self) -> bool:
        return self.min_cosine is not None and not self.min_cosine >= self.threshold

    def line(self) -> str:
        """The one-line summary the CLI prints."""
        if self.unavailable:
            return f"fidelity not measured: {self.unavailable}"
        top1 = "" if self.top1_agreement is None else f", top-1 agreement {100 * self.top1_agreement:.1f}%"
        return (f"fidelity on {self.samples} {self.inputs} inputs: min cosine {self.min_cosine:.4f}, "
                f"mean {self.mean_cosine:.4f}{top1}")

    def to_dict(self) -> dict:
        return asdict(self)


def parse_overrides(shapes=(), ranges=()) -> tuple[dict, dict]:
    """``NAME=D0,D1,..`` and ``NAME=LO,HI`` option values into {name: [dims]} and {name: (lo, hi)}."""
    parsed_shapes, parsed_ranges = {}, {}
    for text in shapes or ():
        name, _, dims = text.rpartition("=")
        try:
            values = [int(d) for d in dims.split(",")]
        except ValueError:
            values = []
        if not name or not values or any(d < 1 for d in values):
            raise InvalidOptionError(f"--input-shape {text!r}: give NAME=D0,D1,... with positive integers, e.g. image=1,3,224,224")
        parsed_shapes[name] = values
    for text in ranges or ():
        name, _, bounds = text.rpartition("=")
        try:
            low, high = (float(b) for b in bounds.split(","))
        except ValueError:
            low = high = math.nan
        if not name or not (math.isfinite(low) and math.isfinite(high)) or low > high:
            raise InvalidOptionError(f"--input-range {text!r}: give NAME=LO,HI with LO <= HI, e.g. sr=16000,16000")
        parsed_ranges[name] = (low, high)
    return parsed_shapes, parsed_ranges


def _gather_rows(model: onnx.ModelProto) -> dict[str, int]:
    """For each graph input: the rows of the embedding table it indexes (through shape-preserving ops), if any."""
    tables = {t.name: t.dims[0] for t in model.graph.initializer if len(t.dims) >= 1}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found = {}
    for value in model.graph.input:
        frontier, seen = [value.name], set()
        while frontier and value.name not in found:
            tensor = frontier.pop()
            seen.add(tensor)
            for node in consumers.get(tensor, []):
                if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == tensor and node.input[0] in tables:
                    found[value.name] = int(tables[node.input[0]])
                elif node.op_type in SHAPE_PRESERVING and node.input[0] == tensor:
                    frontier.extend(o for o in node.output if o not in seen)
    return found


def image_layout(dims: list[int]) -> str | None:
    """"NCHW" or "NHWC" when ``dims`` look like a batch of images (module docstring), else None."""
    if len(dims) != 4:
        return None
    if dims[1] in (1, 3, 4) and min(dims[2], dims[3]) >= IMAGE_MIN:
        return "NCHW"
    if dims[3] in (1, 3, 4) and min(dims[1], dims[2]) >= IMAGE_MIN:
        return "NHWC"
    return None


def smooth_images(rng: np.random.Generator, dims: list[int], layout: str, low: float, high: float) -> np.ndarray:
    """Random images [N, C, H, W] (or NHWC) in [low, high): a smooth field (uniform values on a grid 8x coarser,
    bilinearly interpolated) half covered by 6 random axis-aligned rectangles of uniform random value per
    channel, so that neighbouring pixels correlate and edges occur as in photographs and documents. Real images
    are like that; iid noise is not, and a model's first layers (edge detectors whose weights sum to about 0)
    answer noise with a different mix of features than images."""
    n, c, h, w = (dims[0], dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[0], dims[3], dims[1], dims[2])
    gh, gw = max(2, h // 8), max(2, w // 8)
    grid = rng.uniform(0.0, 1.0, (n, c, gh, gw))
    ys, xs = np.linspace(0, gh - 1, h), np.linspace(0, gw - 1, w)
    y0, x0 = np.minimum(ys.astype(int), gh - 2), np.minimum(xs.astype(int), gw - 2)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    image = ((1 - wy) * (1 - wx) * grid[:, :, y0][:, :, :, x0] + (1 - wy) * wx * grid[:, :, y0][:, :, :, x0 + 1]
             + wy * (1 - wx) * grid[:, :, y0 + 1][:, :, :, x0] + wy * wx * grid[:, :, y0 + 1][:, :, :, x0 + 1])
    for i in range(n):
        for _ in range(6):
            top, left = rng.integers(0, h), rng.integers(0, w)
            bottom, right = top + rng.integers(1, max(2, h // 2)), left + rng.integers(1, max(2, w // 2))
            image[i, :, top:bottom, left:right] = rng.uniform(0.0, 1.0, (c, 1, 1))
    image = low + (high - low) * np.minimum(image, np.nextafter(1.0, 0.0))
    return image if layout == "NCHW" else image.transpose(0, 2, 3, 1)


def synthesise(model: onnx.ModelProto, samples: int = SAMPLES, seed: int = 0, shapes: dict | None = None,
               ranges: dict | None = None) -> list[dict[str, np.ndarray]]:
    """Feeds (one dict per run) covering ``samples`` samples, from the declared inputs (module docstring).

    Raises InputsUnavailable naming the first input whose valid values cannot be guessed."""
    from onnxcomp.pipeline.evaluate import model_specs
    shapes, ranges = shapes or {}, ranges or {}
    specs = model_specs(model)
    unknown = (set(shapes) | set(ranges)) - {name for name, _, _ in specs}
    if unknown:
        raise InvalidOptionError(f"--input-shape/--input-range name no model input: {', '.join(sorted(unknown))} "
                                 f"(inputs: {', '.join(n for n, _, _ in specs)})")
    rows = _gather_rows(model)
    plans = []
    for name, shape, dtype in specs:
        if name in shapes:
            if len(shapes[name]) != len(shape):
                raise InvalidOptionError(f"--input-shape {name}: the model declares rank {len(shape)}, got {len(shapes[name])} dims")
            dims = list(shapes[name])
            batched = False
        else:
            batched = bool(shape) and shape[0] is None
            dims = [samples if i == 0 and batched else (d if d is not None else DYNAMIC_DIM) for i, d in enumerate(shape)]
        if name in ranges:
            kind = ("range", ranges[name])
        elif dtype.kind == "f":
            kind = ("zeros", None) if STATE_NAMES.search(name) else ("range", (0.0, 1.0))
        elif dtype.kind in "iu" and "mask" in name.lower():
            kind = ("ones", None)
        elif dtype.kind in "iu" and ZERO_ID_NAMES.search(name):
            kind = ("zeros", None)
        elif dtype.kind in "iu" and name in rows:
            kind = ("range", (0, rows[name] - 1))
        else:
            what = "scalar" if not shape else f"shape {['?' if d is None else d for d in shape]}"
            raise InputsUnavailable(f"input {name!r} ({dtype.name}, {what}) has no value that can be guessed safely; "
                                    f"give its values with --input-range {name}=LO,HI (e.g. {name}=16000,16000 for a sample rate) "
                                    "or real inputs with --fidelity-data FILE.npz")
        plans.append((name, dims, dtype, kind, batched))
    per_run = max([dims[0] for _, dims, _, _, batched in plans if batched] or [1])
    runs = max(1, math.ceil(samples / per_run)) if not any(batched for *_, batched in plans) else 1
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(runs):
        feed = {}
        for name, dims, dtype, (kind, bounds), _ in plans:
            if kind == "zeros":
                feed[name] = np.zeros(dims, dtype)
            elif kind == "ones":
                feed[name] = np.ones(dims, dtype)
            elif dtype.kind == "f" and image_layout(dims):
                feed[name] = smooth_images(rng, dims, image_layout(dims), bounds[0], bounds[1]).astype(dtype)
            elif dtype.kind == "f":
                feed[name] = rng.uniform(bounds[0], bounds[1], dims).astype(dtype)
            elif dtype.kind == "b":
                feed[name] = rng.integers(int(bounds[0]), int(bounds[1]) + 1, dims).astype(bool)
            else:
                feed[name] = rng.integers(int(bounds[0]), int(bounds[1]) + 1, dims, dtype=np.int64).astype(dtype)
        feeds.append(feed)
    return feeds


def batched_feeds(data: dict[str, np.ndarray], samples: int = SAMPLES, batch: int = BATCH,
                  axes: dict[str, int | None] | None = None) -> list[dict[str, np.ndarray]]:
    """Real inputs (samples on each input's axis in ``axes``, default the first; scalars whole) as feeds of at
    most ``batch`` samples, ``samples`` in all."""
    axes = axes or {}
    counted = [v.shape[axes.get(k, 0)] for k, v in data.items() if np.ndim(v) and axes.get(k, 0) is not None]
    count = min(min(counted) if counted else (1 if data else 0), samples)
    return [take_samples(data, slice(start, min(start + batch, count)), axes) for start in range(0, count, batch)]


def logit_taps(model: onnx.ModelProto) -> dict[str, str]:
    """Graph output name -> the input of the final Sigmoid computing it through shape-only ops
    (``FINAL_ACTIVATIONS``, ``SHAPE_ONLY``), for the outputs that have one."""
    producer = {o: n for n in model.graph.node for o in n.output}
    taps = {}
    for value in model.graph.output:
        name = value.name
        while name in producer and producer[name].op_type in SHAPE_ONLY and producer[name].input:
            name = producer[name].input[0]
        node = producer.get(name)
        if node is not None and node.op_type in FINAL_ACTIVATIONS and node.input and node.input[0]:
            taps[value.name] = node.input[0]
    return taps


def _session(path: str, extra_outputs=(), model: onnx.ModelProto | None = None) -> ort.InferenceSession:
    """A single-threaded CPU session; the custom-op library is registered when the model uses onnxcomp ops (an
    already compressed input, or the output). ``extra_outputs`` (tensor names) are added as graph outputs after the
    model's own (in a copy held in memory; external data still read from the model's folder). ``model``: the file's
    graph as already parsed (``onnx.load(path, load_external_data=False)``), so it is not parsed again; it is
    left as it was."""
    from onnxcomp.runtime import DOMAIN, session_options
    model = model if model is not None else onnx.load(path, load_external_data=False)
    custom = any(o.domain == DOMAIN for o in model.opset_import)
    options = session_options() if custom else ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not extra_outputs:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    listed = len(model.graph.output)
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in extra_outputs if name not in present)
    try:
        serialized = model.SerializeToString()
    finally:
        del model.graph.output[listed:]  # the caller's model (or this function's own copy) as it was
    options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                     os.path.dirname(os.path.abspath(path)))
    return ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])


def _rows(array: np.ndarray, samples_in_feed: int | None) -> np.ndarray:
    """One row per sample when the output has the feed's samples on its first axis, else one row for the run."""
    array = np.asarray(array, dtype=np.float64)
    if samples_in_feed and array.ndim >= 1 and array.shape[0] == samples_in_feed:
        return array.reshape(samples_in_feed, -1)
    return array.reshape(1, -1)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [rows, n] arrays; two zero rows count as 1, one zero row as 0, a row
    whose original (``a``) holds NaN or Inf is NaN (it says nothing about the compression; callers drop it), a
    non-finite row of ``b`` alone is 0."""
    dot = (a * b).sum(1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = (np.abs(a).sum(1) == 0) & (np.abs(b).sum(1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(norms > 0, dot / np.where(norms > 0, norms, 1), 0.0)
    value = np.where(both_zero, 1.0, value)
    return np.where(np.isfinite(a).all(1), value, np.nan)


def _sessions(original_path: str, compressed_path: str, original: onnx.ModelProto,
              cached: bool = False) -> tuple[ort.InferenceSession | None, ort.InferenceSession, dict[str, str]]:
    """Sessions of both models with the logits of ``logit_taps`` as extra outputs (without them when the output
    does not keep the tapped tensor's name), and the taps used. ``original``: the original's graph, parsed.
    ``cached``: the original's outputs are known already (``compare_runs``' ``reference``): no session of it
    unless the output lacks a tapped tensor (then None for the original's session)."""
    taps = logit_taps(original)
    extra = list(dict.fromkeys(taps.values()))
    reference = None if cached else _session(original_path, extra, original)
    try:
        candidate = _session(compressed_path, extra)
    except Exception:  # onnxruntime's own errors: a tapped tensor the output does not have
        taps, candidate = {}, _session(compressed_path)
        reference = None if cached else _session(original_path, model=original)
    return reference, candidate, taps


def compare_runs(original_path: str, compressed_path: str, feeds: list[dict[str, np.ndarray]], inputs: str,
                 original: onnx.ModelProto | None = None, reference: dict | None = None) -> Fidelity:
    """Run both models on ``feeds`` and compare every float output (module docstring). ``original``: the original
    model as ``onnx.load(original_path, load_external_data=False)`` gives it, when the caller has it (it is parsed
    once then, not once per use; it is not modified). ``reference``: a dict the caller keeps across calls on the
    same original and ``feeds`` (compress's back-off rounds): the original's outputs per feed are stored there
    the first time and read from it afterwards, so the original runs once (its outputs are deterministic: the
    same single-threaded session on the same inputs)."""
    original = original if original is not None else onnx.load(original_path, load_external_data=False)
    stored = reference if reference is not None else {}
    taps = logit_taps(original)

    def known(taps: dict[str, str]) -> bool:  # the original's outputs with these taps are stored, for every feed
        return len(stored.get(tuple(dict.fromkeys(taps.values())), ())) == len(feeds)
    try:
        session, candidate, taps = _sessions(original_path, compressed_path, original, cached=known(taps))
        key = tuple(dict.fromkeys(taps.values()))
        if session is None and _COUNTS + key in stored and not _same_counts(stored[_COUNTS + key], candidate, feeds):
            stored.pop(key)  # stored by store_reference in batches the output's inputs would not take: run again
        if session is None and not known(taps):  # stored with taps the output lacks (the original again, untapped)
            session = _session(original_path, key, original)  # or in other batches
    except Exception as error:  # onnxruntime's own error types: the input itself does not load there
        return Fidelity(inputs, unavailable=f"onnxruntime cannot load the input model ({str(error).strip().splitlines()[0]})")
    if session is not None:
        stored[key] = []  # filled feed by feed below
        stored.pop(_COUNTS + key, None)  # in the batches below
    names = [o.name for o in original.graph.output]
    from onnxcomp.pipeline.verification import class_score_outputs  # verify's rule: top-1 only for class scores
    scores = class_score_outputs(original)
    per_output: dict[str, dict] = {name: {"cos": [], "agree": [], "class_scores": name in scores} for name in names}
    samples = 0
    for index, feed in enumerate(feeds):
        axes = sample_axes([i for i in candidate.get_inputs() if i.name in feed])
        try:
            count = count_samples(feed, axes) if any(np.ndim(v) and axes.get(k, 0) is not None for k, v in feed.items()) else None
            # In batches the model accepts (a fixed batch dimension gets runs of that size).
            # Both models at once, one per core (single-threaded sessions); the original only when not stored.
            runners = [candidate] if session is None else [session, candidate]
            size = _run_size(original, feed, count)
            runs = list(parallel.ordered_map(lambda s: dict(zip([o.name for o in s.get_outputs()],
                                                                run_batched(s, feed, batch=size))), runners))
            if session is not None:
                stored[key].append(runs[0])
            expected, actual = stored[key][index], runs[-1]
        except Exception as error:  # onnxruntime's own error types on feeds the model does not take
            if session is not None:
                stored.pop(key, None)  # nothing half-stored
            return Fidelity(inputs, unavailable=f"running the models on the {inputs} inputs failed "
                            f"({str(error).strip().splitlines()[0]}); give real inputs with --fidelity-data FILE.npz")
        samples += count or 1
        for name in names:
            a, b = np.asarray(expected[name]), np.asarray(actual[name])
            if a.dtype.kind != "f" or a.size == 0:
                continue
            if a.shape != b.shape:
                raise CalibrationError(f"output {name!r} has shape {list(a.shape)} in the original, {list(b.shape)} compressed")
            entry = per_output[name]
            la, lb = (np.asarray(expected[taps[name]]), np.asarray(actual[taps[name]])) if name in taps else (a, b)
            entry["cos"].append(cosines(_rows(la, count), _rows(lb, count)))
            if name in taps:
                entry["logits"] = taps[name]
            if a.ndim == 2 and a.shape[1] >= 2:
                entry["agree"].append(a.argmax(1) == b.argmax(1))
            else:
                entry["class_scores"] = False
    result = Fidelity(inputs, samples)
    all_cos, all_agree = [], []
    for name, entry in per_output.items():
        if not entry["cos"]:
            continue
        values = np.concatenate(entry["cos"])
        values = values[np.isfinite(values)]  # an original output of NaN says nothing about the compression
        if not len(values):
            continue
        top1 = float(np.concatenate(entry["agree"]).mean()) if entry["class_scores"] and entry["agree"] else None
        result.outputs.append({"name": name, "min_cosine": float(values.min()), "mean_cosine": float(values.mean()),
                               "top1_agreement": top1, "compared": entry.get("logits", name)})
        all_cos.append(values)
        if top1 is not None:
            all_agree.append(np.concatenate(entry["agree"]))
    if not all_cos:
        result.unavailable = "the model has no float output to compare"
        return result
    joined = np.concatenate(all_cos)
    result.min_cosine, result.mean_cosine = float(joined.min()), float(joined.mean())
    result.top1_agreement = float(np.concatenate(all_agree).mean()) if all_agree else None
    return result


_COUNTS = ("sample counts",)  # key prefix in compare_runs' ``reference`` of the counts store_reference ran with


def _run_size(original: onnx.ModelProto, feed: dict[str, np.ndarray], count: int | None) -> int:
    """The samples of ``feed`` (``count`` in all) one run takes: all of them up to SAMPLES (the synthesised inputs'
    count: those runs are as before), above that fewer when one run's values would take more than half of
    calibration.ACTIVATION_BYTES (both models run at once; bounded_batch, measured on the original)."""
    if not count or count <= SAMPLES:
        return count or 1
    from onnxcomp.pipeline.evaluate import model_specs
    return bounded_batch(original, feed, sample_axes(model_specs(original)), count, runs=2)


def _feed_counts(session: ort.InferenceSession, feeds: list[dict[str, np.ndarray]]) -> list[int | None]:
    """Per feed, the sample count compare_runs runs it with on ``session`` (None: the feed holds no samples)."""
    counts = []
    for feed in feeds:
        axes = sample_axes([i for i in session.get_inputs() if i.name in feed])
        counts.append(count_samples(feed, axes) if any(np.ndim(v) and axes.get(k, 0) is not None for k, v in feed.items())
                      else None)
    return counts


def _same_counts(counts: list[int | None], session: ort.InferenceSession, feeds: list[dict[str, np.ndarray]]) -> bool:
    try:
        return _feed_counts(session, feeds) == counts
    except CalibrationError:  # inputs that disagree: compare_runs says so when it runs them
        return False


def store_reference(original_path: str, feeds: list[dict[str, np.ndarray]], original: onnx.ModelProto,
                    reference: dict) -> None:
    """The original's outputs on ``feeds`` (with the logit taps as extra outputs), stored in ``reference`` as
    compare_runs stores them, so that compare_runs with the same ``reference`` does not run the original: compress
    calls this on a thread of its own while its first round compresses (the two are independent). The outputs are
    the same numbers compare_runs would compute (the same single-threaded session, feeds and batches; compare_runs
    runs the original again if the output's inputs would batch a feed differently). ``original`` is only read (a
    copy takes the extra outputs). Any failure stores nothing: compare_runs then runs the original itself and
    reports the problem."""
    key = tuple(dict.fromkeys(logit_taps(original).values()))
    try:
        private = None
        if key:  # _session adds the taps to the model it is given for a moment: never to the caller's
            private = onnx.ModelProto()
            private.CopyFrom(original)
        session = _session(original_path, key, private)
        del private
        counts = _feed_counts(session, feeds)
        names = [o.name for o in session.get_outputs()]
        runs = [dict(zip(names, run_batched(session, feed, batch=_run_size(original, feed, count))))
                for feed, count in zip(feeds, counts)]
    except Exception as error:  # onnxruntime's own error types: compare_runs meets them again and says so
        log.debug("the original's outputs not stored ahead (%s)", error)
        return
    reference[_COUNTS + key] = counts
    reference[key] = runs


def prepare(original_path: str, *, data: str | dict | None = None, calib: dict | None = None, shapes: dict | None = None,
            ranges: dict | None = None, seed: int = 0, samples: int = SAMPLES,
            model: onnx.ModelProto | None = None) -> tuple[list[dict[str, np.ndarray]], str, str | None]:
    """(feeds, what they are, why none) for the fidelity check: ``data`` (a .npz path or arrays), else ``calib``
    (calibration arrays), else inputs synthesised from the declared inputs. Inputs that cannot be synthesised
    give no feeds and the reason (never an exception)."""
    from onnxcomp.pipeline.evaluate import NOT_INPUTS, load_data, model_specs
    model = model or onnx.load(original_path, load_external_data=False)
    axes = sample_axes(model_specs(model))
    if data is not None:
        if isinstance(data, (str, os.PathLike)):
            arrays = load_data(os.fspath(data), model_specs(model))
            for name in NOT_INPUTS:
                arrays.pop(name, None)
            return batched_feeds(arrays, samples, axes=axes), os.path.basename(os.fspath(data)), None
        return batched_feeds(data, samples, axes=axes), "given", None
    if calib:
        arrays = {k: v for k, v in calib.items() if k not in NOT_INPUTS}
        return batched_feeds(arrays, samples, axes=axes), "calibration", None
    try:
        return synthesise(model, samples, seed, shapes, ranges), "synthesised", None
    except InputsUnavailable as reason:
        return [], "", str(reason)


def measure(original_path: str, compressed_path: str, **inputs) -> Fidelity:
    """Fidelity of ``compressed_path`` against ``original_path`` on the inputs ``prepare(**inputs)`` gives."""
    feeds, source, reason = prepare(original_path, **inputs)
    if reason:
        return Fidelity("", unavailable=reason)
    return compare_runs(original_path, compressed_path, feeds, source)


def _relative_error(expected: list[np.ndarray], actual: list[np.ndarray]) -> float:
    """The largest relative L2 error over the compared tensors. A tensor of rank >= 3 ([N, C, ...]: a detector's
    boxes and class scores along C, a feature map) counts per channel (axis 1), as the root mean square over
    channels of ||b_c - a_c|| / max(||a_c||, m / 10), m the median channel norm: one output often concatenates
    quantities of very different scale (box coordinates in pixels beside class scores in [0, 1]) and over the
    whole tensor the large ones would hide any damage to the small ones; the floor keeps near-empty channels from
    deciding. Other tensors count whole: ||b - a|| / ||a||."""
    worst = 0.0
    for a, b in zip(expected, actual):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.dtype.kind != "f" or a.size == 0 or a.shape != b.shape or not np.isfinite(a).all():
            continue
        if a.ndim >= 3:
            a, b = np.moveaxis(a, 1, 0).reshape(a.shape[1], -1), np.moveaxis(b, 1, 0).reshape(b.shape[1], -1)
        else:
            a, b = a.reshape(1, -1), b.reshape(1, -1)
        norms = np.linalg.norm(a, axis=1)
        floor = 0.1 * float(np.median(norms))
        if floor > 0:
            relative = np.linalg.norm(b - a, axis=1) / np.maximum(norms, floor)
            worst = max(worst, float(np.sqrt(np.mean(relative ** 2))))
    return worst


def attribute(original_path: str, compressed_path: str, feed: dict[str, np.ndarray],
              original: onnx.ModelProto | None = None, cache: dict | None = None, cones: bool = True) -> dict[str, float]:
    """Per compressed weight: the relative L2 error (``_relative_error``) of the compared tensors (each output, or
    its logits: module docstring) when only that weight takes its decoded value in the original model, on
    ``feed``. One run per weight (weights on the cores in parallel, parallel.ordered_map); weights
    inside subgraphs are substituted in a copy. ``original``:
    the original as ``model_io.load_model(original_path, external_data=False)`` gave it, when the caller has it
    (used as it is unless its data is external; never modified).

    ``cones`` (the default): a main-graph weight's run computes only the nodes its value reaches (``_Cone``), fed
    the values the rest of the graph gives them, which one more run of the original computes (every such value an
    extra output); the other compared tensors are the original's. A cone is used only after it gave the whole
    model's outputs bit for bit on the original values (onnxruntime may fuse or re-lay out nodes across the cone's
    edge otherwise: ppocr-rec, 12 of 27 weights fail the check and run whole), so the errors are those of
    whole-model runs; and only where the original's run takes CONE_MIN_SECONDS of CPU time (below, the sessions
    and checks cost more than they save). vgg16-tumor: 13.0 -> 8.6 CPU seconds per call (docs/benchmarks.md,
    branch backoff6). False: whole-model runs, the straightforward version tests/test_fast_paths.py compares with.
    ``cache``: a dict the caller keeps between calls with the same original and ``feed`` (compress's rounds): the
    original's outputs, boundary values, cones and sessions per set of weights measured, and each weight's error
    under the digest of its decoded value (core.native.digest), are kept there and not computed again (the same
    numbers: onnxruntime runs each session alike)."""
    from onnx import numpy_helper
    from onnxcomp.passes import model_io
    from onnxcomp.passes.calibration import feed_batches
    from onnxcomp.pipeline.autotune import _weight_as_input
    from onnxcomp.core import sidecar
    from onnxcomp.pipeline.inspection import stored_weights
    from onnxcomp.passes.base import raw_view
    stored = stored_weights(model_io.load_model(compressed_path, external_data=False), compressed_path)
    graphs = [] if original is None else list(model_io.graphs_of(original.graph))
    kept = cache.get("model") if cache is not None else None
    if kept is not None:
        model = kept
    elif original is None or any(t.data_location == onnx.TensorProto.EXTERNAL for g in graphs for t in g.initializer):
        model = model_io.load_model(original_path)
    elif any(n.op_type == "Constant" for g in graphs for n in g.node):  # moved into initializers below: a copy
        model = onnx.ModelProto()
        model.CopyFrom(original)
    else:
        model = original
    if kept is None:
        model_io.constants_to_initializers(model.graph)
        if cache is not None:
            cache["model"] = model
    taps = logit_taps(model)
    compared = [taps.get(o.name, o.name) for o in model.graph.output]
    compared = list(dict.fromkeys(compared))
    everywhere = {t.name: t for graph in model_io.graphs_of(model.graph) for t in graph.initializer}
    main = {t.name for t in model.graph.initializer if t.data_type != onnx.TensorProto.BFLOAT16}
    # integer records are lossless (IntegerWeightsPass): their effect is 0 without a run
    weights = {w.name: w for w in stored.values() if w.name in everywhere and w.value_type == sidecar.FLOAT32}
    # read-only views over the protos' bytes where they are float raw data (numpy_helper.to_array copies them again)
    originals = {name: raw_view(everywhere[name]) for name in weights if name in main}
    originals = {name: numpy_helper.to_array(everywhere[name]) if view is None else view for name, view in originals.items()}
    # what a probe is made of: which weights are its inputs (the rest stay initializers, which onnxruntime may fold)
    known = cache.setdefault(("probe", tuple(sorted(originals))), {}) if cache is not None else {}

    def session(proto: onnx.ModelProto, outputs=None) -> ort.InferenceSession:
        probe = onnx.ModelProto()
        probe.CopyFrom(proto)
        del probe.graph.output[:]
        probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in outputs or compared)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_cpu_mem_arena = False  # its peak (weights packed per run, on each thread) is not kept past the run
        return ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])

    first = next(iter(feed.values()), None)
    batch = int(first.shape[0]) if first is not None and first.ndim else 1
    if "expected" not in known:
        known["weights"] = _weight_as_input(model, originals) if originals else None
        known["probe"] = session(known["weights"]) if originals else None
        probe = known["probe"]
        started = time.thread_time()
        known["expected"] = (run_batched(probe, feed, batch, extra=originals) if probe
                             else run_batched(session(model), feed, batch))
        # (a cheap model's runs cost less than the cones' sessions, checks and extra run: whole-model runs there)
        if cones and probe is not None and time.thread_time() - started >= CONE_MIN_SECONDS:
            known["cones"] = _Cone.build(known["weights"], sorted(originals), compared)
            extra_outputs = sorted({b for cone in known["cones"].values() for b in cone.boundary})
            parts = feed_batches(probe, feed, batch)
            known["parts"] = parts
            if extra_outputs:
                exposed = session(known["weights"], extra_outputs)
                known["boundary"] = [dict(zip(extra_outputs, exposed.run(extra_outputs, {**part, **originals})))
                                     for part in parts]
            else:
                known["boundary"] = [{} for _ in parts]
            for cone in known["cones"].values():
                cone.declare(known["boundary"][0])
    probe, expected = known["probe"], known["expected"]
    cone_of = known.get("cones", {})
    errors = known.setdefault("errors", {})

    def error(name: str) -> float:  # on a worker thread: onnxruntime runs one session from several threads
        decoded = weights[name].dense()
        if name in originals:
            decoded = decoded.astype(originals[name].dtype, copy=False)
        key = (name, decoded.dtype.str, digest(decoded))
        if key in errors:
            return errors[key]
        cone = cone_of.get(name)
        if cone is not None and cone.model is not None and cone.checked is None:
            # the check: the cone on the original values must give the whole model's outputs bit for bit (onnxruntime
            # may fuse or re-lay out nodes across the cone's edge differently: ppocr-rec, 12 of 27 weights)
            cone.session = session(cone.model, cone.outputs)
            same = cone.run(known, originals, name, originals[name], probe)
            cone.checked = all(np.array_equal(same[c], e) and same[c].dtype == e.dtype
                               for c, e in zip(compared, expected) if c in same)
            if not cone.checked:
                cone.session = None
        if cone is not None and cone.model is not None and cone.checked:
            changed = cone.run(known, originals, name, decoded, probe)
            actual = [changed.get(c, e) for c, e in zip(compared, expected)]
        elif name in originals:
            actual = run_batched(probe, feed, batch, extra={**originals, name: decoded})
        else:
            actual = run_batched(session(model_io.substituted(model, {name: decoded})), feed, batch)
        errors[key] = _relative_error(expected, actual)
        return errors[key]

    names = sorted(weights)
    return dict(zip(names, parallel.ordered_map(error, names)))


class _Cone:
    """The part of a probe (a model whose weights ``names`` are graph inputs) that one weight's value reaches: the
    main-graph nodes that read it or, transitively, what such a node computes (a node with a subgraph counts as
    reading every name its bodies read), kept in graph order. ``model`` holds those nodes, reading as graph inputs
    the model's inputs and weights they use and the ``boundary`` values other nodes compute; its ``outputs`` are the
    compared tensors it computes. None when it would compute (nearly) everything: the whole probe runs instead.
    The nodes, their attributes and their initializers are the probe's, so onnxruntime runs the same kernels on the
    same values."""

    def __init__(self, model, inputs, boundary, outputs) -> None:
        self.model, self.inputs, self.boundary, self.outputs = model, inputs, boundary, outputs
        self.session = None  # opened on first use (on the worker thread that measures the weight)
        self.checked = None  # whether it gives the whole probe's outputs on the original values (None: not run yet)

    def run(self, known: dict, originals: dict, name: str, value: np.ndarray, probe) -> dict[str, np.ndarray]:
        """The cone's outputs (name -> array, joined over the feed's batches as the probe declares them) with weight
        ``name`` at ``value``, the other weights at ``originals`` and the boundary values of the original's run."""
        from onnxcomp.passes.calibration import join_batches
        runs = [self.session.run(self.outputs, {**{k: v for k, v in part.items() if k in self.inputs},
                                                **{k: v for k, v in originals.items() if k in self.inputs},
                                                name: value, **{b: values[b] for b in self.boundary}})
                for part, values in zip(known["parts"], known["boundary"])]
        return dict(zip(self.outputs, join_batches(probe, runs, self.outputs)))

    @classmethod
    def build(cls, probe: onnx.ModelProto, names: list[str], compared: list[str]) -> dict[str, "_Cone"]:
        from onnxcomp.passes.calibration import names_read
        from onnxcomp.pipeline.autotune import _copy_fields
        graph = probe.graph
        reads = [names_read(node) for node in graph.node]
        produced = {o for node in graph.node for o in node.output if o}
        initializers = {t.name: t for t in graph.initializer}
        declared = {v.name: v for v in graph.input}
        cones = {}
        for name in names:
            tainted, nodes = {name}, []
            for index, node in enumerate(graph.node):  # graph order is topological
                if reads[index] & tainted:
                    nodes.append(index)
                    tainted.update(o for o in node.output if o)
            outputs = [c for c in compared if c in tainted and c != name]
            if not nodes or not outputs or len(nodes) * 10 > len(graph.node) * 9:
                cones[name] = cls(None, set(), [], [])
                continue
            inner = {o for i in nodes for o in graph.node[i].output if o}
            read = set().union(*(reads[i] for i in nodes))
            boundary = sorted(n for n in read - inner if n in produced)
            inputs = sorted(n for n in read - inner if n in declared)
            part = onnx.ModelProto()
            _copy_fields(probe, part, skip="graph")  # opsets, functions, metadata: the probe's
            part.graph.name = graph.name
            part.graph.node.extend(graph.node[i] for i in nodes)
            part.graph.initializer.extend(initializers[n] for n in sorted(read - inner) if n in initializers)
            part.graph.input.extend(declared[n] for n in inputs)
            # (a boundary value's type comes from the run that computes it: declared here as a tensor of any shape)
            part.graph.output.extend(onnx.ValueInfoProto(name=o) for o in outputs)
            cones[name] = cls(part, set(inputs), boundary, outputs)
        return cones

    def declare(self, values: dict) -> None:
        """Declare the boundary values as graph inputs with the element types the original's run gave them (any
        shape); a value that is not a tensor (a sequence) leaves the whole probe to run instead."""
        if self.model is None:
            return
        for name in self.boundary:
            value = values.get(name)
            if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiub":
                self.model = None
                return
            self.model.graph.input.append(onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(value.dtype), None))
