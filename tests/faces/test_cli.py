"""The ``onnxprune`` command line: analyze, prune, validate, and how it fails.

Every test builds a tiny model with onnx.helper (tests/fixtures_cli.py) in its
own tmp_path and drives ``onnxprune.cli:main`` through click's CliRunner
(click >= 8.2: ``result.stderr`` is separate, ``result.output`` holds both).
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxprune.cli import main
from tests.helpers import fixtures_cli as F

REPORT_VALIDATION_KEYS = {"cosine_min", "cosine_mean", "max_abs_diff", "top1_agreement",
                          "accuracy_before", "accuracy_after"}


def cli(*args):
    return CliRunner().invoke(main, [os.fspath(a) for a in args])


def assert_ok(result):
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.exception is None
    assert "Traceback" not in result.output


def assert_user_error(result, fragment: str | None = None) -> str:
    """Exit 2 (bad input or usage), handled (no crash), one ``onnxprune:`` line on
    stderr, no traceback."""
    assert result.exit_code == 2, result.output
    # A handled error ends in SystemExit; anything else escaped the CLI's error handling.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("onnxprune:"), lines[0]
    assert "internal error" not in lines[0], lines[0]
    if fragment is not None:
        assert fragment in lines[0], lines[0]
    return lines[0]


def listing(folder) -> set[str]:
    return set(os.listdir(folder))


@pytest.fixture
def model_path(tmp_path):
    return F.save(F.classifier(), tmp_path)


@pytest.fixture
def data_path(tmp_path):
    return F.save_data(tmp_path)


def prune_report(tmp_path, model_path, *extra) -> dict:
    out, rep = tmp_path / "out.onnx", tmp_path / "r.json"
    result = cli("prune", model_path, "-o", out, "--report", rep, *extra)
    assert_ok(result)
    return json.loads(rep.read_text())


def groups_by_id(report: dict) -> dict[int, dict]:
    return {g["id"]: g for g in report["groups"]}


def prunable_groups(report: dict) -> list[dict]:
    return [g for g in report["groups"] if not g["frozen"]]


# ---------------------------------------------------------------- analyze

def test_analyze_prints_table_with_groups_and_totals(model_path):
    result = cli("analyze", model_path)
    assert_ok(result)
    out = result.stdout
    assert "Channel groups" in out
    for member in ("conv1", "bn1", "conv2", "fc"):
        assert member in out
    assert "prunable" in out and "frozen" in out
    assert "groups: 4 (2 prunable, 2 frozen)" in out
    assert "params:" in out and "total" in out and "MACs:" in out


def test_analyze_json_is_valid_json_with_totals_and_groups(model_path):
    result = cli("analyze", model_path, "--json")
    assert_ok(result)
    payload = json.loads(result.stdout)
    assert {"params_total", "params_prunable", "macs", "groups"} <= payload.keys()
    assert payload["params_total"] == F.param_count(F.classifier())
    assert 0 < payload["params_prunable"] <= payload["params_total"]
    assert payload["macs"] > 0
    assert payload["groups"]
    for g in payload["groups"]:
        assert {"id", "channels", "params", "members", "frozen"} <= g.keys()
        assert isinstance(g["members"], list) and isinstance(g["frozen"], list)
    open_groups = {tuple(g["members"]): g["channels"] for g in payload["groups"] if not g["frozen"]}
    assert open_groups == {("conv1", "bn1", "conv2"): F.C1, ("conv2", "fc"): F.C2}


def test_analyze_exclude_freezes_matching_group(model_path):
    result = cli("analyze", model_path, "--json", "--exclude", "bn*")
    assert_ok(result)
    groups = json.loads(result.stdout)["groups"]
    bn_group = next(g for g in groups if "bn1" in g["members"])
    assert any("excluded" in r for r in bn_group["frozen"])


# ---------------------------------------------------------------- prune

def test_prune_writes_checked_smaller_model_with_same_interface(tmp_path, model_path):
    before = open(model_path, "rb").read()
    out = tmp_path / "out.onnx"
    result = cli("prune", model_path, "-o", out, "--ratio", "0.5")
    assert_ok(result)
    assert f"wrote {out}" in result.stdout
    assert open(model_path, "rb").read() == before, "the input model was modified"

    pruned, original = onnx.load(out), onnx.load(model_path)
    onnx.checker.check_model(pruned, full_check=True)
    assert F.param_count(pruned) < F.param_count(original)
    assert [o.name for o in pruned.graph.output] == [o.name for o in original.graph.output]
    assert [i.name for i in pruned.graph.input] == [i.name for i in original.graph.input]

    x = F.inputs(5)
    (ya,), (yb,) = F.run(original, {"input": x}), F.run(pruned, {"input": x})
    assert ya.shape == yb.shape == (5, F.CLASSES)
    assert ya.dtype == yb.dtype == np.float32


def test_prune_report_has_params_macs_validation_latency_groups(tmp_path, model_path):
    rep = prune_report(tmp_path, model_path, "--ratio", "0.5", "--allocate", "uniform", "--round-to", "1")
    assert rep["params"]["before"] > rep["params"]["after"] > 0
    assert rep["macs"]["before"] > rep["macs"]["after"] > 0
    assert REPORT_VALIDATION_KEYS <= rep["validation"].keys()
    assert -1.0 <= rep["validation"]["cosine_min"] <= rep["validation"]["cosine_mean"] <= 1.0 + 1e-9
    assert rep["validation"]["max_abs_diff"] >= 0
    assert {"before", "after"} <= rep["latency_ms"].keys()
    assert rep["latency_ms"]["before"] > 0 and rep["latency_ms"]["after"] > 0
    assert rep["groups"] and all({"id", "channels", "kept", "frozen"} <= g.keys() for g in rep["groups"])
    for g in prunable_groups(rep):
        assert g["kept"] == g["channels"] - round(0.5 * g["channels"])
    # Frozen groups (graph input / output channels) keep everything.
    for g in rep["groups"]:
        if g["frozen"]:
            assert g["kept"] == g["channels"]


def test_prune_without_data_warns_about_random_inputs(tmp_path, model_path):
    result = cli("prune", model_path, "-o", tmp_path / "out.onnx")
    assert_ok(result)
    assert "random inputs" in result.stderr
    assert any(line.startswith("onnxprune: warning:") and "random inputs" in line
               for line in result.stderr.splitlines())


def test_prune_with_data_reports_accuracy_before_and_after(tmp_path, model_path, data_path):
    rep = prune_report(tmp_path, model_path, "--ratio", "0.3", "--data", data_path)
    v = rep["validation"]
    assert isinstance(v["accuracy_before"], float) and isinstance(v["accuracy_after"], float)
    assert 0.0 <= v["accuracy_before"] <= 1.0 and 0.0 <= v["accuracy_after"] <= 1.0
    assert v["random_inputs"] is False
    # --data alone: its first 12 samples calibrate, its last 4 (held out) validate
    assert v["samples"] == 4 and rep["calibration"]["samples"] == 12
    # Accuracy before is the original model's, computed here independently.
    d = np.load(data_path)
    (logits,) = F.run(onnx.load(model_path), {"input": d["input"][12:]})
    assert v["accuracy_before"] == pytest.approx(float(np.mean(logits.argmax(1) == d["labels"][12:])))


def test_prune_with_data_does_not_warn_about_random_inputs(tmp_path, model_path, data_path):
    result = cli("prune", model_path, "-o", tmp_path / "out.onnx", "--data", data_path)
    assert_ok(result)
    assert "random inputs" not in result.output


def test_masked_output_is_full_size_and_computes_what_pruned_computes(tmp_path, model_path):
    out, masked = tmp_path / "out.onnx", tmp_path / "masked.onnx"
    assert_ok(cli("prune", model_path, "-o", out, "--masked-output", masked, "--ratio", "0.5"))
    m, p, o = onnx.load(masked), onnx.load(out), onnx.load(model_path)
    onnx.checker.check_model(m, full_check=True)
    shape = lambda model: {t.name: list(t.dims) for t in model.graph.initializer}  # noqa: E731
    assert shape(m) == shape(o), "the masked model must keep every original tensor shape"
    assert F.param_count(p) < F.param_count(m)
    for seed in (1, 2, 3):
        x = F.inputs(4, seed)
        (ym,), (yp,) = F.run(m, {"input": x}), F.run(p, {"input": x})
        np.testing.assert_allclose(ym, yp, rtol=1e-4, atol=1e-5)


def test_exclude_glob_freezes_that_group_and_removes_fewer_channels(tmp_path, model_path):
    plain = prune_report(tmp_path, model_path, "--ratio", "0.5")
    excluded = prune_report(tmp_path, model_path, "--ratio", "0.5", "--exclude", "bn*")
    removed = lambda rep: sum(g["channels"] - g["kept"] for g in rep["groups"])  # noqa: E731
    assert removed(excluded) < removed(plain)
    bn_group = next(g for g in excluded["groups"] if "bn1" in g["members"])
    assert bn_group["kept"] == bn_group["channels"] == F.C1
    assert any("bn*" in r for r in bn_group["frozen"])
    other = next(g for g in excluded["groups"] if g["members"] == ["conv2", "fc"])
    assert other["kept"] < other["channels"]
    assert excluded["params"]["after"] > plain["params"]["after"]


def test_exclude_glob_keeps_excluded_conv_weights_unchanged(tmp_path, model_path):
    out = tmp_path / "out.onnx"
    assert_ok(cli("prune", model_path, "-o", out, "--ratio", "0.5", "--exclude", "bn*"))
    np.testing.assert_array_equal(F.conv_weight(onnx.load(out), "conv1"),
                                  F.conv_weight(onnx.load(model_path), "conv1"))


def test_round_to_keeps_channel_counts_multiples_of_n(tmp_path, model_path):
    rep = prune_report(tmp_path, model_path, "--ratio", "0.5", "--round-to", "4")
    for g in prunable_groups(rep):
        assert g["kept"] % 4 == 0 and 0 < g["kept"] <= g["channels"]
    pruned = onnx.load(tmp_path / "out.onnx")
    assert F.conv_weight(pruned, "conv1").shape[0] % 4 == 0
    assert F.conv_weight(pruned, "conv2").shape[0] % 4 == 0


def test_min_channels_is_a_floor_for_every_group(tmp_path, model_path):
    rep = prune_report(tmp_path, model_path, "--ratio", "0.9", "--min-channels", "3")
    assert [g["kept"] for g in prunable_groups(rep)] == [3, 3]
    pruned = onnx.load(tmp_path / "out.onnx")
    assert F.conv_weight(pruned, "conv1").shape[0] == 3
    assert F.conv_weight(pruned, "conv2").shape[:2] == (3, 3)


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn", "random"])
def test_every_criterion_prunes_to_a_valid_model(tmp_path, model_path, criterion):
    rep = prune_report(tmp_path, model_path, "--ratio", "0.5", "--criterion", criterion)
    assert rep["criterion"] == criterion
    assert rep["params"]["after"] < rep["params"]["before"]
    pruned = onnx.load(tmp_path / "out.onnx")
    onnx.checker.check_model(pruned, full_check=True)
    (y,) = F.run(pruned, {"input": F.inputs(3)})
    assert y.shape == (3, F.CLASSES)


def test_magnitude_criteria_keep_original_conv1_rows_in_order(tmp_path, model_path):
    """The kept conv1 rows are distinct original rows, in their original order."""
    original = F.conv_weight(onnx.load(model_path), "conv1")
    for crit in ("l1", "l2"):
        out = tmp_path / f"{crit}.onnx"
        assert_ok(cli("prune", model_path, "-o", out, "--ratio", "0.5", "--criterion", crit))
        kept = F.conv_weight(onnx.load(out), "conv1")
        matches = [int(np.flatnonzero((original == row).all(axis=(1, 2, 3)))[0]) for row in kept]
        assert matches == sorted(matches) and len(set(matches)) == len(kept)


def test_unknown_criterion_is_a_usage_error(tmp_path, model_path):
    result = cli("prune", model_path, "-o", tmp_path / "out.onnx", "--criterion", "nope")
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert not (tmp_path / "out.onnx").exists()


def test_input_shape_fixes_symbolic_dims_but_keeps_the_model_interface(tmp_path, model_path):
    out = tmp_path / "out.onnx"
    assert_ok(cli("prune", model_path, "-o", out, "--input-shape", "input:2,3,8,8"))
    pruned = onnx.load(out)
    onnx.checker.check_model(pruned, full_check=True)
    dims = pruned.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N", "--input-shape is for analysis, not a change of interface"
    (y,) = F.run(pruned, {"input": F.inputs(2)})
    assert y.shape == (2, F.CLASSES)


def test_quiet_prints_nothing_on_stdout(tmp_path, model_path, data_path):
    result = cli("prune", model_path, "-o", tmp_path / "out.onnx", "-q", "--data", data_path)
    assert_ok(result)
    assert result.stdout == ""
    assert (tmp_path / "out.onnx").exists()


def test_no_validate_skips_validation_in_report(tmp_path, model_path):
    rep = prune_report(tmp_path, model_path, "--no-validate")
    assert "validation" not in rep
    assert rep["params"]["before"] > rep["params"]["after"]


def test_prune_leaves_no_temporary_files(tmp_path, model_path, data_path):
    before = listing(tmp_path)
    assert_ok(cli("prune", model_path, "-o", tmp_path / "out.onnx", "--masked-output",
                  tmp_path / "m.onnx", "--report", tmp_path / "r.json", "--data", data_path))
    assert listing(tmp_path) == before | {"out.onnx", "m.onnx", "r.json"}


def test_pruned_model_file_is_created_with_default_permissions(tmp_path, model_path):
    old = os.umask(0o022)
    try:
        assert_ok(cli("prune", model_path, "-o", tmp_path / "out.onnx"))
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(tmp_path / "out.onnx").st_mode)
    assert mode == 0o644, oct(mode)


# ---------------------------------------------------------------- validate

def test_validate_with_data_prints_fidelity_and_writes_report(tmp_path, model_path, data_path):
    out = tmp_path / "out.onnx"
    assert_ok(cli("prune", model_path, "-o", out, "--no-validate", "-q"))
    rep = tmp_path / "v.json"
    result = cli("validate", model_path, out, "--data", data_path, "--report", rep)
    assert_ok(result)
    assert "Validation" in result.stdout and "cosine" in result.stdout
    assert "logits" in result.stdout and "accuracy" in result.stdout
    assert "random inputs" not in result.output
    payload = json.loads(rep.read_text())
    assert REPORT_VALIDATION_KEYS <= payload["validation"].keys()
    assert payload["validation"]["samples"] == 16
    assert payload["validation"]["accuracy_before"] is not None
    assert payload["params"]["before"] > payload["params"]["after"]
    assert {"before", "after"} <= payload["latency_ms"].keys()


def test_validate_model_against_itself_is_exact(tmp_path, model_path, data_path):
    rep = tmp_path / "v.json"
    assert_ok(cli("validate", model_path, model_path, "--data", data_path, "--report", rep, "-q"))
    v = json.loads(rep.read_text())["validation"]
    assert v["cosine_min"] == pytest.approx(1.0) and v["max_abs_diff"] == 0.0
    assert v["top1_agreement"] == 1.0 and v["accuracy_before"] == v["accuracy_after"]


def test_validate_without_data_warns_about_random_inputs_on_stderr(tmp_path, model_path):
    out = tmp_path / "out.onnx"
    assert_ok(cli("prune", model_path, "-o", out, "--no-validate", "-q"))
    result = cli("validate", model_path, out)
    assert_ok(result)
    assert "random inputs" in result.stderr
    assert "random inputs" in result.stdout  # the table title says so too
    assert "onnxprune: warning:" not in result.stdout


# ---------------------------------------------------------------- bad input

@pytest.fixture
def bad_files(tmp_path):
    rng = np.random.default_rng(123)
    (tmp_path / "random.onnx").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (tmp_path / "text.onnx").write_text("this is not an onnx model\nat all\n")
    F.save(F.single_conv(), tmp_path, "single.onnx")
    np.savez(tmp_path / "noinput.npz", x=F.inputs(4), labels=np.zeros(4, np.int64))
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "empty.npz").write_bytes(b"")
    good = F.classifier().SerializeToString()
    (tmp_path / "truncated.onnx").write_bytes(good[: len(good) // 2])
    broken = F.classifier()  # conv2 expects 8 input channels; give its weight 5
    w = next(t for t in broken.graph.initializer if t.name == "conv2.weight")
    w.CopyFrom(onnx.numpy_helper.from_array(np.ones((F.C2, 5, 3, 3), np.float32), "conv2.weight"))
    (tmp_path / "inconsistent.onnx").write_bytes(broken.SerializeToString())
    lying = F.classifier()  # declares 7 logits where the graph makes 10: the checker refuses it
    lying.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 7
    (tmp_path / "lying.onnx").write_bytes(lying.SerializeToString())
    cyclic = F.classifier()  # relu1 reads relu2's output: a cycle
    next(n for n in cyclic.graph.node if n.name == "relu1").input[0] = "r2"
    (tmp_path / "cycle.onnx").write_bytes(cyclic.SerializeToString())
    F.save_external(F.classifier(c1=16, c2=32), tmp_path, "external.onnx", location="gone.data")
    os.remove(tmp_path / "gone.data")
    x = F.inputs(4)
    np.savez(tmp_path / "nan.npz", input=np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x))
    np.savez(tmp_path / "inf.npz", input=np.where(np.arange(x.size).reshape(x.shape) == 5, np.inf, x))
    np.savez(tmp_path / "strings.npz", input=np.array(["a", "b"]))
    np.savez(tmp_path / "scalar.npz", input=np.float32(1.0))
    np.savez(tmp_path / "wrongshape.npz", input=np.zeros((4, 3, 5, 5), np.float32))
    np.savez(tmp_path / "nosamples.npz", input=np.zeros((0, 3, 8, 8), np.float32))
    return tmp_path


BAD_PRUNE_CASES = {
    "missing_model": (["prune", "{d}/missing.onnx", "-o", "{d}/out.onnx"], "no such file"),
    "random_bytes_model": (["prune", "{d}/random.onnx", "-o", "{d}/out.onnx"], "random.onnx"),
    "text_file_model": (["prune", "{d}/text.onnx", "-o", "{d}/out.onnx"], "text.onnx"),
    "all_groups_frozen": (["prune", "{d}/single.onnx", "-o", "{d}/out.onnx"], "nothing to prune"),
    "bad_input_shape": (["prune", "{d}/model.onnx", "-o", "{d}/out.onnx", "--input-shape", "bad"],
                        "--input-shape"),
    "input_shape_unknown_name": (["prune", "{d}/model.onnx", "-o", "{d}/out.onnx",
                                  "--input-shape", "nope:1,3,8,8"], "nope"),
    "missing_data_file": (["prune", "{d}/model.onnx", "-o", "{d}/out.onnx", "--data", "{d}/nope.npz"],
                          "no such file"),
    "data_without_input_array": (["prune", "{d}/model.onnx", "-o", "{d}/out.onnx",
                                  "--data", "{d}/noinput.npz"], "'input'"),
    "output_folder_missing": (["prune", "{d}/model.onnx", "-o", "{d}/nodir/out.onnx"], "nodir"),
    "empty_model": (["prune", "{d}/empty.onnx", "-o", "{d}/out.onnx"], "empty.onnx"),
    "truncated_model": (["prune", "{d}/truncated.onnx", "-o", "{d}/out.onnx"], "truncated.onnx"),
    "inconsistent_shapes": (["prune", "{d}/inconsistent.onnx", "-o", "{d}/out.onnx"], "original model fails"),
    "cycle": (["prune", "{d}/cycle.onnx", "-o", "{d}/out.onnx"], "cycle"),
    "input_fails_checker": (["prune", "{d}/lying.onnx", "-o", "{d}/out.onnx", "--no-validate"],
                            "input model fails onnx.checker"),
    "missing_external_data": (["prune", "{d}/external.onnx", "-o", "{d}/out.onnx"], "external data"),
    "nan_calib": (["prune", "{d}/model.onnx", "-o", "{d}/out.onnx", "--calib", "{d}/nan.npz"], "NaN"),
    "inf_data": (["prune", "{d}/model.onnx", "-o", "{d}/out.onnx", "--data", "{d}/inf.npz"], "inf"),
    "string_calib": (["prune", "{d}/model.onnx", "-o", "{d}/out.onnx", "--calib", "{d}/strings.npz"],
                     "numbers"),
    "scalar_data": (["prune", "{d}/model.onnx", "-o", "{d}/out.onnx", "--data", "{d}/scalar.npz"], "input"),
    "wrong_shape_data": (["prune", "{d}/model.onnx", "-o", "{d}/out.onnx", "--data", "{d}/wrongshape.npz"],
                         "shape"),
    "empty_calib_file": (["prune", "{d}/model.onnx", "-o", "{d}/out.onnx", "--calib", "{d}/empty.npz"],
                         "empty.npz"),
    "no_samples": (["prune", "{d}/model.onnx", "-o", "{d}/out.onnx", "--data", "{d}/nosamples.npz"],
                   "no samples"),
    "report_is_the_data": (["prune", "{d}/model.onnx", "-o", "{d}/out.onnx", "--data", "{d}/noinput.npz",
                            "--report", "{d}/noinput.npz"], "noinput.npz"),
    "output_is_the_calib": (["prune", "{d}/model.onnx", "-o", "{d}/nan.npz", "--calib", "{d}/nan.npz"],
                            "nan.npz"),
}


OUT_OF_RANGE = {"--ratio": ["1.5", "-0.1", "1"], "--macs-target": ["0", "1.2"], "--min-channels": ["0"],
                "--round-to": ["0"], "--seed": ["-1"], "--calib-samples": ["0"], "--calib-batch": ["0"],
                "--threads": ["0"]}


@pytest.mark.parametrize("option,value", [(o, v) for o, vs in OUT_OF_RANGE.items() for v in vs])
def test_out_of_range_options_are_usage_errors_from_the_cli_types(tmp_path, option, value):
    model = F.save(F.classifier(), tmp_path)
    before = listing(tmp_path)
    result = cli("prune", model, "-o", tmp_path / "out.onnx", option, value)
    assert result.exit_code == 2, result.output
    assert option in result.output and "Traceback" not in result.output
    assert listing(tmp_path) == before


@pytest.mark.parametrize("case", sorted(BAD_PRUNE_CASES))
def test_bad_prune_input_gives_one_line_error_and_no_output(bad_files, case):
    args, fragment = BAD_PRUNE_CASES[case]
    F.save(F.classifier(), bad_files)
    before = listing(bad_files)
    result = cli(*[a.format(d=bad_files) for a in args])
    assert_user_error(result, fragment)
    assert listing(bad_files) == before, "an output or temporary file was left behind"


@pytest.mark.parametrize("name", ["missing.onnx", "random.onnx", "text.onnx"])
def test_analyze_bad_model_gives_one_line_error(bad_files, name):
    assert_user_error(cli("analyze", bad_files / name), name)


def test_validate_bad_inputs_give_one_line_errors(bad_files, tmp_path):
    model = F.save(F.classifier(), tmp_path)
    assert_user_error(cli("validate", model, tmp_path / "missing.onnx"), "no such file")
    assert_user_error(cli("validate", tmp_path / "text.onnx", model), "text.onnx")
    assert_user_error(cli("validate", model, model, "--data", tmp_path / "noinput.npz"), "'input'")
    assert_user_error(cli("validate", model, model, "--data", tmp_path / "nope.npz"), "no such file")
    assert_user_error(cli("validate", model, tmp_path / "single.onnx"), "different")


def test_all_frozen_model_names_nothing_to_prune_and_points_to_analyze(bad_files):
    line = assert_user_error(cli("prune", bad_files / "single.onnx", "-o", bad_files / "out.onnx"))
    assert "nothing to prune" in line and "analyze" in line


@pytest.mark.parametrize("spelling", ["same", "dot_slash", "absolute"])
def test_output_equal_to_input_is_refused_and_input_is_unchanged(tmp_path, model_path, spelling,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    before_bytes, before = open(model_path, "rb").read(), listing(tmp_path)
    out = {"same": "model.onnx", "dot_slash": "./model.onnx", "absolute": model_path}[spelling]
    result = CliRunner().invoke(main, ["prune", "model.onnx", "-o", out])
    assert_user_error(result, "input")
    assert open(model_path, "rb").read() == before_bytes
    assert listing(tmp_path) == before


@pytest.mark.parametrize("option", ["--masked-output", "--report"])
def test_other_outputs_equal_to_input_are_refused(tmp_path, model_path, option):
    before_bytes, before = open(model_path, "rb").read(), listing(tmp_path)
    result = cli("prune", model_path, "-o", tmp_path / "out.onnx", option, model_path)
    assert_user_error(result, "input")
    assert open(model_path, "rb").read() == before_bytes
    assert listing(tmp_path) == before


def test_output_via_hard_link_to_input_is_refused(tmp_path, model_path):
    link = tmp_path / "alias.onnx"
    os.link(model_path, link)
    before_bytes = open(model_path, "rb").read()
    assert_user_error(cli("prune", model_path, "-o", link), "input")
    assert open(model_path, "rb").read() == before_bytes


def test_masked_output_in_missing_folder_leaves_no_pruned_output(tmp_path, model_path):
    before = listing(tmp_path)
    result = cli("prune", model_path, "-o", tmp_path / "out.onnx", "--no-validate",
                 "--masked-output", tmp_path / "nodir" / "m.onnx")
    assert_user_error(result, "nodir")
    assert listing(tmp_path) == before


def test_report_in_missing_folder_gives_user_error_and_no_output(tmp_path, model_path):
    before = listing(tmp_path)
    result = cli("prune", model_path, "-o", tmp_path / "out.onnx", "--no-validate",
                 "--report", tmp_path / "nodir" / "r.json")
    assert_user_error(result, "nodir")
    assert listing(tmp_path) == before


# ---------------------------------------------------------------- --debug

def test_debug_lets_the_exception_propagate(bad_files):
    result = CliRunner().invoke(main, ["--debug", "prune", os.fspath(bad_files / "random.onnx"),
                                       "-o", os.fspath(bad_files / "out.onnx")])
    assert result.exit_code != 0
    assert result.exception is not None and not isinstance(result.exception, SystemExit)
    assert "random.onnx" in str(result.exception)
    assert not (bad_files / "out.onnx").exists()


def test_real_process_shows_traceback_only_with_debug(bad_files):
    """The installed entry point, in a real process: one line without --debug, traceback with it."""
    base = [sys.executable, "-m", "onnxprune.cli"]
    args = ["prune", os.fspath(bad_files / "text.onnx"), "-o", os.fspath(bad_files / "out.onnx")]
    plain = subprocess.run(base + args, capture_output=True, text=True, timeout=60)
    assert plain.returncode == 2  # bad input
    assert "Traceback" not in plain.stderr + plain.stdout
    assert plain.stderr.startswith("onnxprune:") and len(plain.stderr.strip().splitlines()) == 1
    debug = subprocess.run(base + ["--debug"] + args, capture_output=True, text=True, timeout=60)
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr
    assert not (bad_files / "out.onnx").exists()


def test_the_report_says_where_time_and_memory_went_and_v_prints_it(tmp_path, model_path, data_path):
    """Every stage that ran, in order, with its seconds and resident memory;
    the peak never falls; the stages add up to the total; ``-v`` prints them."""
    out, rep = tmp_path / "out.onnx", tmp_path / "r.json"
    result = cli("prune", model_path, "-o", out, "--report", rep, "--ratio", "0.3", "--calib", data_path, "-v")
    assert_ok(result)
    t = json.loads(rep.read_text())["timings"]
    names = [s["stage"] for s in t["stages"]]
    assert names == ["load", "analyze", "calibrate", "score", "price", "plan", "compensate", "refit", "reference",
                     "apply", "check", "report", "validate", "save"]
    assert all(s["seconds"] >= 0 for s in t["stages"])
    assert t["total_s"] == pytest.approx(sum(s["seconds"] for s in t["stages"]), abs=1e-3)
    peaks = [s["peak_rss_mb"] for s in t["stages"]]
    if sys.platform.startswith("linux"):
        assert all(p > 0 for p in peaks) and peaks == sorted(peaks)
        assert all(0 < s["rss_mb"] <= s["peak_rss_mb"] + 1 for s in t["stages"])  # MiB, as the peak
    assert "Where the time went" in result.output and "calibrate" in result.output
    quiet = cli("prune", model_path, "-o", tmp_path / "q.onnx", "--ratio", "0.3", "--calib", data_path)
    assert_ok(quiet)
    assert "Where the time went" not in quiet.output
