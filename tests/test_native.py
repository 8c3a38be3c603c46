"""The compiled fast paths (onnxcomp._native) against the straightforward numpy references they replace:
byte-identical results on random, tied and edge-case inputs, and the same compressed files whatever the
number of threads."""

import os
import subprocess
import sys

import numpy as np
import pytest

from onnxcomp.core import codebook, pruning, sidecar
from onnxcomp.core.native import native


def test_the_compiled_module_is_built():
    assert native is not None, "onnxcomp._native is missing: the package was installed without its extension"


def _distributions(rng):
    yield rng.standard_normal(5000).astype(np.float32)
    yield (rng.standard_t(1.5, 20_000) * 0.01).astype(np.float32)  # heavy tails
    yield np.round(rng.standard_normal(3000) * 4).astype(np.float32) / 4  # many exact repeats
    yield np.concatenate([np.zeros(100), -np.zeros(100), rng.standard_normal(300)]).astype(np.float32)  # +-0
    yield np.array([3.0], np.float32)
    yield rng.uniform(-1, 1, 200_001).astype(np.float32)  # not a multiple of the prefix checkpoint stride


@pytest.mark.parametrize("k", [1, 2, 7, 32, 255])
def test_lloyd_matches_the_numpy_reference(rng, k):
    for values in _distributions(rng):
        ordered = np.sort(values)
        start = np.unique(np.quantile(ordered, (np.arange(k) + 0.5) / k).astype(np.float32))
        expected = codebook.refine_reference(ordered, start)
        got = native.lloyd_1d(ordered, None, start, codebook.REFINE_ITERATIONS)
        assert got.tobytes() == expected.tobytes()
        for iterations in (1, 3):  # also before convergence
            assert native.lloyd_1d(ordered, None, start, iterations).tobytes() == _reference_iterations(ordered, start, iterations).tobytes()
        weights = rng.exponential(size=len(ordered)).astype(np.float32)
        weights[rng.random(len(weights)) < 0.2] = 0  # zero weights: such values move no centroid
        expected = codebook.refine_reference(ordered, start, weights)
        assert native.lloyd_1d(ordered, weights, start, codebook.REFINE_ITERATIONS).tobytes() == expected.tobytes()


@pytest.mark.parametrize("k", [7, 32])
def test_lloyd_on_checkpointed_prefix_sums_matches_the_numpy_reference(rng, k):
    """Above 2^20 values lloyd_1d stores every 64th prefix sum and adds the rest on demand (a block found by shifts):
    the same sums, so the same centroids as the reference."""
    ordered = np.sort((rng.standard_normal((1 << 20) + 4097) / 64).astype(np.float32))
    start = np.unique(np.quantile(ordered, (np.arange(k) + 0.5) / k).astype(np.float32))
    assert native.lloyd_1d(ordered, None, start, codebook.REFINE_ITERATIONS).tobytes() == codebook.refine_reference(ordered, start).tobytes()
    weights = rng.exponential(size=len(ordered)).astype(np.float32)
    assert (native.lloyd_1d(ordered, weights, start, codebook.REFINE_ITERATIONS).tobytes()
            == codebook.refine_reference(ordered, start, weights).tobytes())


def _reference_iterations(ordered, start, iterations):
    return codebook.refine_reference(ordered, start, iterations=iterations)


@pytest.mark.parametrize("k", [1, 2, 3, 8, 33, 64, 256, 257, 1000])
def test_assign_matches_the_numpy_reference(rng, k):
    values = (rng.standard_normal(10_007) * rng.choice([1e-3, 1.0, 1e3], 10_007)).astype(np.float32)
    centroids = np.unique(rng.standard_normal(k).astype(np.float32))
    # values exactly at (float) midpoints, and beside them: ties go to the lower centroid
    midpoints = ((centroids[:-1].astype(np.float64) + centroids[1:]) / 2).astype(np.float32)
    values = np.concatenate([values, midpoints, np.nextafter(midpoints, np.inf), np.nextafter(midpoints, -np.inf), centroids])
    expected = codebook.assign_reference(values, centroids)
    got = native.assign(values, centroids)
    assert got.dtype == expected.dtype and np.array_equal(got, expected)
    keep = rng.random(len(values)) < 0.4
    expected = codebook.assign_reference(values, centroids, keep)
    got = native.assign(values, centroids, keep)
    assert got.dtype == expected.dtype and np.array_equal(got, expected)
    assert np.array_equal(expected[keep], codebook.assign_reference(values[keep], centroids).astype(np.int64) + 1)


