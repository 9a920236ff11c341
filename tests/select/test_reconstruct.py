"""The ``obs`` criterion (reconstruct.py): channels chosen by the error left
after least-squares compensation. Its costs are the true refit residuals, a
channel the others reproduce goes first at no cost, and on a model with such
a channel obs + lsq is exact where a per-channel score is not."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import onnxprune
from onnxprune.calibration.run import calibrate
from onnxprune.refit.compensate import compensate
from onnxprune.rewrite.engine import apply
from onnxprune.select.importance import calibration_requests, score
from onnxprune.select.reconstruct import RIDGE, obs_order
from tests.helpers.oracle import run
from tests.helpers.paths import MODELS
from tests.refit.test_compensation import LINCOMB, the_group


def _residual(x: np.ndarray, w: np.ndarray, removed, blocks) -> float:
    """Relative output error of the least-squares refit of the kept channels
    (with the same ridge the greedy uses), by brute force."""
    c = x.shape[1]
    cov = np.cov(x.T, bias=True)
    g = cov + RIDGE * np.trace(cov) / c * np.eye(c)
    gone = np.concatenate([blocks[u] for u in removed]) if len(removed) else np.zeros(0, int)
    kept = np.setdiff1d(np.arange(c), gone)
    # optimal refit: W_K' = W_K + G_KK^-1 G_KR W_R; error = W_R^T (G_RR - G_RK G_KK^-1 G_KR) W_R
    s = g[np.ix_(gone, gone)] - g[np.ix_(gone, kept)] @ np.linalg.solve(g[np.ix_(kept, kept)], g[np.ix_(kept, gone)])
    err = np.trace(w[gone].T @ s @ w[gone])
    return float(err / np.einsum("io,ij,jo->", w, g, w))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), units=st.integers(3, 9), width=st.sampled_from([1, 2]),
       outputs=st.integers(1, 5))
def test_greedy_costs_add_up_to_the_true_refit_error(seed, units, width, outputs):
    rng = np.random.default_rng(seed)
    c = units * width
    x = rng.standard_normal((200, c)) @ rng.standard_normal((c, c)) * 0.5 + rng.standard_normal(c)
    w = rng.standard_normal((c, outputs))
    blocks = np.arange(c).reshape(units, width)
    order, costs = obs_order([(w, np.cov(x.T, bias=True), blocks)], units)
    assert sorted(order) == sorted(set(order)) and len(order) == units - 1
    assert np.all(np.diff(costs) >= -1e-12)  # a prefix is always the cheapest so far
    # with one unit per step the cumulative cost is the refit error of the prefix
    # (costs are made non-decreasing, so they bound it from above)
    for k in range(1, len(order) + 1):
        assert _residual(x, w, order[:k], blocks) <= costs[:k].sum() * (1 + 1e-6) + 1e-9


def test_a_channel_the_others_reproduce_goes_first_at_no_cost():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 6))
    x[:, 4] = 2 * x[:, 1] - x[:, 3]
    w = rng.standard_normal((6, 3))
    order, costs = obs_order([(w, np.cov(x.T, bias=True), np.arange(6)[:, None])], 6)
    assert order[0] in (1, 3, 4)  # any one of the dependent three
    assert costs[0] < 0.05 * costs[1]  # the ridge leaves a trace


def test_costs_sum_over_consumers():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 5))
    cov = np.cov(x.T, bias=True)
    blocks = np.arange(5)[:, None]
    w1, w2 = rng.standard_normal((5, 2)), rng.standard_normal((5, 4))
    _, c1 = obs_order([(w1, cov, blocks)], 5, limit=1)
    _, c2 = obs_order([(w2, cov, blocks)], 5, limit=1)
    _, both = obs_order([(w1, cov, blocks), (w2, cov, blocks)], 5, limit=1)
    assert both[0] >= max(c1[0], c2[0]) - 1e-12


@pytest.mark.parametrize("kind", sorted(LINCOMB))
def test_obs_removes_the_reproducible_channel_and_lsq_makes_it_exact(kind):
    """Channel 3 = 2*c0 - c1: obs removes it (or one of its partners) first,
    and the lsq-compensated model computes what the original computes."""
    build, data = LINCOMB[kind]
    model = build(0.0)
    feeds = {"x": data(64, 1)}
    groups = onnxprune.analyze(model)
    cal = calibrate(model, feeds, calibration_requests(groups, gram=True))
    s = score(groups, "obs", calibration=cal)
    gid = the_group(groups).id
    assert s.orders[gid][0] in (0, 1, 3)
    keep = {gid: np.setdiff1d(np.arange(4), s.orders[gid][:1])}
    comp = compensate(groups, keep, cal, "lsq", ridge=1e-9)
    pruned = apply(groups, keep, compensation=comp)
    test = {"x": data(16, 7)}
    np.testing.assert_allclose(run(pruned, test)[0], run(model, test)[0], rtol=1e-3, atol=1e-3)


def test_obs_needs_calibration():
    build, data = LINCOMB["gemm"]
    groups = onnxprune.analyze(build(0.0))
    with pytest.raises(onnxprune.OnnxPruneError, match="needs calibration"):
        score(groups, "obs")


def test_obs_beats_a_per_channel_score_after_compensation_on_a_trained_model():
    """On the sample ResNet at half the MACs, choosing by the error after the
    refit keeps more accuracy than choosing by activation size, both with lsq."""
    import os

    root = MODELS
    d = np.load(os.path.join(root, "resnet_mnist_data.npz"))
    calib, val = {"input": d["input"][:192]}, {"input": d["input"][192:], "labels": d["labels"][192:]}
    acc = {}
    for crit in ("obs", "act_l2"):
        r = onnxprune.prune(os.path.join(root, "resnet_mnist.onnx"), criterion=crit, macs_target=0.5,
                            calib=calib, compensate="lsq", allocate="uniform", round_to=1,
                            sequential=False)
        (y,) = run(r.model, {"input": val["input"]})
        acc[crit] = float(np.mean(y.argmax(1) == val["labels"]))
    assert acc["obs"] > acc["act_l2"] + 0.02, acc
