"""``prune --repair STEPS``: the pruned model's kept weights fine-tuned towards
the original's outputs on the calibration data, written back into the same
graph. On the sample ResNet it must raise held-out accuracy and fidelity over
the same prune without it, never see the held-out samples, report losses an
independent onnxruntime run reproduces, put the pruned weights back when
training does not help, and refuse (one line, nothing written) what its
interpreter cannot compute."""
from __future__ import annotations

import os
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

import onnxprune  # noqa: E402
from onnxprune.check.similarity import centred_cosines  # noqa: E402
from onnxprune.cli import main  # noqa: E402
from onnxprune.core import runtime  # noqa: E402
from onnxprune.core.errors import OnnxPruneError  # noqa: E402
from onnxprune.repair import torch_ops, train  # noqa: E402
from onnxprune.repair.interpret import Interpreter, trainable  # noqa: E402
from tests.helpers.graphs import Graph  # noqa: E402
from tests.helpers.paths import MODELS  # noqa: E402

MODEL = os.path.join(MODELS, "resnet_mnist.onnx")
DATA = os.path.join(MODELS, "resnet_mnist_data.npz")


@pytest.fixture(scope="module")
def pair():
    """The same heavy prune of the sample ResNet, without and with --repair;
    calibration on the first 192 samples, validation on the last 64."""
    d = np.load(DATA)
    calib = {"input": d["input"][:192]}
    held = {"input": d["input"][192:], "labels": d["labels"][192:]}
    kw = dict(ratio=0.6, calib=calib, data=held, validate=True, sequential=False, allocate="uniform")
    return onnxprune.prune(MODEL, **kw), onnxprune.prune(MODEL, repair=40, **kw), held


def _ccos(model, x) -> float:
    a = runtime.session(MODEL).run(None, {"input": x})[0]
    b = runtime.session(model).run(None, {"input": x})[0]
    return float(centred_cosines(a, b).mean())


def test_repair_raises_held_out_accuracy_and_fidelity(pair):
    plain, repaired, held = pair
    rep = repaired.report.repair
    assert rep["kept"] and rep["steps"] == 40 and rep["loss_after"] < 0.8 * rep["loss_before"]
    assert rep["agreement"] < train.AGREE
    acc = [r.validation.outputs[0].accuracy_after for r in (plain, repaired)]
    assert acc[1] > acc[0], acc
    assert _ccos(repaired.model, held["input"]) > _ccos(plain.model, held["input"]) + 0.005


def test_repair_changes_weights_only_and_the_graph_stays_the_prune(pair):
    plain, repaired, _ = pair
    a, b = plain.model.graph, repaired.model.graph
    assert [(n.op_type, list(n.input), list(n.output)) for n in a.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in b.node]
    shapes = {t.name: (tuple(t.dims), t.data_type) for t in a.initializer}
    assert shapes == {t.name: (tuple(t.dims), t.data_type) for t in b.initializer}
    changed = [t.name for t, u in zip(a.initializer, b.initializer)
               if not np.array_equal(onnx.numpy_helper.to_array(t), onnx.numpy_helper.to_array(u))]
    assert len(changed) == repaired.report.repair["tensors"] > 0
    onnx.checker.check_model(repaired.model, full_check=True)


def test_the_reported_losses_are_what_onnxruntime_measures(pair):
    plain, repaired, _ = pair
    d = np.load(DATA)
    batches = train.calibration_batches({"input": d["input"][:192]}, onnx.load(MODEL), None)
    teacher = train.Teacher(onnx.load(MODEL))
    goal = [teacher(b) for b in batches]
    which = [0]
    for model, key in ((plain.model, "loss_before"), (repaired.model, "loss_after")):
        sess = runtime.session(model)
        got = np.mean([train._loss_numpy(sess.run(None, b), g, which) for b, g in zip(batches, goal)])
        assert np.isclose(got, repaired.report.repair[key], rtol=1e-5)


def test_the_held_out_samples_are_never_trained_on(tmp_path):
    out = os.fspath(tmp_path / "p.onnx")
    result = onnxprune.prune(MODEL, output=out, ratio=0.5, calib=DATA, validate=True, repair=2,
                             sequential=False, allocate="uniform")
    held = result.validation.samples
    assert held == 64 and result.report.repair["samples"] == 256 - held


def test_a_result_that_helps_one_output_and_hurts_another_is_not_kept():
    assert train._better(np.array([0.1, 0.2]), np.array([0.3, 0.3]))
    assert not train._better(np.array([0.01, 0.31]), np.array([0.3, 0.3]))  # the mean fell, one head got worse
    assert not train._better(np.array([0.3, 0.3]), np.array([0.3, 0.3]))


def test_worse_weights_are_never_kept():
    d = np.load(DATA)
    calib = {"input": d["input"][:64]}
    pruned = onnxprune.prune(MODEL, ratio=0.5, calib=calib, sequential=False, allocate="uniform").model
    before = {t.name: onnx.numpy_helper.to_array(t).copy() for t in pruned.graph.initializer}
    batches = train.calibration_batches(calib, pruned, None)
    rep = train.repair(pruned, batches, train.Teacher(onnx.load(MODEL)), steps=5, learning_rate=50.0)
    assert not rep.kept and rep.loss_after == rep.loss_before
    assert any("pruned weights are kept" in n for n in rep.notes)
    for t in pruned.graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(t), before[t.name])


def _small(extra: str | None = None) -> onnx.ModelProto:
    g = Graph(seed=3)
    h = g.add("Relu", [g.conv("x", 3, 16, name="c1")])
    if extra:
        h = g.add(extra, [h])
    y = g.conv(h, 16, 4, name="c2")
    return g.build({"x": [1, 3, 8, 8]}, [y])


