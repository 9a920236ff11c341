"""Parameter and MAC counts of a model, from its constants and inferred shapes."""
from __future__ import annotations

import onnx

from .graph import GraphView, attr

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def count_params(model: onnx.ModelProto) -> int:
    """Elements of floating-point constants (initializers and Constant nodes)."""
    total = sum(_numel(t.dims) for t in model.graph.initializer if t.data_type in _FLOAT_TYPES)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type in _FLOAT_TYPES:
                    total += _numel(a.t.dims)
    return total


def _concrete(shape) -> list[int] | None:
    if shape is None:
        return None
    return [d if isinstance(d, int) else 1 for d in shape]  # symbolic dims (batch) count as 1


def node_macs(view: GraphView, node: onnx.NodeProto) -> int:
    op = node.op_type
    out = _concrete(view.shape(node.output[0])) if node.output else None
    if out is None:
        return 0
    if op in ("Conv", "ConvTranspose"):
        w = view.shape(node.input[1])
        if w is None:
            return 0
        if op == "Conv":
            return _numel(out) * _numel(w[1:])
        x = _concrete(view.shape(node.input[0]))
        return 0 if x is None else _numel(x) * _numel(w[1:])
    if op == "Gemm":
        a = view.shape(node.input[0])
        if a is None:
            return 0
        k = a[0] if int(attr(node, "transA", 0)) else a[1]
        return _numel(out) * (k if isinstance(k, int) else 1)
    if op == "MatMul":
        a = view.shape(node.input[0])
        if a is None:
            return 0
        k = a[-1]
        return _numel(out) * (k if isinstance(k, int) else 1)
    return 0


def count_macs(view: GraphView) -> int:
    return int(sum(node_macs(view, n) for n in view.nodes))


__all__ = ["count_params", "count_macs", "node_macs"]
