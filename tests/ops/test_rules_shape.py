"""Shape-moving rules: Concat, Split, Slice, Flatten/Reshape, Squeeze/Unsqueeze,
Transpose, and Shape reading a channel count."""
import numpy as np
import pytest

import onnxprune
from tests.helpers.graphs import (
    Graph,
    assert_frozen,
    assert_prunable,
    attr,
    exact,
    group_at,
    groups_at,
    input_value,
    keep_of,
    pruned,
    value,
)

INT_MAX = 2**63 - 1


# -- Concat ---------------------------------------------------------------------
def test_concat_of_branches_maps_offsets():
    g = Graph()
    a = g.add("Relu", [g.conv("x", 3, 4, name="ca")])
    b = g.add("Relu", [g.conv("x", 3, 6, name="cb")])
    c = g.add("Concat", [a, b], axis=1, name="cat")
    y = g.conv(c, 10, 4, name="c2")
    model = g.build({"x": [1, 3, 6, 6]}, [y])
    groups = exact(model, trials=5)
    ga, gb = groups_at(groups, "cat")
    assert_prunable(ga)
    assert_prunable(gb)
    assert (ga.units, gb.units) == (4, 6)
    assert ga.members == ["ca", "c2"] and gb.members == ["cb", "c2"]
    keep = {**keep_of(ga, [0, 3]), **keep_of(gb, [1, 2, 5])}
    m = pruned(groups, keep)
    w = input_value(model, "c2", 1)
    np.testing.assert_array_equal(input_value(m, "c2", 1), w[:, [0, 3, 5, 6, 9]])
    exact(model, keep)


def test_concat_of_the_same_tensor_twice_prunes_both_copies():
    g = Graph()
    a = g.add("Relu", [g.conv("x", 3, 4, name="ca")], name="act")
    c = g.add("Concat", [a, a], axis=1, name="cat")
    y = g.conv(c, 8, 4, name="c2")
    model = g.build({"x": [1, 3, 6, 6]}, [y])
    groups = exact(model)
    found = groups_at(groups, "cat")
    assert len(found) == 2 and found[0] is found[1]
    grp = found[0]
    assert_prunable(grp)
    assert grp.units == 4 and grp.members == ["ca", "c2"]
    m = pruned(groups, keep_of(grp, [1, 2]))
    w = input_value(model, "c2", 1)
    np.testing.assert_array_equal(input_value(m, "c2", 1), w[:, [1, 2, 5, 6]])
    exact(model, keep_of(grp, [1, 2]))


def test_concat_on_spatial_axis_couples_branch_channels():
    g = Graph()
    a = g.conv("x", 3, 6, name="ca")
    b = g.conv("x", 3, 6, name="cb")
    c = g.add("Concat", [a, b], axis=2, name="cat")
    y = g.conv(c, 6, 4, name="c2")
    groups = exact(g.build({"x": [1, 3, 4, 4]}, [y]))
    grp = group_at(groups, "cat")
    assert_prunable(grp)
    assert group_at(groups, "ca") is grp and group_at(groups, "cb") is grp


def test_concat_with_symbolic_batch_maps_offsets():
    g = Graph()
    a = g.conv("x", 3, 4, name="ca")
    b = g.conv("x", 3, 5, name="cb")
    y = g.conv(g.add("Concat", [a, b], axis=1, name="cat"), 9, 4, name="c2")
    groups = exact(g.build({"x": ["N", 3, 4, 4]}, [y]))
    assert [x.channels for x in groups_at(groups, "cat")] == [4, 5]
    assert all(x.prunable for x in groups_at(groups, "cat"))


# -- Split ----------------------------------------------------------------------
def split_model(opset, form):
    g = Graph(opset=opset)
    a = g.conv("x", 3, 10 if form != "num_outputs" else 8, name="c1")
    if form == "attr":
        p, q = g.add("Split", [a], n_out=2, name="split", axis=1, split=[4, 6])
    elif form == "input":
        p, q = g.add("Split", [a, g.ints("sizes", [4, 6])], n_out=2, name="split", axis=1)
    else:
        p, q = g.add("Split", [a], n_out=2, name="split", axis=1, num_outputs=2)
    cp, cq = (4, 6) if form != "num_outputs" else (4, 4)
    ya = g.conv(p, cp, 3, name="ya")
    yb = g.conv(q, cq, 3, name="yb")
    y = g.add("Add", [ya, yb], name="sum")
    return g.build({"x": [1, 3, 5, 5]}, [y]), p, q


@pytest.mark.parametrize("opset,form", [(11, "attr"), (13, "input"), (18, "input"),
                                        (18, "num_outputs")])
def test_split_on_channel_axis_rewrites_sizes(opset, form):
    model, p, q = split_model(opset, form)
    groups = exact(model, trials=5)
    gp, gq = group_at(groups, p), group_at(groups, q)
    assert_prunable(gp)
    assert_prunable(gq)
    assert groups_at(groups, "c1") == [gp, gq]
    assert gp.members == ["c1", "ya"] and gq.members == ["c1", "yb"]
    keep = {**keep_of(gp, [0, 2, 3]), **keep_of(gq, [1])}
    m = pruned(groups, keep)
    if form == "attr":
        assert attr(m, "split", "split") == [3, 1]
    else:
        np.testing.assert_array_equal(input_value(m, "split", 1), [3, 1])
        assert attr(m, "split", "num_outputs") is None
    exact(model, keep)


@pytest.mark.parametrize("opset", [11, 13])
def test_split_with_an_empty_piece_keeps_it_empty(opset):
    """A split size of 0 gives an empty output with no channel space; the
    rewrite keeps its 0 while the other sizes shrink (it once read the empty
    piece's layout: a TypeError, found by the control-flow fuzz)."""
    g = Graph(opset=opset)
    a = g.conv("x", 3, 10, name="c1")
    if opset < 13:
        p, e, q = g.add("Split", [a], n_out=3, name="split", axis=1, split=[4, 0, 6])
    else:
        p, e, q = g.add("Split", [a, g.ints("sizes", [4, 0, 6])], n_out=3, name="split", axis=1)
    y = g.add("Add", [g.conv(p, 4, 3, name="ya"), g.conv(q, 6, 3, name="yb")])
    model = g.build({"x": [1, 3, 5, 5]}, [y, e])
    groups = exact(model, trials=5)
    gp, gq = group_at(groups, p), group_at(groups, q)
    m = pruned(groups, {**keep_of(gp, [1, 2]), **keep_of(gq, [0, 3, 5])})
    sizes = attr(m, "split", "split") if opset < 13 else list(input_value(m, "split", 1))
    assert sizes == [2, 0, 3]


def test_split_on_spatial_axis_passes_channels_to_every_part():
    g = Graph(opset=13)
    a = g.conv("x", 3, 6, name="c1")
    p, q = g.add("Split", [a, g.ints("sizes", [2, 4])], n_out=2, name="split", axis=2)
    y = g.add("Concat", [g.conv(p, 6, 3, name="ya"), g.conv(q, 6, 3, name="yb")], axis=2)
    model = g.build({"x": [1, 3, 6, 6]}, [y])
    groups = exact(model)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert group_at(groups, p) is grp and group_at(groups, q) is grp
    m = pruned(groups, keep_of(grp, [0, 5]))
    np.testing.assert_array_equal(input_value(m, "split", 1), [2, 4])


