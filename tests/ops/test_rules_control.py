"""Control flow: networks inside If branches and Loop bodies are analysed
and pruned; an If's outputs are one group with both branches' outputs; a
loop's carried values freeze; a subgraph that reuses an outer name stays
opaque, with its reason. Every prune is checked by the oracle on both branches."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

from onnxprune.analysis.build import analyze_model
from onnxprune.analysis.costs import count_macs
from onnxprune.core.shapes import shapes
from onnxprune.rewrite.engine import apply
from tests.helpers.graphs import assert_frozen, assert_prunable, group_at
from tests.helpers.oracle import check_exact, run

RNG = np.random.default_rng(0)


def _w(name, *shape):
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def _mlp(prefix: str, x: str, sizes: list[int], out: str, inits: list) -> list[onnx.NodeProto]:
    """MatMul+Add(+Relu) layers ``sizes[0] -> ... -> sizes[-1]`` writing ``out``;
    the weights go to ``inits`` (a subgraph's own or the main graph's)."""
    nodes, cur = [], x
    for k in range(len(sizes) - 1):
        w, b = f"{prefix}_w{k}", f"{prefix}_b{k}"
        inits += [_w(w, sizes[k], sizes[k + 1]), _w(b, sizes[k + 1])]
        mm, add = f"{prefix}_mm{k}", f"{prefix}_h{k}" if k < len(sizes) - 2 else out
        nodes.append(h.make_node("MatMul", [cur, w], [mm], name=mm))
        last = k == len(sizes) - 2
        pre = add if last else f"{prefix}_pre{k}"
        nodes.append(h.make_node("Add", [mm, b], [pre], name=f"{prefix}_add{k}"))
        if not last:
            nodes.append(h.make_node("Relu", [pre], [add], name=f"{prefix}_relu{k}"))
        cur = add
    return nodes


def if_model(weights_outside: bool = False) -> onnx.ModelProto:
    """x -> If(cond){then: MLP 8->16->12, else: MLP 8->10->12} -> head 12->3.

    The whole network but the head sits in the branches (a verifier model, a
    runtime switch between two networks)."""
    main_inits: list = []
    branches = []
    for name, hidden in (("then", 16), ("else", 10)):
        own: list = []
        nodes = _mlp(name, "x", [8, hidden, 12], f"{name}_y", main_inits if weights_outside else own)
        branches.append(h.make_graph(nodes, name, [], [h.make_tensor_value_info(f"{name}_y", T.FLOAT, ["n", 12])],
                                     initializer=own))
    nodes = [h.make_node("If", ["cond"], ["feat"], name="switch", then_branch=branches[0],
                         else_branch=branches[1])]
    nodes += _mlp("head", "feat", [12, 3], "y", main_inits)
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["n", 8]),
                                  h.make_tensor_value_info("cond", T.BOOL, [])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["n", 3])], initializer=main_inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def _analyse(model):
    return analyze_model(model, shapes(model).dims, strict=True)


def _feeds(cond: bool):
    return {"x": RNG.standard_normal((3, 8)).astype(np.float32), "cond": np.array(cond)}


@pytest.mark.parametrize("weights_outside", [False, True])
def test_networks_inside_if_branches_are_groups_and_prune_exactly_on_both_branches(weights_outside):
    model = if_model(weights_outside)
    groups = _analyse(model)
    then_hidden = group_at(groups, "then_h0", 1)
    else_hidden = group_at(groups, "else_h0", 1)
    joined = group_at(groups, "feat", 1)
    for g in (then_hidden, else_hidden, joined):
        assert_prunable(g)
    assert then_hidden.channels == 16 and else_hidden.channels == 10
    # one group across both branches' outputs and the If's output
    assert joined is group_at(groups, "then_y", 1) is group_at(groups, "else_y", 1)
    assert {"then_mm1", "else_mm1", "head_mm0"} <= set(joined.members)
    for cond in (True, False):
        check_exact(model, feeds=_feeds(cond), trials=4, seed=int(cond))


def test_a_pruned_if_model_shrinks_every_branch_and_declares_its_new_shapes():
    model = if_model()
    groups = _analyse(model)
    keep = {g.id: np.arange(g.units // 2) for g in groups.prunable}
    pruned = apply(groups, keep)
    onnx.checker.check_model(pruned, full_check=True)
    branch = {a.name: a.g for a in pruned.graph.node[0].attribute}
    then, other = branch["then_branch"], branch["else_branch"]
    assert [d.dim_value for d in then.output[0].type.tensor_type.shape.dim][1] == 6
    assert [d.dim_value for d in other.output[0].type.tensor_type.shape.dim][1] == 6
    widths = {t.name: list(t.dims) for t in then.initializer}
    assert widths["then_w0"] == [8, 8] and widths["then_w1"] == [8, 6]
    for cond in (True, False):
        assert run(pruned, _feeds(cond))[0].shape == (3, 3)


def test_if_macs_count_the_costlier_branch_once():
    groups = _analyse(if_model())
    # then: 8*16 + 16*12 = 320, else: 8*10 + 10*12 = 200; head 12*3 = 36
    assert count_macs(groups.view) == 320 + 36


def test_sibling_branches_that_reuse_a_name_stay_opaque_with_the_reason():
    model = if_model()
    other = next(a.g for a in model.graph.node[0].attribute if a.name == "else_branch")
    for node in other.node:  # rename else's hidden tensor to then's
        node.input[:] = ["then_h0" if n == "else_h0" else n for n in node.input]
        node.output[:] = ["then_h0" if n == "else_h0" else n for n in node.output]
    onnx.checker.check_model(model, full_check=True)  # legal ONNX
    groups = _analyse(model)
    assert "switch" in groups.view.opaque
    assert_frozen(group_at(groups, "feat", 1), "not analysed", "reuses the name 'then_h0'")
    check_exact(model, feeds=_feeds(True), trials=2)


def test_branches_that_repeat_each_others_names_are_renamed_on_load_and_prune():
    """optimum's merged decoders: both branches define the same names, and
    the If's output has the name of the branches' outputs. Loading renames
    them inside the branches (``walk.unshadow``; ONNX binds branch outputs
    by position), so both networks are analysed and prune exactly."""
    import onnxprune

    model = if_model(weights_outside=True)
    for a in model.graph.node[0].attribute:  # both branches: the same internal names, output 'feat'
        prefix = a.name.split("_")[0]
        for node in a.g.node:
            node.input[:] = [n.replace(prefix, "net") if n.startswith(prefix + "_h") or n.startswith(
                prefix + "_pre") or n.startswith(prefix + "_mm") else n for n in node.input]
            node.output[:] = [("feat" if n == f"{prefix}_y" else n.replace(prefix, "net")) for n in node.output]
        a.g.output[0].name = "feat"
    onnx.checker.check_model(model, full_check=True)  # legal ONNX, and opaque as it is
    assert "switch" in _analyse(model).view.opaque
    groups = onnxprune.analyze(model)
    assert not groups.view.opaque
    assert any("renamed" in n for n in groups.shape_info.notes)
    assert {16, 10, 12} <= {g.units for g in groups.prunable}
    keep = {g.id: np.arange(g.units // 2) for g in groups.prunable}
    pruned, masked = apply(groups, keep), apply(groups, keep, masked=True)
    onnx.checker.check_model(pruned, full_check=True)
    for cond in (True, False):
        feeds = _feeds(cond)
        np.testing.assert_allclose(run(pruned, feeds)[0], run(masked, feeds)[0], rtol=1e-5, atol=1e-5)


def test_unshadow_leaves_captured_outer_names_and_the_main_graph_alone():
    """A nested body that reads a name its enclosing branch renamed reads the
    new name; a name captured from the main graph keeps its name."""
    from onnxprune.core.walk import unshadow

    inner = h.make_graph([h.make_node("Add", ["t", "x"], ["u"], name="inner_add")], "inner", [],
                         [h.make_tensor_value_info("u", T.FLOAT, None)])
    branch = h.make_graph([h.make_node("Relu", ["x"], ["t"], name="b_relu"),
                           h.make_node("If", ["cond"], ["y"], name="inner_if", then_branch=inner,
                                       else_branch=inner)], "b", [], [h.make_tensor_value_info("y", T.FLOAT, None)])
    g = h.make_graph([h.make_node("Relu", ["x"], ["t"], name="main_relu"),
                      h.make_node("If", ["cond"], ["y"], name="outer", then_branch=branch, else_branch=branch)],
                     "g", [h.make_tensor_value_info("x", T.FLOAT, [2]), h.make_tensor_value_info("cond", T.BOOL, [])],
                     [h.make_tensor_value_info("y", T.FLOAT, [2]), h.make_tensor_value_info("t", T.FLOAT, [2])])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    assert unshadow(model.graph) > 0
    assert [n.output[0] for n in model.graph.node] == ["t", "y"]
    then = model.graph.node[1].attribute[0].g
    assert then.node[0].input[0] == "x" and then.node[0].output[0] != "t"
    nested = then.node[1].attribute[0].g
    assert nested.node[0].input[:] == [then.node[0].output[0], "x"]
    x = np.array([-1.0, 2.0], np.float32)
    for cond in (True, False):
        y, t = run(model, {"x": x, "cond": np.array(cond)})
        np.testing.assert_allclose(y, np.maximum(x, 0) + x)


def loop_model() -> onnx.ModelProto:
    """A Loop whose body applies a residual MLP 6->20->6 to the carried state."""
    body_inits: list = []
    nodes = _mlp("body", "s_in", [6, 20, 6], "delta", body_inits)
    nodes.append(h.make_node("Add", ["s_in", "delta"], ["s_out"], name="body_res"))
    nodes.append(h.make_node("Identity", ["c_in"], ["c_out"], name="body_cond"))
    body = h.make_graph(nodes, "body",
                        [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("c_in", T.BOOL, []),
                         h.make_tensor_value_info("s_in", T.FLOAT, ["n", 6])],
                        [h.make_tensor_value_info("c_out", T.BOOL, []),
                         h.make_tensor_value_info("s_out", T.FLOAT, ["n", 6])], initializer=body_inits)
    main_inits = [numpy_helper.from_array(np.array(3, np.int64), "trips"),
                  numpy_helper.from_array(np.array(True), "go")]
    g = h.make_graph([h.make_node("Loop", ["trips", "go", "x"], ["y"], name="loop", body=body)], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, ["n", 6])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["n", 6])], initializer=main_inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def test_a_loop_body_prunes_inside_and_freezes_its_carried_state():
    model = loop_model()
    groups = _analyse(model)
    assert_prunable(group_at(groups, "body_h0", 1))
    assert_frozen(group_at(groups, "s_in", 1), "subgraph of node 'loop'")
    feeds = {"x": RNG.standard_normal((2, 6)).astype(np.float32)}
    check_exact(model, feeds=feeds, trials=4)
    # a loop body's MACs are data (its trip count): left out of MACs per sample
    assert count_macs(groups.view) == 0


def test_bias_nodes_for_consumers_inside_branches_land_in_their_branch():
    """A compensation bias for a consumer with no bias input inside a branch
    (its MatMul) is an Add node in that branch, and the oracle holds."""
    from onnxprune.refit.compensate import Compensation

    model = if_model()
    for a in model.graph.node[0].attribute:  # drop the branches' last biases
        g = a.g
        last = next(n for n in g.node if n.name.endswith("_add1"))
        next(n for n in g.node if n.name.endswith("_mm1")).output[0] = last.output[0]
        g.node.remove(last)
        keep = [t for t in g.initializer if not t.name.endswith("_b1")]
        del g.initializer[:]
        g.initializer.extend(keep)
    groups = _analyse(model)
    names = [n.name for n in groups.view.nodes]
    biases = {names.index(f"{b}_mm1"): RNG.standard_normal(12).astype(np.float32) for b in ("then", "else")}
    # and one in the main graph (head_mm0 has its bias in a separate Add: compensation adds another)
    biases[names.index("head_mm0")] = RNG.standard_normal(3).astype(np.float32)
    comp = Compensation("bias", biases=biases)
    keep = {g.id: np.arange(g.units - 2) for g in groups.prunable}
    pruned = apply(groups, keep, compensation=comp)
    masked = apply(groups, keep, masked=True, compensation=comp)
    onnx.checker.check_model(pruned, full_check=True)
    branch = {a.name: a.g for a in pruned.graph.node[0].attribute}
    for name in ("then_branch", "else_branch"):
        assert [n.op_type for n in branch[name].node][-1] == "Add", name
    assert any(n.name == "head_mm0_bias_add" for n in pruned.graph.node)
    for cond in (True, False):
        feeds = _feeds(cond)
        np.testing.assert_allclose(run(pruned, feeds)[0], run(masked, feeds)[0], rtol=1e-4, atol=1e-4)


def test_a_loop_scan_output_freezes_its_channels():
    """A body output that is not carried (a scan output, stacked by the Loop)
    leaves through the Loop's output: its channels freeze, and the graph's
    output keeps its shape."""
    body_inits = [_w("body_w", 6, 5)]
    nodes = [h.make_node("MatMul", ["s_in", "body_w"], ["z"], name="body_mm"),
             h.make_node("Identity", ["s_in"], ["s_out"], name="body_carry"),
             h.make_node("Identity", ["c_in"], ["c_out"], name="body_cond")]
    body = h.make_graph(nodes, "body",
                        [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("c_in", T.BOOL, []),
                         h.make_tensor_value_info("s_in", T.FLOAT, ["n", 6])],
                        [h.make_tensor_value_info("c_out", T.BOOL, []), h.make_tensor_value_info("s_out", T.FLOAT, ["n", 6]),
                         h.make_tensor_value_info("z", T.FLOAT, ["n", 5])], initializer=body_inits)
    main_inits = [numpy_helper.from_array(np.array(2, np.int64), "trips"),
                  numpy_helper.from_array(np.array(True), "go")]
    g = h.make_graph([h.make_node("Loop", ["trips", "go", "x"], ["y", "zs"], name="loop", body=body)], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, ["n", 6])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["n", 6]), h.make_tensor_value_info("zs", T.FLOAT, [2, "n", 5])],
                     initializer=main_inits)
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    groups = _analyse(model)
    assert_frozen(group_at(groups, "z", 1), "output of a subgraph of node 'loop'")
    check_exact(model, feeds={"x": RNG.standard_normal((2, 6)).astype(np.float32)}, trials=2)


def test_a_split_inside_a_branch_with_an_output_nothing_reads_prunes():
    """When shape inference leaves a branch's unread Split output without a
    shape, that piece freezes, the other prunes, and the rewrite keeps the unread
    piece's size (it once read the piece's missing layout: the control-flow
    fuzz found it)."""
    own: list = []
    nodes = _mlp("t", "x", [8, 16], "t_h", own)
    own.append(numpy_helper.from_array(np.array([10, 6], np.int64), "sizes"))
    nodes.append(h.make_node("Split", ["t_h", "sizes"], ["kept", "unread"], name="split", axis=1))
    nodes += _mlp("u", "kept", [10, 12], "then_y", own)
    then = h.make_graph(nodes, "then", [], [h.make_tensor_value_info("then_y", T.FLOAT, ["n", 12])],
                        initializer=own)
    other: list = []
    other_nodes = _mlp("e", "x", [8, 12], "else_y", other)
    other_g = h.make_graph(other_nodes, "else", [], [h.make_tensor_value_info("else_y", T.FLOAT, ["n", 12])],
                           initializer=other)
    g = h.make_graph([h.make_node("If", ["cond"], ["y"], name="switch", then_branch=then, else_branch=other_g)],
                     "g", [h.make_tensor_value_info("x", T.FLOAT, ["n", 8]),
                           h.make_tensor_value_info("cond", T.BOOL, [])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["n", 12])])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    dims = shapes(model).dims
    del dims["unread"]  # as shape inference left it in a fuzz model (its input's batch dim was unk__22)
    groups = analyze_model(model, dims, strict=True)
    assert groups.view.shape("unread") is None
    kept = group_at(groups, "kept", 1)
    assert_prunable(kept)
    pruned = apply(groups, {kept.id: np.arange(4)})
    then = {a.name: a.g for a in pruned.graph.node[0].attribute}["then_branch"]
    split = next(n for n in then.node if n.name == "split")
    values = {t.name: numpy_helper.to_array(t) for t in list(then.initializer) + list(pruned.graph.initializer)}
    assert list(values[split.input[1]]) == [4, 6]
    for cond in (True, False):
        check_exact(model, feeds=_feeds(cond), trials=4, seed=int(cond))
