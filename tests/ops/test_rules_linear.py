"""Gemm and MatMul rules: neurons, feature consumers, and MatMul of two activations."""
import numpy as np
import pytest

from tests.helpers.graphs import Graph, assert_frozen, assert_prunable, exact, group_at, input_value, keep_of, pruned


@pytest.mark.parametrize("bias_shape", [None, (8,), (1, 8)], ids=["nobias", "bias_N", "bias_1N"])
@pytest.mark.parametrize("trans_b", [0, 1], ids=["transB0", "transB1"])
@pytest.mark.parametrize("batch", [1, "N"])
def test_gemm_mlp_prunes_hidden_neurons(trans_b, bias_shape, batch):
    g = Graph()
    h = g.gemm("x", 6, 8, trans_b=trans_b, bias_shape=bias_shape, name="fc1")
    r = g.add("Relu", [h], name="act")
    y = g.gemm(r, 8, 3, trans_b=trans_b, name="fc2")
    model = g.build({"x": [batch, 6]}, [y])
    groups = exact(model)
    grp = group_at(groups, "act")
    assert_prunable(grp)
    assert grp.units == 8 and grp.members == ["fc1", "fc2"]
    assert_frozen(group_at(groups, "x"), "graph input")
    keep = keep_of(grp, [0, 3, 4, 7])
    m = pruned(groups, keep)
    w1, w2 = input_value(m, "fc1", 1), input_value(m, "fc2", 1)
    assert w1.shape == ((4, 6) if trans_b else (6, 4))
    assert w2.shape == ((3, 4) if trans_b else (4, 3))
    old = input_value(model, "fc1", 1)
    np.testing.assert_array_equal(w1, np.take(old, [0, 3, 4, 7], axis=0 if trans_b else 1))
    if bias_shape is not None:
        assert input_value(m, "fc1", 2).shape == bias_shape[:-1] + (4,)
    exact(model, keep)


def test_gemm_scalar_bias_is_left_alone():
    g = Graph()
    h = g.add("Gemm", ["x", g.rand("W", (6, 8)), g.init("c", np.float32(0.5))], name="fc1")
    y = g.gemm(g.add("Relu", [h]), 8, 3, name="fc2")
    model = g.build({"x": [1, 6]}, [y])
    groups = exact(model)
    grp = group_at(groups, "fc1")
    assert_prunable(grp)
    m = pruned(groups, keep_of(grp, [1, 2]))
    assert input_value(m, "fc1", 2).shape == ()


@pytest.mark.parametrize("first", ["Gemm", "MatMul"])
def test_matmul_mlp_with_bias_add_prunes_hidden_neurons(first):
    g = Graph()
    if first == "Gemm":
        h = g.gemm("x", 6, 8, name="fc1")
    else:
        h = g.matmul("x", 6, 8, name="fc1")
    h = g.add("Add", [h, g.rand("bias", (8,))], name="bias_add")
    r = g.add("Relu", [h], name="act")
    y = g.matmul(r, 8, 3, name="fc2")
    model = g.build({"x": [1, 6]}, [y])
    groups = exact(model)
    grp = group_at(groups, "act")
    assert_prunable(grp)
    assert grp.members == ["fc1", "bias_add", "fc2"]
    keep = keep_of(grp, [2, 5])
    m = pruned(groups, keep)
    assert input_value(m, "fc1", 1).shape == (6, 2)
    assert input_value(m, "bias_add", 1).shape == (2,)
    assert input_value(m, "fc2", 1).shape == (2, 3)
    exact(model, keep)


@pytest.mark.parametrize("batch", [1, "B"])
def test_matmul_on_3d_activation_prunes_features(batch):
    g = Graph()
    h = g.add("Relu", [g.matmul("x", 6, 8, name="fc1")], name="act")
    y = g.matmul(h, 8, 3, name="fc2")
    model = g.build({"x": [batch, 5, 6]}, [y])
    groups = exact(model)
    grp = group_at(groups, "act", -1)
    assert_prunable(grp)
    assert grp.members == ["fc1", "fc2"]
    m = pruned(groups, keep_of(grp, [0, 1, 7]))
    assert input_value(m, "fc1", 1).shape == (6, 3)
    assert input_value(m, "fc2", 1).shape == (3, 3)
    exact(model, keep_of(grp, [0, 1, 7]))


