"""How far the Huffman-coded indices of a zoo run are from what a context-modelled coder could reach.

Usage: python bench/index_entropy.py RUN MODEL [MODEL ...]   (runs under ~/.cache/onnxcomp-zoo/runs)

For every dense-coded record of at least 1,024 elements (sparse-coded ones are skipped and named), the
record's payload bits are compared with, summed over the records and given as % of the payload:
  - H0: the order-0 empirical entropy of its indices (the floor of any one static table per record);
  - adaptive coders (what an arithmetic or rANS coder with per-context counts would spend, tables included):
    the Krichevsky-Trofimov estimator's code length, order-independent, log2 Gamma sums per context
    (Krichevsky & Trofimov 1981), with the context = nothing (kt0), the previous index in row-major order
    (kt-prev), the output channel = index along axis 0 (kt-channel), the position in the kernel window =
    the flat index modulo the product of dims 2.. (kt-window);
  - the plug-in conditional entropies H(X | previous) and H(X | channel): lower bounds that ignore the cost of
    learning or sending one distribution per context (not reachable).
"""

from __future__ import annotations

import os
import struct
import sys

import numpy as np
from scipy.special import gammaln

from onnxcomp.core import sidecar

RUNS = os.path.expanduser("~/.cache/onnxcomp-zoo/runs")


def kt_bits(context: np.ndarray, symbols: np.ndarray, alphabet: int) -> float:
    """Bits an adaptive coder with KT (add-1/2) counts per context spends on ``symbols`` (int64 [N])."""
    counts = np.bincount(context * alphabet + symbols)
    totals = np.bincount(context)
    present, used = counts[counts > 0], totals[totals > 0]
    nats = (gammaln(used + alphabet / 2).sum() - len(used) * gammaln(alphabet / 2)
            - gammaln(present + 0.5).sum() + len(present) * gammaln(0.5))
    return float(nats / np.log(2))


def conditional_entropy_bits(context: np.ndarray, symbols: np.ndarray, alphabet: int) -> float:
    """N H(X | context), plug-in (empirical) estimate, in bits."""
    counts = np.bincount(context * alphabet + symbols).astype(float)
    totals = np.bincount(context).astype(float)
    counts, totals = counts[counts > 0], totals[totals > 0]
    return float(-(counts * np.log2(counts)).sum() + (totals * np.log2(totals)).sum())


def measure(run: str, model: str) -> dict[str, float]:
    path = os.path.join(RUNS, run, f"{model}.onnxcomp")
    with open(path, "rb") as f:
        data = f.read()
    totals = dict.fromkeys(["payload", "H0", "kt0", "kt-prev", "kt-channel", "kt-window", "H|prev", "H|channel"], 0.0)
    for entry in sidecar.read_directory(path):
        raw = data[entry.offset:entry.offset + entry.length]
        record = sidecar.decode_record(raw)
        indices, k, dims = record.indices.astype(np.int64), len(record.codebook), record.dims
        n = len(indices)
        if n < 1024:
            continue
        if record.coding != sidecar.CODING_DENSE:
            print(f"  {model}: {entry.name} is sparse-coded: skipped", file=sys.stderr)
            continue
        payload_bits = struct.unpack_from("<Q", raw, 24 + 8 * len(dims) + 4 * k + k)[0]  # docs/format.md, coding 0
        none = np.zeros(n, np.int64)
        previous = np.concatenate([[k], indices[:-1]])  # symbol k: "no previous index"
        channel = np.repeat(np.arange(dims[0]), n // dims[0]) if len(dims) >= 2 else none
        window = np.arange(n) % (int(np.prod(dims[2:])) if len(dims) >= 3 else 1)
        totals["payload"] += payload_bits
        totals["H0"] += conditional_entropy_bits(none, indices, k)
        totals["kt0"] += kt_bits(none, indices, k)
        totals["kt-prev"] += kt_bits(previous, indices, k)
        totals["kt-channel"] += kt_bits(channel, indices, k)
        totals["kt-window"] += kt_bits(window, indices, k)
        totals["H|prev"] += conditional_entropy_bits(previous, indices, k)
        totals["H|channel"] += conditional_entropy_bits(channel, indices, k)
    return totals


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    run, models = argv[0], argv[1:]
    names = ["H0", "kt0", "kt-prev", "kt-channel", "kt-window", "H|prev", "H|channel"]
    print("| model | index payload kB | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for model in models:
        t = measure(run, model)
        cells = " | ".join(f"{100 * t[name] / t['payload']:.1f} %" for name in names)
        print(f"| {model} | {t['payload'] / 8e3:,.1f} | {cells} |")


if __name__ == "__main__":
    main(sys.argv[1:])
