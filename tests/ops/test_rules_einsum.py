"""Einsum: letters kept, summed against constants, or summed between activations."""
from __future__ import annotations

import pytest

import onnxprune
from onnxprune.ops.einsum import parse
from tests.helpers.graphs import Graph, assert_frozen, assert_prunable, exact, group_at, input_value, keep_of, pruned


def test_parse_expands_ellipsis_and_implicit_outputs():
    assert parse("bij,jk->bik", [3, 2]) == ([list("bij"), list("jk")], list("bik"))
    ins, out = parse("...k,kn->...n", [4, 2])
    assert len(ins[0]) == 4 and ins[0][-1] == "k" and out[-1] == "n" and out[:3] == ins[0][:3]
    assert parse("ij,jk", [2, 2]) == ([list("ij"), list("jk")], list("ik"))
    assert parse("ij,jk->ik", [3, 2]) is None


@pytest.mark.parametrize("eq", ["bsk,kn->bsn", "...k,kn->...n", "bsk,nk->bsn"])
def test_dense_einsum_prunes_its_neurons_and_its_inputs(eq):
    g = Graph(opset=13)
    h = g.add("Relu", [g.matmul("x", 4, 6, name="up")])
    w = g.rand("W", (6, 5) if "kn" in eq else (5, 6))
    e = g.add("Relu", [g.add("Einsum", [h, w], name="dense", equation=eq)])
    y = g.matmul(e, 5, 3, name="down")
    groups = exact(g.build({"x": [2, 3, 4]}, [y]), trials=5)
    inner, neurons = group_at(groups, "up", -1), group_at(groups, "dense", -1)
    assert_prunable(inner)
    assert_prunable(neurons)
    assert "dense" in inner.members and "down" in neurons.members
    m = pruned(groups, {**keep_of(inner, [0, 2]), **keep_of(neurons, [1, 3, 4])})
    assert input_value(m, "dense", 1).shape == ((2, 3) if "kn" in eq else (3, 2))
    form = groups.linear(next(i for i, n in enumerate(groups.view.nodes) if n.name == "dense"))
    assert form is not None and form.weight == 1


def test_einsum_summing_between_two_activations_freezes_that_letter():
    g = Graph(opset=13)
    q = g.matmul("x", 4, 6, name="q")
    k = g.matmul("x", 4, 6, name="k")
    s = g.add("Einsum", [q, k], name="scores", equation="bqd,bkd->bqk")
    y = g.add("Einsum", [g.add("Softmax", [s], axis=-1), g.matmul("x", 4, 5, name="v")],
              name="mix", equation="bqk,bkd->bqd")
    groups = exact(g.build({"x": [2, 3, 4]}, [g.matmul(y, 5, 2, name="out")]))
    assert_frozen(group_at(groups, "q", -1), "summed over letter 'd' between two activations")
    assert_prunable(group_at(groups, "v", -1))


def test_einsum_macs_are_the_product_of_every_letter():
    g = Graph(opset=13)
    e = g.add("Einsum", [g.matmul("x", 4, 6, name="up"), g.rand("W", (6, 5))], name="dense",
              equation="bsk,kn->bsn")
    groups = onnxprune.analyze(g.build({"x": [1, 3, 4]}, [g.matmul(e, 5, 2, name="down")]))
    assert groups.macs == 3 * 4 * 6 + 3 * 6 * 5 + 3 * 5 * 2