# -- Slice ----------------------------------------------------------------------
@pytest.mark.parametrize("starts,ends", [([2], [7]), ([-8], [-3]), ([2], [INT_MAX])],
                         ids=["positive", "negative", "open_end"])
def test_slice_on_channel_axis_rewrites_starts_ends(starts, ends):
    g = Graph(opset=13)
    a = g.conv("x", 3, 10, name="c1")
    s = g.add("Slice", [a, g.ints("starts", starts), g.ints("ends", ends), g.ints("axes", [1])],
              name="slice")
    n = 10 - 2 if ends == [INT_MAX] else 5
    y = g.conv(s, n, 4, name="c2")
    model = g.build({"x": [1, 3, 5, 5]}, [y])
    groups = exact(model, trials=5)
    parts = groups_at(groups, "c1")
    assert [x.channels for x in parts] == ([2, 8] if n == 8 else [2, 5, 3])
    kept = group_at(groups, "slice")
    assert kept is parts[1]
    for x in parts:
        assert_prunable(x)
    assert kept.members == ["c1", "c2"]
    keep = {**keep_of(parts[0], [1]), **keep_of(kept, [0, 2, 4])}
    if n == 5:
        keep.update(keep_of(parts[2], [0, 2]))
    m = pruned(groups, keep)
    np.testing.assert_array_equal(input_value(m, "slice", 1), [1])
    np.testing.assert_array_equal(input_value(m, "slice", 2), [4])
    exact(model, keep)


def test_slice_opset9_attributes_rewritten():
    g = Graph(opset=9)
    a = g.conv("x", 3, 10, name="c1")
    s = g.add("Slice", [a], name="slice", axes=[1], starts=[2], ends=[7])
    y = g.conv(s, 5, 4, name="c2")
    model = g.build({"x": [1, 3, 5, 5]}, [y])
    groups = exact(model)
    before, kept, after = groups_at(groups, "c1")
    keep = {**keep_of(before, [0]), **keep_of(kept, [1, 2]), **keep_of(after, [0, 1, 2])}
    m = pruned(groups, keep)
    assert attr(m, "slice", "starts") == [1]
    assert attr(m, "slice", "ends") == [3]
    exact(model, keep)


def test_slice_on_spatial_axis_passes_channels():
    g = Graph(opset=13)
    a = g.conv("x", 3, 6, name="c1")
    s = g.add("Slice", [a, g.ints("starts", [1]), g.ints("ends", [4]), g.ints("axes", [2])],
              name="slice")
    y = g.conv(s, 6, 4, name="c2")
    model = g.build({"x": [1, 3, 6, 6]}, [y])
    groups = exact(model)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert group_at(groups, "slice") is grp
    m = pruned(groups, keep_of(grp, [0, 5]))
    np.testing.assert_array_equal(input_value(m, "slice", 1), [1])
    np.testing.assert_array_equal(input_value(m, "slice", 2), [4])


def test_strided_slice_on_channel_axis_freezes():
    g = Graph(opset=13)
    a = g.conv("x", 3, 8, name="c1")
    s = g.add("Slice", [a, g.ints("starts", [0]), g.ints("ends", [8]), g.ints("axes", [1]),
                        g.ints("steps", [2])], name="slice")
    y = g.conv(s, 4, 4, name="c2")
    groups = exact(g.build({"x": [1, 3, 5, 5]}, [y]))
    assert_frozen(group_at(groups, "c1"), "'slice'", "strided slice")


# -- Flatten / Reshape into Gemm and MatMul ------------------------------------------
def feature_map(g, c=4, name="c1"):
    """x (N,3,4,4) -> Conv -> Relu: a (N, c, 4, 4) map."""
    return g.add("Relu", [g.conv("x", 3, c, name=name)], name="act")


@pytest.mark.parametrize("batch", [1, "N"])
@pytest.mark.parametrize("consumer", ["Gemm", "MatMul"])
def test_flatten_into_linear_prunes_channel_blocks(consumer, batch):
    g = Graph()
    a = feature_map(g)
    f = g.add("Flatten", [a], name="flat", axis=1)
    fc = g.gemm if consumer == "Gemm" else g.matmul
    y = fc(g.add("Relu", [fc(f, 64, 5, name="fc1")]), 5, 3, name="fc2")
    model = g.build({"x": [batch, 3, 4, 4]}, [y])
    groups = exact(model)
    grp = group_at(groups, "act")
    assert_prunable(grp)
    assert group_at(groups, "flat") is grp
    assert grp.units == 4 and grp.width == 16
    assert grp.members == ["c1", "fc1"]
    m = pruned(groups, keep_of(grp, [1, 3]))
    w = input_value(model, "fc1", 1)
    rows = np.r_[16:32, 48:64]
    np.testing.assert_array_equal(input_value(m, "fc1", 1), w[rows])
    exact(model, keep_of(grp, [1, 3]))


@pytest.mark.parametrize("consumer", ["Gemm", "MatMul"])
@pytest.mark.parametrize("shape,expect", [([1, 64], [1, 32]), ([-1, 64], [-1, 32]),
                                          ([0, -1], [0, -1])], ids=["literal", "minus1", "zero"])
def test_reshape_flatten_into_linear_rewrites_shape_constant(shape, expect, consumer):
    g = Graph()
    a = feature_map(g)
    r = g.add("Reshape", [a, g.ints("shape", shape)], name="reshape")
    fc = g.gemm if consumer == "Gemm" else g.matmul
    y = fc(g.add("Relu", [fc(r, 64, 5, name="fc1")]), 5, 3, name="fc2")
    model = g.build({"x": [1, 3, 4, 4]}, [y])
    groups = exact(model)
    grp = group_at(groups, "act")
    assert_prunable(grp)
    assert group_at(groups, "reshape") is grp and grp.width == 16
    m = pruned(groups, keep_of(grp, [0, 2]))
    np.testing.assert_array_equal(input_value(m, "reshape", 1), expect)
    assert input_value(m, "fc1", 1).shape == (32, 5)
    exact(model, keep_of(grp, [0, 2]))


def test_reshape_with_symbolic_batch_and_minus_one_rewrites_feature_count():
    g = Graph()
    a = feature_map(g)
    r = g.add("Reshape", [a, g.ints("shape", [-1, 64])], name="reshape")
    y = g.gemm(r, 64, 3, name="fc1")
    model = g.build({"x": ["N", 3, 4, 4]}, [y])
    groups = exact(model)
    grp = group_at(groups, "act")
    assert_prunable(grp)
    m = pruned(groups, keep_of(grp, [3]))
    np.testing.assert_array_equal(input_value(m, "reshape", 1), [-1, 16])


def test_reshape_to_its_own_run_time_channel_count_prunes():
    """(N, C, H, W) -> Shape[0:2] ++ [-1] -> (N, C, H*W): the run-time shape
    reads C from the tensor it reshapes, at the axis C stays on, so it follows
    any pruning by itself (fold.Dim): exact, nothing rewritten in the shape."""
    g = Graph(opset=13)
    a = feature_map(g)
    head = g.add("Slice", [g.add("Shape", [a], name="shape"), g.ints("s0", [0]), g.ints("s2", [2])])
    dims = g.add("Concat", [head, g.ints("minus1", [-1])], axis=0)
    r = g.add("Reshape", [a, dims], name="reshape")
    y = g.matmul(g.add("Transpose", [r], perm=[0, 2, 1]), 4, 3, name="fc1")  # contracts C
    groups = exact(g.build({"x": [1, 3, 4, 4]}, {y: [1, 16, 3]}))
    assert_prunable(group_at(groups, "act"))


