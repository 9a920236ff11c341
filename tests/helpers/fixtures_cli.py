"""Tiny ONNX models for the CLI and API tests, built with onnx.helper.

No torch: every model is a handful of nodes with seeded random weights, so the
whole CLI/API suite runs in seconds.
"""
from __future__ import annotations

import copy
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
PRODUCER = "fixtures_cli"
PRODUCER_VERSION = "1.2.3"
MODEL_DOC = "tiny classifier for onnxprune tests"
GRAPH_DOC = "conv-bn-relu-conv-relu-gap-flatten-gemm"
METADATA = {"author": "onnxprune-tests", "license": "Apache-2.0"}

C1, C2, CLASSES = 8, 12, 10


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name)


def classifier(seed: int = 0, c1: int = C1, c2: int = C2) -> onnx.ModelProto:
    """Conv-BN-Relu-Conv-Relu-GlobalAveragePool-Flatten-Gemm: input (N,3,8,8) -> logits (N,10).

    Two prunable groups: conv1's C1 output channels (conv1, bn1, conv2 input)
    and conv2's C2 output channels (conv2, gemm input). Node names are stable
    so tests can ``--exclude`` them by glob. ``c1``/``c2`` widen it where a
    test needs tensors above some size (external data).
    """
    rng = np.random.default_rng(seed)
    inits = [
        _init("conv1.weight", rng.standard_normal((c1, 3, 3, 3)) * 0.5),
        _init("conv1.bias", rng.standard_normal(c1) * 0.1),
        _init("bn1.scale", rng.uniform(0.2, 2.0, c1)),
        _init("bn1.bias", rng.standard_normal(c1) * 0.1),
        _init("bn1.mean", rng.standard_normal(c1) * 0.1),
        _init("bn1.var", rng.uniform(0.5, 1.5, c1)),
        _init("conv2.weight", rng.standard_normal((c2, c1, 3, 3)) * 0.3),
        _init("conv2.bias", rng.standard_normal(c2) * 0.1),
        _init("fc.weight", rng.standard_normal((CLASSES, c2)) * 0.5),
        _init("fc.bias", rng.standard_normal(CLASSES) * 0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["c1"], name="conv1",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn1.scale", "bn1.bias", "bn1.mean", "bn1.var"],
                         ["b1"], name="bn1", epsilon=1e-5),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        initializer=inits, doc_string=GRAPH_DOC)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name=PRODUCER, producer_version=PRODUCER_VERSION,
                              doc_string=MODEL_DOC)
    model.ir_version = IR_VERSION
    helper.set_model_props(model, METADATA)
    onnx.checker.check_model(model, full_check=True)
    return model


def single_conv(seed: int = 0) -> onnx.ModelProto:
    """One Conv from graph input to graph output: its only group is frozen."""
    rng = np.random.default_rng(seed)
    w = _init("w", rng.standard_normal((4, 3, 3, 3)))
    node = helper.make_node("Conv", ["input", "w"], ["output"], name="conv", kernel_shape=[3, 3])
    graph = helper.make_graph(
        [node], "single_conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4, 6, 6])],
        initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def save(model: onnx.ModelProto, folder, name: str = "model.onnx") -> str:
    path = os.path.join(os.fspath(folder), name)
    onnx.save_model(model, path)
    return path


def save_external(model: onnx.ModelProto, folder, name: str = "model.onnx",
                  location: str = "w.data") -> str:
    path = os.path.join(os.fspath(folder), name)
    model = copy.deepcopy(model)  # onnx.save_model turns the proto it gets into external references
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return path


def inputs(n: int = 6, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)


def save_data(folder, n: int = 16, seed: int = 1, name: str = "data.npz", **extra) -> str:
    x = inputs(n, seed)
    labels = np.random.default_rng(seed + 100).integers(0, CLASSES, n).astype(np.int64)
    path = os.path.join(os.fspath(folder), name)
    np.savez(path, input=x, labels=labels, **extra)
    return path


def run(model, feeds: dict) -> list[np.ndarray]:
    """Run a ModelProto or a path in onnxruntime (CPU, one thread)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def param_count(model: onnx.ModelProto) -> int:
    return int(sum(np.prod(t.dims) for t in model.graph.initializer))


def conv_weight(model: onnx.ModelProto, node_name: str) -> np.ndarray:
    node = next(n for n in model.graph.node if n.name == node_name)
    inits = {t.name: t for t in model.graph.initializer}
    return numpy_helper.to_array(inits[node.input[1]])
