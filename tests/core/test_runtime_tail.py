"""A changed model's tail: the nodes that compute differently from the
original, reading what the original computes alike before them."""
from __future__ import annotations

import numpy as np
import onnx

import onnxprune
from onnxprune.core.runtime import session, tail, upto
from onnxprune.rewrite.engine import apply
from tests.helpers.graphs import Graph, feeds, group_at, keep_of


def _chain():
    """Three convs; the last output resized to sizes read from the first's
    shape at run time, then reshaped by a target computed from constants
    (Concat of two literals), as exporters write them."""
    g = Graph(seed=1)
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")], name="r1")
    b = g.add("Relu", [g.conv(a, 6, 8, name="c2")], name="r2")
    c = g.conv(b, 8, 4, name="c3")
    batch = g.add("Slice", [g.add("Shape", [a]), g.ints("s0", [0]), g.ints("e1", [1])])
    sizes = g.add("Concat", [batch, g.ints("hw", [4, 7, 7])], axis=0, name="sizes")
    up = g.add("Resize", [c, "", "", sizes], name="up")
    target = g.add("Concat", [g.ints("lead", [2, 4]), g.ints("rest", [-1])], axis=0, name="target")
    out = g.add("Reshape", [up, target], name="flat")
    return g.build({"x": [2, 3, 5, 5]}, [out, a])


def test_a_prune_deep_in_the_graph_reruns_only_the_layers_after_it():
    model = _chain()
    groups = onnxprune.analyze(model)
    pruned = apply(groups, keep_of(group_at(groups, "c2"), [0, 3, 5]))
    part = tail(pruned, model)
    names = [n.name for n in part.nodes]
    assert part.given == ["r1", "sizes"]  # c1, its Relu and the shape read from it are the original's
    assert "c1" not in names and {"c2", "c3", "up", "flat", "target"} <= set(names)  # constants stay constants
    assert part.outputs == [0]  # the second output (r1) is the original's
    x = feeds(model)
    values = dict(zip(part.given, session(upto(model, part.given)).run(part.given, x)))
    sub = part.build([values])
    onnx.checker.check_model(sub)
    got = session(sub).run(None, values)[0]
    np.testing.assert_allclose(got, session(pruned).run(None, x)[0], rtol=1e-6, atol=1e-6)


def test_a_prune_of_the_first_layer_has_no_tail_to_share():
    model = _chain()
    groups = onnxprune.analyze(model)
    pruned = apply(groups, keep_of(group_at(groups, "c1"), [1, 2]))
    assert tail(pruned, model) is None
    assert tail(model, model) is None  # nothing changed


def test_a_model_built_to_run_once_drops_its_shape_hints():
    model = _chain()
    model.graph.value_info.extend(onnx.shape_inference.infer_shapes(model).graph.value_info)
    groups = onnxprune.analyze(model)
    keep = keep_of(group_at(groups, "c2"), [1, 2, 7])
    hinted, bare = apply(groups, keep), apply(groups, keep, hints=False)
    assert len(hinted.graph.value_info) and not len(bare.graph.value_info)
    x = feeds(model)
    for a, b in zip(session(hinted).run(None, x), session(bare).run(None, x)):
        np.testing.assert_array_equal(a, b)
