"""The fast paths of default compression (issue #16) against the straightforward code they replace: same values,
same bytes. Each fast path is compared with its reference on inputs built to hit its edge cases (ties, signed
zeros, pruned ranges, models read once or re-read)."""

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from conftest import float_input, make_model
from onnxcomp.core import allocation
from onnxcomp.core.native import native
from onnxcomp.passes import model_io
from onnxcomp.pipeline import fidelity


def tensors(rng):
    """Tensors above allocation.SAMPLE values: Gaussian, heavy-tailed, and few levels with signed zeros (ties)."""
    n = allocation.SAMPLE + 40_000
    gaussian = rng.standard_normal(n).astype(np.float32)
    heavy = (rng.standard_t(2, n) * 0.01).astype(np.float32)
    levels = rng.choice(np.array([-0.5, -0.0, 0.0, 0.25, 1.0], np.float32), n)
    return {"gaussian": gaussian, "heavy": heavy, "levels": levels}


def test_sample_matches_the_reference(rng):
    """Radix-selected extremes and a sorted union give the reference's values, ties at the EXTREMES-th |w| included."""
    for name, w in tensors(rng).items():
        for seed in (0, 3):
            fast, reference = allocation._sample(w, seed), allocation._sample_reference(w, seed)
            assert fast.dtype == np.float64
            np.testing.assert_array_equal(fast.view(np.int64), reference.view(np.int64))
    small = rng.standard_normal(1000).astype(np.float32)
    np.testing.assert_array_equal(allocation._sample(small, 0), small.astype(np.float64))


def test_sample_takes_the_earliest_tied_extremes(rng):
    """With the EXTREMES-th largest |w| tied, the earliest positions of that magnitude are the ones sampled."""
    w = np.zeros(allocation.SAMPLE + 1000, np.float32)
    w[::7] = 2.0  # far more than EXTREMES values of the largest magnitude, of both signs
    w[3::14] = -2.0
    chosen = np.random.default_rng(0).choice(w.size, allocation.SAMPLE - allocation.EXTREMES, replace=False)
    largest = np.flatnonzero(np.abs(w) == 2.0)[:allocation.EXTREMES]
    expected = w[np.union1d(chosen, largest)].astype(np.float64)
    np.testing.assert_array_equal(allocation._sample(w, 0), expected)


@pytest.mark.parametrize("kind", ["gaussian", "heavy", "levels"])
def test_fit_values_match_the_reference(rng, kind):
    """The codebook's fit values read off the sorted sample equal the masked, sorted ones, signed zeros included."""
    w = tensors(rng)[kind]
    allocator = allocation.Allocator(w, sparsities=(0.0, 0.3, 0.5))
    v = allocator.v
    for sparsity in (0.0, 0.3, 0.5):
        for fraction in allocation.OUTLIERS:
            lo, hi, a, b = allocator._blocks(sparsity, fraction)
            kept = np.concatenate([v[a:lo], v[hi:b]])
            if not len(kept):
                continue
            pruned = (v[lo], v[hi - 1]) if hi > lo else None
            fast = allocator.fit_values(kept[0], kept[-1], pruned)
            reference = allocator.fit_values_reference(kept[0], kept[-1], pruned)
            assert fast.dtype == np.float32
            np.testing.assert_array_equal(fast.view(np.uint32), reference.view(np.uint32))


@pytest.mark.parametrize("kind", ["gaussian", "heavy", "levels"])
def test_candidates_match_the_reference(rng, kind, monkeypatch):
    """Every candidate (errors and estimated bytes) is the same with the reference fit values."""
    w = tensors(rng)[kind]
    grid = dict(sparsities=(0.0, 0.3), outliers=allocation.OUTLIERS, bits=(2, 4, 6))
    fast = allocation.candidates(w, **grid)
    monkeypatch.setattr(allocation.Allocator, "fit_values", allocation.Allocator.fit_values_reference)
    monkeypatch.setattr(allocation, "_sample", allocation._sample_reference)
    assert allocation.candidates(w, **grid) == fast


def mlp(rng, folder, sigmoid=False, constant=False):
    """A two-layer MLP saved in ``folder``; ``sigmoid`` ends it with a Sigmoid (fidelity taps its logits),
    ``constant`` holds the second weight in a Constant node."""
    w1 = (rng.standard_normal((64, 96)) / 8).astype(np.float32)
    w2 = (rng.standard_normal((96, 10)) / 10).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"])]
    inits = [onnx.numpy_helper.from_array(w1, "w1")]
    if constant:
        nodes.append(helper.make_node("Constant", [], ["w2"], value=onnx.numpy_helper.from_array(w2, "w2")))
    else:
        inits.append(onnx.numpy_helper.from_array(w2, "w2"))
    nodes.append(helper.make_node("MatMul", ["r", "w2"], ["z" if sigmoid else "y"]))
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", ["z"], ["y"]))
    model = make_model(nodes, [float_input("x", ["n", 64])], [float_input("y", ["n", 10])], inits)
    path = os.path.join(folder, "in.onnx")
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("sigmoid,constant", [(False, False), (True, False), (False, True)])
def test_measurements_from_the_parsed_model_match_a_fresh_read(tmp_path, rng, sigmoid, constant):
    """compare_runs, attribute and model_bytes given the already parsed input agree with their own reads, and leave
    the given model unchanged."""
    import onnxcomp
    path = mlp(rng, str(tmp_path), sigmoid, constant)
    out = str(tmp_path / "out.onnx")
    onnxcomp.compress(path, out, bits=4, min_elements=1)
    loaded = model_io.load_model(path, external_data=False)
    before = loaded.SerializeToString()
    feeds, source, _ = fidelity.prepare(path, model=loaded)
    fresh = fidelity.compare_runs(path, out, feeds, source)
    given = fidelity.compare_runs(path, out, feeds, source, loaded)
    assert given.to_dict() == fresh.to_dict() and given.min_cosine < 1.0
    feed = {k: v[:2] for k, v in feeds[0].items()}
    errors = fidelity.attribute(path, out, feed, loaded)
    assert errors == fidelity.attribute(path, out, feed) and set(errors) == {"w1", "w2"} and min(errors.values()) > 0
    assert model_io.model_bytes(path, loaded) == model_io.model_bytes(path)
    assert loaded.SerializeToString() == before


