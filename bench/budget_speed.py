"""Wall time of a calibrated quality budget on a transformer encoder, and whether it holds on separate data (issue #16).

Runs `onnxcomp compress MODEL OUT --budget cosine=0.99 --calib CALIB --cache-dir FRESH` in a fresh process
(wall time, CPU time and peak RSS of the child from getrusage), then measures min/mean cosine of the
output against the original on the zoo's evaluation sentences, which the search never saw (its calibration
sentences come from other license texts). With ``--resume SECONDS`` a second fresh run is interrupted (SIGINT)
after that many seconds and rerun on its cache: the rerun's time, and whether its output is byte-identical to
the uninterrupted run's.

The model is the zoo's paraphrase-MiniLM-L3-v2 (bench/zoo/text.py; prepare it with `python bench/zoo.py prepare
--models minilm-l3`); its first graph output is an Identity of input_ids, so a copy with the sentence embedding
(output "461", mean-pooled and normalised) as its only output is what the budget measures.
Usage:
    python bench/budget_speed.py [--budget cosine=0.99] [--resume 120] [--folder DIR] [--record]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
ZOO = Path(os.environ.get("ONNXCOMP_ZOO_CACHE", Path.home() / ".cache" / "onnxcomp-zoo")).expanduser() / "models" / "minilm-l3"
EMBEDDING = "461"


def embedding_model(folder: Path) -> Path:
    """The zoo's MiniLM-L3 with the sentence embedding as its only output."""
    model = onnx.load(str(ZOO / "model.onnx"))
    kept = next(o for o in model.graph.output if o.name == EMBEDDING)
    del model.graph.output[:]
    model.graph.output.append(kept)
    path = folder / "minilm-l3-embedding.onnx"
    onnx.save(model, str(path))
    return path


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc), None when it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _runnable_threads(pid: int) -> int | None:
    """How many threads of process ``pid`` are running or waiting for a core now (state R in /proc), None when
    it cannot be read."""
    try:
        count = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                state = Path(f"/proc/{pid}/task/{task}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            count += state == "R"
        return count
    except OSError:
        return None


def run(arguments: list[str], stop_after: float | None = None) -> dict:
    """Run the onnxcomp command line: wall time, CPU seconds of the child (user + system), peak RSS of the
    children so far (ru_maxrss), whether it was interrupted (SIGINT after ``stop_after`` seconds), and each stderr
    line with the wall and CPU seconds at which it arrived (``lines``: the phases are read from them)."""
    import threading
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "onnxcomp.front.cli", *arguments], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    lines: list[tuple[float, float | None, str]] = []

    def read_stderr() -> None:
        for line in child.stderr:
            lines.append((time.perf_counter() - start, _cpu_seconds(child.pid), line.rstrip("\n")))
    samples: list[tuple[float, int]] = []  # (wall seconds, runnable threads) every SAMPLE_SECONDS

    def sample_threads() -> None:
        while child.poll() is None:
            count = _runnable_threads(child.pid)
            if count is not None:
                samples.append((time.perf_counter() - start, count))
            time.sleep(SAMPLE_SECONDS)
    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    sampler = threading.Thread(target=sample_threads, daemon=True)
    sampler.start()
    interrupted = False
    if stop_after is not None:
        try:
            child.wait(timeout=stop_after)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGINT)
            interrupted = True
    stdout = child.stdout.read()
    child.wait()
    reader.join()
    sampler.join()
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": seconds, "cpu": cpu, "peak_rss": after.ru_maxrss * 1024, "returncode": child.returncode,
            "interrupted": interrupted, "stderr": "\n".join(line for _, _, line in lines), "stdout": stdout,
            "lines": lines, "samples": samples}


SAMPLE_SECONDS = 0.2


def phases(result: dict) -> list[tuple[str, float, float, float | None]]:
    """(phase, wall seconds, CPU seconds, share of the phase's thread samples with at most one runnable thread) of
    a budget run, from the times its stderr lines arrived: setup (loading,
    calibration statistics) until the sensitivity analysis starts, the sensitivity analysis until the first search
    round's line, the search rounds until the last one's (the safe rung included), then the check set (its
    compresses and checks) and writing until the process ended. CPU / wall is how many cores a phase got on this
    machine (less than it could use when other processes load the cores); the share of samples (every
    SAMPLE_SECONDS, /proc) in which at most one of the process's threads was running or runnable is the share of the
    phase that one core alone would do as fast, whatever the load. With the phase's CPU time spread over its
    samples alike, 2 idle cores would take about CPU x (share + (1 - share) / 2) (between CPU / 2 and CPU)."""
    lines = result["lines"]
    marks = [0.0, None, None, None, result["seconds"]]
    cpus = [0.0, None, None, None, result["cpu"]]
    for wall, cpu, line in lines:
        if marks[1] is None and line.startswith("sensitivity analysis"):
            marks[1], cpus[1] = wall, cpu
        if line.startswith("allocation within"):
            if marks[2] is None:
                marks[2], cpus[2] = wall, cpu
            marks[3], cpus[3] = wall, cpu
    if None in marks or None in cpus:
        return []
    names = ["setup", "sensitivity analysis", "search rounds", "check set and writing"]
    result_phases = []
    for i, name in enumerate(names):
        counts = [count for wall, count in result.get("samples", []) if marks[i] <= wall < marks[i + 1]]
        serial = sum(count <= 1 for count in counts) / len(counts) if counts else None
        result_phases.append((name, marks[i + 1] - marks[i], cpus[i + 1] - cpus[i], serial))
    return result_phases


