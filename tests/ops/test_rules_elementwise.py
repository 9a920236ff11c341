"""Unary and broadcasting rules: channel-wise ops pass, coupled or sliced."""
import numpy as np
import onnx
import pytest

from tests.helpers.graphs import (
    Graph,
    assert_frozen,
    assert_prunable,
    exact,
    group_at,
    input_value,
    keep_of,
    pruned,
    value,
)

UNARY = [
    ("Relu", {}), ("LeakyRelu", {"alpha": 0.1}), ("Sigmoid", {}), ("Tanh", {}),
    ("HardSigmoid", {}), ("HardSwish", {}), ("Elu", {}), ("Selu", {}), ("Softplus", {}),
    ("Gelu", {}), ("Erf", {}), ("Mish", {}), ("Neg", {}), ("Abs", {}), ("Exp", {}),
    ("Cast", {"to": onnx.TensorProto.FLOAT}), ("Identity", {}), ("Dropout", {}),
]


def sandwich(g, make, cin=6, cout=4, batch=1, spatial=6):
    """x -> c1 (3 -> cin) -> make(a) -> c2 (cin -> cout) -> y."""
    a = g.conv("x", 3, cin, name="c1")
    t = make(a)
    y = g.conv(t, cin, cout, name="c2")
    return g.build({"x": [batch, 3, spatial, spatial]}, [y]), t


@pytest.mark.parametrize("op,attrs", UNARY, ids=[u[0] for u in UNARY])
def test_unary_op_passes_channels_through(op, attrs):
    g = Graph(opset=20)
    model, t = sandwich(g, lambda a: g.add(op, [a], name="op", **attrs))
    groups = exact(model)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert group_at(groups, t) is grp
    assert grp.members == ["c1", "c2"]


def test_dropout_mask_output_is_tracked_too():
    g = Graph(opset=13)
    a = g.conv("x", 3, 6, name="c1")
    out, mask = g.add("Dropout", [a], n_out=2, name="drop")
    y = g.conv(out, 6, 4, name="c2")
    groups = exact(g.build({"x": [1, 3, 6, 6]}, [y]))
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert group_at(groups, mask) is grp


def test_prelu_per_channel_slope_is_sliced():
    g = Graph()
    model, t = sandwich(g, lambda a: g.add("PRelu", [a, g.rand("slope", (6, 1, 1))], name="prelu"))
    groups = exact(model)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert grp.members == ["c1", "prelu", "c2"]
    keep = keep_of(grp, [1, 2, 4])
    m = pruned(groups, keep)
    slope = input_value(m, "prelu", 1)
    assert slope.shape == (3, 1, 1)
    np.testing.assert_array_equal(slope, input_value(model, "prelu", 1)[[1, 2, 4]])
    exact(model, keep)


def test_clip_with_min_max_inputs_passes_and_keeps_bounds():
    g = Graph(opset=13)
    model, t = sandwich(g, lambda a: g.add(
        "Clip", [a, g.init("lo", np.float32(-0.2)), g.init("hi", np.float32(0.3))], name="clip"))
    groups = exact(model)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    m = pruned(groups, keep_of(grp, [0, 5]))
    assert input_value(m, "clip", 1).shape == () and input_value(m, "clip", 2).shape == ()


BINARY = ["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"]


def _positive(g, op, t, slot):
    """Keep Div denominators and Pow bases away from 0 / negatives (no inf, no NaN)."""
    if (op == "Div" and slot == 1) or (op == "Pow" and slot == 0):
        return g.add("Add", [g.add("Sigmoid", [t]), g.init("half", np.float32(0.5))])
    return t