def test_share_with_prepared_values_matches_a_fresh_share(rng):
    """outliers.share reusing a ``prepared`` dict (the sorted kept values, channel norms and largest-magnitude
    positions of an earlier share of the same weight, as ShareWeightsPass's uniform and k-means codebooks do)
    gives the bytes of a share that computes everything itself; in either call order, for a smaller and a larger
    outlier count than the first call's."""
    from onnxcomp.core import outliers
    transposed = lambda a: np.moveaxis(a, a.ndim - 1, 0).reshape(a.shape[-1], -1)
    w = (rng.standard_t(3, (120, 90)) * 0.05).astype(np.float32)
    w[rng.random(w.shape) < 0.03] = -0.0
    importance = rng.exponential(size=120)
    calls = [dict(bits=4, option=0.0, levels=11), dict(bits=5, option=0.02), dict(bits=3, option="auto"),
             dict(bits=6, option=0.001, levels=40)]
    for keep in (None, np.ones(w.shape, bool), rng.random(w.shape) < 0.7):
        for order in (calls, calls[::-1]):
            prepared = {}
            for call in order:
                kwargs = dict(option=call["option"], levels=call.get("levels", 0), rows=transposed, importance=importance)
                reused = outliers.share(w, keep, call["bits"], prepared=prepared, **kwargs)
                fresh = outliers.share(w, keep, call["bits"], **kwargs)
                for field in ("codebook", "indices", "positions", "values"):
                    assert getattr(reused, field).tobytes() == getattr(fresh, field).tobytes(), field
                for field in ("fraction", "damage", "estimated_bytes", "score"):
                    assert getattr(reused, field) == getattr(fresh, field), field
            assert set(prepared) == {"kept", "order", "ordered", "norms"}


# ---- Work on one large weight split across threads (round 7) --------------------------------------------------

def test_partitioned_sort_matches_one_sort(rng, monkeypatch):
    """sort_values on several threads (keys partitioned into runs, each sorted alone) gives numpy's one sort of the
    keys, byte for byte, with signed zeros, ties and a length that does not split evenly."""
    from onnxcomp.core import codebook
    values = rng.standard_normal(100_003).astype(np.float32)
    values[::5] = 0.0
    values[::7] = -0.0
    values[::11] = 0.5
    keys = values.view(np.uint32).copy()
    codebook._flip_keys(keys, inverse=False)
    reference = np.sort(keys)
    monkeypatch.setattr(codebook, "PARALLEL_SORT", 1 << 12)
    for workers in (1, 2, 3, 8):
        split = keys.copy()
        codebook._sort_keys(split, workers)
        np.testing.assert_array_equal(split, reference)
        monkeypatch.setenv("ONNXCOMP_THREADS", str(workers))
        ordered = codebook.sort_values_reference(values)
        np.testing.assert_array_equal(ordered.view(np.uint32), reference ^ np.where(reference >> 31, np.uint32(1 << 31),
                                                                                         np.uint32(0xFFFFFFFF)))


@pytest.mark.skipif(native is None, reason="the compiled module onnxcomp._native is not built")
@pytest.mark.parametrize("size", [0, 1, 2, 1000, (1 << 20) - 1, 3 * (1 << 20) + 5])
def test_radix_sort_matches_the_reference(rng, size):
    """sort_values' compiled radix sort gives the reference's bytes on 1-4 threads, the input sorted in place with
    overwrite_input: signed zeros, infinities, NaN bit patterns, ties, a digit every key shares (all of the
    values within one 2^16-key run), and lengths that do not split evenly across threads."""
    from onnxcomp.core import codebook
    values = rng.standard_normal(size).astype(np.float32)
    values[::5] = 0.0
    values[::7] = -0.0
    values[::11] = 0.5
    values[::13] = np.float32(np.inf) * (-1) ** np.arange(len(values[::13]))
    values.view(np.uint32)[::17] = rng.integers(0x7F800001, 0x80000000, len(values[::17]), dtype=np.uint32)  # NaNs
    narrow = (np.float32(1) + np.arange(size, dtype=np.float32)[::-1] % 60000 * np.float32(2 ** -23)).astype(np.float32)
    for case in (values, narrow):
        expected = codebook.sort_values_reference(case).view(np.uint32)
        for workers in (1, 2, 3, 4):
            native.sort_floats(sorted_ := case.copy(), workers)
            np.testing.assert_array_equal(sorted_.view(np.uint32), expected)
        np.testing.assert_array_equal(codebook.sort_values(case).view(np.uint32), expected)
        in_place = case.copy()
        codebook.sort_values(in_place, overwrite_input=True)
        np.testing.assert_array_equal(in_place.view(np.uint32), expected)
    with pytest.raises(ValueError, match="in place"):
        native.sort_floats(np.zeros(4, np.float64), 1)
    with pytest.raises(ValueError, match="in place"):
        native.sort_floats(np.zeros(8, np.float32)[::2], 1)


def test_threaded_assign_and_channel_errors_match_one_thread(rng):
    """_native.assign and _native.channel_errors on 2-4 threads give the one-thread result bit for bit (assignment
    split by position, channel sums by channel; outliers on both sides of every split, both layouts), and the
    one-thread result is the numpy reference's."""
    from onnxcomp.core import codebook, outliers
    from onnxcomp.core.native import native
    if native is None:
        pytest.skip("onnxcomp._native is not built")
    channels, inputs = 769, 1001  # above two parts of 2^18 values, parts that do not divide evenly
    n = channels * inputs
    values = (rng.standard_t(3, n) * 0.05).astype(np.float32)
    keep = rng.random(n) > 0.3
    centroids = np.unique(np.quantile(values, np.linspace(0.01, 0.99, 15)).astype(np.float32))
    positions = np.unique(rng.integers(0, n, 3000))
    stored = values[positions] * np.float32(1.01)
    importance = rng.random(inputs) + 0.5
    for mask in (None, keep):
        one = native.assign(values, centroids, mask, threads=1)
        np.testing.assert_array_equal(one, codebook.assign_reference(values, centroids, mask))
        book = np.concatenate([[0.0], centroids]).astype(np.float32) if mask is not None else centroids
        for threads in (2, 3, 4):
            np.testing.assert_array_equal(native.assign(values, centroids, mask, threads=threads), one)
        for transposed in (False, True):
            for weights in (None, importance):
                single = native.channel_errors(values, one, book, positions, stored, channels, inputs, transposed, weights, 1)
                rows = values.reshape(inputs, channels).T if transposed else values.reshape(channels, inputs)
                decoded = book[one]
                decoded[positions] = stored
                decoded_rows = decoded.reshape(inputs, channels).T if transposed else decoded.reshape(channels, inputs)
                reference = outliers.channel_errors_reference(rows, decoded_rows, weights)
                np.testing.assert_array_equal(single.view(np.int64), reference.view(np.int64))
                for threads in (2, 3, 4):
                    split = native.channel_errors(values, one, book, positions, stored, channels, inputs, transposed,
                                                  weights, threads)
                    np.testing.assert_array_equal(split.view(np.int64), single.view(np.int64))
    bad = one.copy()
    bad[n - 5] = len(book)
    with pytest.raises(ValueError, match="outside the codebook"):
        native.channel_errors(values, bad, book, positions, stored, channels, inputs, True, None, 3)


