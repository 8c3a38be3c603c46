"""Progress of long steps: callbacks from the library (none by default), bars on a terminal stderr only."""

import io
import logging
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import onnxcomp
from onnxcomp import progress
from onnxcomp.front import terminal
from rich.console import Console
from onnxcomp.pipeline.autotune import compress_to_budget
from conftest import budget_mlp
from test_cli import BUNDLED, BUNDLED_EVAL, onnxcomp as cli


class Recorder:
    def __init__(self):
        self.events = []

    def __call__(self, label, done, total):
        self.events.append((label, done, total))

    def steps(self):
        """label -> (updates, last done, total)"""
        seen = {}
        for label, done, total in self.events:
            count = seen.get(label, (0,))[0]
            seen[label] = (count + 1, done, total)
        return seen


def test_track_counter_and_silence():
    assert list(progress.track(range(3), "x")) == [0, 1, 2]  # no callback: the plain iterable
    progress.counter("x", 5)()  # no callback: a no-op
    record = Recorder()
    with progress.reporting(record):
        assert list(progress.track(iter("ab"), "letters")) == ["a", "b"]
        advance = progress.counter("steps", 2)
        advance()
        with progress.silenced():
            list(progress.track(range(4), "hidden"))
        with progress.reporting(None):  # None keeps the current callback
            list(progress.track(range(1), "kept"))
        advance()
    assert list(progress.track(range(2), "after")) == [0, 1]
    assert record.events == [("letters", 0, 2), ("letters", 1, 2), ("letters", 2, 2), ("steps", 0, 2), ("steps", 1, 2),
                             ("kept", 0, 1), ("kept", 1, 1), ("steps", 2, 2)]


def test_terminal_bars_and_log_lines():
    """The CLI's callback draws with rich (onnxcomp/front/terminal.py); log lines go above the bars."""
    stream = io.StringIO()
    bars = terminal.ProgressBars(Console(file=stream, force_terminal=True, width=80))
    bars("k-means", 0, 4)
    bars("k-means", 2, 4)
    record = logging.LogRecord("onnxcomp", logging.WARNING, __file__, 1, "a log line", None, None)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    assert bars.log(record, handler) is False  # printed through rich, not by the handler
    bars("k-means", 4, 4)
    bars("k-means", 0, 1)  # the same step run again gets a bar of its own
    bars.close()
    screen = plain(stream.getvalue())
    assert "WARNING: a log line" in screen and "k-means" in screen and "4/4" in screen and "0/1" in screen
    assert not bars.running
    assert terminal.progress_bars(False, io.StringIO()) is None  # not a terminal: no bar
    assert terminal.progress_bars(True, sys.stderr) is None  # --quiet: no bar