def cosines(original: Path, compressed: Path) -> tuple[float, float]:
    import onnxcomp
    import onnxruntime as ort
    data = np.load(ZOO / "eval.npz")
    a = ort.InferenceSession(str(original), providers=["CPUExecutionProvider"])
    b = onnxcomp.InferenceSession(str(compressed))
    values = []
    for batch in range(len(data["sentences"]) // 32):
        feeds = {"input_ids": data[f"ids{batch}"], "attention_mask": data[f"mask{batch}"]}
        x, y = a.run(None, feeds)[0], b.run(None, feeds)[0]
        values.append((x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)))
    values = np.concatenate(values)
    return float(values.min()), float(values.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="cosine=0.99")
    parser.add_argument("--resume", type=float, default=None, help="interrupt a second run after SECONDS, then rerun it")
    parser.add_argument("--folder", default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--record", action="store_true", help="write the result into docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        folder = Path(folder)
        model = embedding_model(folder)
        common = ["compress", str(model), "", "--budget", args.budget, "--calib", str(ZOO / "calib.npz")]

        def command(output: Path, cache: str) -> list[str]:
            arguments = list(common)
            arguments[2] = str(output)
            return arguments + ["--cache-dir", str(folder / cache)]

        (folder / "cold").mkdir()
        cold = run(command(folder / "cold" / "out.onnx", "cache-cold"))
        print(cold["stderr"])
        if cold["returncode"]:
            raise SystemExit(f"the budget run failed after {cold['seconds'] / 60:.1f} min wall, {cold['cpu'] / 60:.1f} min CPU, "
                             f"peak RSS {cold['peak_rss'] / 2**30:.2f} GiB")
        worst, mean = cosines(model, folder / "cold" / "out.onnx")
        size = sum(p.stat().st_size for p in (folder / "cold").iterdir())
        ratio = model.stat().st_size / size
        print(cold["stdout"])
        load = os.getloadavg()[0]
        row = (f"| minilm-l3 (17.2 M parameters), {args.budget}, 128 calibration sentences | {cold['seconds'] / 60:.1f} min "
               f"| {cold['cpu'] / 60:.1f} min | {cold['peak_rss'] / 2**30:.2f} GiB | {ratio:.2f}x | {worst:.4f} | {mean:.4f} | "
               f"{load:.1f} |")
        print(row)
        measured_phases = phases(cold)
        if measured_phases and all(serial is not None for *_, serial in measured_phases):
            idle = sum(cpu * (serial + (1 - serial) / 2) for _, _, cpu, serial in measured_phases)
            print(f"all phases: {cold['seconds'] / 60:.2f} min wall, {cold['cpu'] / 60:.2f} min CPU, about {idle / 60:.2f} min "
                  "on 2 idle cores (each phase's CPU x (serial share + (1 - serial share) / 2))")
        for name, wall, cpu, serial in measured_phases:
            print(f"phase {name}: {wall / 60:.2f} min wall, {cpu / 60:.2f} min CPU, {cpu / wall if wall else 0:.2f} cores "
                  f"busy, at most one thread runnable in {'-' if serial is None else f'{serial:.0%}'} of its samples"
                  + ("" if serial is None else f", about {cpu * (serial + (1 - serial) / 2) / 60:.2f} min on 2 idle cores"))
        resumed = None
        if args.resume is not None:
            (folder / "warm").mkdir()
            first = run(command(folder / "warm" / "out.onnx", "cache-resume"), stop_after=args.resume)
            again = run(command(folder / "warm" / "out.onnx", "cache-resume"))
            same = all((folder / "warm" / p.name).read_bytes() == p.read_bytes() for p in (folder / "cold").iterdir())
            resumed = (f"interrupted after {first['seconds']:.0f} s (interrupted: {first['interrupted']}), rerun "
                       f"{again['seconds'] / 60:.1f} min, output byte-identical to the uninterrupted run: {same}")
            print(resumed)
        shutil.rmtree(folder / "cold", ignore_errors=True)
    if args.record:
        sys.path.insert(0, str(ROOT / "bench"))
        from report import update_section
        body = ("`compress --budget` on the zoo's MiniLM-L3 (sentence "
                "embedding output) with its 128 calibration sentences, min/mean cosine on the 128 evaluation sentences "
                "the search never saw.\n\n| Model, budget, data | Wall time | CPU time | Peak RSS | Ratio | Min cosine (eval) | "
                "Mean cosine | Load average (1 min, at the end) |\n|---|---|---|---|---|---|---|---|\n" + row + ("\n\n" + resumed if resumed else ""))
        update_section("budget-speed", body)


if __name__ == "__main__":
    main()
