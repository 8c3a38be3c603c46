"""Which budget metric implies a detector's F1 against the original, measured on calibration images only (issue #12,
branch calzoo7).

A zoo detector's declared check, detection F1 of the compressed model's boxes against the original's >= 0.95, is no
`--budget` metric, so its `{budget}` is a stand-in on the raw first output. This script measures, for each
compressed output given, on the model's calibration images (its `calib.npz`, plus `--extra` more drawn from the
calibration photographs with another seed; never the evaluation images), per image: the cosine error `1 - cos` and
the relative L2 error of the raw output, and how many of the original's boxes the output still finds (IoU >= 0.5,
the zoo's decoding). It prints one row per output (pooled F1 vs the original, min cosine, pooled relative L2 error,
images whose boxes changed) and then, over all outputs' images together, the worst per-image F1 among images whose
cosine error lies below each threshold: the stand-in budget is the cosine whose images all kept their boxes.

Since branch calzoo8 it also measures the pooled relative L2 error of slices of the raw output (`--budget-output`,
onnxcomp's syntax: `output[..., 4:5]`, ddddocr-det's objectness; `output0[:, 4:]`, YOLOv8's class scores), and for
ddddocr-det the task metric's change on the extra captchas, whose character boxes are known (box F1 at IoU 0.5 in
points, the zoo's declared "within 1 point"; since branch cal11b also ppocr-det's, line boxes on extra pages of the
calibration licenses): for each metric, where the first output that breaks each declared
tolerance (F1 vs original < 0.95; a task drop above 1 point) lies, interpolated from the output before it.

Usage:
    python bench/detector_budget.py {ddddocr-det,yolov8n-nudenet,ppocr-det} OUT1.onnx [OUT2.onnx ...] [--extra 64] [--json FILE] [--on-evaluation]
        [--budget-output 'output[..., 4:5]' ...]
(`--on-evaluation`: the same figures on the evaluation images, to check a budget afterwards, never to choose it.)
(`ONNXCOMP_ZOO_CACHE` as for bench/zoo.py; the outputs are onnxcomp compress outputs of that model.)
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import zoo  # noqa: E402
from zoo.common import detection_f1  # noqa: E402

from onnxcomp.pipeline import budget_output as output_slice  # noqa: E402

# How each detector's calibration-like images are drawn and its raw output decoded (bench/zoo/vision.py).
def _images(name: str, extra: int, evaluation: bool = False) -> tuple:
    """(the model, its images [n, 3, H, W] float32, the extra images' known boxes or None): calib.npz (eval.npz
    with ``evaluation``) followed by ``extra`` images drawn from the calibration photographs with another seed."""
    from zoo import vision

    model = zoo.BY_NAME[name]
    with np.load(model.folder / ("eval.npz" if evaluation else "calib.npz")) as data:
        images = data["x" if evaluation or "images" not in data else "images"]  # ppocr-det's calib.npz: x
    boxes = None
    if extra:
        rng = np.random.default_rng(zlib.crc32(f"{name}-budget-study".encode()))  # not the model's seed
        if name == "ddddocr-det":
            drawn = [vision._click_captcha(rng, vision.CALIB_IMAGES) for _ in range(extra)]
            more, boxes = np.stack([d[0] for d in drawn]), [d[1] for d in drawn]
        elif name == "ppocr-det":  # pages of the calibration licenses, their line boxes known (bench/zoo/ocr.py)
            from zoo import ocr

            drawn = [ocr._page(rng, ocr.CALIB_LICENSES) for _ in range(extra)]
            more, boxes = np.stack([ocr._det_norm(d[0]) for d in drawn]), [d[1] for d in drawn]
        else:
            more = (vision._crops(vision.CALIB_IMAGES, rng, extra, (320, 320)).astype(np.float32) / 255).transpose(0, 3, 1, 2)
        images = np.concatenate([images, more.astype(np.float32)])
    return model, images, boxes


def _decode(name: str):
    from zoo import ocr, vision

    if name == "ppocr-det":  # a probability map [1, H, W] per page: DB's boxes (the zoo's decoding)
        return lambda output: ocr._det_boxes(output[0])
    return vision._yolox_boxes if name == "ddddocr-det" else vision._yolo_boxes


def _run(path: Path, images: np.ndarray, compressed: bool) -> np.ndarray:
    import onnxcomp
    import onnxruntime

    session = (onnxcomp.InferenceSession(str(path)) if compressed
               else onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]))
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i:i + 1]})[0] for i in range(len(images))])


def per_image(reference: np.ndarray, output: np.ndarray, decode) -> dict:
    """Per-image cosine error, squared error and reference norm, and the image's F1 against the original's boxes."""
    a = reference.reshape(len(reference), -1).astype(np.float64)
    b = output.reshape(len(output), -1).astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    ref_boxes = [decode(o) for o in reference]
    out_boxes = [decode(o) for o in output]
    f1 = np.array([detection_f1([p], [r]) for p, r in zip(out_boxes, ref_boxes)])
    return {"cos_err": 1 - cos, "sq_err": ((a - b) ** 2).sum(1), "sq_ref": (a ** 2).sum(1), "f1": f1,
            "pooled_f1": detection_f1(out_boxes, ref_boxes)}


def pooled_rel_l2(reference: np.ndarray, output: np.ndarray) -> float:
    """sqrt(sum of squared errors / sum of squared reference values) over all images (onnxcomp's rel_l2)."""
    a, b = reference.astype(np.float64), output.astype(np.float64)
    return float(np.sqrt(((a - b) ** 2).sum() / (a ** 2).sum()))


def crossing(rows: list[dict], key: str, tolerance: str) -> float | None:
    """Where, in ``key`` order (a pooled error of each output), the first output that breaks ``tolerance`` ("f1": F1
    vs original below 0.95; "task": a task drop above 1 point) lies, interpolated linearly in that quantity from the
    output before it. None when no output breaks it, or the first one does (nothing to interpolate from)."""
    order = sorted(rows, key=lambda r: r[key])
    value, limit = ("pooled_f1", 0.95) if tolerance == "f1" else ("task_change", -1.0)
    first = next((i for i, r in enumerate(order) if r[value] < limit), None)
    if not first:
        return None
    lo, hi = order[first - 1], order[first]
    start = lo[value] if tolerance == "f1" else min(lo[value], 0.0)
    return lo[key] + (start - limit) / (start - hi[value]) * (hi[key] - lo[key])


OUTPUT_NAMES = {"ddddocr-det": "output", "yolov8n-nudenet": "output0", "ppocr-det": "sigmoid_0.tmp_0"}
CHECK = (8, 32)  # check-set sizes: a quarter of 32 and of 128 calibration images
SUBSETS = 200


def check_bounds(reference: np.ndarray, output: np.ndarray, n: int) -> list[float]:
    """The budget's rel_l2 bound (onnxcomp.core.budget.error_bound, one standard error) on SUBSETS seeded random
    subsets of n images: what a check set of n images would report for this output."""
    from onnxcomp.core.budget import error_bound

    rng = np.random.default_rng(n)
    picks = [rng.choice(len(reference), size=min(n, len(reference)), replace=False) for _ in range(SUBSETS)]
    return [error_bound("rel_l2", reference[i], output[i]) for i in picks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=list(OUTPUT_NAMES))
    parser.add_argument("outputs", nargs="+")
    parser.add_argument("--extra", type=int, default=64, help="more calibration-like images (another seed)")
    parser.add_argument("--json", help="write the per-image figures here")
    parser.add_argument("--budget-output", action="append", default=[], metavar="NAME[SLICE]",
                        help="also the pooled relative L2 error of this slice of the raw output (onnxcomp's "
                             "--budget-output syntax; repeatable)")
    parser.add_argument("--balanced", action="append", default=[], metavar="'PART + PART'",
                        help="also the balanced relative L2 error of these parts (onnxcomp's --budget-output given "
                             "once per part): the RMS of the parts' own pooled relative L2 errors; repeatable")
    parser.add_argument("--on-evaluation", action="store_true",
                        help="measure on the evaluation images instead (eval.npz; --extra ignored): to check a budget "
                             "chosen on calibration images afterwards, never to choose one")
    args = parser.parse_args()
    if args.on_evaluation:
        args.extra = 0
    model, images, known = _images(args.model, args.extra, args.on_evaluation)
    output_name = OUTPUT_NAMES[args.model]
    slices = [output_slice.parse(text, [output_name]) for text in args.budget_output]
    balanced = {text: [output_slice.parse(part.strip(), [output_name]) for part in text.split(" + ")] for text in args.balanced}
    decode = _decode(args.model)
    reference = _run(model.onnx_path, images, compressed=False)
    rows, pooled = [], {"cos_err": [], "f1": []}
    boxes = sum(len(decode(o)) for o in reference)
    kind = "EVALUATION images (eval.npz)" if args.on_evaluation else \
        f"calibration images ({len(images) - args.extra} of calib.npz, {args.extra} extra)"
    print(f"{args.model}: {len(images)} {kind}, "
          f"{boxes} boxes of the original")
    print("| output | ratio | F1 vs original (pooled) | images with changed boxes | min cosine | pooled rel L2 "
          f"| rel_l2 bound on {CHECK[0]} / {CHECK[1]} check images (median, 90th pct of {SUBSETS} subsets) |")
    print("|---|---|---|---|---|---|---|")
    original_bytes = model.onnx_path.stat().st_size
    ref_boxes = [decode(o) for o in reference]
    if known is not None:  # the extra captchas (the last len(known) images) have known character boxes
        task_original = 100 * detection_f1(ref_boxes[-len(known):], known)
    for out in map(Path, args.outputs):
        output = _run(out, images, compressed=True)
        measured = per_image(reference, output, decode)
        size = out.stat().st_size + (out.with_suffix(".onnxcomp").stat().st_size if out.with_suffix(".onnxcomp").exists() else 0)
        rel_l2 = float(np.sqrt(measured["sq_err"].sum() / measured["sq_ref"].sum()))
        row = {"output": str(out), "ratio": original_bytes / size, "pooled_f1": measured["pooled_f1"],
               "changed": int((measured["f1"] < 1).sum()), "min_cos": float(1 - measured["cos_err"].max()),
               "rel_l2": rel_l2, "cos_err": measured["cos_err"].tolist(), "f1": measured["f1"].tolist(),
               "bounds": {n: check_bounds(reference, output, n) for n in CHECK},
               "slices": {c.text: pooled_rel_l2(c.take(reference), c.take(output)) for c in slices}}
        for text, parts in balanced.items():  # onnxcomp's balanced join: sqrt(mean_k rel_k^2) (budget_output.py)
            row["slices"][text] = float(np.sqrt(np.mean([pooled_rel_l2(c.take(reference), c.take(output)) ** 2
                                                         for c in parts])))
        if known is not None:
            row["task_change"] = 100 * detection_f1([decode(o) for o in output[-len(known):]], known) - task_original
        rows.append(row)
        pooled["cos_err"] += row["cos_err"]
        pooled["f1"] += row["f1"]
        print(f"| {out.parent.name}/{out.name} | {row['ratio']:.2f}x | {row['pooled_f1']:.3f} | {row['changed']} of {len(images)} "
              f"| {row['min_cos']:.5f} | {rel_l2:.5f} | "
              + " / ".join(f"{np.median(row['bounds'][n]):.4f}, {np.percentile(row['bounds'][n], 90):.4f}" for n in CHECK)
              + " |", flush=True)
    order = sorted(rows, key=lambda r: r["rel_l2"])
    slope = max((1 - r["pooled_f1"]) / r["rel_l2"] for r in rows if r["rel_l2"] > 0)
    ratios = ", ".join(f"{(1 - r['pooled_f1']) / r['rel_l2']:.2f}" for r in order)
    print(f"\n(1 - F1) / rel_l2, by rel_l2: {ratios}; at the steepest, F1 >= 0.95 needs rel_l2 <= {0.05 / slope:.4f}")
    first_fail = next((i for i, r in enumerate(order) if r["pooled_f1"] < 0.95), 0)
    if first_fail:  # the outputs on either side of F1 0.95, in rel_l2 order
        lo, hi = order[first_fail - 1], order[first_fail]
        cross = lo["rel_l2"] + (lo["pooled_f1"] - 0.95) / (lo["pooled_f1"] - hi["pooled_f1"]) * (hi["rel_l2"] - lo["rel_l2"])
        print(f"F1 crosses 0.95 between rel_l2 {lo['rel_l2']:.4f} (F1 {lo['pooled_f1']:.3f}) and {hi['rel_l2']:.4f} "
              f"(F1 {hi['pooled_f1']:.3f}): at {cross:.4f} by linear interpolation")
    measures = [c.text for c in slices] + list(balanced)
    if measures or known is not None:
        task = f"task change on the {len(known)} extra captchas (box F1 {task_original:.1f} %), points" if known else None
        print("\n| output | F1 vs original | " + (f"{task} | " if task else "") + "pooled rel L2 | "
              + " | ".join(f"rel L2 of {m}" for m in measures) + " |")
        print("|---" * (3 + bool(task) + len(measures)) + "|")
        for row in rows:
            print(f"| {Path(row['output']).parent.name}/{Path(row['output']).name} | {row['pooled_f1']:.3f} | "
                  + (f"{row['task_change']:+.2f} | " if task else "") + f"{row['rel_l2']:.4f} | "
                  + " | ".join(f"{row['slices'][m]:.4f}" for m in measures) + " |")
        for key, label in [("rel_l2", "pooled rel L2")] + [(m, f"rel L2 of {m}") for m in measures]:
            for row in rows:
                row[key] = row["slices"][key] if key in row["slices"] else row[key]
            for tolerance, what in [("f1", "F1 vs original crosses 0.95")] + [("task", "task drop passes 1 point")] * bool(task):
                found = crossing(rows, key, tolerance)
                print(f"{label}: {what} " + (f"at {found:.4f} (half: {found / 2:.4f})" if found is not None else
                                             "nowhere between two of these outputs (none, or already the first)"))
    err, f1 = np.array(pooled["cos_err"]), np.array(pooled["f1"])
    print("\nAll outputs' images together: per-image F1 vs the original by the image's cosine error")
    print("| cosine error below | images | images with changed boxes | worst image F1 | their mean F1 |")
    print("|---|---|---|---|---|")
    for threshold in (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2):
        inside = err < threshold
        if inside.any():
            print(f"| {threshold:g} | {int(inside.sum())} | {int((f1[inside] < 1).sum())} | {f1[inside].min():.3f} | {f1[inside].mean():.4f} |")
    changed = err[f1 < 1]
    if len(changed):
        print(f"\nsmallest cosine error of an image whose boxes changed: {changed.min():.3g} "
              f"(of {len(changed)} such images; cosine {1 - changed.min():.5f})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
