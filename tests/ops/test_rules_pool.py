"""Pooling, Resize/Upsample and Pad: spatial ops pass channels; a channel axis
that changes size freezes."""
import numpy as np
import pytest

from tests.helpers.graphs import Graph, assert_frozen, assert_prunable, exact, group_at, input_value, keep_of, pruned

POOLS = [
    ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    ("LpPool", {"kernel_shape": [2, 2], "p": 2}),
    ("GlobalAveragePool", {}),
    ("GlobalMaxPool", {}),
]


@pytest.mark.parametrize("batch", [1, "N"])
@pytest.mark.parametrize("op,attrs", POOLS, ids=[p[0] for p in POOLS])
def test_pool_passes_channels(op, attrs, batch):
    g = Graph()
    a = g.conv("x", 3, 6, name="c1")
    p = g.add(op, [a], name="pool", **attrs)
    y = g.conv(p, 6, 4, k=1, name="c2")
    groups = exact(g.build({"x": [batch, 3, 6, 6]}, [y]))
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert group_at(groups, "pool") is grp
    assert grp.members == ["c1", "c2"]


def test_maxpool_indices_output_freezes_channels():
    g = Graph()
    a = g.conv("x", 3, 6, name="c1")
    p, idx = g.add("MaxPool", [a], n_out=2, name="pool", kernel_shape=[2, 2], strides=[2, 2])
    y = g.conv(p, 6, 4, k=1, name="c2")
    model = g.build({"x": [1, 3, 6, 6]}, [y])
    assert_frozen(group_at(exact(model), "c1"), "'pool'", "indices")


def test_resize_with_scales_passes_channels():
    g = Graph(opset=13)
    a = g.conv("x", 3, 6, name="c1")
    r = g.add("Resize", [a, "", g.init("scales", np.array([1, 1, 2, 2], np.float32))],
              name="resize", mode="nearest")
    y = g.conv(r, 6, 4, name="c2")
    model = g.build({"x": [1, 3, 4, 4]}, [y])
    groups = exact(model)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert group_at(groups, "resize") is grp
    m = pruned(groups, keep_of(grp, [0, 2]))
    np.testing.assert_array_equal(input_value(m, "resize", 2), [1, 1, 2, 2])


@pytest.mark.parametrize("batch", [1, "N"])
def test_resize_with_sizes_rewrites_channel_count(batch):
    g = Graph(opset=13)
    a = g.conv("x", 3, 6, name="c1")
    r = g.add("Resize", [a, "", "", g.ints("sizes", [2 if batch == "N" else 1, 6, 8, 8])],
              name="resize", mode="linear")
    y = g.conv(r, 6, 4, name="c2")
    model = g.build({"x": [batch, 3, 4, 4]}, [y])
    groups = exact(model)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    m = pruned(groups, keep_of(grp, [1, 3, 4]))
    np.testing.assert_array_equal(input_value(m, "resize", 3), [2 if batch == "N" else 1, 3, 8, 8])
    exact(model, keep_of(grp, [1, 3, 4]))


def test_resize_with_spatial_axes_sizes_is_unchanged():
    g = Graph(opset=18)
    a = g.conv("x", 3, 6, name="c1")
    r = g.add("Resize", [a, "", "", g.ints("sizes", [8, 8])], name="resize", axes=[2, 3])
    y = g.conv(r, 6, 4, name="c2")
    model = g.build({"x": [1, 3, 4, 4]}, [y])
    groups = exact(model)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    m = pruned(groups, keep_of(grp, [1, 3, 4]))
    np.testing.assert_array_equal(input_value(m, "resize", 3), [8, 8])


def test_resize_along_channel_axis_freezes():
    g = Graph(opset=13)
    a = g.conv("x", 3, 6, name="c1")
    r = g.add("Resize", [a, "", g.init("scales", np.array([1, 2, 1, 1], np.float32))],
              name="resize", mode="nearest")
    y = g.conv(r, 12, 4, name="c2")
    groups = exact(g.build({"x": [1, 3, 4, 4]}, [y]))
    assert_frozen(group_at(groups, "c1"), "'resize'", "resized along a channel axis")


def test_upsample_opset9_passes_channels():
    g = Graph(opset=9)
    a = g.conv("x", 3, 6, name="c1")
    u = g.add("Upsample", [a, g.init("scales", np.array([1, 1, 2, 2], np.float32))],
              name="up", mode="nearest")
    y = g.conv(u, 6, 4, name="c2")
    groups = exact(g.build({"x": [1, 3, 4, 4]}, [y]))
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert group_at(groups, "up") is grp


