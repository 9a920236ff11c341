"""Conv / ConvTranspose rules: dense, depthwise, grouped, and where the weight comes from."""
import numpy as np
import onnx
import pytest

import onnxprune
from tests.helpers.graphs import (
    Graph,
    assert_frozen,
    assert_prunable,
    attr,
    exact,
    feeds,
    group_at,
    groups_at,
    input_value,
    keep_of,
    pruned,
)
from tests.helpers.oracle import run


def chain(batch=1):
    g = Graph()
    a = g.conv("x", 3, 6, name="c1")
    b = g.add("Relu", [a], name="relu")
    y = g.conv(b, 6, 4, name="c2")
    return g.build({"x": [batch, 3, 8, 8]}, [y])


def test_dense_conv_chain_has_one_prunable_group_between_convs():
    groups = exact(chain())
    assert [g.units for g in groups.groups] == [3, 6, 4]
    first, mid, last = groups.groups
    assert_frozen(first, "graph input 'x'")
    assert_frozen(last, "graph output")
    assert_prunable(mid)
    assert mid.members == ["c1", "c2"]
    assert group_at(groups, "c1") is mid and group_at(groups, "relu") is mid
    assert [g.id for g in groups.prunable] == [mid.id]


def test_dense_conv_slices_filters_bias_and_consumer_columns():
    groups = exact(chain())
    mid = group_at(groups, "relu")
    m = pruned(groups, keep_of(mid, [0, 2, 5]))
    assert input_value(m, "c1", 1).shape == (3, 3, 3, 3)
    assert input_value(m, "c1", 2).shape == (3,)
    assert input_value(m, "c2", 1).shape == (4, 3, 3, 3)
    assert input_value(m, "c2", 2).shape == (4,)
    w0 = input_value(groups.model, "c1", 1)
    np.testing.assert_array_equal(input_value(m, "c1", 1), w0[[0, 2, 5]])
    w2 = input_value(groups.model, "c2", 1)
    np.testing.assert_array_equal(input_value(m, "c2", 1), w2[:, [0, 2, 5]])


def test_dense_conv_group_counts_its_parameters():
    groups = onnxprune.analyze(chain())
    mid = group_at(groups, "relu")
    # c1: 3*3*3 weights + 1 bias per filter; c2: 4*3*3 weights per input channel.
    assert mid.per_channel == 27 + 1 + 36
    assert groups.params_prunable == 6 * 64
    assert groups.params_total == 6 * 28 + 4 * 55
    d = groups.to_dict()
    assert [g["channels"] for g in d["groups"]] == [3, 6, 4]
    assert d["groups"][1]["frozen"] == []


def test_prune_api_with_explicit_keep_matches_masked():
    model = chain()
    groups = onnxprune.analyze(model)
    gid = group_at(groups, "relu").id
    result = onnxprune.prune(model, keep={gid: [1, 4]})
    assert input_value(result.model, "c1", 1).shape == (2, 3, 3, 3)
    assert input_value(result.model, "c2", 1).shape == (4, 2, 3, 3)
    f = feeds(model)
    np.testing.assert_allclose(run(result.model, f)[0], run(result.masked(), f)[0],
                               rtol=1e-4, atol=1e-5)


def test_conv_chain_with_symbolic_batch_prunes():
    groups = exact(chain(batch="N"))
    assert_prunable(group_at(groups, "relu"))


def test_depthwise_conv_couples_channels_and_rewrites_group():
    g = Graph()
    a = g.conv("x", 3, 6, name="c1")
    d = g.conv(a, 6, 6, group=6, name="dw")
    b = g.add("Relu", [d])
    y = g.conv(b, 6, 4, name="c2")
    groups = exact(g.build({"x": [1, 3, 8, 8]}, [y]))
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert group_at(groups, "dw") is grp
    assert grp.units == 6 and grp.members == ["c1", "dw", "c2"]
    m = pruned(groups, keep_of(grp, [0, 2, 5]))
    assert attr(m, "dw", "group") == 3
    assert input_value(m, "dw", 1).shape == (3, 1, 3, 3)
    assert input_value(m, "dw", 2).shape == (3,)
    exact(groups.model, keep_of(grp, [0, 2, 5]))


def test_depthwise_multiplier_two_prunes_output_pairs():
    g = Graph()
    a = g.conv("x", 3, 4, name="c1")
    d = g.conv(a, 4, 8, group=4, name="dw")  # depth multiplier 2: W (8, 1, 3, 3)
    b = g.add("Relu", [d])
    y = g.conv(b, 8, 5, name="c2")
    groups = exact(g.build({"x": [1, 3, 8, 8]}, [y]))
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert grp.units == 4 and grp.width == 2
    assert group_at(groups, "dw") is grp
    keep = keep_of(grp, [1, 3])
    m = pruned(groups, keep)
    assert attr(m, "dw", "group") == 2
    assert input_value(m, "dw", 1).shape == (4, 1, 3, 3)
    assert input_value(m, "c2", 1).shape == (5, 4, 3, 3)
    w = input_value(groups.model, "dw", 1)
    np.testing.assert_array_equal(input_value(m, "dw", 1), w[[2, 3, 6, 7]])
    exact(groups.model, keep)