def _cli(tmp_path, model: onnx.ModelProto, *args):
    path, out = os.fspath(tmp_path / "m.onnx"), os.fspath(tmp_path / "o.onnx")
    onnx.save(model, path)
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    r = CliRunner().invoke(main, ["prune", path, "-o", out, "--ratio", "0.5", "--calib",
                                  os.fspath(tmp_path / "d.npz"), *args])
    return r, out


def test_an_op_without_a_rule_is_refused_before_the_prune_in_one_line(tmp_path):
    r, out = _cli(tmp_path, _small("Celu"), "--repair", "5")
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Celu" in lines[0] and "--repair" in lines[0]
    assert not os.path.exists(out)


def test_a_rule_that_differs_from_onnxruntime_is_refused_naming_its_node(tmp_path, monkeypatch):
    monkeypatch.setitem(torch_ops.RULES, "Relu", lambda ins, at, ctx: ins[0] * 0.5)
    r, out = _cli(tmp_path, _small(), "--repair", "5")
    assert r.exit_code == 2, r.output
    assert "node 'relu' (Relu) differently from onnxruntime" in r.output
    assert not os.path.exists(out)


def test_without_torch_the_repair_says_which_extra(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m.startswith("onnxprune.repair")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torch", None)
    r, out = _cli(tmp_path, _small(), "--repair", "5")
    assert r.exit_code == 2 and "pip install 'onnxprune[repair]'" in r.output
    assert not os.path.exists(out)


def test_repair_needs_re_readable_calibration_data():
    with pytest.raises(OnnxPruneError, match="--repair fits the pruned model"):
        onnxprune.prune(MODEL, ratio=0.3, repair=3)


def test_only_weights_train_not_shapes_scales_or_divisors():
    g = Graph(seed=1)
    h = g.conv("x", 3, 8, name="c1")
    h = g.add("Mul", [h, g.rand("gamma", (1, 8, 1, 1))])
    h = g.add("Div", [h, g.rand("divisor", (1, 8, 1, 1), 1.0, 2.0)])
    h = g.add("Resize", [h, "", g.init("scales", np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    h = g.add("Reshape", [h, g.ints("shape", [1, -1])])
    w = g.init("fc_w", np.ones((8 * 16 * 16, 2), np.float32))
    y = g.add("MatMul", [h, g.add("Transpose", [g.add("Transpose", [w], perm=[1, 0])], perm=[1, 0])])
    m = g.build({"x": [1, 3, 8, 8]}, [y])
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    assert sorted(trainable(m, stored)) == ["c1_B", "c1_W", "fc_w", "gamma"]
    interp = Interpreter(m)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(interp.run({"x": x})[y].detach().numpy(),
                               runtime.session(m).run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_steps_follow_each_tensors_scale():
    """Weights a thousand times smaller than their neighbours (a folded norm
    does this) train as well as ordinary ones: every tensor moves by a share
    of its own size, not by one absolute rate."""
    g = Graph(seed=5)
    h = g.add("Relu", [g.conv("x", 3, 16, name="c1")])
    h = g.add("Mul", [h, g.init("tiny", np.full((1, 16, 1, 1), 1e-3, np.float32))])
    h = g.add("Relu", [g.conv(h, 16, 16, name="c2")])
    y = g.conv(h, 16, 4, name="c3")
    model = g.build({"x": ["n", 3, 8, 8]}, [y])
    for t in model.graph.initializer:
        if t.name == "c2_W":
            t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) * 1e3, t.name))
    x = np.random.default_rng(0).standard_normal((32, 3, 8, 8)).astype(np.float32)
    pruned = onnxprune.prune(model, ratio=0.5, calib={"x": x}, sequential=False, allocate="uniform").model
    batches = train.calibration_batches({"x": x}, pruned, None)
    start = {t.name: onnx.numpy_helper.to_array(t).copy() for t in pruned.graph.initializer}
    rep = train.repair(pruned, batches, train.Teacher(model), steps=60, learning_rate=1e-3)
    assert rep.kept and rep.loss_after < 0.95 * rep.loss_before, (rep.loss_before, rep.loss_after)
    for t in pruned.graph.initializer:  # Adam moves each entry by about the rate a step, in its tensor's units
        moved = np.abs(onnx.numpy_helper.to_array(t) - start[t.name]).max() / np.sqrt(np.mean(start[t.name] ** 2))
        assert 0 < moved < 60 * 1e-3, (t.name, moved)


def test_the_cli_prints_what_the_repair_did(tmp_path):
    r, out = _cli(tmp_path, _small(), "--repair", "3", "--no-validate")
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if ln.startswith("repair:"))
    assert "3 steps on 8 samples" in line and "calibration error" in line
    assert os.path.exists(out)


def test_a_recurrent_cells_kernels_train_and_its_initial_state_does_not():
    """A GRU's W, R and B are weights the repair trains (its initial state is
    a state, not a weight); the interpreter's GRU is onnxruntime's."""
    g = Graph(seed=2)
    w, r, b = g.rand("W", (2, 12, 3)), g.rand("R", (2, 12, 4)), g.rand("B", (2, 24))
    h0 = g.rand("h0", (2, 1, 4))
    y = g.add("GRU", ["x", w, r, b, "", h0], n_out=2, hidden_size=4, direction="bidirectional",
              linear_before_reset=1)[0]
    m = g.build({"x": [5, 1, 3]}, [g.add("Relu", [y])])
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    assert sorted(trainable(m, stored)) == ["B", "R", "W"]
    x = np.random.default_rng(0).standard_normal((5, 1, 3)).astype(np.float32)
    out = m.graph.output[0].name
    np.testing.assert_allclose(Interpreter(m).run({"x": x})[out].detach().numpy(),
                               runtime.session(m).run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
