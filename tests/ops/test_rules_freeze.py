"""Freezing: ops without a rule, the model's interface, and the rest of the model still pruning."""
import onnx
import pytest

import onnxprune
from tests.helpers.graphs import Graph, assert_frozen, assert_prunable, exact, group_at, input_value, keep_of, pruned


def unknown_op(g, op, t):
    """Standard ops onnxruntime runs that have no rule (yet)."""
    if op == "Trilu":
        return g.add("Trilu", [t], name="unknown")
    if op == "LpNormalization":
        return g.add("LpNormalization", [t], name="unknown", axis=-1)
    raise ValueError(op)


@pytest.mark.parametrize("op", ["Trilu", "LpNormalization"])
def test_op_without_rule_freezes_its_channels_but_the_rest_prunes(op):
    g = Graph(opset=14)
    a = g.add("Relu", [g.conv("x", 3, 6, name="c0")], name="act0")
    b = g.add("Relu", [g.conv(a, 6, 5, name="c1")], name="act1")
    u = unknown_op(g, op, b)
    y = g.conv(u, 5, 4, name="c2")
    model = g.build({"x": [1, 3, 6, 6]}, [y])
    groups = exact(model, trials=5)
    assert_frozen(group_at(groups, "act1"), "'unknown'", f"op {op} has no rule")
    ahead = group_at(groups, "act0")
    assert_prunable(ahead)
    assert ahead.members == ["c0", "c1"]
    after = group_at(groups, u)
    assert_frozen(after, "not tracked")
    m = pruned(groups, keep_of(ahead, [0, 4]))
    assert input_value(m, "c1", 1).shape == (5, 2, 3, 3)
    exact(model, keep_of(ahead, [0, 4]))


def test_custom_domain_op_is_named_in_the_reason():
    g = Graph(opset=13, extra_opsets={"com.example": 1})
    a = g.add("Relu", [g.conv("x", 3, 6, name="c0")], name="act0")
    b = g.add("Relu", [g.conv(a, 6, 5, name="c1")], name="act1")
    u = g.add("MyOp", [b], name="custom", domain="com.example")
    y = g.conv(u, 5, 4, name="c2")
    model = g.build({"x": [1, 3, 6, 6]}, {y: [1, 4, 6, 6]})
    groups = onnxprune.analyze(model)
    assert_frozen(group_at(groups, "act1"), "'custom'", "com.example.MyOp", "has no rule")
    assert_prunable(group_at(groups, "act0"))
    keep = keep_of(group_at(groups, "act0"), [1, 2, 3])
    m = pruned(groups, keep)
    assert input_value(m, "c0", 1).shape == (3, 3, 3, 3)
    assert input_value(m, "c1", 1).shape == (5, 3, 3, 3)
    assert [n.op_type for n in m.graph.node] == [n.op_type for n in model.graph.node]


def test_unsupported_op_on_constants_only_freezes_nothing():
    g = Graph(opset=13)
    k = g.add("Einsum", [g.rand("w", (6,))], equation="c->c", name="const_math")
    a = g.add("Relu", [g.conv("x", 3, 6, name="c0")], name="act0")
    y = g.conv(a, 6, 4, name="c2")
    model = g.build({"x": [1, 3, 6, 6]}, [y, k])
    groups = exact(model)
    assert_prunable(group_at(groups, "act0"))


def test_graph_input_and_output_channels_are_frozen():
    g = Graph()
    y = g.conv("x", 3, 4, name="only")
    groups = exact(g.build({"x": [1, 3, 6, 6]}, [y]))
    assert_frozen(group_at(groups, "x"), "reaches graph input 'x'")
    assert_frozen(group_at(groups, "only"), "reaches graph output 'only'")
    assert not groups.prunable


def test_intermediate_tensor_that_is_also_a_graph_output_freezes():
    g = Graph()
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")], name="act")
    y = g.conv(a, 6, 4, name="c2")
    groups = exact(g.build({"x": [1, 3, 6, 6]}, [y, a]))
    assert_frozen(group_at(groups, "act"), "reaches graph output 'act'")


def test_nothing_to_prune_raises_a_readable_error():
    g = Graph()
    y = g.conv("x", 3, 4, name="only")
    with pytest.raises(onnxprune.OnnxPruneError, match="frozen"):
        onnxprune.prune(g.build({"x": [1, 3, 6, 6]}, [y]), ratio=0.5)


@pytest.mark.parametrize("batch", ["N", 2])
def test_symbolic_or_fixed_batch_prunes_a_small_cnn(batch):
    """Conv -> BN -> Relu -> MaxPool -> residual -> GAP -> Flatten -> Gemm, with ratio 0.5."""
    g = Graph()
    a = g.conv("x", 3, 8, name="c1")
    a = g.add("BatchNormalization", [a, g.rand("s", (8,)), g.rand("b", (8,)), g.rand("m", (8,)),
                                     g.rand("v", (8,), 0.5, 1.5)], name="bn")
    a = g.add("MaxPool", [g.add("Relu", [a], name="act")], kernel_shape=[2, 2], strides=[2, 2])
    r = g.conv(g.add("Relu", [g.conv(a, 8, 6, name="c2")]), 6, 8, name="c3")
    s = g.add("Add", [a, r], name="res")
    f = g.add("Flatten", [g.add("GlobalAveragePool", [s])], name="flat")
    y = g.gemm(f, 8, 3, trans_b=1, bias_shape=(3,), name="fc")
    model = g.build({"x": [batch, 3, 8, 8]}, [y])
    groups = exact(model, trials=6)
    assert {x.channels for x in groups.prunable} == {8, 6}
    assert set(group_at(groups, "res").members) == {"c1", "bn", "c2", "c3", "fc"}
    result = onnxprune.prune(model, ratio=0.5, allocate="uniform")
    assert input_value(result.model, "fc", 1).shape == (3, 4)
    assert input_value(result.model, "bn", 1).shape == (4,)
    onnx.checker.check_model(result.model, full_check=True)
