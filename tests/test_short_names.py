"""Short node and tensor names in the written model (onnxcomp/passes/short_names.py): the same computation in fewer
bytes; the names a caller uses (graph inputs and outputs), the weights' names and the records are untouched."""

import filecmp
import os

import numpy as np
import onnx
from onnx import TensorProto, helper

import onnxcomp
from onnxcomp.core import sidecar
from onnxcomp.passes.model_io import graphs_of
from onnxcomp.passes.short_names import shorten_names

from conftest import float_input, make_model, run_compressed, run_plain, weight

MODELS = os.path.join(os.path.dirname(__file__), "..", "models")
LONG = "jax2tf_get_logits_/pjit_get_logits_/Model/Dense_0/"


def if_model(rng) -> onnx.ModelProto:
    """x [2, 8] -> MatMul -> an If whose branches read the MatMul's output from the outer scope -> Add -> y; long
    names, plus an initializer called ``a`` and a node called ``b``, the first names the renaming would hand out."""
    then_branch = helper.make_graph([helper.make_node("Relu", [LONG + "MatMul:0"], [LONG + "then/Relu:0"], name=LONG + "then/Relu")],
                                    "then", [], [float_input(LONG + "then/Relu:0", [2, 4])])
    else_branch = helper.make_graph([helper.make_node("Neg", [LONG + "MatMul:0"], [LONG + "else/Neg:0"], name=LONG + "else/Neg")],
                                    "else", [], [float_input(LONG + "else/Neg:0", [2, 4])])
    nodes = [helper.make_node("MatMul", ["x", LONG + "kernel"], [LONG + "MatMul:0"], name="b"),
             helper.make_node("If", ["flag"], [LONG + "If:0"], name=LONG + "If", then_branch=then_branch, else_branch=else_branch),
             helper.make_node("Add", [LONG + "If:0", "a"], ["y"], name=LONG + "Add")]
    return make_model(nodes, [float_input("x", [2, 8]), helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                      [float_input("y", [2, 4])], [weight(rng, LONG + "kernel", (8, 4)), weight(rng, "a", (4,))])


def names(model: onnx.ModelProto) -> tuple[list[str], set[str]]:
    """(every node name, every tensor name) over all graphs."""
    graphs = list(graphs_of(model.graph))
    nodes = [n.name for g in graphs for n in g.node]
    tensors = {t for g in graphs for n in g.node for t in [*n.input, *n.output]}
    return nodes, tensors


def test_names_shorten_and_the_outputs_stay_bit_identical(rng):
    """Nodes and intermediate tensors (an If branch's reads of the outer scope included) get short unique names that
    avoid the names the model keeps; the graph's inputs and outputs and the initializers keep theirs; onnxruntime
    computes the same bits; the same model gets the same names every time."""
    model = if_model(rng)
    x = rng.standard_normal((2, 8)).astype(np.float32)
    before = [run_plain(model, {"x": x, "flag": np.array(flag)})[0] for flag in (True, False)]
    short = onnx.ModelProto()
    short.CopyFrom(model)
    renamed = shorten_names(short)
    assert len(renamed) == 5 + 4  # 3 nodes and 1 in each branch; MatMul:0, If:0 and the branches' outputs
    first, was = short.graph.node[0], model.graph.node[0]
    assert renamed[first.name] == was.name and renamed[first.output[0]] == was.output[0]  # the map traces names back
    onnx.checker.check_model(short, full_check=True)
    assert model.ByteSize() - short.ByteSize() > 5 * len(LONG)
    nodes, tensors = names(short)
    assert len(set(nodes)) == len(nodes) and all(len(n) == 1 for n in nodes) and {"a", "b"}.isdisjoint(nodes)
    assert tensors == {"x", "flag", "y", "a", LONG + "kernel"} | {t for t in tensors if len(t) == 1 and t not in "ab"}
    assert [i.name for i in short.graph.input] == ["x", "flag"] and [o.name for o in short.graph.output] == ["y"]
    assert [t.name for t in short.graph.initializer] == [LONG + "kernel", "a"]
    branch = short.graph.node[1].attribute[0].g
    assert branch.node[0].input[0] == short.graph.node[0].output[0]  # the outer-scope read follows the rename
    after = [run_plain(short, {"x": x, "flag": np.array(flag)})[0] for flag in (True, False)]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)
    again = onnx.ModelProto()
    again.CopyFrom(model)
    shorten_names(again)
    assert again.SerializeToString() == short.SerializeToString()


def test_no_short_name_is_a_python_keyword(rng):
    """A chain long enough to reach the two- and three-letter names (``as``, ``if``, ``in``, ``and``, ``for``...: a
    Python keyword breaks tools that turn nodes into Python attributes, such as onnx2torch) gets none of them, and
    still computes the same bits."""
    import keyword
    from onnxcomp.passes.short_names import PYTHON_KEYWORDS
    assert PYTHON_KEYWORDS == set(keyword.kwlist)  # the written-out list is this Python's
    count = 3600  # 7,200 names: past "and", the 4,215th (53 one-letter names, 53 x 63 two-letter ones, then "aaa"..)
    nodes = [helper.make_node("Relu" if i % 2 else "Neg", [f"{LONG}{i}" if i else "x"], [f"{LONG}{i + 1}" if i < count - 1 else "y"],
                              name=f"{LONG}node{i}") for i in range(count)]
    model = make_model(nodes, [float_input("x", [2, 3])], [float_input("y", [2, 3])], [])
    x = rng.standard_normal((2, 3)).astype(np.float32)
    short = onnx.ModelProto()
    short.CopyFrom(model)
    shorten_names(short)
    node_names, tensors = names(short)
    given = set(node_names) | tensors
    assert PYTHON_KEYWORDS.isdisjoint(given)
    assert {"ar", "at", "ie", "ig", "anc", "ane"} <= given  # the neighbours of "as", "if" and "and" are handed out
    assert np.array_equal(run_plain(short, {"x": x})[0], run_plain(model, {"x": x})[0])


