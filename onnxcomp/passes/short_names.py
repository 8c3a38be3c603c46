"""Short names for a written model's nodes and intermediate tensors (lossless: the same computation, fewer bytes).

A node's name and the name of a tensor that one node writes and others read only say which is which: onnxruntime
matches a node's inputs to the outputs of others by name and uses node names for its logs and profiles; the values
computed do not depend on them. Exporters spell them out in full (tf2onnx: ``jax2tf_get_logits_/pjit_get_logits_/
MagikaV2/Dense_0/Reshape:0``, PyTorch: ``/model.0/conv/Conv_output_0``), so in a compressed model, whose weights
shrank 5-8x, they become a large part of the model file: 22 kB of magika's 35.5 kB graph file.

``shorten_names`` gives every node and every tensor some node writes (and every If/Loop/Scan body's formal inputs
and outputs) a new name from one injective map, applied to every graph at once: a subgraph reading an outer-scope
tensor reads it under its new name, so every connection, shadowing included, is the same as before. New names are
the shortest C identifiers that are not Python keywords (``a`` .. ``Z``, ``_``, then two characters, ...) in a fixed
order, assigned in graph order (each node's subgraphs before its outputs), skipping every name the model already
uses anywhere, so a model gets the same names every time. Kept as they are: the main graph's inputs and outputs
(what a caller feeds and reads), every initializer and sparse initializer (the sidecar records, the dense weights
``inspect`` lists, the portable format's codebook names), the outputs of a node that reads only initializers (a
weight's decoded or widened value: CodebookDecode, the Cast of a float16 weight, which carries the weight's name),
names the caller lists (compress: the logits its fidelity check reads, pipeline/fidelity.py ``logit_taps``), empty
names (an omitted optional input), and everything inside model-local functions (their names are local to the
function). A model with ``training_info`` is left alone.

With ``before`` (every tensor name of the model compress read), the initializers the writer made up get short
names too: a weight's record (``W.onnxcomp_record``: tools find a record by its external-data offset in the sidecar
directory, which names the weight), a float16 weight's stored tensor (``W__float16``: its Cast's output keeps the
name ``W``, and ``inspect`` lists the weight under it), the bias and scale constants folds add (``Conv.0.bias``);
and so do the outputs of onnxcomp's decode nodes (``W.decoded``: ``decompress`` and ``inspect`` follow the node,
not the name). A weight folded from a constant chain (``W.folded``) keeps its name, as a weight's own name
(``inspect`` lists it, reports and budget settings name it).
"""

from __future__ import annotations

import itertools
import string

import onnx

from .base import DOMAIN
from .fold_weights import FOLDED_NAME

FIRST = string.ascii_letters + "_"
REST = FIRST + string.digits


# Python's keywords (3.11's keyword.kwlist, written out so that the names do not depend on the Python that runs
# onnxcomp). A short name is never one of them: tools that turn an ONNX graph into Python use node names as
# attribute names (onnx2torch 1.5 fails on a node named ``if``, which minilm-l3's output had: docs/benchmarks.md,
# ftstudy12).
PYTHON_KEYWORDS = frozenset((
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue", "def", "del", "elif",
    "else", "except", "finally", "for", "from", "global", "if", "import", "in", "is", "lambda", "nonlocal", "not", "or",
    "pass", "raise", "return", "try", "while", "with", "yield"))


def _identifiers():
    """``a``, ``b``, .. ``_``, ``aa``, ``ab``, ..: C identifiers by length, then in FIRST/REST order, Python's keywords
    left out."""
    for length in itertools.count(1):
        for first in FIRST:
            for rest in itertools.product(REST, repeat=length - 1):
                name = first + "".join(rest)
                if name not in PYTHON_KEYWORDS:
                    yield name


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


def input_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor name of ``model``'s graphs (initializers, graph inputs and outputs, node inputs and outputs): what
    ``shorten_names``' ``before`` takes, read from the model compress was given."""
    names: set[str] = set()
    for graph in _all_graphs(model.graph):
        names.update(v.name for v in [*graph.input, *graph.output])
        names.update(t.name for t in graph.initializer)
        names.update(t.values.name for t in graph.sparse_initializer)
        for node in graph.node:
            names.update(node.input)
            names.update(node.output)
    return names


def shorten_names(model: onnx.ModelProto, keep=(), before: set[str] | None = None) -> dict[str, str]:
    """Rename ``model``'s nodes and intermediate tensors in place (module docstring); ``keep``: more tensor names
    left as they are (tensors a caller reads by name from the written model, such as the fidelity check's logits);
    ``before``: the tensor names of the model the writer read (``input_names``), so that the initializers it made up
    get short names too (module docstring; None: every initializer keeps its name).
    Returns ``{new name: name before}`` for every node and tensor renamed (empty when the model was left alone; a
    node that had no name maps to ""): new names are unique across nodes and tensors, so one map serves both, and
    compress puts it in its report (``Report.names``) to trace a short name in a log or profile back. (Not the bytes
    saved: protobuf's ByteSize serializes the model, whose records are still inline here: 29 MB more peak memory on
    a 134 MB model.)"""
    if len(model.training_info):
        return {}
    main = model.graph
    graphs = _all_graphs(main)
    kept = {v.name for v in [*main.input, *main.output]} | set(keep)
    initializers = {t.name for graph in graphs for t in graph.initializer}
    made_up = set() if before is None else {name for name in initializers
                                              if name not in before and not FOLDED_NAME.search(name)} - kept
    for graph in graphs:
        kept.update(t.name for t in graph.initializer if t.name not in made_up)
        kept.update(t.values.name for t in graph.sparse_initializer)
    weights = initializers | {t.values.name for g in graphs for t in g.sparse_initializer}
    for graph in graphs:  # a weight's widened value (the Cast of a float16 initializer), not onnxcomp's decoded values
        kept.update(name for node in graph.node if node.domain != DOMAIN and node.input
                    and all(not i or i in weights for i in node.input) for name in node.output)
    used = _used_names(graphs)
    fresh = (name for name in _identifiers() if name not in used)
    tensors: dict[str, str] = {}
    renamed: dict[str, str] = {}  # new name -> name before, nodes and tensors

    def assign(graph: onnx.GraphProto) -> None:
        for tensor in graph.initializer:
            if tensor.name in made_up and tensor.name not in tensors:
                tensors[tensor.name] = next(fresh)
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
        for tensor in graph.initializer:
            tensor.name = rename(tensor.name)
        for node in graph.node:
            node.input[:] = [rename(n) for n in node.input]
            node.output[:] = [rename(n) for n in node.output]
    for annotation in main.quantization_annotation:
        annotation.tensor_name = rename(annotation.tensor_name)
    renamed.update((new, old) for old, new in tensors.items())
    return renamed
