"""Rewrite a model into the other shapes real exporters produce,
so every zoo model is also tested as: weights in Constant nodes, Identity
chains everywhere, and BatchNorm decomposed into per-channel Mul/Add."""
from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper


def constant_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every initializer becomes a Constant node (Paddle, spox, some simplifiers)."""
    m = copy.deepcopy(model)
    g = m.graph
    inputs = {i.name for i in g.input}
    consts = [helper.make_node("Constant", [], [t.name], value=t, name=f"const_{t.name}")
              for t in g.initializer if t.name not in inputs]
    del g.initializer[:]
    nodes = consts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    return m


def identity_chains(model: onnx.ModelProto) -> onnx.ModelProto:
    """Two Identity nodes in front of every weight and after every activation."""
    m = copy.deepcopy(model)
    g = m.graph
    outputs = {o.name for o in g.output}
    new_nodes = []
    renamed: dict[str, str] = {}

    def chain(name: str) -> list:
        a, b = f"{name}__id1", f"{name}__id2"
        renamed[name] = b
        return [helper.make_node("Identity", [name], [a], name=f"{name}__Identity1"),
                helper.make_node("Identity", [a], [b], name=f"{name}__Identity2")]

    for t in g.initializer:
        new_nodes += chain(t.name)
    for node in g.node:
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]
        new_nodes.append(node)
        for out in node.output:
            if out and out not in outputs and node.op_type != "Constant":
                new_nodes += chain(out)
    del g.node[:]
    g.node.extend(new_nodes)
    return m


def decomposed_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """BatchNormalization -> x * k + c with (C,1,1) constants."""
    m = copy.deepcopy(model)
    g = m.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    nodes = []
    for node in g.node:
        if node.op_type != "BatchNormalization" or not all(n in inits for n in node.input[1:5]):
            nodes.append(node)
            continue
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        s, b, mean, var = (inits[n] for n in node.input[1:5])
        k = (s / np.sqrt(var + eps)).astype(np.float32)
        c = (b - mean * k).astype(np.float32)
        extra = (1,) * 2  # per channel over H, W
        kn, cn, mid = f"{node.name}_k", f"{node.name}_c", f"{node.name}_mul"
        g.initializer.extend([numpy_helper.from_array(k.reshape((-1,) + extra), kn),
                              numpy_helper.from_array(c.reshape((-1,) + extra), cn)])
        nodes.append(helper.make_node("Mul", [node.input[0], kn], [mid], name=f"{node.name}_Mul"))
        nodes.append(helper.make_node("Add", [mid, cn], [node.output[0]], name=f"{node.name}_Add"))
    del g.node[:]
    g.node.extend(nodes)
    return m


def float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """float16 weights and activations with float32 inputs/outputs, as
    onnxruntime's converter makes them (it also leaves the graph unsorted)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(copy.deepcopy(model), keep_io_types=True)


VARIANTS = {
    "exported": lambda m: m,
    "constant_nodes": constant_nodes,
    "identity_chains": identity_chains,
    "decomposed_bn": decomposed_batchnorm,
    "float16": float16,
}

# float16 sums of different lengths round differently: looser tolerance.
TOLERANCE = {"float16": dict(rtol=3e-2, atol=3e-2)}
