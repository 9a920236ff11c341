"""Parameter and MAC counts of a model. MACs come from each node's rule
(``Rule.macs``); parameters are the floating-point constants."""
from __future__ import annotations

import onnx

from onnxprune.core.graph import GraphView
from onnxprune.core.walk import all_graphs, subgraphs
from onnxprune.ops import rule_for

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}
# Parameters: float weights, and quantized ones (int8 / uint8 / 4-bit / float8).
WEIGHT_TYPES = _FLOAT_TYPES | {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4,
                                onnx.TensorProto.UINT4} | {getattr(onnx.TensorProto, n) for n in
                                ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ")
                                if hasattr(onnx.TensorProto, n)}


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def count_params(model: onnx.ModelProto) -> int:
    """Elements of float and quantized constants (initializers and Constant
    nodes), subgraphs included."""
    total = 0
    for g in all_graphs(model.graph):
        total += sum(_numel(t.dims) for t in g.initializer if t.data_type in WEIGHT_TYPES)
        for node in g.node:
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value" and a.t.data_type in WEIGHT_TYPES:
                        total += _numel(a.t.dims)
    return total


def node_macs(view: GraphView, node: onnx.NodeProto) -> int | None:
    m = rule_for(node, view).macs(node, view)
    return None if m is None else int(m)


def counted_nodes(view: GraphView) -> tuple[int, list[int]] | None:
    """(MACs per sample, indices of the nodes they count), or None when some
    counted node's shapes are unknown. The main graph's nodes count; of an
    If's branches only the costlier (one runs per sample); a loop body is left
    out (its trip count is data), as its owner's rule says
    (``Rule.subgraph_cost``)."""
    children: dict[tuple[int, int], list[int]] = {}
    top = []
    for i, n in enumerate(view.nodes):
        scope = view.scope.get(id(n))
        (top if scope is None else children.setdefault((id(scope[0]), scope[1]), [])).append(i)

    def cost(indices):
        total, counted = 0, []
        for i in indices:
            node = view.nodes[i]
            m = node_macs(view, node)
            if m is None:
                return None
            total, counted = total + m, counted + [i]
            if rule_for(node, view).subgraph_cost == "max" and node.name not in view.opaque:
                branches = [cost(children.get((id(node), k), [])) for k in range(len(subgraphs(node)))]
                if any(b is None for b in branches):
                    return None
                best = max(branches, key=lambda b: b[0], default=(0, []))
                total, counted = total + best[0], counted + best[1]
        return total, counted

    return cost(top)


def count_macs(view: GraphView) -> int | None:
    """MACs per sample, or None when some costly node's shapes are unknown
    (a symbolic sequence or spatial dim that neither data nor --input-shape fixed)."""
    found = counted_nodes(view)
    return None if found is None else found[0]


def unknown_dims(view: GraphView) -> dict[str, list[str]]:
    """Input -> its symbolic dims other than the batch: what must be fixed
    (by data or --input-shape) for MACs to be known."""
    out: dict[str, list[str]] = {}
    for name in view.graph_inputs:
        shape = view.shapes.get(name)
        if name in view.initializers or shape is None:
            continue
        syms = [str(d) for k, d in enumerate(shape)
                if not isinstance(d, int) and not (k == 0 and d in view.batch_symbols)]
        if syms:
            out[name] = syms
    return out


__all__ = ["count_params", "count_macs", "counted_nodes", "node_macs", "unknown_dims"]
