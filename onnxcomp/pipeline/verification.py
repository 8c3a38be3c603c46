"""``onnxcomp verify``: run the original and the compressed model on the same inputs and compare outputs.

Per output, with a the original's values and b the compressed model's (flattened over the batch):
max abs error max|a - b|; relative L2 error ||a - b|| / ||a||; cosine similarity a.b / (||a|| ||b||);
and, for outputs that are class scores (float [N, C], C >= 2, computed by a linear layer, possibly through
Softmax/LogSoftmax/Sigmoid or a reshape: ``class_score_outputs``), top-1 agreement: the share of samples whose
argmax is the same in both; features such as pooled embeddings get none, whatever their shape. Inputs come from a data file, or are drawn from the
declared input shapes with a seeded generator: floats uniform in [0, 1), integers 0 (dynamic dims: the
batch gets ``samples``, others 1). Random inputs say nothing about accuracy; they only catch gross breakage.

Per-layer attribution (``per_layer=True``, for models written by ``onnxcomp compress``): each compressed weight
is decoded from the compressed model (sidecar record or portable lookup, in its original orientation) and put
ALONE into the original model, every other weight left original; the first output on the same inputs is
compared with the original's by the same four metrics. A layer's share is its relative L2 error over the sum of
all layers' relative L2 errors. Main-graph weights become graph inputs of one probe session (as in the budget's
sensitivity analysis, onnxcomp/autotune.py); a weight inside an If/Loop/Scan body is substituted in a copy.
When the layers' errors interact, their sum differs from the whole model's error: both are reported.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from onnx import numpy_helper

from onnxcomp.passes import model_io
from onnxcomp.passes.fold_weights import FOLDED_NAME
from onnxcomp import progress
from onnxcomp.errors import CalibrationError, UnsupportedModelError
from onnxcomp.passes.calibration import run_batched
from onnxcomp.pipeline.evaluate import NOT_INPUTS, load_data, open_session, session_specs
from onnxcomp.pipeline.inspection import DOMAIN, stored_weights

log = logging.getLogger("onnxcomp")
DEFAULT_RANDOM_SAMPLES = 64


@dataclass
class OutputComparison:
    name: str
    shape: list[int]
    max_abs_error: float
    relative_l2_error: float
    cosine: float
    top1_agreement: float | None  # None when the output is not class scores


@dataclass
class LayerAttribution:
    """The first output's error when only this weight is compressed (see the module docstring)."""

    name: str
    shape: list[int]
    bits: int  # index bits as stored
    codebook_size: int
    sparsity: float  # share of weights decoding to exactly 0
    max_abs_error: float
    relative_l2_error: float
    cosine: float
    top1_agreement: float | None
    share: float  # relative_l2_error / the sum over all layers


@dataclass
class Verification:
    original_path: str
    compressed_path: str
    inputs: str  # the data file, or "random (seed S)"
    samples: int
    outputs: list[OutputComparison] = field(default_factory=list)
    per_layer_output: str | None = None  # with per_layer: the output the layers' errors are measured on
    layers: list[LayerAttribution] | None = None  # with per_layer: worst first

    @property
    def layers_error_sum(self) -> float | None:
        """The per-layer relative L2 errors added up (compare with the whole model's: they rarely add exactly)."""
        return None if self.layers is None else sum(layer.relative_l2_error for layer in self.layers)

    @property
    def min_cosine(self) -> float:
        return min(o.cosine for o in self.outputs)

    @property
    def min_top1(self) -> float | None:
        values = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        return min(values) if values else None

    def failures(self, min_cosine: float | None = None, min_top1: float | None = None) -> list[str]:
        """Each threshold the comparison misses, as a sentence (empty when all pass)."""
        problems = []
        for o in self.outputs:
            if min_cosine is not None and not o.cosine >= min_cosine:
                problems.append(f"output {o.name!r}: cosine {o.cosine:.6f} is below {min_cosine}")
            if min_top1 is not None and o.top1_agreement is not None and not o.top1_agreement >= min_top1:
                problems.append(f"output {o.name!r}: top-1 agreement {o.top1_agreement:.4f} is below {min_top1}")
        if min_top1 is not None and self.min_top1 is None:
            problems.append("--min-top1 given, but no output is class scores (float [N, C] from a linear layer)")
        return problems

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(min_cosine=self.min_cosine, min_top1=self.min_top1, layers_error_sum=self.layers_error_sum)
        return data


