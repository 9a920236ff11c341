"""The CLI's calibration options: --calib (npz, folder, module.py:function),
--calib-samples, --calib-batch, --compensate, data criteria; errors are one line.

Model: the tiny classifier of tests/fixtures_cli.py (input 'input' (N,3,8,8)).
"""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxprune.cli import main
from tests.helpers import fixtures_cli as F

MODULE = """
import numpy as np

def samples():
    rng = np.random.default_rng(5)
    for _ in range(12):
        yield {"input": rng.standard_normal((3, 8, 8)).astype(np.float32)}

def returns_none():
    return None

def raises():
    raise RuntimeError("dataset server unreachable")
"""


def cli(*args):
    return CliRunner().invoke(main, [a if isinstance(a, str) else os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args])


def assert_ok(result):
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.exception is None
    assert "Traceback" not in result.output


def assert_user_error(result, fragment: str | None = None) -> str:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("onnxprune: "), lines[0]
    assert "internal error" not in lines[0], lines[0]
    if fragment is not None:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def model_path(tmp_path):
    return F.save(F.classifier(), tmp_path)


@pytest.fixture
def calib_path(tmp_path):
    return F.save_data(tmp_path, n=32, seed=3, name="calib.npz")


@pytest.fixture
def module_path(tmp_path):
    path = tmp_path / "calibmod.py"
    path.write_text(MODULE)
    return os.fspath(path)


def report(path) -> dict:
    with open(path) as f:
        return json.load(f)


def test_relief_with_lsq_and_sample_limits_writes_the_report(tmp_path, model_path, calib_path):
    out, rep = tmp_path / "pruned.onnx", tmp_path / "r.json"
    result = cli("prune", model_path, "-o", out, "--criterion", "relief", "--calib", calib_path,
                 "--compensate", "lsq", "--calib-samples", 16, "--calib-batch", 4, "--report", rep)
    assert_ok(result)
    assert "no calibration data" not in result.stderr
    r = report(rep)
    assert r["criterion"] == "relief"
    assert r["compensate"] == "lsq"
    assert r["calibration"]["samples"] == 16
    assert r["calibration"]["random"] is False
    assert r["calibration"]["tensors"] >= 1
    onnx.checker.check_model(onnx.load(os.fspath(out)), full_check=True)
    assert r["params"]["after"] < r["params"]["before"]


def test_calib_defaults_to_least_squares_compensation(tmp_path, model_path, calib_path):
    rep = tmp_path / "r.json"
    result = cli("prune", model_path, "-o", tmp_path / "p.onnx", "--criterion", "mean_abs",
                 "--calib", calib_path, "--report", rep)
    assert_ok(result)
    r = report(rep)
    assert r["compensate"] == "lsq"
    # Without --data, the last quarter of the calibration data is held out for validation.
    assert r["calibration"]["samples"] == 24 and r["validation"]["samples"] == 8
    assert not r["validation"]["random_inputs"]
    assert "held out" in result.stderr and any("held out" in n for n in r["notes"])


def test_weight_criterion_without_calib_does_not_calibrate(tmp_path, model_path):
    rep = tmp_path / "r.json"
    result = cli("prune", model_path, "-o", tmp_path / "p.onnx", "--report", rep)
    assert_ok(result)
    assert "no calibration data" not in result.stderr
    r = report(rep)
    assert r["compensate"] == "none" and r["calibration"] is None


def test_data_criterion_without_calib_warns_random_on_stderr_and_succeeds(tmp_path, model_path):
    out, rep = tmp_path / "pruned.onnx", tmp_path / "r.json"
    result = cli("prune", model_path, "-o", out, "--criterion", "mean_abs", "--report", rep)
    assert_ok(result)
    first = result.stderr.splitlines()[0]
    assert first.startswith("onnxprune: warning:")
    assert "no calibration data" in first and "random" in first
    assert os.path.exists(out)
    assert report(rep)["calibration"]["random"] is True


def test_compensation_without_data_uses_batchnorm_statistics_and_says_so(tmp_path, model_path):
    """No data: bias compensation takes the channel means BatchNorm states
    (never a calibration on random noise), and the note says data would do better."""
    result = cli("prune", model_path, "-o", tmp_path / "p.onnx", "--compensate", "bias")
    assert_ok(result)
    assert "data-free compensation" in result.stderr and "--calib" in result.stderr
    assert "random inputs. Data-driven" not in result.stderr


