"""The op registry: rules registered by (domain, op, opset range), attribute
defaults from the operator schemas, strict mode, and ``onnxprune ops``."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import onnxprune
from onnxprune.cli import main
from onnxprune.core.errors import InternalError
from onnxprune.ops import Rule, entries, lookup, node_attr, register, registry, schema_default
from tests.helpers.graphs import Graph, assert_frozen, assert_prunable, exact, group_at


def test_every_op_module_registers_its_rules():
    ops = {(e.domain, e.op) for e in entries()}
    for op in ("Conv", "ConvTranspose", "Gemm", "MatMul", "Relu", "Add", "BatchNormalization",
               "Reshape", "Concat", "Split", "Slice", "Transpose", "Gather", "Resize", "Softmax"):
        assert ("", op) in ops


def test_lookup_respects_the_domain_and_the_opset_range():
    assert lookup("", "Conv", 17) is lookup("ai.onnx", "Conv", 11)
    assert lookup("com.microsoft", "Conv", 1) is None
    assert lookup("", "NoSuchOp", 17) is None


def test_overlapping_registrations_are_refused():
    with pytest.raises(ValueError, match="overlap"):
        @register("Relu")
        class Again(Rule):
            pass


def test_attribute_defaults_come_from_the_schema():
    assert schema_default("", "Conv", 17, "group") == 1
    assert schema_default("", "Gemm", 13, "alpha") == 1.0
    assert schema_default("", "Transpose", 13, "perm") is None  # no default: reversed axes
    g = Graph()
    y = g.add("Gemm", ["x", g.rand("w", (3, 4))])
    assert node_attr(g.nodes[-1], "transB", 13) == 0
    assert node_attr(g.nodes[-1], "transB", 13, default=5) == 0
    assert node_attr(g.nodes[-1], "nope", 13, default=5) == 5
    del y


def _custom_op_model():
    """c1 -> com.example.Scale2 (a model-local function: y = 2x) -> c2."""
    from onnx import helper

    g = Graph(extra_opsets={"com.example": 1})
    a = g.conv("x", 3, 6, name="c1")
    b = g.add("Scale2", [a], name="custom", domain="com.example")
    y = g.conv(b, 6, 4, name="c2")
    model = g.build({"x": [1, 3, 6, 6]}, {y: [1, 4, 6, 6]})
    body = [helper.make_node("Constant", [], ["two"], value_float=2.0),
            helper.make_node("Mul", ["X", "two"], ["Y"])]
    model.functions.append(helper.make_function("com.example", "Scale2", ["X"], ["Y"], body,
                                                [helper.make_opsetid("", 17)]))
    return model


def test_a_new_op_is_one_registered_rule(monkeypatch):
    # Without a rule the custom op freezes what it touches...
    groups = exact(_custom_op_model())
    assert_frozen(group_at(groups, "c1"), "has no rule")
    # ...registering one rule for it (as a module under ops/ would) is all it takes.
    monkeypatch.setattr(registry, "_TABLE", dict(registry._TABLE))

    @register("Scale2", domain="com.example")
    class Scale2(Rule):
        """y = 2 x: channels pass through."""

        def analyze(self, node, ctx):
            ctx.passthrough(node.input[0], node.output[0])

    assert_prunable(group_at(exact(_custom_op_model()), "c1"))


def test_a_rule_that_raises_fails_in_strict_mode_and_freezes_with_a_count_otherwise(monkeypatch):
    monkeypatch.setattr(registry, "_TABLE", dict(registry._TABLE))

    @register("Scale2", domain="com.example")
    class Broken(Rule):
        def analyze(self, node, ctx):
            raise ZeroDivisionError("planted")

    with pytest.raises(InternalError, match="rule Broken on node 'custom'.*planted"):
        onnxprune.analyze(_custom_op_model(), strict=True)
    groups = onnxprune.analyze(_custom_op_model(), strict=False)
    assert len(groups.internal_errors) == 1 and "planted" in groups.internal_errors[0]
    assert_frozen(group_at(groups, "c1"), "internal error in rule Broken")
    assert groups.to_dict()["internal_errors"] == groups.internal_errors


def test_ops_command_lists_domain_op_versions_and_what_channels_do():
    r = CliRunner().invoke(main, ["ops", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    conv = next(row for row in rows if row["op"] == "Conv")
    assert conv["domain"] == "ai.onnx" and conv["versions"] == "1+" and conv["channels"]
    r = CliRunner().invoke(main, ["ops"])
    assert r.exit_code == 0 and "Conv" in r.output and "ops with a rule" in r.output


def test_macs_and_linear_forms_come_from_the_rules():
    g = Graph()
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")])
    y = g.gemm(g.add("Flatten", [a]), 6 * 4 * 4, 5, trans_b=1, bias_shape=(5,), name="fc")
    groups = onnxprune.analyze(g.build({"x": [1, 3, 4, 4]}, [y]))
    conv, gemm = groups.view.nodes[0], groups.view.nodes[-1]
    rc, rg = lookup("", "Conv", 17), lookup("", "Gemm", 17)
    assert rc.macs(conv, groups.view) == 6 * 4 * 4 * 3 * 3 * 3
    assert rg.macs(gemm, groups.view) == 5 * 96
    form = rg.linear(gemm, groups.view)
    assert (form.weight, form.in_axis, form.out_axis, form.bias) == (1, 1, 0, 2)
    w = np.arange(5 * 96, dtype=np.float32).reshape(5, 96)
    np.testing.assert_array_equal(form.from_matrix(form.matrix(w), w), w)
    assert form.matrix(w).shape == (96, 5, 1)
