"""CodebookLSTM (docs/ops.md) against onnxruntime's own LSTM, and the compressor's path to it: recurrent weights
reached through constant Slice/Concat/Unsqueeze chains are folded into one initializer (FoldRecurrentWeightsPass),
compressed, and read by CodebookLSTM; a weight read in both branches of an If is stored once."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import float_input, make_model, run_compressed, run_plain, session_with_env, weight
from onnx import TensorProto, helper, numpy_helper

import onnxcomp
from onnxcomp.core import sidecar
from onnxcomp.passes.fold_weights import apply_op


def run_reference(model: onnx.ModelProto, feeds: dict) -> list:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as session_with_env: onnxruntime's LSTM splits batches over threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def record(rng, shape, bits=4, outliers=0, scale_axis=None):
    """(record bytes as a uint8 array, the values it decodes to by the numpy reference decoder). ``scale_axis``:
    a channel-scaled record (version 3/4) with binary16 scales spanning 100x along that axis."""
    codebook = np.sort(rng.standard_normal(2 ** bits).astype(np.float32)) * np.float32(0.3)
    indices = rng.integers(0, 2 ** bits, size=shape)
    positions = np.sort(rng.choice(indices.size, outliers, replace=False)).astype(np.int64)
    values = rng.standard_normal(outliers).astype(np.float32)
    scales = None
    if scale_axis is not None:
        scales = np.exp(rng.uniform(np.log(0.05), np.log(5.0), shape[scale_axis])).astype(np.float16).astype(np.float32)
    data = sidecar.encode_record(codebook, indices, shape, bits, positions, values, scales=scales,
                                 scale_axis=0 if scale_axis is None else scale_axis)
    assert sidecar.decode_record(data).scales is not None or scale_axis is None
    return np.frombuffer(data, np.uint8), sidecar.decode_record(data).to_dense()


def lstm_case(rng, *, directions=1, hidden=8, inputs=5, seq=4, batch=3, bias=True, seq_lens=False, initial=False,
              outputs=("Y", "Y_h", "Y_c"), layout=0, clip=None, dense_bias=False, scaled=False):
    """(CodebookLSTM model, reference LSTM model taking W, R, B as graph inputs, feeds of both). ``scaled``: W, R
    and B are channel-scaled records (W along its gate rows, R along its input columns, B along its only axis
    but one)."""
    direction = {1: "forward", 2: "bidirectional", -1: "reverse"}[directions]
    d = abs(directions)
    w_record, w = record(rng, (d, 4 * hidden, inputs), outliers=3, scale_axis=1 if scaled else None)
    r_record, r = record(rng, (d, 4 * hidden, hidden), scale_axis=2 if scaled else None)
    b_record, b = record(rng, (d, 8 * hidden), outliers=2 if scaled else 0, scale_axis=1 if scaled else None)
    x_shape = [seq, batch, inputs] if layout == 0 else [batch, seq, inputs]
    feeds = {"X": rng.standard_normal(x_shape).astype(np.float32)}
    graph_inputs = [float_input("X", x_shape)]
    optional = ["", "", ""]
    if seq_lens:
        feeds["seq_lens"] = rng.integers(1, seq + 1, size=batch).astype(np.int32)
        graph_inputs.append(helper.make_tensor_value_info("seq_lens", TensorProto.INT32, [batch]))
        optional[0] = "seq_lens"
    if initial:
        state = [d, batch, hidden] if layout == 0 else [batch, d, hidden]
        for name in ("h0", "c0"):
            feeds[name] = rng.standard_normal(state).astype(np.float32)
            graph_inputs.append(float_input(name, state))
        optional[1:] = ["h0", "c0"]
    node_outputs = [name if name in outputs else "" for name in ("Y", "Y_h", "Y_c")]
    while not node_outputs[-1]:
        node_outputs.pop()
    graph_outputs = [float_input(name, None) for name in node_outputs if name]
    attrs = {"hidden_size": hidden, "direction": direction}
    if clip is not None:
        attrs["clip"] = clip
    node_inputs = ["X", "W", "R", "B" if bias else ""] + optional
    while not node_inputs[-1]:
        node_inputs.pop()

    dense_b = numpy_helper.from_array(b.astype(np.float32), "B")
    inits = [numpy_helper.from_array(w_record, "W"), numpy_helper.from_array(r_record, "R")]
    if bias:
        inits.append(dense_b if dense_bias else numpy_helper.from_array(b_record, "B"))
    compressed = helper.make_model(
        helper.make_graph([helper.make_node("CodebookLSTM", node_inputs, node_outputs, "lstm", domain=onnxcomp.DOMAIN, **attrs)],
                          "codebook_lstm", graph_inputs, graph_outputs, inits),
        opset_imports=[helper.make_opsetid("", 14), helper.make_opsetid(onnxcomp.DOMAIN, 1)])
    # The reference takes the decoded weights as graph inputs: onnxruntime then runs its LSTM on them unpacked,
    # as CodebookLSTM's invocation does (an initializer weight is prepacked, which may reorder the sums).
    reference_inputs = graph_inputs + [float_input("W", list(w.shape)), float_input("R", list(r.shape))]
    feeds_reference = dict(feeds, W=w.astype(np.float32), R=r.astype(np.float32))
    if bias:
        reference_inputs.append(float_input("B", list(b.shape)))
        feeds_reference["B"] = b.astype(np.float32)
    reference = helper.make_model(
        helper.make_graph([helper.make_node("LSTM", node_inputs, node_outputs, "lstm", **attrs)], "lstm",
                          reference_inputs, graph_outputs),
        opset_imports=[helper.make_opsetid("", 14)])
    return compressed, reference, feeds, feeds_reference


CASES = [
    {},
    {"directions": 2},
    {"directions": -1},
    {"directions": 2, "seq_lens": True, "initial": True},
    {"bias": False},
    {"batch": 1, "seq": 1, "hidden": 16, "inputs": 7},
    {"batch": 1, "seq": 9, "directions": 2, "initial": True},
    {"outputs": ("Y_h",)},
    {"outputs": ("Y", "Y_c")},
    {"clip": 0.5, "directions": 2},
    {"dense_bias": True, "seq_lens": True},
    {"scaled": True},
    {"scaled": True, "directions": 2, "initial": True},
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_codebook_lstm_equals_onnxruntime_lstm_on_the_decoded_weights(case):
    """Bit for bit: without the direct path (ONNXCOMP_LSTM_DIRECT=0) CodebookLSTM invokes onnxruntime's LSTM on
    the exact decoded weights."""
    compressed, reference, feeds, feeds_reference = lstm_case(np.random.default_rng(len(str(case))), **case)
    got = session_with_env(compressed, {"ONNXCOMP_LSTM_DIRECT": "0"}).run(None, feeds)
    want = run_reference(reference, feeds_reference)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_array_equal(g, w)


def numpy_lstm(x, w, r, b, h0, c0, direction):
    """ONNX LSTM (layout 0, default activations, no clip, no peepholes) in float64: Y [seq, D, batch, H], Y_h and
    Y_c [D, batch, H]; gates in the order i, o, f, c (the ONNX operator's definition)."""
    seq, batch, _ = x.shape
    d_count, rows, _ = w.shape
    hidden = rows // 4
    b = np.zeros((d_count, 8 * hidden)) if b is None else b
    y = np.zeros((seq, d_count, batch, hidden))
    y_h, y_c = np.zeros((d_count, batch, hidden)), np.zeros((d_count, batch, hidden))
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    for d in range(d_count):
        h = np.zeros((batch, hidden)) if h0 is None else h0[d].astype(np.float64)
        c = np.zeros((batch, hidden)) if c0 is None else c0[d].astype(np.float64)
        steps = range(seq - 1, -1, -1) if direction == "reverse" or d == 1 else range(seq)
        for t in steps:
            g = x[t] @ w[d].T.astype(np.float64) + h @ r[d].T.astype(np.float64) + b[d, :4 * hidden] + b[d, 4 * hidden:]
            i, o, f, cell = (g[:, k * hidden:(k + 1) * hidden] for k in range(4))
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(cell)
            h = sigmoid(o) * np.tanh(c)
            y[t, d] = h
        y_h[d], y_c[d] = h, c
    return y, y_h, y_c


DIRECT = [c for c in CASES if not c.get("seq_lens") and c.get("clip") is None]


@pytest.mark.parametrize("case", DIRECT, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_small_lstm_direct_path_follows_the_onnx_equations(case):
    """A small LSTM with constant records, no sequence_lens, peepholes or clip runs the direct path: within fp32
    rounding of the ONNX equations in float64 and of onnxruntime's LSTM on the decoded weights, and the same bits
    under every instruction-set cap (the gate products are fma chains in one order)."""
    compressed, reference, feeds, feeds_reference = lstm_case(np.random.default_rng(len(str(case))), **case)
    direction = next(a.s.decode() for a in compressed.graph.node[0].attribute if a.name == "direction")
    want = numpy_lstm(feeds["X"].astype(np.float64), feeds_reference["W"], feeds_reference["R"],
                      feeds_reference.get("B"), feeds.get("h0"), feeds.get("c0"), direction)
    names = [o.name for o in compressed.graph.output]
    want = [want[("Y", "Y_h", "Y_c").index(n)] for n in names]
    got = {isa: session_with_env(compressed, {"ONNXCOMP_ISA": isa}).run(None, feeds) for isa in ("scalar", "avx2", "avx512")}
    for g, w in zip(got["avx512"], want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=0, atol=2e-6)
    for isa in ("scalar", "avx2"):
        for g, w in zip(got[isa], got["avx512"]):
            np.testing.assert_array_equal(g, w)
    for g, w in zip(got["avx512"], run_reference(reference, feeds_reference)):
        np.testing.assert_allclose(g, w, rtol=0, atol=2e-6)


def test_direct_path_is_taken_where_it_applies():
    """The direct path's bits differ from onnxruntime's LSTM (its sums run in another order) on these inputs, so the
    comparison tells the paths apart: the default case takes it, a case with sequence_lens or clip does not."""
    def bits_equal(case, env):
        compressed, reference, feeds, feeds_reference = lstm_case(np.random.default_rng(3), **case)
        got = session_with_env(compressed, env).run(None, feeds)
        return all(np.array_equal(g, w) for g, w in zip(got, run_reference(reference, feeds_reference)))

    assert not bits_equal({"hidden": 32, "inputs": 40}, {})
    assert bits_equal({"hidden": 32, "inputs": 40}, {"ONNXCOMP_LSTM_DIRECT": "0"})
    assert bits_equal({"hidden": 32, "inputs": 40, "seq_lens": True}, {})
    assert bits_equal({"hidden": 32, "inputs": 40, "clip": 0.5}, {})


def _prepacked_reference(reference: onnx.ModelProto, feeds_reference: dict) -> onnx.ModelProto:
    """``reference`` with W, R and B as initializers holding the decoded values (onnxruntime prepacks W and R)."""
    prepacked = onnx.ModelProto()
    prepacked.CopyFrom(reference)
    weights = [i for i in prepacked.graph.input if i.name in ("W", "R", "B")]
    for info in weights:
        prepacked.graph.input.remove(info)
        prepacked.graph.initializer.append(numpy_helper.from_array(feeds_reference[info.name], info.name))
    return prepacked


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_large_lstm_runs_onnxruntimes_lstm_on_prepacked_working_copies(case):
    """Above ONNXCOMP_LSTM_PREPACK_WEIGHTS (1 here: every LSTM) CodebookLSTM runs a one-node session whose
    initializers are the working copies: bit for bit onnxruntime's LSTM with the decoded weights as initializers,
    which it prepacks, in every run and for every optional input and output."""
    compressed, reference, feeds, feeds_reference = lstm_case(np.random.default_rng(len(str(case))), **case)
    session = session_with_env(compressed, {"ONNXCOMP_LSTM_PREPACK_WEIGHTS": "1"})
    want = run_reference(_prepacked_reference(reference, feeds_reference),
                         {k: v for k, v in feeds_reference.items() if k not in ("W", "R", "B")})
    for _ in range(2):
        got = session.run(None, feeds)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_array_equal(g, w)


def test_record_given_as_a_graph_input_is_decoded_in_every_run():
    compressed, reference, feeds, feeds_reference = lstm_case(np.random.default_rng(7), directions=2)
    w_record = next(t for t in compressed.graph.initializer if t.name == "W")
    compressed.graph.input.append(helper.make_tensor_value_info("W", TensorProto.UINT8, ["bytes"]))
    want = run_reference(reference, feeds_reference)
    # (a record that is not a constant keeps the per-run path even where the prepacked session would apply)
    session = session_with_env(compressed, {"ONNXCOMP_LSTM_PREPACK_WEIGHTS": "1"})
    for _ in range(2):
        for g, w in zip(session.run(None, feeds), want):
            np.testing.assert_array_equal(g, w)
    with pytest.raises(Exception, match=r"onnxcomp: node 'lstm' \(CodebookLSTM\): corrupt weight record"):
        session.run(None, dict(feeds, W=numpy_helper.to_array(w_record)[:20].copy()))


def _with_initializer(model: onnx.ModelProto, name: str, tensor: onnx.TensorProto) -> onnx.ModelProto:
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    target = next(t for t in changed.graph.initializer if t.name == name)
    target.CopyFrom(tensor)
    return changed


@pytest.mark.parametrize("problem, match", [
    ("corrupt", r"corrupt weight record"),
    ("dims", r"R has dims \[1, 32, 5\], expected \[1, 32, 8\]"),
    ("activations", r"attribute activations is not supported"),
    ("hidden", r"attribute hidden_size must be given"),
    ("layout", r"layout 1 is not supported"),  # onnxruntime's LSTM has no batch-major layout either
])
def test_bad_nodes_fail_session_creation_with_a_clear_message(problem, match):
    rng = np.random.default_rng(11)
    compressed, _, _, _ = lstm_case(rng)
    if problem == "corrupt":
        data = numpy_helper.to_array(next(t for t in compressed.graph.initializer if t.name == "W")).copy()
        data[len(data) // 2:] ^= 0x5A
        compressed = _with_initializer(compressed, "W", numpy_helper.from_array(data[: len(data) // 3], "W"))
    elif problem == "dims":
        compressed = _with_initializer(compressed, "R", numpy_helper.from_array(record(rng, (1, 32, 5))[0], "R"))
    elif problem == "layout":
        compressed.graph.node[0].attribute.append(helper.make_attribute("layout", 1))
    elif problem == "activations":
        compressed.graph.node[0].attribute.append(helper.make_attribute("activations", ["Sigmoid", "Tanh", "Tanh"]))
    else:
        attrs = [a for a in compressed.graph.node[0].attribute if a.name != "hidden_size"]
        del compressed.graph.node[0].attribute[:]
        compressed.graph.node[0].attribute.extend(attrs)
    with pytest.raises(Exception, match=r"onnxcomp: node 'lstm' \(CodebookLSTM\): " + match):
        session_with_env(compressed)


def _torch_style_lstm(rng, hidden=16, inputs=12, opset=17):
    """An If whose two branches each run an LSTM on weights that PyTorch's exporter reorders from its gate order
    (i, f, g, o) to ONNX's (i, o, f, c) with Slice + Concat + Unsqueeze chains on shared outer-scope initializers."""
    h = hidden
    ints = lambda name, values: numpy_helper.from_array(np.array(values, np.int64), name)  # noqa: E731

    def branch(tag: str) -> onnx.GraphProto:
        nodes, inits = [], []
        for source, kind in (("w_ih", "W"), ("w_hh", "R"), ("b", "B")):
            parts = []
            for gate, (start, end) in enumerate(((0, h), (3 * h, 4 * h), (h, 3 * h))):
                # a bias is two stacked vectors [8H]: reorder each half alike
                pieces = [(start, end)] if kind != "B" else [(start, end), (4 * h + start, 4 * h + end)]
                for p, (s, e) in enumerate(pieces):
                    name = f"{tag}_{kind}{gate}{p}"
                    inits += [ints(name + "_s", [s]), ints(name + "_e", [e]), ints(name + "_a", [0])]
                    nodes.append(helper.make_node("Slice", [source, name + "_s", name + "_e", name + "_a"], [name]))
                    parts.append((p, name))
            ordered = [n for p, n in sorted(parts, key=lambda x: x[0])]
            nodes.append(helper.make_node("Concat", ordered, [f"{tag}_{kind}_cat"], axis=0))
            inits.append(ints(f"{tag}_{kind}_axes", [0]))
            nodes.append(helper.make_node("Unsqueeze", [f"{tag}_{kind}_cat", f"{tag}_{kind}_axes"], [f"{tag}_{kind}"]))
        nodes.append(helper.make_node("LSTM", ["x", f"{tag}_W", f"{tag}_R", f"{tag}_B"], [f"{tag}_y", f"{tag}_h"],
                                      hidden_size=h))
        nodes.append(helper.make_node("Identity", [f"{tag}_h"], [f"{tag}_out"]))
        return helper.make_graph(nodes, tag, [], [float_input(f"{tag}_out", None)], inits)

    inits = [weight(rng, "w_ih", (4 * h, inputs), 0.3), weight(rng, "w_hh", (4 * h, h), 0.3),
             weight(rng, "b", (8 * h,), 0.1)]
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=branch("then"), else_branch=branch("else"))]
    return make_model(nodes, [float_input("x", [6, 2, inputs]), helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                      [float_input("y", [1, 2, h])], inits, opset=opset)


def test_exported_recurrent_weights_are_folded_and_read_by_codebook_lstm(tmp_path):
    rng = np.random.default_rng(21)
    model = _torch_style_lstm(rng)
    onnx.save(model, tmp_path / "in.onnx")
    report = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", bits=4, min_elements=100)
    kinds = {layer.name: layer.kind for layer in report.layers}  # each folded once, though both branches read it
    assert kinds == {"w_ih.folded": "fc", "w_hh.folded": "fc", "b.folded": "other"}
    out = onnx.load(tmp_path / "out.onnx", load_external_data=False)
    branches = [a.g for a in out.graph.node[0].attribute]
    for graph in branches:
        ops = [n.op_type for n in graph.node]
        assert "CodebookLSTM" in ops and "Slice" not in ops and "Concat" not in ops and not graph.initializer
    records = [report.names.get(t.name, t.name) for t in out.graph.initializer]  # (short names: the report traces them)
    records = [name for name in records if name.endswith(".onnxcomp_record")]
    assert sorted(records) == ["b.folded.onnxcomp_record", "w_hh.folded.onnxcomp_record", "w_ih.folded.onnxcomp_record"]
    onnxcomp.decompress(tmp_path / "out.onnx", tmp_path / "dense.onnx")
    dense_ops = {n.op_type for g in [a.g for a in onnx.load(tmp_path / "dense.onnx").graph.node[0].attribute] for n in g.node}
    assert "LSTM" in dense_ops and "CodebookLSTM" not in dense_ops
    for branch in (True, False):
        feeds = {"x": rng.standard_normal((6, 2, 12)).astype(np.float32), "c": np.array(branch)}
        got = run_compressed(tmp_path / "out.onnx", feeds)[0]
        want = run_plain(tmp_path / "dense.onnx", feeds)[0]
        original = run_plain(model, feeds)[0]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        # 4-bit codebooks: the compressed recurrence follows the original within a loose, bit-width-tied bound
        assert np.abs(got - original).max() < 0.25


@pytest.mark.parametrize("opset", [11, 17])
def test_fold_matches_onnxruntime_on_both_opset_forms(tmp_path, opset):
    """Slice/Unsqueeze with attributes (opset 11) or inputs (17): the folded constants give the original outputs."""
    rng = np.random.default_rng(opset)
    model = _torch_style_lstm(rng, opset=17)
    if opset == 11:  # rewrite Slice and Unsqueeze into their attribute forms
        for graph in [a.g for a in model.graph.node[0].attribute]:
            values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
            for node in graph.node:
                if node.op_type == "Unsqueeze":
                    node.attribute.append(helper.make_attribute("axes", values[node.input[1]].tolist()))
                    del node.input[1:]
                elif node.op_type == "Slice":
                    for position, key in ((1, "starts"), (2, "ends"), (3, "axes")):
                        node.attribute.append(helper.make_attribute(key, values[node.input[position]].tolist()))
                    del node.input[1:]
        del model.opset_import[:]
        model.opset_import.append(helper.make_opsetid("", 9))
        model.ir_version = 8
    onnx.save(model, tmp_path / "in.onnx")
    onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", bits=8, sparsity={"fc": 0.0}, min_elements=100)
    feeds = {"x": rng.standard_normal((6, 2, 12)).astype(np.float32), "c": np.array(True)}
    # 8-bit codebooks, no pruning: a wrong fold (gates swapped) would be off by about the outputs' size
    got, want = run_compressed(tmp_path / "out.onnx", feeds)[0], run_plain(model, feeds)[0]
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max()


def test_apply_op_follows_onnx_semantics():
    import onnx_graphsurgeon as gs
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    node = lambda op, **attrs: gs.Node(op, attrs=attrs)  # noqa: E731
    np.testing.assert_array_equal(apply_op(node("Slice"), [data, np.array([-3]), np.array([10 ** 9]), np.array([2]),
                                                           np.array([2])]), data[:, :, 1::2])
    np.testing.assert_array_equal(apply_op(node("Slice", starts=[1], ends=[-1], axes=[1]), [data]), data[:, 1:2])
    np.testing.assert_array_equal(apply_op(node("Unsqueeze"), [data, np.array([-1, 0])]), data[None, :, :, :, None])
    np.testing.assert_array_equal(apply_op(node("Squeeze", axes=[0]), [data[None]]), data)
    np.testing.assert_array_equal(apply_op(node("Reshape"), [data, np.array([0, -1])]), data.reshape(2, 12))
    np.testing.assert_array_equal(apply_op(node("Transpose"), [data]), data.T)
    np.testing.assert_array_equal(apply_op(node("Concat", axis=-1), [data, data]), np.concatenate([data, data], -1))


def test_verify_per_layer_leaves_out_folded_weights(tmp_path):
    """verify --per-layer puts each weight alone into the original model: a folded weight is not in it, so it has no
    row (and is no reason to refuse the model); the unfolded weights of a second LSTM keep theirs."""
    rng = np.random.default_rng(8)
    nested = _torch_style_lstm(rng)
    branch = next(a.g for a in nested.graph.node[0].attribute if a.name == "then_branch")
    nodes = list(branch.node) + [helper.make_node("LSTM", ["x", "w2", "r2"], ["", "h2"], hidden_size=16),
                                 helper.make_node("Add", ["then_out", "h2"], ["z"])]
    inits = list(nested.graph.initializer) + list(branch.initializer) + [
        weight(rng, "w2", (1, 64, 12), 0.3), weight(rng, "r2", (1, 64, 16), 0.3)]
    model = make_model(nodes, [float_input("x", ["s", 2, 12])], [float_input("z", [1, 2, 16])], inits)
    onnx.save(model, tmp_path / "in.onnx")
    onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", bits=4, min_elements=100)
    assert any(n.op_type == "CodebookLSTM" for n in onnx.load(tmp_path / "out.onnx", load_external_data=False).graph.node)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=rng.standard_normal((8, 2, 12)).astype(np.float32))
    result = onnxcomp.verify(tmp_path / "in.onnx", tmp_path / "out.onnx", calib=str(calib), samples=8, per_layer=True)
    assert {layer.name for layer in result.layers} == {"w2", "r2"}


def test_budget_settings_reach_the_folded_weights(tmp_path):
    """A budget allocation names the weights of the model as given; compress folds the recurrent chains first, and
    the folded constant takes its source's setting (it used to get the data-free allocation instead)."""
    rng = np.random.default_rng(22)
    onnx.save(_torch_style_lstm(rng), tmp_path / "in.onnx")
    settings = {"w_ih": {"sparsity": 0.0, "bits": 2}, "w_hh": {"sparsity": 0.3, "bits": 5}, "b": {"skip": True}}
    report = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "out.onnx", min_elements=100, settings=settings)
    got = {layer.name: (round(layer.sparsity, 1), layer.bits) for layer in report.layers}
    assert got == {"w_ih.folded": (0.0, 2), "w_hh.folded": (0.3, 5)}
    assert ("b.folded", "left dense by the budget allocation") in report.skipped
