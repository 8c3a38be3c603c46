"""``--budget-output NAME[SLICE]``: the part of an output a quality budget measures.

A detector's raw output mixes what decides a detection with what only places it: the zoo's ddddocr-det writes
``output`` [1, 3549, 6] (4 box coordinates, an objectness and a class score per anchor), YOLOv8 ``output0``
[batch, 4 + classes, anchors]. A budget on the whole output is dominated by the box coordinates, so a search that
meets it can still move the few scores near the threshold (docs/benchmarks.md, calzoo8). A numpy-style slice on one
axis names the part to measure: ``output[..., 4:6]``, ``output0[:, 4:]``.

Grammar (numpy's basic slicing, restricted): ``NAME[ITEM, ITEM, ...]``, each ITEM ``...`` (at most once), ``:``
(the whole axis), ``start:stop`` or ``start:stop:step`` (each part an integer, possibly negative, or empty; step
>= 1) or an integer ``i`` (the length-1 slice ``i:i+1``, keeping the axis). Exactly one ITEM may select less than
its whole axis, and not axis 0, which holds the calibration samples. Items before ``...`` count axes from the first
(axis 0 = samples), items after it from the last.

The measured model gets an ONNX ``Slice`` (opset >= 10; its starts/ends/axes/steps as int64 initializers) whose
output becomes its first output; a written model, which keeps its outputs as given, is run on NAME and sliced
in numpy with the same slice (``BudgetOutput.take``), which follows the same rules as ONNX ``Slice`` for a
positive step (bounds clamped to the axis).

Several parts (``--budget-output`` given more than once, each an output or a slice): a detector's boxes and scores
come from separate head branches, so a budget on the scores alone would let the search destroy the weights that
only place boxes, and one on the whole output hardly sees the scores (YOLOv8's box coordinates are pixels, RMS
about 145 on the zoo's crops, its class scores RMS 0.004). The budget then measures the **balanced
concatenation**: each part flattened per sample, in float64, divided by the root mean square of its per-sample L2 norm,
``s_k = sqrt(S_k / n)``, in the original model's output on the held-back samples (``S_k`` the sum of its squares over
those n samples), and the parts concatenated. Its pooled relative L2 error is then
``sqrt(sum_k (E_k / S_k) / K)`` (``E_k`` the part's summed squared error): the root mean square of the parts' own
relative L2 errors on those samples, so ``rel_l2=B`` keeps every part within ``sqrt(K) B`` there and their RMS
within B, whatever their units. Only ``rel_l2`` and ``cosine`` budgets take several parts.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import onnx

from onnxcomp.errors import OnnxcompError

_INT = r"\s*-?\d+\s*"
_PART = re.compile(rf"^(?:{_INT})?$")
INT64_MAX = np.iinfo(np.int64).max


@dataclasses.dataclass(frozen=True)
class BudgetOutput:
    """The output a budget measures: ``name`` (an output of the model) and, when sliced, ``axis`` (negative: from
    the last axis), ``start``, ``stop`` (None: to the end), ``step`` (>= 1); ``text`` is what the user wrote."""
    name: str
    text: str
    axis: int | None = None
    start: int = 0
    stop: int | None = None
    step: int = 1

    @property
    def sliced(self) -> bool:
        return self.axis is not None

    def take(self, array: np.ndarray) -> np.ndarray:
        """``array`` (the output NAME, samples on axis 0) sliced as the measured model's Slice node slices it."""
        if not self.sliced:
            return array
        index = [slice(None)] * array.ndim
        index[self.axis] = slice(self.start, self.stop, self.step)
        return array[tuple(index)]


def _error(text: str, why: str) -> OnnxcompError:
    return OnnxcompError(f"--budget-output {text!r}: {why}")


