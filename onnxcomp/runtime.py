"""Finding the custom-op library and opening onnxruntime sessions with it registered."""

from __future__ import annotations

import io
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
    """An ``onnxruntime.InferenceSession`` able to run onnxcomp-compressed models.

    ``path``: a model file (str or path-like) or the serialised model (bytes). The custom-op library is
    registered only when the model declares the ``ai.onnxcomp`` domain (an output onnxcomp left unchanged, or any
    plain model, then pays neither the library's pages nor its registration); when the declaration cannot be
    read, it is registered."""
    kwargs.setdefault("providers", ["CPUExecutionProvider"])
    model = path if isinstance(path, (bytes, bytearray)) else os.fspath(path)
    domains = declared_domains(model)
    if domains is not None and DOMAIN not in domains:
        return ort.InferenceSession(model, sess_options or ort.SessionOptions(), **kwargs)
    return ort.InferenceSession(model, session_options(sess_options), **kwargs)


class _Malformed(Exception):
    """The bytes are not a well-formed protobuf message."""


def _varint(read) -> int:
    """One protobuf base-128 varint from ``read(1)``; ``_Malformed`` at the end of the input or past 10 bytes."""
    value = 0
    for shift in range(0, 70, 7):
        byte = read(1)
        if not byte:
            raise _Malformed
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
    raise _Malformed


def _fields(stream, size: int, wanted: set[int]):
    """(field number, bytes) of each length-delimited field in ``wanted`` of the message in ``stream`` (``size``
    bytes); every other field is skipped without being read (protobuf wire format:
    https://protobuf.dev/programming-guides/encoding/). ``_Malformed`` when the bytes break the format."""
    while stream.tell() < size:
        key = _varint(stream.read)
        field, wire, skip = key >> 3, key & 7, 0
        if wire == 0:
            _varint(stream.read)
        elif wire in (1, 5):
            skip = 8 if wire == 1 else 4
        elif wire == 2:
            skip = _varint(stream.read)
            if field in wanted:
                body = stream.read(skip)
                if len(body) != skip:
                    raise _Malformed
                yield field, body
                continue
        else:
            raise _Malformed
        if stream.seek(skip, io.SEEK_CUR) > size:
            raise _Malformed


def declared_domains(model: str | bytes) -> set[str] | None:
    """The operator-set domains a serialised ``ModelProto`` imports (``opset_import``, field 8, each an
    ``OperatorSetIdProto`` whose field 1 is the domain; "" is the default ONNX domain), read from the top-level
    fields alone, the graph's bytes skipped. ``model``: a file path or the bytes. Returns None when the bytes are
    not a well-formed message at the top level or the file cannot be read."""
    try:
        stream = io.BytesIO(model) if isinstance(model, (bytes, bytearray)) else open(model, "rb")
    except OSError:
        return None
    with stream:
        size = stream.seek(0, io.SEEK_END)
        stream.seek(0)
        try:
            domains = set()
            for _, opset in _fields(stream, size, {8}):
                names = [value.decode("utf-8") for _, value in _fields(io.BytesIO(opset), len(opset), {1})]
                domains.add(names[-1] if names else "")
            return domains
        except (_Malformed, UnicodeDecodeError):
            return None
