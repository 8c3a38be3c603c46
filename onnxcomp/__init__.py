"""onnxcomp: Deep Compression (pruning, k-means weight sharing, Huffman coding) for ONNX models.

``compress(in, out, **options)`` writes a compressed model and its sidecar; ``InferenceSession`` opens it in
onnxruntime with the custom-op library (``library_path()``) registered.
"""

from .errors import (CalibrationError, CorruptSidecarError, InvalidOptionError, OnnxcompError, OutputError,
                     UnsupportedModelError)
from .runtime import DOMAIN, InferenceSession, library_path, session_options

__version__ = "0.1.0"


def compress(input_path, output_path, **options):
    """Compress ``input_path`` to ``output_path`` (+ sidecar); returns a ``Report``. Options as the CLI."""
    from .pipeline import compress as run
    return run(input_path, output_path, **options)


__all__ = ["compress", "InferenceSession", "library_path", "session_options", "DOMAIN", "OnnxcompError",
           "InvalidOptionError", "UnsupportedModelError", "CalibrationError", "CorruptSidecarError", "OutputError"]
