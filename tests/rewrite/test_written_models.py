"""A model we write loads (checked from disk, as written), is never
bigger than its input, and never holds a copy of a shared weight."""
from __future__ import annotations

import copy
import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.cli import main
from onnxprune.core.errors import OnnxPruneError
from onnxprune.core.model import save
from onnxprune.rewrite.invariants import violations, weight_bytes
from tests.helpers import fixtures_cli as F
from tests.helpers.graphs import Graph, exact, group_at


def _reduce_mean_model(opset: int = 18) -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> ReduceMean(axes as a small int64 input) -> Gemm:
    the shape of a dynamo export whose pooling axes are an input tensor."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             (("w1", (32, 3, 3, 3)), ("w2", (32, 32, 3, 3)), ("fc", (32, 10)))]
    inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), "axes"))
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["b"], name="c2", pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", ["b", "axes"], ["m"], name="mean", keepdims=0),
             helper.make_node("MatMul", ["m", "fc"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def test_external_data_output_keeps_small_tensors_inline_and_loads(tmp_path):
    src = F.save_external(_reduce_mean_model(), tmp_path, "model.onnx", location="model.onnx.data")
    out = tmp_path / "out.onnx"
    r = CliRunner().invoke(main, ["prune", src, "-o", str(out), "--ratio", "0.5", "--no-validate"])
    assert r.exit_code == 0, r.output
    raw = onnx.load(str(out), load_external_data=False)
    inline = {t.name for t in raw.graph.initializer if t.data_location != TensorProto.EXTERNAL}
    assert "axes" in inline
    onnx.checker.check_model(str(out), full_check=True)
    y = F.run(str(out), {"x": np.ones((1, 3, 8, 8), np.float32)})
    assert y[0].shape == (1, 10)


def test_save_checks_the_written_file_and_leaves_nothing_when_it_fails(tmp_path):
    model = _reduce_mean_model()
    seen = []

    def refuse(path):
        seen.append(os.path.exists(path) and os.path.exists(path + ".data"))
        raise OnnxPruneError("planted failure")

    with pytest.raises(OnnxPruneError, match="planted"):
        save(model, tmp_path / "out.onnx", external_data=True, verify=refuse)
    assert seen == [True]  # the check ran on the files as written, with their data
    assert os.listdir(tmp_path) == []


def test_written_model_that_onnxruntime_refuses_is_an_error_and_is_removed(tmp_path, monkeypatch):
    # Plant the old bug (every tensor external): the check from disk must catch it.
    import onnxprune.core.model as M

    monkeypatch.setattr(M, "SMALL_TENSOR", 0)
    src = F.save_external(_reduce_mean_model(), tmp_path, "model.onnx", location="w.data")
    out = tmp_path / "out.onnx"
    r = CliRunner().invoke(main, ["prune", src, "-o", str(out), "--ratio", "0.5", "--no-validate"])
    assert r.exit_code == 1
    assert "written model" in r.output
    assert sorted(os.listdir(tmp_path)) == ["model.onnx", "w.data"]


def _tied_mlp(layers: int = 6, hidden: int = 16, inner: int = 32) -> onnx.ModelProto:
    """A weight-tied (universal / ALBERT-style) MLP stack: every layer reads the
    same two weight matrices and biases, with a residual around each layer."""
    g = Graph()
    w1, b1 = g.rand("w1", (hidden, inner)), g.rand("b1", (inner,))
    w2, b2 = g.rand("w2", (inner, hidden)), g.rand("b2", (hidden,))
    x = "x"
    for i in range(layers):
        h = g.add("Relu", [g.add("Add", [g.add("MatMul", [x, w1], name=f"up{i}"), b1])])
        y = g.add("Add", [g.add("MatMul", [h, w2], name=f"down{i}"), b2])
        x = g.add("Add", [x, y], name=f"res{i}")
    out = g.add("MatMul", [x, g.rand("head", (hidden, 4))], name="head")
    return g.build({"x": ["N", hidden]}, [out])


def test_weights_shared_by_many_layers_couple_and_the_model_shrinks():
    model = _tied_mlp()
    groups = exact(model, trials=4)
    grp = group_at(groups, "up0")
    assert grp.prunable
    assert {f"up{i}" for i in range(6)} | {f"down{i}" for i in range(6)} <= set(grp.members)
    result = onnxprune.prune(model, ratio=0.5)
    pruned = result.model
    assert len(pruned.graph.initializer) == len(groups.model.graph.initializer)
    assert not any("_pruned" in t.name for t in pruned.graph.initializer)
    assert result.report.params["after"] < result.report.params["before"]
    assert not violations(groups.model, pruned)


def test_shared_weights_are_compensated_once_for_all_readers():
    model = _tied_mlp(layers=3)
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal((8, 16)).astype(np.float32)} for _ in range(4)]
    result = onnxprune.prune(model, ratio=0.5, calib=calib, compensate="lsq", criterion="act_l2")
    assert not any("shared" in s for s in result.compensation.skipped)
    names = {result.groups.view.nodes[i].name: v for (i, _), v in result.compensation.weights.items()}
    assert {"down0", "down1", "down2"} <= set(names)
    assert names["down0"] is names["down1"] is names["down2"]
    assert not violations(result.groups.model, result.model)