@pytest.mark.parametrize("op", BINARY)
def test_binary_of_two_activations_couples_both_branches(op):
    g = Graph()
    a = g.add("Relu", [g.conv("x", 3, 6, name="ca")])
    b = g.conv("x", 3, 6, name="cb")
    lhs, rhs = _positive(g, op, a, 0), _positive(g, op, b, 1)
    if op == "Pow":
        rhs = g.add("Sigmoid", [rhs])
    t = g.add(op, [lhs, rhs], name="op")
    y = g.conv(t, 6, 4, name="c2")
    groups = exact(g.build({"x": [1, 3, 6, 6]}, [y]), trials=5)
    grp = group_at(groups, "ca")
    assert_prunable(grp)
    assert group_at(groups, "cb") is grp and group_at(groups, t) is grp
    assert grp.members == ["ca", "cb", "c2"]


def test_residual_add_couples_both_branches():
    g = Graph()
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")])
    b = g.conv(g.add("Relu", [g.conv(a, 6, 5, name="c2")]), 5, 6, name="c3")
    s = g.add("Add", [a, b], name="res")
    y = g.conv(g.add("Relu", [s]), 6, 4, name="c4")
    groups = exact(g.build({"x": [1, 3, 6, 6]}, [y]), trials=5)
    grp = group_at(groups, "res")
    assert_prunable(grp)
    assert group_at(groups, "c1") is grp and group_at(groups, "c3") is grp
    assert grp.members == ["c1", "c2", "c3", "c4"]
    inner = group_at(groups, "c2")
    assert_prunable(inner)
    assert inner is not grp
    keep = {**keep_of(grp, [0, 3, 5]), **keep_of(inner, [1, 2])}
    m = pruned(groups, keep)
    assert input_value(m, "c2", 1).shape == (2, 3, 3, 3)
    assert input_value(m, "c3", 1).shape == (3, 2, 3, 3)
    assert input_value(m, "c4", 1).shape == (4, 3, 3, 3)
    exact(g.build({"x": [1, 3, 6, 6]}, [y]), keep)


def _const_for(op, shape, g):
    if op == "Div":
        return g.rand("k", shape, 0.5, 2.0)
    if op == "Pow":
        return g.init("k", g.rng.integers(1, 4, size=shape).astype(np.float32))
    return g.rand("k", shape)


@pytest.mark.parametrize("shape", [(6, 1, 1), (1, 6, 1, 1)])
@pytest.mark.parametrize("const_first", [False, True], ids=["act_op_const", "const_op_act"])
@pytest.mark.parametrize("op", BINARY)
def test_binary_with_per_channel_constant_slices_it(op, const_first, shape):
    g = Graph()
    a = g.conv("x", 3, 6, name="c1")
    k = _const_for(op, shape, g)
    if const_first:
        t = g.add(op, [k, _positive(g, op, a, 1)], name="op")
    else:
        t = g.add(op, [a, k], name="op")
    y = g.conv(t, 6, 4, name="c2")
    model = g.build({"x": [1, 3, 6, 6]}, [y])
    groups = exact(model)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert grp.members == ["c1", "op", "c2"]
    keep = keep_of(grp, [0, 2, 3, 5])
    m = pruned(groups, keep)
    slot = 0 if const_first else 1
    new = input_value(m, "op", slot)
    assert new.shape == tuple(4 if d == 6 else d for d in shape)
    old = input_value(model, "op", slot)
    np.testing.assert_array_equal(new, np.take(old, [0, 2, 3, 5], axis=len(shape) - 3))
    exact(model, keep)


@pytest.mark.parametrize("shape", [(), (1,), (1, 1, 1, 1), (6,)], ids=["scalar", "1", "1111", "W"])
@pytest.mark.parametrize("op", BINARY)
def test_binary_with_broadcast_constant_leaves_it_unchanged(op, shape):
    """A scalar or size-1 operand (or one along the spatial width) is not indexed by channels."""
    g = Graph()
    a = g.conv("x", 3, 5, name="c1")
    k = _const_for(op, shape, g)
    t = g.add(op, [a, k], name="op")
    y = g.conv(t, 5, 4, name="c2")
    model = g.build({"x": [1, 3, 6, 6]}, [y])
    groups = exact(model)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert "op" not in grp.members
    m = pruned(groups, keep_of(grp, [1, 4]))
    np.testing.assert_array_equal(input_value(m, "op", 1), input_value(model, "op", 1))


