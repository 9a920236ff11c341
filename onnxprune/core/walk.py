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


def unshadow(graph: onnx.GraphProto) -> int:
    """Give every name a subgraph defines that some other scope defines too
    (the main graph, a sibling branch, an enclosing graph) a fresh name,
    everywhere it is read in that subgraph. -> how many were renamed.

    Exporters write If branches that repeat each other's names and the If's
    own outputs (optimum's merged decoders: both ``use_cache_branch``
    branches define ``logits`` and every ``/decoder/...`` tensor). ONNX
    binds branch and body outputs by position, so the rename changes
    nothing the model computes; it lets the branches be analysed as
    networks of their own (``GraphView``) instead of staying opaque. The
    main graph's names never change."""
    taken = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    taken |= {o for n in graph.node for o in n.output if o}
    count = 0

    def fresh(name: str) -> str:
        k = 1
        while f"{name}__{k}" in taken:
            k += 1
        taken.add(f"{name}__{k}")
        return f"{name}__{k}"

    def define(name: str, active: dict) -> str:
        nonlocal count
        if not name:
            return name
        if name in taken:
            active[name] = fresh(name)
            count += 1
            return active[name]
        taken.add(name)
        return name

    def visit(g: onnx.GraphProto, outer: dict) -> None:
        active = dict(outer)  # old name -> new name, as seen at this point of g
        for vi in g.input:
            vi.name = define(vi.name, active)
        for t in g.initializer:
            t.name = define(t.name, active)
        for node in g.node:
            for k, name in enumerate(node.input):
                if name in active:
                    node.input[k] = active[name]
            for sub in subgraphs(node):
                visit(sub, active)  # what the node's subgraphs capture is what is defined so far
            for k, name in enumerate(node.output):
                node.output[k] = define(name, active)
        for vi in list(g.output) + list(g.value_info):
            if vi.name in active:
                vi.name = active[vi.name]

    todo = [sub for node in graph.node for sub in subgraphs(node)]
    for sub in todo:
        visit(sub, {})
    return count
