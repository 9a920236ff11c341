"""Sequential reconstruction (sequential.py): consumers refitted stage by
stage, each to the original's output from the inputs the pruned model gives
it. The refit is the least-squares optimum (it undoes an invertible change
of its input exactly, and is compensate.lsq when nothing upstream changed),
stages never hold a consumer and one that feeds it, a sequential prune is
still exact (pruned == masked), and on the trained sample ResNet it leaves a
fraction of the one-shot lsq error."""
from __future__ import annotations

import os
import warnings

import numpy as np
import onnx

import onnxprune
from onnxprune.refit import sequential
from onnxprune.refit.compensate import _regress
from onnxprune.refit.sequential import CrossStats, _refit, _stages, levels_of
from tests.helpers.graphs import Graph
from tests.helpers.oracle import run
from tests.helpers.paths import MODELS

ROOT = MODELS


def _cross(xp: np.ndarray, xo: np.ndarray) -> CrossStats:
    cs = CrossStats(xp.shape[1])
    cs.update(xp, xo, 1)
    return cs


def test_cross_statistics_are_the_centred_covariances():
    rng = np.random.default_rng(0)
    xo = rng.standard_normal((500, 5)) + 3.0
    xp = xo @ rng.standard_normal((5, 5)) - 1.0
    cs = CrossStats(5)
    for part in np.array_split(np.arange(500), 3):  # batches add up
        cs.update(xp[part].astype(np.float32), xo[part].astype(np.float32), 1)
    full = np.cov(np.hstack([xp, xo]).T, bias=True)
    np.testing.assert_allclose(cs.cov_pp(), full[:5, :5], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cs.cov_po(), full[:5, 5:], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cs.mean_p, xp.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cs.mean_o, xo.mean(0), rtol=1e-5, atol=1e-5)


def test_cross_statistics_read_the_channel_axis_of_an_nchw_batch():
    rng = np.random.default_rng(1)
    xo = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    xp = 2 * xo + 1
    cs = CrossStats(3)
    cs.update(xp, xo, 1)
    rows = xo.transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64)
    np.testing.assert_allclose(cs.cov_po(), 2 * np.cov(rows, bias=True), rtol=1e-5)
    np.testing.assert_allclose(cs.mean_p, 2 * rows.mean(1) + 1, rtol=1e-5)


def test_the_refit_undoes_an_invertible_change_of_its_input(monkeypatch):
    """x_p = M x_o + c: the refit maps the pruned input to the original
    output exactly (W^T x_o = V^T x_p + delta), which plain W does not."""
    monkeypatch.setattr(sequential, "RIDGE", 1e-9)
    monkeypatch.setattr(sequential, "SHRINK", 0.0)
    rng = np.random.default_rng(2)
    xo = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6)) + rng.standard_normal(6)
    m = rng.standard_normal((6, 6)) + 3 * np.eye(6)
    xp = xo @ m.T + 0.5
    w = rng.standard_normal((6, 4))
    v, delta = _refit(w, _cross(xp, xo), np.arange(6))
    np.testing.assert_allclose(xp @ v + delta, xo @ w, rtol=1e-5, atol=1e-5)
    plain = xp @ w + (xo.mean(0) - xp.mean(0)) @ w
    assert np.mean((plain - xo @ w) ** 2) > 1e-2


def test_with_nothing_changed_upstream_the_refit_is_lsq_compensation():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 7)) @ rng.standard_normal((7, 7)) + 1.0
    w = rng.standard_normal((7, 3))
    kept, removed = np.array([0, 2, 3, 5]), np.array([1, 4, 6])
    v, delta = _refit(w, _cross(x, x), kept)
    cov = np.cov(x.T, bias=True)
    coef = _regress(cov, kept, removed, sequential.RIDGE + sequential.SHRINK * len(kept) / len(x))
    np.testing.assert_allclose(v, w[kept] + coef.T @ w[removed], rtol=1e-6, atol=1e-8)
    mean = x.mean(0)
    np.testing.assert_allclose(delta, (mean[removed] - coef @ mean[kept]) @ w[removed], rtol=1e-6, atol=1e-8)


