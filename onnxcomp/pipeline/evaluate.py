"""Running a model on a labelled .npz in onnxruntime: top-1 accuracy and outputs.

The data file holds one array per model input, keyed by the input's name (first axis = samples), and,
for accuracy, an integer array ``labels``.
"""

from __future__ import annotations

import os
import zipfile

import logging

import numpy as np
import onnx
import onnxruntime as ort

from onnxcomp.errors import CalibrationError, UnsupportedModelError
from onnxcomp.passes import model_io
from onnxcomp.passes.calibration import count_samples, sample_axes, sample_axis, take_samples
from onnxcomp.runtime import DOMAIN, quiet_session_options

LABELS = "labels"
# Calibration samples that belong together (the captchas drawn on one photograph, the chunks of one clip): a budget's
# held-back and check samples are drawn by whole groups (autotune.budget_split), so the check set measures samples
# from sources the fit never saw. One id per sample, integers or strings; any other reader drops the array.
GROUPS = "groups"
NOT_INPUTS = (LABELS, GROUPS)  # arrays a data file may hold beside the model's inputs
log = logging.getLogger("onnxcomp")


InputSpec = tuple  # (name, shape with ints or None for dynamic dims, numpy dtype)


def session_specs(session: ort.InferenceSession) -> list[InputSpec]:
    return [(i.name, [d if isinstance(d, int) else None for d in i.shape], np.dtype(_NUMPY_TYPES.get(i.type, np.float32)))
            for i in session.get_inputs()]


def model_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (initializers listed as inputs are not data)."""
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None for d in tensor.shape.dim]  # some exporters write -1 for a dynamic dim
        specs.append((value.name, shape, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))))
    return specs


def _read_arrays(path: str, axes: dict[str, int | None] | None = None) -> dict[str, np.ndarray]:
    files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".npz")) if os.path.isdir(path) else [path]
    if not files:
        raise CalibrationError(f"{path}: the folder holds no .npz files")
    parts: dict[str, list[np.ndarray]] = {}
    for file in files:
        if not os.path.isfile(file):
            raise CalibrationError(f"{file}: no such data file")
        try:
            with np.load(file, allow_pickle=False) as data:
                for key in data.files:
                    parts.setdefault(key, []).append(data[key])
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise CalibrationError(f"{file} is not a readable .npz file ({error})") from error
    axes = axes or {}
    try:  # files join on each input's sample axis; a scalar (or an input fed whole) is taken from the first file
        return {key: arrays[0] if len(arrays) == 1 or not np.ndim(arrays[0]) or axes.get(key, 0) is None
                else np.concatenate(arrays, axis=axes.get(key, 0)) for key, arrays in parts.items()}
    except ValueError as error:
        raise CalibrationError(f"{path}: the .npz files do not agree in shape ({error})") from error


def load_data(path: str, specs: list[InputSpec] | ort.InferenceSession) -> dict[str, np.ndarray]:
    """Inputs from ``path`` checked against the model's inputs (names, ranks, fixed dims, dtypes)."""
    if isinstance(specs, ort.InferenceSession):
        specs = session_specs(specs)
    axes = sample_axes(specs)
    arrays = _read_arrays(path, axes)
    inputs = {}
    for name, shape, dtype in specs:
        if name not in arrays:
            raise CalibrationError(f"{path} has no array for model input {name!r} (it has: {', '.join(sorted(arrays)) or 'none'})")
        array = arrays[name]
        axis = axes[name]
        if array.ndim != len(shape) or any(d is not None and d != a for i, (d, a) in enumerate(zip(shape, array.shape)) if i != axis):
            wanted = ["?" if d is None else d for d in shape]
            raise CalibrationError(f"{path}: input {name!r} has shape {list(array.shape)}, the model wants {wanted}")
        if array.dtype != dtype:
            raise CalibrationError(f"{path}: input {name!r} is {array.dtype}, the model wants {dtype}")
        if axis is not None and array.shape[axis] == 0:
            raise CalibrationError(f"{path}: input {name!r} has no samples")
        inputs[name] = array
    counts = {a.shape[axes[n]] for n, a in inputs.items() if axes[n] is not None}
    if len(counts) > 1:
        raise CalibrationError(f"{path}: inputs have different sample counts {sorted(counts)}")
    if LABELS in arrays:
        inputs[LABELS] = arrays[LABELS]
    if GROUPS in arrays:
        inputs[GROUPS] = _checked_groups(path, arrays[GROUPS], next(iter(counts), None))
    return inputs


