"""A newcomer's first hour (issue 15): the documented commands work from where the docs leave the user, and every
fault met on the way gives the output a user can act on. Each test asserts what the user sees."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxcomp
from onnxcomp.front.cli import app
from typer.testing import CliRunner
from checkout import ROOT, fenced_blocks, repository_root_like
from conftest import float_input, make_model, weight

BUNDLED = ROOT / "models" / "lenet300_fashion.onnx"
LENET5 = ROOT / "models" / "lenet5_fashion.onnx"
VIT = ROOT / "models" / "vit_fashion.onnx"
EVAL = ROOT / "models" / "fashion_eval.npz"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def cli(*args, columns: int | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The ``onnxcomp`` entry point (onnxcomp.front.cli:run) in a subprocess importing the same onnxcomp."""
    home = str(Path(onnxcomp.__file__).resolve().parents[1])
    code = f"import sys; sys.path.insert(0, {home!r}); from onnxcomp.front.cli import run; run()"
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT.parent, env=env)


def run(*args, columns: int = 80) -> subprocess.CompletedProcess:
    """The same command in this process (typer's test runner: faster; onnxruntime's own log lines, written to
    file descriptor 2, are not seen here: ``cli`` checks those)."""
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": str(columns)}, prog_name="onnxcomp")
    assert isinstance(result.exception, (SystemExit, type(None))), result.exception  # no traceback
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def one_line_error(result: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """The run failed with exit ``code`` and exactly one clean line on stderr holding ``words``."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    message = result.stderr
    assert len(message.strip().splitlines()) == 1 and message.startswith("error: "), message
    assert "\x1b" not in message and "onnxruntime:" not in message and "internal error" not in message, message
    for word in words:
        assert word in message, message
    return message.strip()


# 1. Documented commands from where the docs leave the user ----------------------------------------------------

def test_readme_python_line_works_from_the_repository_root(tmp_path):
    """From the checkout's root, ``import onnxcomp`` finds the source folder (no built library in it): the
    README's session still opens, with the installed library."""
    root = repository_root_like(tmp_path)
    compressed = subprocess.run([".venv/bin/onnxcomp", "compress", "models/lenet300_fashion.onnx", "small.onnx", "-q"],
                                cwd=root, capture_output=True, text=True)
    assert compressed.returncode == 0, compressed.stderr
    (block,) = fenced_blocks(ROOT / "README.md", ("python",))
    check = ("\nimport numpy as np\nprint(onnxcomp.__file__)\n"
             "x = np.load('models/fashion_eval.npz')['input'][:3]\n"
             "print(session.run(None, {session.get_inputs()[0].name: x})[0].shape)\n")
    result = subprocess.run([".venv/bin/python", "-c", block + check], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    imported, shape = result.stdout.splitlines()
    assert Path(imported).resolve() == (ROOT / "onnxcomp" / "__init__.py").resolve()  # the source folder
    assert shape == "(3, 10)"


def test_no_top_level_passes_module_is_installed(tmp_path):
    """The graph passes install inside the onnxcomp namespace: no ``passes`` in site-packages to collide with."""
    files = metadata.files("onnxcomp") or []
    top_level = {Path(str(file)).parts[0] for file in files}
    assert not top_level & {"passes", "passes.py"}, sorted(top_level)
    probe = "import importlib.util; print(importlib.util.find_spec('passes')); import onnxcomp.passes"
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None"
    assert importlib.util.find_spec("onnxcomp.passes") is not None


# 3. One error path for reading models, in every command -----------------------------------------------------

@pytest.mark.parametrize("case", ["missing", "not onnx", "folder"])
def test_every_command_reports_unreadable_models_in_one_line(tmp_path, case):
    model = tmp_path / "model.onnx"
    words = {"missing": ("no such file",), "not onnx": ("not a valid ONNX model",), "folder": ("is a folder",)}[case]
    if case == "not onnx":
        model.write_text("this is a text file named .onnx\n")
    elif case == "folder":
        model.mkdir()
    for command in [("compress", model, tmp_path / "out.onnx"), ("inspect", model),
                    ("decompress", model, tmp_path / "out.onnx"), ("verify", model, BUNDLED), ("verify", BUNDLED, model)]:
        one_line_error(run(*command), 1, str(model), *words)
        assert not (tmp_path / "out.onnx").exists()


def test_moved_model_without_its_sidecar_is_one_clean_line_everywhere(tmp_path):
    small = tmp_path / "small.onnx"
    onnxcomp.compress(BUNDLED, small)
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(small, moved / "small.onnx")
    for command in [("verify", BUNDLED, moved / "small.onnx"), ("inspect", moved / "small.onnx"),
                    ("decompress", moved / "small.onnx", tmp_path / "dense.onnx")]:
        one_line_error(run(*command), 1, "its sidecar small.onnxcomp is missing; keep it beside the model")


def test_corrupt_sidecar_gives_no_onnxruntime_log_line(tmp_path):
    """onnxruntime logs a failed kernel creation itself (a coloured ``[E:onnxruntime:...]`` line): onnxcomp's own
    sessions silence it, so the clean message is the only line."""
    small = tmp_path / "small.onnx"
    onnxcomp.compress(BUNDLED, small)
    data = bytearray((tmp_path / "small.onnxcomp").read_bytes())
    for position in range(200, 2000, 7):
        data[position] ^= 0x55
    (tmp_path / "small.onnxcomp").write_bytes(bytes(data))
    message = one_line_error(cli("verify", BUNDLED, small), 1, "onnxruntime cannot open it", "corrupt weight record")
    assert message.count("\n") == 0
    result = cli("compress", BUNDLED, tmp_path / "again.onnx", "--eval", EVAL)  # --eval opens sessions too
    assert result.returncode == 0 and result.stderr == "", result.stderr


# 4. --eval without labels -----------------------------------------------------------------------------------

def test_eval_data_without_labels_says_so(tmp_path):
    data = tmp_path / "inputs.npz"
    np.savez(data, input=np.load(EVAL)["input"][:50])
    result = cli("compress", BUNDLED, tmp_path / "small.onnx", "--eval", data)
    assert result.returncode == 0, result.stderr
    assert result.stderr == (f"WARNING: {data} has no 'labels' array: top-1 accuracy is not measured "
                             "(--eval needs integer class labels [N] beside the inputs)\n")
    assert "smaller" in result.stdout and "accuracy" not in result.stdout
    quiet = cli("compress", BUNDLED, tmp_path / "quiet.onnx", "--eval", data, "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""


def test_eval_data_is_checked_before_any_work(tmp_path):
    data = tmp_path / "wrong.npz"
    np.savez(data, other=np.zeros((3, 784), np.float32), labels=np.zeros(3, np.int64))
    one_line_error(run("compress", BUNDLED, tmp_path / "small.onnx", "--eval", data), 1, "no array for model input")
    assert not (tmp_path / "small.onnx").exists()



def test_budget_output_without_a_budget_is_refused(tmp_path):
    one_line_error(run("compress", BUNDLED, tmp_path / "small.onnx", "--budget-output", "logits"), 1, "give --budget too")
    assert not (tmp_path / "small.onnx").exists()

# 5. Help texts ----------------------------------------------------------------------------------------------

def test_compress_help_fits_80_columns_with_the_common_options_first():
    result = run("compress", "--help", columns=80)
    assert result.returncode == 0
    text = result.stdout
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in text  # no option name or value cut
    from onnxcomp.front.cli import compress
    for name, parameter in inspect.signature(compress).parameters.items():
        for flag in "/".join(getattr(parameter.default, "param_decls", ()) or ()).split("/"):
            if flag.startswith("--"):
                assert re.search(rf"{re.escape(flag)}\b", text), flag
        if not getattr(parameter.default, "param_decls", None) and name not in ("ctx", "input_path", "output_path"):
            assert "--" + name.replace("_", "-") in text, name
    first_panel = text[text.index("─ Options ─"):text.index("─ Pruning ─")]
    for option in ("--sparsity", "--bits", "--format", "--calib", "--budget", "--eval", "--recipe", "--quiet"):
        assert option in first_panel, option
    assert "--tfidf-power" not in first_panel and "--ridge" not in first_panel
    assert lines.index(next(line for line in lines if "─ Pruning ─" in line)) < 60  # the common options on screen one


def test_format_and_html_help_say_the_truth():
    text = " ".join(run("compress", "--help", columns=200).stdout.replace("│", " ").split())
    guide = " ".join((ROOT / "docs" / "guide.md").read_text().split())
    portable, custom_op = re.search(r"(\d+(?:\.\d)?)x smaller instead of (\d+(?:\.\d)?)x", guide).groups()
    assert f"larger ({portable}x against {custom_op}x on LeNet-300-100" in text  # the guide's measured figures
    assert "about 4x" not in text
    assert "(needs matplotlib: pip install 'onnxcomp[report]')" in text


# 6. Usage errors in one line --------------------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (("compress", "in.onnx", "out.onnx", "--bits", "0"), ("--bits", "give an integer from 1 to 16", "onnxcomp compress --help")),
    (("compress", "in.onnx"), ("Missing argument 'OUT'", "onnxcomp compress --help")),
    (("compress", "in.onnx", "out.onnx", "--nope"), ("No such option: --nope",)),
    (("compres",), ("No such command 'compres'", "compress", "onnxcomp --help")),
    (("verify", "a.onnx", "b.onnx", "--min-cosine", "2"), ("--min-cosine", "onnxcomp verify --help")),
])
def test_usage_errors_are_one_line_with_exit_code_2(args, words):
    message = one_line_error(run(*args), 2, *words)
    assert "╭" not in message and "Usage:" not in message


def test_usage_error_from_the_installed_command():
    one_line_error(cli("compress", "in.onnx", "out.onnx", "--sparsity", "1.5"), 2, "--sparsity", "onnxcomp compress --help")


# 7. Compressing a compressed model --------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["custom-op", "portable"])
def test_compressing_a_compressed_model_says_so(tmp_path, form):
    small = tmp_path / "small.onnx"
    onnxcomp.compress(BUNDLED, small, format=form)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    one_line_error(run("compress", small, tmp_path / "again.onnx", "--eval", EVAL), 1,
                   f"{small} is already compressed by onnxcomp ({form} format", "compress the original model instead")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written, nothing changed


# 8. Top-1 only for class scores -----------------------------------------------------------------------------

def test_verify_shows_top1_only_for_class_scores(tmp_path, rng):
    """A classifier with its pooled features as a second output: [N, 64] features are not class scores."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["features"]),
             helper.make_node("MatMul", ["features", "w2"], ["z"]), helper.make_node("Add", ["z", "b"], ["scores"]),
             helper.make_node("Softmax", ["scores"], ["probabilities"], axis=1)]
    model = make_model(nodes, [float_input("x", ["n", 128])],
                       [float_input("features", ["n", 64]), float_input("probabilities", ["n", 10])],
                       [weight(rng, "w1", (128, 64)), weight(rng, "w2", (64, 10)), weight(rng, "b", (10,))])
    onnx.save(model, tmp_path / "model.onnx")
    onnxcomp.compress(tmp_path / "model.onnx", tmp_path / "small.onnx", min_elements=16, bits=4)
    result = run("verify", tmp_path / "model.onnx", tmp_path / "small.onnx", "--samples", "64")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.split()}
    assert rows["features"][1] == "64x64" and rows["features"][-1] == "-"
    assert rows["probabilities"][-1].endswith("%")
    report = json.loads(run("verify", tmp_path / "model.onnx", tmp_path / "small.onnx", "--json").stdout)
    top1 = {output["name"]: output["top1_agreement"] for output in report["outputs"]}
    assert top1["features"] is None and 0 <= top1["probabilities"] <= 1


# 9. The Python API and the command line agree ---------------------------------------------------------------

def test_api_defaults_are_the_command_line_defaults():
    from onnxcomp.front.cli import PIPELINE_OPTIONS, compress as command
    from onnxcomp.pipeline.compression import build_pipeline
    api = inspect.signature(build_pipeline).parameters
    for name in PIPELINE_OPTIONS:
        option = inspect.signature(command).parameters[name].default.default
        option = option.value if hasattr(option, "value") else option
        assert api[name].default == option, name


def test_guide_python_example_writes_what_the_command_line_writes(tmp_path):
    """The guide's API example (the defaults) and `onnxcomp compress` with no option write the same
    sidecar; `sparsity=0.5` and `--sparsity 0.5` agree too (both prune convolutions)."""
    (tmp_path / "models").symlink_to(ROOT / "models")
    (block,) = [b for b in fenced_blocks(ROOT / "docs" / "guide.md", ("python",)) if "onnxcomp.compress(" in b]
    home = str(Path(onnxcomp.__file__).resolve().parents[1])
    result = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {home!r})\n" + block],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert run("compress", LENET5, tmp_path / "cli.onnx", "-q").returncode == 0
    assert (tmp_path / "small.onnxcomp").read_bytes() == (tmp_path / "cli.onnxcomp").read_bytes()
    api = onnxcomp.compress(LENET5, tmp_path / "api5.onnx", sparsity=0.5)
    assert run("compress", LENET5, tmp_path / "cli5.onnx", "--sparsity", "0.5", "-q").returncode == 0
    assert (tmp_path / "api5.onnxcomp").read_bytes() == (tmp_path / "cli5.onnxcomp").read_bytes()
    assert {layer.name: round(layer.sparsity, 1) for layer in api.layers}["conv2.weight"] == 0.5


# 10. Tables fit an 80-column terminal ----------------------------------------------------------------------

def test_tables_fit_80_columns_and_keep_every_number(tmp_path):
    small = tmp_path / "small.onnx"
    result = run("compress", VIT, small, "--report", tmp_path / "report.json", columns=80)
    assert result.returncode == 0, result.stderr
    table = result.stdout.split("\nleft dense")[0].split("\ntotal:")[0]
    assert max(len(line) for line in table.splitlines()) <= 80, table
    for layer in json.loads((tmp_path / "report.json").read_text())["layers"]:  # numbers whole; long names may wrap
        assert f" {layer['bytes_before']:,} " in table and f" {layer['bytes_after']:,} " in table
        assert f"{layer['ratio']:.1f}x" in table
    assert "blocks.0.mlp.fc1.weight" in table.replace("\n", "") or "blocks.0.mlp.fc1" in table
    for command in (("inspect", small), ("verify", VIT, small, "--per-layer", "--samples", "8")):
        output = run(*command, columns=80)
        assert output.returncode == 0, output.stderr
        table_lines = [line for line in output.stdout.splitlines()
                       if not line.startswith((str(small), "no --calib", "the layers"))]
        assert max(len(line) for line in table_lines) <= 80, output.stdout
        assert "\x1b" not in output.stdout and not any(line != line.rstrip() for line in table_lines)


def test_budget_output_bad_slice_is_refused_in_one_line(tmp_path):
    data = tmp_path / "calib.npz"
    np.savez(data, input=np.zeros((8, 784), np.float32))
    one_line_error(run("compress", BUNDLED, tmp_path / "small.onnx", "--calib", data, "--budget", "cosine=0.99",
                       "--budget-output", "logits[..., 4:x]"), 1, "'4:x' is not a slice")
    assert not (tmp_path / "small.onnx").exists()