def test_the_refit_is_the_least_squares_optimum():
    """No other weights for the kept inputs do better on the data they were fitted on."""
    rng = np.random.default_rng(4)
    xo = np.maximum(rng.standard_normal((600, 8)) @ rng.standard_normal((8, 8)), 0)
    xp = xo + 0.3 * rng.standard_normal(xo.shape)
    w = rng.standard_normal((8, 3))
    kept = np.array([0, 1, 3, 4, 6])
    v, delta = _refit(w, _cross(xp, xo), kept)

    def err(v_, d_):
        return float(np.mean((xp[:, kept] @ v_ + d_ - xo @ w) ** 2))

    best = err(v, delta)
    for _ in range(20):
        v2 = v + 0.01 * rng.standard_normal(v.shape)
        d2 = (xo @ w).mean(0) - xp[:, kept].mean(0) @ v2
        assert err(v2, d2) >= best * (1 - 1e-6)


def _chain_with_branches():
    g = Graph(seed=5)
    a = g.add("Relu", [g.gemm("x", 6, 8, name="A")])
    b = g.add("Relu", [g.gemm(a, 8, 8, name="B")])
    c = g.add("Relu", [g.gemm(a, 8, 8, name="C")])
    s = g.add("Add", [b, c])
    y = g.gemm(s, 8, 3, name="D")
    return g.build({"x": ["N", 6]}, [y])


def test_levels_count_refitted_consumers_on_the_longest_path():
    groups = onnxprune.analyze(_chain_with_branches())
    index = {n.name: i for i, n in enumerate(groups.view.nodes)}
    lv = levels_of(groups, {index[n] for n in "ABCD"})
    assert lv[index["A"]] == 0 and lv[index["B"]] == lv[index["C"]] == 1 and lv[index["D"]] == 2
    # only refitted consumers count: without B and C, D follows A directly
    lv = levels_of(groups, {index["A"], index["D"]})
    assert lv[index["D"]] == 1


def test_a_stage_limit_picks_whole_levels_evenly_spaced_ending_with_the_last():
    levels = [[i] for i in range(10)]
    picked = _stages(levels, 4)
    assert picked == [[1], [4], [7], [9]]
    assert _stages(levels, 1) == [[9]]
    assert _stages(levels, 12) == levels


def _resnet(n_calib: int = 192):
    d = np.load(os.path.join(ROOT, "resnet_mnist_data.npz"))
    return os.path.join(ROOT, "resnet_mnist.onnx"), {"input": d["input"][:n_calib]}, d["input"][n_calib:]


def test_a_sequential_prune_is_exact_and_reports_its_cost():
    path, calib, x = _resnet()
    r = onnxprune.prune(path, macs_target=0.5, calib=calib, sequential=True)
    seq = r.report.sequential
    assert seq["stages"] == seq["levels"] > 1 and seq["refitted"] >= seq["stages"]
    assert seq["reselected"] > 0 and seq["runs"] > 0 and seq["seconds"] > 0
    for gid, idx in r.plan.keep.items():  # a re-selection keeps the allocated count
        assert r.plan.kept[gid][0] == len(idx)
    (yp,), (ym,) = run(r.model, {"input": x[:16]}), run(r.masked(), {"input": x[:16]})
    np.testing.assert_allclose(yp, ym, rtol=1e-4, atol=1e-4 * float(np.abs(ym).max()))


def test_sequential_leaves_a_fraction_of_the_one_shot_error_on_the_trained_resnet():
    path, calib, x = _resnet()
    (y0,) = run(onnx.load(path), {"input": x})
    err = {}
    for seq in (False, True):
        r = onnxprune.prune(path, macs_target=0.5, calib=calib, sequential=seq)
        (y,) = run(r.model, {"input": x})
        err[seq] = float(np.mean((y - y0) ** 2) / np.mean((y0 - y0.mean()) ** 2))
    assert err[True] < 0.5 * err[False], err