def test_assign_ties_at_a_midpoint_that_is_not_a_float():
    centroids = np.array([1.0, np.nextafter(np.float32(1.0), np.float32(2.0))], np.float32)  # midpoint between floats
    values = centroids.copy()
    assert native.assign(values, centroids).tolist() == codebook.assign_reference(values, centroids).tolist() == [0, 1]


def _index_streams(rng):
    yield rng.integers(0, 8, 50_000), 8  # dense-coded
    sparse = rng.integers(1, 16, 80_000) * (rng.random(80_000) < 0.05)  # sparse-coded, small gaps
    yield sparse, 16
    long_gaps = np.zeros(300_000, np.int64)
    long_gaps[[5, 70_000, 70_001, 299_999]] = [1, 2, 3, 1]  # gaps beyond 2^16, and a run to the end
    yield long_gaps, 4
    trailing = np.zeros(1000, np.int64)
    trailing[:3] = 1
    yield trailing, 2
    yield np.zeros(64, np.int64), 1
    yield np.array([0]), 1
    yield rng.integers(0, 600, 20_000), 1024  # uint16 indices
    skew = rng.choice(40, 30_000, p=np.r_[0.5, np.full(39, 0.5 / 39)])
    yield skew, 40


def _record_layouts(rng, indices, k):
    """(codebook, bits, dims) for an index stream over K entries: a sorted codebook with and without a leading 0.0
    (the sparse coding needs it), dims 1-D or 2-D."""
    bits = max(1, int(np.ceil(np.log2(max(k, 2)))))
    dims = (len(indices),) if len(indices) % 4 else (4, len(indices) // 4)
    for zero_first in (True, False):
        book = np.sort(rng.standard_normal(k)).astype(np.float32)
        if zero_first:
            book[0] = 0.0
        yield book, bits, dims


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int64])
def test_records_match_the_numpy_coder_byte_for_byte(rng, dtype):
    for indices, k in _index_streams(rng):
        if np.iinfo(dtype).max < k - 1:
            continue
        indices = indices.astype(dtype)
        for book, bits, dims in _record_layouts(rng, indices, k):
            expected = sidecar.encode_record(book, indices, dims, bits, coding_steps=sidecar.NumpyCoding)
            assert sidecar.encode_record(book, indices, dims, bits, coding_steps=sidecar.NativeCoding) == expected
            decoded = sidecar.decode_record(expected)
            assert np.array_equal(decoded.indices, indices.astype(np.int64))
            positions = np.unique(rng.integers(0, len(indices), max(1, len(indices) // 200)))  # with outliers
            values = rng.standard_normal(len(positions)).astype(np.float32)
            expected = sidecar.encode_record(book, indices, dims, bits, positions, values, coding_steps=sidecar.NumpyCoding)
            assert sidecar.encode_record(book, indices, dims, bits, positions, values, coding_steps=sidecar.NativeCoding) == expected


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int64])
def test_dense_coding_in_runs_matches_one_writer(rng, dtype):
    """encode_dense on 2-4 threads (runs coded apart, their bits joined at any bit offset) gives the numpy coder's
    bytes and bit length, and a symbol outside the code table is refused from any run."""
    from onnxcomp.core import huffman
    n = 2 * (1 << 21) + 12_345  # the runs start at bit offsets that are not whole bytes
    for k in (2, 7, 200):
        indices = np.minimum(rng.geometric(0.3, n) - 1, k - 1).astype(dtype)
        lengths = huffman.code_lengths(np.bincount(indices, minlength=k))
        codes = huffman.canonical_codes(lengths)
        expected = huffman.encode(indices, lengths)  # the numpy writer
        for threads in (1, 2, 3, 4):
            assert native.encode_dense(indices, codes, lengths, threads) == expected
    bad = np.zeros(n, np.uint8)
    bad[-1] = 9
    with pytest.raises(ValueError, match="outside"):
        native.encode_dense(bad, huffman.canonical_codes(np.array([1, 1], np.uint8)), np.array([1, 1], np.uint8), 3)


def test_records_reject_indices_outside_the_codebook():
    with pytest.raises(ValueError, match="outside"):
        sidecar.encode_record(np.zeros(4, np.float32), np.array([0, 4], np.uint8), (2,), 2, coding_steps=sidecar.NativeCoding)
    with pytest.raises(ValueError):
        native.statistics(np.array([0, 9], np.uint8), 4, 0)


@pytest.mark.parametrize("sparsity", [0.0, 0.01, 0.5, 0.97])
def test_keep_mask_matches_the_stable_argsort(rng, sparsity):
    scores = np.abs(np.round(rng.standard_normal((300, 77)) * 3)).astype(np.float32)  # many ties at the threshold
    assert np.array_equal(pruning.keep_mask(scores, sparsity), pruning.keep_mask_reference(scores, sparsity))
    scores = rng.random(10_001)
    assert np.array_equal(pruning.keep_mask(scores, sparsity), pruning.keep_mask_reference(scores, sparsity))


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.999, 1.0])
def test_magnitude_mask_matches_the_stable_argsort(rng, sparsity):
    w = (np.round(rng.standard_normal((257, 33)) * 8) / 8).astype(np.float32)  # ties, and +-0
    w[0, :5] = [0.0, -0.0, 1e-40, -1e-40, 3e38]  # zeros, subnormals, huge
    expected = pruning.keep_mask_reference(np.abs(w), sparsity)
    assert np.array_equal(pruning.magnitude_keep_mask(w, sparsity), expected)
    dense = rng.standard_normal(100_003).astype(np.float32)
    assert np.array_equal(pruning.magnitude_keep_mask(dense, sparsity), pruning.keep_mask_reference(np.abs(dense), sparsity))