def parse(text: str, outputs: list[str]) -> BudgetOutput:
    """``text`` (``NAME`` or ``NAME[SLICE]``, module docstring) against the model's output names ``outputs``.

    An output whose whole name is ``text`` wins over a slice (an output may be named ``x[0]``). Raises OnnxcompError
    (one line) when NAME is not an output, or the slice is malformed, selects the whole output, slices more than one
    axis, slices axis 0 (the samples) or has a step below 1."""
    if text in outputs:
        return BudgetOutput(text, text)
    name = next((o for o in outputs if text.startswith(o + "[") and text.endswith("]")), None)
    if name is None:
        raise OnnxcompError(f"--budget-output {text!r} is not an output of the model (its outputs: "
                            f"{', '.join(repr(o) for o in outputs)}; a slice of one is written NAME[...], e.g. "
                            "output[..., 4:6])")
    items = [item.strip() for item in text[len(name) + 1:-1].split(",")]
    if items.count("...") > 1:
        raise _error(text, "'...' may appear once")
    chosen = []  # (position, start, stop, step) of the items that select less than their whole axis
    for position, item in enumerate(items):
        if item == "...":
            continue
        parts = item.split(":")
        if len(parts) > 3 or not all(_PART.match(p) for p in parts):
            raise _error(text, f"{item!r} is not a slice: write start:stop[:step] (integers, each may be empty), "
                               "an integer, ':' or '...'")
        if len(parts) == 1:
            if not parts[0].strip():
                raise _error(text, "an empty item: write ':' for a whole axis")
            index = int(parts[0])
            start, stop, step = index, (None if index == -1 else index + 1), 1
        else:
            start = int(parts[0]) if parts[0].strip() else 0
            stop = int(parts[1]) if parts[1].strip() else None
            step = int(parts[2]) if len(parts) == 3 and parts[2].strip() else 1
            if step < 1:
                raise _error(text, f"{item!r}: the step must be 1 or more")
            if start == 0 and stop is None and step == 1:
                continue  # the whole axis
        chosen.append((position, start, stop, step))
    if not chosen:
        raise _error(text, "the slice selects the whole output: name the output alone, or slice one axis")
    if len(chosen) > 1:
        raise _error(text, "slice one axis only (the others ':' or '...')")
    position, start, stop, step = chosen[0]
    ellipsis = items.index("...") if "..." in items else len(items)
    axis = position if position < ellipsis else position - len(items)
    if axis == 0:
        raise _error(text, "axis 0 holds the calibration samples: slice another axis")
    return BudgetOutput(name, text, axis, start, stop, step)


def add_slice(model: onnx.ModelProto, chosen: BudgetOutput) -> onnx.ValueInfoProto:
    """Append to ``model`` (in place) a ``Slice`` of output ``chosen.name`` and return the new output's value info,
    named ``chosen.text`` (not yet listed among the graph's outputs). The axis is resolved against the output's
    rank where the model declares it (then a slice of axis 0 from the end, or past the rank, is refused);
    ``Slice`` needs opset 10, a negative axis opset 11.

    Raises OnnxcompError when the axis is out of range or 0, the slice selects nothing from an axis of known
    length, or the model's opset has no ``Slice`` with these inputs."""
    graph = model.graph
    output = next(o for o in graph.output if o.name == chosen.name)
    tensor_type = output.type.tensor_type
    rank = len(tensor_type.shape.dim) if tensor_type.HasField("shape") else None
    axis = chosen.axis
    if rank is not None:
        if not -rank <= axis < rank:
            raise _error(chosen.text, f"axis {axis} is outside output {chosen.name!r} of rank {rank}")
        axis %= rank
        if axis == 0:
            raise _error(chosen.text, "axis 0 holds the calibration samples: slice another axis")
        length = tensor_type.shape.dim[axis].dim_value
        if length and not len(range(*slice(chosen.start, chosen.stop, chosen.step).indices(length))):
            raise _error(chosen.text, f"selects nothing from axis {axis} of length {length}")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 10 or axis < 0 and opset < 11:
        raise _error(chosen.text, f"the model's opset {opset} has no Slice with input bounds (10; 11 for an axis "
                                  "counted from the end of an output of unknown rank)")
    stem = _stem(graph, "onnxcomp_budget_slice", ("starts", "ends", "axes", "steps"))
    bounds = {"starts": chosen.start, "ends": INT64_MAX if chosen.stop is None else chosen.stop, "axes": axis,
              "steps": chosen.step}
    for part, value in bounds.items():
        graph.initializer.append(onnx.numpy_helper.from_array(np.array([value], np.int64), f"{stem}_{part}"))
    graph.node.append(onnx.helper.make_node("Slice", [chosen.name] + [f"{stem}_{part}" for part in bounds],
                                            [chosen.text], name=stem))
    return onnx.helper.make_tensor_value_info(chosen.text, tensor_type.elem_type, None)


