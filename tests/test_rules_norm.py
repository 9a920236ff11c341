"""Normalisation rules: per-channel norms slice their parameters; norms over a
channel axis freeze it."""
import numpy as np
import pytest

from graphs import (Graph, assert_frozen, assert_prunable, exact, group_at, input_value,
                    keep_of, pruned)


def test_batchnorm_params_are_sliced_with_the_channels():
    g = Graph()
    a = g.conv("x", 3, 6, name="c1")
    bn = g.add("BatchNormalization", [a, g.rand("s", (6,)), g.rand("b", (6,)), g.rand("m", (6,)),
                                      g.rand("v", (6,), 0.5, 1.5)], name="bn")
    y = g.conv(g.add("Relu", [bn]), 6, 4, name="c2")
    model = g.build({"x": [1, 3, 6, 6]}, [y])
    groups = exact(model)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert group_at(groups, "bn") is grp
    assert grp.members == ["c1", "bn", "c2"]
    keep = keep_of(grp, [0, 4, 5])
    m = pruned(groups, keep)
    for slot in range(1, 5):
        new = input_value(m, "bn", slot)
        assert new.shape == (3,)
        np.testing.assert_array_equal(new, input_value(model, "bn", slot)[[0, 4, 5]])
    exact(model, keep)


def test_batchnorm_with_symbolic_batch():
    g = Graph()
    a = g.conv("x", 3, 6, name="c1")
    bn = g.add("BatchNormalization", [a, g.rand("s", (6,)), g.rand("b", (6,)), g.rand("m", (6,)),
                                      g.rand("v", (6,), 0.5, 1.5)], name="bn")
    y = g.conv(bn, 6, 4, name="c2")
    groups = exact(g.build({"x": ["N", 3, 6, 6]}, [y]))
    assert_prunable(group_at(groups, "bn"))


def test_instancenorm_params_are_sliced_with_the_channels():
    g = Graph()
    a = g.conv("x", 3, 6, name="c1")
    n = g.add("InstanceNormalization", [a, g.rand("s", (6,)), g.rand("b", (6,))], name="inorm")
    y = g.conv(g.add("Relu", [n]), 6, 4, name="c2")
    model = g.build({"x": [1, 3, 6, 6]}, [y])
    groups = exact(model)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert grp.members == ["c1", "inorm", "c2"]
    m = pruned(groups, keep_of(grp, [1, 2]))
    assert input_value(m, "inorm", 1).shape == (2,)
    assert input_value(m, "inorm", 2).shape == (2,)
    exact(model, keep_of(grp, [1, 2]))


def test_layernorm_over_channel_axis_freezes():
    g = Graph()
    a = g.conv("x", 3, 6, name="c1")
    n = g.add("LayerNormalization", [a, g.rand("s", (6, 6, 6)), g.rand("b", (6, 6, 6))],
              name="ln", axis=1)
    y = g.conv(n, 6, 4, name="c2")
    groups = exact(g.build({"x": [1, 3, 6, 6]}, [y]))
    assert_frozen(group_at(groups, "c1"), "'ln'", "normalises over axis 1")
    assert not groups.prunable


def test_channels_last_layernorm_over_channel_axis_freezes():
    g = Graph()
    a = g.conv("x", 3, 6, name="c1")
    t = g.add("Transpose", [a], perm=[0, 2, 3, 1])
    n = g.add("LayerNormalization", [t, g.rand("s", (6,)), g.rand("b", (6,))], name="ln", axis=-1)
    b = g.add("Transpose", [n], perm=[0, 3, 1, 2])
    y = g.conv(b, 6, 4, name="c2")
    groups = exact(g.build({"x": [1, 3, 6, 6]}, [y]))
    assert_frozen(group_at(groups, "c1"), "'ln'", "normalises over axis 3")