def _encode_record_counting_twice(codebook, indices, dims, bits, positions, values, coding_steps):
    """encode_record as it was before round 7 (the straightforward version): with outliers, the indices are
    counted once to find the dense fill index, then each coding's copy of them is counted again."""
    import struct
    from onnxcomp.core import sidecar
    from onnxcomp.core import outliers as outlier_math
    codebook = np.ascontiguousarray(codebook, dtype="<f4")
    indices = np.asarray(indices).ravel()
    k, n = len(codebook), int(np.prod(dims))
    positions = np.asarray(positions, np.int64)
    sparse_coding = bool(codebook[0].view(np.uint32) == 0 and n)
    section = outlier_math.encode_section(positions, values, n)
    others = coding_steps(indices).counts(k, False) - np.bincount(indices[positions], minlength=k)
    dense_indices = indices.copy()
    dense_indices[positions] = int(np.argmax(others)) if len(positions) < n else 0
    sparse_indices = dense_indices
    if sparse_coding:
        sparse_indices = indices.copy()
        sparse_indices[positions] = 0
    header = sidecar._FIXED.pack(sidecar.RECORD_MAGIC, sidecar.RECORD_VERSION_OUTLIERS, sidecar.FLOAT32, len(dims), bits,
                                 0, 0, k, n) + struct.pack(f"<{len(dims)}Q", *dims) + codebook.tobytes()
    sparse_steps = coding_steps(sparse_indices)
    value_counts = sparse_steps.counts(k, sparse_coding)
    dense_steps = sparse_steps if dense_indices is sparse_indices else coding_steps(dense_indices)
    dense_counts = value_counts if dense_steps is sparse_steps else dense_steps.counts(k, False)
    # What follows the counts (the coding choice and the bytes) is one function, unchanged by round 7.
    return sidecar._assemble_record(header, n, k, sparse_coding, sparse_steps, dense_steps, value_counts, dense_counts,
                                    section)


@pytest.mark.parametrize("pruned", [0.0, 0.4, 0.95])
def test_record_with_outliers_counted_once_matches_counting_twice(rng, pruned):
    """encode_record counts the indices of a record with outliers once (the other coding's counts follow from it):
    the same bytes as counting each coding's indices, for dense and gap coding, both coding steps, outliers on
    pruned and unpruned positions, and every element an outlier."""
    from onnxcomp.core import outliers, sidecar
    n, bits = 20_000, 4
    codebook = np.concatenate([[0.0], np.linspace(-1, 1, 15)]).astype(np.float32)
    if not pruned:
        codebook[0] = 0.125  # no pruned zero: dense coding only
    indices = rng.integers(1, 16, n).astype(np.uint8)
    indices[rng.random(n) < pruned] = 0
    steps = [sidecar.NumpyCoding] + ([sidecar.NativeCoding] if sidecar._native is not None else [])
    for count in (1, 37, 900, n):
        positions = np.sort(rng.choice(n, count, replace=False))
        values = rng.standard_normal(count).astype(np.float32) * 4
        for coding_steps in steps:
            fast = sidecar.encode_record(codebook, indices, (100, 200), bits, positions, values, coding_steps=coding_steps)
            assert fast == _encode_record_counting_twice(codebook, indices, (100, 200), bits, positions, values, coding_steps)
            record = sidecar.decode_record(fast)
            expected = codebook[indices]
            expected[positions] = outliers.stored_values(values)
            np.testing.assert_array_equal(record.to_dense().ravel(), expected)


@pytest.mark.parametrize("size", [49, 200, 4000])
def test_assign_by_bucket_table_matches_comparing_every_threshold(rng, size):
    """_native.assign's bucket table (large inputs, >= 48 thresholds) gives the indices of the threshold comparisons,
    bit for bit, on values at and next to every threshold, signed zeros, subnormals, the largest floats and
    infinities (NaN too, which both paths send to index 0), with and without a keep mask; on finite values both
    equal the numpy reference."""
    from onnxcomp.core import codebook
    from onnxcomp.core.native import native
    if native is None:
        pytest.skip("onnxcomp._native is not built")
    centroids = np.unique(np.concatenate([(rng.standard_t(2, size) * 0.05), [0.0, -1e-40, 1e-40]]).astype(np.float32))
    thresholds = codebook.thresholds(centroids)
    near = np.concatenate([thresholds, np.nextafter(thresholds, np.float32(np.inf)), np.nextafter(thresholds, np.float32(-np.inf))])
    special = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-39, -1e-39, 3.4e38, -3.4e38], np.float32)
    values = np.concatenate([near, special, (rng.standard_normal(1 << 17) * 0.05).astype(np.float32)])
    rng.shuffle(values)
    keep = rng.random(len(values)) > 0.25
    for mask in (None, keep):
        table = native.assign(values, centroids, mask, threads=1, use_table=True)
        np.testing.assert_array_equal(table, native.assign(values, centroids, mask, threads=1, use_table=False))
        np.testing.assert_array_equal(table, codebook.assign_reference(values, centroids, mask))
        np.testing.assert_array_equal(native.assign(values, centroids, mask, threads=3), table)
    odd = np.concatenate([values, np.array([np.inf, -np.inf, np.nan, -np.nan], np.float32)])
    np.testing.assert_array_equal(native.assign(odd, centroids, None, use_table=True),
                                  native.assign(odd, centroids, None, use_table=False))


