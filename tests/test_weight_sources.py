"""Weights stored in another form than the layer reads (float16 behind a
Cast, int8 behind a DequantizeLinear, transposed, unsqueezed) are sliced
where they are stored, in their stored dtype; activations quantized per
tensor or per channel pass their channels."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

import onnxprune
from graphs import Graph, assert_frozen, assert_prunable, exact, group_at, keep_of, pruned, value
from onnxprune.invariants import violations, weight_bytes


def _stored(model, name):
    return next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def test_float16_weights_behind_a_cast_are_sliced_in_float16():
    g = Graph()
    rng = np.random.default_rng(0)
    w1 = g.add("Cast", [g.init("w1", rng.standard_normal((8, 3, 3, 3)), dtype=np.float16)], to=TensorProto.FLOAT)
    w2 = g.add("Cast", [g.init("w2", rng.standard_normal((4, 8, 3, 3)), dtype=np.float16)], to=TensorProto.FLOAT)
    a = g.add("Relu", [g.add("Conv", ["x", w1], name="c1", pads=[1, 1, 1, 1])])
    y = g.add("Conv", [a, w2], name="c2", pads=[1, 1, 1, 1])
    model = g.build({"x": [1, 3, 6, 6]}, [y])
    groups = exact(model, trials=4)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    m = pruned(groups, keep_of(grp, [1, 6]))
    assert _stored(m, "w1").dtype == np.float16 and _stored(m, "w1").shape == (2, 3, 3, 3)
    assert _stored(m, "w2").shape == (4, 2, 3, 3)
    np.testing.assert_array_equal(_stored(m, "w2"), _stored(model, "w2")[:, [1, 6]])
    assert weight_bytes(m).get("float", 0) == 0 and not violations(groups.model, m)


@pytest.mark.parametrize("zero_point", [0, 3])
def test_int8_weights_behind_a_per_channel_dequantize_are_sliced_as_int8(zero_point):
    g = Graph(opset=13)
    rng = np.random.default_rng(1)
    w8 = g.init("w8", rng.integers(-60, 60, (6, 5)), dtype=np.int8)
    scale = g.init("scale", rng.uniform(0.01, 0.05, 5), dtype=np.float32)
    zp = g.init("zp", np.full(5, zero_point), dtype=np.int8)
    w = g.add("DequantizeLinear", [w8, scale, zp], name="dq", axis=1)
    h = g.add("Relu", [g.matmul("x", 4, 6, name="up")])
    mid = g.add("Relu", [g.add("MatMul", [h, w], name="q_mm")])
    y = g.matmul(mid, 5, 3, name="down")
    model = g.build({"x": [2, 4]}, [y])
    groups = exact(model, trials=5)
    inner, neurons = group_at(groups, "up", -1), group_at(groups, "q_mm", -1)
    assert_prunable(inner)
    assert_prunable(neurons)
    m = pruned(groups, {**keep_of(inner, [0, 5]), **keep_of(neurons, [1, 2, 4])})
    assert _stored(m, "w8").dtype == np.int8
    np.testing.assert_array_equal(_stored(m, "w8"), _stored(model, "w8")[[0, 5]][:, [1, 2, 4]])
    np.testing.assert_array_equal(_stored(m, "scale"), _stored(model, "scale")[[1, 2, 4]])
    assert _stored(m, "zp").shape == (3,)
    assert not violations(groups.model, m)


def test_transposed_and_unsqueezed_weights_are_sliced_where_stored():
    g = Graph()
    rng = np.random.default_rng(2)
    wt = g.add("Transpose", [g.init("wt", rng.standard_normal((3, 3, 3, 8)))], perm=[3, 2, 0, 1])
    bias = g.add("Unsqueeze", [g.init("b", rng.standard_normal(8)), g.ints("ax", [1, 2])])
    a = g.add("Relu", [g.add("Add", [g.add("Conv", ["x", wt], name="c1", pads=[1, 1, 1, 1]), bias])])
    model = g.build({"x": [1, 3, 5, 5]}, [g.conv(a, 8, 4, name="c2")])
    groups = exact(model, trials=4)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    m = pruned(groups, keep_of(grp, [2, 3, 7]))
    np.testing.assert_array_equal(_stored(m, "wt"), _stored(model, "wt")[..., [2, 3, 7]])
    np.testing.assert_array_equal(_stored(m, "b"), _stored(model, "b")[[2, 3, 7]])


@pytest.mark.parametrize("per_channel", [False, True])
def test_quantize_dequantize_on_activations_passes_channels(per_channel):
    g = Graph(opset=13)
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")])
    shape = (6,) if per_channel else ()
    s = g.init("s", np.full(shape, 0.05), dtype=np.float32)
    z = g.init("z", np.full(shape, 10), dtype=np.uint8)
    q = g.add("QuantizeLinear", [a, s, z], name="q", axis=1)
    d = g.add("DequantizeLinear", [q, s, z], name="d", axis=1)
    groups = exact(g.build({"x": [1, 3, 4, 4]}, [g.conv(d, 6, 4, name="c2")]), trials=4)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    m = pruned(groups, keep_of(grp, [0, 4]))
    if per_channel:
        assert value(m, next(n for n in m.graph.node if n.name == "q").input[1]).shape == (2,)


def test_dynamic_quantization_freezes_what_it_reads():
    g = Graph(opset=13)
    a = g.add("Relu", [g.matmul("x", 4, 6, name="up")])
    q, scale, zp = g.add("DynamicQuantizeLinear", [a], n_out=3, name="dql")
    w = g.init("w8", np.ones((6, 3)), dtype=np.uint8)
    y = g.add("Cast", [g.add("MatMulInteger", [q, w, zp], name="mmi")], to=TensorProto.FLOAT)
    y = g.add("Mul", [y, scale])
    groups = exact(g.build({"x": [2, 4]}, {y: [2, 3]}))
    assert_frozen(group_at(groups, "up", -1), "dynamic quantization takes one scale")


def test_a_weight_behind_an_op_that_cannot_be_traced_is_folded_and_its_chain_removed():
    # A Reshape of the stored weight cannot be sliced at the source: the folded
    # value becomes one new initializer, and the bypassed chain (the Reshape
    # and the stored tensor) is removed, not left behind unused.
    g = Graph()
    flat = g.rand("w_flat", (8 * 3 * 3 * 3,))
    w = g.add("Reshape", [flat, g.ints("wshape", [8, 3, 3, 3])], name="unflatten")
    a = g.add("Relu", [g.add("Conv", ["x", w], name="c1", pads=[1, 1, 1, 1])])
    model = g.build({"x": [1, 3, 5, 5]}, [g.conv(a, 8, 4, name="c2")])
    groups = exact(model, trials=3)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    m = pruned(groups, keep_of(grp, [0, 7]))
    assert not any(n.name == "unflatten" for n in m.graph.node)
    assert {t.name for t in m.graph.initializer}.isdisjoint({"w_flat", "wshape"})
    assert not violations(groups.model, m)
