"""``prune --explain``: where a prune's error comes from, measured on the
held-out samples: the plan as written, the plan uncompensated, each pruned
group alone. Each figure is checked against an independent run."""
from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

import onnxprune
from onnxprune.check.similarity import centred_cosines
from onnxprune.cli import main
from onnxprune.core import runtime
from tests.helpers.paths import MODELS

MODEL = os.path.join(MODELS, "resnet_mnist.onnx")
DATA = os.path.join(MODELS, "resnet_mnist_data.npz")


def _error(original, pruned, x) -> float:
    a = runtime.session(original).run(None, {"input": x})[0]
    b = runtime.session(pruned).run(None, {"input": x})[0]
    return float(np.mean(1.0 - centred_cosines(a, b)))


@pytest.fixture(scope="module")
def explained():
    d = np.load(DATA)
    calib, held = {"input": d["input"][:192]}, {"input": d["input"][192:]}
    result = onnxprune.prune(MODEL, ratio=0.3, calib=calib, data=held, validate=True, explain=True,
                             sequential=False, allocate="uniform")
    return result, held["input"]


def test_the_error_of_the_pruned_model_is_what_an_independent_run_measures(explained):
    result, x = explained
    x_ = result.report.explain
    assert x_["samples"] == len(x)
    assert np.isclose(x_["error"], _error(MODEL, result.model, x), rtol=1e-4, atol=1e-6)
    assert x_["uncompensated"] > x_["error"]  # least squares made up for most of it
    assert any("compensation and refits removed" in f for f in x_["findings"])


def test_each_pruned_group_alone_is_measured_and_the_worst_comes_first(explained):
    result, x = explained
    rows = result.report.explain["groups"]
    pruned = {gid for gid, (kept, units) in result.plan.kept.items() if kept < units}
    assert {r["group"] for r in rows} == pruned
    assert [r["error"] for r in rows] == sorted((r["error"] for r in rows), reverse=True)
    worst = rows[0]
    keep = {worst["group"]: result.plan.keep[worst["group"]]}
    alone = onnxprune.prune(MODEL, keep=keep, calib={"input": np.load(DATA)["input"][:192]}, sequential=False)
    assert np.isclose(worst["error"], _error(MODEL, alone.model, x), rtol=1e-4, atol=1e-6)
    assert 0 < worst["macs_saved"] < 1


def test_the_cli_prints_the_table_and_refuses_it_without_validation(tmp_path):
    out = os.fspath(tmp_path / "o.onnx")
    r = CliRunner().invoke(main, ["prune", MODEL, "-o", out, "--data", DATA, "--explain", "--no-sequential"])
    assert r.exit_code == 0, r.output
    assert "Where the error comes from" in r.stdout and "the plan, uncompensated" in r.stdout
    r = CliRunner().invoke(main, ["prune", MODEL, "-o", out, "--explain", "--no-validate"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "--explain" in r.stderr