@pytest.mark.parametrize("batch", [1, "N"])
def test_reshape_to_a_run_time_product_of_the_channel_count_and_a_fixed_size_prunes(batch):
    """A CRNN's ``b, c, h, w = x.size(); x.permute(0, 3, 1, 2).reshape(b, w, c * h)``:
    the feature entry is Shape[1] * Shape[2], C times a size pruning does not
    change, so it follows the pruned count by itself (fold.Dim with a factor):
    exact, and the MatMul reading the C*H features is sliced in blocks of H."""
    g = Graph(opset=13)
    a = feature_map(g)
    s = g.add("Shape", [a], name="shape")

    def entry(i):
        return g.add("Gather", [s, g.ints(f"i{i}", i)], axis=0)

    ch = g.add("Mul", [entry(1), entry(2)], name="c_times_h")
    dims = g.add("Concat", [g.add("Unsqueeze", [v, g.ints(f"ax{k}", [0])]) for k, v in
                            enumerate([entry(0), entry(3), ch])], axis=0)
    t = g.add("Transpose", [a], perm=[0, 3, 1, 2])
    r = g.add("Reshape", [t, dims], name="reshape")
    y = g.matmul(r, 16, 3, name="fc1")
    groups = exact(g.build({"x": [batch, 3, 4, 4]}, {y: [batch, 4, 3]}))
    grp = group_at(groups, "act")
    assert_prunable(grp)
    assert "fc1" in grp.members
    exact(g.build({"x": [batch, 3, 4, 4]}, {y: [batch, 4, 3]}), keep_of(grp, [0, 2]))


def test_a_product_of_two_channel_counts_in_a_run_time_shape_freezes():
    """C1 * C2 read from two pruned tensors sets one reshape entry: the entry
    would follow neither count alone, so the counts freeze, with the reason."""
    g = Graph(opset=13)
    a = feature_map(g)
    b = g.add("Relu", [g.conv("x", 3, 2, name="c4")], name="act2")
    c1 = g.add("Gather", [g.add("Shape", [a], name="shape_a"), g.ints("i1", 1)], axis=0)
    c2 = g.add("Gather", [g.add("Shape", [b], name="shape_b"), g.ints("j1", 1)], axis=0)
    both = g.add("Unsqueeze", [g.add("Mul", [c1, c2]), g.ints("ax0", [0])])
    dims = g.add("Concat", [g.ints("one", [1]), both, g.ints("minus1", [-1])], axis=0)
    r = g.add("Reshape", [g.add("Mul", [a, g.add("Slice", [b, g.ints("s0", [0]), g.ints("s1", [1]),
                                                              g.ints("sa", [1])])]), dims], name="reshape")
    y = g.conv(a, 4, 2, name="c2")
    z = g.conv(b, 2, 2, name="c5")
    groups = exact(g.build({"x": [1, 3, 4, 4]}, {y: [1, 2, 4, 4], z: [1, 2, 4, 4], r: [1, 8, 8]}))
    assert any("another channel count" in why for grp in groups.groups for why in grp.frozen)


