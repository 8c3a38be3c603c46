"""Running a model on a labelled .npz in onnxruntime: top-1 accuracy and outputs.

The data file holds one array per model input, keyed by the input's name (first axis = samples), and,
for accuracy, an integer array ``labels``.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort

from .errors import CalibrationError
from .runtime import session_options

LABELS = "labels"


def load_data(path: str, session: ort.InferenceSession) -> dict[str, np.ndarray]:
    """Inputs from ``path`` checked against the session's inputs (names, ranks, fixed dims, dtypes)."""
    if not os.path.isfile(path):
        raise CalibrationError(f"{path}: no such data file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as error:
        raise CalibrationError(f"{path} is not a readable .npz file ({error})") from error
    inputs = {}
    for spec in session.get_inputs():
        if spec.name not in arrays:
            raise CalibrationError(f"{path} has no array for model input {spec.name!r} (it has: {', '.join(sorted(arrays)) or 'none'})")
        array = arrays[spec.name]
        if array.ndim != len(spec.shape) or any(isinstance(d, int) and d != a for d, a in zip(spec.shape[1:], array.shape[1:])):
            raise CalibrationError(f"{path}: input {spec.name!r} has shape {list(array.shape)}, the model wants {spec.shape}")
        expected = np.dtype(_NUMPY_TYPES.get(spec.type, np.float32))
        if array.dtype != expected:
            raise CalibrationError(f"{path}: input {spec.name!r} is {array.dtype}, the model wants {expected}")
        if len(array) == 0:
            raise CalibrationError(f"{path}: input {spec.name!r} has no samples")
        inputs[spec.name] = array
    counts = {len(a) for a in inputs.values()}
    if len(counts) > 1:
        raise CalibrationError(f"{path}: inputs have different sample counts {sorted(counts)}")
    if LABELS in arrays:
        inputs[LABELS] = arrays[LABELS]
    return inputs


_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
                "tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(float16)": np.float16}


def run_batches(session: ort.InferenceSession, inputs: dict[str, np.ndarray], batch: int = 256) -> np.ndarray:
    """The first output over all samples, computed in batches."""
    names = [spec.name for spec in session.get_inputs()]
    total = len(inputs[names[0]])
    outputs = [session.run(None, {n: inputs[n][i:i + batch] for n in names})[0] for i in range(0, total, batch)]
    return np.concatenate(outputs)


def accuracy(model_path: str, data_path: str, compressed: bool = False) -> float | None:
    """Top-1 accuracy of ``model_path`` on ``data_path`` (None when the file has no labels)."""
    options = session_options() if compressed else ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    data = load_data(data_path, session)
    if LABELS not in data:
        return None
    scores = run_batches(session, data)
    return float(np.mean(scores.reshape(len(scores), -1).argmax(axis=1) == data[LABELS]))
