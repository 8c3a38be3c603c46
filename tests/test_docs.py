"""The docs cannot rot: every ```console block line starting with `$ onnxcomp` in docs/*.md runs, in order, in a
temporary folder holding the bundled models; every ```toml recipe in the docs loads."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from onnxcomp.core.recipes import load

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def blocks(path: Path, language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(path.read_text()) if lang == language]


def commands(path: Path) -> list[str]:
    return [line[2:] for body in blocks(path, "console") for line in body.splitlines() if line.startswith("$ onnxcomp ")]


@pytest.mark.parametrize("doc", [d for d in DOCS if commands(d)], ids=lambda d: d.name)
def test_console_blocks_run(doc, tmp_path):
    import onnxcomp as package
    home = str(Path(package.__file__).resolve().parents[1])
    entry = f"import sys; sys.path.insert(0, {home!r}); from onnxcomp.front.cli import run; run()"
    (tmp_path / "models").symlink_to(ROOT / "models")
    for command in commands(doc):
        args = shlex.split(command)
        result = subprocess.run([sys.executable, "-c", entry, *args[1:]], capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 0, f"{doc.name}: `{command}` exited {result.returncode}:\n{result.stderr}"
        assert "error:" not in result.stderr and "Traceback" not in result.stderr, result.stderr
        if args[1] not in ("recipes",) and "--quiet" not in args and "--json" not in args:
            assert result.stdout.strip(), f"{doc.name}: `{command}` printed nothing"


def test_guide_has_runnable_commands_for_each_tool():
    shown = {shlex.split(c)[1] for d in DOCS for c in commands(d)}
    assert {"compress", "inspect", "verify", "decompress", "recipes"} <= shown


@pytest.mark.parametrize("doc", [d for d in DOCS if blocks(d, "toml")], ids=lambda d: d.name)
def test_toml_recipes_load(doc, tmp_path):
    for number, body in enumerate(blocks(doc, "toml")):
        path = tmp_path / f"recipe{number}.toml"
        path.write_text(body)
        recipe = load(path)
        assert recipe.layers, f"{doc.name}: a recipe example without [[layer]] rules"
