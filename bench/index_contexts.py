"""How far the sidecar's index coding is from what a context model could reach (issue #12, session 21; a study).

For every float record of the given sidecars, the bits an adaptive order-0 model needs for the index stream
(Krichevsky-Trofimov estimator, alpha = 1/2: the ideal adaptive code length, its model cost included; Krichevsky and
Trofimov 1981), against the same with a context per output channel, per previous index, and per one of 8 classes of
output channels by RMS of their decoded values (3 bits a channel to say its class), each relative to the record's
bytes as written (codebook, tables, outliers and headers included). A context that lowers the figure well below
order 0 would be a lever for a coding with more than one table; one that does not says the written index stream is
already near what the indices hold.

    python bench/index_contexts.py RUN_FOLDER/*.onnxcomp
"""

from __future__ import annotations

import sys

import numpy as np
from scipy.special import gammaln

from onnxcomp.core.sidecar import FLOAT32, decode_record, read_directory

CLASSES = 8


def adaptive_bits(symbols: np.ndarray, contexts: np.ndarray, alphabet: int, count: int) -> float:
    """Ideal code length in bits of ``symbols`` (int [N], < alphabet) under one adaptive KT model per context
    (``contexts`` int [N], < count): sum over contexts of -log2 Gamma(K a) / Gamma(K a + n) prod Gamma(n_s + a) / Gamma(a)."""
    counts = np.zeros((count, alphabet))
    np.add.at(counts, (contexts, symbols), 1)
    half = 0.5
    used = counts.sum(axis=1) > 0
    counts = counts[used]
    nats = (gammaln(alphabet * half) - gammaln(alphabet * half + counts.sum(axis=1))
            + (gammaln(counts + half) - gammaln(half)).sum(axis=1)).sum()
    return float(-nats / np.log(2))


def record_figures(record, transposed: bool) -> tuple[float, float, float, float]:
    """(order 0, per output channel, per previous index, per RMS class) bits of one record's indices."""
    indices = record.indices.astype(np.int64)
    size, alphabet, dims = indices.size, len(record.codebook), record.dims
    if len(dims) >= 3:  # a convolution [O, I, k..]: output channels on axis 0
        channels, channel = dims[0], np.repeat(np.arange(dims[0]), size // dims[0])
    elif len(dims) == 2:  # a MatMul [K, N] (a Gemm B with transB stored transposed too): output channels on axis 1
        channels, channel = dims[1], np.tile(np.arange(dims[1]), dims[0])
    else:
        channels, channel = 1, np.zeros(size, np.int64)
    order0 = adaptive_bits(indices, np.zeros(size, np.int64), alphabet, 1)
    per_channel = adaptive_bits(indices, channel, alphabet, channels)
    previous = adaptive_bits(indices, np.concatenate([[0], indices[:-1]]), alphabet, alphabet)
    values = record.codebook[indices].astype(np.float64)
    rms = np.sqrt(np.bincount(channel, values * values, channels) / np.maximum(np.bincount(channel, minlength=channels), 1))
    classes = np.searchsorted(np.quantile(rms, np.linspace(0, 1, CLASSES + 1)[1:-1]), rms)
    by_class = adaptive_bits(indices, classes[channel], alphabet, CLASSES) + 3 * channels
    return order0, per_channel, previous, by_class


def main(paths: list[str]) -> None:
    print("| sidecar | float records, kB as written | order 0 | per output channel | per previous index | 8 RMS classes |")
    print("|---|---|---|---|---|---|")
    total = np.zeros(5)
    for path in paths:
        data = open(path, "rb").read()
        sums = np.zeros(5)
        for entry in read_directory(path):
            record = decode_record(data[entry.offset:entry.offset + entry.length])
            if record.value_type != FLOAT32:
                continue
            sums += [entry.length * 8, *record_figures(record, entry.transposed)]
        total += sums
        name = path.rsplit("/", 1)[-1]
        print(f"| {name} | {sums[0] / 8e3:,.1f} | " + " | ".join(f"{v / sums[0]:.3f}" for v in sums[1:]) + " |")
    print(f"| all | {total[0] / 8e3:,.1f} | " + " | ".join(f"{v / total[0]:.3f}" for v in total[1:]) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
