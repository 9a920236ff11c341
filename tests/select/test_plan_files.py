"""A plan names channels by stable group id: saved by one prune, replayed by
another (or written by hand), it gives the same model."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import onnxprune
from onnxprune.cli import main
from tests.helpers import fixtures_cli as F
from tests.helpers.paths import ROOT


def _prune(args):
    r = CliRunner().invoke(main, ["prune", *map(str, args), "--no-validate", "-q"])
    return r


def test_a_saved_plan_replays_to_the_same_model(tmp_path):
    src = F.save(F.classifier(), tmp_path)
    a, b, plan = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "plan.json"
    r = _prune([src, "-o", a, "--ratio", "0.5", "--criterion", "l1", "--save-plan", plan])
    assert r.exit_code == 0, r.output
    saved = json.loads(plan.read_text())
    assert saved["format"] == "onnxprune-plan/1" and saved["ratio"] == 0.5
    assert {g["units"] for g in saved["groups"].values()} == {F.C1, F.C2}
    r = _prune([src, "-o", b, "--plan", plan])  # a different criterion would not matter
    assert r.exit_code == 0, r.output
    assert a.read_bytes() == b.read_bytes()


def test_a_hand_written_plan_keeps_exactly_those_units(tmp_path):
    src = F.save(F.classifier(), tmp_path)
    groups = onnxprune.analyze(src)
    gid = next(g.id for g in groups.prunable if g.members[0] == "conv1")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"format": "onnxprune-plan/1", "groups": {str(gid): {"units": F.C1, "keep": [1, 4]}}}))
    result = onnxprune.prune(src, plan=str(plan))
    np.testing.assert_array_equal(F.conv_weight(result.model, "conv1"), F.conv_weight(F.classifier(), "conv1")[[1, 4]])
    assert result.report.criterion == "explicit"


@pytest.mark.parametrize("payload,word", [
    ({"format": "other"}, "not an onnxprune plan"),
    ({"format": "onnxprune-plan/1", "groups": {"0": {"units": 99, "keep": [0]}}}, "another model"),
    ({"format": "onnxprune-plan/1", "groups": {"42": {"units": 8, "keep": [0]}}}, "groups 0 to"),
    ({"format": "onnxprune-plan/1", "groups": {"1": {"keep": [0]}}}, "needs 'units' and 'keep'"),
])
def test_a_plan_that_does_not_fit_the_model_is_a_clear_error(tmp_path, payload, word):
    src = F.save(F.classifier(), tmp_path)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(payload))
    r = _prune([src, "-o", tmp_path / "out.onnx", "--plan", plan])
    assert r.exit_code != 0 and word in r.output
    assert not (tmp_path / "out.onnx").exists()


def test_save_plan_cannot_overwrite_an_input(tmp_path):
    src = F.save(F.classifier(), tmp_path)
    r = _prune([src, "-o", tmp_path / "out.onnx", "--save-plan", src])
    assert r.exit_code != 0
    assert not (tmp_path / "out.onnx").exists()


def test_analyze_json_speaks_in_the_same_group_ids_with_units_weights_and_accounting(tmp_path):
    src = F.save(F.classifier(), tmp_path)
    r = CliRunner().invoke(main, ["analyze", src, "--json"])
    payload = json.loads(r.output)
    g = next(g for g in payload["groups"] if g["members"][0] == "conv1" and not g["frozen"])
    assert g["units"] == F.C1 and g["unit_width"] == 1
    assert {"tensor": "conv1.weight", "axis": 0} in g["weights"]
    assert {"tensor": "conv2.weight", "axis": 1} in g["weights"]
    parts = ("params_in_prunable_groups", "params_in_frozen_groups", "params_in_no_group")
    assert sum(payload[k] for k in parts) == payload["params_total"]
    assert payload["params_prunable"] <= payload["params_in_prunable_groups"]
    assert payload["internal_errors"] == []


@pytest.mark.parametrize("path", ["models/resnet_mnist.onnx", "tests/fixtures/hf_bert_ts.onnx",
                                  "tests/fixtures/mixed_dyn.onnx"])
def test_analyze_accounts_for_every_parameter(path):
    import os

    root = ROOT
    payload = onnxprune.analyze(os.path.join(root, path)).to_dict()
    parts = ("params_in_prunable_groups", "params_in_frozen_groups", "params_in_no_group")
    assert sum(payload[k] for k in parts) == payload["params_total"]
    assert all(u["why"] for u in payload["ungrouped"])
