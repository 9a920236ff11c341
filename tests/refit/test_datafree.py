"""Data-free compensation (datafree.py): the channel means a BatchNorm states,
through a Relu, match what data through the model measures when the data is
like the BatchNorm's own statistics; the rectified-Gaussian moments are
right; and bias compensation on them runs without any data."""
from __future__ import annotations

import numpy as np

import onnxprune
from onnxprune.calibration.run import calibrate
from onnxprune.ops.elementwise import rectified
from onnxprune.refit.datafree import moment_statistics
from onnxprune.select.importance import calibration_requests
from tests.helpers.graphs import Graph


def test_rectified_gaussian_moments_match_sampling():
    rng = np.random.default_rng(0)
    mean, std = np.array([-1.0, 0.0, 0.7, 2.5]), np.array([0.5, 1.0, 2.0, 0.3])
    y = np.maximum(rng.normal(mean, std, size=(400_000, 4)), 0)
    m, s = rectified(mean, std)
    np.testing.assert_allclose(m, y.mean(0), rtol=0.02, atol=0.003)
    np.testing.assert_allclose(s, y.std(0), rtol=0.02, atol=0.003)


def bn_model(rng):
    """x -> Conv(1x1) -> BN (running stats = the conv output's true stats) -> Relu -> Conv."""
    w = rng.standard_normal((6, 3, 1, 1)) * 0.7
    g = Graph(seed=1)
    a = g.add("Conv", ["x", g.init("w", w)], name="c1")
    # x ~ N(0, 1) per channel: conv output channel c ~ N(0, sum_k w[c,k]^2)
    var = (w.reshape(6, 3) ** 2).sum(1)
    scale, bias = rng.uniform(0.5, 2.0, 6), rng.normal(0, 1, 6)
    b = g.add("BatchNormalization", [a, g.init("s", scale), g.init("b", bias), g.init("m", np.zeros(6)),
                                     g.init("v", var)], name="bn", epsilon=1e-9)
    r = g.add("Relu", [b], name="act")
    y = g.conv(r, 6, 4, k=1, name="c2")
    return g.build({"x": ["N", 3, 8, 8]}, [y]), r


def test_batchnorm_statistics_through_a_relu_match_the_data():
    rng = np.random.default_rng(2)
    model, r = bn_model(rng)
    groups = onnxprune.analyze(model)
    requests = calibration_requests(groups)
    stated = moment_statistics(groups, requests)
    assert stated is not None and (r, 1) in stated.stats
    measured = calibrate(model, {"x": rng.standard_normal((64, 3, 8, 8)).astype(np.float32)}, requests)
    np.testing.assert_allclose(stated.get(r, 1).mean, measured.get(r, 1).mean, rtol=0.05, atol=0.02)


def test_bias_compensation_without_data_runs_on_the_stated_means():
    rng = np.random.default_rng(3)
    model, _ = bn_model(rng)
    result = onnxprune.prune(model, ratio=0.5, compensate="bias")
    assert any("data-free compensation" in n for n in result.report.notes)
    assert result.compensation.biases
