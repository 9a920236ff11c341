"""Parameter and MAC counts of a model. MACs come from each node's rule
(``Rule.macs``); parameters are the floating-point constants."""
from __future__ import annotations

import onnx

from .graph import GraphView
from .ops import rule_for
from .walk import all_graphs

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def count_params(model: onnx.ModelProto) -> int:
    """Elements of floating-point constants (initializers and Constant nodes), subgraphs included."""
    total = 0
    for g in all_graphs(model.graph):
        total += sum(_numel(t.dims) for t in g.initializer if t.data_type in _FLOAT_TYPES)
        for node in g.node:
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value" and a.t.data_type in _FLOAT_TYPES:
                        total += _numel(a.t.dims)
    return total


def node_macs(view: GraphView, node: onnx.NodeProto) -> int:
    return int(rule_for(node, view).macs(node, view))


def count_macs(view: GraphView) -> int:
    return int(sum(node_macs(view, n) for n in view.nodes))


__all__ = ["count_params", "count_macs", "node_macs"]
