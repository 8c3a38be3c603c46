"""Peak resident memory of a C++ process (examples/cpp_host, no Python) running a dense model versus its
compressed form, measured with `/usr/bin/time -v` ("Maximum resident set size"), one batch-1 run, 1 thread.

Models: the bundled LeNet-300-100 and LeNet-5 (Fashion-MNIST), and a synthetic 2048x2048 MatMul (16 MiB of
float32 weights, seeded) where weights dominate the runtime's own footprint. Each model runs in three ways:
dense, dense with the custom-op library registered (the library's own cost), compressed (default options).
Usage:
    python bench/deploy_memory.py [--record]
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import onnxcomp

ROOT = Path(__file__).resolve().parents[1]


def build_host(build: Path) -> Path:
    library = sorted(glob.glob(os.path.join(os.path.dirname(ort.__file__), "capi", "libonnxruntime.so*")))[0]
    subprocess.run(["cmake", "-S", str(ROOT / "examples" / "cpp_host"), "-B", str(build),
                    f"-DONNXRUNTIME_LIBRARY={library}"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build)], check=True, stdout=subprocess.DEVNULL)
    return build / "onnxcomp_run"


def synthetic_matmul(path: Path, size: int = 2048) -> None:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", size])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def peak_rss_kib(command: list[str]) -> int:
    result = subprocess.run(["/usr/bin/time", "-v", *map(str, command)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{result.stderr}")
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="write the table into docs/benchmarks.md")
    parser.add_argument("--repeats", type=int, default=3, help="runs per case; the smallest peak is reported")
    args = parser.parse_args()
    library = onnxcomp.library_path()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        host = build_host(tmp / "host")
        synthetic = tmp / "matmul2048.onnx"
        synthetic_matmul(synthetic)
        cases = [("LeNet-300-100", ROOT / "models" / "lenet300_fashion.onnx", (1, 784)),
                 ("LeNet-5", ROOT / "models" / "lenet5_fashion.onnx", (1, 784)),
                 ("MatMul 2048x2048", synthetic, (1, 2048))]
        for name, dense, shape in cases:
            small = tmp / (dense.stem + "_small.onnx")
            report = onnxcomp.compress(dense, small)
            x = tmp / "x.npy"
            np.save(x, np.random.default_rng(1).standard_normal(shape).astype(np.float32))

            def peak(*command):
                return min(peak_rss_kib([host, *command, "--threads", "1", x]) for _ in range(args.repeats))

            dense_kib = peak(dense)
            with_library_kib = peak(dense, "--library", library)
            small_kib = peak(small, "--library", library)
            rows.append(f"| {name} | {report.input_bytes / 1024:,.0f} KiB | {report.output_bytes / 1024:,.0f} KiB "
                        f"| {dense_kib / 1024:.1f} MiB | {with_library_kib / 1024:.1f} MiB | {small_kib / 1024:.1f} MiB "
                        f"| {(dense_kib - small_kib) / 1024:+.1f} MiB |")
    body = "\n".join([
        "### Deploy: peak memory of a C++ process, dense vs compressed",
        "",
        f"`examples/cpp_host` (onnxruntime {ort.__version__} from the wheel), one batch-1 run, `--threads 1`, "
        f"peak RSS from `/usr/bin/time -v`, smallest of {args.repeats} runs. Compressed with default options.",
        "",
        "| model | files dense | files compressed | peak RSS dense | dense + library loaded | peak RSS compressed | saved |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ])
    print(body)
    if args.record:
        sys.path.insert(0, str(ROOT / "bench"))
        from report import update_section
        update_section("deploy-memory", body)


if __name__ == "__main__":
    main()
