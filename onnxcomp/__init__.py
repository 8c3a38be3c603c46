"""onnxcomp: Deep Compression (pruning, k-means weight sharing, Huffman coding) for ONNX models.

``compress(in, out, **options)`` writes a compressed model and its sidecar; ``InferenceSession`` opens it in
onnxruntime with the custom-op library (``library_path()``) registered. ``inspect(model)`` tells what each
weight costs, ``verify(original, compressed)`` compares their outputs, ``decompress(compressed, out)`` writes
a plain dense model.
"""

from onnxcomp.errors import (CalibrationError, CorruptSidecarError, InvalidOptionError, OnnxcompError, OutputError,
                     UnsupportedModelError)
from onnxcomp.runtime import DOMAIN, InferenceSession, library_path, session_options

__version__ = "0.1.0"


def compress(input_path, output_path, **options):
    """Compress ``input_path`` to ``output_path`` (+ sidecar); returns a ``Report``. Options as the CLI."""
    from onnxcomp.pipeline.compression import compress as run
    return run(input_path, output_path, **options)


def inspect(model_path):
    """Per-weight storage of an original or compressed model; returns an ``Inspection`` (``.to_dict()``)."""
    from onnxcomp.pipeline.inspection import inspect as run
    return run(model_path)


def verify(original_path, compressed_path, calib=None, **options):
    """Compare both models' outputs on ``calib`` (.npz) or seeded random inputs; returns a ``Verification``."""
    from onnxcomp.pipeline.verification import verify as run
    return run(original_path, compressed_path, calib, **options)


def decompress(compressed_path, output_path):
    """Write a plain dense ONNX model (standard ops only) equivalent to ``compressed_path``."""
    from onnxcomp.pipeline.decompression import decompress as run
    return run(compressed_path, output_path)


__all__ = ["compress", "inspect", "verify", "decompress", "InferenceSession", "library_path", "session_options", "DOMAIN", "OnnxcompError",
           "InvalidOptionError", "UnsupportedModelError", "CalibrationError", "CorruptSidecarError", "OutputError"]