def test_grouped_conv_prunes_whole_groups_and_rewrites_group():
    g = Graph()
    a = g.conv("x", 3, 8, name="c1")
    d = g.conv(a, 8, 8, group=4, name="gc")  # 4 groups of 2 channels
    b = g.add("Relu", [d])
    y = g.conv(b, 8, 4, name="c2")
    groups = exact(g.build({"x": [1, 3, 8, 8]}, [y]))
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert grp.units == 4 and grp.width == 2  # units are conv groups
    assert group_at(groups, "gc") is grp
    keep = keep_of(grp, [0, 3])
    m = pruned(groups, keep)
    assert attr(m, "gc", "group") == 2
    assert input_value(m, "gc", 1).shape == (4, 2, 3, 3)
    assert input_value(m, "c1", 1).shape == (4, 3, 3, 3)
    assert input_value(m, "c2", 1).shape == (4, 4, 3, 3)
    w = input_value(groups.model, "c1", 1)
    np.testing.assert_array_equal(input_value(m, "c1", 1), w[[0, 1, 6, 7]])
    exact(groups.model, keep)


def test_grouped_conv_with_different_in_and_out_group_widths():
    g = Graph()
    a = g.conv("x", 3, 8, name="c1")
    d = g.conv(a, 8, 4, group=2, name="gc")  # in: 2 groups of 4, out: 2 groups of 2
    b = g.add("Relu", [d])
    y = g.conv(b, 4, 3, name="c2")
    groups = exact(g.build({"x": [1, 3, 8, 8]}, [y]))
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert grp.units == 2 and group_at(groups, "gc") is grp
    m = pruned(groups, keep_of(grp, [1]))
    assert attr(m, "gc", "group") == 1
    assert input_value(m, "gc", 1).shape == (2, 4, 3, 3)
    exact(groups.model, keep_of(grp, [1]))


def test_grouped_conv_whose_groups_cut_a_concat_branch_freezes():
    g = Graph()
    a = g.conv("x", 3, 3, name="ca")
    b = g.conv("x", 3, 5, name="cb")
    c = g.add("Concat", [a, b], axis=1, name="cat")  # 3 + 5 channels
    d = g.conv(c, 8, 8, group=2, name="gc")  # groups of 4: the 3|5 boundary is inside one
    y = g.conv(g.add("Relu", [d]), 8, 4, name="c2")
    groups = exact(g.build({"x": [1, 3, 8, 8]}, [y]))
    ga, gb = groups_at(groups, "cat")
    assert (ga.units, gb.units) == (3, 5)
    for grp in (ga, gb, group_at(groups, "gc")):
        assert_frozen(grp, "'gc'", "line up")
    assert not groups.prunable


def test_conv_transpose_dense_couples_input_and_output_channels():
    g = Graph()
    a = g.conv("x", 3, 6, name="c1")
    w = g.rand("ct_W", (6, 5, 2, 2))  # ConvTranspose W: (C_in, C_out, k, k)
    t = g.add("ConvTranspose", [g.add("Relu", [a]), w, g.rand("ct_B", (5,))],
              name="ct", strides=[2, 2])
    y = g.conv(g.add("Relu", [t]), 5, 4, name="c2")
    groups = exact(g.build({"x": [1, 3, 4, 4]}, [y]))
    gin, gout = group_at(groups, "c1"), group_at(groups, "ct")
    assert_prunable(gin)
    assert_prunable(gout)
    assert gin.channels == 6 and gout.channels == 5
    assert gin.members == ["c1", "ct"] and gout.members == ["ct", "c2"]
    keep = {**keep_of(gin, [0, 1, 4]), **keep_of(gout, [2, 3])}
    m = pruned(groups, keep)
    assert input_value(m, "ct", 1).shape == (3, 2, 2, 2)
    assert input_value(m, "ct", 2).shape == (2,)
    exact(groups.model, keep)


def test_grouped_conv_transpose_prunes_whole_groups():
    g = Graph()
    a = g.conv("x", 3, 8, name="c1")
    w = g.rand("ct_W", (8, 1, 2, 2))  # group 4: in 2 per group, out 1 per group
    t = g.add("ConvTranspose", [g.add("Relu", [a]), w], name="ct", strides=[2, 2], group=4)
    y = g.conv(g.add("Relu", [t]), 4, 4, name="c2")
    groups = exact(g.build({"x": [1, 3, 4, 4]}, [y]))
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert grp.units == 4 and group_at(groups, "ct") is grp
    keep = keep_of(grp, [0, 2])
    m = pruned(groups, keep)
    assert attr(m, "ct", "group") == 2
    assert input_value(m, "ct", 1).shape == (4, 1, 2, 2)
    assert input_value(m, "c2", 1).shape == (4, 2, 3, 3)
    exact(groups.model, keep)