@pytest.mark.parametrize("kind", ["gaussian", "heavy", "levels"])
def test_scaled_candidates_match_the_reference(rng, kind):
    """Channel-scaled candidates from the once-sorted sample equal the per-call argsort and sort, for every outlier
    fraction and several grid sizes, with tied magnitudes and signed zeros (levels) and up to every value an outlier."""
    w = tensors(rng)[kind]
    w = w[:len(w) // 64 * 64].reshape(64, -1, 1, 1)  # 64 output channels of different scales
    w = w * np.exp(np.linspace(0, np.log(50), 64)).astype(np.float32).reshape(-1, 1, 1, 1)
    allocator = allocation.Allocator(w, channel_axis=0)
    reference = allocation.Allocator(w, channel_axis=0)
    for fraction in (*allocation.OUTLIERS, 0.3, 0.999, 1.0):
        for levels in (1, 2, 7, 40, 255):
            fast = allocator._measure_scaled(levels, fraction)
            assert fast == reference._measure_scaled_reference(levels, fraction), (fraction, levels)


def test_scaled_sample_matches_np_unique(rng):
    """The scaled sample's positions joined by a sort equal np.union1d/np.unique's (the straightforward union)."""
    w = (rng.standard_normal((512, 96, 3, 3)) * np.exp(rng.uniform(0, 3, 512)).reshape(-1, 1, 1, 1)).astype(np.float32)
    u, s, values = allocation._scaled_sample(w, 0, 5)
    scales = allocation.codebook.channel_scales(w, 0)
    normalised = allocation.codebook.normalise(w, scales, 0).ravel()
    flat = w.ravel()
    chosen = np.random.default_rng(5).choice(flat.size, allocation.SAMPLE - 2 * allocation.EXTREMES, replace=False)
    largest = np.argpartition(np.abs(flat), flat.size - allocation.EXTREMES)[-allocation.EXTREMES:]
    largest_normalised = np.argpartition(np.abs(normalised), flat.size - allocation.EXTREMES)[-allocation.EXTREMES:]
    positions = np.unique(np.concatenate([chosen, largest, largest_normalised]))
    np.testing.assert_array_equal(values.view(np.int64), flat[positions].astype(np.float64).view(np.int64))
    np.testing.assert_array_equal(u.view(np.int64), normalised[positions].astype(np.float64).view(np.int64))
    np.testing.assert_array_equal(s, scales[positions // (96 * 9)].astype(np.float64))


def test_read_values_views_the_protobuf_bytes(rng):
    """An in-memory float32/float16 initializer is read as a read-only view of its bytes: the same values (bit for
    bit) as graphsurgeon's own read (two copies); other types (bfloat16, int64) still read through graphsurgeon."""
    import onnx_graphsurgeon as gs
    from onnxcomp.passes.base import float_values, read_values
    arrays = {"f32": rng.standard_normal((37, 5)).astype(np.float32), "f16": rng.standard_normal(11).astype(np.float16),
              "i64": np.arange(6, dtype=np.int64).reshape(2, 3)}
    bf16 = onnx.helper.make_tensor("bf16", onnx.TensorProto.BFLOAT16, [3], [1.5, -2.0, 0.25])
    tensors = [onnx.numpy_helper.from_array(a, n) for n, a in arrays.items()] + [bf16]
    graph = helper.make_graph([helper.make_node("Identity", [t.name], [t.name + "_out"]) for t in tensors], "g", [],
                              [helper.make_tensor_value_info(t.name + "_out", t.data_type, list(t.dims)) for t in tensors],
                              tensors)
    imported = gs.import_onnx(helper.make_model(graph))
    constants = {name: t for name, t in imported.tensors().items() if isinstance(t, gs.Constant)}
    for name, expected in arrays.items():
        got = read_values(constants[name])
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got.view(np.uint8), expected.view(np.uint8))
        assert got.flags.writeable == (name == "i64")
    np.testing.assert_array_equal(float_values(constants["bf16"]), np.array([1.5, -2.0, 0.25], np.float32))
    assert float_values(constants["f16"]).flags.writeable  # widened: a fresh float32 array


def test_release_free_memory_returns_thread_arenas():
    """glibc's malloc_trim is found on glibc systems, and arrays freed on a worker thread (its own malloc arena,
    below the mmap threshold) stop counting in the resident set once released."""
    import platform
    import threading
    from onnxcomp import parallel
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's")
    assert parallel._malloc_trim() is not None

    def resident() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def churn():  # 64 arrays of 1 MiB (under the mmap threshold): heap memory of this thread's arena
        arrays = [np.ones(1 << 18, np.float32) for _ in range(64)]
        del arrays
    thread = threading.Thread(target=churn)
    thread.start()
    thread.join()
    before = resident()
    parallel.release_free_memory()
    assert resident() <= before


def test_read_values_of_a_short_tensor_still_fails_loudly():
    """raw_data shorter than the dims say: no view; graphsurgeon's read raises as before."""
    import onnx_graphsurgeon as gs
    from onnxcomp.passes.base import read_values
    tensor = onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    tensor.raw_data = tensor.raw_data[:-4]
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 4])], [tensor])
    constant = gs.import_onnx(helper.make_model(graph)).tensors()["w"]
    with pytest.raises(ValueError):
        read_values(constant)


@pytest.mark.parametrize("shape,axis", [((64, 3, 3, 3), 0), ((512, 256, 3, 3), 0), ((300, 7000), 0), ((7, 1, 1, 1), 0),
                                        ((96, 40, 5, 5), 1), ((3, 2_000_001), 0), ((5, 0, 3), 0)])
def test_channel_rms_in_blocks_matches_the_whole_array(rng, shape, axis):
    """Channel RMS over blocks of channels equals the float64 copy of the whole weight, bit for bit (rows longer
    than a block, one row per block, a moved axis, empty channels), with channels of very different scales."""
    from onnxcomp.core import codebook
    w = rng.standard_normal(shape).astype(np.float32)
    if w.size:
        w *= np.exp(rng.uniform(-20, 20, shape[axis])).astype(np.float32).reshape([-1 if i == axis else 1 for i in range(len(shape))])
    fast, reference = codebook._channel_rms(w, axis), codebook._channel_rms_reference(w, axis)
    np.testing.assert_array_equal(fast.view(np.int64), reference.view(np.int64))
    np.testing.assert_array_equal(codebook._channel_rms(w, axis, block=1000).view(np.int64), reference.view(np.int64))


def test_completed_map_yields_every_result_as_it_finishes_and_drains_on_an_error():
    """parallel.completed_map: every item's result once, whatever the finishing order; a failing item stops new
    items from starting, the running ones are still yielded, then its exception is raised."""
    import threading
    import time
    from onnxcomp import parallel
    started = []
    lock = threading.Lock()

    def work(x):
        with lock:
            started.append(x)
        time.sleep(x / 200)
        if x == 3:
            raise ValueError("three")
        return 2 * x

    got = list(parallel.completed_map(work, [40, 1, 1, 2, 1], 2))
    assert sorted(got) == sorted((x, 2 * x) for x in [40, 1, 1, 2, 1])
    assert got[-1] == (40, 80)  # the long one started first and finished last, the short ones beside it
    started.clear()
    yielded = []
    with pytest.raises(ValueError, match="three"):
        for pair in parallel.completed_map(work, [40, 3, 1, 1], 2):
            yielded.append(pair)
    assert yielded == [(40, 80)] and started == [40, 3]  # the running one finished and was yielded; nothing new started
    assert list(parallel.completed_map(work, [2, 1], 1)) == [(2, 4), (1, 2)]  # one worker: in order


def test_a_stopped_consumer_does_not_wait_for_running_items():
    """SIGTERM or Ctrl-C raise in the consumer of completed_map / ordered_map: the pool cancels what has not
    started and returns at once, so the caller's cleanup runs before the running items (minutes of sensitivity
    trials) end; abandoned_work() then tells the CLI not to wait for them at exit."""
    import threading
    from onnxcomp import parallel
    for mapper in (parallel.completed_map, parallel.ordered_map):
        release, started, ended = threading.Event(), [], []

        def work(x):
            started.append(x)
            if x == 0:
                return x
            release.wait(60)
            ended.append(x)
            return x

        with pytest.raises(KeyboardInterrupt):
            for _ in mapper(work, [0, 1, 2, 3, 4], 2):
                raise KeyboardInterrupt
        assert not ended  # returned while item 1 (and maybe 2) still ran: nobody waited for them
        assert parallel.abandoned_work()
        assert 3 not in started and 4 not in started  # never submitted, or cancelled before they started
        release.set()
        for thread in [t for t in threading.enumerate() if t.name.startswith(parallel.THREAD_PREFIX)]:
            thread.join(60)
        assert not parallel.abandoned_work()


