"""Expand, Tile, TopK, CumSum, ops that move elements by index, and the
shape-generating ops: each exact under the oracle, or frozen with its reason."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.helpers.graphs import Graph, assert_frozen, assert_prunable, exact, group_at, input_value, keep_of, pruned, value


def _expand_repeat_kv(entry_for_channels: int):
    """conv (6 ch) -> Unsqueeze -> Expand (x3 on a new axis) -> Reshape to 18 ch -> conv:
    the shape of grouped-query attention's repeat_kv."""
    g = Graph()
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")])
    u = g.add("Unsqueeze", [a, g.ints("ax", [2])])
    e = g.add("Expand", [u, g.ints("target", [1, entry_for_channels, 3, 4, 4])], name="expand")
    r = g.add("Reshape", [e, g.ints("shape", [1, 18, 4, 4])], name="merge")
    return g.build({"x": [1, 3, 4, 4]}, [g.conv(r, 18, 4, name="c2")])


@pytest.mark.parametrize("entry", [6, 1], ids=["target_names_channels", "target_keeps_them"])
def test_expand_repeats_channels_and_rewrites_a_target_that_names_them(entry):
    groups = exact(_expand_repeat_kv(entry), trials=5)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert set(grp.members) == {"c1", "c2"}
    m = pruned(groups, keep_of(grp, [1, 4]))
    assert input_value(m, "c2", 1).shape == (4, 6, 3, 3)  # two channels x three copies
    target = value(m, next(n for n in m.graph.node if n.name == "expand").input[1])
    assert list(target) == [1, 2 if entry == 6 else 1, 3, 4, 4]


def test_tile_along_channels_repeats_the_space_and_keeps_repeats():
    g = Graph()
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")])
    t = g.add("Tile", [a, g.ints("reps", [1, 2, 1, 1])], name="tile")
    groups = exact(g.build({"x": [1, 3, 4, 4]}, [g.conv(t, 12, 4, name="c2")]), trials=5)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    m = pruned(groups, keep_of(grp, [0, 5]))
    w0, w1 = input_value(groups.model, "c2", 1), input_value(m, "c2", 1)
    np.testing.assert_array_equal(w1, w0[:, [0, 5, 6, 11]])


def test_tile_with_repeats_computed_at_run_time_freezes():
    # repeats = [1, N, 1, 1] with N the symbolic batch: unknown until run time.
    g = Graph()
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")])
    reps = g.add("Concat", [g.ints("one", [1]), g.add("Shape", ["x"], start=0, end=1),
                            g.ints("ones", [1, 1])], axis=0)
    t = g.add("Tile", [a, reps], name="tile")
    model = g.build({"x": ["N", 3, 4, 4]}, {g.conv(t, 6, 4, name="c2"): [1, 4, 4, 4]})
    groups = exact(model, feeds={"x": np.ones((1, 3, 4, 4), np.float32)})
    assert_frozen(group_at(groups, "c1"), "tile repeats along a channel axis computed at run time")


@pytest.mark.parametrize("axis,frozen", [(-1, False), (1, True)])
def test_topk_and_cumsum_freeze_only_the_axis_they_work_along(axis, frozen):
    g = Graph()
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")])
    values, _ = g.add("TopK", [a, g.ints("k", [2])], n_out=2, name="topk", axis=axis)
    c = g.add("CumSum", [values, g.ints("csax", 2)], name="cumsum")
    cin = 2 if frozen else 6
    groups = exact(g.build({"x": [1, 3, 4, 4]}, [g.conv(c, cin, 4, name="c2")]))
    grp = group_at(groups, "c1")
    if frozen:
        assert_frozen(grp, "TopK selects along axis 1")
    else:
        assert_prunable(grp)
        assert "c2" in grp.members


def test_cumsum_along_channels_freezes_them():
    g = Graph()
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")])
    c = g.add("CumSum", [a, g.ints("csax", 1)], name="cumsum")
    groups = exact(g.build({"x": [1, 3, 4, 4]}, [g.conv(c, 6, 4, name="c2")]))
    assert_frozen(group_at(groups, "c1"), "cumulative sum along axis 1")


def test_gather_elements_freezes_with_its_reason_and_the_rest_prunes():
    g = Graph()
    a = g.add("Relu", [g.conv("x", 3, 6, name="c0")])
    b = g.add("Relu", [g.conv(a, 6, 5, name="c1")])
    idx = g.ints("idx", np.zeros((1, 5, 4, 4), np.int64))
    e = g.add("GatherElements", [b, idx], name="pick", axis=2)
    groups = exact(g.build({"x": [1, 3, 4, 4]}, [g.conv(e, 5, 4, name="c2")]))
    assert_frozen(group_at(groups, "c1"), "GatherElements moves elements by run-time indices")
    assert_prunable(group_at(groups, "c0"))