@pytest.mark.parametrize("source", ["graph_input", "node_output"])
def test_conv_with_weight_computed_at_run_time_freezes(source):
    g = Graph()
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")])
    inputs = {"x": [1, 3, 8, 8]}
    if source == "graph_input":
        w = "w_dyn"
        inputs["w_dyn"] = [5, 6, 3, 3]
    else:  # computed from a graph input: truly a run-time value
        inputs["w_scale"] = [1]
        w = g.add("Mul", [g.rand("w_base", (5, 6, 3, 3)), "w_scale"])
    d = g.add("Conv", [a, w], name="dyn", pads=[1, 1, 1, 1])
    r = g.add("Relu", [d], name="r2")
    y = g.conv(r, 5, 4, name="c2")
    groups = exact(g.build(inputs, [y]))
    assert_frozen(group_at(groups, "c1"), "'dyn'", "computed at run time")
    assert_frozen(group_at(groups, r), "not tracked")
    assert not groups.prunable


def test_conv_weights_as_constant_nodes_are_sliced():
    g = Graph()
    a = g.conv("x", 3, 6, name="c1", weight_as="constant")
    y = g.conv(g.add("Relu", [a]), 6, 4, name="c2", weight_as="constant")
    groups = exact(g.build({"x": [1, 3, 8, 8]}, [y]))
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert grp.members == ["c1", "c2"]
    m = pruned(groups, keep_of(grp, [3, 4]))
    assert input_value(m, "c1", 1).shape == (2, 3, 3, 3)
    assert input_value(m, "c1", 2).shape == (2,)
    assert input_value(m, "c2", 1).shape == (4, 2, 3, 3)
    assert not m.graph.initializer
    exact(groups.model, keep_of(grp, [3, 4]))


def test_conv_weight_through_identity_chain_is_sliced():
    g = Graph()
    w1 = g.rand("c1_W", (6, 3, 3, 3))
    for _ in range(3):
        w1 = g.add("Identity", [w1])
    a = g.add("Conv", ["x", w1], name="c1", pads=[1, 1, 1, 1])
    w2 = g.add("Identity", [g.rand("c2_W", (4, 6, 3, 3))])
    y = g.add("Conv", [g.add("Relu", [a]), w2], name="c2", pads=[1, 1, 1, 1])
    groups = exact(g.build({"x": [1, 3, 8, 8]}, [y]))
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert grp.members == ["c1", "c2"]
    m = pruned(groups, keep_of(grp, [0, 5]))
    assert input_value(m, "c1", 1).shape == (2, 3, 3, 3)
    assert input_value(m, "c2", 1).shape == (4, 2, 3, 3)
    exact(groups.model, keep_of(grp, [0, 5]))


def test_weight_shared_by_two_convs_couples_their_inputs_and_is_never_copied():
    # A weight read by several nodes has one keep-set; the readers'
    # channel spaces along each sliced axis become one group.
    g = Graph()
    wshared = g.rand("shared_W", (4, 6, 3, 3))
    a = g.add("Relu", [g.conv("x", 3, 6, name="ca")])
    b = g.add("Relu", [g.conv("x", 3, 6, name="cb")])
    sa = g.add("Conv", [a, wshared], name="sa", pads=[1, 1, 1, 1])
    sb = g.add("Conv", [b, wshared], name="sb", pads=[1, 1, 1, 1])
    s = g.add("Relu", [g.add("Add", [sa, sb], name="add")])
    y = g.conv(s, 4, 3, name="c3")
    groups = exact(g.build({"x": [1, 3, 8, 8]}, [y]), trials=6)
    ga, gb, gs = group_at(groups, "ca"), group_at(groups, "cb"), group_at(groups, "add")
    for grp in (ga, gs):
        assert_prunable(grp)
    assert ga is gb
    assert set(ga.members) == {"ca", "cb", "sa", "sb"}
    assert set(gs.members) == {"sa", "sb", "c3"}
    keep = {**keep_of(ga, [0, 1, 2]), **keep_of(gs, [1, 2, 3])}
    m = pruned(groups, keep)
    wa, wb = input_value(m, "sa", 1), input_value(m, "sb", 1)
    w = input_value(groups.model, "sa", 1)
    np.testing.assert_array_equal(wa, w[[1, 2, 3]][:, [0, 1, 2]])
    np.testing.assert_array_equal(wb, wa)  # still one shared weight
    assert _node(m, "sa").input[1] == _node(m, "sb").input[1]
    assert len(m.graph.initializer) == len(groups.model.graph.initializer)
    onnx.checker.check_model(m, full_check=True)
    exact(groups.model, keep)