def test_calibrated_sharing_on_parallel_threads_writes_what_one_thread_writes(tmp_path, monkeypatch):
    """ShareWeightsPass with calibration refits shares weights on parallel threads (one BLAS thread each): the
    same output bytes as the one-thread path (PARALLEL_REFIT_BYTES 0, the reference), pruned and not."""
    import onnxcomp
    from conftest import budget_mlp
    from onnxcomp.passes import share_weights
    _, data = budget_mlp(tmp_path, np.random.default_rng(7))
    x = {"x": np.load(data)["x"]}
    monkeypatch.setenv("ONNXCOMP_THREADS", "2")
    default = share_weights.PARALLEL_REFIT_BYTES
    assert default >= 48 * 32 * 4  # the parallel path is the one measured first
    for prune in ("none", "activation"):
        written = []
        for limit in (default, 0):
            monkeypatch.setattr(share_weights, "PARALLEL_REFIT_BYTES", limit)
            folder = tmp_path / f"{prune}-{limit}"
            folder.mkdir()
            onnxcomp.compress(tmp_path / "in.onnx", folder / "out.onnx", calib=x, prune=prune, min_elements=16,
                              fidelity=False)
            written.append(((folder / "out.onnx").read_bytes(), (folder / "out.onnxcomp").read_bytes()))
        assert written[0] == written[1]


# ---- Scheduling of compress (round 8: toolspeed5) -------------------------------------------------------------

def test_weight_as_input_without_copying_the_weights_matches_the_copy(tmp_path, rng):
    """autotune._weight_as_input builds the probe without copying the initializers it moves: the same bytes as the
    straightforward whole-model copy, for one name, several (with a bias), a name also listed as an input, none."""
    from onnxcomp.pipeline import autotune
    model = onnx.load(mlp(rng, str(tmp_path), True, False))
    model.doc_string, model.producer_name = "probe", "test"
    model.metadata_props.add(key="k", value="v")
    model.graph.input.append(helper.make_tensor_value_info("b1", onnx.TensorProto.FLOAT, [32]))
    names = [t.name for t in model.graph.initializer]
    before = model.SerializeToString()
    for wanted in ("w1", names, ["w2", "b1"], []):
        fast = autotune._weight_as_input(model, wanted)
        assert fast.SerializeToString() == autotune._weight_as_input_reference(model, wanted).SerializeToString()
    assert model.SerializeToString() == before


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int64])
def test_stored_weight_dense_by_indexing_matches_take(rng, dtype):
    """StoredWeight.dense looks the indices up by indexing (np.take casts uint8 indices ten times slower): the
    values of codebook.take(indices), outliers written over them, in the original orientation."""
    from onnxcomp.pipeline.inspection import StoredWeight
    codebook = rng.standard_normal(200).astype(np.float32)
    indices = rng.integers(0, 200, (30, 50)).astype(dtype)
    positions, values = np.array([3, 70, 1499]), np.array([9.0, -9.0, 4.5], np.float32)
    for transposed in (False, True):
        weight = StoredWeight("w", "record", codebook, indices, 8, 0, transposed, "w", positions, values)
        expected = codebook.take(indices)
        expected.reshape(-1)[positions] = values
        expected = expected.T if transposed else expected
        assert weight.dense().tobytes() == np.ascontiguousarray(expected).tobytes() and weight.dense().shape == expected.shape


@pytest.mark.parametrize("sigmoid", [False, True])
def test_original_outputs_stored_ahead_give_the_fidelity_of_a_fresh_run(tmp_path, rng, sigmoid, monkeypatch):
    """compress runs the original on the fidelity feeds on a thread of its own (fidelity.store_reference) while
    its first round compresses, and fits every weight's candidates while the gains are measured: the same report
    and files as when each runs in order (compression.AHEAD False) and as when compare_runs runs the original
    itself; and
    compare_runs reading a stored reference gives what it computes fresh, also when the stored batches differ
    from those the output's inputs take (then it runs the original again)."""
    import onnxcomp
    path = mlp(rng, str(tmp_path), sigmoid, False)
    from onnxcomp.pipeline import compression
    results = []
    for ahead in (True, False, None):  # threaded; in order (compression.AHEAD False); not stored ahead at all
        if ahead is False:
            monkeypatch.setattr(compression, "AHEAD", False)
        if ahead is None:
            monkeypatch.setattr(fidelity, "store_reference", lambda *args: None)
        (tmp_path / str(ahead)).mkdir()
        out = tmp_path / str(ahead) / "out.onnx"
        data = onnxcomp.compress(path, out, min_elements=1).to_dict()
        results.append((data["fidelity"], data["backoff"], data["ratio"], out.read_bytes(),
                        (tmp_path / str(ahead) / "out.onnxcomp").read_bytes()))
    assert results[0] == results[1] == results[2] and results[0][0]["min_cosine"] < 1.0
    monkeypatch.undo()
    loaded = model_io.load_model(path, external_data=False)
    feeds, source, _ = fidelity.prepare(path, model=loaded)
    out = str(tmp_path / "True" / "out.onnx")
    fresh = fidelity.compare_runs(path, out, feeds, source, loaded).to_dict()
    stored: dict = {}
    fidelity.store_reference(path, feeds, loaded, stored)
    key = tuple(fidelity.logit_taps(loaded).values())
    assert len(stored[key]) == len(feeds) and bool(key) == sigmoid
    assert fidelity.compare_runs(path, out, feeds, source, loaded, stored).to_dict() == fresh
    stored[fidelity._COUNTS + key] = [7] * len(feeds)  # batches the output would not run: the original runs again
    stored[key] = [{name: np.zeros_like(v) for name, v in run.items()} for run in stored[key]]
    assert fidelity.compare_runs(path, out, feeds, source, loaded, stored).to_dict() == fresh


