"""Write the seed corpus for fuzz_decode: real weight records, one file each, made by the Python encoder.

Usage: python csrc/fuzz/make_corpus.py OUT_DIR

Seeds cover both codings, every rank from 0 to 4, zero-size tensors, a lone symbol, 1- to 16-bit indices,
dense records decoded through the pair table, gap escapes, outlier sections (binary16 and binary32 values, Rice
parameters from 0 up, every element an outlier), channel scales, integer records (uint8, int8), and the records of
the bundled LeNet-5 compressed as the CLI does. Deterministic (seeded).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from onnxcomp.core import sidecar  # noqa: E402


def synthetic(rng: np.random.Generator) -> dict[str, bytes]:
    seeds = {}

    def add(name, codebook, indices, dims, bits, positions=None, values=None, scales=None, axis=0):
        seeds[name] = sidecar.encode_record(np.asarray(codebook, np.float32), np.asarray(indices), tuple(dims), bits,
                                            positions, None if values is None else np.asarray(values, np.float32),
                                            scales=scales, scale_axis=axis)

    add("scalar", [1.5], [0], (), 1)
    add("zero_size", [0.0], [], (0, 4), 1)
    add("lone_symbol", [0.25, -1.0], np.zeros(40, np.int64), (5, 8), 1)
    for bits in (1, 2, 3, 4, 5, 8, 9, 12, 16):
        k = min(1 << bits, 300)
        dims = (7, 11) if bits < 12 else (30, 40)
        codebook = rng.standard_normal(k).astype(np.float32)
        add(f"dense_{bits}bit", codebook, rng.integers(0, k, int(np.prod(dims))), dims, bits)
        codebook[0] = 0.0
        indices = rng.integers(1, k, int(np.prod(dims))) if k > 1 else np.zeros(int(np.prod(dims)), np.int64)
        indices[rng.random(indices.shape) < 0.85] = 0
        add(f"sparse_{bits}bit", codebook, indices, dims, bits)
    # Codebook sizes between two powers of two (the calibrated search's in-between sizes), dense and sparse; 192 entries
    # of one-byte indices in 64 x 80 elements reach the pair table too.
    for bits, k, dims in ((2, 3, (7, 11)), (3, 6, (7, 11)), (4, 12, (9, 13)), (6, 48, (9, 13)), (8, 192, (64, 80))):
        codebook = rng.standard_normal(k).astype(np.float32)
        add(f"dense_{k}_of_{bits}bit", codebook, rng.integers(0, k, int(np.prod(dims))), dims, bits)
        codebook[0] = 0.0
        indices = rng.integers(1, k, int(np.prod(dims)))
        indices[rng.random(indices.shape) < 0.7] = 0
        add(f"sparse_{k}_of_{bits}bit", codebook, indices, dims, bits)
    # Dense records of at least 4,096 one-byte indices decode through the pair table (up to three codes per lookup):
    # skewed indices, so short codes pair and a few long ones take the single-code path.
    for bits in (4, 8):
        k = 1 << bits
        skewed = np.minimum(rng.geometric(0.35, 64 * 80) - 1, k - 1)
        add(f"dense_pairs_{bits}bit", rng.standard_normal(k), skewed, (64, 80), bits)
    escapes = np.zeros(5000, np.int64)
    escapes[[3, 1200, 4999]] = [1, 2, 3]
    add("sparse_escapes", [0, 1, 2, 3], escapes, (5000,), 2)
    add("rank4", rng.standard_normal(8), rng.integers(0, 8, 2 * 3 * 2 * 2), (2, 3, 2, 2), 3)
    add("all_pruned", [0.0, 1.0], np.zeros(64, np.int64), (8, 8), 1)
    # Outlier sections (record version 2).
    add("outliers_one", [1.5], [0], (), 1, [0], [7.0])
    add("outliers_every_element", [0.25, -1.0], rng.integers(0, 2, 12), (3, 4), 1, np.arange(12), rng.standard_normal(12))
    add("outliers_float32", rng.standard_normal(16), rng.integers(0, 16, 900), (30, 30), 4,
        np.sort(rng.choice(900, 9, replace=False)), [1e-30, 1e6, -3.0, 2.5, 7.0, 8.0, 9.0, 1e-7, 70000.0])
    sparse = rng.integers(1, 8, 4000)
    sparse[rng.random(4000) < 0.9] = 0
    add("outliers_sparse", np.concatenate([[0.0], rng.standard_normal(7)]), sparse, (40, 100), 3,
        np.sort(rng.choice(4000, 20, replace=False)), rng.standard_normal(20) * 30)
    add("outliers_long_gaps", [0.0, 1.0], np.zeros(100_000, np.int64), (100_000,), 1, [5, 70_000, 99_999], [1.0, 2.0, 3.0])
    # Channel-scale sections (record versions 3, 4): float16 and float32 scales, axes 0 and 1, sparse coding.
    add("scales_f16_axis0", rng.standard_normal(8), rng.integers(0, 8, 6 * 3 * 3), (6, 1, 3, 3), 3,
        scales=np.float16(2.0) ** np.arange(-3, 3).astype(np.float32))
    add("scales_f32_axis1", rng.standard_normal(16), rng.integers(0, 16, 20 * 7), (20, 7), 4,
        scales=rng.uniform(0.01, 3.0, 7).astype(np.float32), axis=1)
    add("scales_sparse_outliers", np.concatenate([[0.0], rng.standard_normal(7)]), sparse, (40, 100), 3,
        np.sort(rng.choice(4000, 20, replace=False)), rng.standard_normal(20) * 30,
        scales=rng.uniform(0.5, 2.0, 40).astype(np.float32))
    # Integer records (value types 2 uint8 and 3 int8): full range, a narrow bell, mostly zeros (sparse coding).
    from onnxcomp.passes.integer_weights import integer_record
    for dtype, value_type in ((np.uint8, sidecar.UINT8), (np.int8, sidecar.INT8)):
        info = np.iinfo(dtype)
        bell = np.clip(np.rint(rng.standard_normal((16, 24)) * 5), info.min, info.max).astype(dtype)
        sparse = np.where(rng.random((30, 30)) < 0.9, 0, rng.integers(info.min, info.max + 1, (30, 30))).astype(dtype)
        for label, values in (("full", rng.integers(info.min, info.max + 1, (9, 3, 3)).astype(dtype)), ("bell", bell),
                              ("sparse", sparse)):
            seeds[f"integer_{np.dtype(dtype).name}_{label}"] = integer_record(values, value_type)[0]
    return seeds


def from_bundled_model() -> dict[str, bytes]:
    """Records of the bundled LeNet-5 as `onnxcomp compress` writes them (every weight, 1 % outliers, defaults
    otherwise)."""
    import onnxcomp
    seeds = {}
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "lenet5.onnx")
        report = onnxcomp.compress(ROOT / "models" / "lenet5_fashion.onnx", out, min_elements=16, outliers=0.01)
        data = Path(report.sidecar_path).read_bytes()
        for entry in sidecar.read_directory(report.sidecar_path):
            seeds["lenet5_" + entry.name.replace("/", "_")] = data[entry.offset:entry.offset + entry.length]
    return seeds


def main(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    seeds = {**synthetic(np.random.default_rng(2024)), **from_bundled_model()}
    for name, record in seeds.items():
        sidecar.decode_record(record)  # every seed is a valid record
        Path(out_dir, name + ".rec").write_bytes(record)
    sizes = [len(r) for r in seeds.values()]
    print(f"{len(seeds)} seed records in {out_dir} ({min(sizes)} to {max(sizes)} bytes)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
