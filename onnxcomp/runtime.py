"""Finding the custom-op library and opening onnxruntime sessions with it registered."""

from __future__ import annotations

import os

import onnxruntime as ort

from .errors import OnnxcompError

LIBRARY_NAME = "libonnxcomp_ops.so"
DOMAIN = "ai.onnxcomp"


def library_path() -> str:
    """Absolute path of the custom-op library (``ONNXCOMP_LIBRARY`` overrides the installed one)."""
    override = os.environ.get("ONNXCOMP_LIBRARY")
    path = os.path.abspath(override or os.path.join(os.path.dirname(__file__), LIBRARY_NAME))
    if not os.path.isfile(path):
        raise OnnxcompError(f"the onnxcomp custom-op library is missing at {path}: reinstall onnxcomp with pip (it builds the library)")
    return path


def session_options(options: ort.SessionOptions | None = None) -> ort.SessionOptions:
    """Session options with the custom-op library registered."""
    options = options or ort.SessionOptions()
    options.register_custom_ops_library(library_path())
    return options


def InferenceSession(path, sess_options: ort.SessionOptions | None = None, **kwargs) -> ort.InferenceSession:  # noqa: N802 - mirrors onnxruntime's name
    """An ``onnxruntime.InferenceSession`` able to run onnxcomp-compressed models."""
    kwargs.setdefault("providers", ["CPUExecutionProvider"])
    return ort.InferenceSession(os.fspath(path), session_options(sess_options), **kwargs)
