"""--format portable: standard ONNX ops only, stock onnxruntime, same outputs as the custom-op form."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxcomp
from conftest import run_compressed, run_plain
from onnxcomp.passes.pack_portable import pack_indices, packing_bits
from test_cli import BUNDLED, onnxcomp as cli
from test_tools import mixed_feeds, mixed_model  # noqa: F401 - fixture


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 6, 9])
def test_pack_indices_layout(bits, rng):
    k = 1 << bits
    indices = rng.integers(0, k, 1001)
    p = packing_bits(k)
    packed = pack_indices(indices, p) if p < 8 else None
    if packed is None:
        assert p in (8, 16)
        return
    assert len(packed) == -(-1001 * p // 8)
    per_byte = 8 // p
    unpacked = (packed[:, None].astype(np.int32) // (1 << (p * np.arange(per_byte - 1, -1, -1)))) % (1 << p)
    np.testing.assert_array_equal(unpacked.ravel()[:1001], indices)


@pytest.mark.parametrize("bits", [2, 3, 8, 9])
def test_portable_equals_custom_op(mixed_model, tmp_path, rng, bits):  # noqa: F811
    custom, portable = tmp_path / "custom.onnx", tmp_path / "portable.onnx"
    options = dict(sparsity=0.5, bits=bits, min_elements=100, outliers=0)  # tests/test_outliers.py covers outliers
    onnxcomp.compress(mixed_model, custom, **options)
    report = onnxcomp.compress(mixed_model, portable, format="portable", **options)
    assert report.sidecar_path is None and not (tmp_path / "portable.onnxcomp").exists()
    model = onnx.load(portable)
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    assert all(o.domain in ("", "ai.onnx") for o in model.opset_import)
    onnx.checker.check_model(model, full_check=True)
    indices = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith(".indices")}
    # At 9 bits w_matmul's 16-bit indices and 512-entry codebook would outgrow its 768 float32 values: left dense, said.
    dense = {name for name, _ in report.skipped}
    assert dense == ({"w_matmul"} if bits == 9 else set())
    assert set(indices) == {f"{name}.indices" for name in {"w_gemm", "w_matmul", "table", "w_conv"} - dense}
    p = packing_bits(1 << bits)
    for layer in report.layers:
        stored = indices[layer.name + ".indices"]
        assert stored.dtype == (np.uint16 if p == 16 else np.uint8)
        assert stored.nbytes == -(-layer.params * p // 8)
        assert layer.bytes_after == stored.nbytes + 4 * layer.codebook_size
    feeds = mixed_feeds(rng)
    for i, (a, b) in enumerate(zip(run_plain(portable, feeds), run_compressed(custom, feeds))):  # stock onnxruntime vs the library
        if i == 0 and dense:  # h2 = (x W_gemm) W_matmul: W_matmul dense in one, compressed in the other
            continue
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())  # fp32 summation order
    inspected = {w.name: w for w in onnxcomp.inspect(portable).weights}
    reported = {layer.name: layer for layer in report.layers}
    assert inspected["w_conv"].storage == "portable" and inspected["w_conv"].codebook_size == reported["w_conv"].codebook_size
    assert inspected["w_gemm"].shape == [48, 64] and inspected["w_gemm"].bits == p


def test_old_opset_falls_back_to_bytes(tmp_path, rng):
    from onnx import helper
    from conftest import float_input, make_model, weight
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [float_input("x", ["n", 64])],
                       [float_input("y", ["n", 32])], [weight(rng, "w", (64, 32))], opset=9)
    model.ir_version = 4
    onnx.save(model, tmp_path / "old.onnx")
    report = onnxcomp.compress(tmp_path / "old.onnx", tmp_path / "out.onnx", format="portable", bits=3)
    stored = next(t for t in onnx.load(tmp_path / "out.onnx").graph.initializer if t.name == "w.indices")
    assert list(stored.dims) == [64, 32] and stored.data_type == onnx.TensorProto.UINT8
    assert report.layers[0].bytes_after == 64 * 32 + 4 * report.layers[0].codebook_size
    x = rng.standard_normal((3, 64)).astype(np.float32)
    decoded = onnxcomp.inspect(tmp_path / "out.onnx").weights[0]
    assert decoded.storage == "portable"
    np.testing.assert_allclose(run_plain(tmp_path / "out.onnx", {"x": x})[0], x @ numpy_helper.to_array(
        next(t for t in onnx.load(tmp_path / "out.onnx").graph.initializer if t.name == "w.codebook"))[numpy_helper.to_array(stored)], rtol=1e-5, atol=1e-5)


def test_portable_cli(tmp_path):
    out = tmp_path / "portable.onnx"
    result = cli("compress", BUNDLED, out, "--format", "portable")
    assert result.returncode == 0, result.stderr
    assert "no sidecar" in result.stdout and not (tmp_path / "portable.onnxcomp").exists()
    assert "portable model" in cli("inspect", out).stdout
    assert cli("compress", BUNDLED, out, "--format", "tiny").returncode == 2
