"""The automatic per-layer allocation (``compress --budget``) against the best uniform setting that meets the same
budget, on the bundled models.

For each model and budget:
* uniform: the same sparsity and bits for every compressed layer, over a grid, with magnitude pruning and
  least-squares reconstruction fitted on the same 75% of the calibration file that ``compress_to_budget``
  fits on; each setting is judged on the held-back 25% (the samples ``compress_to_budget`` measures on), and
  the smallest one that meets the budget wins;
* auto: ``compress_to_budget(model, out, budget=B, calib=..., min_elements=...)`` with its defaults (magnitude
  pruning, reconstruction, sparsity 0..0.95, bits 2..8 per layer).
Both are then measured on the separate evaluation file (models/*_eval.npz), which nothing was fitted on.

Usage:
    PYTHONPATH=. python bench/budget_vs_uniform.py [--models vit_fashion,...] [--sparsity 0,0.3,...] [--bits 3,4,5,6]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import onnxcomp
from onnxcomp.core import budget as budget_math
from onnxcomp.pipeline.autotune import compress_to_budget, holdout_split
from onnxcomp.errors import OnnxcompError
from onnxcomp.pipeline.evaluate import accuracy, load_calibration

from report import update_section

ROOT = Path(__file__).resolve().parents[1]
MODELS = "lenet300_mnist,lenet5_mnist,lenet300_fashion,lenet5_fashion,vit_fashion"
EXTRA_BUDGETS = {"vit_fashion": ["cosine=0.99"]}
HOLDOUT = 0.25  # compress_to_budget's default


def split(calib: str, model_path: str):
    """The fit / held-back split compress_to_budget makes (a seeded random 25% held back)."""
    data = load_calibration(calib, onnx.load(model_path))
    count = len(next(iter(data.values())))
    held = max(1, int(round(HOLDOUT * count)))
    fit_rows, hold_rows = holdout_split(count, held)
    return ({k: v[fit_rows] for k, v in data.items()}, {k: v[hold_rows] for k, v in data.items()}, held)


def run(path: str, feeds: dict, compressed: bool) -> np.ndarray:
    if compressed:
        return onnxcomp.InferenceSession(path).run(None, feeds)[0]
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def quality(goal: budget_math.Budget, reference, output) -> float:
    """The budget metric itself (agreement or min cosine), from the additive error."""
    e = budget_math.error(goal.metric, reference, output)
    return 1.0 - e if goal.metric in ("cosine", "top1") else e


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--budget", default="top1=0.99")
    parser.add_argument("--sparsity", default="0,0.3,0.5,0.6,0.7,0.8,0.85,0.9")
    parser.add_argument("--bits", default="3,4,5,6")
    parser.add_argument("--min-elements", type=int, default=256)
    parser.add_argument("--cache-dir", default="/tmp/onnxcomp-budget-vs-uniform-cache")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--reuse", default=None, help="results (--json) of an earlier run: skip the models it holds")
    parser.add_argument("--notes", default=None, help="a Markdown file appended to the section (observations)")
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args()
    sparsities = [float(s) for s in args.sparsity.split(",")]
    bits = [int(b) for b in args.bits.split(",")]
    raw = json.loads(Path(args.reuse).read_text()) if args.reuse else []
    done = {r["model"] for r in raw}
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "out.onnx")
        for name in args.models.split(","):
            if name in done:
                continue
            dataset = name.split("_")[1]
            model = str(ROOT / "models" / f"{name}.onnx")
            calib = str(ROOT / "models" / f"{dataset}_calib.npz")
            data = str(ROOT / "models" / f"{dataset}_eval.npz")
            base = accuracy(model, data)
            fit, hold, held = split(calib, model)
            reference = run(model, hold, compressed=False)
            goals = [budget_math.parse_budget(b) for b in [args.budget] + EXTRA_BUDGETS.get(name, [])]

            # ---- uniform settings, each compressed and measured once (against every budget), on demand
            start = time.perf_counter()
            measured = {}

            def point(s, b):
                if (s, b) not in measured:
                    report = onnxcomp.compress(model, out, calib=fit, prune="magnitude", sparsity=s, bits=b,
                                               min_elements=args.min_elements)
                    output = run(out, hold, compressed=True)
                    qualities = [quality(g, reference, output) for g in goals]
                    p = dict(sparsity=s, bits=b, bytes=report.output_bytes, ratio=report.ratio, quality=qualities,
                             met=[g.met(budget_math.error(g.metric, reference, output)) for g in goals])
                    if any(p["met"]):  # like compress_to_budget's output: the setting refit on all calibration samples
                        onnxcomp.compress(model, out, calib=calib, prune="magnitude", sparsity=s, bits=b,
                                          min_elements=args.min_elements)
                        p["eval"] = accuracy(out, data, compressed=True)
                    measured[(s, b)] = p
                    print(f"{name} uniform s={s:.2f} b={b}: {p['bytes']:8d} B {p['ratio']:6.1f}x  "
                          + "  ".join(f"{g.metric} {q:.4f}{'*' if m else ''}" for g, q, m in zip(goals, qualities, p["met"]))
                          + (f"  eval {100 * p['eval']:.2f}%" if "eval" in p else ""), flush=True)
                return measured[(s, b)]

            # The smallest uniform setting per budget: bits from low to high, sparsity from high to low until the
            # first setting that meets the budget. A setting with no more sparsity and no fewer bits than one that
            # met it is never smaller (the file shrinks with sparsity and with fewer bits), so it is skipped.
            uniform = []
            for k, goal in enumerate(goals):
                best = None
                for b in sorted(bits):
                    for s in sorted(sparsities, reverse=True):
                        if best and s <= best["sparsity"]:
                            break
                        p = point(s, b)
                        if p["met"][k]:
                            if best is None or p["bytes"] < best["bytes"]:
                                best = p
                            break
                uniform.append(best)
            grid_seconds = time.perf_counter() - start

            for k, goal in enumerate(goals):
                text = f"{goal.metric}={goal.value:g}"
                uni = uniform[k]
                start = time.perf_counter()
                try:
                    report = compress_to_budget(model, out, budget=text, calib=calib, min_elements=args.min_elements,
                                                cache_dir=args.cache_dir)
                except OnnxcompError as error:  # reported as a result: auto found no allocation within the budget
                    print(f"{name} {text} auto: FAILED: {error}", flush=True)
                    raw.append(dict(model=name, budget=text, goal_index=k, uniform_tried=len(measured), base_eval=base,
                                    held=held, uniform=uni, grid_seconds=grid_seconds,
                                    auto=dict(failed=str(error), seconds=time.perf_counter() - start)))
                    if args.json:
                        Path(args.json).write_text(json.dumps(raw, indent=1) + "\n")
                    continue
                auto_seconds = time.perf_counter() - start
                # The checked trial's held-back error (fit on the same 75 % as uniform); the output itself is refit on all.
                error = report.budget["measured_error"]
                auto_q = 1.0 - error if goal.metric in ("cosine", "top1") else error
                auto_eval = accuracy(out, data, compressed=True)
                settings = report.budget["settings"]
                print(f"{name} {text} auto: {report.output_bytes} B {report.ratio:.1f}x {goal.metric} {auto_q:.4f} "
                      f"eval {100 * auto_eval:.2f}% ({auto_seconds:.0f} s) rounds {report.budget['rounds']}", flush=True)
                print("   settings " + json.dumps(settings), flush=True)
                result = dict(model=name, budget=text, goal_index=k, uniform_tried=len(measured), base_eval=base, held=held,
                              uniform=uni, grid_seconds=grid_seconds,
                              auto=dict(bytes=report.output_bytes, ratio=report.ratio, quality=auto_q, eval=auto_eval,
                                        seconds=auto_seconds, settings=settings, rounds=report.budget["rounds"],
                                        predicted_error=report.budget["predicted_error"],
                                        measured_error=report.budget["measured_error"]))
                raw.append(result)
                if args.json:
                    Path(args.json).write_text(json.dumps(raw, indent=1) + "\n")

    order = args.models.split(",")
    raw.sort(key=lambda r: order.index(r["model"]) if r["model"] in order else len(order))
    rows = []
    for r in raw:
        uni, auto, base, k = r["uniform"], r["auto"], r["base_eval"], 0
        if uni and "failed" not in auto:
            k = r["goal_index"]
            margin = 100.0 * (1.0 - auto["bytes"] / uni["bytes"])
            uni_cells = (f"s {uni['sparsity']:g} / {uni['bits']} b | {uni['bytes']:,} ({uni['ratio']:.1f}x) | "
                         f"{uni['quality'][k]:.4f} | {100 * uni['eval']:.2f}% ({100 * (uni['eval'] - base):+.2f})")
            margin_cell = f"**{margin:+.1f}%**" if margin > 0 else f"{margin:+.1f}% (auto larger)"
        else:
            uni_cells, margin_cell = "none in the grid | | | ", "n/a"
        if uni and "failed" in auto:
            k = r["goal_index"]
            uni_cells = (f"s {uni['sparsity']:g} / {uni['bits']} b | {uni['bytes']:,} ({uni['ratio']:.1f}x) | "
                         f"{uni['quality'][k]:.4f} | {100 * uni['eval']:.2f}% ({100 * (uni['eval'] - base):+.2f})")
        if "failed" in auto:
            rows.append(f"| {r['model']} | {r['budget']} | {100 * base:.2f}% | {uni_cells} | **no allocation found** (see below) | | | "
                        f"auto failed | {r['grid_seconds']:.0f} s / {auto['seconds']:.0f} s |")
            continue
        rows.append(f"| {r['model']} | {r['budget']} | {100 * base:.2f}% | {uni_cells} | {auto['bytes']:,} ({auto['ratio']:.1f}x) | "
                    f"{auto['quality']:.4f} | {100 * auto['eval']:.2f}% ({100 * (auto['eval'] - base):+.2f}) | {margin_cell} | "
                    f"{r['grid_seconds']:.0f} s / {auto['seconds']:.0f} s |")
    lines = [
        f"Budget measured against the original model on the held-back 25% (seeded random) of the calibration file "
        f"(the samples `compress_to_budget` holds back; nothing is fitted on them); the other 75% fit pruning statistics "
        f"and reconstruction for both columns while choosing; the eval top-1 columns are of the chosen settings refit on all "
        f"calibration samples (what `compress_to_budget` writes). `min_elements={args.min_elements}` for both.",
        f"Uniform = the smallest file over the grid sparsity {{{args.sparsity}}} x bits {{{args.bits}}} "
        "(same setting in every compressed layer, magnitude pruning + reconstruction) that meets the budget on the "
        "held-back samples (searched per bit width from high to low sparsity, stopping at the first setting that meets "
        "it; settings with less sparsity and more bits than a passing one are never smaller and are skipped). Auto = `compress_to_budget` with its defaults (magnitude + reconstruction, per-layer "
        "sparsity 0..0.97 and bits 2..8; a top1 budget allocates on the KL stand-in). Size = model + sidecar bytes (ratio against the original file). "
        "Eval top-1 on the separate evaluation file (models/*_eval.npz: 5,000 Fashion-MNIST test / 1,000 MNIST images). "
        "Margin = how much smaller auto is than uniform.",
        "",
        "| model | budget | original eval top-1 | uniform setting | uniform bytes | uniform held-back | uniform eval top-1 "
        "| auto bytes | auto held-back | auto eval top-1 | auto smaller by | time grid / auto |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Settings chosen by auto (sparsity/bits per layer):",
        "",
    ]
    for r in raw:
        if "failed" in r["auto"]:
            lines.append(f"* {r['model']}, {r['budget']}: auto failed: {r['auto']['failed']}")
            continue
        chosen = ", ".join(f"{k.removesuffix('.weight')} " + ("dense" if v.get("skip") else f"{v['sparsity']:g}/{v['bits']}") for k, v in r["auto"]["settings"].items())
        lines.append(f"* {r['model']}, {r['budget']}: {chosen} (predicted error {r['auto']['predicted_error']:.4f}, "
                     f"measured {r['auto']['measured_error']:.4f}, {len(r['auto']['rounds'])} round(s))")
    if args.notes:
        lines += ["", Path(args.notes).read_text().strip()]
    if not args.no_doc:
        update_section("budget-vs-uniform", "\n".join(lines))


if __name__ == "__main__":
    main()
