"""The command line: success output, and bad input giving a one-line error, a non-zero exit, nothing lost."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from conftest import float_input, make_model, weight

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "models" / "lenet300_fashion.onnx"
BUNDLED_EVAL = ROOT / "models" / "fashion_eval.npz"


def cli_command(*args) -> list[str]:
    """The command line running the CLI in a subprocess that imports the same onnxcomp as these tests (installed or
    checkout)."""
    import onnxcomp as package
    home = str(Path(package.__file__).resolve().parents[1])
    code = f"import sys; sys.path.insert(0, {home!r}); from onnxcomp.front.cli import run; run()"
    return [sys.executable, "-c", code, *map(str, args)]


def onnxcomp(*args):
    return subprocess.run(cli_command(*args), capture_output=True, text=True, cwd=ROOT.parent)


@pytest.fixture
def small_model(tmp_path, rng):
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [float_input("x", ["n", 64])],
                       [float_input("y", ["n", 32])], [weight(rng, "w", (64, 32))])
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return path


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_compress_bundled_model_prints_ratio_and_accuracy(tmp_path):
    result = onnxcomp("compress", BUNDLED, tmp_path / "small.onnx", "--eval", BUNDLED_EVAL, "--report", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    assert "smaller" in result.stdout and "top-1 accuracy" in result.stdout
    assert (tmp_path / "small.onnxcomp").is_file()
    import json
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ratio"] > 5  # per-layer bits by the data-free proxy (docs/guide.md, Defaults): 6.3x on LeNet-300-100
    assert report["accuracy_before"] - report["accuracy_after"] <= 0.01
    # fc3.weight (1,000 elements) is below --min-elements: left dense, and the line says it is stored as float16
    assert [name for name, _ in report["float16"]] == ["fc3.weight"]
    assert "left dense: fc3.weight: 1000 elements, below --min-elements 1024, stored as float16" in result.stdout


def expect_error(result, *words):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    message = result.stderr.strip()
    for word in words:
        assert word in message, message


def test_not_an_onnx_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a model at all \x00\xff" * 10)
    before = digest(bad)
    expect_error(onnxcomp("compress", bad, tmp_path / "out.onnx"), "not a valid ONNX model")
    assert digest(bad) == before and not (tmp_path / "out.onnx").exists()


def test_missing_input(tmp_path):
    expect_error(onnxcomp("compress", tmp_path / "nope.onnx", tmp_path / "out.onnx"), "no such file")


def test_output_equal_to_input(small_model):
    before = digest(small_model)
    expect_error(onnxcomp("compress", small_model, small_model), "is the input")
    assert digest(small_model) == before


def test_output_folder_missing(small_model, tmp_path):
    expect_error(onnxcomp("compress", small_model, tmp_path / "no" / "out.onnx"), "does not exist")


@pytest.mark.parametrize("option", [["--bits", "0"], ["--bits", "17"], ["--sparsity", "1.5"], ["--fc-bits", "20"]])
def test_invalid_option_values(small_model, tmp_path, option):
    result = onnxcomp("compress", small_model, tmp_path / "out.onnx", *option)
    assert result.returncode == 2  # usage error
    assert not (tmp_path / "out.onnx").exists()


def test_eval_data_with_a_missing_input(small_model, tmp_path):
    data = tmp_path / "d.npz"
    np.savez(data, wrong=np.zeros((3, 64), np.float32), labels=np.zeros(3, np.int64))
    expect_error(onnxcomp("compress", small_model, tmp_path / "out.onnx", "--eval", data), "no array for model input 'x'")


def test_no_partial_output_when_writing_fails(small_model, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    os.chmod(folder, 0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user who can write to read-only folders (root)")
        expect_error(onnxcomp("compress", small_model, folder / "out.onnx"), "not writable")
    finally:
        os.chmod(folder, 0o700)


def _compress_started(tmp_path, rng, staged=lambda p: True):
    """(process, output folder): compress of a 6.3 M-parameter model (about a second of work) started in a
    subprocess, returned once an entry ``.onnxcomp-*`` for which ``staged`` holds is seen beside the output (the
    test is skipped if compress finishes first)."""
    import time
    weights = [weight(rng, f"w{i}", (1024, 1024)) for i in range(6)]
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", f"w{i}"], [f"h{i + 1}" if i < 5 else "y"])
             for i in range(6)]
    model = make_model(nodes, [float_input("x", ["n", 1024])], [float_input("y", ["n", 1024])], weights)
    source = tmp_path / "model.onnx"
    onnx.save(model, source)
    folder = tmp_path / "out"
    folder.mkdir()
    process = subprocess.Popen(cli_command("compress", source, folder / "small.onnx"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT.parent)
    deadline = time.monotonic() + 60
    while not [p for p in folder.glob(".onnxcomp-*") if staged(p)] and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    if process.poll() is not None:
        pytest.skip("compress finished before its staging folder was seen")
    return process, folder


def test_sigterm_leaves_no_staging_folder_and_no_output(tmp_path, rng):
    """A pipeline's timeout sends SIGTERM: onnxcomp exits 143 with one line, and the staging folder it writes beside
    the output (``.onnxcomp-*``) is removed as on an error; no output file appears."""
    import signal
    process, folder = _compress_started(tmp_path, rng)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    assert list(folder.iterdir()) == []


def test_sigkill_leftovers_are_removed_by_the_next_run(tmp_path, rng):
    """SIGKILL cannot be caught: the killed run's staging folder and lock file stay. The next run writing into the
    same folder removes them once the lock file is GRACE_SECONDS old (its lock is free: the owner is gone), and
    leaves alone a live owner's temporaries, a previous output's file set aside (``.aside``) and foreign files."""
    import signal
    import time
    from onnxcomp import staging
    process, folder = _compress_started(tmp_path, rng, staged=lambda p: p.is_dir())
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    left = sorted(p.name for p in folder.iterdir())
    locks = [name for name in left if name.endswith(".lock")]
    assert len(locks) == 1 and any(name != locks[0] for name in left), left
    token = locks[0][len(".onnxcomp-"):-len(".lock")]
    aside = folder / f".onnxcomp-{token}-previous{staging.ASIDE}"
    aside.write_bytes(b"the previous output's sidecar")
    foreign = folder / ".onnxcomp-notours"
    foreign.mkdir()
    assert staging.remove_stale(str(folder)) == []  # the lock file is younger than GRACE_SECONDS
    # a live owner (this process, holding its lock in the folder) whose lock file is just as old keeps its own
    with staging.writing_into(str(folder)):
        mine = staging.staging_folder(str(folder / "x.onnx"))
        ours = [p for p in folder.glob(".onnxcomp-*.lock") if p.name != locks[0]]
        assert len(ours) == 1
        old = time.time() - 2 * staging.GRACE_SECONDS
        for lock in (folder / locks[0], ours[0]):
            os.utime(lock, (old, old))
        removed = subprocess.run([sys.executable, "-c", "import sys; from onnxcomp import staging; "
                                  "print(len(staging.remove_stale(sys.argv[1])))", str(folder)],
                                 capture_output=True, text=True, cwd=ROOT.parent, check=True)
        assert int(removed.stdout) == len(left) - 1  # the killed run's temporaries, not its lock file (not counted)
        assert os.path.isdir(mine)
        shutil.rmtree(mine)
    assert sorted(p.name for p in folder.iterdir()) == sorted([aside.name, foreign.name])