def test_missing_calib_file_fails_in_one_line_and_writes_nothing(tmp_path, model_path):
    out, rep = tmp_path / "pruned.onnx", tmp_path / "r.json"
    before = set(os.listdir(tmp_path))
    result = cli("prune", model_path, "-o", out, "--criterion", "mean_abs",
                 "--calib", tmp_path / "missing.npz", "--report", rep)
    assert_user_error(result, "missing.npz")
    assert not os.path.exists(out) and not os.path.exists(rep)
    assert set(os.listdir(tmp_path)) == before


def test_calib_npz_without_the_input_fails_in_one_line(tmp_path, model_path):
    path = tmp_path / "wrong.npz"
    np.savez(path, x=F.inputs(4))
    out = tmp_path / "pruned.onnx"
    assert_user_error(cli("prune", model_path, "-o", out, "--calib", path), "input")
    assert not os.path.exists(out)


@pytest.mark.parametrize("flag,value", [("--calib-samples", 0), ("--calib-batch", 0)])
def test_calib_sample_and_batch_counts_must_be_positive(tmp_path, model_path, calib_path, flag, value):
    out = tmp_path / "pruned.onnx"
    result = cli("prune", model_path, "-o", out, "--calib", calib_path, flag, value)
    assert result.exit_code == 2 and flag in result.output  # the CLI's own types refuse it
    assert not os.path.exists(out)


def test_calib_module_function_works(tmp_path, model_path, module_path):
    out, rep = tmp_path / "pruned.onnx", tmp_path / "r.json"
    result = cli("prune", model_path, "-o", out, "--criterion", "apoz",
                 "--calib", f"{module_path}:samples", "--calib-batch", 5, "--report", rep)
    assert_ok(result)
    assert "no calibration data" not in result.stderr
    r = report(rep)
    assert r["calibration"]["samples"] == 12 and r["compensate"] == "lsq"
    onnx.checker.check_model(onnx.load(os.fspath(out)), full_check=True)


def test_calib_module_missing_function_fails_in_one_line(tmp_path, model_path, module_path):
    out = tmp_path / "pruned.onnx"
    assert_user_error(cli("prune", model_path, "-o", out, "--calib", f"{module_path}:nope"), "nope")
    assert not os.path.exists(out)


def test_calib_function_that_raises_is_a_user_error(tmp_path, model_path, module_path):
    out = tmp_path / "pruned.onnx"
    assert_user_error(cli("prune", model_path, "-o", out, "--calib", f"{module_path}:raises"),
                      "dataset server unreachable")
    assert not os.path.exists(out)


def test_calib_folder_works(tmp_path, model_path):
    folder = tmp_path / "samples"
    folder.mkdir()
    for i, s in enumerate(F.inputs(6, seed=2)):
        np.save(folder / f"{i:02d}.npy", s)
    rep = tmp_path / "r.json"
    assert_ok(cli("prune", model_path, "-o", tmp_path / "p.onnx", "--criterion", "act_l2",
                  "--calib", folder, "--report", rep))
    assert report(rep)["calibration"]["samples"] == 5  # one of six held out for validation
    assert_ok(cli("prune", model_path, "-o", tmp_path / "p2.onnx", "--criterion", "act_l2",
                  "--calib", folder, "--report", rep, "--no-validate"))
    assert report(rep)["calibration"]["samples"] == 6


def test_masked_output_carries_the_same_compensation(tmp_path, model_path, calib_path):
    out, masked = tmp_path / "pruned.onnx", tmp_path / "masked.onnx"
    assert_ok(cli("prune", model_path, "-o", out, "--masked-output", masked, "--ratio", 0.5,
                  "--calib", calib_path, "--compensate", "lsq", "--criterion", "flap"))
    feeds = {"input": F.inputs(4, seed=9)}
    yp, ym = F.run(os.fspath(out), feeds)[0], F.run(os.fspath(masked), feeds)[0]
    np.testing.assert_allclose(yp, ym, rtol=1e-4, atol=1e-5 * float(np.abs(ym).max()))
    yo = F.run(model_path, feeds)[0]
    assert not np.allclose(yp, yo)  # something was removed


@pytest.mark.parametrize("criterion", ["mean_abs", "apoz", "act_l2", "relief", "flap", "fpgm"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "max"])
def test_every_criterion_and_reduction_runs(tmp_path, model_path, calib_path, criterion, reduction):
    result = cli("prune", model_path, "-o", tmp_path / "p.onnx", "--criterion", criterion,
                 "--calib", calib_path, "--group-reduction", reduction, "--normalize", "max",
                 "--no-validate", "-q")
    assert_ok(result)
