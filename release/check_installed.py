"""Checks an installed onnxcomp wheel from a user's point of view (run by release/check_wheel.sh).

Usage: python check_installed.py MODELS_DIR   (run from a folder outside the checkout, PATH = the venv only)

Checks, each failing with a message: no compiler is reachable (the simulation holds); onnxcomp and its library
come from site-packages, the compiled ``onnxcomp._native`` loads, and the distribution installs nothing outside
the ``onnxcomp`` namespace (no top-level ``passes``); ``onnxcomp compress --eval`` on the bundled LeNet-300-100 prints its ratio and accuracy; the
compressed model opens in ``onnxcomp.InferenceSession`` and computes what its decompressed dense twin computes
in plain onnxruntime.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path


def check(condition: bool, message: str) -> None:
    if not condition:
        sys.exit(f"check_installed: {message}")


def main(models: Path) -> None:
    for tool in ("cc", "gcc", "c++", "g++", "cmake"):
        check(shutil.which(tool) is None, f"{tool} is reachable on PATH: this check must run without a compiler")

    import numpy as np
    import onnxruntime as ort

    import onnxcomp
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    library = Path(onnxcomp.library_path()).resolve()
    check(Path(onnxcomp.__file__).resolve().is_relative_to(site), f"onnxcomp imported from {onnxcomp.__file__}")
    check(library.parent == site / "onnxcomp", f"the library is at {library}, not in site-packages/onnxcomp")
    top_level = {Path(str(file)).parts[0] for file in metadata.files("onnxcomp") or []}
    outside = sorted(name for name in top_level if name != "onnxcomp" and not name.endswith(".dist-info")
                     and name != ".." and not name.startswith("__editable__"))
    check(not outside, f"the wheel installs outside the onnxcomp namespace: {outside}")
    check(importlib.util.find_spec("passes") is None, "a top-level module 'passes' is importable")
    from onnxcomp.core.native import native
    check(native is not None and Path(native.__file__).resolve().parent == site / "onnxcomp",
          "the compiled onnxcomp._native is missing from the wheel")

    model, data = models / "lenet300_fashion.onnx", models / "fashion_eval.npz"
    command = [os.path.join(os.path.dirname(sys.executable), "onnxcomp"), "compress", str(model), "small.onnx",
               "--eval", str(data)]
    result = subprocess.run(command, capture_output=True, text=True)
    check(result.returncode == 0, f"`onnxcomp compress` exited {result.returncode}: {result.stderr}")
    check("smaller" in result.stdout and "top-1 accuracy" in result.stdout, f"unexpected output:\n{result.stdout}")
    check(result.stderr == "", f"`onnxcomp compress` printed on stderr: {result.stderr}")
    print(result.stdout, end="")

    x = np.load(data)["input"][:256]
    session = onnxcomp.InferenceSession("small.onnx")
    (got,) = session.run(None, {session.get_inputs()[0].name: x})
    onnxcomp.decompress("small.onnx", "dense.onnx")
    plain = ort.InferenceSession("dense.onnx", providers=["CPUExecutionProvider"])
    (want,) = plain.run(None, {plain.get_inputs()[0].name: x})
    # The same decoded weights either way; only the summation order of the fused kernel differs.
    check(np.allclose(got, want, rtol=1e-4, atol=1e-4), f"max difference {np.abs(got - want).max()}")
    print(f"check_installed: ok (onnxcomp {onnxcomp.__version__} from {site}, onnxruntime {ort.__version__}, "
          f"Python {sys.version.split()[0]})")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