def test_an_output_that_does_not_load_is_refused_when_the_fidelity_check_meets_it(tmp_path, rng, monkeypatch):
    """The load check of a round whose fidelity is measured is that check's own session of the output; when that
    fails (here: a sidecar cut short after writing, which the custom ops refuse), check_output_loads still runs,
    raises OutputError and nothing is written."""
    import onnxcomp
    from onnxcomp.errors import OutputError
    from onnxcomp.pipeline import compression
    path = mlp(rng, str(tmp_path), False, False)
    write = model_io.write_compressed

    def cut_short(*args, **kwargs):
        sidecar_file = write(*args, **kwargs)
        with open(sidecar_file, "r+b") as f:
            f.truncate(os.path.getsize(sidecar_file) // 2)
        return sidecar_file
    monkeypatch.setattr(model_io, "write_compressed", cut_short)
    with pytest.raises(OutputError):
        compression.compress(path, tmp_path / "out.onnx", min_elements=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


def test_sorted_weights_kept_between_rounds_write_the_same_bytes(tmp_path, rng, monkeypatch):
    """compress keeps each weight's sorted values between its rounds (ShareWeightsPass's cache, inputs up to
    SHARE_CACHE_BYTES): the same files as sorting again in every round (the cache off); the cache serves a weight
    only while its values and pruning mask are the ones it was made from."""
    import onnxcomp
    from onnxcomp.passes import share_weights
    from onnxcomp.pipeline import compression
    path = mlp(rng, str(tmp_path), True, False)
    written = []
    for limit in (compression.SHARE_CACHE_BYTES, 0):
        monkeypatch.setattr(compression, "SHARE_CACHE_BYTES", limit)
        folder = tmp_path / str(limit)
        folder.mkdir()
        report = onnxcomp.compress(path, folder / "out.onnx", min_elements=1)
        written.append(((folder / "out.onnx").read_bytes(), (folder / "out.onnxcomp").read_bytes(), report.backoff))
    assert written[0] == written[1] and len(written[0][2]) >= 2  # back-off rounds: three compressions share the cache

    class Target:  # what _prepared reads of a WeightTarget
        name, refit = "w", None
        keep = None
    cache: dict = {}
    share = share_weights.ShareWeightsPass(cache=cache)
    w = rng.standard_normal((40, 30)).astype(np.float32)
    first = share._prepared(Target, w, None)
    assert share._prepared(Target, w.copy(), None) is first  # equal values (another array): served
    Target.keep = np.abs(w) > 0.5
    masked = share._prepared(Target, w, None)
    assert masked is not first and share._prepared(Target, w, None) is masked
    changed = w.copy()
    changed[3, 4] += 1
    assert share._prepared(Target, changed, None) is not masked
    assert share._prepared(Target, w, np.ones(30)) == {} and share_weights.ShareWeightsPass()._prepared(Target, w, None) == {}


def test_alternative_codebooks_shared_at_once_write_what_one_after_another_writes(tmp_path, rng, monkeypatch):
    """ShareWeightsPass shares a weight's alternative codebooks (the allocation's uniform choice, a channel-scaled
    grid for a Conv filter, the k-means fallback they are measured against) on the cores at once when the weight
    has PARALLEL_CODEBOOKS values: the same files as one after another."""
    import onnxcomp
    from onnxcomp.passes import share_weights
    scales = np.exp(0.3 * rng.standard_normal(64)).astype(np.float32)[:, None, None, None]  # channels of unequal scale
    conv = (rng.standard_normal((64, 16, 3, 3)) * scales / 12).astype(np.float32)
    fc = (rng.standard_normal((512, 64)) / 22).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "c"], ["h"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Tile", ["f", "reps"], ["t"]), helper.make_node("MatMul", ["t", "w"], ["y"])]
    inits = [onnx.numpy_helper.from_array(conv, "c"), onnx.numpy_helper.from_array(fc, "w"),
             onnx.numpy_helper.from_array(np.array([1, 8], np.int64), "reps")]
    model = make_model(nodes, [float_input("x", ["n", 16, 8, 8])], [float_input("y", ["n", 64])], inits)
    path = str(tmp_path / "in.onnx")
    onnx.save(model, path)
    monkeypatch.setenv("ONNXCOMP_THREADS", "2")
    calls = []
    for method in ("_kmeans", "_share_scaled"):  # counted: each alternative is a job of its own
        function = getattr(share_weights.ShareWeightsPass, method)
        monkeypatch.setattr(share_weights.ShareWeightsPass, method,
                            lambda self, *a, function=function, method=method: calls.append(method) or function(self, *a))
    written = []
    for limit in (0, 1 << 62):
        monkeypatch.setattr(share_weights, "PARALLEL_CODEBOOKS", limit)
        folder = tmp_path / str(limit)
        folder.mkdir()
        onnxcomp.compress(path, folder / "out.onnx", min_elements=1)
        written.append(((folder / "out.onnx").read_bytes(), (folder / "out.onnxcomp").read_bytes()))
    assert written[0] == written[1] and set(calls) == {"_kmeans", "_share_scaled"}


@pytest.mark.skipif(native is None, reason="the compiled module onnxcomp._native is not built")
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_compiled_decode_matches_the_reference(rng, dtype, monkeypatch):
    """StoredWeight.dense gathered on the cores gives the reference's array on 1-3 threads, outliers included: a
    record as stored (any rank), and a transposed one (a Gemm B stored as [K, N]) decoded straight into [N, K], for
    shapes that are not multiples of the tile; an index outside the codebook is refused."""
    from onnxcomp.pipeline.inspection import StoredWeight
    k = 300 if dtype == np.uint16 else 31
    for shape, transposed in (((1, 1), True), ((70, 130), True), ((513, 257), True), ((700, 1200), False),
                              ((5, 3, 2, 7), False), ((1_000_003,), False)):
        book = rng.standard_normal(k).astype(np.float32)
        indices = rng.integers(0, k, shape).astype(dtype)
        size = indices.size
        positions = np.unique(rng.integers(0, size, max(1, size // 50)))
        values = rng.standard_normal(len(positions)).astype(np.float32)
        weight = StoredWeight("w", "record", book, indices, 8 if k < 256 else 16, 0, transposed, "w", positions, values)
        expected = weight.dense_reference()
        for threads in ("1", "2", "3"):
            monkeypatch.setenv("ONNXCOMP_THREADS", threads)
            fast = weight.dense()
            assert fast.flags.c_contiguous and fast.shape == expected.shape
            np.testing.assert_array_equal(fast.view(np.uint32), expected.view(np.uint32))
    for transpose in (False, True):
        with pytest.raises(ValueError, match="outside"):
            native.decode_indices(np.zeros(4, np.float32), np.full((3, 5), 4, dtype), transpose, 2)


def test_float16_checks_in_float32_match_the_float64_reference(rng):
    """half_dense.holds and outliers.value_format decide in float32 exactly what their float64 references decide:
    binary16-subnormal and float32-subnormal values, values that round to 0, ties at exactly 2^-11 of the scale,
    values near the binary16 maximum, and tensors of every rank; both answers occur."""
    from onnxcomp.core import outliers
    from onnxcomp.passes import half_dense
    tie = np.float32(1 + 2 ** -11)  # rounds to 1.0: an error of exactly 2^-11 of 1.0, a little less of itself
    special = np.array([tie, -tie, 2 ** -25, 3 * 2 ** -26, 1e-40, -1e-42, 6e-8, 65504, 65519, -65510, 0.0, -0.0,
                        1.0009765, 2 ** -14, 2 ** -14 * 1.0004], np.float32)
    cases = [special, special[:1], np.float32(0.5), np.float32(1e-39)]
    for scale in (1e-9, 1e-6, 1e-3, 1.0, 3e3):
        values = (rng.standard_normal((24, 10, 3)) * scale).astype(np.float32)
        cases += [values, values[0], values.reshape(-1, 6)]
        exact = values.astype(np.float16).astype(np.float32)  # every value binary16: holds at any rank
        exact.reshape(-1)[::7] *= np.float32(1 + 2 ** -12)  # some within 2^-11 of themselves
        cases += [exact, exact[:, 0]]
        nudged = exact.copy()
        nudged.reshape(-1)[5] = np.float32(nudged.reshape(-1)[5] * (1 + 2 ** -10))  # one value 2^-10 off
        cases.append(nudged)
    answers = set()
    for values in cases:
        values = np.asarray(values, np.float32)
        assert outliers.value_format(values) == outliers.value_format_reference(values)
        for weight in (False, True):
            answer = half_dense.holds(values, weight)
            assert answer == half_dense.holds_reference(values, weight), (values.shape, weight)
            answers.add(answer)
    assert answers == {True, False}

def test_targeted_round_reuses_unchanged_weights_with_the_bytes_of_a_full_redo(tmp_path, monkeypatch):
    """compress's targeted round halves one weight's limit; ShareWeightsPass gives every other weight (values, mask
    and settings unchanged) its last finished record instead of sharing it again: the same files as sharing every
    weight again (share_weights.REUSE False), and only the tightened weight is shared in that round."""
    import onnxcomp
    from onnxcomp.passes import share_weights
    from onnxcomp.pipeline import compression
    from test_allocation import _three_matmuls
    _, model = _three_matmuls(np.random.default_rng(12))
    onnx.save(model, tmp_path / "in.onnx")
    monkeypatch.setattr(compression, "_gains", lambda *args: {"w0": 1.0, "w1": 0.25, "w2": 1.0})  # w1 carries the error
    measure = fidelity.compare_runs

    def first_fails(*args):  # the round at the model's budget misses (within reach of a targeted round)
        result = measure(*args)
        result.min_cosine = 0.985 if not written else 0.999
        written.append(result)
        return result
    monkeypatch.setattr(fidelity, "compare_runs", first_fails)
    reuse, reused = share_weights.ShareWeightsPass._reuse, []

    def recorded(self, target, key, settings):
        found = reuse(self, target, key, settings)
        reused.append((target.name, found))
        return found
    monkeypatch.setattr(share_weights.ShareWeightsPass, "_reuse", recorded)
    files = []
    for on in (True, False):
        monkeypatch.setattr(share_weights, "REUSE", on)
        written, folder = [], tmp_path / str(on)
        folder.mkdir()
        reused.clear()
        report = onnxcomp.compress(tmp_path / "in.onnx", folder / "out.onnx")
        assert [r["tightened"] for r in report.backoff] == [[], ["w1"]]
        files.append(((folder / "out.onnx").read_bytes(), (folder / "out.onnxcomp").read_bytes()))
        if on:  # rounds: 0 (per-weight limits), the model's budget, the targeted round
            assert sorted(reused[-3:]) == [("w0", True), ("w1", False), ("w2", True)]
        else:
            assert not any(found for _, found in reused)
    assert files[0] == files[1]


def test_attribution_cache_gives_the_errors_of_fresh_runs(tmp_path, rng, monkeypatch):
    """fidelity.attribute with a cache kept between calls (compress's rounds): the same errors as without one, and a
    second call on the same output runs no weight again (its errors are found under each weight's decoded value)."""
    import onnxcomp
    path = mlp(rng, str(tmp_path))
    out = str(tmp_path / "out.onnx")
    onnxcomp.compress(path, out, bits=4, min_elements=1)
    loaded = model_io.load_model(path, external_data=False)
    feeds, _, _ = fidelity.prepare(path, model=loaded)
    feed = {k: v[:2] for k, v in feeds[0].items()}
    cache: dict = {}
    first = fidelity.attribute(path, out, feed, loaded, cache=cache)
    assert first == fidelity.attribute(path, out, feed, loaded) and min(first.values()) > 0
    relative, runs = fidelity._relative_error, []
    monkeypatch.setattr(fidelity, "_relative_error", lambda *args: runs.append(1) or relative(*args))
    assert fidelity.attribute(path, out, feed, loaded, cache=cache) == first and not runs
    assert fidelity.attribute(path, out, feed, loaded) == first and len(runs) == 2


def test_attribution_cones_give_the_errors_of_whole_model_runs(tmp_path, rng, monkeypatch):
    """fidelity.attribute's cones (each weight's run computes only the nodes its value reaches, fed the rest from
    one run of the original) give the errors of whole-model runs bit for bit, on a model with a residual branch and
    a weight that reaches only a side output; a cone whose check on the original values fails runs the whole model."""
    import onnxcomp
    w = [(rng.standard_normal(shape) / 8).astype(np.float32) for shape in [(64, 96), (96, 96), (96, 96), (96, 10), (96, 5)]]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"]), helper.make_node("Relu", ["h0"], ["r0"]),
             helper.make_node("MatMul", ["r0", "w1"], ["h1"]), helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "w2"], ["h2"]), helper.make_node("Add", ["h2", "r0"], ["s"]),
             helper.make_node("MatMul", ["s", "w3"], ["y"]), helper.make_node("MatMul", ["r1", "w4"], ["z"])]
    model = make_model(nodes, [float_input("x", ["n", 64])], [float_input("y", ["n", 10]), float_input("z", ["n", 5])],
                       [onnx.numpy_helper.from_array(v, f"w{i}") for i, v in enumerate(w)])
    path, out = str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx")
    onnx.save(model, path)
    onnxcomp.compress(path, out, bits=3, min_elements=1)
    loaded = model_io.load_model(path, external_data=False)
    feed = {"x": rng.random((2, 64), dtype=np.float32)}
    monkeypatch.setattr(fidelity, "CONE_MIN_SECONDS", 0.0)  # (the model is tiny: cones only where runs are slow)
    whole = fidelity.attribute(path, out, feed, loaded, cones=False)
    cache: dict = {}
    assert fidelity.attribute(path, out, feed, loaded, cache=cache) == whole and min(whole.values()) > 0
    (known,) = [v for k, v in cache.items() if k != "model"]
    cones = known["cones"]
    assert all(cone.checked for cone in cones.values() if cone.model is not None)
    assert len(cones["w4"].model.graph.node) == 1 and cones["w4"].boundary == ["r1"]  # only the side output
    assert cones["w3"].outputs == ["y"]
    monkeypatch.setattr(fidelity._Cone, "run", lambda self, known, originals, name, value, probe: {
        o: np.zeros((2, 1), np.float32) for o in self.outputs})  # a cone that computes otherwise: fails its check
    assert fidelity.attribute(path, out, feed, loaded, cache={}) == whole



def test_weights_shared_largest_first_write_what_one_thread_writes(tmp_path, monkeypatch):
    """ShareWeightsPass takes the weights largest first on the cores (each starts when a worker is free): in a graph
    whose weights grow along it, the last is taken first, and the files are byte-identical to those of one thread
    (the model file differs only in the sidecar's name)."""
    import onnxcomp
    from onnxcomp.passes import share_weights
    from test_allocation import _three_matmuls
    _, model = _three_matmuls(np.random.default_rng(5), ((32, 128), (128, 256), (256, 256)))
    onnx.save(model, tmp_path / "in.onnx")
    order, real = [], share_weights.parallel.completed_map

    def recording(function, items, workers=None):
        items = list(items)
        order.append(items)
        return real(function, items, workers)

    monkeypatch.setattr(share_weights.parallel, "completed_map", recording)
    written = []
    for threads in ("1", "2"):
        monkeypatch.setenv("ONNXCOMP_THREADS", threads)
        out = tmp_path / f"out{threads}.onnx"
        onnxcomp.compress(str(tmp_path / "in.onnx"), str(out))
        written.append((out.read_bytes().replace(f"out{threads}".encode(), b"out"),
                        (tmp_path / f"out{threads}.onnxcomp").read_bytes()))
    assert written[0] == written[1]
    assert order and all(items == [2, 1, 0] for items in order)


@pytest.mark.parametrize("case", ["defaults", "not finite", "portable"])
def test_weights_allocated_and_shared_in_one_chain_write_what_the_passes_write(tmp_path, monkeypatch, case):
    """The defaults' allocation, pruning and sharing run as one chain per weight (AllocateShareWeightsPass,
    compression.PIPELINED): report and files byte-identical to the three passes run one after the other, on one
    thread and on two; also when a weight's values are not finite (the allocation drops it, listed as skipped) and
    in the portable format."""
    import onnxcomp
    from onnxcomp.pipeline import compression
    from test_allocation import _three_matmuls
    _, model = _three_matmuls(np.random.default_rng(6), ((32, 128), (128, 256), (256, 256)))
    if case == "not finite":
        w1 = onnx.numpy_helper.to_array(model.graph.initializer[1]).copy()
        w1[3, 5] = np.nan
        model.graph.initializer[1].CopyFrom(onnx.numpy_helper.from_array(w1, "w1"))
    onnx.save(model, tmp_path / "in.onnx")
    options = {"format": "portable"} if case == "portable" else {}
    written, passes = [], []
    real = compression.build_pipeline

    def recording(**kwargs):
        pipeline = real(**kwargs)
        passes.append([type(p).__name__ for p in pipeline.passes])
        return pipeline

    monkeypatch.setattr(compression, "build_pipeline", recording)
    for pipelined in (True, False):
        monkeypatch.setattr(compression, "PIPELINED", pipelined)
        for threads in ("1", "2"):
            monkeypatch.setenv("ONNXCOMP_THREADS", threads)
            folder = tmp_path / f"{pipelined}{threads}"
            folder.mkdir()
            report = onnxcomp.compress(str(tmp_path / "in.onnx"), str(folder / "out.onnx"), **options).to_dict()
            for key in ("input_path", "output_path", "sidecar_path"):
                report.pop(key)
            files = sorted(folder.iterdir())
            written.append((report, [p.name for p in files], [p.read_bytes() for p in files]))
    assert all(entry == written[0] for entry in written[1:])
    assert written[0][0]["layers"] and (case != "not finite" or any(name == "w1" for name, _ in written[0][0]["skipped"]))
    fused = {tuple(p) for p in passes if "AllocateShareWeightsPass" in p}
    plain = {tuple(p) for p in passes if "AllocateWeightsPass" in p}
    assert fused and plain and all("ShareWeightsPass" not in p for p in fused)


def test_views_kept_while_reads_are_kept_are_those_of_a_fresh_read(rng):
    """Inside reads_kept, raw_view gives the view it made before for the same TensorProto object (the values of a
    fresh _raw_view, read-only), none for tensors it cannot view; after the block every read is fresh again."""
    from onnxcomp.passes import base
    w = rng.standard_normal((33, 7)).astype(np.float32)
    tensor, other = onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(np.arange(4), "i")
    with base.reads_kept():
        first = base.raw_view(tensor)
        assert base.raw_view(tensor) is first and not first.flags.writeable
        np.testing.assert_array_equal(first.view(np.uint32), base._raw_view(tensor).view(np.uint32))
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        assert base.raw_view(copy) is not first  # another object: read on its own
        assert base.raw_view(other) is None
        with base.reads_kept():  # nested blocks share one store until the last ends
            assert base.raw_view(tensor) is first
        assert base.raw_view(tensor) is first
    assert base.raw_view(tensor) is not first and base._kept_views is None
    np.testing.assert_array_equal(base.raw_view(tensor), w)


@pytest.mark.parametrize("sigmoid,constant", [(True, False), (False, True)])
def test_input_compressed_in_place_with_kept_reads_writes_what_copies_write(tmp_path, rng, monkeypatch, sigmoid, constant):
    """compress gives its rounds the parsed input itself (compression.only_read) and keeps each weight's read
    (base.reads_kept): the same files, report and back-off rounds as a copy of the input per round and a fresh read
    each time (only_read False, the straightforward version); one round leaves the input it is given unchanged."""
    import onnxcomp
    from onnxcomp.pipeline import compression
    path = mlp(rng, str(tmp_path), sigmoid, constant)
    loaded = model_io.load_model(path, external_data=False)
    assert compression.only_read(loaded) == (not constant) and not compression.only_read(loaded, "portable")
    for model_path in [path, *sorted(str(p) for p in (Path(__file__).parents[1] / "models").glob("*.onnx"))]:
        loaded = model_io.load_model(model_path, external_data=False)
        before = loaded.SerializeToString()
        compression._compress_once(model_path, str(tmp_path / "once.onnx"), None, loaded=loaded, allocation="proxy")
        assert loaded.SerializeToString() == before, model_path
    written = []
    for in_place in (True, False):
        if not in_place:
            monkeypatch.setattr(compression, "only_read", lambda model, format="custom-op": False)
        folder = tmp_path / str(in_place)
        folder.mkdir()
        report = onnxcomp.compress(path, folder / "out.onnx", min_elements=1)
        written.append(((folder / "out.onnx").read_bytes(), (folder / "out.onnxcomp").read_bytes(), report.backoff,
                        [(layer.name, layer.bytes_after) for layer in report.layers]))
    assert written[0] == written[1]


def test_each_weight_trimmed_as_its_chain_ends_writes_the_same_bytes(tmp_path, rng, monkeypatch):
    """AllocateShareWeightsPass returns each weight's freed arrays to the system when its chain ends (TRIM_EACH: one
    malloc_trim per weight of at least TRIM_ELEMENTS values and round): the same files as without it."""
    import onnxcomp
    from onnxcomp import parallel
    from onnxcomp.passes import allocate_share
    path = mlp(rng, str(tmp_path), False, False)
    monkeypatch.setattr(allocate_share, "TRIM_ELEMENTS", 64 * 96)  # w1 trimmed, w2 (960 values) not
    calls = []
    real = parallel.release_free_memory
    monkeypatch.setattr(parallel, "release_free_memory", lambda: (calls.append(1), real()))
    written = []
    for trim in (True, False):
        monkeypatch.setattr(allocate_share, "TRIM_EACH", trim)
        folder = tmp_path / str(trim)
        folder.mkdir()
        calls.clear()
        report = onnxcomp.compress(path, folder / "out.onnx", min_elements=1)
        written.append(((folder / "out.onnx").read_bytes(), (folder / "out.onnxcomp").read_bytes(), len(calls)))
    assert written[0][:2] == written[1][:2]
    rounds = 1 + len(report.backoff)  # round 0, then each measured round (this model backs off)
    assert len(report.layers) == 2 and written[0][2] - written[1][2] == rounds == 3  # w1's, once a round
