"""A differentiable interpreter of an ONNX graph: the graph's own nodes, run in
order through the torch op table (``torch_ops.RULES``), with the weights the
repair may change held as ``torch.nn.Parameter`` and every other constant as
a plain tensor.

Why an interpreter and not a converter: it computes exactly the graph it is
given (no pattern matching into framework modules), it covers what the op
table covers and names what it does not, and its weights map one to one back
onto the graph's own tensors (``write_back``), so the repaired file is the
pruned file with new numbers in the same places.

Which tensors train (``trainable``): stored float tensors of more than one
value whose every reader takes them as a weight (a Conv/Gemm/MatMul kernel or
bias, a norm's scale or shift, an elementwise Add/Sub/Mul operand), possibly
through layout-only ops (Transpose, Reshape, ...). Shape vectors, Resize
scales, divisors and anything integer stay fixed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from onnxprune.core.errors import OnnxPruneError
from onnxprune.core.tensors import to_array
from onnxprune.core.walk import subgraphs
from onnxprune.repair.torch_ops import MULTI, RULES, Unsupported, attributes, has_rule

# (op, input positions where a stored tensor is a weight the repair may change)
WEIGHT_SLOTS = {
    "Conv": {1, 2}, "ConvTranspose": {1, 2}, "Gemm": {0, 1, 2}, "MatMul": {0, 1}, "Einsum": None,
    "BatchNormalization": {1, 2}, "InstanceNormalization": {1, 2}, "LayerNormalization": {1, 2},
    "RMSNormalization": {1}, "SimplifiedLayerNormalization": {1},
    "Add": {0, 1}, "Sub": {0, 1}, "Mul": {0, 1}, "PRelu": {1},
    "RNN": {1, 2, 3}, "GRU": {1, 2, 3}, "LSTM": {1, 2, 3, 7},  # W, R, B (and peepholes), not initial states
}
LAYOUT = {"Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten"}  # weight passes through input 0
FLOATS = (np.float32, np.float64)
# Outputs beyond the first that a rule does not compute (training statistics, pool indices).
FIRST_ONLY = {"MaxPool", "BatchNormalization", "LayerNormalization", "Dropout", "RMSNormalization",
              "SimplifiedLayerNormalization"}


def as_tensor(v) -> torch.Tensor:
    """A numpy value as a tensor of the same shape (0-d included) and type."""
    v = np.asarray(v)
    return torch.from_numpy(v if v.flags.c_contiguous and v.flags.writeable else v.copy())


@dataclass
class _Ctx:
    opset: int
    op: str


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    a = node.attribute[0]
    if a.name == "value":
        return to_array(a.t)
    at = attributes(node)
    if a.name in ("value_float", "value_floats"):
        return np.asarray(at[a.name], np.float32)
    if a.name in ("value_int", "value_ints"):
        return np.asarray(at[a.name], np.int64)
    raise Unsupported(f"Constant {a.name}")


def unsupported(model: onnx.ModelProto) -> list[str]:
    """What the interpreter cannot run, one phrase per op type (with its
    first node): no rule, a subgraph, another domain, or a second output the
    rule does not compute that something reads."""
    g = model.graph
    read = {n for node in g.node for n in node.input} | {o.name for o in g.output}
    out: dict[str, str] = {}
    for node in g.node:
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        if op in out:
            continue
        if subgraphs(node):
            out[op] = f"{op} (node '{node.name}': a subgraph)"
        elif node.op_type == "Constant":
            continue
        elif not has_rule(node.op_type, node.domain):
            out[op] = f"{op} (node '{node.name}')"
        elif node.op_type in FIRST_ONLY and any(o and o in read for o in node.output[1:]):
            out[op] = f"{op} (node '{node.name}': its second output)"
    return list(out.values())


def require_rules(model: onnx.ModelProto) -> None:
    """Refuse, in one line, a graph the interpreter cannot run (``unsupported``)."""
    missing = unsupported(model)
    if missing:
        raise OnnxPruneError(f"--repair cannot run this graph differentiably: no rule for {', '.join(missing[:4])}"
                             f"{' ...' if len(missing) > 4 else ''}; prune without --repair")


def trainable(model: onnx.ModelProto, stored: dict[str, np.ndarray]) -> list[str]:
    """The stored tensors the repair may change (see the module docstring)."""
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name:
                readers.setdefault(name, []).append((node, i))
    outputs = {o.name for o in model.graph.output}

    def weight_only(name: str, depth: int = 0) -> bool:
        if name in outputs or depth > 8 or name not in readers:
            return False
        for node, i in readers[name]:
            if node.op_type in LAYOUT and i == 0:
                if not all(weight_only(o, depth + 1) for o in node.output if o):
                    return False
                continue
            slots = WEIGHT_SLOTS.get(node.op_type, set())
            if slots is not None and i not in slots:
                return False
        return True

    return [name for name, v in stored.items()
            if v.dtype in FLOATS and v.size > 1 and np.isfinite(v).all() and weight_only(name)]


class Interpreter:
    """The graph as a torch function of its inputs (``run``), with
    ``params`` (name -> Parameter) for the weights that train."""

    def __init__(self, model: onnx.ModelProto):
        require_rules(model)
        g = model.graph
        self.opset = _opset(model)
        stored: dict[str, np.ndarray] = {t.name: to_array(t) for t in g.initializer}
        self.constant_nodes: dict[str, onnx.NodeProto] = {}
        for node in g.node:
            if node.op_type == "Constant":
                stored[node.output[0]] = _constant_value(node)
                self.constant_nodes[node.output[0]] = node
        train = set(trainable(model, stored))
        self.params: dict[str, torch.nn.Parameter] = {}
        self.consts: dict[str, torch.Tensor] = {}
        for name, v in stored.items():
            try:
                t = as_tensor(v)  # shares the array read for it (a fresh one), copies a read-only map
            except TypeError:
                raise OnnxPruneError(f"--repair: tensor '{name}' has a type torch cannot hold "
                                     f"({v.dtype})") from None
            if name in train:
                self.params[name] = torch.nn.Parameter(t)
            else:
                self.consts[name] = t
        self.nodes = [(n, attributes(n), _Ctx(self.opset, n.op_type)) for n in g.node if n.op_type != "Constant"]
        self.inputs = [i.name for i in g.input if i.name not in stored]
        self.outputs = [o.name for o in g.output]
        last: dict[str, int] = {}
        for k, (node, _, _) in enumerate(self.nodes):
            for name in node.input:
                if name:
                    last[name] = k
        keep = set(self.outputs) | set(stored)
        self.free = [[n for n in node.input if n and last.get(n) == k and n not in keep]
                     for k, (node, _, _) in enumerate(self.nodes)]

    def run(self, feeds: dict, expose: set | None = None) -> dict[str, torch.Tensor]:
        """Outputs (and the ``expose``d intermediate tensors) for one batch of feeds."""
        values: dict[str, torch.Tensor] = dict(self.consts)
        values.update(self.params)
        for name in self.inputs:
            v = feeds[name]
            values[name] = v if isinstance(v, torch.Tensor) else as_tensor(v)
        kept: dict[str, torch.Tensor] = {}
        for k, (node, at, ctx) in enumerate(self.nodes):
            ins = [values[n] if n else None for n in node.input]
            try:
                if node.op_type in MULTI:
                    out = MULTI[node.op_type](ins, at, ctx, len(node.output))
                else:
                    out = RULES[node.op_type](ins, at, ctx)
            except Unsupported as e:
                raise OnnxPruneError(f"--repair: node '{node.name}' ({node.op_type}): {e}; prune without "
                                     f"--repair") from None
            except (RuntimeError, ValueError, IndexError, TypeError) as e:
                raise OnnxPruneError(f"--repair: node '{node.name}' ({node.op_type}) fails in the "
                                     f"interpreter: {str(e).splitlines()[0]}; prune without --repair") from None
            outs = out if isinstance(out, list) else [out]
            for name, v in zip(node.output, outs):
                if name:
                    values[name] = v
                    if expose and name in expose:
                        kept[name] = v
            for name in self.free[k]:
                values.pop(name, None)
        kept.update({n: values[n] for n in self.outputs})
        return kept

    def write_back(self, model: onnx.ModelProto) -> int:
        """Put the trained values into the graph's own tensors (same names,
        same types); -> how many tensors changed."""
        by_name = {t.name: t for t in model.graph.initializer}
        changed = 0
        for name, p in self.params.items():
            old = by_name.get(name)
            node = self.constant_nodes.get(name)
            value = p.detach().cpu().numpy()
            if old is not None:
                dtype = helper.tensor_dtype_to_np_dtype(old.data_type)
                old.CopyFrom(numpy_helper.from_array(value.astype(dtype), name))
            elif node is not None:
                a = node.attribute[0]
                if a.name != "value":
                    continue
                a.t.CopyFrom(numpy_helper.from_array(value.astype(to_array(a.t).dtype), a.t.name))
            else:
                continue
            changed += 1
        return changed


__all__ = ["Interpreter", "unsupported", "require_rules", "trainable", "as_tensor", "WEIGHT_SLOTS"]
