"""Issue 8: what real exported models do that self-built ones do not, one
class at a time (symbolic spatial dims, batch fixed inside the graph, ...)."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import onnxprune
from graphs import Graph
from onnxprune.cli import main


def _detector(fixed_batch: bool = False) -> onnx.ModelProto:
    """images (N, 3, h, w) -> conv stack -> GlobalAveragePool -> head. With
    ``fixed_batch`` the head flattens through a Reshape to a literal [1, 8]
    (batch 1 fixed inside, as some exporters write it)."""
    g = Graph()
    a = g.add("Relu", [g.conv("images", 3, 8, name="c1")])
    b = g.add("Relu", [g.conv(a, 8, 8, name="c2")])
    p = g.add("GlobalAveragePool", [b])
    flat = g.add("Reshape", [p, g.ints("shape", [1, 8] if fixed_batch else [-1, 8])], name="flat")
    y = g.gemm(flat, 8, 5, trans_b=1, bias_shape=(5,), name="head")
    return g.build({"images": ["N", 3, "h", "w"]}, {y: [1 if fixed_batch else "N", 5]})


def _save(model, tmp_path, name="m.onnx"):
    path = os.fspath(tmp_path / name)
    onnx.save(model, path)
    return path


def test_symbolic_spatial_dims_without_data_are_not_guessed(tmp_path):
    path = _save(_detector(), tmp_path)
    r = CliRunner().invoke(main, ["prune", path, "-o", os.fspath(tmp_path / "o.onnx")])
    assert r.exit_code == 2 and "input 'images' has h, w" in r.output
    assert not (tmp_path / "o.onnx").exists()
    assert onnxprune.analyze(path).macs is None


def test_symbolic_spatial_dims_take_their_shape_from_the_data(tmp_path):
    path = _save(_detector(), tmp_path)
    x = np.random.default_rng(0).standard_normal((8, 3, 12, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", images=x)
    out = tmp_path / "o.onnx"
    r = CliRunner().invoke(main, ["prune", path, "-o", os.fspath(out), "--calib",
                                  os.fspath(tmp_path / "calib.npz"), "--macs-target", "0.6",
                                  "--report", os.fspath(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    import json

    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["macs"]["before"] == 12 * 16 * 8 * (27 + 72) + 40  # per sample, at the data's size
    assert rep["macs"]["after"] <= 0.62 * rep["macs"]["before"]
    assert not rep["validation"]["random_inputs"]


def test_a_graph_that_fixes_batch_one_inside_calibrates_one_sample_at_a_time(tmp_path):
    path = _save(_detector(fixed_batch=True), tmp_path)
    x = np.random.default_rng(0).standard_normal((8, 3, 12, 16)).astype(np.float32)
    result = onnxprune.prune(path, calib={"images": x}, criterion="act_l2", compensate="lsq",
                             validate=True, calib_batch=4)
    assert result.report.calibration["samples"] == 6  # two held out for validation
    assert result.validation.samples == 2
    assert result.report.params["after"] < result.report.params["before"]