def test_compress_writes_short_names_unless_asked_to_keep_them(tmp_path):
    """The default output and the --keep-names output hold the same sidecar bytes and compute the same bits; the
    default model file is smaller, with short node names and the same graph inputs, outputs and initializers;
    decompress gives the same weights under the same names from either."""
    source = os.path.join(MODELS, "lenet5_fashion.onnx")
    short, kept = tmp_path / "short.onnx", tmp_path / "kept.onnx"
    report = onnxcomp.compress(source, short, fidelity=False)
    kept_report = onnxcomp.compress(source, kept, fidelity=False, keep_names=True)
    assert kept_report.names == {}
    assert filecmp.cmp(sidecar.sidecar_path(str(short)), sidecar.sidecar_path(str(kept)), shallow=False)
    original = onnx.load(source)
    a, b = onnx.load(short, load_external_data=False), onnx.load(kept, load_external_data=False)
    assert os.path.getsize(short) < os.path.getsize(kept)
    assert [n.name for n in b.graph.node] != [n.name for n in a.graph.node]
    assert all(len(n.name) <= 2 for n in a.graph.node)
    # the report traces every short name back to the --keep-names output's (same passes, same order)
    assert [report.names[n.name] for n in a.graph.node] == [n.name for n in b.graph.node]
    for field in ("input", "output"):
        assert [v.name for v in getattr(a.graph, field)] == [v.name for v in getattr(b.graph, field)] \
            == [v.name for v in getattr(original.graph, field)]
    # the initializers the writer made up (records, float16 copies) get short names the report traces back; the
    # input's own keep theirs
    given = {t.name for t in original.graph.initializer}
    assert [report.names.get(t.name, t.name) for t in a.graph.initializer] == [t.name for t in b.graph.initializer]
    made_up = [t for t in a.graph.initializer if t.name not in given]
    assert made_up and all(len(t.name) <= 2 and t.name in report.names for t in made_up)
    assert {report.names[t.name] for t in made_up} == {t.name for t in b.graph.initializer if t.name not in given}
    records = [t for t in a.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert len(records) == 3 and all(report.names[t.name].endswith(".onnxcomp_record") for t in records)
    # inspect names every weight, compressed or dense float16, as it does from the --keep-names output
    listed = [(w.name, w.storage, w.bits, w.stored_bytes) for w in onnxcomp.inspect(short).weights]
    assert listed == [(w.name, w.storage, w.bits, w.stored_bytes) for w in onnxcomp.inspect(kept).weights]
    assert ("conv1.weight", "dense", 16) in {w[:3] for w in listed}
    x = np.random.default_rng(0).random((4, *[d.dim_value for d in original.graph.input[0].type.tensor_type.shape.dim[1:]])).astype(np.float32)
    feed = {original.graph.input[0].name: x}
    np.testing.assert_array_equal(run_compressed(short, feed)[0], run_compressed(kept, feed)[0])
    decompressed = []
    for path, trace in ((short, report.names), (kept, {})):
        onnxcomp.decompress(path, tmp_path / "dense.onnx")
        dense = onnx.load(tmp_path / "dense.onnx")  # (a float16 weight stays float16 under its stored name, Cast kept)
        decompressed.append(sorted(trace.get(t.name, t.name) for t in dense.graph.initializer))
    assert decompressed[0] == decompressed[1]
    assert {"conv2.weight", "fc1.weight", "fc2.weight"} <= set(decompressed[0])
    # a dense weight widened by a Cast keeps its name as the Cast's output (what its readers read)
    assert "conv1.weight" in {o for n in a.graph.node if n.op_type == "Cast" for o in n.output}


def test_keep_names_on_the_command_line(tmp_path):
    """``onnxcomp compress --keep-names`` writes the input's node names; without it they are short."""
    from test_cli import onnxcomp as cli
    source = os.path.join(MODELS, "lenet300_fashion.onnx")
    original = {n.name for n in onnx.load(source).graph.node}
    for flag, out in (("--keep-names", tmp_path / "kept.onnx"), (None, tmp_path / "short.onnx")):
        result = cli("compress", source, out, "--no-fidelity", "-q", *([flag] if flag else []))
        assert result.returncode == 0, result.stderr
        written = {n.name for n in onnx.load(out, load_external_data=False).graph.node}
        if flag:  # the input's names, and the float16 Cast's made-up one
            assert original < written and all(n.endswith("_cast") for n in written - original)
        else:
            assert written.isdisjoint(original) and all(len(n) == 1 for n in written)
