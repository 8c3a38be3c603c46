"""DistillWeightsPass: after every layer of a fully connected chain is pruned (and refit layer by layer), fit all the
kept weights and the biases at once to the original model's outputs on the calibration inputs (no labels), stopped on
held-back samples; the math is in onnxcomp/core/distillation.py.

Which graphs: one float32 input, one output, and between them a chain of fully connected layers (``Gemm`` with
alpha = beta = 1 and transA = 0, or ``MatMul`` by a weight, optionally followed by an ``Add`` of a bias), each
optionally followed by a ``Relu``, with ``Identity``, ``Dropout`` (inference: identity), ``Flatten`` (axis 1) or
``Reshape`` (to [0 or -1, K]) nodes that keep each sample a row; every weight and bias a float32 initializer read by
that one node; the graph's output the last layer's. Anything else (a convolution, a branch, a softmax at the end,
a shared weight) is refused with its reason: the pass then changes nothing and says so once per process (never an
error). The chain as recognised must reproduce onnxruntime's output of the original model on the calibration
inputs (relative error below ``REPRODUCED``), else it is refused too.

The pass runs inside CompressSequentiallyPass (``--sequential``), between the walk that prunes and refits every layer
and the walk that shares them: on entry the weights' pruned values are their targets' ``values`` (``keep`` the
mask); on exit the distilled values are the graph's constants (the targets' ``original``; their ``refit`` cleared),
so the sharing walk fits each layer to the distilled model's layer outputs. The samples are split (seeded by
``seed``): ``holdout`` of them stop the fit (its error on them, after every step), the rest fit it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from onnxcomp.core import distillation

from .base import CompressionState, GraphPass, PassResult, log

HOLDOUT = 0.25  # share of the samples the fit is stopped on
MIN_SAMPLES = 8  # fewer samples: nothing to hold back (refused)
REPRODUCED = 1e-4  # the numpy chain's output must match onnxruntime's within this relative L2 error
_SAID: set[str] = set()  # refusals said already (once per process)
PASS_THROUGH = ("Identity", "Dropout")


@dataclass
class ChainLayer:
    """A layer of a recognised chain: its weight initializer (``transposed``: stored [inputs, outputs], as MatMul and
    Gemm with transB = 0 read it), its bias initializer (or None) and whether a ReLU follows."""

    weight: str
    transposed: bool
    bias: str | None
    relu: bool = False


@dataclass
class Chain:
    input: str
    output: str
    layers: list[ChainLayer]


def recognise_chain(model: onnx.ModelProto) -> Chain | str:
    """The chain of ``model`` (module docstring), or the reason it is not one (a sentence)."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        return f"it has {len(inputs)} inputs and {len(graph.output)} outputs (one of each needed)"
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        return "its input is not float32"
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    current, layers, pending = inputs[0].name, [], None  # pending: a MatMul whose bias Add may follow
    end = graph.output[0].name
    for _ in range(len(graph.node) + 1):  # a chain visits each node once at most: more steps mean a cycle
        nodes = readers.get(current, [])
        if current == end and not nodes:
            break
        if len(nodes) != 1:
            return f"the value {current} is read by {len(nodes)} nodes (a chain reads each once)"
        node = nodes[0]
        if node.domain not in ("", "ai.onnx"):
            return f"node {node.name or node.op_type} is of domain {node.domain}"
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        others = [name for name in node.input if name and name != current]
        op = node.op_type
        if pending is not None and op != "Add":
            pending = None
        if op in PASS_THROUGH:
            if op == "Dropout" and len(node.input) > 2 and node.input[2]:
                return f"Dropout node {node.name} has a training_mode input"
        elif op == "Flatten":
            if attributes.get("axis", 1) != 1:
                return f"Flatten node {node.name} has axis {attributes.get('axis')} (1 keeps each sample a row)"
        elif op == "Reshape":
            shape = initializers.get(node.input[1]) if len(node.input) > 1 else None
            dims = None if shape is None else numpy_helper.to_array(shape)
            if dims is None or dims.shape != (2,) or dims[0] not in (0, -1) or dims[1] <= 0:
                return f"Reshape node {node.name} does not reshape to [samples, features]"
        elif op == "Relu":
            if not layers or layers[-1].relu:
                return f"Relu node {node.name} follows no layer"
            layers[-1].relu = True
        elif op == "Gemm":
            if attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0 or attributes.get("transA", 0):
                return f"Gemm node {node.name} has alpha, beta or transA other than 1, 1, 0"
            if node.input[0] != current or len(node.input) < 2:
                return f"Gemm node {node.name} does not multiply the chain's value by a weight"
            bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
            layers.append(ChainLayer(node.input[1], not attributes.get("transB", 0), bias))
        elif op == "MatMul":
            if node.input[0] != current:
                return f"MatMul node {node.name} does not multiply the chain's value by a weight"
            layers.append(ChainLayer(node.input[1], True, None))
            pending = node
        elif op == "Add" and pending is not None and len(others) == 1:
            layers[-1].bias = others[0]
            pending = None
        else:
            return f"node {node.name or op} ({op}) is not part of a fully connected chain"
        if op not in ("Reshape",) and any(name not in initializers for name in others):
            return f"node {node.name or op} reads a value that is not a constant"
        if not node.output or not node.output[0]:
            return f"node {node.name or op} writes no value"
        current = node.output[0]
    else:
        return f"the graph has a cycle through {current}"
    if not layers:
        return "it has no fully connected layer"
    used = [name for layer in layers for name in (layer.weight, layer.bias) if name]
    for name in used:
        tensor = initializers[name]
        if tensor.data_type != onnx.TensorProto.FLOAT:
            return f"{name} is not float32"
        if len(readers.get(name, [])) != 1:
            return f"{name} is read by {len(readers.get(name, []))} nodes"
    width = None
    for layer in layers:
        dims = list(initializers[layer.weight].dims)
        if len(dims) != 2:
            return f"{layer.weight} is not a matrix"
        outputs, features = (dims[1], dims[0]) if layer.transposed else dims
        if width is not None and features != width:
            return f"{layer.weight} takes {features} inputs after a layer of {width} outputs"
        if layer.bias and int(np.prod(initializers[layer.bias].dims)) != outputs:
            return f"{layer.bias} does not hold one value per output of {layer.weight}"
        width = outputs
    return Chain(inputs[0].name, end, layers)


