"""ddddocr's two captcha readers (CNN + LSTM + CTC, static batch 1, gray 64 x W input, logits [T, 1, 8210] out),
on text captchas drawn here with DejaVu fonts, coloured noise lines and dots.

`common_old.onnx` was dynamically quantised by its authors (ConvInteger on uint8 weights), its LSTM and
classifier stay float; `common.onnx` (the package's "beta" model) is float throughout.
"""

from __future__ import annotations

import ast
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .common import Fidelity, ZooModel, char_accuracy, cosine_rows, fetch_wheel, fonts

DDDDOCR = "ddddocr==1.6.1"
ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # no l/1/o/0: ambiguous in many fonts


def _charset(name: str) -> list[str]:
    """The charset list `name` from ddddocr/charsets.py in the wheel, read as a literal (no code is run)."""
    with zipfile.ZipFile(fetch_wheel(DDDDOCR)) as wheel:
        tree = ast.parse(wheel.read("ddddocr/charsets.py").decode("utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == name:
            return ast.literal_eval(node.value)
    raise KeyError(name)


def _captcha(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    text = "".join(ALPHABET[i] for i in rng.integers(0, len(ALPHABET), int(rng.integers(4, 7))))
    width = 40 + 26 * len(text)
    image = Image.new("RGB", (width, 64), tuple(int(c) for c in rng.integers(180, 256, 3)))
    draw = ImageDraw.Draw(image)
    x = int(rng.integers(6, 20))
    for char in text:
        font = ImageFont.truetype(str(fonts()[int(rng.integers(len(fonts())))]), int(rng.integers(30, 42)))
        glyph = Image.new("L", (60, 64), 0)
        ImageDraw.Draw(glyph).text((8, 4), char, font=font, fill=255)
        glyph = glyph.rotate(float(rng.uniform(-20, 20)), resample=Image.BILINEAR)
        color = Image.new("RGB", glyph.size, tuple(int(c) for c in rng.integers(0, 120, 3)))
        image.paste(color, (x - 8, int(rng.integers(-4, 6))), glyph)
        x += int(rng.integers(21, 28))
    for _ in range(int(rng.integers(2, 5))):
        draw.line([tuple(int(v) for v in rng.integers(0, (width, 64))), tuple(int(v) for v in rng.integers(0, (width, 64)))],
                  fill=tuple(int(c) for c in rng.integers(0, 200, 3)), width=int(rng.integers(1, 3)))
    for _ in range(width):
        draw.point(tuple(int(v) for v in rng.integers(0, (width, 64))), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    gray = np.asarray(image.convert("L"), np.float32) / 255  # ddddocr: height 64, grayscale, /255
    return gray, text


def _prepare(charset: str):
    def prepare(model: Path, folder: Path, rng: np.random.Generator) -> None:
        samples = [_captcha(rng) for _ in range(120)]
        calib_rng = np.random.default_rng(rng.integers(1 << 31) + 1)
        calib = [_captcha(calib_rng)[0] for _ in range(48)]
        width = 40 + 26 * 5  # calibration captchas of one width, so they stack (5 characters)
        calib = np.stack([np.pad(c[:, :width], ((0, 0), (0, max(0, width - c.shape[1]))), constant_values=1.0) for c in calib])
        np.savez_compressed(folder / "eval.npz", **{f"x{i}": s[0] for i, s in enumerate(samples)},
                            texts=np.asarray([s[1] for s in samples]), charset=np.asarray(_charset(charset)))
        np.savez_compressed(folder / "calib.npz", input1=calib[:, None].astype(np.float32))
    return prepare


def _decode(indices: np.ndarray, charset) -> str:
    out, previous = [], -1
    for i in indices.reshape(-1):
        if i != previous and 0 < i < len(charset):
            out.append(charset[i])
        previous = i
    return "".join(out)


def _infer(session, data: dict) -> dict:
    charset = list(data["charset"])
    logits, pred = [], []
    for i in range(len(data["texts"])):
        scores = session.run(None, {"input1": data[f"x{i}"][None, None]})[0]  # [T, 1, symbols]
        logits.append(scores[:, 0])
        pred.append(_decode(scores[:, 0].argmax(-1), charset))
    return {"raw": None, "logits": logits, "pred": pred}


def _exact(pred: dict, data: dict) -> float:
    return 100 * float(np.mean([p == t for p, t in zip(pred["pred"], data["texts"])]))


def _fidelity(a: dict, b: dict, data: dict) -> dict:
    cosine = min(float(cosine_rows(x.reshape(1, -1), y.reshape(1, -1))[0]) for x, y in zip(a["logits"], b["logits"]))
    return {"char agreement": char_accuracy(b["pred"], a["pred"]), "min cosine": cosine}


def _model(name: str, member: str, charset: str, summary: str) -> ZooModel:
    return ZooModel(
        name=name, package=DDDDOCR, member=member, summary=summary,
        data="120 text captchas (4-6 of 32 letters/digits, DejaVu fonts, rotated, noise lines and dots), 64 px high; calib: 48 others, 5 characters",
        prepare=_prepare(charset), infer=_infer, task=_exact, task_name="exact match %",
        fidelity=_fidelity, checks=[Fidelity("char agreement", 0.99)],
        feeds=lambda data, batch: {"input1": data["x0"][None, None]}, eval_batch=1)


CAPTCHA = _model("ddddocr-ocr", "ddddocr/common.onnx", "CHARSET_BETA",
                 "ddddocr captcha reader (the package's beta model): CNN + LSTM + CTC over 8,210 symbols")
CAPTCHA_OLD = _model("ddddocr-ocr-old", "ddddocr/common_old.onnx", "CHARSET_OLD",
                     "ddddocr captcha reader (default model): int8 ConvInteger CNN (quantised by its authors) + float LSTM + CTC")