def test_fitting_never_modifies_the_weight(rng):
    w = rng.standard_normal((64, 50)).astype(np.float32)
    before = w.copy()
    for keep in (None, rng.random(w.shape) < 0.5):
        codebook.quantize(w, keep, 4)
        codebook.fit_codebook(w, 16)
        codebook.fit_codebook(w.ravel(), 16, init="linear")
    assert np.array_equal(w, before)


def test_quantize_works_without_the_compiled_module(rng, monkeypatch):
    w = (rng.standard_t(3, 50_000) * 0.1).astype(np.float32)
    keep = pruning.keep_mask(np.abs(w), 0.5)
    fast = codebook.quantize(w, keep, 4)
    monkeypatch.setattr(codebook, "_native", None)
    slow = codebook.quantize(w, keep, 4)
    assert fast[0].tobytes() == slow[0].tobytes() and fast[1].dtype == slow[1].dtype and np.array_equal(fast[1], slow[1])


def test_compressed_files_do_not_depend_on_the_thread_count(tmp_path):
    script = (
        "import sys, numpy as np, onnx, onnxcomp\n"
        "from onnx import helper, numpy_helper, TensorProto\n"
        "rng = np.random.default_rng(0)\n"
        "inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), f'w{i}') for i, s in enumerate([(64, 128), (128, 96), (96, 32), (32, 8)])]\n"
        "nodes = [helper.make_node('MatMul', ['x' if i == 0 else f'h{i}', f'w{i}'], [f'h{i + 1}']) for i in range(4)]\n"
        "g = helper.make_graph(nodes, 'g', [helper.make_tensor_value_info('x', TensorProto.FLOAT, ['n', 64])],\n"
        "                      [helper.make_tensor_value_info('h4', TensorProto.FLOAT, ['n', 8])], inits)\n"
        "m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)]); m.ir_version = 8\n"
        "onnx.save(m, sys.argv[1] + '/in.onnx')\n"
        "onnxcomp.compress(sys.argv[1] + '/in.onnx', sys.argv[1] + '/out.onnx', min_elements=16)\n"
    )
    outputs = []
    for threads in ("1", "2", "3"):
        folder = tmp_path / threads
        folder.mkdir()
        subprocess.run([sys.executable, "-c", script, str(folder)], check=True, env={**os.environ, "ONNXCOMP_THREADS": threads})
        outputs.append(((folder / "out.onnx").read_bytes(), (folder / "out.onnxcomp").read_bytes()))
    assert outputs[0] == outputs[1] == outputs[2]


@pytest.mark.parametrize("count", [0, 1, 7, 100, 999, 1000, 5000])
def test_largest_first_matches_the_stable_argsort(rng, count):
    from onnxcomp.core import outliers
    flat = (np.round(rng.standard_normal(3000) * 3) / 3).astype(np.float32)  # many ties in magnitude, +-
    for candidates in (np.arange(len(flat)), np.flatnonzero(rng.random(len(flat)) < 0.5)):
        expected = candidates[np.argsort(-np.abs(flat[candidates]), kind="stable")][:count]
        assert np.array_equal(outliers.largest_first(flat, candidates, count), expected)


