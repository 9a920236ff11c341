"""Edge (weight) pruning: per-layer sparsity is exactly the ratio,
N:M keeps at most N of every M inputs, the weight update lowers the
reconstruction error, obs zeroes what the data does not use, and the CLI
refuses budgets zeros cannot meet."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune.core.errors import OnnxPruneError
from onnxprune.refit.edges import _mask, parse_pattern
from tests.helpers.graphs import Graph
from tests.helpers.oracle import run
from tests.helpers.paths import MODELS

ROOT = MODELS


def _mlp(seed=21):
    g = Graph(seed=seed)
    a = g.add("Relu", [g.gemm("x", 40, 48, name="A")])
    return g.build({"x": ["N", 40]}, [g.gemm(a, 48, 5, name="B")])


def _weights(model):
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def test_each_layer_loses_exactly_the_ratio():
    model = _mlp()
    r = onnxprune.prune(model, mode="edges", ratio=0.6, input_shapes={"x": [1, 40]})
    before, after = _weights(model), _weights(r.model)
    for name in ("A_W", "B_W"):
        assert np.count_nonzero(after[name] == 0) == round(0.6 * before[name].size)
        kept = after[name] != 0
        np.testing.assert_array_equal(after[name][kept], before[name][kept])  # no update without data
        # the smallest magnitudes went
        assert np.abs(before[name][~kept]).max() <= np.abs(before[name][kept]).min()
    assert r.report.edges["zeroed"] == sum(np.count_nonzero(after[n] == 0) for n in ("A_W", "B_W"))


def test_n_of_m_keeps_at_most_n_of_every_m_inputs():
    rng = np.random.default_rng(0)
    score = rng.random((10, 7))
    for n in (1, 2, 3):
        mask = _mask(score, None, (n, 4))
        for start in range(0, 10, 4):
            block = mask[start:start + 4]
            kept = (~block).sum(axis=0)
            assert np.all(kept == min(n, len(block)))
            # the kept ones are the block's largest scores
            s = score[start:start + 4]
            assert np.all(np.where(~block, s, np.inf).min(0) >= np.where(block, s, -np.inf).max(0))
    with pytest.raises(OnnxPruneError):
        parse_pattern("4:2")
    model = _mlp()
    r = onnxprune.prune(model, mode="edges", pattern="2:4", input_shapes={"x": [1, 40]})
    w = _weights(r.model)["A_W"]  # (40 inputs, 48 outputs): axis 0 is the input
    assert np.all((w.reshape(10, 4, 48) != 0).sum(axis=1) <= 2)


def _calib(n=400, seed=3):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 6))
    return {"x": (z @ rng.standard_normal((6, 40))).astype(np.float32)}  # correlated inputs


def test_the_weight_update_lowers_the_error_on_the_data():
    model, calib = _mlp(), _calib()
    (y0,) = run(model, calib)
    err = {}
    for comp in ("none", "lsq"):
        r = onnxprune.prune(model, mode="edges", ratio=0.5, calib=calib, compensate=comp)
        (y,) = run(r.model, calib)
        err[comp] = float(np.mean((y - y0) ** 2))
        assert r.report.edges["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert err["lsq"] < 0.5 * err["none"], err
    assert any(layer["updated"] for layer in r.report.edges["layers"])


def test_obs_zeroes_the_weights_of_an_input_the_data_never_uses():
    g = Graph(seed=4)
    y = g.gemm("x", 40, 3, name="A")
    model = g.build({"x": ["N", 40]}, [y])
    w = _weights(model)["A_W"].copy()
    w = np.sign(w) * np.maximum(np.abs(w), 0.2)  # no other weight is near zero
    w[0] = 5.0  # the biggest weights read input 0 ...
    model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w, "A_W"))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 40)).astype(np.float32)
    x[:, 0] = 0.0  # ... which is always zero
    r = onnxprune.prune(model, mode="edges", ratio=3 / 120, calib={"x": x}, compensate="none")
    assert np.all(_weights(r.model)["A_W"][0] == 0)
    m = onnxprune.prune(model, mode="edges", ratio=3 / 120, criterion="l1")
    assert np.all(_weights(m.model)["A_W"][0] != 0)


def test_edges_refuse_budgets_and_outputs_they_cannot_serve(tmp_path):
    model = _mlp()
    with pytest.raises(OnnxPruneError, match="--ratio, --pattern or --params-target"):
        onnxprune.prune(model, mode="edges", macs_target=0.5, input_shapes={"x": [1, 40]})
    with pytest.raises(OnnxPruneError, match="cannot be met in edge mode.*leaving x0"):
        onnxprune.prune(model, mode="edges", params_target=0.001, input_shapes={"x": [1, 40]})
    with pytest.raises(OnnxPruneError, match="needs calibration"):
        onnxprune.prune(model, mode="edges", criterion="relief", input_shapes={"x": [1, 40]})
    from click.testing import CliRunner

    from onnxprune.cli import main

    path = os.path.join(ROOT, "resnet_mnist.onnx")
    res = CliRunner().invoke(main, ["prune", path, "-o", str(tmp_path / "e.onnx"), "--mode", "edges",
                                    "--ratio", "0.3", "--no-validate"])
    assert res.exit_code == 0, res.output
    import re

    assert re.search(r"weights zeroed \(sparsity 0\.(29|30)\d", res.output), res.output
    out = onnx.load(str(tmp_path / "e.onnx"))
    onnx.checker.check_model(out, full_check=True)


def test_a_layer_whose_outputs_read_few_weights_stays_dense():
    g = Graph(seed=6)
    a = g.add("Relu", [g.gemm("x", 8, 40, name="narrow")])  # each output reads 8 weights
    model = g.build({"x": ["N", 8]}, [g.gemm(a, 40, 4, name="wide")])
    r = onnxprune.prune(model, mode="edges", ratio=0.5, input_shapes={"x": [1, 8]})
    w = _weights(r.model)
    assert np.count_nonzero(w["narrow_W"] == 0) == 0 and np.count_nonzero(w["wide_W"] == 0) == 80
    assert any("stay dense" in n and "narrow" in n for n in r.report.notes)


def test_channels_then_edges_in_one_prune():
    path = os.path.join(ROOT, "resnet_mnist.onnx")
    d = np.load(os.path.join(ROOT, "resnet_mnist_data.npz"))
    calib = {"input": d["input"][:96]}
    r = onnxprune.prune(path, macs_target=0.6, calib=calib, edge_ratio=0.5)
    assert r.report.macs["after"] <= 0.6 * r.report.macs["before"] * 1.01  # channels went
    e = r.report.edges
    assert 0.3 < e["sparsity"] <= 0.5 and e["zeroed"] > 0  # then half of each big layer's weights
    onnx.checker.check_model(r.model, full_check=True)
    # the zeros are in the channel-pruned weights: same shapes as a channels-only prune
    alone = onnxprune.prune(path, macs_target=0.6, calib=calib)
    shapes = {t.name: tuple(t.dims) for t in alone.model.graph.initializer}
    assert {t.name: tuple(t.dims) for t in r.model.graph.initializer} == shapes
    with pytest.raises(OnnxPruneError, match="masked-output shows channels only"):
        onnxprune.prune(path, macs_target=0.6, edge_ratio=0.5, masked_output="/tmp/never.onnx")


def _deep(seed=23):
    """Three layers of 48 with Relu: the last two read inputs an earlier
    layer's zeros have changed."""
    g = Graph(seed=seed)
    a = g.add("Relu", [g.gemm("x", 40, 48, name="A")])
    b = g.add("Relu", [g.gemm(a, 48, 48, name="B")])
    c = g.add("Relu", [g.gemm(b, 48, 48, name="C")])
    return g.build({"x": ["N", 40]}, [g.gemm(c, 48, 6, name="D")])