@pytest.mark.parametrize("opset", [11, 18])
def test_pad_on_spatial_axes_passes_channels(opset):
    g = Graph(opset=opset)
    a = g.conv("x", 3, 6, name="c1")
    if opset >= 18:
        inputs = [a, g.ints("pads", [1, 2, 1, 0]), "", g.ints("axes", [2, 3])]
    else:
        inputs = [a, g.ints("pads", [0, 0, 1, 2, 0, 0, 1, 0])]
    p = g.add("Pad", inputs, name="pad", mode="reflect")
    y = g.conv(p, 6, 4, name="c2")
    model = g.build({"x": [1, 3, 5, 5]}, [y])
    groups = exact(model)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert group_at(groups, "pad") is grp
    m = pruned(groups, keep_of(grp, [0, 1]))
    np.testing.assert_array_equal(input_value(m, "pad", 1), input_value(model, "pad", 1))


def test_pad_opset2_attribute_on_spatial_axes_passes_channels():
    g = Graph(opset=9)
    a = g.conv("x", 3, 6, name="c1")
    p = g.add("Pad", [a], name="pad", pads=[0, 0, 1, 1, 0, 0, 1, 1])
    y = g.conv(p, 6, 4, name="c2")
    groups = exact(g.build({"x": [1, 3, 5, 5]}, [y]))
    assert_prunable(group_at(groups, "c1"))


def _channel_pad(g, a, opset, begin, end, **attrs):
    if opset >= 18:
        inputs = [a, g.ints("pads", [begin, end]), "", g.ints("axes", [1])]
    elif opset >= 11:
        inputs = [a, g.ints("pads", [0, begin, 0, 0, 0, end, 0, 0])]
    else:
        inputs, attrs = [a], {**attrs, "pads": [0, begin, 0, 0, 0, end, 0, 0]}
    if "value" in attrs and opset >= 11:
        inputs = [inputs[0], inputs[1], g.init("cval", np.float32(attrs.pop("value"))), *inputs[3:]]
    return g.add("Pad", inputs, name="pad", **attrs)


@pytest.mark.parametrize("value", [0.0, 0.5])
@pytest.mark.parametrize("opset", [9, 11, 18])
def test_constant_pad_on_channel_axis_adds_channels_that_prune_with_their_readers(opset, value):
    """A ResNet shortcut that pads 6 channels to 10 with constants and adds
    them to a 10-channel conv: the input's channels couple with the conv's
    first 6, the 1 + 3 added channels with its others (their own atoms),
    both prune, and the pads are rewritten to the counts kept."""
    g = Graph(opset=opset)
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")], name="act")
    p = _channel_pad(g, a, opset, 1, 3, value=value)
    s = g.add("Add", [p, g.conv(a, 6, 10, name="c3")], name="sum")
    y = g.conv(g.add("Relu", [s]), 10, 4, name="c2")
    model = g.build({"x": [1, 3, 5, 5]}, [y])
    groups = exact(model, trials=6)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    added = [gr for gr in groups.groups if gr is not grp and "c3" in gr.members]
    assert sorted(gr.channels for gr in added) == [1, 3] and all(gr.prunable for gr in added)
    big = max(added, key=lambda gr: gr.channels)
    keep = {**keep_of(grp, [0, 2, 5]), **keep_of(big, [1])}
    exact(model, keep)
    m = pruned(groups, keep)
    if opset < 11:
        pads = next(a.ints for n in m.graph.node if n.name == "pad" for a in n.attribute if a.name == "pads")
    else:
        pads = input_value(m, "pad", 1).tolist()
    begin, end = (pads[0], pads[1]) if opset >= 18 else (pads[1], pads[5])
    assert (begin, end) == (1, 1)  # the one added before, and one of the three after


@pytest.mark.parametrize("how", ["reflect", "edge", "negative"])
def test_pad_that_copies_or_crops_channels_freezes(how):
    g = Graph(opset=11)
    a = g.conv("x", 3, 6, name="c1")
    if how == "negative":
        p = g.add("Pad", [a, g.ints("pads", [0, 0, 0, 0, 0, -1, 0, 0])], name="pad")
    else:
        p = g.add("Pad", [a, g.ints("pads", [0, 1, 0, 0, 0, 1, 0, 0])], name="pad", mode=how)
    y = g.conv(p, 5 if how == "negative" else 8, 4, name="c2")
    groups = exact(g.build({"x": [1, 3, 5, 5]}, [y]))
    assert_frozen(group_at(groups, "c1"), "'pad'", "cropped" if how == "negative" else "copies channels")


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_pooling_over_an_axis_that_carries_channels_freezes_them(op):
    # NHWC: the conv's channels sit on axis 3, and a 2-D pool windows over axes 2 and 3.
    g = Graph()
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")])
    nhwc = g.add("Transpose", [a], perm=[0, 2, 3, 1])
    p = g.add(op, [nhwc], name="pool", kernel_shape=[2, 2], strides=[2, 2])
    y = g.add("Transpose", [p], perm=[0, 3, 1, 2])
    groups = exact(g.build({"x": [1, 3, 4, 6]}, [g.conv(y, 3, 4, name="c2")]))
    assert_frozen(group_at(groups, "c1"), "pooled along a channel axis")
