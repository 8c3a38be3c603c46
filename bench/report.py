"""Writing benchmark results into docs/benchmarks.md, one marked section per benchmark."""

from __future__ import annotations

import platform
import re
import shlex
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    import os
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def update_section(name: str, body: str) -> None:
    """Replace (or append) the section between ``<!-- bench:name -->`` markers."""
    command = "python " + shlex.join(["bench/" + Path(sys.argv[0]).name] + sys.argv[1:])
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n\nEvery table below was written by the command shown above it.\n"
    block = f"<!-- bench:{name} -->\nCommand: `{command}`  \nMachine: {machine()}\n\n{body.strip()}\n<!-- /bench:{name} -->"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS.write_text(text)