@dataclasses.dataclass
class Measured:
    """What a budget measures: one part (an output or a slice of one), or several, balanced (module docstring).
    ``scales`` (one per part, 1 / its RMS) are set by ``balance``; ``text`` names the measured model's first output."""
    parts: list[BudgetOutput]
    scales: list[float] | None = None

    @property
    def text(self) -> str:
        return " + ".join(part.text for part in self.parts)

    @property
    def names(self) -> list[str]:
        """The model outputs to run (each once, in order)."""
        return list(dict.fromkeys(part.name for part in self.parts))

    def combine(self, arrays: list[np.ndarray]) -> np.ndarray:
        """The measured value from a written model's outputs ``arrays`` (in ``names`` order, samples on axis 0),
        as the measured model's added nodes compute it."""
        by_name = dict(zip(self.names, arrays))
        if len(self.parts) == 1:
            return self.parts[0].take(by_name[self.parts[0].name])
        return self.join([part.take(by_name[part.name]).reshape(len(arrays[0]), -1).astype(np.float64)
                          for part in self.parts])

    def join(self, flats: list[np.ndarray]) -> np.ndarray:
        """The balanced concatenation of the flattened float64 parts ``flats`` ([n, m_k] each), as the measured
        model's Mul and Concat nodes compute it (balance: the same float64 products)."""
        return np.concatenate([flat * scale for flat, scale in zip(flats, self.scales)], axis=1)


def _stem(graph: onnx.GraphProto, stem: str, parts: tuple[str, ...]) -> str:
    """``stem`` lengthened until no ``stem_PART`` names a tensor of ``graph`` already."""
    existing = {t.name for t in graph.initializer} | {n for node in graph.node for n in node.output} | \
        {i.name for i in graph.input}
    while any(f"{stem}_{part}" in existing for part in parts):
        stem += "_"
    return stem


def add_parts(model: onnx.ModelProto, measured: Measured) -> list[onnx.ValueInfoProto]:
    """For several parts: append to ``model`` (in place) each part's slice (add_slice), a ``Reshape`` to
    [samples, -1] and a ``Cast`` to float64, and return the value infos of those flattened parts (``balance``
    joins them; until then they are listed as the model's first outputs, so the original can be run on them)."""
    graph = model.graph
    flats = []
    for k, part in enumerate(measured.parts):
        source = add_slice(model, part).name if part.sliced else part.name
        stem = _stem(graph, f"onnxcomp_budget_part{k}", ("shape", "flat", "wide"))
        graph.initializer.append(onnx.numpy_helper.from_array(np.array([0, -1], np.int64), f"{stem}_shape"))
        graph.node.append(onnx.helper.make_node("Reshape", [source, f"{stem}_shape"], [f"{stem}_flat"], name=f"{stem}_flat"))
        graph.node.append(onnx.helper.make_node("Cast", [f"{stem}_flat"], [f"{stem}_wide"], name=f"{stem}_wide",
                                                to=onnx.TensorProto.DOUBLE))
        flats.append(onnx.helper.make_tensor_value_info(f"{stem}_wide", onnx.TensorProto.DOUBLE, None))
    outputs = list(graph.output)
    del graph.output[:]
    graph.output.extend(flats + outputs)
    return flats


def balance(model: onnx.ModelProto, measured: Measured, flats: list[np.ndarray]) -> None:
    """Join the flattened parts (add_parts) of ``model`` into its first output ``measured.text``: each multiplied
    by 1 / its RMS in ``flats`` (the original's flattened parts [n, m_k] on the n held-back samples:
    sqrt(sum of squares / n), the root mean square of a sample's L2 norm, so every part weighs the same in a pooled
    relative L2 error whatever its size m_k; a float64 constant, which no compress pass selects) and concatenated;
    set ``measured.scales``. The flattened parts leave the outputs.

    Raises OnnxcompError when a part is all zeros on those samples (nothing to measure an error against)."""
    graph = model.graph
    names = [o.name for o in graph.output[:len(flats)]]
    scales = []
    for part, values in zip(measured.parts, flats):
        rms = float(np.sqrt(np.square(values, dtype=np.float64).sum() / len(values))) if values.size else 0.0
        if not rms > 0:
            raise _error(part.text, "is zero on every held-back sample: no error can be measured against it")
        scales.append(1.0 / rms)
    stem = _stem(graph, "onnxcomp_budget_join", tuple(f"scale{k}" for k in range(len(names))) +
                 tuple(f"scaled{k}" for k in range(len(names))))
    for k, (name, scale) in enumerate(zip(names, scales)):
        graph.initializer.append(onnx.numpy_helper.from_array(np.array(scale, np.float64), f"{stem}_scale{k}"))
        graph.node.append(onnx.helper.make_node("Mul", [name, f"{stem}_scale{k}"], [f"{stem}_scaled{k}"],
                                                name=f"{stem}_scaled{k}"))
    graph.node.append(onnx.helper.make_node("Concat", [f"{stem}_scaled{k}" for k in range(len(names))],
                                            [measured.text], name=stem, axis=1))
    outputs = list(graph.output)[len(flats):]
    del graph.output[:]
    graph.output.extend([onnx.helper.make_tensor_value_info(measured.text, onnx.TensorProto.DOUBLE, None)] + outputs)
    measured.scales = scales