def test_the_sequential_update_fits_each_layer_to_the_original_from_the_pruned_inputs():
    model, calib = _deep(), _calib(600)
    (y0,) = run(model, calib)
    err = {}
    for seq in (False, True):
        r = onnxprune.prune(model, mode="edges", ratio=0.7, calib=calib, sequential=seq)
        (y,) = run(r.model, calib)
        err[seq] = float(np.mean((y - y0) ** 2) / np.mean(y0 ** 2))
        assert r.report.edges["sparsity"] == pytest.approx(0.7, abs=0.01)
        s = r.report.edges["sequential"]
        assert (s is not None) == seq
    assert s["stages"] == 4 and s["refitted"] == 4 and s["runs"] > 0
    assert err[True] < 0.8 * err[False], err


def test_the_sequential_update_with_nothing_upstream_changed_is_the_one_shot_update():
    """With the pruned inputs equal to the original's (the first layer), the
    refit is the one-shot least-squares update."""
    from onnxprune.refit.edges import _update

    rng = np.random.default_rng(8)
    x = rng.standard_normal((500, 12))
    w = rng.standard_normal((12, 5))
    p = x.T @ x / len(x)
    mask = _mask(np.abs(w), 0.5, None)
    one = _update(w, mask, p)
    np.testing.assert_allclose(_update(w, mask, p, p.copy()), one, rtol=1e-9, atol=1e-12)
    assert np.all(one[mask] == 0)
    # an input the pruned model scales by 2: the refit halves the kept weights' share
    q = p / 2.0
    p2 = p / 4.0  # x_p = x / 2
    half = _update(w, mask, p2, q)
    full = _update(w, np.zeros_like(mask), p2, q)
    np.testing.assert_allclose(full, 2 * w, rtol=1e-2, atol=1e-2)
    assert np.all(half[mask] == 0)


def test_a_params_target_leaves_at_most_that_share_of_the_parameters_nonzero():
    model = _mlp()
    total = sum(w.size for w in _weights(model).values())
    for target in (0.6, 0.35):
        r = onnxprune.prune(model, mode="edges", params_target=target, input_shapes={"x": [1, 40]})
        nonzero = sum(np.count_nonzero(w) for w in _weights(r.model).values())
        assert nonzero <= target * total
        assert nonzero >= target * total - 0.02 * total  # not much more than asked
        assert r.report.params["after"] == nonzero and r.report.target["measure"] == "params"
