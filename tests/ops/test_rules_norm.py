"""Normalisation rules: per-channel norms slice their parameters; norms over a
channel axis freeze it."""
import numpy as np
import pytest

from tests.helpers.graphs import Graph, assert_frozen, assert_prunable, exact, group_at, input_value, keep_of, pruned


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
    def c(n, lo=0.5, hi=2.0):
        return g.init(n, np.random.default_rng(len(n)).uniform(lo, hi, (6, 1, 1)).astype(np.float32))

    std = g.add("Sqrt", [g.add("Add", [c("var"), g.init("eps", np.float32(1e-5))])], name="std")
    y = g.add("Div", [g.add("Sub", [a, c("mean", -1, 1)], name="centre"), std], name="scale")
    y = g.add("Add", [g.add("Mul", [y, c("gamma")]), c("beta", -1, 1)], name="shift")
    out = g.conv(g.add("Relu", [y], name="act"), 6, 4, name="c2")
    model = g.build({"x": [1, 3, 5, 5]}, [out])
    groups = exact(model)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    assert {"centre", "scale", "shift"} <= set(grp.members)


def _hidden_mlp(op: str, opset: int, norm_inputs, domain: str = ""):
    """x (N, 5, 16) -> MatMul 16->12 -> norm over the last axis -> Relu ->
    MatMul 12->20 -> Relu -> MatMul 20->4: the 12 are the hidden size under
    the norm, the 20 are MLP neurons."""
    g = Graph(opset=opset)
    h = g.matmul("x", 16, 12, name="up")
    n = g.add(op, [h] + [g.rand(name, (12,), 0.5, 1.5) for name in norm_inputs], name="norm", axis=-1,
              domain=domain)
    a = g.add("Relu", [g.matmul(g.add("Relu", [n]), 12, 20, name="mid")])
    y = g.matmul(a, 20, 4, name="down")
    return g.build({"x": ["N", 5, 16]}, {y: ["N", 5, 4]})


@pytest.mark.parametrize("op, opset, inputs", [
    ("RMSNormalization", 23, ["scale"]),  # ONNX's RMSNorm
    ("SimplifiedLayerNormalization", 17, ["scale"]),  # onnxruntime's RMSNorm in the ONNX domain
    ("LayerNormalization", 14, ["scale", "bias"]),  # onnxruntime's LayerNorm below opset 17
])
def test_rms_norms_and_onnxruntimes_layernorm_are_the_hidden_size(op, opset, inputs):
    """The transformer optimizer (and optimum, onnxruntime-genai) writes
    LayerNormalization at opsets below 17 and SimplifiedLayerNormalization,
    which onnx.checker does not know but onnxruntime runs (``dialect``). They
    make the hidden size inexact, slice their scale with it under --prune
    hidden, and keep the MLP's neurons exact; the written model passes the
    checker and onnxruntime, and the report says which dialect it used."""
    import onnx

    import onnxprune
    from onnxprune.core import dialect

    model = _hidden_mlp(op, opset, inputs)
    assert (op in dialect.needed(model)) == (op != "RMSNormalization")
    groups = exact(model)  # declares the dialect first, as every entry point does
    assert_prunable(group_at(groups, "mid", 2))
    hidden = group_at(groups, "up", 2)
    assert_frozen(hidden, "'norm'", "inexact", "normalises over axis 2")
    assert {"scale"} <= {w for w, _ in hidden.weights}
    res = onnxprune.prune(model, ratio=0.25, prune=("hidden",), round_to=1)
    w = {t.name: t for t in res.model.graph.initializer}
    assert tuple(w["scale"].dims) == (9,)
    onnx.checker.check_model(res.model, full_check=True)
    assert any(n.op_type == op for n in res.model.graph.node)
    notes = " ".join(res.report.notes)
    assert (f"onnxruntime's {op} in the ONNX domain at opset {opset}" in notes) == (op != "RMSNormalization")


def test_an_opset_17_layernorm_needs_no_dialect():
    from onnxprune.core import dialect

    assert dialect.needed(_hidden_mlp("LayerNormalization", 17, ["scale", "bias"])) == {}
