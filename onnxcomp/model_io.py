"""Reading input models and writing compressed outputs safely (temporary files, then rename)."""

from __future__ import annotations

import contextlib
import os
import tempfile

import onnx
from google.protobuf.message import DecodeError

from . import sidecar
from .errors import OutputError, UnsupportedModelError

MIN_OPSET = 7


def load_model(path: str, external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX model with its external data (unless told not to); errors say what is wrong with the file."""
    if not os.path.isfile(path):
        raise UnsupportedModelError(f"{path}: no such file; give the path of an .onnx model")
    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, UnicodeDecodeError) as error:
        raise UnsupportedModelError(f"{path} is not a valid ONNX model ({error}); re-export it") from error
    if not model.graph.node and not model.graph.initializer:
        raise UnsupportedModelError(f"{path} holds no graph; is it really an ONNX model?")
    try:
        if external_data:
            onnx.load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))
    except (OSError, onnx.checker.ValidationError, ValueError) as error:
        raise UnsupportedModelError(f"{path}: its external data cannot be read ({error}); keep the data files beside the model") from error
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and opset < MIN_OPSET:
        raise UnsupportedModelError(f"{path} uses opset {opset}; onnxcomp needs opset {MIN_OPSET} or newer: upgrade it with onnx.version_converter")
    return model


def constants_to_initializers(graph: onnx.GraphProto) -> int:
    """Move float tensors held by Constant nodes into initializers, so passes see one kind of weight."""
    moved = 0
    for node in list(graph.node):
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
            continue
        attribute = node.attribute[0]
        if attribute.name != "value" or attribute.t.data_type != onnx.TensorProto.FLOAT:
            continue
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attribute.t)
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        graph.node.remove(node)
        moved += 1
    return moved


def check_output_path(input_path: str, output_path: str) -> None:
    if os.path.abspath(input_path) == os.path.abspath(output_path):
        raise OutputError(f"output {output_path} is the input: give another output path (the input is never overwritten)")
    folder = os.path.dirname(os.path.abspath(output_path))
    if not os.path.isdir(folder):
        raise OutputError(f"output folder {folder} does not exist: create it first")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"output folder {folder} is not writable")
    if os.path.abspath(sidecar.sidecar_path(output_path)) == os.path.abspath(input_path):
        raise OutputError(f"the sidecar of {output_path} would overwrite the input: choose another output name")


def write_compressed(model: onnx.ModelProto, records: list, output_path: str) -> str | None:
    """Write ``model`` and the sidecar of ``records`` ((initializer name, record name, bytes, transposed)).

    Record initializers become external data in the sidecar. Both files are written to temporary names in
    the output folder and renamed only when complete; returns the sidecar path (None if no records).
    """
    folder = os.path.dirname(os.path.abspath(output_path))
    sidecar_file = sidecar.sidecar_path(output_path)
    temporaries: list[str] = []
    try:
        if records:
            sidecar_tmp = _temporary(folder, temporaries)
            writer = sidecar.SidecarWriter(sidecar_tmp)
            initializers = {t.name: t for t in model.graph.initializer}
            try:
                for weight_name, record_name, record, transposed in records:
                    entry = writer.add(weight_name, record, transposed)
                    tensor = initializers[record_name]
                    tensor.ClearField("raw_data")
                    tensor.data_location = onnx.TensorProto.EXTERNAL
                    del tensor.external_data[:]
                    for key, value in (("location", os.path.basename(sidecar_file)), ("offset", entry.offset), ("length", entry.length)):
                        item = tensor.external_data.add()
                        item.key, item.value = key, str(value)
            finally:
                writer.close()
        model_tmp = _temporary(folder, temporaries)
        with open(model_tmp, "wb") as f:
            f.write(model.SerializeToString())
        if records:
            os.replace(sidecar_tmp, sidecar_file)
        os.replace(model_tmp, output_path)
        temporaries.clear()
    except OSError as error:
        raise OutputError(f"cannot write {output_path}: {error.strerror or error}; nothing was written") from error
    finally:
        for path in temporaries:
            with contextlib.suppress(OSError):
                os.remove(path)
    return sidecar_file if records else None


def _temporary(folder: str, temporaries: list[str]) -> str:
    handle, path = tempfile.mkstemp(prefix=".onnxcomp-", suffix=".tmp", dir=folder)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # mkstemp's 0600 would surprise users sharing the output
    temporaries.append(path)
    return path