@pytest.mark.parametrize("how", ["flat", "arith", "square", "other_group"])
def test_a_channel_count_read_by_shape_that_lands_elsewhere_freezes(how):
    """C read by Shape sets the size of another tensor's axis (or passes
    through arithmetic): pruning C would not change that size, so C freezes.
    Without that read the group prunes (the control)."""
    for read in (True, False):
        g = Graph(opset=13)
        a = feature_map(g)
        y = g.conv(a, 4, 2, name="c2")  # contracts C: nothing else freezes it
        if read:
            c = g.add("Slice", [g.add("Shape", [a], name="shape"), g.ints("s1", [1]), g.ints("s2", [2])])
            if how == "arith":
                c = g.add("Add", [c, g.ints("zero", [0])])
            elif how == "square":
                c = g.add("Mul", [c, c])
        else:
            c = g.ints("four", [16 if how == "square" else 4])
        t = g.add("Relu", [g.conv("x", 3, 4, name="c3")], name="other")  # another group of 4
        if how != "other_group":
            t = g.add("Reshape", [t, g.ints("flat", [1, -1])])  # (1, 64): no channel axis left
        dims = g.add("Concat", [g.ints("one", [1]), c, g.ints("minus1", [-1])], axis=0)
        r = g.add("Reshape", [t, dims], name="reshape")
        rows = 16 if how == "square" else 4
        groups = exact(g.build({"x": [1, 3, 4, 4]}, {y: [1, 2, 4, 4], r: [1, rows, 64 // rows]}))
        grp = group_at(groups, "act")
        if read:
            assert grp.frozen and any("Shape" in r or "target" in r for r in grp.frozen), (how, grp.frozen)
        else:
            assert_prunable(grp)


def test_reshape_to_run_time_batch_flatten_is_frozen_or_exact():
    """x.view(x.size(0), -1): Shape -> Gather(0) -> Unsqueeze -> Concat([n, -1]) -> Reshape.

    Either answer is right: freeze with a reason, or prune and stay exact. ONNX shape
    inference does not type the Reshape output here."""
    g = Graph(opset=13)
    a = feature_map(g)
    batch = g.add("Gather", [g.add("Shape", [a], name="shape"), g.ints("i0", 0)], axis=0)
    dims = g.add("Concat", [g.add("Unsqueeze", [batch, g.ints("ax0", [0])]),
                            g.ints("minus1", [-1])], axis=0)
    r = g.add("Reshape", [a, dims], name="reshape")
    y = g.gemm(r, 64, 3, name="fc1")
    model = g.build({"x": [1, 3, 4, 4]}, [y])
    groups = onnxprune.analyze(model)
    grp = group_at(groups, "act")
    if grp.frozen:
        assert_frozen(grp, "'reshape'", "computed at run time")
    else:
        assert "fc1" in grp.members, "the Gemm reading the flattened map must be sliced too"
    exact(model, keep_of(grp, [0, 1, 2]) if grp.prunable else None)


def test_reshape_splitting_features_into_heads_prunes_whole_heads():
    g = Graph()
    h = g.matmul("x", 6, 8, name="fc1")
    r = g.add("Reshape", [h, g.ints("heads", [1, 5, 2, 4])], name="split_heads")
    r = g.add("Relu", [r])
    b = g.add("Reshape", [r, g.ints("merged", [1, 5, 8])], name="merge_heads")
    y = g.matmul(b, 8, 3, name="fc2")
    model = g.build({"x": [1, 5, 6]}, [y])
    groups = exact(model)
    grp = group_at(groups, "split_heads", 2)
    assert_prunable(grp)
    assert grp.units == 2 and grp.width == 4
    assert group_at(groups, "merge_heads", 2) is grp
    m = pruned(groups, keep_of(grp, [1]))
    np.testing.assert_array_equal(input_value(m, "split_heads", 1), [1, 5, 1, 4])
    np.testing.assert_array_equal(input_value(m, "merge_heads", 1), [1, 5, 4])
    w = input_value(model, "fc1", 1)
    np.testing.assert_array_equal(input_value(m, "fc1", 1), w[:, 4:8])
    exact(model, keep_of(grp, [1]))


def test_reshape_folding_rows_into_channels_prunes_channel_blocks():
    """(1, 4, 4, 4) -> (1, 8, 2, 4): channel c becomes new channels 2c and 2c+1."""
    g = Graph()
    a = feature_map(g)
    r = g.add("Reshape", [a, g.ints("shape", [1, 8, 2, 4])], name="reshape")
    y = g.conv(r, 8, 3, name="c2")
    model = g.build({"x": [1, 3, 4, 4]}, [y])
    groups = exact(model)
    grp = group_at(groups, "act")
    assert_prunable(grp)
    assert group_at(groups, "reshape") is grp and grp.width == 2
    m = pruned(groups, keep_of(grp, [1, 2]))
    np.testing.assert_array_equal(input_value(m, "reshape", 1), [1, 4, 2, 4])
    w = input_value(model, "c2", 1)
    np.testing.assert_array_equal(input_value(m, "c2", 1), w[:, [2, 3, 4, 5]])
    exact(model, keep_of(grp, [1, 2]))


def test_reshape_splitting_channels_unevenly_freezes():
    """(1, 6, 4, 4) -> (1, 4, 6, 4): new channel boundaries cut old channels."""
    g = Graph()
    a = feature_map(g, c=6)
    r = g.add("Reshape", [a, g.ints("shape", [1, 4, 6, 4])], name="reshape")
    y = g.conv(r, 4, 3, name="c2")
    groups = exact(g.build({"x": [1, 3, 4, 4]}, [y]))
    assert_frozen(group_at(groups, "act"), "'reshape'", "unevenly")


# -- Squeeze / Unsqueeze -----------------------------------------------------------
@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze_carry_channels(opset):
    g = Graph(opset=opset)
    a = g.conv("x", 3, 6, name="c1")
    p = g.add("GlobalAveragePool", [a])
    if opset >= 13:
        s = g.add("Squeeze", [p, g.ints("axes", [2, 3])], name="squeeze")
    else:
        s = g.add("Squeeze", [p], name="squeeze", axes=[2, 3])
    h = g.add("Relu", [g.gemm(s, 6, 5, name="fc")], name="hidden")
    if opset >= 13:
        u = g.add("Unsqueeze", [h, g.ints("axes2", [2, 3])], name="unsqueeze")
    else:
        u = g.add("Unsqueeze", [h], name="unsqueeze", axes=[2, 3])
    y = g.conv(u, 5, 4, k=1, name="c2")
    model = g.build({"x": [1, 3, 4, 4]}, [y])
    groups = exact(model, trials=5)
    g1, g2 = group_at(groups, "c1"), group_at(groups, "hidden")
    assert_prunable(g1)
    assert_prunable(g2)
    assert group_at(groups, "squeeze") is g1 and group_at(groups, "unsqueeze") is g2
    assert g1.members == ["c1", "fc"] and g2.members == ["fc", "c2"]
    keep = {**keep_of(g1, [0, 5]), **keep_of(g2, [1, 2, 3])}
    m = pruned(groups, keep)
    assert input_value(m, "fc", 1).shape == (2, 3)
    exact(model, keep)


def test_squeeze_without_axes_needs_two_channels_kept():
    g = Graph(opset=13)
    a = g.conv("x", 3, 6, name="c1")
    s = g.add("Squeeze", [g.add("GlobalAveragePool", [a])], name="squeeze")  # (1,6,1,1) -> (6,)
    y = g.matmul(s, 6, 4, name="fc")
    groups = exact(g.build({"x": [1, 3, 4, 4]}, [y]), trials=6)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert grp.min_keep == 2


# -- Transpose ----------------------------------------------------------------------
def test_transpose_to_nhwc_matmul_and_back_prunes_both_spaces():
    g = Graph()
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")], name="act")
    t = g.add("Transpose", [a], perm=[0, 2, 3, 1], name="to_nhwc")
    h = g.add("Relu", [g.matmul(t, 6, 5, name="fc")], name="hidden")
    b = g.add("Transpose", [h], perm=[0, 3, 1, 2], name="to_nchw")
    y = g.conv(b, 5, 4, name="c2")
    model = g.build({"x": [1, 3, 4, 4]}, [y])
    groups = exact(model, trials=5)
    g1, g2 = group_at(groups, "act"), group_at(groups, "to_nchw")
    assert_prunable(g1)
    assert_prunable(g2)
    assert group_at(groups, "to_nhwc", 3) is g1 and group_at(groups, "hidden", 3) is g2
    keep = {**keep_of(g1, [1, 2]), **keep_of(g2, [0, 4])}
    m = pruned(groups, keep)
    assert input_value(m, "fc", 1).shape == (2, 2)
    assert input_value(m, "c2", 1).shape == (4, 2, 3, 3)
    exact(model, keep)


@pytest.mark.parametrize("batch", [1, "N"])
def test_channels_last_flatten_into_gemm_prunes_strided_blocks(batch):
    g = Graph()
    a = feature_map(g)
    t = g.add("Transpose", [a], perm=[0, 2, 3, 1], name="to_nhwc")
    f = g.add("Flatten", [t], name="flat", axis=1)
    y = g.gemm(f, 64, 3, name="fc1")
    model = g.build({"x": [batch, 3, 4, 4]}, [y])
    groups = exact(model)
    grp = group_at(groups, "act")
    assert_prunable(grp)
    assert group_at(groups, "flat") is grp and grp.width == 16
    m = pruned(groups, keep_of(grp, [0, 2]))
    w = input_value(model, "fc1", 1)
    rows = np.sort(np.r_[0:64:4, 2:64:4])
    np.testing.assert_array_equal(input_value(m, "fc1", 1), w[rows])
    exact(model, keep_of(grp, [0, 2]))


# -- Shape ------------------------------------------------------------------------
def test_shape_reading_a_channel_count_freezes():
    g = Graph(opset=13)
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")], name="act")
    c = g.add("Gather", [g.add("Shape", [a], name="shape"), g.ints("i1", 1)], axis=0)
    n = g.add("Cast", [c], to=1, name="count")
    y = g.add("Mul", [g.conv(a, 6, 4, name="c2"), n])
    groups = exact(g.build({"x": [1, 3, 4, 4]}, [y]))
    assert_frozen(group_at(groups, "act"), "read by Shape node 'shape'")


def test_whole_shape_vector_reads_channel_count():
    g = Graph(opset=13)
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")], name="act")
    s = g.add("Cast", [g.add("Shape", [a], name="shape")], to=1)
    y = g.add("Mul", [g.add("ReduceSum", [g.conv(a, 6, 4, name="c2")], keepdims=0),
                      g.add("ReduceSum", [s], keepdims=0)])
    groups = exact(g.build({"x": [1, 3, 4, 4]}, [y]))
    assert_frozen(group_at(groups, "act"), "read by Shape node 'shape'")


@pytest.mark.parametrize("how", ["gather0", "slice01", "start_end"])
def test_shape_read_only_for_batch_dim_keeps_channels_prunable(how):
    g = Graph(opset=15)
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")], name="act")
    if how == "gather0":
        n = g.add("Gather", [g.add("Shape", [a], name="shape"), g.ints("i0", 0)], axis=0)
    elif how == "slice01":
        n = g.add("Slice", [g.add("Shape", [a], name="shape"), g.ints("s", [0]), g.ints("e", [1])])
    else:
        n = g.add("Shape", [a], name="shape", start=0, end=1)
    n = g.add("Cast", [n], to=1, name="batch")
    y = g.add("Mul", [g.conv(a, 6, 4, name="c2"), n])
    groups = exact(g.build({"x": ["N", 3, 4, 4]}, [y]))
    grp = group_at(groups, "act")
    assert_prunable(grp)
    assert grp.members == ["c1", "c2"]


def test_concat_with_a_constant_branch_prunes_the_activation_part():
    g = Graph()
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")], name="act")
    c = g.add("Concat", [a, g.rand("extra", (1, 2, 5, 5))], axis=1, name="cat")
    y = g.conv(c, 8, 4, name="c2")
    model = g.build({"x": [1, 3, 5, 5]}, [y])
    groups = exact(model)
    ga, gk = groups_at(groups, "cat")
    assert_prunable(ga)
    assert gk.frozen and gk.channels == 2
    m = pruned(groups, keep_of(ga, [0, 5]))
    w = input_value(model, "c2", 1)
    np.testing.assert_array_equal(input_value(m, "c2", 1), w[:, [0, 5, 6, 7]])
    exact(model, keep_of(ga, [0, 5]))


@pytest.mark.parametrize("axes,starts,ends", [([2, 1], [1, 2], [5, 7]), ([-3], [2], [7])],
                         ids=["two_axes", "negative_axis"])
def test_slice_on_channel_axis_among_other_axes_rewrites_its_own_entry(axes, starts, ends):
    g = Graph(opset=13)
    a = g.conv("x", 3, 10, name="c1")
    s = g.add("Slice", [a, g.ints("starts", starts), g.ints("ends", ends), g.ints("axes", axes)],
              name="slice")
    y = g.conv(s, 5, 4, name="c2")
    model = g.build({"x": [1, 3, 6, 6]}, [y])
    groups = exact(model, trials=5)
    before, kept, after = groups_at(groups, "c1")
    keep = {**keep_of(before, [0]), **keep_of(kept, [1, 2, 3]), **keep_of(after, [1])}
    m = pruned(groups, keep)
    k = axes.index(1) if 1 in axes else 0
    new_starts, new_ends = list(starts), list(ends)
    new_starts[k], new_ends[k] = 1, 4
    np.testing.assert_array_equal(input_value(m, "slice", 1), new_starts)
    np.testing.assert_array_equal(input_value(m, "slice", 2), new_ends)
    exact(model, keep)


@pytest.mark.parametrize("case", ["flatten", "reshape", "split", "slice", "concat"])
def test_shape_moving_ops_with_value_info_stay_valid(case):
    """Exporters record intermediate shapes (value_info): they must shrink with the channels."""
    g = Graph(opset=13)
    a = feature_map(g, c=6)
    if case == "flatten":
        y = g.gemm(g.add("Flatten", [a]), 96, 3)
    elif case == "reshape":
        y = g.gemm(g.add("Reshape", [a, g.ints("shape", [1, 96])]), 96, 3)
    elif case == "split":
        p, q = g.add("Split", [a, g.ints("sizes", [2, 4])], n_out=2, axis=1)
        y = g.add("Add", [g.conv(p, 2, 3), g.conv(q, 4, 3)])
    elif case == "slice":
        s = g.add("Slice", [a, g.ints("s", [1]), g.ints("e", [5]), g.ints("ax", [1])])
        y = g.conv(s, 4, 3)
    else:
        b = g.add("Relu", [g.conv("x", 3, 2, name="cb")])
        y = g.conv(g.add("Concat", [a, b], axis=1), 8, 3)
    groups = exact(g.build({"x": [1, 3, 4, 4]}, [y], value_info=True), trials=5)
    assert groups.prunable


def _shape_gather(start, index, end=None):
    g = Graph(opset=15)
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")], name="act")
    kw = {"start": start} if end is None else {"start": start, "end": end}
    n = g.add("Gather", [g.add("Shape", [a], name="shape", **kw), g.ints("i", index)], axis=0)
    y = g.add("Mul", [g.conv(a, 6, 4, name="c2"), g.add("Cast", [n], to=1)])
    return g.build({"x": [1, 3, 4, 4]}, [y])


@pytest.mark.parametrize("start,index,end", [(1, 0, None), (0, 1, -2)], ids=["start1", "end_neg"])
def test_shape_with_start_end_reading_the_channel_count_freezes(start, index, end):
    groups = exact(_shape_gather(start, index, end))
    assert_frozen(group_at(groups, "act"), "read by Shape node 'shape'")


@pytest.mark.parametrize("start,index", [(-3, 0), (-4, 1)])
def test_shape_with_negative_start_reading_the_channel_count_freezes(start, index):
    """Shape(x, start=-3) on (N, C, H, W) is [C, H, W]: Gather(0) reads C (start=-4: Gather(1))."""
    groups = exact(_shape_gather(start, index))
    assert_frozen(group_at(groups, "act"), "read by Shape node 'shape'")


def test_gather_along_channel_axis_freezes_and_other_axes_pass():
    g = Graph(opset=13)
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")], name="act")
    s = g.add("Gather", [a, g.ints("idx", [0, 2, 3])], axis=1, name="pick")
    r = g.add("Gather", [a, g.ints("row_idx", 0)], axis=2, name="row")  # (1, 6, 4)
    y1 = g.conv(s, 3, 4, name="c2")
    y2 = g.add("Conv", [r, g.rand("w", (4, 6, 1))], name="c3")
    groups = exact(g.build({"x": [1, 3, 4, 4]}, [y1, y2]))
    assert_frozen(group_at(groups, "act"), "'pick'", "gathered along a channel axis")
    assert group_at(groups, "row") is group_at(groups, "act")


def test_reshape_zero_entry_copying_the_channel_axis_keeps_it_prunable():
    """(1, C, 4, 4) -> [0, 0, 16]: the 0 copies the (pruned) channel count, the shape stays."""
    g = Graph()
    a = feature_map(g)
    r = g.add("Reshape", [a, g.ints("shape", [0, 0, 16])], name="reshape")
    y = g.add("Conv", [r, g.rand("w", (3, 4, 1))], name="c2")  # Conv1d over the 16 positions
    model = g.build({"x": [1, 3, 4, 4]}, [y])
    groups = exact(model, trials=5)
    grp = group_at(groups, "act")
    assert_prunable(grp)
    assert group_at(groups, "reshape") is grp
    m = pruned(groups, keep_of(grp, [0, 3]))
    np.testing.assert_array_equal(input_value(m, "reshape", 1), [0, 0, 16])
    assert input_value(m, "c2", 1).shape == (3, 2, 1)
    exact(model, keep_of(grp, [0, 3]))


@pytest.mark.parametrize("via", ["Identity", "Cast"])
def test_shape_read_through_identity_or_cast_of_another_axis_keeps_channels(via):
    # Paddle and tf2onnx put an Identity (or a Cast) between Shape and the Slice
    # or Gather that picks the batch size.
    g = Graph()
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")])
    s = g.add("Shape", [a], name="shape")
    s = g.add(via, [s]) if via == "Identity" else g.add("Cast", [s], to=7)
    n = g.add("Gather", [s, g.ints("zero", 0)], axis=0)
    flat_shape = g.add("Concat", [g.add("Unsqueeze", [n, g.ints("ax0", [0])]), g.ints("rest", [-1])], axis=0)
    flat = g.add("Reshape", [a, flat_shape], name="flat")
    groups = exact(g.build({"x": ["N", 3, 4, 4]}, [g.gemm(flat, 6 * 16, 3, name="fc")]))
    assert_prunable(group_at(groups, "c1"))


def test_head_split_reshape_with_a_run_time_shape_rewrites_its_literal_head_count():
    # TorchScript: Reshape(q, Concat(Shape(q)[0:2], [heads], [head_dim])): the head count
    # is a literal inside a shape built at run time; it is rewritten where it is stated.
    g = Graph()
    q = g.matmul("x", 8, 12, name="q")  # (N, S, 12) = 3 heads of 4
    s = g.add("Shape", [q], name="qshape")
    bs = g.add("Slice", [s, g.ints("s0", [0]), g.ints("s2", [2])])
    heads, dim = g.ints("heads", [3]), g.ints("dim", [4])
    split = g.add("Reshape", [q, g.add("Concat", [bs, heads, dim], axis=0)], name="split")
    t = g.add("Transpose", [split], perm=[0, 2, 1, 3])
    back = g.add("Reshape", [g.add("Transpose", [g.add("Relu", [t])], perm=[0, 2, 1, 3]),
                             g.add("Concat", [g.add("Slice", [g.add("Shape", [split], name="sshape"),
                                                                g.ints("b0", [0]), g.ints("b2", [2])]),
                                              g.ints("hidden", [12])], axis=0)], name="merge")
    model = g.build({"x": [2, 5, 8]}, [g.matmul(back, 12, 3, name="out")])
    groups = exact(model, trials=5)
    grp = group_at(groups, "q", -1)
    assert_prunable(grp)
    assert (grp.units, grp.width) == (3, 4)
    m = pruned(groups, keep_of(grp, [0, 2]))
    assert list(value(m, "heads")) == [2] and list(value(m, "hidden")) == [8]
    assert list(value(m, "dim")) == [4]


def _split_to_heads(g, head_dims: str) -> str:
    """x (2, 5, 8) -> q (N, S, 12) = 3 heads of 4 -> Reshape(q, Concat(Shape(q)[0:2], head_dims))
    -> Relu -> merged back to (N, S, 12)."""
    q = g.matmul("x", 8, 12, name="q")
    bs = g.add("Slice", [g.add("Shape", [q]), g.ints("s0", [0]), g.ints("s2", [2])])
    split = g.add("Reshape", [q, g.add("Concat", [bs, head_dims], axis=0)], name="split")
    return g.add("Reshape", [g.add("Relu", [split]), g.ints("merged", [0, 0, -1])], name="merge")


def test_head_count_picked_by_gather_from_a_constant_vector_is_rewritten():
    g = Graph()
    back = _split_to_heads(g, g.add("Gather", [g.ints("dims", [7, 3, 4]), g.ints("pick", [1, 2])], axis=0))
    groups = exact(g.build({"x": [2, 5, 8]}, [g.matmul(back, 12, 3, name="out")]), trials=5)
    grp = group_at(groups, "q", -1)
    assert (grp.units, grp.width) == (3, 4)
    assert list(value(pruned(groups, keep_of(grp, [1])), "dims")) == [7, 1, 4]


def test_head_count_read_from_the_shape_of_a_constant_is_rewritten_by_cutting_the_constant():
    # tf2onnx's einsum: Reshape(q, Concat(Shape(q)[0:2], Gather(Shape(kernel), [2, 3]))) where the
    # kernel, stored as [1, 1, heads, head_dim, hidden], is read only by that Shape.
    g = Graph()
    kernel = g.rand("kernel", (1, 1, 3, 4, 8))
    back = _split_to_heads(g, g.add("Gather", [g.add("Shape", [kernel], name="kshape"),
                                               g.ints("pick", [-3, 3])], axis=0))
    groups = exact(g.build({"x": [2, 5, 8]}, [g.matmul(back, 12, 3, name="out")]), trials=5)
    grp = group_at(groups, "q", -1)
    assert_prunable(grp)
    assert (grp.units, grp.width) == (3, 4)
    m = pruned(groups, keep_of(grp, [0, 2]))
    assert list(value(m, "kernel").shape) == [1, 1, 2, 4, 8]
    # read by something else too, the constant is no literal: the heads freeze
    g.add("Identity", [kernel], name="other")
    frozen = onnxprune.analyze(g.build({"x": [2, 5, 8]}, [g.matmul(back, 12, 3, name="out2"), "other"]))
    assert_frozen(group_at(frozen, "q", -1), "names the channel count")


def test_a_shared_uniform_constant_does_not_tie_the_layers_that_read_it():
    # Exporters deduplicate identical constants: every zero bias of a randomly
    # initialised model becomes one initializer. That is no tie between layers.
    g = Graph()
    zero = g.init("zero_bias", np.zeros(6, np.float32))
    a = g.add("Relu", [g.add("Add", [g.matmul("x", 4, 6, name="m1"), zero])])
    b = g.add("Relu", [g.add("Add", [g.matmul(a, 6, 6, name="m2"), zero])])
    groups = exact(g.build({"x": [2, 4]}, [g.matmul(b, 6, 3, name="m3")]), trials=4)
    g1, g2 = group_at(groups, "m1", -1), group_at(groups, "m2", -1)
    assert g1 is not g2
    m = pruned(groups, {**keep_of(g1, [0, 1]), **keep_of(g2, [3, 4, 5])})
    from onnxprune.rewrite.invariants import violations

    assert not violations(groups.model, m)


def test_a_head_count_literal_shared_by_two_reshape_targets_is_one_count_for_both():
    """One shape vector Concat(Shape(x)[:1], [4], [8]) reshapes two unrelated
    projections (the dynamo exporter shares it between K and V): the literal
    is rewritten once, so both must keep the same heads, i.e. one group; a
    third reader of the vector that does not state a channel count freezes it."""
    for third in (False, True):
        g = Graph(opset=13)
        a, b = g.matmul("x", 16, 32, name="pa"), g.matmul("x", 16, 32, name="pb")
        n = g.add("Slice", [g.add("Shape", [a]), g.ints("s0", [0]), g.ints("s1", [1])])
        dims = g.add("Concat", [n, g.ints("heads", [4]), g.ints("dim", [8])], axis=0, name="dims")
        ra = g.add("Reshape", [a, dims], name="ra")
        rb = g.add("Reshape", [b, dims], name="rb")
        def heads_out(t, name):  # (N, 4, 8) -> (N, 8, 4) @ (4, 3): contracts the heads
            return g.matmul(g.add("Transpose", [t], perm=[0, 2, 1]), 4, 3, name=name)

        outs = {heads_out(ra, "oa"): ["N", 8, 3], heads_out(rb, "ob"): ["N", 8, 3]}
        if third:  # a third target of the same vector, on a tensor with no channels there
            other = g.add("Reshape", [g.add("Relu", ["x2"]), dims], name="rc")
            outs[other] = ["N", 4, 8]
        inputs = {"x": ["N", 16], **({"x2": ["N", 32]} if third else {})}
        groups = exact(g.build(inputs, outs))
        ha, hb = group_at(groups, "ra"), group_at(groups, "rb")
        if not third:
            assert ha.id == hb.id and ha.prunable, (ha, hb)
        else:
            assert ha.frozen and hb.frozen


def _merged_heads(reader: str | None = None, deep: bool = False):
    """Attention whose K^T goes through (N*4, D, S), as the dynamo exporter
    writes scaled_dot_product_attention: heads must survive the merge with
    the batch and the split back. ``reader``: an extra consumer of the
    merged tensor that indexes the merged axis."""
    g = Graph(opset=17)
    q, k, v = (g.matmul("x", 16, 16, name=n) for n in ("q", "k", "v"))

    def heads(t, name):  # (N, 6, 16) -> (N, 4, 6, 4)
        return g.add("Transpose", [g.add("Reshape", [t, g.ints(f"{name}_s", [0, 6, 4, 4])])], perm=[0, 2, 1, 3],
                     name=name)

    qh, kh, vh = heads(q, "qh"), heads(k, "kh"), heads(v, "vh")
    if deep:  # (N*4*6, 4) and back: the heads sit in periods of 24 rows, 6 rows each
        merged = g.add("Reshape", [kh, g.ints("m_s", [-1, 4])], name="merge")
        kh2 = g.add("Reshape", [merged, g.add("Concat", [
            g.add("Slice", [g.add("Shape", [kh]), g.ints("d0", [0]), g.ints("d2", [2])]),
            g.ints("six_four", [6, 4])], axis=0)], name="unmerge")
        merged = g.add("Reshape", [kh2, g.ints("m2_s", [-1, 6, 4])], name="merge2")
    else:
        merged = g.add("Reshape", [kh, g.ints("m_s", [-1, 6, 4])], name="merge")  # (N*4, 6, 4)
    kt = g.add("Transpose", [merged], perm=[0, 2, 1], name="kt")  # (N*4, 4, 6)
    n = g.add("Slice", [g.add("Shape", [kh]), g.ints("b0", [0]), g.ints("b2", [2])])  # (N, heads)
    back = g.add("Reshape", [kt, g.add("Concat", [n, g.ints("tail", [4, 6])], axis=0)], name="back")
    att = g.add("Softmax", [g.add("MatMul", [qh, back])], axis=-1)
    o = g.add("Transpose", [g.add("MatMul", [att, vh])], perm=[0, 2, 1, 3])
    y = g.matmul(g.add("Reshape", [o, g.ints("o_s", [0, 6, 16])], name="ctx"), 16, 5, name="proj")
    outs = {y: ["N", 6, 5]}
    if reader == "gather":  # the first row of the merged axis: batch 0, head 0
        outs[g.add("Gather", [merged, g.ints("i0", [0])], axis=0)] = [1, 6, 4]
    return g.build({"x": ["N", 6, 16]}, outs)


@pytest.mark.parametrize("deep", [False, True], ids=["batch_x_heads", "batch_x_heads_x_seq"])
def test_heads_survive_a_merge_with_the_batch_and_the_split_back(deep):
    from tests.helpers.graphs import keep_of, pruned

    groups = exact(_merged_heads(deep=deep))
    h = group_at(groups, "qh")
    assert_prunable(h)
    assert h.units == 4 and {"q", "k", "v", "proj"} <= set(h.members)
    m = pruned(groups, keep_of(h, [1, 3]))
    dims = {t.name: list(t.dims) for t in m.graph.initializer}
    assert dims["k_W"] == [16, 8]


def test_a_reader_that_indexes_the_merged_axis_freezes_the_heads():
    groups = exact(_merged_heads(reader="gather"))
    h = group_at(groups, "qh")
    assert any("node 'gather' (Gather) reads an axis that merges the batch with channels" in r
               for r in h.frozen), h.frozen


def _tf2onnx_heads(first=None, last=None):
    """Attention as tf2onnx lowers a Keras MultiHeadAttention's einsums to
    batched MatMuls: each operand goes to (N*heads, S, D) through a target
    computed from its own shape, ``Concat(ReduceProd(Shape(t)[0:2]), [-1],
    Shape(t)[4])``; the scores come back to (N, heads, S, S, 1) through
    ``Max`` of both operands' (N, heads); the output projection's kernel is
    stored as [1, 1, out, heads, D] and reshaped by ``Concat([-1],
    ReduceProd(Shape(kernel)[3:5]))`` with the same [-1] constant every
    target uses. ``first``, ``last``: other entries 0 and 2 for the query's merge."""
    g = Graph(opset=13)
    minus_one = g.ints("minus_one", [-1])

    def heads(name, unsqueeze, perm):  # (N, 6, 16) -> (N, 6, 4, 4) -> 5-D -> (N*4, ., .)
        t = g.add("Reshape", [g.matmul("x", 16, 16, name=name), g.ints(f"{name}_s", [0, 6, 4, 4])])
        t = g.add("Transpose", [g.add("Unsqueeze", [t, g.ints(f"{name}_u", [unsqueeze])])], perm=perm,
                  name=f"{name}5")
        s = g.add("Shape", [t], name=f"{name}_shape")
        nh = g.add("Gather", [s, g.ints(f"{name}_nh", [0, 1])], axis=0, name=f"{name}_nh_dims")
        tail = g.add("Gather", [s, g.ints(f"{name}_last", [4])], axis=0)
        tail = tail if last is None or name != "q" else last(g, nh, tail)
        lead = g.add("ReduceProd", [nh], keepdims=1) if first is None or name != "q" else first(g, nh)
        merged = g.add("Reshape", [t, g.add("Concat", [lead, minus_one, tail], axis=0)], name=f"{name}_merged")
        return t, s, nh, merged

    qt, qs, qnh, qm = heads("q", 1, [0, 3, 1, 2, 4])  # (N, 4, 1, 6, 4) -> (N*4, 6, 4)
    kt, ks, knh, km = heads("k", 2, [0, 3, 1, 2, 4])  # (N, 4, 6, 1, 4) -> (N*4, 6, 4)
    scores = g.add("MatMul", [qm, g.add("Transpose", [km], perm=[0, 2, 1])], name="scores")  # (N*4, 6, 6)
    back = g.add("Concat", [g.add("Max", [knh, qnh]), g.add("Gather", [ks, g.ints("k_seq", [2])], axis=0),
                            g.add("Gather", [qs, g.ints("q_seq", [3])], axis=0), g.ints("one", [1])], axis=0)
    att = g.add("Softmax", [g.add("Squeeze", [g.add("Reshape", [scores, back], name="unmerge"),
                                              g.ints("ax4", [4])])], axis=-1)  # (N, 4, 6, 6)
    v = g.add("Transpose", [g.add("Reshape", [g.matmul("x", 16, 16, name="v"), g.ints("v_s", [0, 6, 4, 4])])],
              perm=[0, 2, 1, 3])
    o = g.add("Transpose", [g.add("MatMul", [att, v])], perm=[0, 2, 1, 3], name="o")  # (N, 6, 4, 4)
    flat = g.add("Concat", [minus_one, g.add("ReduceProd", [g.add("Gather", [g.add("Shape", [o]),
                                                                            g.ints("o_hd", [2, 3])], axis=0)],
                                             keepdims=1)], axis=0)
    kernel = g.rand("kernel", (1, 1, 5, 4, 4))
    kflat = g.add("Concat", [minus_one, g.add("ReduceProd", [g.add("Gather", [g.add("Shape", [kernel]),
                                                                             g.ints("k_hd", [3, 4])], axis=0)],
                                              keepdims=1)], axis=0)
    y = g.add("Gemm", [g.add("Reshape", [o, flat]), g.add("Reshape", [kernel, kflat], name="kernel2d")],
              transB=1, name="proj")
    return g.build({"x": ["N", 6, 16]}, {y: ["M", 5]})


def test_heads_merged_with_the_batch_by_a_run_time_product_prune():
    """tf2onnx's batch x heads: a product of a symbolic batch and the head
    count, evaluated at every head count and at several batch sizes."""
    groups = exact(_tf2onnx_heads(), trials=5)
    h = group_at(groups, "q5")
    assert_prunable(h)
    assert h.units == 4 and {"q", "k", "v"} <= set(h.members)
    m = pruned(groups, keep_of(h, [0, 3]))
    assert input_value(m, "proj", 1).shape == (5, 8)  # the folded kernel, written sliced


@pytest.mark.parametrize("first, why", [
    (lambda g, nh: g.add("Mul", [g.add("Gather", [nh, g.ints("b", [0])], axis=0), g.ints("four", [4])]),
     "does not follow the pruned count"),
    (lambda g, nh: g.add("Max", [g.add("ReduceProd", [nh], keepdims=1), g.ints("floor", [4])]),
     "does not follow the pruned count"),  # right at batch 2, not at batch 1 with fewer heads
    (lambda g, nh: g.add("Max", [g.add("ReduceProd", [nh], keepdims=1), g.add("Min", [
        g.add("Mul", [g.add("Gather", [nh, g.ints("h", [1])], axis=0), g.ints("two", [2])]), g.ints("cap", [4])])]),
     "does not follow the pruned count"),  # max(N * heads, min(2 * heads, 4)): wrong only at batch 1
], ids=["batch_times_a_literal", "at_least_four", "wrong_at_batch_one"])
def test_a_run_time_merge_of_the_batch_that_does_not_follow_the_head_count_freezes(first, why):
    groups = exact(_tf2onnx_heads(first))
    assert_frozen(group_at(groups, "q5"), why)


def test_a_merge_target_the_folder_cannot_evaluate_freezes_the_heads_it_reads():
    """head_dim * heads / 4 * (Size(x) / Size(x)): the head dim at full width,
    not once heads go; the folder cannot know Size(x) of a symbolic batch, so
    the query's merge is not followed: its merged axis has no channels, and
    the batched MatMul that meets the keys' heads there freezes them (it
    once stored an empty layout and crashed the next reshape)."""
    def last(g, nh, tail):
        heads = g.add("Gather", [nh, g.ints("h1", [1])], axis=0)
        one = g.add("Div", [g.add("Size", ["x"]), g.add("Size", ["x"])])
        return g.add("Mul", [g.add("Div", [g.add("Mul", [tail, heads]), g.ints("four", [4])]),
                             g.add("Reshape", [one, g.ints("as_vector", [1])])])

    groups = exact(_tf2onnx_heads(last=last))
    assert_frozen(group_at(groups, "q5"), "reshape to a shape computed at run time")
    assert_frozen(group_at(groups, "k5"), "operand whose channels on this axis are not tracked")


def _chunk3(bound):
    """qkv (N, 96) = x @ W (+ b), cut in three at run time with bounds
    ``bound(C, i)`` computed from Shape(qkv)[-1], as torch's ``qkv.chunk(3)``
    exports with dynamic shapes; then q * k + v -> MatMul 32 -> 4."""
    g = Graph()
    qkv = g.add("Add", [g.matmul("x", 16, 96, name="qkv"), g.rand("qkv_b", (96,))], name="qkv_add")
    size = g.add("Gather", [g.add("Shape", [qkv], name="shape"), g.ints("last", -1)], name="size", axis=0)
    cuts = [g.ints("zero", [0])] + [g.add("Unsqueeze", [bound(g, size, i), g.ints("axis0", [0])], name=f"cut{i}")
                                    for i in (1, 2)] + [g.ints("end", [INT_MAX])]
    q, k, v = (g.add("Slice", [qkv, cuts[i], cuts[i + 1], g.ints(f"ax{i}", [1])], name=f"slice{i}")
               for i in range(3))
    y = g.matmul(g.add("Add", [g.add("Mul", [q, k]), v]), 32, 4, name="out")
    return g.build({"x": ["N", 16]}, [y])


def _torch_chunk(g, size, i):  # (C + 2) // 3 * i
    third = g.add("Div", [g.add("Add", [size, g.ints("two", 2)]), g.ints("three", 3)])
    return g.add("Mul", [third, g.ints(f"i{i}", i)])


def test_slice_bounds_computed_from_the_channel_count_follow_the_pruned_size():
    """``qkv.chunk(3)`` at run time: the three pieces become one channel
    space repeated three times (the same neurons go from q, k and v), and the
    bounds, evaluated at every size the pruned axis could have, still cut it
    in three, so nothing is rewritten and pruned == masked."""
    model = _chunk3(_torch_chunk)
    groups = exact(model)
    grp = group_at(groups, "qkv_add")
    assert_prunable(grp)
    assert grp.units == 32 and group_at(groups, "slice2") is grp
    out = pruned(groups, keep_of(grp, [0, 5, 9, 31]))
    w = {t.name: tuple(t.dims) for t in out.graph.initializer}
    assert w["qkv_W"] == (16, 12) and w["out_W"] == (4, 4)


@pytest.mark.parametrize("bound, why", [
    (lambda g, size, i: g.add("Mul", [g.add("Max", [g.add("Div", [size, g.ints("three", 3)]), g.ints("floor", 32)]),
                                      g.ints(f"i{i}", i)]),
     "at 3 channels they give 0:3, not 0:1"),  # max(C // 3, 32) * i: right at 96 only
    (lambda g, size, i: g.add("Sub", [size, g.ints(f"off{i}", 32 * (3 - i))]),
     "at 3 channels they give 0:0, not 0:1"),  # C - 64, C - 32: right at 96 only
])
def test_slice_bounds_that_do_not_follow_every_pruned_size_freeze(bound, why):
    groups = exact(_chunk3(bound))
    assert_frozen(group_at(groups, "qkv_add"), "do not follow the pruned size", why)


def test_slice_bounds_computed_from_another_channel_count_freeze():
    """A bound read from another tensor's channel axis is a count pruning
    could change independently: not followed."""
    g = Graph()
    a = g.matmul("x", 16, 24, name="a")
    b = g.add("Relu", [g.matmul("x", 16, 36, name="b")])
    end = g.add("Unsqueeze", [g.add("Gather", [g.add("Shape", [b]), g.ints("last", -1)], axis=0), g.ints("axis0", [0])])
    s = g.add("Slice", [a, g.ints("zero", [0]), end, g.ints("ax", [1])], name="cut")
    y = g.add("Add", [g.matmul(s, 24, 4, name="o1"), g.matmul(b, 36, 4, name="o2")])
    groups = exact(g.build({"x": ["N", 16]}, [y]))
    assert_frozen(group_at(groups, "a"), "from something other than its own size")


def test_a_channel_count_that_bounds_a_slice_of_a_fixed_axis_freezes():
    """``x[:, :a.size(1)]`` on an input: pruning a would cut x differently."""
    g = Graph()
    a = g.add("Relu", [g.matmul("x", 16, 24, name="a")])
    end = g.add("Unsqueeze", [g.add("Gather", [g.add("Shape", [a]), g.ints("last", -1)], axis=0),
                              g.ints("axis0", [0])])
    s = g.add("Slice", [g.add("Identity", ["w"]), g.ints("zero", [0]), end, g.ints("ax", [1])], name="cut")
    y = g.add("Add", [g.matmul(s, 24, 4, name="o1"), g.matmul(a, 24, 4, name="o2")])
    groups = exact(g.build({"x": ["N", 16], "w": ["N", 40]}, [y]))
    assert_frozen(group_at(groups, "a"), "sets the bound of a slice along axis 1", "which has no channels")