def random_inputs(session: ort.InferenceSession, samples: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, shape, dtype in session_specs(session):
        dims = [samples if i == 0 and d is None else (d or 1) for i, d in enumerate(shape)]
        if shape and shape[0] is not None:  # a fixed batch: as many full batches as fit in ``samples``
            dims[0] = shape[0] * max(1, samples // shape[0])
        if dtype.kind == "f":
            inputs[name] = rng.random(dims).astype(dtype)
        else:
            inputs[name] = np.zeros(dims, dtype)  # integer inputs (indices) have no safe range to draw from
    return inputs


# Class scores: a linear layer's output ([N, C], C >= 2), possibly through these before it leaves the graph.
SCORE_LAYERS = {("", "Gemm"), ("", "MatMul"), (DOMAIN, "CodebookMatMul")}
SCORE_PASS_THROUGH = {"Add", "Softmax", "LogSoftmax", "Sigmoid", "Identity", "Reshape", "Flatten", "Squeeze", "Cast"}


def class_score_outputs(model: onnx.ModelProto) -> set[str]:
    """The graph outputs that are class scores: computed by a linear layer (Gemm, MatMul or CodebookMatMul,
    bias Add included), possibly followed by Softmax, LogSoftmax, Sigmoid or a reshape. Features such as pooled
    embeddings (GlobalAveragePool, ReduceMean, a normalisation, an activation) are not, whatever their shape."""
    producers = {output: node for node in model.graph.node for output in node.output}
    # constants: initializers, Constant nodes' outputs (Paddle exports hold a head's weight and bias in Constant nodes:
    # ppocr-cls) and the outputs of nodes that read constants only (a Cast of a float16 bias), in graph order
    constants = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.domain in ("", "ai.onnx") and (node.op_type == "Constant" or
                                               node.input and all(i and i in constants for i in node.input)):
            constants.update(o for o in node.output if o)
    scores = set()
    for output in model.graph.output:
        name, steps = output.name, 0
        while (node := producers.get(name)) is not None and steps < len(model.graph.node):
            steps += 1
            if (node.domain if node.domain != "ai.onnx" else "", node.op_type) in SCORE_LAYERS:
                scores.add(output.name)
                break
            if node.domain not in ("", "ai.onnx") or node.op_type not in SCORE_PASS_THROUGH or not node.input:
                break
            inputs = [i for i in node.input if i and i not in constants]  # an Add's bias is a constant
            if len(inputs) != 1:
                break
            name = inputs[0]
    return scores


def compare(a: np.ndarray, b: np.ndarray, name: str, class_scores: bool = True) -> OutputComparison:
    if a.shape != b.shape:
        raise UnsupportedModelError(f"output {name!r} has shape {list(a.shape)} in the original, {list(b.shape)} compressed")
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    norm_x, norm_y = np.linalg.norm(x), np.linalg.norm(y)
    difference = np.linalg.norm(x - y)
    cosine = 1.0 if norm_x == norm_y == 0 else float(x @ y / (norm_x * norm_y)) if norm_x and norm_y else 0.0
    top1 = None
    if class_scores and a.dtype.kind == "f" and a.ndim == 2 and a.shape[1] >= 2:
        top1 = float(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))
    return OutputComparison(name, list(a.shape), float(np.abs(x - y).max(initial=0.0)),
                            float(difference / norm_x) if norm_x else float(difference), cosine, top1)


@progress.with_progress
def verify(original_path: str, compressed_path: str, calib: str | None = None, *, samples: int | None = None,
           seed: int = 0, batch: int = 256, per_layer: bool = False) -> Verification:
    """Compare the outputs of ``compressed_path`` with those of ``original_path`` (see the module docstring).

    ``samples`` caps the samples read from ``calib``; without ``calib`` it is the random batch size (default 64).
    ``per_layer`` adds the error of each compressed weight alone (``Verification.layers``, worst first).
    ``progress=callback`` receives the progress of the runs (onnxcomp/progress.py).
    """
    if samples is not None and samples < 1:
        raise CalibrationError(f"samples {samples} must be at least 1")
    original_path, compressed_path = os.fspath(original_path), os.fspath(compressed_path)
    reference, candidate = open_session(original_path), open_session(compressed_path)
    names = [o.name for o in reference.get_outputs()]
    if names != [o.name for o in candidate.get_outputs()]:
        raise UnsupportedModelError(f"the models have different outputs: {names} and {[o.name for o in candidate.get_outputs()]}")
    if calib:
        inputs = load_data(os.fspath(calib), reference)
        for name in NOT_INPUTS:
            inputs.pop(name, None)
        inputs = {k: v[:samples] for k, v in inputs.items()} if samples else inputs
        source = os.fspath(calib)
    else:
        inputs = random_inputs(reference, samples or DEFAULT_RANDOM_SAMPLES, seed)
        source = f"random (seed {seed})"
    count = next((len(v) for v in inputs.values() if np.ndim(v)), 1)
    result = Verification(original_path, compressed_path, source, count)
    expected = _run(reference, inputs, count, batch, source)
    actual = _run(candidate, inputs, count, batch, source)
    scores = class_score_outputs(onnx.load(original_path, load_external_data=False))
    for name, a, b in zip(names, expected, actual):
        result.outputs.append(compare(a, b, name, name in scores))
    if per_layer:
        result.per_layer_output = names[0]
        result.layers = attribute_layers(original_path, compressed_path, inputs, count, batch, source, expected[0],
                                         names[0] in scores)
    return result


def _run(session: ort.InferenceSession, inputs: dict[str, np.ndarray], count: int, batch: int, source: str,
         extra: dict[str, np.ndarray] | None = None, outputs: list[str] | None = None) -> list[np.ndarray]:
    """``session``'s outputs on ``inputs`` (plus the unbatched ``extra`` feeds), run ``batch`` samples at a time."""
    try:
        return run_batched(session, inputs, batch, outputs, extra)
    except CalibrationError:
        raise
    except Exception as error:  # onnxruntime's errors on bad feeds
        raise CalibrationError(f"running the models failed on {source}: {error}") from error


def attribute_layers(original_path: str, compressed_path: str, inputs: dict[str, np.ndarray], count: int, batch: int,
                     source: str, expected: np.ndarray, class_scores: bool = True) -> list[LayerAttribution]:
    """Each compressed weight's error alone on the first output (``expected``: the original's), worst first."""
    from onnxcomp.pipeline.autotune import _session, _weight_as_input
    stored = {w.name: w for w in stored_weights(model_io.load_model(compressed_path, external_data=False),
                                                 compressed_path).values()}
    if not stored:
        raise UnsupportedModelError(f"{compressed_path} holds no compressed weight (sidecar record or portable lookup): "
                                    "--per-layer needs a model written by onnxcomp compress")
    model = model_io.load_model(original_path)
    model_io.constants_to_initializers(model.graph)  # as compress does, so weights held by Constant nodes are found
    everywhere = {t.name: t for graph in model_io.graphs_of(model.graph) for t in graph.initializer}
    # A recurrent weight folded from a constant chain (passes/fold_weights.py) is no tensor of the original model:
    # it cannot be put into it alone, so it has no row.
    stored = {name: weight for name, weight in stored.items()
              if name in everywhere or not FOLDED_NAME.search(name)}
    for name, weight in stored.items():
        tensor = everywhere.get(name)
        if tensor is None:
            raise UnsupportedModelError(f"{compressed_path} stores the weight {name!r}, which {original_path} does not have: "
                                        "was it compressed from another model?")
        if tuple(tensor.dims) != tuple(weight.shape):
            raise UnsupportedModelError(f"weight {name!r} has shape {list(tensor.dims)} in {original_path}, "
                                        f"{list(weight.shape)} in {compressed_path}: was it compressed from another model?")
    # Main-graph weights numpy can hold are fed as inputs; bfloat16 ones are substituted in a copy, like subgraph weights.
    main = {t.name for t in model.graph.initializer if t.data_type != onnx.TensorProto.BFLOAT16}
    originals = {name: numpy_helper.to_array(everywhere[name]) for name in stored if name in main}
    first = model.graph.output[0].name
    probe = _session(_weight_as_input(model, originals)) if originals else None
    layers = []
    for name, weight in progress.track(stored.items(), "per-layer verification"):
        decoded = weight.dense()
        if name in originals:
            decoded = decoded.astype(originals[name].dtype)
            output = _run(probe, inputs, count, batch, source, {**originals, name: decoded}, [first])[0]
        else:  # inside a subgraph: substitute the initializer in a copy
            copy = model_io.substituted(model, {name: decoded})
            output = _run(_session(copy), inputs, count, batch, source, outputs=[first])[0]
        metrics = compare(expected, output, first, class_scores)
        layers.append(LayerAttribution(name, list(weight.shape), weight.bits, len(weight.codebook), round(weight.sparsity, 6),
                                       metrics.max_abs_error, metrics.relative_l2_error, metrics.cosine,
                                       metrics.top1_agreement, 0.0))
    total = sum(layer.relative_l2_error for layer in layers)
    for layer in layers:
        layer.share = layer.relative_l2_error / total if total > 0 else 0.0
    layers.sort(key=lambda layer: (-layer.relative_l2_error, layer.name))
    return layers