def test_constant_of_shape_reading_a_channel_count_freezes_it_through_shape():
    g = Graph()
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")])
    zeros = g.add("ConstantOfShape", [g.add("Shape", [a], name="shape")], name="zeros",
                  value=onnx.numpy_helper.from_array(np.array([0.5], np.float32)))
    s = g.add("Add", [a, zeros])
    groups = exact(g.build({"x": [1, 3, 4, 4]}, [g.conv(s, 6, 4, name="c2")]))
    assert_frozen(group_at(groups, "c1"), "read by Shape node 'shape'")


def test_an_axis_expanded_from_size_one_takes_the_channels_it_is_added_to():
    """``Expand(mean over channels (1, 1, 4, 4), [1, 6, 4, 4])`` holds six
    copies of one map: any k of them are the same, so the axis joins the
    channels it meets and the stated 6 is rewritten with them."""
    g = Graph()
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")])
    mean = g.add("ReduceMean", ["x"], axes=[1], keepdims=1)
    wide = g.add("Expand", [mean, g.ints("target", [1, 6, 4, 4])], name="wide")
    s = g.add("Add", [a, wide])
    groups = exact(g.build({"x": [1, 3, 4, 4]}, [g.conv(s, 6, 4, name="c2")]))
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    m = pruned(groups, keep_of(grp, [0, 2, 5]))
    assert input_value(m, "wide", 1).tolist() == [1, 3, 4, 4]


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space_keeps_each_output_channel_with_its_input_block(mode):
    g = Graph(opset=13)
    a = g.add("Relu", [g.conv("x", 3, 12, name="c1")])
    d = g.add("DepthToSpace", [a], name="d2s", blocksize=2, mode=mode)
    groups = exact(g.build({"x": [1, 3, 4, 4]}, [g.conv(d, 3, 4, name="c2")]), trials=5)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert grp.units == 3 and "c2" in grp.members
    m = pruned(groups, keep_of(grp, [2]))
    w0, w1 = input_value(groups.model, "c1", 1), input_value(m, "c1", 1)
    kept = [8, 9, 10, 11] if mode == "CRD" else [2, 5, 8, 11]
    np.testing.assert_array_equal(w1, w0[kept])


def test_space_to_depth_repeats_each_channel_over_the_block():
    g = Graph()
    a = g.add("Relu", [g.conv("x", 3, 4, name="c1")])
    s = g.add("SpaceToDepth", [a], name="s2d", blocksize=2)
    groups = exact(g.build({"x": [1, 3, 4, 4]}, [g.conv(s, 16, 5, name="c2")]), trials=5)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    m = pruned(groups, keep_of(grp, [1, 3]))
    w0, w1 = input_value(groups.model, "c2", 1), input_value(m, "c2", 1)
    np.testing.assert_array_equal(w1, w0[:, [1, 3, 5, 7, 9, 11, 13, 15]])


@pytest.mark.parametrize("stated", [False, True])
def test_a_constant_expanded_to_the_batch_is_sliced_with_the_channels_it_meets(stated):
    """A ViT's class token: ``cls (1, 1, 8)`` expanded to ``(N, 1, 8)`` by a
    target computed at run time, then concatenated with the patch
    projections (N, S, 8): the token is a parameter of those 8 channels,
    sliced where it is stored, and pruning them is exact. A target that
    states 8 itself would not follow: the channels freeze as before."""
    g = Graph()
    batch = g.add("Slice", [g.add("Shape", ["x"]), g.ints("s0", [0]), g.ints("e1", [1])])
    last = g.ints("eight", [8]) if stated else g.ints("one", [1])
    target = g.add("Concat", [batch, g.ints("one_seq", [1]), last], axis=0)
    cls = g.add("Expand", [g.rand("cls", (1, 1, 8)), target], name="expand")
    patches = g.matmul("x", 6, 8, name="proj")
    tokens = g.add("Concat", [cls, patches], axis=1, name="cat")
    y = g.matmul(g.add("Relu", [tokens]), 8, 4, name="head")
    groups = exact(g.build({"x": ["N", 5, 6]}, [y]))
    grp = group_at(groups, "proj", 2)
    if stated:
        assert_frozen(grp, "'expand'", "not tracked")
        return
    assert_prunable(grp)
    assert ("cls", 2) in grp.weights
    w = {t.name: tuple(t.dims) for t in pruned(groups, keep_of(grp, [1, 4, 6])).graph.initializer}
    assert w["cls"] == (1, 1, 3) and w["head_W"] == (3, 4)