def test_layernorm_over_spatial_axis_only_passes_channels():
    g = Graph()
    a = g.conv("x", 3, 6, name="c1")
    n = g.add("LayerNormalization", [a, g.rand("s", (7,)), g.rand("b", (7,))], name="ln", axis=-1)
    y = g.conv(n, 6, 4, name="c2")
    groups = exact(g.build({"x": [1, 3, 5, 7]}, [y]))
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert group_at(groups, "ln") is grp


def test_lrn_freezes_channels():
    g = Graph()
    a = g.conv("x", 3, 6, name="c1")
    n = g.add("LRN", [a], name="lrn", size=3)
    y = g.conv(n, 6, 4, name="c2")
    groups = exact(g.build({"x": [1, 3, 6, 6]}, [y]))
    assert_frozen(group_at(groups, "c1"), "'lrn'", "normalises over axis 1")
    assert not groups.prunable


def test_group_normalization_freezes_channels():
    g = Graph(opset=21)
    a = g.conv("x", 3, 6, name="c1")
    n = g.add("GroupNormalization", [a, g.rand("s", (6,)), g.rand("b", (6,))], name="gn",
              num_groups=3)
    y = g.conv(n, 6, 4, name="c2")
    # ONNX shape inference does not see through GroupNormalization-21: type the output here.
    groups = exact(g.build({"x": [1, 3, 6, 6]}, {y: [1, 4, 6, 6]}))
    assert_frozen(group_at(groups, "c1"), "'gn'", "normalises over axis 1")


def test_instancenorm_freezes_a_channel_space_on_its_spatial_axes():
    """MatMul on the width axis makes a 5-feature space along W; InstanceNorm averages
    over H and W, so removing one of those features changes every output."""
    g = Graph()
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")], name="act")
    m = g.matmul(a, 4, 5, name="mm")  # (1, 6, 4, 5)
    n = g.add("InstanceNormalization", [m, g.rand("s", (6,)), g.rand("b", (6,))], name="inorm")
    y = g.matmul(n, 5, 3, name="mm2")
    groups = exact(g.build({"x": [1, 3, 4, 4]}, [y]), trials=6)
    assert_frozen(group_at(groups, "mm", 3), "'inorm'")


def test_batchnorm_passes_a_channel_space_on_a_spatial_axis():
    """BatchNorm is affine per channel (axis 1) and element-wise along H, W: a feature
    space on W passes through it exactly."""
    g = Graph()
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")], name="act")
    m = g.matmul(a, 4, 5, name="mm")
    n = g.add("BatchNormalization", [m, g.rand("s", (6,)), g.rand("b", (6,)), g.rand("m", (6,)),
                                     g.rand("v", (6,), 0.5, 1.5)], name="bn")
    y = g.matmul(n, 5, 3, name="mm2")
    groups = exact(g.build({"x": [1, 3, 4, 4]}, [y]), trials=6)
    grp = group_at(groups, "mm", 3)
    assert_prunable(grp)
    assert group_at(groups, "bn", 3) is grp and grp.members == ["mm", "mm2"]


def test_decomposed_batchnorm_with_sqrt_of_constants_prunes():
    """(x - mean) / Sqrt(var + eps) * gamma + beta with per-channel constants:
    the Sqrt/Add of constants fold, every constant is sliced."""
    g = Graph()
    a = g.conv("x", 3, 6, name="c1")
    c = lambda n, lo=0.5, hi=2.0: g.init(n, np.random.default_rng(len(n)).uniform(lo, hi, (6, 1, 1)).astype(np.float32))
    std = g.add("Sqrt", [g.add("Add", [c("var"), g.init("eps", np.float32(1e-5))])], name="std")
    y = g.add("Div", [g.add("Sub", [a, c("mean", -1, 1)], name="centre"), std], name="scale")
    y = g.add("Add", [g.add("Mul", [y, c("gamma")]), c("beta", -1, 1)], name="shift")
    out = g.conv(g.add("Relu", [y], name="act"), 6, 4, name="c2")
    model = g.build({"x": [1, 3, 5, 5]}, [out])
    groups = exact(model)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert {"centre", "scale", "shift"} <= set(grp.members)
