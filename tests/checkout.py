"""Running documented commands from where the docs leave the user: a folder laid out like the repository root.

The folder links every top-level file and folder of the checkout, the ``onnxcomp/`` source folder among them
(so ``python -c 'import onnxcomp'`` imports the source folder, which holds no built library, exactly as it
does from a real checkout), and ``.venv``: the environment running these tests, where the README's install
put onnxcomp. Nothing is written into the checkout itself.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def repository_root_like(folder: Path) -> Path:
    """Fill ``folder`` with links to the checkout's source folders and to this environment as ``.venv``."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "python").exists() or not (venv / "bin" / "onnxcomp").exists():
        pytest.skip(f"the tests do not run in a virtual environment with the onnxcomp command ({venv})")
    for entry in ROOT.iterdir():
        if not entry.name.startswith(".") and entry.name not in ("build", "dist"):
            (folder / entry.name).symlink_to(entry)
    (folder / ".venv").symlink_to(venv)
    return folder


def fenced_blocks(path: Path, languages=("",)) -> list[str]:
    """The bodies of the fenced code blocks of ``path`` in ``languages`` ("" = no language given)."""
    return [body for language, body in FENCE.findall(path.read_text()) if language in languages]


def run_shell(script: str, folder: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a documented shell block with bash in ``folder``, stopping at the first failing line."""
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=folder, capture_output=True, text=True,
                          timeout=timeout)