def test_bias_shared_by_two_convs_couples_their_outputs():
    g = Graph()
    bias = g.rand("shared_B", (6,))
    a = g.add("Conv", ["x", g.rand("wa", (6, 3, 3, 3)), bias], name="ca", pads=[1, 1, 1, 1])
    b = g.add("Conv", ["x", g.rand("wb", (6, 3, 3, 3)), bias], name="cb", pads=[1, 1, 1, 1])
    ya = g.conv(g.add("Relu", [a]), 6, 4, name="ya")
    yb = g.conv(g.add("Relu", [b]), 6, 4, name="yb")
    model = g.build({"x": [1, 3, 6, 6]}, [ya, yb])
    groups = exact(model, trials=6)
    ga, gb = group_at(groups, "ca"), group_at(groups, "cb")
    assert ga is gb
    m = pruned(groups, keep_of(ga, [0, 2, 5]))
    b0 = input_value(model, "ca", 2)
    np.testing.assert_array_equal(input_value(m, "ca", 2), b0[[0, 2, 5]])
    assert _node(m, "ca").input[2] == _node(m, "cb").input[2]
    exact(model, keep_of(ga, [0, 2, 5]))


def test_weight_also_read_by_an_op_that_cannot_slice_it_freezes():
    g = Graph()
    w = g.rand("W", (4, 3, 3, 3))
    a = g.add("Conv", ["x", w], name="c1", pads=[1, 1, 1, 1])
    y = g.conv(g.add("Relu", [a]), 4, 2, name="c2")
    stat = g.add("ReduceSum", [w], keepdims=0)  # reads the whole weight
    model = g.build({"x": [1, 3, 6, 6]}, [y, stat])
    groups = exact(model)
    grp = group_at(groups, "c1")
    assert_frozen(grp, "also read by node")


def _node(model, name):
    return next(n for n in model.graph.node if n.name == name)


def test_conv1d_chain_prunes_channels():
    g = Graph()
    a = g.add("Conv", ["x", g.rand("w1", (6, 3, 3))], name="c1", pads=[1, 1])
    y = g.add("Conv", [g.add("Relu", [a]), g.rand("w2", (4, 6, 3))], name="c2", pads=[1, 1])
    model = g.build({"x": [1, 3, 7]}, [y])
    groups = exact(model)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    m = pruned(groups, keep_of(grp, [2]))
    assert input_value(m, "c2", 1).shape == (4, 1, 3)


@pytest.mark.parametrize("depthwise", [False, True])
def test_pruned_model_with_value_info_keeps_shapes_consistent(depthwise):
    g = Graph()
    a = g.conv("x", 3, 6, name="c1")
    if depthwise:
        a = g.conv(a, 6, 6, group=6, name="dw")
    y = g.conv(g.add("Relu", [a], name="act"), 6, 4, name="c2")
    model = g.build({"x": [1, 3, 6, 6]}, [y], value_info=True)
    assert model.graph.value_info
    groups = exact(model)
    m = pruned(groups, keep_of(group_at(groups, "act"), [0, 3]))
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in m.graph.value_info}
    assert shapes["act"] == [1, 2, 6, 6]


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
def test_conv_freezes_a_channel_space_on_its_spatial_axes(op):
    """MatMul on the width axis of NCHW makes a 5-feature space along W; a Conv then
    slides over it, so removing a feature changes the output width: it must freeze."""
    g = Graph()
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")], name="act")
    m = g.matmul(a, 4, 5, name="mm")  # (1, 6, 4, 5)
    if op == "Conv":
        y = g.conv(m, 6, 4, name="c2")
    else:
        y = g.add("ConvTranspose", [m, g.rand("w", (6, 4, 2, 2))], name="c2", strides=[2, 2])
    groups = exact(g.build({"x": [1, 3, 4, 4]}, [y]), trials=6)
    assert_frozen(group_at(groups, "mm", 3), "'c2'")
    assert_prunable(group_at(groups, "act"))


def test_conv_weight_computed_from_constants_only_is_folded_and_pruned():
    """Mul(const, const) is a constant: it is evaluated, sliced and bypassed."""
    g = Graph()
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")])
    w = g.add("Mul", [g.rand("w_base", (5, 6, 3, 3)), g.init("w_scale", np.float32(2.0))])
    d = g.add("Conv", [a, w], name="dyn", pads=[1, 1, 1, 1])
    y = g.conv(g.add("Relu", [d], name="r2"), 5, 4, name="c2")
    model = g.build({"x": [1, 3, 8, 8]}, [y])
    groups = exact(model)
    assert_prunable(group_at(groups, "c1"))
    assert_prunable(group_at(groups, "dyn"))