@pytest.mark.parametrize("op", ["Add", "Mul"])
def test_activation_broadcast_along_channel_axis_freezes_it(op):
    """(N,1,H,W) op (N,C,H,W): the single channel feeds every channel and must stay."""
    g = Graph()
    a = g.conv("x", 3, 6, name="c1")
    m1 = g.conv("x", 3, 1, name="cm")  # (N, 1, H, W)
    t = g.add(op, [m1, a], name="op")
    y = g.conv(t, 6, 4, name="c2")
    groups = exact(g.build({"x": [1, 3, 6, 6]}, [y]))
    assert_frozen(group_at(groups, "cm"), "'op'", "broadcast along a channel axis")
    assert_prunable(group_at(groups, "c1"))
    assert group_at(groups, t) is group_at(groups, "c1")


def test_squeeze_excitation_couples_gate_with_feature_map():
    g = Graph()
    f = g.add("Relu", [g.conv("x", 3, 8, name="c1")], name="feat")
    s = g.add("GlobalAveragePool", [f], name="gap")
    s = g.add("Relu", [g.conv(s, 8, 2, k=1, name="se1")])
    gate = g.add("Sigmoid", [g.conv(s, 2, 8, k=1, name="se2")], name="gate")
    t = g.add("Mul", [f, gate], name="scale")
    y = g.conv(t, 8, 4, name="c2")
    groups = exact(g.build({"x": [1, 3, 6, 6]}, [y]), trials=5)
    grp = group_at(groups, "feat")
    assert_prunable(grp)
    assert group_at(groups, "gate") is grp and group_at(groups, "scale") is grp
    assert grp.members == ["c1", "se1", "se2", "c2"]
    squeeze = group_at(groups, "se1")
    assert_prunable(squeeze)
    assert squeeze.channels == 2
    keep = {**keep_of(grp, [0, 1, 5]), **keep_of(squeeze, [1])}
    m = pruned(groups, keep)
    assert input_value(m, "se1", 1).shape == (1, 3, 1, 1)
    assert input_value(m, "se2", 1).shape == (3, 1, 1, 1)
    exact(groups.model, keep)


def test_variadic_sum_couples_all_operands():
    g = Graph()
    parts = [g.conv("x", 3, 5, name=f"c{k}") for k in range(3)]
    t = g.add("Sum", parts, name="sum")
    y = g.conv(t, 5, 4, name="c9")
    groups = exact(g.build({"x": [1, 3, 6, 6]}, [y]))
    grp = group_at(groups, "sum")
    assert_prunable(grp)
    assert all(group_at(groups, p) is grp for p in parts)


@pytest.mark.parametrize("shape", [(1, 6, 5, 5), (6, 5, 5), (6, 1, 5)],
                         ids=["full_4d", "full_3d", "partial"])
def test_binary_with_constant_indexed_on_channel_and_spatial_axes_slices_channel_axis(shape):
    g = Graph()
    a = g.conv("x", 3, 6, name="c1")
    t = g.add("Add", [a, g.rand("k", shape)], name="op")
    y = g.conv(t, 6, 4, name="c2")
    model = g.build({"x": [1, 3, 5, 5]}, [y])
    groups = exact(model)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert "op" in grp.members
    m = pruned(groups, keep_of(grp, [1, 4]))
    ax = len(shape) - 3
    np.testing.assert_array_equal(input_value(m, "op", 1),
                                  np.take(input_value(model, "op", 1), [1, 4], axis=ax))
    exact(model, keep_of(grp, [1, 4]))