def test_channel_damage_is_the_direct_formula(rng):
    from onnxcomp.core import outliers
    reference = rng.standard_normal((40, 30)).astype(np.float32)
    reference[3] *= 1e-3  # a dead channel
    importance = rng.exponential(size=30)
    for weights in (None, importance):
        for _ in range(3):
            decoded = reference + rng.standard_normal(reference.shape).astype(np.float32) * 0.01
            error = (decoded.astype(np.float64) - reference) ** 2
            energy = reference.astype(np.float64) ** 2
            if weights is not None:
                error, energy = error * weights[None, :], energy * weights[None, :]
            norms = energy.sum(axis=1)
            live = (norms >= outliers.LIVE_CHANNEL ** 2 * np.median(norms)) & (norms > 0)
            expected = float(np.sqrt((error.sum(axis=1)[live] / norms[live]).max()))
            assert outliers.channel_damage(reference, decoded, weights) == pytest.approx(expected, rel=1e-12)


def test_sort_values_orders_negative_zeros_first(rng):
    values = np.concatenate([rng.standard_normal(500), np.zeros(50), -np.zeros(70)]).astype(np.float32)
    rng.shuffle(values)
    ordered = codebook.sort_values(values)
    assert np.array_equal(ordered, np.sort(values))
    zeros = ordered[ordered == 0]
    assert np.signbit(zeros[:70]).all() and not np.signbit(zeros[70:]).any()
    assert np.array_equal(np.sort(ordered.view(np.uint32)), np.sort(values.view(np.uint32)))  # the same bit patterns


@pytest.mark.parametrize("count", [0, 1, 7, 150, 2999, 5000])
def test_largest_magnitudes_match_the_stable_argsort(rng, count):
    from onnxcomp.core import outliers
    flat = (np.round(rng.standard_normal(3000) * 3) / 3).astype(np.float32)  # many ties in magnitude, +-
    flat[:40] = -0.0
    for keep in (None, rng.random(len(flat)) < 0.5):
        candidates = np.arange(len(flat)) if keep is None else np.flatnonzero(keep)
        expected = outliers.largest_first(flat, candidates, count)
        got = native.largest_magnitudes(flat, keep, count)
        assert got.dtype == np.int64 and np.array_equal(got, expected)


@pytest.mark.parametrize("count", [1, 256, 5000, 40_000])
def test_largest_magnitudes_by_one_histogram_match_the_two_level_select(rng, count):
    """The one-histogram path (the count-th largest key's 1/16-octave bin, then the values from that bin up sorted)
    and the two-level radix select give the stable argsort's positions: forced each way with ``candidate_limit``
    (0: the select; the default; no limit), on Gaussian values, values with many ties across bins and a constant
    tensor (every value in one bin: the default limit falls back), with and without a mask, on 1-3 threads."""
    from onnxcomp.core import outliers
    n = 3 * (1 << 18) + 11
    cases = [(rng.standard_normal(n) / 64).astype(np.float32),
             (np.round(rng.standard_normal(n) * 2) / 2).astype(np.float32),
             np.full(n, -0.25, np.float32)]
    cases[0][::1001] = -0.0
    for flat in cases:
        for keep in (None, rng.random(n) < 0.6):
            candidates = np.arange(n) if keep is None else np.flatnonzero(keep)
            expected = outliers.largest_first(flat, candidates, count)
            for limit in (0, -1, n):
                for threads in (1, 3):
                    got = native.largest_magnitudes(flat, keep, count, threads, limit)
                    assert got.dtype == np.int64 and np.array_equal(got, expected)


@pytest.mark.parametrize("count", [1, 5000, 300_000])
def test_largest_magnitudes_on_threads_match_one_thread(rng, count):
    """Split into runs on 2-4 threads, the counts and the ties at the threshold (taken run by run, in position
    order) give the stable argsort's positions: few magnitude levels, so the ties span every run."""
    from onnxcomp.core import outliers
    flat = (np.round(rng.standard_normal(3 * (1 << 18) + 7) * 2) / 2).astype(np.float32)
    flat[::97] = -0.0
    for keep in (None, rng.random(len(flat)) < 0.7):
        candidates = np.arange(len(flat)) if keep is None else np.flatnonzero(keep)
        expected = outliers.largest_first(flat, candidates, count)
        for threads in (1, 2, 3, 4):
            assert np.array_equal(native.largest_magnitudes(flat, keep, count, threads), expected)


