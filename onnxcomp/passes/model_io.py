"""Reading input models and writing compressed outputs safely (temporary files, then rename)."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

import onnx
from google.protobuf.message import DecodeError

from onnxcomp import staging
from onnxcomp.core import sidecar
from onnxcomp.errors import CorruptSidecarError, OutputError, UnsupportedModelError

MIN_OPSET = 7
FLOAT_CONSTANTS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)
# Outputs at least this large (protobuf's limit is 2 GiB) keep their uncompressed initializers in a data file.
LARGE_MODEL_BYTES = 2**31 - 2**26


def load_model(path: str, external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX model with its external data (unless told not to); errors say what is wrong with the file."""
    if os.path.isdir(path):
        raise UnsupportedModelError(f"{path} is a folder; give the path of an .onnx model file")
    if not os.path.isfile(path):
        raise UnsupportedModelError(f"{path}: no such file; give the path of an .onnx model")
    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, UnicodeDecodeError) as error:
        raise UnsupportedModelError(f"{path} is not a valid ONNX model ({error}); re-export it") from error
    if not model.graph.node and not model.graph.initializer:
        raise UnsupportedModelError(f"{path} holds no graph; is it really an ONNX model?")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and opset < MIN_OPSET:
        raise UnsupportedModelError(f"{path} uses opset {opset}; onnxcomp needs opset {MIN_OPSET} or newer: upgrade it with onnx.version_converter")
    if opset is not None and opset > onnx.defs.onnx_opset_version():
        raise UnsupportedModelError(f"{path} uses opset {opset}, newer than this onnx {onnx.__version__} knows "
                                    f"({onnx.defs.onnx_opset_version()}): upgrade onnx, or export with an older opset")
    folder = os.path.dirname(os.path.abspath(path))
    locations = sorted({entry.value for graph in graphs_of(model.graph) for t in graph.initializer
                        for entry in t.external_data if entry.key == "location"})
    for location in locations:
        try:
            data_file = external_data_path(folder, location)
        except CorruptSidecarError as error:
            raise UnsupportedModelError(f"{path}: {error}") from error
        if not os.path.isfile(data_file):
            what = "its sidecar" if location.endswith(sidecar.SIDECAR_SUFFIX) else "its external data file"
            raise UnsupportedModelError(f"{path}: {what} {location} is missing; keep it beside the model")
    try:
        if external_data:
            onnx.load_external_data_for_model(model, folder)
    except (OSError, onnx.checker.ValidationError, ValueError) as error:
        raise UnsupportedModelError(f"{path}: its external data ({', '.join(locations)}) cannot be read ({error}); "
                                    "keep the complete data files beside the model") from error
    try:
        # A proto over 2 GB cannot be checked in memory; the checker then reads the file itself.
        # Without its external data in memory, the checker must read the file to resolve data locations.
        # Without external data at all the file holds the very proto just parsed: the checker reads it (in C++)
        # rather than have Python serialise the whole model again for it (0.6 s on a 100 MB model).
        in_memory = external_data and bool(locations) and model.ByteSize() < onnx.checker.MAXIMUM_PROTOBUF
        onnx.checker.check_model(model if in_memory else path)
    except onnx.checker.ValidationError as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UnsupportedModelError(f"{path} is not a valid ONNX model ({first_line}); fix or re-export it") from error
    return model


def external_data_path(folder: str, location: str) -> str:
    """The file an external-data ``location`` names, refusing any that leaves ``folder`` (absolute, ``..``).

    A model may come from anywhere; its data locations must not make a reader open files outside its folder.
    """
    parts = location.replace("\\", "/").split("/")
    if not location or os.path.isabs(location) or location.startswith(("/", "\\")) or ".." in parts \
            or (len(location) > 1 and location[1] == ":"):
        raise CorruptSidecarError(f"external data location {location!r} points outside the model's folder; "
                                  "data files must sit beside the model (a plain file name)")
    return os.path.join(folder, *[p for p in parts if p not in ("", ".")])


