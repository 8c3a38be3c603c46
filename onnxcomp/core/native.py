"""The compiled module ``onnxcomp._native`` (csrc/python/native.cc), or None where it is not built.

It holds the compressor's loops over every weight (k-means refinement, nearest-centroid assignment, the sort of a
weight's values, magnitude masks, the outlier search's largest magnitudes and per-channel errors, Huffman tree
depths, Huffman and gap coding, the decode of a record's indices), each byte-identical to a numpy reference kept
beside its caller (onnxcomp/core/codebook.py, pruning.py, outliers.py, huffman.py, sidecar.py,
onnxcomp/pipeline/inspection.py); without it those references run, much slower. ``digest`` keys the in-process
caches by an array's bytes (the compiled 64-bit digest, or zlib.crc32 without the module).
"""

from __future__ import annotations

import importlib.util
import logging
import sys


def _installed_native():
    """``onnxcomp._native`` from the installed distribution's files, for a process that imported the source tree
    (run from the checkout's root after a normal install, as CI does); None if it is not installed."""
    from importlib import metadata
    try:
        files = metadata.files("onnxcomp") or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name.startswith("_native.") and file.name.endswith((".so", ".pyd")):
            spec = importlib.util.spec_from_file_location("onnxcomp._native", str(file.locate()))
            if spec is None or spec.loader is None:
                continue
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules["onnxcomp._native"] = module
            return module
    return None


try:
    from onnxcomp import _native as native
except ImportError:  # a source tree without the built module: use the installed one, else numpy
    native = _installed_native()
if native is None:  # pragma: no cover - nothing built anywhere
    logging.getLogger("onnxcomp").warning("onnxcomp._native is not built: k-means and Huffman coding run in numpy, "
                                          "much slower (reinstall onnxcomp with pip to build it)")


def digest(array) -> int:
    """A key for the bytes of ``array`` (any dtype; made C-contiguous) within this process, for in-process caches
    (never stored): the compiled 64-bit digest (``_native.digest``), or zlib.crc32 without the module."""
    import numpy as np

    array = np.ascontiguousarray(array)
    if native is None or not hasattr(native, "digest"):
        import zlib
        return zlib.crc32(memoryview(array).cast("B"))
    return native.digest(array)
