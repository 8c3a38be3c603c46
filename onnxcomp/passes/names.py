"""Names the passes generate, unique across the whole model, and the graph tree they live in.

ONNX wants tensor names unique in a graph and its subgraphs (a subgraph may read any outer-scope name),
and onnxruntime wants node names unique too. A generated name (``W.onnxcomp_record``, ``W.decoded``,
``W.codebook``, ...) must therefore avoid every name already used anywhere in the model, in the main
graph and in every If/Loop/Scan body: ``UniqueNames`` collects them all once and hands out ``base`` if
free, else ``base.1``, ``base.2``, ... (the first free one), remembering each name it gives.
"""

from __future__ import annotations

import logging

import onnx_graphsurgeon as gs

log = logging.getLogger("onnxcomp")


def all_graphs(graph: gs.Graph) -> list[gs.Graph]:
    """``graph`` and every subgraph nested in its nodes' attributes."""
    return [graph, *graph.subgraphs(recursive=True)]


def subgraphs_of(node: gs.Node) -> list[gs.Graph]:
    """The graphs held directly by ``node``'s attributes (If branches, Loop and Scan bodies)."""
    found = []
    for value in node.attrs.values():
        if isinstance(value, gs.Graph):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(v for v in value if isinstance(v, gs.Graph))
    return found


def parents(graph: gs.Graph) -> dict[int, gs.Graph]:
    """id(subgraph) -> the graph holding the node that holds it, for every subgraph under ``graph``."""
    found: dict[int, gs.Graph] = {}
    queue = [graph]
    while queue:
        current = queue.pop()
        for node in current.nodes:
            for sub in subgraphs_of(node):
                found[id(sub)] = current
                queue.append(sub)
    return found


def common_graph(graphs: list[gs.Graph], parent: dict[int, gs.Graph], root: gs.Graph) -> gs.Graph:
    """The innermost graph enclosing all of ``graphs`` (each is that graph or one nested in it)."""
    def chain(g: gs.Graph) -> list[gs.Graph]:
        path = [g]
        while id(path[-1]) in parent:
            path.append(parent[id(path[-1])])
        return path[::-1]  # root first
    paths = [chain(g) for g in graphs] or [[root]]
    common = root
    for level in zip(*paths):
        if all(g is level[0] for g in level):
            common = level[0]
        else:
            break
    return common


class UniqueNames:
    """Hands out tensor and node names no graph of the model uses yet (see the module docstring)."""

    def __init__(self, graph: gs.Graph) -> None:
        self.taken: set[str] = set()
        for g in all_graphs(graph):
            self.taken.update(name for name in g.tensors() if name)
            self.taken.update(t.name for t in [*g.inputs, *g.outputs] if t.name)
            for node in g.nodes:
                self.taken.update(t.name for t in [*node.inputs, *node.outputs] if t.name)
                if node.name:
                    self.taken.add(node.name)

    def __call__(self, base: str) -> str:
        name, number = base, 0
        while name in self.taken:
            number += 1
            name = f"{base}.{number}"
        self.taken.add(name)
        return name


def unique_node_names(graph: gs.Graph) -> int:
    """Rename nodes whose (non-empty) name an earlier node, in any graph of the model, already has;
    returns how many were renamed. onnxruntime refuses a model with duplicate node names."""
    seen: set[str] = set()
    clashing = []
    for g in all_graphs(graph):
        for node in g.nodes:
            if node.name and node.name in seen:
                clashing.append(node)
            elif node.name:
                seen.add(node.name)
    if not clashing:
        return 0
    names = UniqueNames(graph)
    for node in clashing:
        old = node.name
        node.name = names(old)
        log.info("node name %r is used more than once; one of them is renamed %r so that onnxruntime can load the output",
                 old, node.name)
    return len(clashing)
