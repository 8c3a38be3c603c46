"""The compiled module ``onnxcomp._native`` (csrc/python/native.cc), or None where it is not built.

It holds the compressor's loops over every weight (k-means refinement, nearest-centroid assignment,
Huffman and gap coding), each byte-identical to a numpy reference kept beside its caller
(onnxcomp/codebook.py, onnxcomp/sidecar.py); without it those references run, much slower.
"""

from __future__ import annotations

import logging

try:
    from onnxcomp import _native as native
except ImportError:  # pragma: no cover - a source tree without the built module
    native = None
    logging.getLogger("onnxcomp").warning("onnxcomp._native is not built: k-means and Huffman coding run in numpy, "
                                          "much slower (reinstall onnxcomp with pip to build it)")
