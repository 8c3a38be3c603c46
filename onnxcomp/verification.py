"""``onnxcomp verify``: run the original and the compressed model on the same inputs and compare outputs.

Per output, with a the original's values and b the compressed model's (flattened over the batch):
max abs error max|a - b|; relative L2 error ||a - b|| / ||a||; cosine similarity a.b / (||a|| ||b||);
and, for outputs that look like class scores (float, rank 2, at least 2 classes), top-1 agreement: the
share of samples whose argmax is the same in both. Inputs come from a data file, or are drawn from the
declared input shapes with a seeded generator: floats uniform in [0, 1), integers 0 (dynamic dims: the
batch gets ``samples``, others 1). Random inputs say nothing about accuracy; they only catch gross breakage.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from .errors import CalibrationError, UnsupportedModelError
from .evaluate import LABELS, load_data, session_specs
from .inspection import DOMAIN
from .runtime import session_options

log = logging.getLogger("onnxcomp")
DEFAULT_RANDOM_SAMPLES = 64


@dataclass
class OutputComparison:
    name: str
    shape: list[int]
    max_abs_error: float
    relative_l2_error: float
    cosine: float
    top1_agreement: float | None  # None when the output does not look like class scores


@dataclass
class Verification:
    original_path: str
    compressed_path: str
    inputs: str  # the data file, or "random (seed S)"
    samples: int
    outputs: list[OutputComparison] = field(default_factory=list)

    @property
    def min_cosine(self) -> float:
        return min(o.cosine for o in self.outputs)

    @property
    def min_top1(self) -> float | None:
        values = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        return min(values) if values else None

    def failures(self, min_cosine: float | None = None, min_top1: float | None = None) -> list[str]:
        """Each threshold the comparison misses, as a sentence (empty when all pass)."""
        problems = []
        for o in self.outputs:
            if min_cosine is not None and not o.cosine >= min_cosine:
                problems.append(f"output {o.name!r}: cosine {o.cosine:.6f} is below {min_cosine}")
            if min_top1 is not None and o.top1_agreement is not None and not o.top1_agreement >= min_top1:
                problems.append(f"output {o.name!r}: top-1 agreement {o.top1_agreement:.4f} is below {min_top1}")
        if min_top1 is not None and self.min_top1 is None:
            problems.append("--min-top1 given, but no output looks like class scores (float, rank 2)")
        return problems

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(min_cosine=self.min_cosine, min_top1=self.min_top1)
        return data


def open_session(path: str) -> ort.InferenceSession:
    """A CPU session; the custom-op library is registered only when the model uses onnxcomp ops."""
    model = onnx.load(path, load_external_data=False)
    custom = any(o.domain == DOMAIN for o in model.opset_import)
    options = session_options() if custom else ort.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own types for unreadable models
        raise UnsupportedModelError(f"{path}: onnxruntime cannot open it ({error})") from error


def random_inputs(session: ort.InferenceSession, samples: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, shape, dtype in session_specs(session):
        dims = [samples if i == 0 and d is None else (d or 1) for i, d in enumerate(shape)]
        if dtype.kind == "f":
            inputs[name] = rng.random(dims).astype(dtype)
        else:
            inputs[name] = np.zeros(dims, dtype)  # integer inputs (indices) have no safe range to draw from
    return inputs


def compare(a: np.ndarray, b: np.ndarray, name: str) -> OutputComparison:
    if a.shape != b.shape:
        raise UnsupportedModelError(f"output {name!r} has shape {list(a.shape)} in the original, {list(b.shape)} compressed")
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    norm_x, norm_y = np.linalg.norm(x), np.linalg.norm(y)
    difference = np.linalg.norm(x - y)
    cosine = 1.0 if norm_x == norm_y == 0 else float(x @ y / (norm_x * norm_y)) if norm_x and norm_y else 0.0
    top1 = None
    if a.dtype.kind == "f" and a.ndim == 2 and a.shape[1] >= 2:
        top1 = float(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))
    return OutputComparison(name, list(a.shape), float(np.abs(x - y).max(initial=0.0)),
                            float(difference / norm_x) if norm_x else float(difference), cosine, top1)


def verify(original_path: str, compressed_path: str, calib: str | None = None, *, samples: int | None = None,
           seed: int = 0, batch: int = 256) -> Verification:
    """Compare the outputs of ``compressed_path`` with those of ``original_path`` (see the module docstring).

    ``samples`` caps the samples read from ``calib``; without ``calib`` it is the random batch size (default 64).
    """
    if samples is not None and samples < 1:
        raise CalibrationError(f"samples {samples} must be at least 1")
    original_path, compressed_path = os.fspath(original_path), os.fspath(compressed_path)
    reference, candidate = open_session(original_path), open_session(compressed_path)
    names = [o.name for o in reference.get_outputs()]
    if names != [o.name for o in candidate.get_outputs()]:
        raise UnsupportedModelError(f"the models have different outputs: {names} and {[o.name for o in candidate.get_outputs()]}")
    if calib:
        inputs = load_data(os.fspath(calib), reference)
        inputs.pop(LABELS, None)
        inputs = {k: v[:samples] for k, v in inputs.items()} if samples else inputs
        source = os.fspath(calib)
    else:
        inputs = random_inputs(reference, samples or DEFAULT_RANDOM_SAMPLES, seed)
        source = f"random (seed {seed})"
    count = len(next(iter(inputs.values()))) if inputs else 1
    result = Verification(original_path, compressed_path, source, count)
    try:
        runs = [[], []]
        for start in range(0, count, batch):
            feed = {k: v[start:start + batch] for k, v in inputs.items()}
            runs[0].append(reference.run(None, feed))
            runs[1].append(candidate.run(None, feed))
    except Exception as error:  # onnxruntime's errors on bad feeds
        raise CalibrationError(f"running the models failed on {source}: {error}") from error
    for i, name in enumerate(names):
        a = np.concatenate([np.asarray(r[i]) for r in runs[0]]) if runs[0] and np.ndim(runs[0][0][i]) else np.asarray(runs[0][0][i])
        b = np.concatenate([np.asarray(r[i]) for r in runs[1]]) if runs[1] and np.ndim(runs[1][0][i]) else np.asarray(runs[1][0][i])
        result.outputs.append(compare(a, b, name))
    return result