def _checked_groups(path: str, groups: np.ndarray, count: int | None) -> np.ndarray:
    """The file's ``groups`` array if it gives one integer or string id per sample (``count`` samples), else one
    ``CalibrationError`` line saying what is wrong."""
    if count is None:
        raise CalibrationError(f"{path}: 'groups' needs inputs with a sample axis to group")
    if groups.ndim != 1 or len(groups) != count:
        raise CalibrationError(f"{path}: 'groups' has shape {list(groups.shape)}: give one group id per sample, shape [{count}]")
    if groups.dtype.kind not in "iuUS":
        raise CalibrationError(f"{path}: 'groups' is {groups.dtype}: give integer or string group ids")
    return groups


def load_calibration(path: str, model: onnx.ModelProto, samples: int | None = None, seed: int = 0,
                     keep_labels: bool = False, keep_groups: bool = False) -> dict[str, np.ndarray]:
    """Calibration inputs: from .npz file(s), or ``"random"`` draws from the declared shapes.

    ``samples`` keeps that many samples, drawn at random (seeded) and kept in file order: files are often
    sorted (by class, by source), so the first N would not be representative. ``keep_labels`` keeps the
    file's ``labels`` array (subset alike) when there is one, ``keep_groups`` its ``groups`` array (one id per
    sample; CalibrationError when it does not give one integer or string id per sample)."""
    specs = model_specs(model)
    if samples is not None and samples < 1:
        raise CalibrationError(f"calib-samples {samples} must be at least 1")
    if path == "random":
        log.warning("calibrating on random data drawn from the input shapes: fine for a smoke test, not meaningful")
        rng = np.random.default_rng(seed)
        count = samples or 16
        data = {}
        for name, shape, dtype in specs:
            dims, axis = [d or 1 for d in shape], sample_axis(shape)
            if axis is not None:
                dims[axis] = count if shape[axis] is None else shape[axis] * max(1, count // shape[axis])
            data[name] = rng.standard_normal(dims).astype(dtype) if dtype.kind == "f" else np.zeros(dims, dtype)
        return data
    data = load_data(path, specs)
    if not keep_labels:
        data.pop(LABELS, None)
    if not keep_groups:
        data.pop(GROUPS, None)
    axes = sample_axes(specs)
    count = count_samples(data, axes) if data else 0
    if samples is not None and samples < count:
        chosen = np.sort(np.random.default_rng(seed).choice(count, samples, replace=False))
        data = take_samples(data, chosen, axes)
    return data


_NUMPY_TYPES = {"tensor(bool)": np.bool_, "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
                "tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(float16)": np.float16}


def run_batches(session: ort.InferenceSession, inputs: dict[str, np.ndarray], batch: int = 256) -> np.ndarray:
    """The first output over all samples, computed in batches the model accepts."""
    from onnxcomp.passes.calibration import run_batched
    names = [spec.name for spec in session.get_inputs()]
    return run_batched(session, {n: inputs[n] for n in names}, batch, outputs=[session.get_outputs()[0].name])[0]


def open_session(path: str, custom_ops: bool | None = None) -> ort.InferenceSession:
    """A one-thread CPU session on the model file ``path``, for every command that runs a model.

    The file goes through ``model_io.load_model``'s checks first, so a missing or unreadable file, a file that is
    not ONNX and a model without its sidecar or data file each give one clean ``UnsupportedModelError``, the same
    for every command. The custom-op library is registered when the model uses onnxcomp ops (``custom_ops`` None)
    or when asked; onnxruntime's own error log lines are silenced (``runtime.quiet_session_options``)."""
    path = os.fspath(path)
    model = model_io.load_model(path, external_data=False)
    if custom_ops is None:
        custom_ops = any(o.domain == DOMAIN for o in model.opset_import)
    options = quiet_session_options(custom_ops)
    options.intra_op_num_threads = 1
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own types for models it cannot open
        raise UnsupportedModelError(f"{path}: onnxruntime cannot open it ({_first_line(error)})") from error


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def check_eval_data(path: str, model: onnx.ModelProto) -> bool:
    """Check an ``--eval`` file against ``model``'s inputs before any work (``CalibrationError`` if it does not
    fit); returns whether it holds ``labels``, and warns when it does not, since no accuracy can be measured."""
    if LABELS in load_data(path, model_specs(model)):
        return True
    log.warning("%s has no 'labels' array: top-1 accuracy is not measured (--eval needs integer class labels "
                "[N] beside the inputs)", path)
    return False


def accuracy(model_path: str, data_path: str, compressed: bool | None = None) -> float | None:
    """Top-1 accuracy of ``model_path`` on ``data_path`` (None when the file has no labels).

    ``compressed`` registers the custom-op library (None: when the model uses onnxcomp ops)."""
    session = open_session(model_path, compressed)
    data = load_data(data_path, session)
    if LABELS not in data:
        return None
    scores = run_batches(session, data)
    return float(np.mean(scores.reshape(len(scores), -1).argmax(axis=1) == data[LABELS]))
