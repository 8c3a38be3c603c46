"""Codebook sizes between two powers of two (K = 3, 6, 12, 24, 48, 96, 192 entries): the record stores K and
ceil(log2 K) index bits, the indices are Huffman coded over K symbols, and every reader (the fused CodebookMatMul,
CodebookGather, CodebookConv, CodebookDecode, the portable lookups, decompress, the numpy decoder) reads them as it
reads 2^b; the calibrated search's curves get such sizes on the weights that hold the most bytes."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxcomp
from conftest import budget_mlp, float_input, make_model, reference_model, run_compressed, run_plain, weight
from onnxcomp.core import codebook as codebook_math
from onnxcomp.core import outliers as outlier_math
from onnxcomp.core import sidecar
from onnxcomp.errors import InvalidOptionError
from onnxcomp.pipeline import autotune
from onnxcomp.pipeline.autotune import compress_to_budget

SIZES = [3, 6, 12, 24, 48, 96, 192]


@pytest.fixture
def sized_model(tmp_path, rng):
    """One weight of each reader: Gemm transB=1 and MatMul (CodebookMatMul), Gather, Conv, and an Add of a weight
    (CodebookDecode)."""
    nodes = [
        helper.make_node("Gemm", ["x", "w_gemm"], ["h1"], transB=1),
        helper.make_node("MatMul", ["h1", "w_matmul"], ["h2"]),
        helper.make_node("Gather", ["table", "ids"], ["emb"], axis=0),
        helper.make_node("Conv", ["img", "w_conv"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["conv", "w_add"], ["shifted"]),
    ]
    inputs = [float_input("x", ["n", 64]), helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 3]),
              float_input("img", ["n", 8, 12, 12])]
    outputs = [float_input("h2", ["n", 40]), float_input("emb", ["n", 3, 32]), float_input("shifted", ["n", 16, 12, 12])]
    initializers = [weight(rng, "w_gemm", (96, 64)), weight(rng, "w_matmul", (96, 40)), weight(rng, "table", (200, 32)),
                    weight(rng, "w_conv", (16, 8, 3, 3), 0.3), weight(rng, "w_add", (16, 12, 12))]
    path = tmp_path / "sized.onnx"
    onnx.save(make_model(nodes, inputs, outputs, initializers), path)
    return path


def feeds_for(rng):
    return {"x": rng.standard_normal((7, 64)).astype(np.float32), "ids": rng.integers(-200, 200, (7, 3)),
            "img": rng.standard_normal((7, 8, 12, 12)).astype(np.float32)}


NAMES = ("w_gemm", "w_matmul", "table", "w_conv", "w_add")


@pytest.mark.parametrize("sparsity", [0.0, 0.6])
@pytest.mark.parametrize("size", SIZES)
def test_codebook_sizes_between_powers_of_two_run_in_every_reader(sized_model, tmp_path, rng, size, sparsity):
    settings = {name: {"sparsity": sparsity, "codebook_size": size} for name in NAMES}
    out = tmp_path / "out.onnx"
    report = onnxcomp.compress(sized_model, out, settings=settings, min_elements=100, outliers=0)
    bits = (size - 1).bit_length()
    weights = {w.name: w for w in onnxcomp.inspect(out).weights}
    assert set(weights) == set(NAMES)
    ops = {w.name: w.op for w in weights.values() if w.name != "w_add"}
    assert ops == {"w_gemm": "CodebookMatMul", "w_matmul": "CodebookMatMul", "table": "CodebookGather",
                   "w_conv": "CodebookConv"}
    assert "CodebookDecode" in {node.op_type for node in onnx.load(out).graph.node}  # w_add, read by the Add
    records = {}
    for entry in sidecar.read_directory(str(tmp_path / "out.onnxcomp")):
        with open(tmp_path / "out.onnxcomp", "rb") as f:
            f.seek(entry.offset)
            records[entry.name] = sidecar.decode_record(f.read(entry.length))
    for name in NAMES:
        record = records[name]
        k = len(record.codebook)
        # at most K entries (the pruned 0.0 included), and more than the next power of two down: a size in between
        assert (1 << (bits - 1)) < k <= size and record.bits == bits, (name, k, record.bits)
        assert weights[name].codebook_size == k and weights[name].bits == bits
        values = record.codebook[record.indices.reshape(-1)]
        if sparsity:
            assert record.codebook[0] == 0.0 and np.mean(values == 0.0) >= sparsity - 0.02
    # the library's kernels against the numpy decoder's weights in plain onnxruntime
    feeds = feeds_for(rng)
    expected = run_plain(reference_model(onnx.load(sized_model), str(tmp_path / "out.onnxcomp")), feeds)
    for got, want in zip(run_compressed(out, feeds), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())  # fp32 summation order
    # the portable format (standard ops) and decompress (dense weights) read the same values
    portable = tmp_path / "portable.onnx"
    onnxcomp.compress(sized_model, portable, settings=settings, min_elements=100, outliers=0, format="portable")
    for got, want in zip(run_plain(portable, feeds), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    dense = tmp_path / "dense.onnx"
    onnxcomp.decompress(out, dense)
    for got, want in zip(run_plain(dense, feeds), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert [layer.codebook_size for layer in report.layers] == [len(records[layer.name].codebook) for layer in report.layers]


def test_a_codebook_size_sits_between_its_neighbouring_bit_widths(rng):
    """K = 12 entries: more accurate than 3 bits (8), less than 4 (16), and its entropy-coded record in between."""
    values = rng.standard_normal((64, 96)).astype(np.float32)
    errors, sizes = [], []
    for bits, size in ((3, 0), (4, 12), (4, 0)):
        shared = outlier_math.share(values, None, bits, option=0.0, codebook_size=size)
        assert len(shared.codebook) == (size or 1 << bits)
        errors.append(float(((shared.codebook[shared.indices].reshape(values.shape) - values) ** 2).sum()))
        sizes.append(len(sidecar.encode_record(shared.codebook, shared.indices, values.shape, bits)))
    assert errors[0] > errors[1] > errors[2] and sizes[0] < sizes[1] < sizes[2]
    # the reference and the compiled share agree on a size in between, pruned too
    keep = rng.random(values.shape) < 0.5
    fast = outlier_math.share(values, keep, 4, codebook_size=12)
    reference = outlier_math.share_reference(values, keep, 4, codebook_size=12)
    assert len(fast.codebook) == 12 and fast.codebook[0] == 0.0
    np.testing.assert_array_equal(fast.codebook, reference.codebook)
    np.testing.assert_array_equal(fast.indices, reference.indices)
    with pytest.raises(ValueError, match="does not fit 3 index bits"):
        codebook_math.quantize(values, None, 3, codebook_size=12)


def test_codebook_size_settings_are_checked(sized_model, tmp_path):
    for bad in ({"codebook_size": 12, "bits": 3}, {"codebook_size": 1}, {"codebook_size": 12.0}, {"size": 12}):
        with pytest.raises(InvalidOptionError):
            onnxcomp.compress(sized_model, tmp_path / "out.onnx", settings={"w_gemm": bad}, min_elements=100)


def test_between_sizes_and_the_weights_that_get_them(monkeypatch):
    monkeypatch.setattr(autotune, "BETWEEN", True)
    assert [autotune.between_size(low, high) for low, high in zip(autotune.BITS, autotune.BITS[1:])] == [6, 12, 24, 48, 128]

    class Target:
        def __init__(self, name, dense_bytes):
            self.name, self.dense_bytes = name, dense_bytes
    targets = [Target("big", 800), Target("tenth", 100), Target("small", 99), Target("tiny", 1)]  # 1,000 bytes
    assert autotune.in_between_weights(targets) == {"big", "tenth"}


def test_budget_curves_hold_sizes_between_bit_widths_and_the_allocation_may_pick_them(tmp_path, rng, monkeypatch):
    """The calibrated search on the budget tests' MLP: both weights hold more than a tenth of the bytes, so their
    curves get the sizes between each two bit widths they tried; a second run reads them from the cache (the 2^b
    points' file is the one a run without them writes) and writes the same bytes; the written records are what the
    chosen settings say."""
    monkeypatch.setattr(autotune, "BETWEEN", True)  # (off by default: ONNXCOMP_BETWEEN_SIZES=1)
    _, data = budget_mlp(tmp_path, rng)
    cache = tmp_path / "cache"
    options = dict(budget="rel_l2=0.08", calib=str(data), cache_dir=str(cache), sparsities=(0.0, 0.5, 0.8), min_elements=16)
    report = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "a.onnx"), **options)
    curves = autotune._load_cache(report.budget["cache"])
    between_files = sorted(cache.glob("sensitivity-between-*.json"))
    assert len(between_files) == 1
    between = autotune._load_cache(str(between_files[0]))
    assert set(between) == {"w1", "w2"} and all(len(p) == 4 for points in curves.values() for p in points)
    for name, points in between.items():
        tried = {(p[0], p[1]) for p in curves[name] if p[0] is not None}
        assert points, name
        for sparsity, bits, size, error, k in points:
            low = next(b for b in autotune.BITS if autotune.between_size(b, autotune.BITS[autotune.BITS.index(b) + 1]) == k)
            high = autotune.BITS[autotune.BITS.index(low) + 1]
            assert (sparsity, low) in tried and (sparsity, high) in tried and bits == (k - 1).bit_length()
            below = next(p for p in curves[name] if p[:2] == (sparsity, low))
            above = next(p for p in curves[name] if p[:2] == (sparsity, high))
            assert below[2] <= size <= above[2], (name, below, size, above)  # bytes between its neighbours'
    # the records written follow the settings chosen (a codebook size in between where one was chosen)
    records = {}
    for entry in sidecar.read_directory(str(tmp_path / "a.onnxcomp")):
        with open(tmp_path / "a.onnxcomp", "rb") as f:
            f.seek(entry.offset)
            records[entry.name] = sidecar.decode_record(f.read(entry.length))
    for name, setting in report.budget["settings"].items():
        if setting.get("skip") or name not in records:
            continue
        assert records[name].bits == setting["bits"]
        assert len(records[name].codebook) <= setting.get("codebook_size", 1 << setting["bits"])
    (tmp_path / "b").mkdir()
    again = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "b" / "a.onnx"), **options)
    assert again.budget["settings"] == report.budget["settings"]
    assert (tmp_path / "a.onnxcomp").read_bytes() == (tmp_path / "b" / "a.onnxcomp").read_bytes()
    # off: no in-between points, no second file
    monkeypatch.setattr(autotune, "BETWEEN", False)
    off_cache = tmp_path / "off"
    off = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "c.onnx"), **{**options, "cache_dir": str(off_cache)})
    assert not list(off_cache.glob("sensitivity-between-*.json"))
    assert all("codebook_size" not in s for s in off.budget["settings"].values())


def test_sizes_in_between_are_credited_no_better_than_the_line_between_their_neighbours():
    points = [(0.0, 2, 100, 0.04), (0.0, 3, 150, 0.01), (0.0, 4, 200, 0.008),
              (0.0, 3, 130, 0.005, 6),  # below both neighbours (noise): raised to the line between 4 and 8 entries
              (0.0, 4, 180, 0.0095, 12),  # between 8 and 16 entries, above the line (0.0088): kept as measured
              (0.5, 3, 90, 0.02, 6),  # no 2^b points at its sparsity: left as measured
              (None, None, 400, 0.0)]
    bounded = autotune.no_better_than_between(points)
    t = np.log2(6) - 2
    assert bounded[3] == (0.0, 3, 130, pytest.approx(0.04 ** (1 - t) * 0.01 ** t), 6)
    assert bounded[4] == points[4] and bounded[5] == points[5]
    assert bounded[:3] == points[:3] and bounded[-1] == points[-1]  # the 2^b points as measured
    assert autotune.no_better_than_between([(0.0, 2, 100, 0.0), (0.0, 3, 150, 0.0), (0.0, 3, 120, 0.0, 6)])[2][3] == 0.0
