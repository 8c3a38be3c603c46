"""The fused CodebookMatMul kernels (every instruction set, and the scalar fallback) and the packed working
form of CodebookDecode / CodebookGather against numpy references, on random shapes.

Tolerance: the decoded weights are exact (codebook[index]), so the only difference from the float64
reference is fp32 rounding in the sum over K. Every kernel accumulates in order with fused multiply-adds,
so |y - y_ref| <= K * 2**-24 * (|X| @ |W|)[m, n] (the standard recursive-summation bound, gamma_K) plus
one rounding of the bias add; that bound is what the tests allow. Across instruction sets the kernels do
the same operations in the same order, so their outputs must be bit-identical.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcomp
from conftest import session_with_env
from onnxcomp.core.sidecar import decode_record, encode_record

ISAS = ["scalar", "avx2", "avx512"]
EPS32 = 2.0 ** -24


def cpu_has(flag: str) -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(flag in line.split() for line in f if line.startswith("flags"))
    except OSError:
        return False


def isa_available(isa: str) -> bool:
    return isa == "scalar" or (isa == "avx2" and cpu_has("avx2") and cpu_has("fma")) or (isa == "avx512" and cpu_has("avx512f"))


def random_layer(rng, k, n, bits, sparse=False):
    size = int(rng.integers(max(1, (1 << bits) // 2 + 1), (1 << bits) + 1))  # K from just over half to full
    codebook = rng.standard_normal(size).astype(np.float32)
    if sparse:
        codebook[0] = 0.0
        indices = np.where(rng.random((k, n)) < 0.7, 0, rng.integers(1, size, (k, n)))
    else:
        indices = rng.integers(0, size, (k, n))
    return codebook, indices


def matmul_model(record: bytes, k: int, n: int, with_bias: bool, bias=None, batch_shape=("M",)) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.frombuffer(record, np.uint8), "w_record")]
    inputs = ["x", "w_record"]
    if with_bias:
        inits.append(numpy_helper.from_array(bias, "bias"))
        inputs.append("bias")
    node = helper.make_node("CodebookMatMul", inputs, ["y"], domain=onnxcomp.runtime.DOMAIN)
    graph = helper.make_graph(
        [node], "kernel", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [*batch_shape, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(onnxcomp.runtime.DOMAIN, 1)])
    model.ir_version = 8
    return model


def run_with_isa(model: onnx.ModelProto, feeds: dict, isa: str, threads: int = 1, env_extra: dict | None = None):
    """Runs the model in a session created while ONNXCOMP_ISA caps the instruction set (read at kernel creation),
    with the variables `env_extra` set as well."""
    return session_with_env(model, {"ONNXCOMP_ISA": isa, **(env_extra or {})}, threads).run(None, feeds)[0]


def check_against_reference(y, x, weight, bias):
    x64, w64 = x.astype(np.float64).reshape(-1, weight.shape[0]), weight.astype(np.float64)
    ref = x64 @ w64 + (0 if bias is None else bias.astype(np.float64))
    bound = weight.shape[0] * EPS32 * (np.abs(x64) @ np.abs(w64)) + EPS32 * np.abs(ref) + 1e-30
    err = np.abs(y.reshape(ref.shape).astype(np.float64) - ref)
    assert (err <= bound).all(), f"max error {err.max()} above the summation bound (worst ratio {(err / bound).max()})"


SHAPES = [  # (M, K, N): odd sizes, K and N not multiples of 8/16/64, a partial panel, batch 1 and more
    (1, 1, 1), (1, 7, 13), (1, 33, 65), (1, 100, 129), (1, 64, 256), (1, 257, 300),
    (2, 31, 70), (3, 45, 64), (5, 19, 191), (6, 50, 130), (7, 64, 128), (8, 96, 200), (13, 17, 67), (64, 130, 97),
]


# 4-7: AVX2 byte-plane lookups of up to 128 entries; 6-8: AVX-512 vpermi2ps pairs and blends (2, 4, 8 pairs); M >= 6:
# both decode each group once per task (row tiles) and run the dense-panel tiles
@pytest.mark.parametrize("bits", [3, 4, 5, 6, 7, 8, 10])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_codebook_matmul_every_isa_against_numpy(m, k, n, bits):
    rng = np.random.default_rng(1000 * m + 10 * k + n + bits)
    codebook, indices = random_layer(rng, k, n, bits, sparse=(k + n) % 3 == 0)
    weight = codebook[indices]
    bias = rng.standard_normal(n).astype(np.float32) if n % 2 else None
    model = matmul_model(encode_record(codebook, indices, (k, n), bits), k, n, bias is not None, bias)
    x = rng.standard_normal((m, k)).astype(np.float32)
    outputs = {}
    for isa in ISAS:
        if not isa_available(isa):
            continue
        outputs[isa] = run_with_isa(model, {"x": x}, isa)
        assert outputs[isa].shape == (m, n) and outputs[isa].dtype == np.float32
        check_against_reference(outputs[isa], x, weight, bias)
    for isa, y in outputs.items():
        np.testing.assert_array_equal(y, outputs["scalar"], err_msg=f"{isa} differs from the scalar kernel")


@pytest.mark.parametrize("isa", ISAS)
def test_codebook_matmul_threads_and_batch_dims(isa, monkeypatch):
    if not isa_available(isa):
        pytest.skip(f"this CPU has no {isa}")
    monkeypatch.setenv("ONNXCOMP_GEMM_ROWS", "0")  # the fused kernel at every batch (150 rows below)
    rng = np.random.default_rng(7)
    k, n = 300, 1000  # large enough for the parallel path, 16 panels of which the last is partial
    codebook, indices = random_layer(rng, k, n, 4)
    bias = rng.standard_normal(n).astype(np.float32)
    model = matmul_model(encode_record(codebook, indices, (k, n), 4), k, n, True, bias, batch_shape=("A", "B"))
    for shape in [(1, 1), (2, 9), (3, 50), (7, 61)]:  # 427 rows: three row tasks of 144
        x = rng.standard_normal((*shape, k)).astype(np.float32)
        one = run_with_isa(model, {"x": x}, isa, threads=1)
        two = run_with_isa(model, {"x": x}, isa, threads=2)
        assert one.shape == (*shape, n)
        np.testing.assert_array_equal(one, two)  # the split into tasks never changes the summation order
        check_against_reference(one, x, codebook[indices], bias)
        # batch invariance: each row computed alone gives the same bits
        single = run_with_isa(model, {"x": x.reshape(-1, k)[:1].reshape(1, 1, k)}, isa)
        np.testing.assert_array_equal(single.reshape(-1), one.reshape(-1, n)[0])


@pytest.mark.parametrize("m,k,n,bits,fraction", [(64, 130, 97, 4, 0.0), (150, 300, 1000, 4, 0.01), (600, 33, 65, 8, 0.0),
                                                  (97, 64, 129, 10, 0.02), (513, 1, 70, 3, 0.0)])
def test_codebook_matmul_large_batch_uses_a_gemm_on_the_decoded_weight(m, k, n, bits, fraction, monkeypatch):
    """From ONNXCOMP_GEMM_ROWS rows (default 512) W is decoded for the run into dense panels and multiplied by the
    dense-panel kernel, then the outlier corrections are added: the fused kernel's bits (the same chain of fused
    multiply-adds over the same values), under every instruction-set cap and thread count."""
    rng = np.random.default_rng(m + k + n)
    if m < 512:
        monkeypatch.setenv("ONNXCOMP_GEMM_ROWS", "64")
    codebook, indices = random_layer(rng, k, n, bits, sparse=bits == 8)
    positions, values = with_outliers(rng, (k, n), fraction) if fraction else (None, None)
    record = encode_record(codebook, indices, (k, n), bits, positions, values)
    bias = rng.standard_normal(n).astype(np.float32)
    model = matmul_model(record, k, n, True, bias, batch_shape=("A", "B"))
    x = rng.standard_normal((m // 2 if m % 2 == 0 else 1, 2 if m % 2 == 0 else m, k)).astype(np.float32)
    outputs = [run_with_isa(model, {"x": x}, isa) for isa in ISAS if isa_available(isa)]
    outputs.append(run_with_isa(model, {"x": x}, "scalar", threads=2))
    check_against_reference(outputs[0], x, decode_record(record).to_dense().astype(np.float32), bias)
    for y in outputs[1:]:
        np.testing.assert_array_equal(y, outputs[0])
    monkeypatch.setenv("ONNXCOMP_GEMM_ROWS", "0")
    np.testing.assert_array_equal(run_with_isa(model, {"x": x}, "scalar"), outputs[0])
    monkeypatch.setenv("ONNXCOMP_GEMM_ROWS", str(m + 1))  # one row short of the threshold: the fused kernel again
    np.testing.assert_array_equal(run_with_isa(model, {"x": x}, "scalar"), outputs[0])


def test_force_scalar_env_matches_isa_scalar():
    rng = np.random.default_rng(3)
    codebook, indices = random_layer(rng, 40, 90, 4)
    model = matmul_model(encode_record(codebook, indices, (40, 90), 4), 40, 90, False)
    x = rng.standard_normal((3, 40)).astype(np.float32)
    os.environ["ONNXCOMP_FORCE_SCALAR"] = "1"
    try:
        forced = run_with_isa(model, {"x": x}, "avx512")
    finally:
        del os.environ["ONNXCOMP_FORCE_SCALAR"]
    np.testing.assert_array_equal(forced, run_with_isa(model, {"x": x}, "scalar"))


def decode_and_gather(record: bytes, rows: np.ndarray):
    """Runs CodebookDecode(record) and CodebookGather(record, rows) in onnxruntime; returns (w, g)."""
    import onnxruntime as ort
    initializer = numpy_helper.from_array(np.frombuffer(record, np.uint8), "r")
    nodes = [helper.make_node("CodebookDecode", ["r"], ["w"], domain=onnxcomp.runtime.DOMAIN),
             helper.make_node("CodebookGather", ["r", "p"], ["g"], domain=onnxcomp.runtime.DOMAIN)]
    graph = helper.make_graph(nodes, "decode", [helper.make_tensor_value_info("p", TensorProto.INT64, list(rows.shape))],
                              [helper.make_tensor_value_info("w", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("g", TensorProto.FLOAT, None)], [initializer])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(onnxcomp.runtime.DOMAIN, 1)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), onnxcomp.runtime.session_options(), providers=["CPUExecutionProvider"])
    return session.run(None, {"p": rows})


@pytest.mark.parametrize("bits", [1, 3, 4, 5, 8, 9, 16])
def test_decode_and_gather_packed_working_form(bits):
    rng = np.random.default_rng(bits)
    shape = (37, 11)  # odd element count: the last 4-bit slot is a lone low nibble
    size = min(1 << bits, 3000)
    codebook = rng.standard_normal(size).astype(np.float32)
    indices = rng.integers(0, size, shape)
    positions = np.array([[0, 36, -1], [5, -37, 17]], dtype=np.int64)
    w, g = decode_and_gather(encode_record(codebook, indices, shape, bits), positions)
    np.testing.assert_array_equal(w, codebook[indices])
    np.testing.assert_array_equal(g, codebook[indices][positions])


# ---- Outliers (record version 2) ---------------------------------------------------------------------------

def with_outliers(rng, indices_shape, fraction, scale=40.0):
    """Sorted random outlier positions (a `fraction` of the elements, at least one) and large values."""
    n = int(np.prod(indices_shape))
    count = max(1, int(fraction * n))
    positions = np.sort(rng.choice(n, count, replace=False))
    return positions, (rng.standard_normal(count) * scale).astype(np.float32)


def check_with_corrections(y, x, record, bias):
    """The summation bound of check_against_reference, widened for the outlier corrections: each is one more
    fused multiply-add after the bias, with delta = fl(outlier - codebook value) rounded once."""
    decoded = decode_record(record)
    k = decoded.dims[0]
    plain = decoded.codebook[decoded.indices].reshape(decoded.dims).astype(np.float64)
    exact = decoded.to_dense().astype(np.float64)
    per_column = np.bincount(decoded.outlier_positions % decoded.dims[1], minlength=decoded.dims[1]).max()
    x64 = x.astype(np.float64).reshape(-1, k)
    ref = x64 @ exact + (0 if bias is None else bias.astype(np.float64))
    bound = (k + per_column + 2) * EPS32 * (np.abs(x64) @ (np.abs(plain) + 2 * np.abs(exact))) + EPS32 * np.abs(ref) + 1e-30
    err = np.abs(y.reshape(ref.shape).astype(np.float64) - ref)
    assert (err <= bound).all(), f"max error {err.max()} above the bound (worst ratio {(err / bound).max()})"


@pytest.mark.parametrize("bits,sparse", [(3, False), (4, True), (5, False), (8, True), (10, False)])
@pytest.mark.parametrize("m,k,n", [(1, 7, 13), (1, 100, 129), (3, 45, 64), (13, 17, 67), (64, 130, 97)])
def test_codebook_matmul_outliers_every_isa(m, k, n, bits, sparse):
    rng = np.random.default_rng(7 * m + 11 * k + n + bits)
    codebook, indices = random_layer(rng, k, n, bits, sparse=sparse)
    positions, values = with_outliers(rng, (k, n), 0.01)
    record = encode_record(codebook, indices, (k, n), bits, positions, values)
    bias = rng.standard_normal(n).astype(np.float32) if n % 2 else None
    model = matmul_model(record, k, n, bias is not None, bias)
    x = rng.standard_normal((m, k)).astype(np.float32)
    outputs = {}
    for isa in ISAS:
        if isa_available(isa):
            outputs[isa] = run_with_isa(model, {"x": x}, isa)
            check_with_corrections(outputs[isa], x, record, bias)
    for isa, y in outputs.items():
        np.testing.assert_array_equal(y, outputs["scalar"], err_msg=f"{isa} differs from the scalar kernel")
    # Without the outliers the product is far off: the check above can fail.
    plain = x.astype(np.float64) @ codebook[indices].astype(np.float64)
    exact = x.astype(np.float64) @ decode_record(record).to_dense().astype(np.float64)
    assert np.abs(plain - exact).max() > 1.0


@pytest.mark.parametrize("isa", ISAS)
def test_codebook_matmul_outliers_threads(isa):
    if not isa_available(isa):
        pytest.skip(f"this CPU has no {isa}")
    rng = np.random.default_rng(8)
    k, n = 300, 1000
    codebook, indices = random_layer(rng, k, n, 4)
    positions, values = with_outliers(rng, (k, n), 0.005)
    record = encode_record(codebook, indices, (k, n), 4, positions, values)
    bias = rng.standard_normal(n).astype(np.float32)
    model = matmul_model(record, k, n, True, bias, batch_shape=("A", "B"))
    x = rng.standard_normal((3, 50, k)).astype(np.float32)
    one = run_with_isa(model, {"x": x}, isa, threads=1)
    np.testing.assert_array_equal(one, run_with_isa(model, {"x": x}, isa, threads=2))
    check_with_corrections(one, x, record, bias)
    single = run_with_isa(model, {"x": x[:1, :1]}, isa)
    np.testing.assert_array_equal(single.reshape(-1), one.reshape(-1, n)[0])


@pytest.mark.parametrize("m,k,n,fraction,gemm_rows", [(70, 50, 40, 0.05, None), (45, 300, 700, 0.01, None),
                                                      (37, 64, 90, 0.3, "0"), (600, 33, 65, 0.02, None)])
def test_codebook_matmul_outlier_lanes_equal_rows_alone(m, k, n, fraction, gemm_rows, monkeypatch):
    """From 2 rows the corrections run with rows as vector lanes (X transposed: per task in blocks of 32 rows, or once
    for all tasks when several share rows): each output must keep the bits of its row computed alone (one row: the
    per-row chains), across lane blocks, tasks, threads and the large-batch path."""
    if gemm_rows is not None:
        monkeypatch.setenv("ONNXCOMP_GEMM_ROWS", gemm_rows)
    rng = np.random.default_rng(m + k + n)
    codebook, indices = random_layer(rng, k, n, 5)
    positions, values = with_outliers(rng, (k, n), fraction)
    record = encode_record(codebook, indices, (k, n), 5, positions, values)
    bias = rng.standard_normal(n).astype(np.float32)
    model = matmul_model(record, k, n, True, bias)
    x = rng.standard_normal((m, k)).astype(np.float32)
    batch = session_with_env(model, None, threads=1).run(None, {"x": x})[0]
    np.testing.assert_array_equal(batch, session_with_env(model, None, threads=2).run(None, {"x": x})[0])
    check_with_corrections(batch, x, record, bias)
    alone = session_with_env(model, None, threads=1)
    for row in sorted({0, 1, 31, 32, 33, m - 1} & set(range(m))):
        np.testing.assert_array_equal(alone.run(None, {"x": x[row:row + 1]})[0][0], batch[row])


def test_codebook_matmul_outliers_large_batch(monkeypatch):
    """From 512 rows (the GEMM on the weight decoded for the run) the same per-column corrections follow."""
    rng = np.random.default_rng(9)
    k, n = 70, 90
    codebook, indices = random_layer(rng, k, n, 5)
    positions, values = with_outliers(rng, (k, n), 0.01)
    record = encode_record(codebook, indices, (k, n), 5, positions, values)
    bias = rng.standard_normal(n).astype(np.float32)
    model = matmul_model(record, k, n, True, bias)
    x = rng.standard_normal((600, k)).astype(np.float32)
    check_with_corrections(run_with_isa(model, {"x": x}, "scalar"), x, record, bias)
    monkeypatch.setenv("ONNXCOMP_GEMM_ROWS", "0")
    check_with_corrections(run_with_isa(model, {"x": x}, "scalar"), x, record, bias)


@pytest.mark.parametrize("bits,fraction", [(1, 0.02), (4, 1.0), (5, 0.05), (9, 0.01), (16, 0.003)])
def test_decode_and_gather_outliers_exact(bits, fraction):
    rng = np.random.default_rng(bits)
    shape = (37, 11)
    size = min(1 << bits, 3000)
    codebook = rng.standard_normal(size).astype(np.float32)
    indices = rng.integers(0, size, shape)
    positions, values = with_outliers(rng, shape, fraction)
    values[::3] = np.float32(1e-30)  # binary16 cannot hold these: the record keeps float32 values
    data = encode_record(codebook, indices, shape, bits, positions, values)
    reference = decode_record(data).to_dense()
    assert np.array_equal(reference.reshape(-1)[positions], values)  # exact, not rounded
    rows = np.array([[0, 36, -1], [5, -37, 17]], dtype=np.int64)
    w, g = decode_and_gather(data, rows)
    np.testing.assert_array_equal(w, reference)
    np.testing.assert_array_equal(g, reference[rows])
    assert not np.array_equal(w, codebook[indices])


# ---- Decode-once working forms (attribute decode_once = 1) --------------------------------------------------

@pytest.mark.parametrize("m,k,n,bits,fraction", [(1, 7, 13, 3, 0.0), (1, 100, 129, 5, 0.01), (13, 17, 67, 4, 0.02),
                                                  (49, 384, 96, 6, 0.005), (600, 33, 65, 8, 0.0), (5, 1, 16, 2, 0.0),
                                                  (7, 64, 17, 4, 0.0), (31, 130, 250, 4, 0.01), (97, 300, 33, 7, 0.0)])
def test_codebook_matmul_decode_once(m, k, n, bits, fraction):
    """decode_once = 1: W decoded once (outliers included) into dense panels and multiplied by the dense-panel kernel
    in every run: bit-identical under every instruction-set cap, within the fp32 summation bound of the float64
    product, and, without outliers, bit-identical to the fused kernel (the same in-order chain of fused
    multiply-adds over the same weights, then the bias)."""
    rng = np.random.default_rng(m + k + n + bits)
    codebook, indices = random_layer(rng, k, n, bits)
    positions, values = with_outliers(rng, (k, n), fraction) if fraction else (None, None)
    record = encode_record(codebook, indices, (k, n), bits, positions, values)
    bias = rng.standard_normal(n).astype(np.float32) if n % 2 else None
    fused = matmul_model(record, k, n, bias is not None, bias)
    model = matmul_model(record, k, n, bias is not None, bias)
    model.graph.node[0].attribute.append(helper.make_attribute("decode_once", 1))
    x = rng.standard_normal((m, k)).astype(np.float32)
    dense = decode_record(record).to_dense().astype(np.float32)
    outputs = [run_with_isa(model, {"x": x}, isa) for isa in ISAS if isa_available(isa)]
    for y in outputs[1:]:
        np.testing.assert_array_equal(y, outputs[0])
    check_against_reference(outputs[0], x, dense, bias)
    if not fraction:
        np.testing.assert_array_equal(outputs[0], run_with_isa(fused, {"x": x}, "scalar"))
    session = session_with_env(model, None)
    for _ in range(2):  # the working copy is not consumed by a run
        np.testing.assert_array_equal(session.run(None, {"x": x})[0], outputs[0])
    two = session_with_env(model, None, threads=2)  # the row and panel tasks on two threads: the same bits
    np.testing.assert_array_equal(two.run(None, {"x": x})[0], outputs[0])


@pytest.mark.parametrize("seed", range(6))
def test_dense_panel_paths_random_shapes_every_isa(seed, monkeypatch):
    """The dense-panel kernels (AVX-512: 12-row x 32-column tiles; AVX2: 6 x 16; scalar) on random shapes, rows 1..600
    (tile heights 1..12 and their balanced splits), odd K, N not a multiple of 16 (a masked last panel, an odd last
    panel alone), outliers present, through all three paths that run them: the decode-once copy, the per-run decode
    from ONNXCOMP_GEMM_ROWS rows, and the row tiles of byte indices (6 or more rows). Every instruction set gives the
    scalar kernel's bits, within the summation bound of the float64 product."""
    rng = np.random.default_rng(4200 + seed)
    m = int(rng.integers(1, 601)) if seed else 600
    k = 2 * int(rng.integers(0, 200)) + 1
    n = int(rng.integers(1, 300))
    if n % 16 == 0:
        n += 1
    bits = [4, 6, 8][seed % 3]
    codebook, indices = random_layer(rng, k, n, bits)
    positions, values = with_outliers(rng, (k, n), 0.01)
    record = encode_record(codebook, indices, (k, n), bits, positions, values)
    bias = rng.standard_normal(n).astype(np.float32) if seed % 2 else None
    x = rng.standard_normal((m, k)).astype(np.float32)
    once = matmul_model(record, k, n, bias is not None, bias)
    once.graph.node[0].attribute.append(helper.make_attribute("decode_once", 1))
    fused = matmul_model(record, k, n, bias is not None, bias)
    for model, gemm_rows in [(once, None), (fused, "1"), (fused, "0")]:
        if gemm_rows is not None:
            monkeypatch.setenv("ONNXCOMP_GEMM_ROWS", gemm_rows)
        outputs = {isa: run_with_isa(model, {"x": x}, isa) for isa in ISAS if isa_available(isa)}
        check_with_corrections(outputs["scalar"], x, record, bias)
        for isa, y in outputs.items():
            np.testing.assert_array_equal(y, outputs["scalar"], err_msg=f"{isa} differs from scalar ({gemm_rows})")


