"""Shared helpers: tiny seeded models and runners for the original and the compressed form."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcomp
from onnxcomp.pipeline.compression import decoded_weights


def make_model(nodes, inputs, outputs, initializers, opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8  # what opset 17 needs; onnx may default to an IR onnxruntime cannot read yet
    onnx.checker.check_model(model, full_check=True)
    return model


def float_input(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def weight(rng, name, shape, scale=1.0):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def nodes_by_name(model: onnx.ModelProto) -> tuple[dict, dict]:
    """(name -> node, name -> {attribute name: value}) of the model's top-level graph."""
    by_name = {n.name: n for n in model.graph.node}
    return by_name, {name: {a.name: helper.get_attribute_value(a) for a in n.attribute} for name, n in by_name.items()}


def run_plain(model_or_path, feeds):
    source = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feeds)


def session_with_env(model: onnx.ModelProto, env: dict[str, str] | None = None, threads: int = 1) -> ort.InferenceSession:
    """A session with the custom-op library, created while the variables ``env`` are set (kernels read them at
    creation), then restored."""
    import os

    saved = {key: os.environ.get(key) for key in (env or {})}
    os.environ.update(env or {})
    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        return ort.InferenceSession(model.SerializeToString(), onnxcomp.runtime.session_options(options),
                                    providers=["CPUExecutionProvider"])
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_compressed(path, feeds):
    return onnxcomp.InferenceSession(str(path)).run(None, feeds)


def reference_model(original: onnx.ModelProto, sidecar_file: str, float16=()) -> onnx.ModelProto:
    """The original graph with each compressed weight replaced by the numpy decoder's output, and each weight the
    output stores as float16 (``float16``: the report's (name, elements) list) rounded through binary16."""
    decoded = decoded_weights(sidecar_file)
    model = onnx.ModelProto()
    model.CopyFrom(original)
    halved = {name for name, _ in float16}
    for tensor in model.graph.initializer:
        if tensor.name in halved:
            rounded = numpy_helper.to_array(tensor).astype(np.float16).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(rounded, tensor.name))
        if tensor.name in decoded:
            tensor.CopyFrom(numpy_helper.from_array(decoded.pop(tensor.name), tensor.name))
    for node in list(model.graph.node):  # weights that were Constant nodes
        if node.op_type == "Constant" and node.output[0] in decoded:
            node.attribute[0].t.CopyFrom(numpy_helper.from_array(decoded.pop(node.output[0]), node.output[0]))
    assert not decoded, f"sidecar names not found in the original: {list(decoded)}"
    return model


def budget_mlp(tmp_path, rng):
    """A two-Gemm MLP saved as in.onnx and 80 seeded calibration samples in calib.npz: the budget tests' model."""
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1)]
    model = make_model(nodes, [float_input("x", ["n", 32])], [float_input("y", ["n", 8])],
                       [weight(rng, "w1", (48, 32), 0.3), weight(rng, "w2", (8, 48), 0.3)])
    onnx.save(model, tmp_path / "in.onnx")
    data = tmp_path / "calib.npz"
    np.savez(data, x=rng.standard_normal((80, 32)).astype(np.float32))
    return model, data


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