def test_matmul_with_constant_left_operand_prunes_rows():
    g = Graph()
    h = g.add("MatMul", [g.rand("W1", (8, 6)), "x"], name="fc1")  # (8,6) @ (1,6,5) -> (1,8,5)
    r = g.add("Relu", [h], name="act")
    y = g.add("MatMul", [g.rand("W2", (3, 8)), r], name="fc2")
    model = g.build({"x": [1, 6, 5]}, [y])
    groups = exact(model)
    grp = group_at(groups, "act", 1)
    assert_prunable(grp)
    assert grp.members == ["fc1", "fc2"]
    m = pruned(groups, keep_of(grp, [4, 6]))
    assert input_value(m, "fc1", 0).shape == (2, 6)
    assert input_value(m, "fc2", 0).shape == (3, 2)
    exact(model, keep_of(grp, [4, 6]))


def test_matmul_of_two_activations_freezes_only_the_contracted_axis():
    """Attention core: q @ k^T contracts the q/k features (frozen); s @ v keeps v's features."""
    g = Graph()
    q = g.matmul("x", 6, 8, name="wq")
    k = g.matmul("x", 6, 8, name="wk")
    v = g.matmul("x", 6, 4, name="wv")
    kt = g.add("Transpose", [k], perm=[0, 2, 1])
    s = g.add("Softmax", [g.add("MatMul", [q, kt], name="qk")], axis=-1)
    o = g.add("MatMul", [s, v], name="sv")
    y = g.matmul(o, 4, 3, name="wo")
    model = g.build({"x": [1, 5, 6]}, [y])
    groups = exact(model)
    assert_frozen(group_at(groups, "wq", -1), "'qk'", "contracted by a MatMul of two activations")
    assert_frozen(group_at(groups, "wk", -1), "'qk'", "contracted")
    gv = group_at(groups, "wv", -1)
    assert_prunable(gv)
    assert group_at(groups, "sv", -1) is gv
    assert gv.members == ["wv", "wo"]
    m = pruned(groups, keep_of(gv, [0, 3]))
    assert input_value(m, "wv", 1).shape == (6, 2)
    assert input_value(m, "wo", 1).shape == (2, 3)
    exact(model, keep_of(gv, [0, 3]))


def test_gemm_with_runtime_weight_freezes():
    g = Graph()
    h = g.add("Relu", [g.gemm("x", 6, 8, name="fc1")], name="act")
    y = g.add("Gemm", [h, "w"], name="fc2")
    groups = exact(g.build({"x": [1, 6], "w": [8, 3]}, [y]))
    assert_frozen(group_at(groups, "act"), "'fc2'", "constant weight")


def test_gemm_trans_a_reads_features_on_axis_zero():
    g = Graph()
    h = g.add("Relu", [g.gemm("x", 6, 8, name="fc1")], name="act")  # (1, 8)
    t = g.add("Transpose", [h], perm=[1, 0], name="t")  # (8, 1)
    y = g.add("Gemm", [t, g.rand("W2", (8, 3))], name="fc2", transA=1)  # (1, 3)
    model = g.build({"x": [1, 6]}, [y])
    groups = exact(model)
    grp = group_at(groups, "act")
    assert_prunable(grp)
    assert group_at(groups, "t", 0) is grp
    assert grp.members == ["fc1", "fc2"]
    m = pruned(groups, keep_of(grp, [2, 3, 6]))
    assert input_value(m, "fc2", 1).shape == (3, 3)
    exact(model, keep_of(grp, [2, 3, 6]))


def test_gemm_with_activation_bias_couples_it_with_the_output():
    g = Graph()
    h1 = g.add("Relu", [g.gemm("x", 6, 8, name="fc1")], name="act1")
    h2 = g.add("Gemm", ["x", g.rand("W2", (6, 8)), h1], name="fc2")  # C is an activation
    y = g.gemm(g.add("Relu", [h2], name="act2"), 8, 3, name="fc3")
    model = g.build({"x": [1, 6]}, [y])
    groups = exact(model)
    grp = group_at(groups, "act2")
    assert_prunable(grp)
    assert group_at(groups, "act1") is grp
    assert grp.members == ["fc1", "fc2", "fc3"]