def sparse_rows_input(rng, m, k, dense_from=None):
    """Rows of X with few nonzeros: one-hot rows of 1.0, rows of k // 16 and k // 16 + 1 random values (the limit and
    one past it), a row of zeros, -0.0 and NaN / inf entries, pairs that cancel; from row `dense_from` on, random
    dense rows."""
    x = np.zeros((m, k), np.float32)
    limit = max(1, k // 16)
    for row in range(m):
        kind = row % 7
        if kind == 0:
            x[row, rng.integers(0, k)] = 1.0
        elif kind in (1, 2):
            count = limit if kind == 1 else min(k, limit + 1)
            x[row, rng.choice(k, count, replace=False)] = rng.standard_normal(count)
        elif kind == 3:
            x[row, rng.integers(0, k)] = -0.0
        elif kind == 4 and k > 1:
            a, b = rng.choice(k, 2, replace=False)
            x[row, [a, b]] = [np.nan, 1.0] if row % 2 else [np.inf, -2.5]
        elif kind == 5:
            x[row, rng.integers(0, k)] = rng.standard_normal()
    if dense_from is not None:
        x[dense_from:] = rng.standard_normal((m - dense_from, k))
    return x


def bits_of(y):
    return np.ascontiguousarray(y).view(np.uint32)


@pytest.mark.parametrize("seed", range(6))
def test_sparse_rows_equal_the_dense_kernel_bit_for_bit(seed, monkeypatch):
    """Rows of X with at most K / 16 nonzeros (one-hot rows: an embedding exported as a MatMul) are computed from
    their nonzeros on the dense panels (decode-once copy and per-run decode), up to the first denser row: the same
    bits as the dense-panel kernel on every row (ONNXCOMP_SPARSE_ROWS=0), signed zeros, NaN and inf included, under
    every instruction set, with and without bias and outliers."""
    rng = np.random.default_rng(5100 + seed)
    m = int(rng.integers(20, 300))
    k = [257, 16, 40, 100, 640, 1][seed]
    n = [64, 17, 5, 130, 40, 200][seed]
    bits = [8, 4, 2, 6, 8, 5][seed]
    codebook, indices = random_layer(rng, k, n, bits, sparse=seed % 2 == 1)
    if seed == 2:  # products that underflow to a signed zero: the zero outputs are recomputed with the full chain
        codebook = np.array([-1e-30, 2.0, 0.0, 1e-30], np.float32)[: len(codebook)]
    positions, values = with_outliers(rng, (k, n), 0.01) if seed % 3 == 0 else (None, None)
    record = encode_record(codebook, indices, (k, n), bits, positions, values)
    bias = rng.standard_normal(n).astype(np.float32) if seed in (0, 3, 4) else None  # seed 2: zeros stay zeros
    x = sparse_rows_input(rng, m, k, dense_from=m // 2 if seed in (1, 4) else None)
    if seed == 2:
        x[x != 0] = np.where(np.isfinite(x[x != 0]), 1e-30, x[x != 0])
    once = matmul_model(record, k, n, bias is not None, bias)
    once.graph.node[0].attribute.append(helper.make_attribute("decode_once", 1))
    fused = matmul_model(record, k, n, bias is not None, bias)
    monkeypatch.setenv("ONNXCOMP_GEMM_ROWS", "1")
    for model in (once, fused):
        dense = run_with_isa(model, {"x": x}, "scalar", env_extra={"ONNXCOMP_SPARSE_ROWS": "0"})
        for isa in ISAS:
            if isa_available(isa):
                y = run_with_isa(model, {"x": x}, isa)
                np.testing.assert_array_equal(bits_of(y), bits_of(dense), err_msg=f"{isa}: sparse rows differ")
        finite = np.isfinite(x).all(axis=1)
        check_with_corrections(dense[finite], x[finite], record, bias)


@pytest.mark.parametrize("bits,fraction", [(1, 0.0), (4, 0.05), (9, 0.01)])
def test_codebook_decode_decode_once(bits, fraction):
    """decode_once = 1: CodebookDecode copies out a tensor decoded at session creation, bit-identical to the numpy
    decoder, in every run; a record that is a graph input (not constant) is decoded in each run instead."""
    import onnxruntime as ort
    rng = np.random.default_rng(40 + bits)
    shape = (2, 37, 11)
    size = min(1 << bits, 3000)
    codebook = rng.standard_normal(size).astype(np.float32)
    indices = rng.integers(0, size, shape)
    positions, values = with_outliers(rng, shape, fraction) if fraction else (None, None)
    data = encode_record(codebook, indices, shape, bits, positions, values)
    reference = decode_record(data).to_dense()
    node = helper.make_node("CodebookDecode", ["r"], ["w"], domain=onnxcomp.runtime.DOMAIN, decode_once=1)
    initializer = numpy_helper.from_array(np.frombuffer(data, np.uint8), "r")
    for as_input in (False, True):
        inputs = [helper.make_tensor_value_info("r", TensorProto.UINT8, [len(data)])] if as_input else []
        graph = helper.make_graph([node], "decode", inputs, [helper.make_tensor_value_info("w", TensorProto.FLOAT, None)],
                                  [initializer])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(onnxcomp.runtime.DOMAIN, 1)])
        model.ir_version = 8
        session = ort.InferenceSession(model.SerializeToString(), onnxcomp.runtime.session_options(),
                                       providers=["CPUExecutionProvider"])
        feeds = {"r": np.frombuffer(data, np.uint8)} if as_input else {}
        for _ in range(2):
            w = session.run(None, feeds)[0]
            np.testing.assert_array_equal(w, reference)
            w[...] = 0.0  # a caller writing into its result never reaches the working copy
