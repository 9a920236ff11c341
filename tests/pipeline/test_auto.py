"""The automatic loop: each step prunes the previous model, the
loop keeps the last step within --max-drop of the original on held-out data
(checked here independently), stops at a MACs floor, and the CLI writes the
trajectory in the report and as a plot."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest

from onnxprune.pipeline.auto import _metric, auto_prune
from onnxprune.stages.config import PruneConfig
from tests.helpers.oracle import run
from tests.helpers.paths import MODELS

ROOT = MODELS
PATH = os.path.join(ROOT, "resnet_mnist.onnx")
DATA = os.path.join(ROOT, "resnet_mnist_data.npz")


def test_the_metric_is_accuracy_with_labels_then_agreement_then_cosine():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((20, 5))
    out = ref.copy()
    out[:4] = -out[:4]
    labels = ref.argmax(1)
    name, v, before = _metric(out, ref, labels)
    assert name == "accuracy" and before == 1.0 and v == pytest.approx(np.mean(out.argmax(1) == labels))
    name, v, before = _metric(out, ref, None)
    assert name == "top-1 agreement" and v == pytest.approx(np.mean(out.argmax(1) == ref.argmax(1)))
    img = rng.standard_normal((3, 2, 4, 4))
    name, v, _ = _metric(2 * img + 1, img, None)
    assert name == "centred cosine" and v == pytest.approx(1.0)


def test_the_loop_stops_before_the_drop_and_keeps_the_step_before():
    d = np.load(DATA)
    cfg = PruneConfig(calib={"input": d["input"][:160]},
                      data={"input": d["input"][160:], "labels": d["labels"][160:]})
    result, traj = auto_prune(PATH, cfg, max_drop=0.02, step=0.3)
    kept = [s for s in traj.steps if s.accepted]
    assert kept and all(s.drop <= 0.02 for s in kept)
    assert all(a.macs > b.macs for a, b in zip(kept, kept[1:]))  # each step pruned further
    if not traj.steps[-1].accepted:
        assert traj.steps[-1].drop > 0.02 and "would lose" in traj.stopped
    # independently: the returned model is within the drop on the held-out samples
    (y0,), (y1,) = run(onnx.load(PATH), {"input": d["input"][160:]}), run(result.model, {"input": d["input"][160:]})
    acc0 = np.mean(y0.argmax(1) == d["labels"][160:])
    acc1 = np.mean(y1.argmax(1) == d["labels"][160:])
    assert acc0 - acc1 <= 0.02 + 1e-9
    assert result.report.macs["after"] / result.report.macs["before"] == pytest.approx(kept[-1].macs, rel=1e-6)
    assert result.report.auto["steps"][0]["index"] == 1


def test_a_macs_floor_stops_the_loop_there():
    d = np.load(DATA)
    cfg = PruneConfig(calib={"input": d["input"][:160]}, data={"input": d["input"][160:]})
    result, traj = auto_prune(PATH, cfg, max_drop=1.0, step=0.2, floor=0.7)
    assert "reached the MACs target 0.7" in traj.stopped and all(s.accepted for s in traj.steps)
    frac = result.report.macs["after"] / result.report.macs["before"]
    assert 0.6 <= frac <= 0.72, frac
    assert all(0 < s.latency for s in traj.steps)  # measured every step


def test_params_and_latency_targets_stop_the_loop_when_met(monkeypatch):
    """Each budget is a floor: the loop stops at the first step that meets
    it, and not before. Latency is faked from the MACs to make the check
    exact (the real one is timed)."""
    import onnxprune.search.latency as latency
    from onnxprune.core.runtime import session as make_session

    d = np.load(DATA)
    cfg = PruneConfig(calib={"input": d["input"][:160]}, data={"input": d["input"][160:]}, params_target=0.5)
    _, traj = auto_prune(PATH, cfg, max_drop=1.0, step=0.25)
    assert "reached the params target 0.5" in traj.stopped
    assert traj.steps[-1].params <= 0.5 + 1e-3 and all(s.params > 0.5 for s in traj.steps[:-1])


    from onnxprune.analysis.costs import count_params
    from onnxprune.pipeline import auto

    size = {}

    def session(model, threads=1):  # remembers each session's model size
        s = make_session(model, threads=threads)
        size[id(s)] = count_params(model)
        return s

    def ratio(base, s, feeds, runs, rounds=3):
        return size[id(s)] / size[id(base)], 1.0

    for module in (auto, latency):  # where the sessions are made and timed
        monkeypatch.setattr(module, "session", session)
        monkeypatch.setattr(module, "time_ratio", ratio)
    cfg = PruneConfig(calib={"input": d["input"][:160]}, data={"input": d["input"][160:]}, latency_target=0.35)
    _, traj = auto_prune(PATH, cfg, max_drop=1.0, step=0.25)
    assert "reached the latency target 0.35" in traj.stopped
    lat = [s.latency for s in traj.steps]
    assert lat[-1] <= 0.35 + 1e-3 and all(v > 0.35 for v in lat[:-1]) and len(lat) >= 2


def test_the_cli_writes_the_trajectory_and_refuses_what_auto_cannot_do(tmp_path):
    pytest.importorskip("matplotlib")
    from click.testing import CliRunner

    from onnxprune.cli import main

    out, rep, png = tmp_path / "a.onnx", tmp_path / "a.json", tmp_path / "t.png"
    res = CliRunner().invoke(main, ["prune", PATH, "-o", str(out), "--auto", "--max-drop", "0.05", "--step", "0.4",
                                    "--macs-target", "0.5", "--data", DATA, "--report", str(rep),
                                    "--plot-trajectory", str(png)])
    assert res.exit_code == 0, res.output
    assert "step 1: MACs x" in res.output
    report = json.loads(rep.read_text())
    assert report["auto"]["steps"] and report["auto"]["max_drop"] == 0.05
    v = report["validation"]
    assert v["accuracy_after"] >= v["accuracy_before"] - 0.05 - 1e-9
    assert png.read_bytes()[:4] == b"\x89PNG" and out.exists()
    res = CliRunner().invoke(main, ["prune", PATH, "-o", str(out), "--auto", "--data", DATA,
                                    "--masked-output", str(tmp_path / "m.onnx")])
    assert res.exit_code == 2 and "--auto works with budgets as floors" in res.output


def test_steps_reach_the_macs_target_in_n_whole_prunes(tmp_path):
    from click.testing import CliRunner

    from onnxprune.cli import main

    rep = tmp_path / "s.json"
    res = CliRunner().invoke(main, ["prune", PATH, "-o", str(tmp_path / "s.onnx"), "--steps", "2", "--macs-target",
                                    "0.6", "--data", DATA, "--report", str(rep), "--no-validate"])
    assert res.exit_code == 0, res.output
    steps = json.loads(rep.read_text())["auto"]["steps"]
    assert len(steps) == 2 and all(s["accepted"] for s in steps)
    assert steps[0]["macs"] > steps[1]["macs"] and steps[1]["macs"] <= 0.6 + 1e-6
    res = CliRunner().invoke(main, ["prune", PATH, "-o", str(tmp_path / "s.onnx"), "--steps", "2", "--data", DATA])
    assert res.exit_code == 2 and "--steps N needs --macs-target" in res.output


def test_a_step_that_fails_stops_the_loop_saying_it_failed_not_that_nothing_is_left(monkeypatch):
    """A step whose prune raises keeps the steps before it; the reason says
    the step failed, with the error, unless the error says the plan cannot
    go further."""
    from onnxprune.core.errors import OnnxPruneError
    from onnxprune.pipeline import auto

    d = np.load(DATA)
    cfg = PruneConfig(calib={"input": d["input"][:160]}, data={"input": d["input"][160:]})
    real, calls = auto.pipeline_prune.run, []

    def flaky(source, step_cfg, why):
        calls.append(1)
        if len(calls) == 2:
            raise OnnxPruneError(why)
        return real(source, step_cfg)

    for why, said in (("onnxruntime cannot load the model: two nodes with same node name", "step 2 failed"),
                      ("the MACs target 0.5 cannot be met: every prunable group ...", "nothing more to prune")):
        calls.clear()
        monkeypatch.setattr(auto.pipeline_prune, "run", lambda s, c, why=why: flaky(s, c, why))
        _, traj = auto_prune(PATH, cfg, max_drop=1.0, step=0.1, floor=0.5)
        assert traj.stopped.startswith(said) and why in traj.stopped and len(traj.steps) == 1
