"""Where a weight is stored: slice it at its source, in its stored dtype.

Exporters often keep a weight in another form than the one a layer reads:
float16 behind a Cast, int8 behind a DequantizeLinear with per-channel scales,
transposed, unsqueezed, or multiplied by a constant. The analysis reads the
folded value (``GraphView.const``); the rewrite must instead slice what is
stored, so the model keeps its dtype and never grows. ``trace`` maps one axis
of the value a node reads back to the stored tensors and their axes; the
chain of nodes in between stays and recomputes from the sliced sources.
"""
from __future__ import annotations

import numpy as np

from onnxprune.core.graph import GraphView, attr

# Unary ops that keep every axis (the traced axis passes straight through).
_UNARY = {"Cast", "Identity", "Neg", "Reciprocal", "Sqrt", "Abs", "Relu", "Exp", "Log", "Sign",
          "Floor", "Ceil", "Round", "Sigmoid", "Tanh"}
_BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"}
# Chains made of these map zero to zero, so a masked (zeroed) source stays zero
# where the layer reads it (DequantizeLinear: once its input is the zero point).
_ZERO_SAFE = {"Cast", "Identity", "Neg", "Transpose", "Squeeze", "Unsqueeze", "Mul", "Div",
              "DequantizeLinear", "Abs", "Relu", "Sign"}


def _axes_input(node, view: GraphView, slot: int):
    """Squeeze / Unsqueeze axes, from the attribute (old opsets) or input 1."""
    axes = attr(node, "axes")
    if axes is None and len(node.input) > slot and node.input[slot]:
        v = view.const(node.input[slot])
        axes = None if v is None else [int(a) for a in np.asarray(v).reshape(-1)]
    return axes


def trace(view: GraphView, tensor: str, axis: int, depth: int = 0):
    """``[(stored constant, its axis)]`` that ``axis`` of the constant-folded
    ``tensor`` is sliced from (operands broadcast along it are left out), or
    None when the chain holds an op this cannot follow."""
    root = view.const_root(tensor)
    if root is not None:
        return [(root, axis)]
    node = view.producer.get(tensor)
    if node is None or depth > 64 or node.domain not in ("", "ai.onnx"):
        return None
    op = node.op_type
    shape = view.const_shape(tensor)
    if shape is None:
        return None
    rank = len(shape)
    if op in _UNARY or op == "CastLike":
        return trace(view, node.input[0], axis, depth + 1)
    if op == "Transpose":
        perm = attr(node, "perm") or list(range(rank))[::-1]
        return trace(view, node.input[0], int(perm[axis]), depth + 1)
    if op in ("Squeeze", "Unsqueeze"):
        axes = _axes_input(node, view, 1)
        if op == "Unsqueeze":
            if axes is None:
                return None
            added = {a % rank for a in axes}
            if axis in added:
                return []  # a new axis of size 1: nothing stored along it
            return trace(view, node.input[0], axis - sum(a < axis for a in added), depth + 1)
        in_shape = view.const_shape(node.input[0])
        if in_shape is None:
            return None
        r_in = len(in_shape)
        removed = sorted({a % r_in for a in axes}) if axes else [k for k, d in enumerate(in_shape) if d == 1]
        kept = [k for k in range(r_in) if k not in removed]
        return trace(view, node.input[0], kept[axis], depth + 1)
    if op in _BINARY:
        out = []
        for name in node.input:
            s = view.const_shape(name)
            if s is None:
                return None
            a = axis - (rank - len(s))
            if a < 0 or s[a] == 1:
                continue  # broadcast along the traced axis: left as it is
            sub = trace(view, name, a, depth + 1)
            if sub is None:
                return None
            out += sub
        return out
    if op == "DequantizeLinear":
        if attr(node, "block_size", 0):
            return None
        out = trace(view, node.input[0], axis, depth + 1)
        if out is None:
            return None
        per_axis = int(attr(node, "axis", 1)) % rank
        for name in node.input[1:3]:
            s = view.const_shape(name) if name else None
            if s is None or int(np.prod(s)) <= 1:
                continue  # absent or per tensor
            if per_axis != axis:
                continue  # per channel along another axis: broadcast along this one
            sub = trace(view, name, 0, depth + 1)
            if sub is None:
                return None
            out += sub
        return out
    return None


def chain_ops(view: GraphView, tensor: str) -> set[str]:
    """Op types between a folded tensor and its stored constants."""
    ops, todo, seen = set(), [tensor], set()
    while todo:
        t = todo.pop()
        if t in seen or view.const_root(t) is not None:
            continue
        seen.add(t)
        node = view.producer.get(t)
        if node is None:
            continue
        ops.add(node.op_type)
        todo.extend(i for i in node.input if i)
    return ops


def zero_safe(view: GraphView, tensor: str) -> bool:
    return chain_ops(view, tensor) <= _ZERO_SAFE


def neutral(view: GraphView, source: str, readers) -> np.ndarray | None:
    """What a masked source must hold to read as zero through its chain: zero,
    except the quantized input of a DequantizeLinear, which must hold its
    zero point. None when that cannot be stated (a zero point that differs
    along an axis the mask does not run along)."""
    value = view.const(source)
    for index, slot, _ in readers:
        if index is None:
            continue
        node = view.nodes[index]
        if node.op_type == "DequantizeLinear" and slot == 0 and len(node.input) > 2 and node.input[2]:
            zp = view.const(node.input[2])
            if zp is None:
                return None
            zp = np.asarray(zp)
            if zp.size == 1:
                return np.full(value.shape, zp.reshape(-1)[0], dtype=value.dtype)
            axis = int(attr(node, "axis", 1)) % value.ndim
            shape = [1] * value.ndim
            shape[axis] = -1
            return np.broadcast_to(zp.reshape(shape), value.shape).astype(value.dtype)
    return np.zeros(value.shape, dtype=value.dtype)


__all__ = ["trace", "chain_ops", "zero_safe", "neutral"]