@pytest.mark.parametrize("transposed", [False, True])
def test_channel_errors_match_the_sequential_sums(rng, transposed):
    from onnxcomp.core import outliers
    channels, inputs = 37, 53
    reference = rng.standard_normal(channels * inputs).astype(np.float32)
    book = np.sort(rng.standard_normal(200)).astype(np.float32)
    positions = np.unique(rng.integers(0, len(reference), 60))
    stored = rng.standard_normal(len(positions)).astype(np.float32)
    for dtype, k in ((np.uint8, 200), (np.uint16, 200)):
        indices = rng.integers(0, k, len(reference)).astype(dtype)
        for importance in (None, rng.exponential(size=inputs)):
            for idx, pos, val in ((indices, positions, stored), (None, positions[:0], stored[:0]), (indices, positions[:0], stored[:0])):
                decoded = None
                if idx is not None:
                    decoded = book[idx]
                    decoded[pos] = val
                as_rows = (lambda a: a.reshape(inputs, channels).T) if transposed else (lambda a: a.reshape(channels, inputs))
                expected = outliers.channel_errors_reference(as_rows(reference), None if decoded is None else as_rows(decoded), importance)
                got = native.channel_errors(reference, idx, book, pos, val, channels, inputs, transposed, importance)
                assert got.tobytes() == expected.tobytes()
    with pytest.raises(ValueError):
        native.channel_errors(reference, np.full(len(reference), 250, np.uint8), book, positions[:0], stored[:0],
                              channels, inputs, transposed, None)


def _shared_equal(a, b):
    for field in ("codebook", "indices", "positions", "values"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), field
    for field in ("fraction", "damage", "estimated_bytes", "score"):
        assert getattr(a, field) == getattr(b, field), field


def _weights(rng):
    yield (rng.standard_t(3, (96, 80)) * 0.05).astype(np.float32)
    yield (rng.standard_normal((24, 4, 3, 3)) * 0.1).astype(np.float32)
    ties = (np.round(rng.standard_normal((60, 50)) * 8) / 8).astype(np.float32)  # tied magnitudes, +-0
    ties[rng.random(ties.shape) < 0.05] = -0.0
    yield ties
    yield np.zeros((16, 16), np.float32)
    yield np.array([[1.0, -2.0, 3.0, 1.0]] * 3, np.float32)  # fewer distinct values than entries


@pytest.mark.parametrize("option", ["auto", 0.0, 0.01, 0.5])
def test_outlier_search_matches_its_reference(rng, option):
    from onnxcomp.core import outliers
    transposed = lambda a: np.moveaxis(a, a.ndim - 1, 0).reshape(a.shape[-1], -1)  # a MatMul B: columns are channels
    copied = lambda a: np.ascontiguousarray(a.reshape(a.shape[0], -1)[::-1])  # a layout the compiled sum does not walk
    for w in _weights(rng):
        for keep in (None, rng.random(w.shape) < 0.6):
            for bits, init, rows, weighted in ((2, "quantile", None, True), (4, "quantile", transposed, True),
                                               (5, "linear", copied, False), (8, "quantile", transposed, False)):
                width = rows(w).shape[1] if rows else int(np.prod(w.shape[1:]))
                kwargs = dict(option=option, init=init, rows=rows, importance=rng.exponential(size=width) if weighted else None)
                _shared_equal(outliers.share(w, keep, bits, **kwargs), outliers.share_reference(w, keep, bits, **kwargs))




def _assert_same_record(fast, reference):
    assert fast.dims == reference.dims and fast.bits == reference.bits and fast.coding == reference.coding
    assert fast.codebook.dtype == np.float32 and np.array_equal(fast.codebook.view(np.uint32), reference.codebook.view(np.uint32))
    assert np.array_equal(fast.indices.astype(np.int64), reference.indices)
    assert np.array_equal(fast.outlier_positions, reference.outlier_positions)
    assert np.array_equal(fast.outlier_values.view(np.uint32), reference.outlier_values.view(np.uint32))
    assert fast.outlier_bytes == reference.outlier_bytes
    assert np.array_equal(fast.to_dense().view(np.uint32), reference.to_dense().view(np.uint32))


