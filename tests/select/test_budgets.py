"""Budgets: --params-target keeps about that fraction of the
parameters under either allocation and with rounding, the planner's
estimate matches the written model's count, an unreachable target names the
reachable one, and the summary prints the achieved figure next to the target."""
from __future__ import annotations

import os

import numpy as np
import pytest

import onnxprune
from onnxprune.analysis.costs import count_params
from onnxprune.core.errors import OnnxPruneError
from onnxprune.rewrite.engine import apply
from onnxprune.select.planner import estimate_params
from tests.helpers.oracle import random_keep
from tests.helpers.paths import MODELS

ROOT = MODELS
SAMPLES = ["resnet_mnist", "densenet_mnist", "mobilenet_mnist", "unet_mnist"]


@pytest.mark.parametrize("name", SAMPLES)
def test_the_parameter_estimate_is_the_written_models_count(name):
    groups = onnxprune.analyze(os.path.join(ROOT, f"{name}.onnx"))
    rng = np.random.default_rng(0)
    for _ in range(3):
        keep = random_keep(groups, rng)
        assert estimate_params(groups, keep) == count_params(apply(groups, keep))


@pytest.mark.parametrize("allocate", ["uniform", "global"])
@pytest.mark.parametrize("round_to", [1, None])
def test_a_params_target_is_met(allocate, round_to):
    path = os.path.join(ROOT, "resnet_mnist.onnx")
    d = np.load(os.path.join(ROOT, "resnet_mnist_data.npz"))
    r = onnxprune.prune(path, params_target=0.5, allocate=allocate, round_to=round_to,
                        calib={"input": d["input"][:64]}, sequential=False)
    frac = r.report.params["after"] / r.report.params["before"]
    assert 0.4 <= frac <= 0.5 + 1e-3, frac
    assert r.report.target == {"measure": "params", "fraction": 0.5}
    assert count_params(r.model) == r.report.params["after"]


def test_macs_and_params_targets_together_are_refused():
    with pytest.raises(OnnxPruneError, match="not both"):
        onnxprune.prune(os.path.join(ROOT, "resnet_mnist.onnx"), params_target=0.5, macs_target=0.5)


def test_an_unreachable_params_target_names_the_reachable_one():
    with pytest.raises(OnnxPruneError, match=r"parameters target 0.001 cannot be met.*ask for"):
        onnxprune.prune(os.path.join(ROOT, "resnet_mnist.onnx"), params_target=0.001, round_to=1)


def test_the_cli_prints_the_achieved_figure_next_to_the_target(tmp_path):
    from click.testing import CliRunner

    from onnxprune.cli import main

    res = CliRunner().invoke(main, ["prune", os.path.join(ROOT, "resnet_mnist.onnx"), "-o",
                                    str(tmp_path / "p.onnx"), "--params-target", "0.6", "--no-validate"])
    assert res.exit_code == 0, res.output
    assert "parameters: x0." in res.output and "(target 0.6)" in res.output
    res = CliRunner().invoke(main, ["prune", os.path.join(ROOT, "resnet_mnist.onnx"), "-o",
                                    str(tmp_path / "p.onnx"), "--macs-target", "0.6", "--no-validate"])
    assert res.exit_code == 0 and "MACs: x0." in res.output and "(target 0.6)" in res.output


def test_a_latency_target_is_searched_by_timing_candidates(monkeypatch):
    """The search keeps the least pruning whose measured ratio meets the
    target: with a fake clock where latency = the kept MACs fraction, it
    lands just under the target."""
    from onnxprune.search import latency

    def fake_ratio(base, sess, feeds, runs, rounds=3):
        return fake_ratio.next.pop(0), 1.0

    path = os.path.join(ROOT, "resnet_mnist.onnx")
    groups = onnxprune.analyze(path)
    from onnxprune.select.importance import score
    from onnxprune.select.planner import estimate_macs, plan_budget

    s = score(groups, "l2")

    def plan_at(r):
        p = plan_budget(groups, s, ratio=r, macs_target=None, round_to=1)
        fake_ratio.next = [estimate_macs(groups, p.keep) / groups.macs]
        return p

    monkeypatch.setattr(latency, "time_ratio", fake_ratio)
    from onnxprune.stages.config import PruneConfig

    plan, search = latency.plan_latency(groups, plan_at, 0.6, PruneConfig())
    assert search.achieved <= 0.6 and search.achieved >= 0.5, search.tried
    assert estimate_macs(groups, plan.keep) / groups.macs == search.achieved
    with pytest.raises(OnnxPruneError, match="cannot be met.*ask for"):
        latency.plan_latency(groups, plan_at, 0.0001, PruneConfig())


def test_a_latency_target_prunes_end_to_end_and_says_what_it_measured():
    r = onnxprune.prune(os.path.join(ROOT, "resnet_mnist.onnx"), latency_target=0.8)
    assert r.report.target == {"measure": "latency", "fraction": 0.8}
    assert any(n.startswith("--latency-target 0.8: the plan ran in x") for n in r.report.notes)
    assert r.report.macs["after"] < r.report.macs["before"]
    with pytest.raises(OnnxPruneError, match="one of"):
        onnxprune.prune(os.path.join(ROOT, "resnet_mnist.onnx"), latency_target=0.8, macs_target=0.5)