def plain(text: str) -> str:
    """``text`` without terminal control sequences (colours, cursor moves)."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_python_api_reports_the_long_steps(tmp_path):
    record = Recorder()
    small = tmp_path / "small.onnx"
    onnxcomp.compress(BUNDLED, small, calib=str(BUNDLED_EVAL), calib_samples=300, calib_batch=64, progress=record)
    steps = record.steps()
    # Two compression rounds (per-weight limits, then the model-level budget): each step reports twice.
    assert steps["calibration batches"] == (12, 5, 5)  # 0 of 5, then one update per batch
    assert steps["k-means codebooks"] == (6, 2, 2) and steps["packing records"] == (6, 2, 2)
    assert steps["reconstruction"][1:] == (2, 2)
    record = Recorder()
    onnxcomp.verify(BUNDLED, small, samples=8, per_layer=True, progress=record)
    assert record.steps() == {"per-layer verification": (3, 2, 2)}
    record = Recorder()
    onnxcomp.compress(BUNDLED, tmp_path / "portable.onnx", format="portable", progress=record)
    assert record.steps()["packing lookups"] == (6, 2, 2)
    record = Recorder()
    onnxcomp.compress(BUNDLED, tmp_path / "seq.onnx", calib=str(BUNDLED_EVAL), calib_samples=100, sequential=True, progress=record)
    # a fully connected chain: pruned layer by layer, distilled, then shared layer by layer (two walks)
    assert record.steps() == {"per-layer allocation": (6, 2, 2), "sequential pruning": (6, 2, 2),
                              "sequential layers": (6, 2, 2), "packing records": (6, 2, 2)}  # inner steps silenced


def test_budget_reports_the_sensitivity_analysis(tmp_path, rng):
    _, data = budget_mlp(tmp_path, rng)
    record = Recorder()
    compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), budget="cosine=0.9", calib=str(data),
                       sparsities=(0.0, 0.5), bits=(3, 8), min_elements=16, cache_dir=str(tmp_path / "cache"), progress=record)
    assert record.steps()["sensitivity analysis"] == (9, 8, 8)  # 2 weights x 2 sparsities x 2 bit widths, one bar


def test_quiet_compress_prints_nothing(tmp_path):
    result = cli("compress", BUNDLED, tmp_path / "small.onnx", "--calib", BUNDLED_EVAL, "--calib-samples", "200", "--quiet",
                 "--eval", BUNDLED_EVAL, "--report", tmp_path / "report.json")
    assert (tmp_path / "report.json").is_file()
    assert result.returncode == 0
    assert result.stdout == "" and result.stderr == ""


def test_no_progress_noise_when_stderr_is_not_a_terminal(tmp_path):
    fast = ("--calib", BUNDLED_EVAL, "--calib-samples", "100", "--no-reconstruct")
    result = cli("compress", BUNDLED, tmp_path / "small.onnx", *fast)
    assert result.returncode == 0 and "smaller" in result.stdout
    assert result.stderr == "" and "\r" not in result.stdout and "[#" not in result.stdout
    verbose = cli("compress", BUNDLED, tmp_path / "v.onnx", *fast, "--verbose")
    assert "DEBUG: ShareWeightsPass" in verbose.stderr  # logs as before, no bar among them
    assert "\r" not in verbose.stderr and "k-means codebooks" not in verbose.stderr and "\x1b" not in verbose.stderr


def on_a_terminal(*args) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal (stdout a pipe); returns (exit code, stdout, stderr)."""
    home = str(Path(onnxcomp.__file__).resolve().parents[1])
    code = f"import sys; sys.path.insert(0, {home!r}); from onnxcomp.front.cli import run; run()"
    master, slave = pty.openpty()
    process = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE, stderr=slave,
                               stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the other side closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    stdout = process.stdout.read().decode()
    process.stdout.close()
    return process.wait(), stdout, b"".join(chunks).decode()


def test_bars_on_a_terminal_and_quiet_silences_them(tmp_path):
    args = ("compress", BUNDLED, tmp_path / "small.onnx", "--calib", BUNDLED_EVAL, "--calib-samples", "100", "--no-reconstruct")
    code, stdout, stderr = on_a_terminal(*args)
    assert code == 0 and "smaller" in stdout and "[#" not in stdout  # bars never touch stdout
    screen = plain(stderr)
    for label in ("calibration batches", "k-means codebooks", "packing records"):
        assert re.search(label + r" +━+ 2/2", screen), screen  # drawn by rich, finished
    code, stdout, stderr = on_a_terminal(*args[:2], tmp_path / "quiet.onnx", *args[3:], "--quiet")
    assert code == 0 and stdout == "" and stderr == ""
    code, _, stderr = on_a_terminal(*args[:2], tmp_path / "verbose.onnx", *args[3:], "--verbose")
    assert code == 0 and "DEBUG: ShareWeightsPass" in stderr and "k-means codebooks" in stderr
    pieces = [piece for line in plain(stderr).split("\n") for piece in line.split("\r")]
    assert all(piece.find("DEBUG") in (-1, 0) for piece in pieces), stderr  # log lines never glued to a bar
    assert stderr.endswith("\x1b[?25h") or "\x1b[?25l" not in stderr  # the cursor is shown again at the end
    code, stdout, stderr = on_a_terminal("verify", BUNDLED, tmp_path / "small.onnx", "--per-layer", "--samples", "8")
    assert code == 0 and "per-layer verification" in plain(stderr) and "fc1.weight" in stdout