# -- the invariants themselves -----------------------------------------------
def _with_extra_initializer(model, name, value, used: bool):
    m = copy.deepcopy(model)
    m.graph.initializer.append(numpy_helper.from_array(value, name))
    if used:
        node = m.graph.node[0]
        m.graph.node.append(helper.make_node("Identity", [name], [name + "_out"]))
        m.graph.output.append(helper.make_tensor_value_info(name + "_out", TensorProto.FLOAT, None))
        del node
    return m


def test_invariants_name_more_parameters_and_more_bytes_per_dtype():
    model = F.classifier()
    bigger = _with_extra_initializer(model, "extra", np.ones(100, np.float32), used=True)
    found = violations(model, bigger, allow_io_change=True)
    assert any("more parameters" in v for v in found)
    assert any("float weight bytes" in v for v in found)
    widened = copy.deepcopy(model)
    half = copy.deepcopy(model)
    for m, dt in ((half, np.float16), (widened, np.float32)):
        t = next(t for t in m.graph.initializer if t.name == "conv2.weight")
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(dt), t.name))
    assert weight_bytes(half)["float16"] > 0
    found = violations(half, widened)
    assert found == [f"the pruned model stores more float weight bytes than the input "
                     f"({weight_bytes(widened)['float']} > {weight_bytes(half)['float']})"]


def test_invariants_name_interface_changes_unless_allowed():
    model = F.classifier()
    changed = copy.deepcopy(model)
    changed.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 7
    found = violations(model, changed)
    assert len(found) == 1 and "graph output 'logits'" in found[0]
    assert violations(model, changed, allow_io_change=True) == []
    renamed = copy.deepcopy(model)
    renamed.graph.input[0].name = "other"
    assert any("graph inputs changed" in v for v in violations(model, renamed))


def test_invariants_name_initializers_left_unused():
    model = F.classifier()
    orphan = _with_extra_initializer(model, "orphan", np.ones(3, np.float32), used=False)
    found = violations(model, orphan)
    assert any("orphan" in v and "no longer used" in v for v in found)
    # An initializer the input already left unused is not the pruner's doing.
    assert violations(orphan, orphan) == []


def test_prune_refuses_to_return_a_model_that_breaks_an_invariant(monkeypatch):
    from onnxprune.stages import steps

    real = steps.run_apply

    def grow(*a, **k):  # plant a bug: the rewrite adds a parameter
        m = real(*a, **k)
        m.graph.initializer.append(numpy_helper.from_array(np.ones(10**4, np.float32), "planted"))
        m.graph.node.append(helper.make_node("Identity", ["planted"], ["planted_out"]))
        m.graph.output.append(helper.make_tensor_value_info("planted_out", TensorProto.FLOAT, None))
        return m

    monkeypatch.setattr(steps, "run_apply", grow)
    with pytest.raises(OnnxPruneError, match="breaks an invariant"):
        onnxprune.prune(F.classifier(), ratio=0.5)


def test_float16_weights_behind_a_cast_never_grow_the_model():
    # Weights stored in float16 behind a Cast to float32 (an exporter pattern). Slicing the
    # folded float32 value would store it wider; the prune must not grow.
    g = Graph()
    w1 = g.add("Cast", [g.init("w1", np.random.default_rng(0).standard_normal((8, 3, 3, 3)),
                               dtype=np.float16)], to=TensorProto.FLOAT)
    w2 = g.add("Cast", [g.init("w2", np.random.default_rng(1).standard_normal((4, 8, 3, 3)),
                               dtype=np.float16)], to=TensorProto.FLOAT)
    a = g.add("Relu", [g.add("Conv", ["x", w1], name="c1", pads=[1, 1, 1, 1])])
    y = g.add("Conv", [a, w2], name="c2", pads=[1, 1, 1, 1])
    model = g.build({"x": [1, 3, 6, 6]}, [y])
    groups = exact(model, trials=2)
    grp = group_at(groups, "c1")
    if grp.prunable:
        result = onnxprune.prune(model, ratio=0.5)
        assert weight_bytes(result.model).get("float", 0) == 0
        assert not violations(groups.model, result.model)
    else:
        assert any("float16" in r for r in grp.frozen)


