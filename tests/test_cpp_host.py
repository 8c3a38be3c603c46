"""The C++ host example (examples/cpp_host): built with CMake against the onnxruntime library of the installed
wheel by its README's own commands, run from where the README leaves the user, it runs compressed bundled
models with no Python and prints what the Python session computes."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import onnxcomp
from checkout import fenced_blocks, repository_root_like, run_shell
from onnxcomp.pipeline.compression import compress

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "examples" / "cpp_host" / "README.md"

pytestmark = pytest.mark.skipif(
    shutil.which("cmake") is None or (shutil.which("c++") is None and shutil.which("g++") is None),
    reason="the C++ host example needs cmake and a C++ compiler (c++ or g++) on PATH")


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A folder laid out like the repository root, where the example's README leaves the user."""
    return repository_root_like(tmp_path_factory.mktemp("checkout"))


@pytest.fixture(scope="module")
def host(checkout) -> Path:
    """The onnxcomp_run program, built once for this module by the README's build block, run as written from the
    repository root (headers as for the library: ORT_INCLUDE_DIR or fetched)."""
    build_block = next(block for block in fenced_blocks(README) if "cmake --build" in block)
    result = run_shell(build_block, checkout)
    assert result.returncode == 0, f"the README's build block failed:\n{result.stdout}\n{result.stderr}"
    return checkout / "build" / "cpp_host" / "onnxcomp_run"


def test_readme_run_block_works_from_the_repository_root(host, checkout):
    """The README's run lines, as written (the venv's python, the library found from the source folder)."""
    run_block = next(block for block in fenced_blocks(README) if "onnxcomp_run" in block)
    assert "python3" not in run_block.replace(".venv/bin/python", "")  # the venv's python, not whatever python3 is
    result = run_shell(run_block, checkout)
    assert result.returncode == 0, f"the README's run block failed:\n{result.stdout}\n{result.stderr}"
    got = parse_outputs(result.stdout[result.stdout.index("output "):])
    x = np.load(ROOT / "models" / "fashion_eval.npz")["input"][:4]
    session = onnxcomp.InferenceSession(checkout / "small.onnx")
    (expected,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(got["logits"], expected, rtol=1e-5, atol=1e-5)


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
