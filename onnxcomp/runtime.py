"""Finding the custom-op library and opening onnxruntime sessions with it registered."""

from __future__ import annotations

import os

import onnxruntime as ort

from onnxcomp.errors import OnnxcompError

LIBRARY_NAME = "libonnxcomp_ops.so"
DOMAIN = "ai.onnxcomp"


def library_path() -> str:
    """Absolute path of the custom-op library (``ONNXCOMP_LIBRARY`` overrides the installed one).

    Looked up beside this module, then among the installed distribution's files: the package imported from a
    source checkout (Python run from the repository root, or an editable install) has no built library, while
    the installed ``onnxcomp`` beside it does. Raises ``OnnxcompError`` when neither has it."""
    override = os.environ.get("ONNXCOMP_LIBRARY")
    if override:
        path = os.path.abspath(override)
        if not os.path.isfile(path):
            raise OnnxcompError(f"ONNXCOMP_LIBRARY names {path}, which does not exist: unset it or point it at libonnxcomp_ops.so")
        return path
    beside = os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBRARY_NAME)
    if os.path.isfile(beside):
        return beside
    installed = _installed_library()
    if installed:
        return installed
    raise OnnxcompError(f"the onnxcomp custom-op library is missing at {beside} and onnxcomp is not installed: "
                        "install it with pip (pip install .), which builds the library")


def _installed_library() -> str | None:
    """The library's path among the files of the installed ``onnxcomp`` distribution, if any."""
    from importlib import metadata
    try:
        files = metadata.files("onnxcomp") or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == LIBRARY_NAME:
            path = os.path.abspath(str(file.locate()))
            if os.path.isfile(path):
                return path
    return None


def session_options(options: ort.SessionOptions | None = None) -> ort.SessionOptions:
    """Session options with the custom-op library registered."""
    options = options or ort.SessionOptions()
    options.register_custom_ops_library(library_path())
    return options


# onnxruntime's "fatal" level: onnxcomp's own sessions report every failure as an exception, which the CLI turns
# into one clean line; onnxruntime's own coloured "[E:onnxruntime:...]" log line would otherwise come first.
QUIET_LOG_SEVERITY = 4


def quiet_session_options(custom_ops: bool = False) -> ort.SessionOptions:
    """Options for onnxcomp's own sessions (verify, --eval, calibration, the budget search): onnxruntime logs
    nothing below fatal, since every failure reaches the caller as an exception. ``custom_ops`` registers the
    custom-op library (``OnnxcompError`` when it is missing)."""
    options = session_options() if custom_ops else ort.SessionOptions()
    options.log_severity_level = QUIET_LOG_SEVERITY
    return options


def InferenceSession(path, sess_options: ort.SessionOptions | None = None, **kwargs) -> ort.InferenceSession:  # noqa: N802 - mirrors onnxruntime's name
    """An ``onnxruntime.InferenceSession`` able to run onnxcomp-compressed models."""
    kwargs.setdefault("providers", ["CPUExecutionProvider"])
    return ort.InferenceSession(os.fspath(path), session_options(sess_options), **kwargs)
