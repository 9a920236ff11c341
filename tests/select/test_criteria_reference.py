"""Every criterion against a small numpy reference computation.

Model: x -> Conv A (3->6, 3x3, bias) -> BatchNorm -> Relu -> Conv B (6->4, 3x3, bias) -> y.
The one prunable group is A's six output channels: members A's filters (out),
A's bias (out), the BatchNorm's four vectors (scale + params) and B's input
columns (in). Scores are compared with ``member_norm="none"`` and
``reduction="sum"`` so each reference is a plain formula; the default
normalisation is checked once at the end.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxprune
from onnxprune.calibration.run import calibrate
from onnxprune.select.importance import calibration_requests, score
from tests.helpers.graphs import Graph

RNG = np.random.default_rng(7)
WA = RNG.standard_normal((6, 3, 3, 3)).astype(np.float32)
BA = RNG.standard_normal(6).astype(np.float32) * 0.1
GAMMA = RNG.uniform(0.2, 2.0, 6).astype(np.float32)
BETA = RNG.standard_normal(6).astype(np.float32) * 0.1
MEAN = RNG.standard_normal(6).astype(np.float32) * 0.1
VAR = RNG.uniform(0.5, 1.5, 6).astype(np.float32)
WB = RNG.standard_normal((4, 6, 3, 3)).astype(np.float32)
BB = RNG.standard_normal(4).astype(np.float32)
X = RNG.standard_normal((16, 3, 5, 5)).astype(np.float32)


def model() -> onnx.ModelProto:
    g = Graph()
    a = g.add("Conv", ["x", g.init("WA", WA), g.init("BA", BA)], name="A", pads=[1, 1, 1, 1])
    b = g.add("BatchNormalization", [a, g.init("G", GAMMA), g.init("Be", BETA), g.init("M", MEAN),
                                     g.init("V", VAR)], name="bn")
    r = g.add("Relu", [b], name="relu", outputs=["act"])
    y = g.add("Conv", [r, g.init("WB", WB), g.init("BB", BB)], name="B", pads=[1, 1, 1, 1])
    return g.build({"x": ["N", 3, 5, 5]}, [y])


def activations() -> np.ndarray:
    """The Relu output B reads, (samples, 6, 5, 5), from onnxruntime."""
    m = model()
    m.graph.output.append(onnx.helper.make_tensor_value_info("act", onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["act"], {"x": X})[0].astype(np.float64)


def engine(criterion: str, **kw) -> np.ndarray:
    m = model()
    groups = onnxprune.analyze(m)
    (group,) = groups.prunable
    cal = calibrate(m, {"x": X}, calibration_requests(groups))
    kw.setdefault("member_norm", "none")
    kw.setdefault("reduction", "sum")
    return score(groups, criterion, calibration=cal, **kw)[group.id]


def rows(x: np.ndarray) -> np.ndarray:
    """Per channel of axis 1, every value: (channels, rest)."""
    return np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)


def weight_members():
    """A's filters, A's bias, BN's four vectors, B's input columns: (channels, rest) each."""
    wa = WA.reshape(6, -1).astype(np.float64)
    vectors = [v.astype(np.float64)[:, None] for v in (BA, GAMMA, BETA, MEAN, VAR)]
    wb = np.moveaxis(WB, 1, 0).reshape(6, -1).astype(np.float64)
    return [wa] + vectors + [wb]


def test_l1_is_the_sum_of_absolute_weights_over_members():
    ref = sum(np.abs(m).sum(axis=1) for m in weight_members())
    np.testing.assert_allclose(engine("l1"), ref, rtol=1e-6)


def test_l2_is_the_sum_of_member_norms():
    ref = sum(np.sqrt((m ** 2).sum(axis=1)) for m in weight_members())
    np.testing.assert_allclose(engine("l2"), ref, rtol=1e-6)


def test_bn_is_the_absolute_batchnorm_scale():
    np.testing.assert_allclose(engine("bn"), np.abs(GAMMA), rtol=1e-6)


def test_fpgm_is_the_summed_distance_to_the_other_filters():
    wa = WA.reshape(6, -1).astype(np.float64)
    ref = np.array([sum(np.linalg.norm(wa[i] - wa[j]) for j in range(6)) for i in range(6)])
    np.testing.assert_allclose(engine("fpgm"), ref, rtol=1e-6)


def test_mean_abs_act_l2_and_apoz_are_statistics_of_the_consumed_activation():
    act = rows(activations())
    np.testing.assert_allclose(engine("mean_abs"), np.abs(act).mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(engine("act_l2"), np.sqrt((act ** 2).mean(axis=1)), rtol=1e-5)
    np.testing.assert_allclose(engine("apoz"), 1 - (act == 0).mean(axis=1), rtol=1e-6)


def test_relief_is_each_channels_share_of_every_consumer_neurons_contribution_bias_included():
    act = rows(activations())
    w = np.abs(np.moveaxis(WB, 1, 0).reshape(6, 4, -1).astype(np.float64)).sum(axis=2)  # (in, out)
    contrib = w * np.abs(act).mean(axis=1)[:, None]
    total = contrib.sum(axis=0) + np.abs(BB.astype(np.float64))
    np.testing.assert_allclose(engine("relief"), (contrib / total).sum(axis=1), rtol=1e-5)


def test_flap_is_activation_variance_times_the_squared_consumer_column():
    act = rows(activations())
    col = (np.moveaxis(WB, 1, 0).reshape(6, -1).astype(np.float64) ** 2).sum(axis=1)
    np.testing.assert_allclose(engine("flap"), act.var(axis=1) * col, rtol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "max"])
def test_default_mean_normalisation_then_reduction(reduction):
    members = [np.sqrt((m ** 2).sum(axis=1)) for m in weight_members()]
    stack = np.stack([m / m.mean() for m in members])
    ref = stack.mean(axis=0) if reduction == "mean" else stack.max(axis=0)
    np.testing.assert_allclose(engine("l2", member_norm="mean", reduction=reduction), ref, rtol=1e-6)