def graphs_of(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph inside it (If branches, Loop and Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from graphs_of(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from graphs_of(subgraph)


def hoist_shared_initializers(graph: onnx.GraphProto) -> int:
    """Store once, in the main graph, every initializer that several graphs of the model hold under one name
    (onnx-graphsurgeon exports a constant read by nodes of two subgraphs, say both branches of an If, into each of
    them; an ONNX name is one value, and every subgraph may read the main graph's). Returns how many moved."""
    graphs = list(graphs_of(graph))
    holders: dict[str, list[onnx.GraphProto]] = {}
    for each in graphs:
        for tensor in each.initializer:
            holders.setdefault(tensor.name, []).append(each)
    shared = {name for name, where in holders.items() if len(where) > 1}
    if not shared:
        return 0
    in_main = {t.name for t in graph.initializer}
    for each in graphs[1:]:
        kept = []
        for tensor in each.initializer:
            if tensor.name not in shared:
                kept.append(tensor)
            elif tensor.name not in in_main:
                graph.initializer.append(tensor)
                in_main.add(tensor.name)
        del each.initializer[:]
        each.initializer.extend(kept)
    return len(shared)


def constants_to_initializers(graph: onnx.GraphProto) -> int:
    """Move float tensors (float32, float16, bfloat16, float64) held by Constant nodes into initializers (in every subgraph too), so passes see one
    kind of weight."""
    moved = 0
    for subgraph in list(graphs_of(graph))[1:]:
        moved += constants_to_initializers_here(subgraph)
    return moved + constants_to_initializers_here(graph)


def constants_to_initializers_here(graph: onnx.GraphProto) -> int:
    moved = 0
    for node in list(graph.node):
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
            continue
        attribute = node.attribute[0]
        if attribute.name != "value" or attribute.t.data_type not in FLOAT_CONSTANTS:
            continue
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attribute.t)
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        graph.node.remove(node)
        moved += 1
    return moved


def float_tensor(values, name: str, element_type: int) -> onnx.TensorProto:
    """An initializer ``name`` holding float ``values`` as ``element_type`` (FLOAT, FLOAT16, BFLOAT16 or DOUBLE);
    bfloat16 rounds to nearest even, as onnxruntime's Cast does."""
    import numpy as np
    values = np.asarray(values, dtype=np.float32)
    if element_type == onnx.TensorProto.BFLOAT16:
        bits = values.view(np.uint32).astype(np.uint64)
        words = (((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF).astype("<u2")
        return onnx.helper.make_tensor(name, element_type, list(values.shape), words.tobytes(), raw=True)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(element_type)
    return onnx.numpy_helper.from_array(values.astype(dtype), name)


def substituted(model: onnx.ModelProto, values: dict) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers named in ``values`` (in any graph) hold those float values, kept in
    each initializer's own element type."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for graph in graphs_of(copy.graph):
        for tensor in graph.initializer:
            if tensor.name in values:
                tensor.CopyFrom(float_tensor(values[tensor.name], tensor.name, tensor.data_type))
    return copy


def check_output_path(input_path: str, output_path: str) -> None:
    if os.path.abspath(input_path) == os.path.abspath(output_path):
        raise OutputError(f"output {output_path} is the input: give another output path (the input is never overwritten)")
    for path in (output_path, sidecar.sidecar_path(output_path), dense_data_path(output_path)):
        if os.path.abspath(path) == os.path.abspath(input_path):
            raise OutputError(f"{path}, written beside {output_path}, would overwrite the input: choose another output name")
        if os.path.isdir(path):
            raise OutputError(f"{path} is a folder: give a file name for the output")
    folder = os.path.dirname(os.path.abspath(output_path))
    if not os.path.isdir(folder):
        raise OutputError(f"output folder {folder} does not exist: create it first")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"output folder {folder} is not writable")
    if os.path.abspath(sidecar.sidecar_path(output_path)) == os.path.abspath(input_path):
        raise OutputError(f"the sidecar of {output_path} would overwrite the input: choose another output name")


def attach_external_values(graph, folder: str) -> int:
    """Give every graphsurgeon constant stored as external data (in ``folder``) lazy values that read only
    that tensor's bytes when asked for, never cached in the graph (passes.base.read_values)."""
    import onnx_graphsurgeon as gs
    from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

    from onnxcomp.passes.base import ExternalValues
    attached = 0
    for subgraph in [graph, *graph.subgraphs(recursive=True)]:
        for tensor in subgraph.tensors().values():
            values = getattr(tensor, "_values", None)
            if not isinstance(tensor, gs.Constant) or type(values) is not LazyValues or isinstance(values, SparseValues) \
                    or values.tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            path, offset, length = external_location(values.tensor, folder)
            tensor._values = ExternalValues(values.tensor, path, offset, length)
            attached += 1
    return attached


def external_location(tensor: onnx.TensorProto, folder: str) -> tuple[str, int, int | None]:
    """(file, offset, length or None) of an external-data tensor whose model sits in ``folder``."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    try:
        path = external_data_path(folder, info.get("location", ""))
    except CorruptSidecarError as error:
        raise UnsupportedModelError(str(error)) from error
    length = info.get("length")
    return path, int(info.get("offset", 0) or 0), int(length) if length not in (None, "") else None


@staging.writes_output
def write_compressed(model: onnx.ModelProto, records: list, output_path: str, source_folder: str | None = None) -> str | None:
    """Write ``model`` and the sidecar of ``records`` ((initializer name, record name, bytes, transposed)).

    Record initializers become external data in the sidecar. Both files are written to temporary names in
    the output folder and renamed only when complete; returns the sidecar path (None if no records). A previous
    output's sidecar and data file are set aside, not overwritten, until the new model is in place, and are put
    back if any step fails, so the old model and its sidecar stay a working pair.
    With ``source_folder``, initializers still stored as external data of the input (a streamed model) are
    read from there: loaded inline if the output stays under 2 GB, else copied, chunk by chunk, into OUT.data.
    """
    folder = os.path.dirname(os.path.abspath(output_path))
    sidecar_file = sidecar.sidecar_path(output_path)
    temporaries: list[str] = []
    backups: list[tuple[str, str]] = []  # (aside, final) for files of a previous output being replaced
    record_names = {record_name for _, record_name, _, _ in records}
    sources = []  # initializers whose data is still in the input's data files
    if source_folder is not None:
        sources = [t for graph in graphs_of(model.graph) for t in graph.initializer
                   if t.data_location == onnx.TensorProto.EXTERNAL and t.name not in record_names]
    try:
        if records:
            sidecar_tmp = _temporary(folder, temporaries)
            writer = sidecar.SidecarWriter(sidecar_tmp)
            initializers: dict[str, list[onnx.TensorProto]] = {}
            for graph in graphs_of(model.graph):  # a record used inside an If/Loop/Scan body lives there
                for t in graph.initializer:
                    initializers.setdefault(t.name, []).append(t)
            try:
                for weight_name, record_name, record, transposed in records:
                    entry = writer.add(weight_name, record, transposed)
                    for tensor in initializers[record_name]:
                        tensor.ClearField("raw_data")
                        tensor.data_location = onnx.TensorProto.EXTERNAL
                        del tensor.external_data[:]
                        for key, value in (("location", os.path.basename(sidecar_file)), ("offset", entry.offset), ("length", entry.length)):
                            item = tensor.external_data.add()
                            item.key, item.value = key, str(value)
            except BaseException:
                writer.abort()
                raise
            writer.close()
        data_file = dense_data_path(output_path)
        data_tmp = None
        located = [(t, *external_location(t, source_folder)) for t in sources]
        source_bytes = sum(length if length is not None else max(os.path.getsize(path) - offset, 0)
                           for _, path, offset, length in located)
        if model.ByteSize() + source_bytes >= LARGE_MODEL_BYTES:
            data_tmp = _temporary(folder, temporaries)
            _move_dense_initializers(model, data_tmp, os.path.basename(data_file), dict((id(t), rest) for t, *rest in located))
        else:
            for tensor, path, offset, length in located:
                with open(path, "rb") as source:
                    source.seek(offset)
                    data = source.read() if length is None else source.read(length)
                if length is not None and len(data) != length:
                    raise UnsupportedModelError(f"{tensor.name}: its external data file {os.path.basename(path)} is too short")
                _set_raw(tensor, data)
        model_tmp = _temporary(folder, temporaries)
        _write_model(model, model_tmp)
        for tmp, final in ((sidecar_tmp if records else None, sidecar_file), (data_tmp, data_file)):
            if tmp is not None:
                if os.path.lexists(final):  # the previous output's file: kept aside until the new model is in place
                    backup = _temporary(folder, [], aside=True)
                    os.replace(final, backup)
                    backups.append((backup, final))
                os.replace(tmp, final)
                temporaries.append(final)  # of no use without its model: removed if the next step fails
        os.replace(model_tmp, output_path)
        temporaries.clear()
        for backup, _ in backups:
            with contextlib.suppress(OSError):
                os.remove(backup)
        backups.clear()
    except OSError as error:
        hint = "the disk is full: free some space and run again" if error.errno == errno.ENOSPC else "nothing was written"
        raise OutputError(f"cannot write {output_path}: {error.strerror or error}; {hint}") from error
    finally:
        for path in temporaries:
            with contextlib.suppress(OSError):
                os.remove(path)
        for backup, final in reversed(backups):  # a failed write puts the previous model's files back
            with contextlib.suppress(OSError):
                os.replace(backup, final)
    return sidecar_file if records else None


@staging.writes_output
def install_staged(staged_path: str, output_path: str) -> str | None:
    """Move a complete output written at ``staged_path`` (a temporary folder in the output's folder, same file
    name) to ``output_path``: its sidecar and data file first, the model last. A previous output's files are set
    aside until the new model is in place and put back if a step fails. Returns the installed sidecar path, or
    None when the staged output has none."""
    folder = os.path.dirname(os.path.abspath(output_path))
    companions = [(staged, os.path.join(folder, os.path.basename(staged)))
                  for staged in (sidecar.sidecar_path(staged_path), dense_data_path(staged_path))]
    moves = [(staged, final) for staged, final in companions if os.path.isfile(staged)]
    # A previous output's sidecar or data file that the new output does not have would be left beside it, stale.
    stale = [final for staged, final in companions if not os.path.isfile(staged) and os.path.lexists(final)]
    backups: list[tuple[str, str]] = []
    installed: list[str] = []
    try:
        for final in stale:
            backup = _temporary(folder, [], aside=True)
            os.replace(final, backup)
            backups.append((backup, final))
        for staged, final in moves:
            if os.path.lexists(final):
                backup = _temporary(folder, [], aside=True)
                os.replace(final, backup)
                backups.append((backup, final))
            os.replace(staged, final)
            installed.append(final)
        os.replace(staged_path, output_path)
    except OSError as error:
        for final in installed:
            with contextlib.suppress(OSError):
                os.remove(final)
        for backup, final in backups:
            with contextlib.suppress(OSError):
                os.replace(backup, final)
        raise OutputError(f"cannot write {output_path}: {error.strerror or error}; nothing was written") from error
    for backup, _ in backups:
        with contextlib.suppress(OSError):
            os.remove(backup)
    sidecar_file = sidecar.sidecar_path(output_path)
    return sidecar_file if any(final == os.path.join(folder, os.path.basename(sidecar_file)) for _, final in moves) else None


def dense_data_path(output_path: str) -> str:
    """Where the uncompressed initializers of an output over 2 GB go (``small.onnx`` -> ``small.onnx.data``)."""
    return os.fspath(output_path) + ".data"


def _set_raw(tensor: onnx.TensorProto, data: bytes) -> None:
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT
    tensor.raw_data = data


def _move_dense_initializers(model: onnx.ModelProto, path: str, location: str, sources: dict | None = None) -> None:
    """Move every initializer still held inline (>= 1 KiB) into ``path`` as ONNX external data at ``location``;
    ``sources`` maps id(tensor) to the (file, offset, length) of initializers still in the input's data
    files, which are copied in bounded chunks (never whole in memory).

    A protobuf cannot exceed 2 GB, so an output whose dense weights alone pass that limit keeps them beside it.
    """
    sources = sources or {}
    with open(path, "wb") as f:
        for graph in graphs_of(model.graph):
            for tensor in graph.initializer:
                source = sources.get(id(tensor))
                if source is None and (tensor.data_location == onnx.TensorProto.EXTERNAL or not tensor.HasField("raw_data")
                                       or len(tensor.raw_data) < 1024):
                    continue
                f.write(b"\0" * (-f.tell() % 4096))  # page-aligned, so runtimes can map the data
                offset = f.tell()
                if source is not None:
                    length = _copy_range(*source, f, tensor.name)
                else:
                    f.write(tensor.raw_data)
                    length = len(tensor.raw_data)
                tensor.ClearField("raw_data")
                tensor.data_location = onnx.TensorProto.EXTERNAL
                del tensor.external_data[:]
                for key, value in (("location", location), ("offset", offset), ("length", length)):
                    item = tensor.external_data.add()
                    item.key, item.value = key, str(value)


COPY_CHUNK = 1 << 24


def _copy_range(path: str, offset: int, length: int | None, out, name: str) -> int:
    """Copy ``length`` bytes (to the end if None) of ``path`` from ``offset`` into ``out``, 16 MiB at a time."""
    copied = 0
    with open(path, "rb") as source:
        source.seek(offset)
        while length is None or copied < length:
            chunk = source.read(COPY_CHUNK if length is None else min(COPY_CHUNK, length - copied))
            if not chunk:
                break
            out.write(chunk)
            copied += len(chunk)
    if length is not None and copied != length:
        raise UnsupportedModelError(f"{name}: its external data file {os.path.basename(path)} is too short")
    return copied


def _write_model(model: onnx.ModelProto, path: str) -> None:
    with open(path, "wb") as f:
        f.write(model.SerializeToString())


def _temporary(folder: str, temporaries: list[str], aside: bool = False) -> str:
    """A new temporary file in ``folder`` (staging.temporary_file), appended to ``temporaries``."""
    path = staging.temporary_file(folder, aside)
    temporaries.append(path)
    return path


def model_bytes(path: str, model: onnx.ModelProto | None = None) -> int:
    """The model file plus the external data files it references; ``model``: the file's graph as already parsed
    (load_model(path, external_data=False)), so it is not parsed again."""
    total = os.path.getsize(path)
    model = model if model is not None else onnx.load(path, load_external_data=False)
    folder = os.path.dirname(os.path.abspath(path))
    locations = {entry.value for graph in graphs_of(model.graph) for t in graph.initializer
                 for entry in t.external_data if entry.key == "location"}
    files = [external_data_path(folder, location) for location in locations]
    return total + sum(os.path.getsize(file) for file in files if os.path.isfile(file))
