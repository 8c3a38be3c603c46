"""The C++ host example (examples/cpp_host): built with CMake against the onnxruntime library of the installed
wheel, it runs compressed bundled models with no Python and prints what the Python session computes."""

import glob
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import onnxcomp
from onnxcomp.pipeline.compression import compress

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "cpp_host"

pytestmark = pytest.mark.skipif(
    shutil.which("cmake") is None or (shutil.which("c++") is None and shutil.which("g++") is None),
    reason="the C++ host example needs cmake and a C++ compiler (c++ or g++) on PATH")


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> Path:
    """The onnxcomp_run program, built once for this module (headers as for the library: ORT_INCLUDE_DIR or fetched)."""
    libraries = glob.glob(os.path.join(os.path.dirname(ort.__file__), "capi", "libonnxruntime.so*"))
    assert libraries, f"the onnxruntime wheel at {os.path.dirname(ort.__file__)} ships no capi/libonnxruntime.so*"
    build = tmp_path_factory.mktemp("cpp_host")
    for command in (["cmake", "-S", str(EXAMPLE), "-B", str(build), f"-DONNXRUNTIME_LIBRARY={sorted(libraries)[0]}"],
                    ["cmake", "--build", str(build), "-j", "2"]):
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return build / "onnxcomp_run"


def parse_outputs(stdout: str) -> dict[str, np.ndarray]:
    """The program's output: per tensor a line `output <name> <dtype> [dims]`, then a line of values."""
    lines = stdout.splitlines()
    outputs = {}
    for header, values in zip(lines[0::2], lines[1::2]):
        tag, name, dtype, dims = header.split(" ")
        assert tag == "output"
        shape = [int(d) for d in dims.strip("[]").split(",") if d]
        outputs[name] = np.array(values.split(), dtype=np.float32 if dtype == "float32" else np.int64).reshape(shape)
    return outputs


@pytest.mark.parametrize("model_name, eval_data", [("lenet300_fashion", "fashion_eval"), ("lenet5_fashion", "fashion_eval")])
def test_cpp_host_matches_python(host, tmp_path, model_name, eval_data):
    small = tmp_path / "small.onnx"
    compress(ROOT / "models" / f"{model_name}.onnx", small)
    x = np.load(ROOT / "models" / f"{eval_data}.npz")["input"][:16]
    np.save(tmp_path / "x.npy", x)

    result = subprocess.run([host, small, "--library", onnxcomp.library_path(), tmp_path / "x.npy"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    got = parse_outputs(result.stdout)

    session = onnxcomp.InferenceSession(small)
    names = [o.name for o in session.get_outputs()]
    expected = dict(zip(names, session.run(None, {session.get_inputs()[0].name: x})))
    assert got.keys() == expected.keys()
    for name in names:
        assert got[name].shape == expected[name].shape
        # Same runtime, same kernels: only thread scheduling of the standard ops can change the summation order.
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-5)


def test_cpp_host_without_the_library_names_the_missing_op(host, tmp_path):
    small = tmp_path / "small.onnx"
    compress(ROOT / "models" / "lenet300_fashion.onnx", small)
    np.save(tmp_path / "x.npy", np.zeros((1, 784), np.float32))
    result = subprocess.run([host, small, tmp_path / "x.npy"], capture_output=True, text=True)
    assert result.returncode == 1
    assert "CodebookMatMul" in result.stderr and "not a registered function/op" in result.stderr


def test_cpp_host_rejects_a_wrong_input_file(host, tmp_path):
    (tmp_path / "x.npy").write_bytes(b"not numpy")
    result = subprocess.run([host, ROOT / "models" / "lenet300_fashion.onnx", tmp_path / "x.npy"],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "not a .npy file" in result.stderr
