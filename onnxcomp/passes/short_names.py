"""Short names for a written model's nodes and intermediate tensors (lossless: the same computation, fewer bytes).

A node's name and the name of a tensor that one node writes and others read only say which is which: onnxruntime
matches a node's inputs to the outputs of others by name and uses node names for its logs and profiles; the values
computed do not depend on them. Exporters spell them out in full (tf2onnx: ``jax2tf_get_logits_/pjit_get_logits_/
MagikaV2/Dense_0/Reshape:0``, PyTorch: ``/model.0/conv/Conv_output_0``), so in a compressed model, whose weights
shrank 5-8x, they become a large part of the model file: 22 kB of magika's 35.5 kB graph file.

``shorten_names`` gives every node and every tensor some node writes (and every If/Loop/Scan body's formal inputs
and outputs) a new name from one injective map, applied to every graph at once: a subgraph reading an outer-scope
tensor reads it under its new name, so every connection, shadowing included, is the same as before. New names
are the shortest C identifiers (``a`` .. ``Z``, ``_``, then two characters, ...) in a fixed order, assigned in
graph order (each node's subgraphs before its outputs), skipping every name the model already uses anywhere, so
a model gets the same names every time. Kept as they are: the main graph's inputs and outputs (what a caller
feeds and reads), every initializer and sparse initializer (the sidecar records, the dense weights ``inspect``
lists, the portable format's codebook names), the outputs of a node that reads only initializers (a weight's
decoded or widened value: CodebookDecode, the Cast of a float16 weight, which carries the weight's name), names the
caller lists (compress: the logits its fidelity check reads, pipeline/fidelity.py ``logit_taps``), empty names (an
omitted optional input), and everything inside model-local functions (their names are local to the function). A
model with ``training_info`` is left alone.
"""

from __future__ import annotations

import itertools
import string

import onnx

FIRST = string.ascii_letters + "_"
REST = FIRST + string.digits


def _identifiers():
    """``a``, ``b``, .. ``_``, ``aa``, ``ab``, ..: C identifiers by length, then in FIRST/REST order."""
    for length in itertools.count(1):
        for first in FIRST:
            for rest in itertools.product(REST, repeat=length - 1):
                yield first + "".join(rest)


def _graphs_of_node(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    found = []
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            found.append(attribute.g)
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            found.extend(attribute.graphs)
    return found


def _all_graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """``graph`` and every graph nested in it, each node's subgraphs right after the graph holding it."""
    found = [graph]
    for node in graph.node:
        for sub in _graphs_of_node(node):
            found.extend(_all_graphs(sub))
    return found


def _used_names(graphs: list[onnx.GraphProto]) -> set[str]:
    """Every tensor and node name any of ``graphs`` mentions."""
    used: set[str] = set()
    for graph in graphs:
        used.update(v.name for v in [*graph.input, *graph.output, *graph.value_info])
        used.update(t.name for t in graph.initializer)
        used.update(t.values.name for t in graph.sparse_initializer)
        for node in graph.node:
            used.add(node.name)
            used.update(node.input)
            used.update(node.output)
    used.discard("")
    return used


def shorten_names(model: onnx.ModelProto, keep=()) -> int:
    """Rename ``model``'s nodes and intermediate tensors in place (module docstring); ``keep``: more tensor names
    left as they are (tensors a caller reads by name from the written model, such as the fidelity check's logits).
    Returns ``{new name: name before}`` for every node and tensor renamed (empty when the model was left alone; a
    node that had no name maps to ""): new names are unique across nodes and tensors, so one map serves both, and
    compress puts it in its report (``Report.names``) to trace a short name in a log or profile back. (Not the bytes
    saved: protobuf's ByteSize serializes the model, whose records are still inline here: 29 MB more peak memory on
    a 134 MB model.)"""
    if len(model.training_info):
        return 0
    main = model.graph
    graphs = _all_graphs(main)
    kept = {v.name for v in [*main.input, *main.output]} | set(keep)
    for graph in graphs:
        kept.update(t.name for t in graph.initializer)
        kept.update(t.values.name for t in graph.sparse_initializer)
    weights = set(kept) - {v.name for v in main.input}
    for graph in graphs:  # a weight's decoded or widened value (CodebookDecode, a Cast of a float16 initializer)
        kept.update(name for node in graph.node if node.input and all(not i or i in weights for i in node.input)
                    for name in node.output)
    used = _used_names(graphs)
    fresh = (name for name in _identifiers() if name not in used)
    tensors: dict[str, str] = {}
    renamed: dict[str, str] = {}  # new name -> name before, nodes and tensors

    def assign(graph: onnx.GraphProto) -> None:
        if graph is not main:
            for value in [*graph.input, *graph.output]:
                if value.name and value.name not in kept and value.name not in tensors:
                    tensors[value.name] = next(fresh)
        for node in graph.node:
            short = next(fresh)
            renamed[short] = node.name
            node.name = short
            for sub in _graphs_of_node(node):
                assign(sub)
            for name in node.output:
                if name and name not in kept and name not in tensors:
                    tensors[name] = next(fresh)

    assign(main)

    def rename(name: str) -> str:
        return tensors.get(name, name)

    for graph in graphs:
        for value in [*graph.input, *graph.output, *graph.value_info]:
            value.name = rename(value.name)
        for node in graph.node:
            node.input[:] = [rename(n) for n in node.input]
            node.output[:] = [rename(n) for n in node.output]
    for annotation in main.quantization_annotation:
        annotation.tensor_name = rename(annotation.tensor_name)
    renamed.update((new, old) for old, new in tensors.items())
    return renamed