def test_masked_output_may_carry_the_biases_compensation_adds(tmp_path):
    """MatMul consumers have no bias input: compensation adds Add nodes with new
    biases, in the pruned and the masked model alike. The masked model is full
    size, so those biases are the only parameters it gains, and it is written."""
    import numpy as np

    from tests.helpers.graphs import Graph

    g = Graph(seed=5)
    a = g.add("Relu", [g.matmul("x", 8, 16, name="A")])
    y = g.matmul(a, 16, 4, name="B")
    model = g.build({"x": ["N", 8]}, [y])
    path, calib = tmp_path / "m.onnx", tmp_path / "c.npz"
    onnx.save(model, path)
    np.savez(calib, x=np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32))
    result = onnxprune.prune(str(path), ratio=0.5, calib=str(calib), compensate="bias",
                             output=str(tmp_path / "p.onnx"), masked_output=str(tmp_path / "m2.onnx"))
    assert result.compensation.biases
    masked = onnx.load(tmp_path / "m2.onnx")
    assert any(n.op_type == "Add" for n in masked.graph.node)


def test_a_deduplicated_zero_bias_may_be_copied_when_the_model_shrinks():
    """Exporters deduplicate constants by value: one zero vector is the bias of
    a norm that stays whole and of a layer that is pruned (optimum's
    quantized BERT). Each reader gets its own slice, a few float bytes more,
    while the int8 weights shrink by more: the model is written. A model
    that grows gets no such allowance."""
    g = Graph(opset=13)
    zeros = g.init("zeros", np.zeros(24, np.float32))

    def dq(name, shape):
        w = np.random.default_rng(len(name)).integers(-127, 127, shape)
        return g.add("DequantizeLinear", [g.init(name, w, dtype=np.int8), g.init(f"{name}_s", np.float32(0.01))])

    ln = g.add("LayerNormalization", ["x", g.rand("gamma", (24,), 0.5, 1.5), zeros], axis=-1, name="ln")
    h = g.add("Relu", [g.add("Add", [g.add("MatMul", [ln, dq("w1", (24, 24))], name="fc1"), zeros])])
    y = g.add("MatMul", [h, dq("w2", (24, 4))], name="fc2")
    model = g.build({"x": ["N", 24]}, {y: ["N", 4]})
    res = onnxprune.prune(model, ratio=0.25, round_to=1)
    w = {t.name: tuple(t.dims) for t in res.model.graph.initializer}
    assert w["w1"] == (24, 18) and w["zeros"] == (24,) and (18,) in w.values()
    assert weight_bytes(res.model)["float"] > weight_bytes(model)["float"]
    bigger = _with_extra_initializer(model, "extra", np.zeros(100, np.float32), used=True)
    assert any("float weight bytes" in v for v in violations(model, bigger, allow_io_change=True))


def test_float_biases_of_integer_layers_may_grow_the_floats_never_the_total():
    """Compensation's biases for integer layers are new float tensors in a
    model that stores few floats: the float bytes may grow by that many
    values (``float_biases``), the total bytes still may not."""
    model = F.classifier()
    t = next(t for t in model.graph.initializer if t.name == "conv2.weight")
    as_int8 = copy.deepcopy(model)
    w = numpy_helper.to_array(t)
    t8 = next(t for t in as_int8.graph.initializer if t.name == "conv2.weight")
    t8.CopyFrom(numpy_helper.from_array(np.zeros(w.shape, np.int8), t.name))
    smaller = copy.deepcopy(as_int8)
    t8 = next(t for t in smaller.graph.initializer if t.name == "conv2.weight")
    t8.CopyFrom(numpy_helper.from_array(np.zeros((w.shape[0] // 2, *w.shape[1:]), np.int8), t.name))
    rng = np.random.default_rng(0)  # not uniform: a uniform tensor may be a copy of a deduplicated one
    grown = _with_extra_initializer(smaller, "bias_add", rng.standard_normal(4).astype(np.float32), used=True)
    assert any("float weight bytes" in v for v in violations(as_int8, grown, allow_io_change=True))
    assert not [v for v in violations(as_int8, grown, allow_io_change=True, float_biases=4)
                if "bytes" in v]
    huge = _with_extra_initializer(as_int8, "bias_add", rng.standard_normal(w.size).astype(np.float32), used=True)
    found = violations(as_int8, huge, allow_io_change=True, float_biases=w.size)
    assert any("stores more weight bytes than the input" in v for v in found)
