"""The one walker over subgraphs (If / Loop / Scan bodies and any other
graph-valued attribute). Every pass that asks "who reads this name" or "which
graphs are there" goes through here, so a tensor used only inside a branch is
never mistaken for dead."""
from __future__ import annotations

from collections.abc import Iterator

import onnx


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs held by a node's attributes, in attribute order."""
    out = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every graph nested in it, outermost first (iterative: no
    recursion limit on deep nesting)."""
    todo = [graph]
    while todo:
        g = todo.pop()
        yield g
        for node in reversed(g.node):
            todo.extend(reversed(subgraphs(node)))


def captured_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from its enclosing scopes."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(n for n in node.input if n and n not in defined)
        for sub in subgraphs(node):
            used |= captured_names(sub) - defined
        defined.update(node.output)
    used.update(o.name for o in graph.output if o.name not in defined)
    return used


def node_reads(node: onnx.NodeProto) -> set[str]:
    """Names a node reads: its inputs and what its subgraphs capture."""
    names = {n for n in node.input if n}
    for sub in subgraphs(node):
        names |= captured_names(sub)
    return names


def read_names(graph: onnx.GraphProto) -> set[str]:
    """Every name read in ``graph``: node inputs, subgraph captures and graph outputs."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names |= node_reads(node)
    return names


__all__ = ["subgraphs", "all_graphs", "captured_names", "node_reads", "read_names"]