def say_once(reason: str, warn: bool = True) -> None:
    """Log ``reason`` as a warning the first time this process meets it (the budget's check set compresses many
    candidates of one model), as info later; always as info when not ``warn``."""
    if not warn or reason in _SAID:
        log.info("%s", reason)
        return
    _SAID.add(reason)
    log.warning("%s", reason)


class DistillWeightsPass(GraphPass):
    """Options: ``data`` (input name -> calibration arrays, samples on axis 0), ``holdout`` (share of the samples the
    fit stops on), ``seed`` (the split), ``learning_rate``, ``max_steps``, ``patience`` (onnxcomp/core/distillation.py),
    ``explicit``: the user asked for it (``--distill``), so a refusal is a warning; on by default with ``--sequential``
    it is an info line (``-v``): most graphs are no fully connected chain, and nothing was asked of them."""

    def __init__(self, *, data: dict[str, np.ndarray], holdout: float = HOLDOUT, seed: int = 0,
                 learning_rate: float = distillation.LEARNING_RATE, max_steps: int = distillation.MAX_STEPS,
                 patience: int = distillation.PATIENCE, explicit: bool = False) -> None:
        self.data, self.holdout, self.seed, self.explicit = data, holdout, seed, explicit
        self.learning_rate, self.max_steps, self.patience = learning_rate, max_steps, patience
        self.result: distillation.FitResult | None = None  # the last run's fit
        # the last run's (chain, inputs [N, K_0] float64, original outputs [N, K_L] float64, fit rows, held-back rows)
        # when it distilled (TuneCodebooksPass fits the shared chain on the same samples and split), else None
        self.context: tuple | None = None

    def refusal(self, model: onnx.ModelProto) -> str | None:
        """Why this pass would not distil ``model`` (the original), or None. Said once per process."""
        chain = recognise_chain(model)
        reason = chain if isinstance(chain, str) else None
        if reason is None and (chain.input not in self.data or len(self.data[chain.input]) < MIN_SAMPLES):
            reason = f"fewer than {MIN_SAMPLES} calibration samples"
        if reason is not None:
            say_once(f"distillation skipped: {reason}", self.explicit)
        return reason

    def run(self, state: CompressionState) -> PassResult:
        self.context = None
        model = gs.export_onnx(state.graph.copy())  # its constants are still the original's (module docstring)
        if self.refusal(model) is not None:
            return PassResult(False, "not a fully connected chain")
        chain = recognise_chain(model)
        constants = {name: t for name, t in state.graph.tensors().items() if isinstance(t, gs.Constant)}
        targets = {t.name: t for t in state.targets}
        original = [self._layer(layer, constants, {}) for layer in chain.layers]
        start = [self._layer(layer, constants, targets) for layer in chain.layers]
        x = np.asarray(self.data[chain.input], dtype=np.float64)
        x = x.reshape(len(x), -1)
        expected = self._original_outputs(model, chain, len(x))
        reproduced = distillation.output(original, x)
        mismatch = float(np.linalg.norm(reproduced - expected) / max(np.linalg.norm(expected), 1e-30))
        if mismatch > REPRODUCED:
            say_once(f"distillation skipped: the chain as recognised does not reproduce the model's output "
                     f"(relative error {mismatch:.2g})", self.explicit)
            return PassResult(False, "chain not reproduced")
        order = np.random.default_rng(self.seed).permutation(len(x))
        held = max(1, int(round(self.holdout * len(x))))
        stop, fit = np.sort(order[:held]), np.sort(order[held:])
        result = distillation.fit(start, x[fit], expected[fit], x[stop], expected[stop], learning_rate=self.learning_rate,
                                  max_steps=self.max_steps, patience=self.patience, dtype=np.float32)
        self.result = result
        self.context = (chain, x, expected, fit, stop)
        log.info("distillation: held-back output error %.4g -> %.4g (step %d of %d; %d samples fit, %d held back)",
                 result.start_error, result.best_error, result.best_step, result.steps, len(fit), len(stop))
        fitted = result.layers if result.best_step > 0 else start
        for layer, values in zip(chain.layers, fitted):
            weight = values.weight.T if layer.transposed else values.weight
            self._write(layer.weight, weight, constants, targets)
            if layer.bias is not None:
                self._write(layer.bias, values.bias, constants, targets)
        return PassResult(result.best_step > 0, f"distilled {len(chain.layers)} layers: held-back error "
                                                f"{result.start_error:.4g} -> {result.best_error:.4g}")

    @staticmethod
    def _values(name: str, constants: dict, targets: dict) -> tuple[np.ndarray, np.ndarray | None]:
        """A tensor's current values (a target's pruned refit when it has one) and its keep mask (None: all kept)."""
        target = targets.get(name)
        if target is None:
            return np.asarray(constants[name].values, dtype=np.float64), None
        keep = None if target.keep is None else np.asarray(target.keep, dtype=bool).reshape(target.shape)
        values = np.asarray(target.values, dtype=np.float64).reshape(target.shape)
        return (values if keep is None else np.where(keep, values, 0.0)), keep

    def _layer(self, layer: ChainLayer, constants: dict, targets: dict) -> distillation.DenseLayer:
        weight, weight_keep = self._values(layer.weight, constants, targets)
        if layer.transposed:
            weight = weight.T
            weight_keep = None if weight_keep is None else weight_keep.T
        bias, bias_keep = (None, None) if layer.bias is None else self._values(layer.bias, constants, targets)
        if bias is not None:
            bias = bias.reshape(-1)
            bias_keep = None if bias_keep is None else bias_keep.reshape(-1)
        return distillation.DenseLayer(np.ascontiguousarray(weight), bias, layer.relu, weight_keep, bias_keep)

    def _original_outputs(self, model: onnx.ModelProto, chain: Chain, count: int) -> np.ndarray:
        """The original model's output on the samples, [samples, outputs] float64 (onnxruntime)."""
        from onnxcomp.passes.calibration import _session, run_batched
        output = run_batched(_session(model), {chain.input: np.asarray(self.data[chain.input], dtype=np.float32)})[0]
        return np.asarray(output, dtype=np.float64).reshape(count, -1)

    @staticmethod
    def _write(name: str, values: np.ndarray, constants: dict, targets: dict) -> None:
        """The distilled values become the constant's (float32, its shape); a target's refit is cleared (its
        ``original`` is now the distilled weight)."""
        constant = constants[name]
        constant.values = np.ascontiguousarray(values, dtype=np.float32).reshape(tuple(constant.shape))
        if name in targets:
            targets[name].refit = None