def test_it_is_the_default_with_data_and_off_without():
    path, calib, _ = _resnet()
    r = onnxprune.prune(path, macs_target=0.6, calib=calib)
    assert r.report.sequential is not None and r.report.sequential["stages"] > 0
    off = onnxprune.prune(path, macs_target=0.6, calib=calib, sequential=False)
    assert off.report.sequential is None
    assert onnxprune.prune(path, macs_target=0.6).report.sequential is None
    # it refits lsq: with another compensation there is nothing to refit
    assert onnxprune.prune(path, macs_target=0.6, calib=calib, compensate="bias").report.sequential is None


def test_the_stage_limit_is_counted_in_macs_not_seconds():
    assert sequential.stage_limit(None, 100) == sequential.MAX_STAGES
    assert sequential.stage_limit(10**6, 100) == sequential.MAX_STAGES
    assert sequential.stage_limit(int(sequential.WORK // 300), 100) == 3
    assert sequential.stage_limit(int(sequential.WORK), 100) == 1


def test_a_small_budget_refits_fewer_levels_and_says_so(monkeypatch):
    path, calib, x = _resnet()
    macs = onnxprune.analyze(path).macs
    monkeypatch.setattr(sequential, "WORK", 3.5 * macs * len(calib["input"]))
    r = onnxprune.prune(path, macs_target=0.5, calib=calib)
    seq = r.report.sequential
    assert seq["stages"] == 3 < seq["levels"]
    assert any("3 of" in n and "levels" in n for n in r.report.notes)
    (yp,), (ym,) = run(r.model, {"input": x[:8]}), run(r.masked(), {"input": x[:8]})
    np.testing.assert_allclose(yp, ym, rtol=1e-4, atol=1e-4 * float(np.abs(ym).max()))


def test_data_that_cannot_be_read_twice_skips_it_with_a_note():
    path, calib, _ = _resnet()

    def once():
        for i in range(0, 192, 32):
            yield {"input": calib["input"][i:i + 32]}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = onnxprune.prune(path, macs_target=0.6, calib=once())
    assert r.report.sequential["stages"] == 0
    assert any("read again" in n for n in r.report.notes)


def test_the_cli_says_what_the_sequential_pass_cost(tmp_path):
    from click.testing import CliRunner

    from onnxprune.cli import main

    path, calib, _ = _resnet()
    np.savez(tmp_path / "calib.npz", **calib)
    out = tmp_path / "p.onnx"
    res = CliRunner().invoke(main, ["prune", path, "-o", str(out), "--macs-target", "0.6",
                                    "--calib", str(tmp_path / "calib.npz"), "--no-validate"])
    assert res.exit_code == 0, res.output
    assert "sequential reconstruction:" in res.output and "stages" in res.output
    res = CliRunner().invoke(main, ["prune", path, "-o", str(out), "--macs-target", "0.6", "--no-sequential",
                                    "--calib", str(tmp_path / "calib.npz"), "--no-validate"])
    assert res.exit_code == 0 and "sequential reconstruction:" not in res.output


def test_every_consumer_of_a_stage_is_refitted():
    """B and C read A's channels (one stage), D reads their sum (the next):
    all three get new weights; A reads the untouched input and keeps its own."""
    model = _chain_with_branches()
    rng = np.random.default_rng(7)
    calib = {"x": rng.standard_normal((256, 6)).astype(np.float32)}
    r = onnxprune.prune(model, ratio=0.25, calib=calib, round_to=1, sequential=True)
    seq = r.report.sequential
    assert (seq["stages"], seq["refitted"]) == (2, 3), seq
    names = {r.groups.view.nodes[i].name for i, _ in r.compensation.weights}
    assert names == {"B", "C", "D"}, names


def test_a_prune_without_data_says_that_data_would_do_better():
    path, _, _ = _resnet()
    r = onnxprune.prune(path, macs_target=0.6)
    assert any(n.startswith("pruned without data") and "--calib" in n for n in r.report.notes)
    path, calib, _ = _resnet()
    r = onnxprune.prune(path, macs_target=0.6, calib=calib)
    assert not any(n.startswith("pruned without data") for n in r.report.notes)


def test_a_group_whose_reader_cannot_be_refitted_is_not_chosen_again():
    """B has too few calibration rows for a refit of its 12 kept inputs: it
    keeps the compensation fitted to the first selection, so A's channels
    must stay that selection (a new one would pair with stale weights)."""
    g = Graph(seed=8)
    a = g.add("Relu", [g.gemm("x", 6, 16, name="A")])
    model = g.build({"x": ["N", 6]}, [g.gemm(a, 16, 3, name="B")])
    rng = np.random.default_rng(9)
    calib = {"x": rng.standard_normal((20, 6)).astype(np.float32)}
    on = onnxprune.prune(model, ratio=0.25, calib=calib, round_to=1, sequential=True)
    off = onnxprune.prune(model, ratio=0.25, calib=calib, round_to=1, sequential=False)
    assert on.report.sequential["reselected"] == 0 and on.report.sequential["refitted"] == 0
    for gid in off.plan.keep:
        np.testing.assert_array_equal(on.plan.keep[gid], off.plan.keep[gid])
    x = rng.standard_normal((8, 6)).astype(np.float32)
    np.testing.assert_allclose(run(on.model, {"x": x})[0], run(off.model, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_too_few_calibration_samples_skip_it_with_a_note():
    path, calib, _ = _resnet()
    r = onnxprune.prune(path, macs_target=0.6, calib={"input": calib["input"][:3]})
    assert r.report.sequential["stages"] == 0
    assert any("at least 4" in n and "got 3" in n for n in r.report.notes)


def test_few_rows_per_weight_keep_the_refit_near_its_start_and_many_rows_do_not():
    rng = np.random.default_rng(11)
    w, kept = rng.standard_normal((8, 3)), np.array([0, 2, 3, 5, 6])
    start = w + 0.5 * rng.standard_normal(w.shape)  # the one-shot fit the refit starts from

    def fits(rows):
        xo = rng.standard_normal((rows, 8)) @ rng.standard_normal((8, 8))
        xp = xo + 0.3 * rng.standard_normal(xo.shape)
        cs = _cross(xp, xo)
        shrunk = _refit(w, cs, kept, start)[0]
        sequential.SHRINK, saved = 0.0, sequential.SHRINK
        try:
            plain = _refit(w, cs, kept, start)[0]
        finally:
            sequential.SHRINK = saved
        return shrunk, plain

    shrunk, plain = fits(12)  # 2.4 rows per kept channel
    assert np.linalg.norm(shrunk - start[kept]) < 0.7 * np.linalg.norm(plain - start[kept])
    shrunk, plain = fits(20000)
    np.testing.assert_allclose(shrunk, plain, rtol=2e-2, atol=1e-2)


def test_a_refit_that_may_not_move_keeps_the_one_shot_compensation(monkeypatch):
    """With an infinite shrinkage the sequential pass must return exactly
    the weights the one-shot lsq fit gave (it starts from them), not the
    uncompensated ones."""
    path, calib, _ = _resnet()
    kw = dict(macs_target=0.6, calib={"input": calib["input"][:64]}, allocate="uniform", criterion="l2")
    off = onnxprune.prune(path, sequential=False, **kw)
    monkeypatch.setattr(sequential, "SHRINK", 1e12)
    on = onnxprune.prune(path, sequential=True, **kw)
    assert on.report.sequential["refitted"] > 0
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in off.model.graph.initializer if len(t.dims) > 1}
    for t in on.model.graph.initializer:
        if t.name in weights:  # the kept weights; biases are refitted to the pruned model's means
            np.testing.assert_allclose(onnx.numpy_helper.to_array(t), weights[t.name], rtol=1e-4, atol=1e-6)
