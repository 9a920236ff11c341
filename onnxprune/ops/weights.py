"""Where a folded constant's values are stored, for the rewrite to slice them
at their source; what a masked source must hold to read as zero.

A layer may read its weight through a chain of ops on constants (a Cast of
float16 weights, a decomposed BatchNorm's ``Sqrt(var + eps)``, a
DequantizeLinear of int8 weights). The analysis sees the folded value; the
rewrite must cut the stored constants behind it. Each op's rule says how an
axis of its output maps to its inputs (``Rule.trace``), whether it maps zero
to zero (``Rule.keeps_zero``) and what zero is for it (``Rule.zero_for``).
"""
from __future__ import annotations

import numpy as np

from onnxprune.core.graph import GraphView
from onnxprune.ops.base import rule_for
from onnxprune.ops.registry import DEFAULT_DOMAINS


def trace(view: GraphView, tensor: str, axis: int, depth: int = 0):
    """``[(stored constant, its axis)]`` that ``axis`` of the constant-folded
    ``tensor`` is sliced from (operands broadcast along it are left out), or
    None when the chain holds an op whose rule cannot follow it."""
    root = view.const_root(tensor)
    if root is not None:
        return [(root, axis)]
    node = view.producer.get(tensor)
    if node is None or depth > 64 or node.domain not in DEFAULT_DOMAINS or view.const_shape(tensor) is None:
        return None
    return rule_for(node, view).trace(node, view, axis, lambda name, a: trace(view, name, a, depth + 1))


def chain(view: GraphView, tensor: str) -> list:
    """The nodes between a folded tensor and its stored constants."""
    nodes, todo, seen = [], [tensor], set()
    while todo:
        t = todo.pop()
        if t in seen or view.const_root(t) is not None:
            continue
        seen.add(t)
        node = view.producer.get(t)
        if node is None:
            continue
        nodes.append(node)
        todo.extend(i for i in node.input if i)
    return nodes


def zero_safe(view: GraphView, tensor: str) -> bool:
    """Whether every op between ``tensor`` and its stored constants maps zero
    to zero: a zeroed (masked) source then reads as zero where the layer does."""
    return all(rule_for(node, view).keeps_zero(node) for node in chain(view, tensor))


def neutral(view: GraphView, source: str, readers) -> np.ndarray | None:
    """What a masked source must hold to read as zero through its chain: zero,
    unless a reader's rule says otherwise (a DequantizeLinear's quantized
    input: its zero point). None when that cannot be stated."""
    value = view.const(source)
    for index, slot, _ in readers:
        if index is None:
            continue
        node = view.nodes[index]
        held = rule_for(node, view).zero_for(node, view, slot, value)
        if held is None or np.any(held != 0):
            return held
    return np.zeros(value.shape, dtype=value.dtype)


__all__ = ["trace", "chain", "zero_safe", "neutral"]
