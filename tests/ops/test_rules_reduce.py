"""Reductions and soft-maxes: over spatial axes channels pass; over the channel axis they freeze."""
import pytest

from tests.helpers.graphs import Graph, assert_frozen, assert_prunable, exact, group_at, input_value, keep_of, pruned


def reduce_node(g, op, x, axes, keepdims, opset):
    if opset >= 18:
        return g.add(op, [x, g.ints("axes", axes)], name="red", keepdims=keepdims)
    return g.add(op, [x], name="red", axes=axes, keepdims=keepdims)


@pytest.mark.parametrize("opset", [13, 18], ids=["axes_attr", "axes_input"])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax"])
def test_reduce_over_spatial_axes_passes_channels(op, keepdims, opset):
    g = Graph(opset=opset)
    a = g.conv("x", 3, 6, name="c1")
    r = reduce_node(g, op, a, [2, 3], keepdims, opset)
    if keepdims:
        y = g.conv(r, 6, 4, k=1, name="c2")
    else:
        y = g.gemm(r, 6, 4, name="c2")
    model = g.build({"x": [1, 3, 5, 5]}, [y])
    groups = exact(model)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert group_at(groups, "red") is grp
    assert grp.members == ["c1", "c2"]
    m = pruned(groups, keep_of(grp, [2, 3]))
    assert input_value(m, "c2", 1).shape[:2] == ((4, 2) if keepdims else (2, 4))


def test_reduce_over_spatial_axes_with_symbolic_batch():
    g = Graph(opset=18)
    a = g.conv("x", 3, 6, name="c1")
    r = reduce_node(g, "ReduceMean", a, [-1, -2], 0, 18)
    y = g.gemm(r, 6, 4, name="c2")
    groups = exact(g.build({"x": ["N", 3, 5, 5]}, [y]))
    assert_prunable(group_at(groups, "c1"))


@pytest.mark.parametrize("opset", [13, 18], ids=["axes_attr", "axes_input"])
@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax"])
def test_reduce_over_channel_axis_freezes(op, opset):
    g = Graph(opset=opset)
    a = g.conv("x", 3, 6, name="c1")
    r = reduce_node(g, op, a, [1], 1, opset)
    y = g.conv(r, 1, 4, name="c2")
    groups = exact(g.build({"x": [1, 3, 5, 5]}, [y]))
    # a mean over channels is a norm's statistic: inexact, lifted only by --prune hidden
    assert_frozen(group_at(groups, "c1"), "'red'", "averaged over axis 1" if op == "ReduceMean"
                  else "reduced over axis 1")
    assert not groups.prunable


def test_reduce_over_all_axes_freezes():
    g = Graph(opset=13)
    a = g.conv("x", 3, 6, name="c1")
    r = g.add("ReduceSum", [a], name="red", keepdims=0)
    y = g.add("Mul", [r, g.init("k", 2.0)])
    groups = exact(g.build({"x": [1, 3, 5, 5]}, [y]))
    assert_frozen(group_at(groups, "c1"), "'red'", "reduced over axis 1")


@pytest.mark.parametrize("opset,axis", [(13, -1), (13, 2), (11, 2)])
def test_softmax_over_non_channel_axis_passes(opset, axis):
    g = Graph(opset=opset)
    a = g.conv("x", 3, 6, name="c1")
    s = g.add("Softmax", [a], name="sm", axis=axis)
    y = g.conv(s, 6, 4, name="c2")
    groups = exact(g.build({"x": [1, 3, 5, 5]}, [y]))
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert group_at(groups, "sm") is grp


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset,axis", [(13, 1), (13, -3), (11, 1), (11, 0)])
def test_softmax_over_channel_axis_freezes(op, opset, axis):
    g = Graph(opset=opset)
    a = g.conv("x", 3, 6, name="c1")
    s = g.add(op, [a], name="sm", axis=axis)
    y = g.conv(s, 6, 4, name="c2")
    groups = exact(g.build({"x": [1, 3, 5, 5]}, [y]))
    assert_frozen(group_at(groups, "c1"), "'sm'", "normalises over axis 1")


def test_softmax_on_last_axis_of_features_freezes_features():
    g = Graph(opset=13)
    h = g.matmul("x", 6, 8, name="fc1")
    s = g.add("Softmax", [h], name="sm", axis=-1)
    y = g.matmul(s, 8, 3, name="fc2")
    groups = exact(g.build({"x": [1, 5, 6]}, [y]))
    assert_frozen(group_at(groups, "fc1", -1), "'sm'", "normalises over axis 2")
