"""Untrusted sidecars and models: damage gives a clean onnxruntime error at session creation, never a crash.

Each session is opened in a subprocess, so a crash (a signal) shows up as a failed test instead of killing
pytest. onnxcomp's own readers refuse sidecar locations outside the model's folder.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxcomp
from onnxcomp.passes import model_io
from onnxcomp.errors import CorruptSidecarError, UnsupportedModelError

from conftest import float_input, make_model, weight

OPEN_SESSION = """
import sys
import onnxruntime as ort
options = ort.SessionOptions()
options.register_custom_ops_library(sys.argv[2])
try:
    ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
except Exception as error:
    print(type(error).__name__ + ": " + str(error))
    sys.exit(3)
print("opened")
"""


def open_session(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", OPEN_SESSION, str(path), onnxcomp.library_path()],
                          capture_output=True, text=True, timeout=120)


def expect_clean_error(path: Path, *words):
    result = open_session(path)
    assert result.returncode == 3, f"exit {result.returncode} (negative = killed by a signal): {result.stdout}{result.stderr}"
    for word in words:
        assert word in result.stdout, result.stdout
    return result.stdout


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """A compressed model with two records (a fused MatMul and a decoded Conv-style use)."""
    rng = np.random.default_rng(7)
    folder = tmp_path_factory.mktemp("clean")
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("MatMul", ["h", "v"], ["y"])],
                       [float_input("x", ["n", 64])], [float_input("y", ["n", 16])],
                       [weight(rng, "w", (64, 32)), weight(rng, "v", (32, 16))])
    onnx.save(model, folder / "in.onnx")
    onnxcomp.compress(folder / "in.onnx", folder / "out.onnx", sparsity=0.5, bits=4, min_elements=16)
    return folder


def copy_of(compressed: Path, tmp_path: Path) -> tuple[Path, Path]:
    for name in ("out.onnx", "out.onnxcomp"):
        (tmp_path / name).write_bytes((compressed / name).read_bytes())
    return tmp_path / "out.onnx", tmp_path / "out.onnxcomp"


def record_entries(model_path: Path) -> list[dict[str, str]]:
    model = onnx.load(str(model_path), load_external_data=False)
    return [{e.key: e.value for e in t.external_data} for t in model.graph.initializer if t.external_data]


def edit_external_data(model_path: Path, **changes):
    model = onnx.load(str(model_path), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.external_data)
    for entry in tensor.external_data:
        if entry.key in changes:
            entry.value = str(changes[entry.key])
    onnx.save(model, str(model_path))


def test_the_clean_copy_opens(compressed, tmp_path):
    model_path, _ = copy_of(compressed, tmp_path)
    result = open_session(model_path)
    assert result.returncode == 0 and "opened" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("where", [0, 6, 12, 30, 60, -5, -1])
def test_flipped_byte_in_a_record(compressed, tmp_path, where):
    model_path, sidecar_path = copy_of(compressed, tmp_path)
    entry = record_entries(model_path)[0]
    offset, length = int(entry["offset"]), int(entry["length"])
    data = bytearray(sidecar_path.read_bytes())
    data[offset + (where % length)] ^= 0x04
    sidecar_path.write_bytes(bytes(data))
    expect_clean_error(model_path, "onnxcomp: node")


@pytest.mark.parametrize("cut", ["empty", "header", "first record", "last record"])
def test_truncated_sidecar(compressed, tmp_path, cut):
    """Cut inside what the model points at (the runtime never reads the directory at the end)."""
    model_path, sidecar_path = copy_of(compressed, tmp_path)
    entries = sorted(record_entries(model_path), key=lambda e: int(e["offset"]))
    first, last = entries[0], entries[-1]
    size = {"empty": 0, "header": 16, "first record": int(first["offset"]) + int(first["length"]) // 2,
            "last record": int(last["offset"]) + int(last["length"]) - 1}[cut]
    sidecar_path.write_bytes(sidecar_path.read_bytes()[:size])
    expect_clean_error(model_path)


def test_wrong_record_version_with_a_valid_checksum(compressed, tmp_path):
    model_path, sidecar_path = copy_of(compressed, tmp_path)
    entry = record_entries(model_path)[0]
    offset, length = int(entry["offset"]), int(entry["length"])
    data = bytearray(sidecar_path.read_bytes())
    record = bytearray(data[offset:offset + length])
    record[4:6] = struct.pack("<H", 5)
    record[-4:] = struct.pack("<I", zlib.crc32(bytes(record[:-4])))
    data[offset:offset + length] = record
    sidecar_path.write_bytes(bytes(data))
    expect_clean_error(model_path, "onnxcomp: node", "version")


@pytest.mark.parametrize("changes", [dict(offset=10**9), dict(length=10**9), dict(offset=2**63 - 1, length=2**63 - 1),
                                     dict(length=20), dict(offset=1), dict(offset=-64), dict(offset="x")])
def test_lying_offset_or_length_in_the_model(compressed, tmp_path, changes):
    model_path, _ = copy_of(compressed, tmp_path)
    edit_external_data(model_path, **changes)
    expect_clean_error(model_path)


@pytest.mark.parametrize("dims", [[10**9], [20], [2**62]])
def test_record_size_lies_in_the_model(compressed, tmp_path, dims):
    model_path, _ = copy_of(compressed, tmp_path)
    model = onnx.load(str(model_path), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.external_data)
    del tensor.dims[:]
    tensor.dims.extend(dims)
    onnx.save(model, str(model_path))
    expect_clean_error(model_path)


@pytest.mark.parametrize("location", ["../out.onnxcomp", "/etc/passwd", "sub/../../out.onnxcomp"])
def test_location_outside_the_model_folder(compressed, tmp_path, location):
    inner = tmp_path / "inner"
    inner.mkdir()
    model_path, _ = copy_of(compressed, inner)
    (tmp_path / "out.onnxcomp").write_bytes((compressed / "out.onnxcomp").read_bytes())
    edit_external_data(model_path, location=location)
    expect_clean_error(model_path)


@pytest.mark.parametrize("location", ["../out.onnxcomp", "/etc/passwd", "a/../../b"])
def test_python_readers_refuse_locations_outside_the_folder(tmp_path, location):
    with pytest.raises(CorruptSidecarError, match="outside"):
        model_io.external_data_path(str(tmp_path), location)


def test_python_loader_refuses_an_absolute_location(compressed, tmp_path, rng):
    data = tmp_path / "w.bin"
    data.write_bytes(rng.standard_normal(64 * 32).astype(np.float32).tobytes())
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [float_input("x", ["n", 64])],
                       [float_input("y", ["n", 32])], [weight(rng, "w", (64, 32))])
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", str(data)), ("offset", "0"), ("length", str(64 * 32 * 4))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(tmp_path / "abs.onnx"))
    with pytest.raises(UnsupportedModelError, match="outside"):
        model_io.load_model(str(tmp_path / "abs.onnx"))


def outlier_matmul_model(record: bytes) -> onnx.ModelProto:
    from onnx import numpy_helper
    node = helper.make_node("CodebookMatMul", ["x", "w"], ["y"], domain=onnxcomp.runtime.DOMAIN)
    graph = helper.make_graph([node], "outliers", [float_input("x", ["n", 10])], [float_input("y", None)],
                              [numpy_helper.from_array(np.frombuffer(record, np.uint8), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(onnxcomp.runtime.DOMAIN, 1)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("damage", ["position at N", "count zero", "count above N", "values cut", "extra byte", "bad format"])
def test_damaged_outlier_section_is_a_clean_error(tmp_path, damage):
    """A version-2 record whose outlier section lies (CRC recomputed): both readers refuse it, no crash."""
    from onnxcomp.core import sidecar
    rng = np.random.default_rng(5)
    good = sidecar.encode_record(rng.standard_normal(4).astype(np.float32), rng.integers(0, 4, 60), (10, 6), 2,
                                 np.array([59]), np.array([9.0], np.float32))
    body = bytearray(good[:-4])
    start = len(body) - 2 - 1 - 18  # one binary16 value, a one-byte position stream, the 18-byte header
    assert struct.unpack("<QBBQ", bytes(body[start:start + 18]))[0] == 1
    if damage == "position at N":
        count, fmt, r, bits = struct.unpack("<QBBQ", bytes(body[start:start + 18]))
        gap = 60  # every code of r + 1 + quotient bits; rewrite the stream with gap 60 = N
        quotient, code_bits = gap >> r, (gap >> r) + 1 + r
        assert code_bits == bits
        code = ((1 << quotient) - 1) << (r + 1) | (gap & ((1 << r) - 1))
        body[start + 18] = (code << (8 - code_bits)) & 0xFF
    elif damage == "count zero":
        body[start:start + 8] = struct.pack("<Q", 0)
    elif damage == "count above N":
        body[start:start + 8] = struct.pack("<Q", 61)
    elif damage == "values cut":
        del body[-1]
    elif damage == "extra byte":
        body += b"\0"
    elif damage == "bad format":
        body[start + 8] = 7
    record = reseal(bytes(body))
    with pytest.raises(CorruptSidecarError):
        sidecar.decode_record(record)
    path = tmp_path / "m.onnx"
    onnx.save(outlier_matmul_model(record), str(path))
    expect_clean_error(path, "onnxcomp: node", "corrupt weight record")
    onnx.save(outlier_matmul_model(good), str(path))
    assert open_session(path).returncode == 0


def reseal(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))