def test_compiled_record_decoder_matches_the_numpy_reference(rng):
    """sidecar.decode_record_fast (the custom-op library's decoder, compiled into _native) against the numpy
    reference decoder: dense and sparse codings, 1-16 bits, with and without outliers (fp16 and fp32 values)."""
    for indices, k in _index_streams(rng):
        for book, bits, dims in _record_layouts(rng, indices, k):
            record = sidecar.encode_record(book, indices, dims, bits)
            _assert_same_record(sidecar.decode_record_fast(record), sidecar.decode_record(record))
            positions = np.unique(rng.integers(0, len(indices), max(1, len(indices) // 200)))
            for values in (rng.standard_normal(len(positions)).astype(np.float32),
                           rng.standard_normal(len(positions)).astype(np.float16).astype(np.float32)):
                record = sidecar.encode_record(book, indices, dims, bits, positions, values)
                _assert_same_record(sidecar.decode_record_fast(record), sidecar.decode_record(record))


def test_compiled_record_decoder_rejects_corrupt_bytes(rng):
    indices = rng.integers(0, 16, 5_000)
    record = bytearray(sidecar.encode_record(np.linspace(-1, 1, 16).astype(np.float32), indices, (5_000,), 4))
    for cut in (0, 10, len(record) // 2, len(record) - 1):
        with pytest.raises(sidecar.CorruptSidecarError):
            sidecar.decode_record_fast(bytes(record[:cut]))
    record[len(record) // 2] ^= 0x5A  # checksum no longer matches
    with pytest.raises(sidecar.CorruptSidecarError):
        sidecar.decode_record_fast(bytes(record))


def _gap_statistics_reference(symbols: np.ndarray, size: int, gap_limit: int):
    """numpy: the counts, and the gaps (zeros skipped) before each non-zero symbol split at gap_limit."""
    nonzero = np.flatnonzero(symbols)
    gaps = np.diff(np.concatenate([[-1], nonzero])) - 1
    histogram = np.bincount(gaps[gaps < gap_limit], minlength=gap_limit)[:gap_limit]
    return np.bincount(symbols.astype(np.int64), minlength=size), histogram, gaps[gaps >= gap_limit]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_gap_statistics_from_zero_runs_match_the_symbol_loop(rng, dtype):
    """uint8/uint16 gap statistics (counted, then the zero runs scanned) equal the per-symbol loop (the int64
    path) and numpy: no zeros, sparse zeros (outliers), half zeros, leading/trailing runs, runs at and beyond the
    gap limit, all zeros, empty."""
    size, limit = 40, 16
    streams = [rng.integers(1, size, 10_000), rng.integers(0, size, 10_000) * (rng.random(10_000) < 0.5),
               np.where(rng.random(10_000) < 0.003, 0, rng.integers(1, size, 10_000)),
               np.concatenate([np.zeros(20), rng.integers(0, 3, 500), np.zeros(16), [5], np.zeros(15), [7], np.zeros(40)]),
               np.zeros(100), np.zeros(0), np.array([0, 0, 3]), np.array([3, 0])]
    for stream in streams:
        symbols = np.asarray(stream).astype(dtype)
        fast = native.statistics(symbols, size, limit)
        loop = native.statistics(symbols.astype(np.int64), size, limit)
        reference = _gap_statistics_reference(symbols, size, limit)
        for a, b, c in zip(fast, loop, reference):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)


def test_digest_tells_arrays_apart_by_their_bytes(rng):
    """The in-process cache keys (core.native.digest): equal bytes give equal digests whatever the array object; one
    changed bit, a shorter array, another length of zeros, or the same bytes one byte later give another; and the
    zlib fallback keys the same way."""
    from onnxcomp.core import native as native_module
    values = rng.standard_normal(100_003).astype(np.float32)
    assert native.digest(values) == native.digest(values.copy()) == native_module.digest(values.copy())
    changed = values.copy()
    changed.view(np.uint32)[77_777] ^= 1
    assert native.digest(changed) != native.digest(values)
    assert native.digest(values[:-1]) != native.digest(values)
    assert len({native.digest(np.zeros(n, np.uint8)) for n in range(70)}) == 70
    raw = values.view(np.uint8)
    assert native.digest(raw[1:-3]) != native.digest(raw[:-4])
    assert native_module.digest(values[::2]) == native.digest(np.ascontiguousarray(values[::2]))
    with pytest.raises(ValueError):
        native.digest(values[::2])