def test_channels_last_per_channel_constant_on_last_axis_is_sliced():
    g = Graph()
    a = g.conv("x", 3, 6, name="c1")
    t = g.add("Transpose", [a], perm=[0, 2, 3, 1])
    t = g.add("Mul", [t, g.rand("scale", (6,))], name="op")
    t = g.add("Transpose", [t], perm=[0, 3, 1, 2])
    y = g.conv(t, 6, 4, name="c2")
    model = g.build({"x": [1, 3, 5, 5]}, [y])
    groups = exact(model)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    m = pruned(groups, keep_of(grp, [0, 1, 5]))
    assert input_value(m, "op", 1).shape == (3,)


@pytest.mark.parametrize("c", [6, 72])  # 72: more indices than a shape vector holds, still no weight
def test_a_bias_computed_once_and_added_in_every_layer_leaves_each_layer_its_own_channels(c):
    """T5 computes its position bias in the first block and adds it to every
    block's attention scores. Each reader takes its kept channels through a
    Gather; the bias stays whole, and the layers prune apart, exactly."""
    g = Graph(seed=4)
    bias = g.add("Relu", [g.conv("z", 2, c, k=1, name="bias_conv")], name="bias")  # [1, c, 4, 4], read twice
    a = g.add("Add", [g.conv("x", 3, c, k=1, name="c1"), bias], name="add1")
    b = g.add("Add", [g.conv(g.add("Relu", [a]), c, c, k=1, name="c2"), bias], name="add2")
    model = g.build({"x": [1, 3, 4, 4], "z": [1, 2, 4, 4]}, [g.conv(g.add("Relu", [b]), c, 2, k=1, name="c3")])
    groups = exact(model, trials=5)
    first, second = group_at(groups, "c1"), group_at(groups, "c2")
    assert_prunable(first)
    assert_prunable(second)
    assert first.id != second.id
    assert_frozen(group_at(groups, "bias_conv"), "read by 2 nodes, each through a Gather")
    kept = [0, 2, 5] if c == 6 else list(range(70))
    m = pruned(groups, {**keep_of(first, kept), **keep_of(second, [1, 4])})
    picks = sorted((n.input[0], value(m, n.input[1]).tolist()) for n in m.graph.node if n.op_type == "Gather")
    assert picks == [("bias", kept), ("bias", [1, 4])]
    from onnxprune.rewrite.invariants import violations

    assert not violations(groups.model, m)


def test_a_decomposed_gelu_reads_its_input_twice_and_still_couples_it():
    """``x * (1 + erf(x / sqrt 2))``: x is read by two binary ops, but the
    other operand is computed from x itself: one channel space, no Gather."""
    g = Graph(seed=5)
    x = g.conv("x", 3, 6, name="c1")
    inner = g.add("Add", [g.add("Erf", [g.add("Div", [x, g.init("r2", np.array(1.4142135, np.float32))])]),
                          g.init("one", np.array(1.0, np.float32))])
    gelu = g.add("Mul", [x, inner])
    groups = exact(g.build({"x": [1, 3, 4, 4]}, [g.conv(gelu, 6, 2, name="c2")]))
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    m = pruned(groups, keep_of(grp, [1, 3]))
    assert not [n for n in m.graph.node if n.op_type == "Gather"]


def test_a_residual_stream_read_by_a_decomposed_norm_and_the_next_add_stays_one_space():
    """Pre-activation ResNets (exported with BatchNorm as Mul and Add by
    constants): the stream is read only by binary ops, one of them by a
    constant, and stays one channel space: no Gather."""
    g = Graph(seed=6)
    stream = g.add("Add", [g.conv("x", 3, 6, name="c1"), g.conv("x", 3, 6, name="c0")])
    pre = g.add("Relu", [g.add("Add", [g.add("Mul", [stream, g.rand("s", (6, 1, 1))]), g.rand("b", (6, 1, 1))])])
    out = g.add("Add", [g.conv(pre, 6, 6, k=1, name="c2"), stream])
    groups = exact(g.build({"x": [1, 3, 4, 4]}, [g.conv(out, 6, 2, name="c3")]))
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert {"c0", "c1", "c2"} <= set(grp.members)
    assert not [n for n in pruned(groups, keep_of(grp, [1, 3])).graph.node if n.op_type == "Gather"]
