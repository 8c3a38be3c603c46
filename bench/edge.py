"""Edge check: cross-build the custom-op library and its C++ unit tests for aarch64, run the tests under qemu-user,
and measure the stripped library (size, NEEDED entries, newest glibc/libstdc++ symbol versions) for aarch64 and
x86_64, with libstdc++ shared (the default) and static (ONNXCOMP_STATIC_LIBSTDCXX=ON).

    python3 bench/edge.py            # prints the report; exits non-zero if a test fails or a NEEDED entry is unexpected
    python3 bench/edge.py --record   # also writes it into docs/benchmarks.md (section "edge")

Standard library only, so a fresh Debian/Ubuntu machine needs nothing but python3: missing tools (the aarch64
cross compiler, qemu-user, cmake) are installed with apt-get (through sudo when not root); nothing is installed
when they are present. Build trees go under build/edge/.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRIPLE = "aarch64-linux-gnu"
SYSROOT = f"/usr/{TRIPLE}"
# Tool on PATH -> Debian package that provides it.
REQUIRED_TOOLS = {
    f"{TRIPLE}-g++": "g++-aarch64-linux-gnu",
    f"{TRIPLE}-strip": "binutils-aarch64-linux-gnu",
    "qemu-aarch64": "qemu-user",
    "cmake": "cmake",
    "make": "make",
    "g++": "g++",
}
# What the library may depend on besides the onnxruntime that loads it (which it does not link against).
ALLOWED_NEEDED = {"libc.so.6", "libstdc++.so.6", "libm.so.6", "libgcc_s.so.1"}


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, text=True, **kwargs)


def ensure_tools() -> None:
    """apt-get install whatever of REQUIRED_TOOLS is missing (idempotent: nothing to do when all are there)."""
    missing = sorted({package for tool, package in REQUIRED_TOOLS.items() if shutil.which(tool) is None})
    if not missing:
        return
    if shutil.which("apt-get") is None:
        sys.exit(f"edge.py: missing {', '.join(missing)} and no apt-get to install them")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(sudo + ["apt-get", "update", "-q"], env=env)
    run(sudo + ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=env)


def configure_and_build(build: Path, *, cross: bool, tests: bool, static_libstdcxx: bool, ort_include: str) -> None:
    args = ["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
            f"-DONNXCOMP_BUILD_TESTS={'ON' if tests else 'OFF'}",
            f"-DONNXCOMP_STATIC_LIBSTDCXX={'ON' if static_libstdcxx else 'OFF'}",
            "-DONNXCOMP_CUDA=OFF"]  # sizes of the CPU library; the CUDA variant is a separate build
    if cross:
        args.append(f"-DCMAKE_TOOLCHAIN_FILE={ROOT / 'cmake' / 'aarch64-linux-gnu.cmake'}")
    if ort_include:
        args.append(f"-DORT_INCLUDE_DIR={ort_include}")
    run(args, stdout=subprocess.DEVNULL)
    run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)], stdout=subprocess.DEVNULL)


def ort_include_of(build: Path) -> str:
    """The header folder a configured build tree found, so later builds reuse it instead of fetching again."""
    cache = (build / "CMakeCache.txt").read_text()
    given = re.search(r"^ORT_INCLUDE_DIR:PATH=(.*)$", cache, re.M)
    if given and given.group(1):
        return given.group(1)
    fetched = build / "onnxruntime-headers" / "unpacked" / "usr" / "include" / "onnxruntime"
    return str(fetched) if (fetched / "onnxruntime_cxx_api.h").exists() else ""


def measure(library: Path, prefix: str) -> dict:
    stripped = library.with_name(library.name + ".stripped")
    run([f"{prefix}strip", "-o", str(stripped), str(library)])
    dynamic = run([f"{prefix}readelf", "-d", str(stripped)], capture_output=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)
    symbols = run([f"{prefix}objdump", "-T", str(stripped)], capture_output=True).stdout

    def newest(tag: str) -> str:
        versions = set(re.findall(rf"\b{tag}_([0-9][0-9.]*)\b", symbols))
        return max(versions, key=lambda v: tuple(int(p) for p in v.split(".")), default="-")

    return {"size": stripped.stat().st_size, "needed": needed, "glibc": newest("GLIBC"), "glibcxx": newest("GLIBCXX"),
            "unexpected": [n for n in needed if n not in ALLOWED_NEEDED]}


def first_line(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0].strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", action="store_true", help="write the report into docs/benchmarks.md")
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build" / "edge")
    options = parser.parse_args()

    ensure_tools()
    out = options.build_dir
    start = time.monotonic()

    # 1. aarch64: library + unit tests, tests run by ctest through the toolchain file's qemu-user emulator.
    a64 = out / "aarch64"
    configure_and_build(a64, cross=True, tests=True, static_libstdcxx=False, ort_include="")
    ort_include = ort_include_of(a64)
    build_seconds = time.monotonic() - start
    ctest = subprocess.run(["ctest", "--test-dir", str(a64), "--output-on-failure"], capture_output=True, text=True)
    print(ctest.stdout + ctest.stderr, file=sys.stderr)
    summary = re.search(r"\d+% tests passed.*out of \d+", ctest.stdout)
    # The test binaries end with "<n> checks, <f> failures"; run each under qemu directly to quote that line.
    test_lines = []
    for name in sorted(p.name for p in a64.iterdir() if p.name.startswith("test_") and os.access(p, os.X_OK)):
        proc = subprocess.run(["qemu-aarch64", "-L", SYSROOT, str(a64 / name)], capture_output=True, text=True,
                              env=dict(os.environ, ASAN_OPTIONS="detect_leaks=0"))
        last = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["(no output)"]
        test_lines.append(f"| `{name}` | {proc.returncode} | {last[0]} |")

    # 2. Library sizes: both architectures, libstdc++ shared and static.
    rows, unexpected = [], []
    for arch, cross, prefix in (("aarch64", True, f"{TRIPLE}-"), ("x86_64", False, "")):
        for static in (False, True):
            build = out / f"{arch}-lib{'-static' if static else ''}"
            if not (arch == "aarch64" and not static):  # the aarch64 shared build is the one tested above
                configure_and_build(build, cross=cross, tests=False, static_libstdcxx=static, ort_include=ort_include)
            else:
                build = a64
            m = measure(build / "libonnxcomp_ops.so", prefix)
            if not static:  # the shipped build; the static variant is measured for comparison only
                unexpected += [f"{arch}: {n}" for n in m["unexpected"]]
            rows.append(f"| {arch} | {'static' if static else 'shared'} | {m['size']:,} B ({m['size'] / 1024:.0f} KiB) "
                        f"| {', '.join(m['needed'])} | {m['glibc']} | {m['glibcxx']} |")

    tests_ok = ctest.returncode == 0 and all(line.split("|")[2].strip() == "0" for line in test_lines)
    body = "\n".join([
        "### Edge: aarch64 cross-build, unit tests under qemu-user, library size",
        "",
        f"Cross compiler: {first_line([f'{TRIPLE}-g++', '--version'])}; emulator: "
        f"{first_line(['qemu-aarch64', '--version'])}; native: {first_line(['g++', '--version'])}.",
        f"aarch64 configure + build (library and tests, headers fetched): {build_seconds:.0f} s.",
        "",
        "Unit tests built for aarch64 (ASan + UBSan; leak checking off under emulation), run with "
        f"`qemu-aarch64 -L {SYSROOT} build/edge/aarch64/<test>` and by `ctest --test-dir build/edge/aarch64`:",
        "",
        "| test | exit code | last line |",
        "|---|---|---|",
        *test_lines,
        "",
        f"ctest: {summary.group(0) if summary else 'no summary (ctest exit code ' + str(ctest.returncode) + ')'}.",
        "",
        "Stripped `libonnxcomp_ops.so` (Release, `strip`), `readelf -d` NEEDED entries, newest symbol versions required:",
        "",
        "| arch | libstdc++ | stripped size | NEEDED | GLIBC | GLIBCXX |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "Static libstdc++ makes the library 3-4x larger and raises the glibc it needs to the build machine's "
        "(its bundled libstdc++ uses newer glibc symbols), so the shipped build keeps libstdc++ shared.",
        "",
        "NEEDED check of the shipped (shared libstdc++) builds, only libc, libstdc++, libm, libgcc_s allowed: "
        + ("passed." if not unexpected else "FAILED: " + "; ".join(unexpected)),
        f"Whole run: {time.monotonic() - start:.0f} s.",
    ])
    print(body)
    if options.record:
        sys.path.insert(0, str(ROOT / "bench"))
        from report import update_section
        update_section("edge", body)
    return 0 if tests_ok and not unexpected else 1


if __name__ == "__main__":
    sys.exit(main())
