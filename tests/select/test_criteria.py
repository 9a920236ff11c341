"""Criteria: each data criterion and fpgm ranks a planted channel where
it should; member normalisation and group reduction do what importance.py says;
data criteria need calibration and fall back to l2 where no statistics exist.

Model: x -> Conv A (3->6, 3x3, bias) -> [Relu r] -> Conv B (6->4, 1x1) -> y.
A's output channels are the one prunable group (B's outputs reach the graph output).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune.calibration.run import calibrate
from onnxprune.calibration.statistics import Calibration
from onnxprune.core.errors import OnnxPruneError
from onnxprune.select.importance import DATA_CRITERIA, calibration_requests, score
from tests.helpers.graphs import Graph

C, CIN, HW = 6, 3, 6


def weights(seed: int = 0):
    """A's filters all of unit norm (so no channel stands out by chance), small biases."""
    rng = np.random.default_rng(seed)
    wa = rng.standard_normal((C, CIN, 3, 3))
    wa /= np.sqrt((wa ** 2).sum(axis=(1, 2, 3), keepdims=True))
    ba = rng.standard_normal(C) * 0.05
    wb = rng.standard_normal((4, C, 1, 1)) * 0.5
    bb = rng.standard_normal(4) * 0.1
    return wa, ba, wb, bb


def build(wa, ba, wb, bb, relu: bool = True) -> onnx.ModelProto:
    g = Graph()
    a = g.add("Conv", ["x", g.init("A_W", wa), g.init("A_B", ba)], name="A", pads=[1, 1, 1, 1])
    r = g.add("Relu", [a], name="r") if relu else a
    y = g.add("Conv", [r, g.init("B_W", wb), g.init("B_B", bb)], name="B")
    return g.build({"x": ["N", CIN, HW, HW]}, [y])


def data(n: int = 24, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, CIN, HW, HW)).astype(np.float32)


def scores_of(model, criterion: str, calibrated: bool = True, **kw) -> np.ndarray:
    groups = onnxprune.analyze(model)
    assert len(groups.prunable) == 1
    cal = calibrate(model, {"x": data()}, calibration_requests(groups)) if calibrated else None
    return score(groups, criterion, calibration=cal, **kw)[groups.prunable[0].id]


def lowest(s: np.ndarray) -> int:
    order = np.argsort(s)
    assert s[order[0]] < s[order[1]], f"no unique lowest score: {s}"
    return int(order[0])


def highest(s: np.ndarray) -> int:
    order = np.argsort(s)
    assert s[order[-1]] > s[order[-2]], f"no unique highest score: {s}"
    return int(order[-1])


def lowest_and_highest(s: np.ndarray) -> tuple[int, int]:
    return lowest(s), highest(s)


# ------------------------------------------------------------------ data criteria

@pytest.mark.parametrize("criterion", ["mean_abs", "act_l2"])
def test_dead_channel_scores_lowest_and_scaled_channel_highest(criterion):
    wa, ba, wb, bb = weights()
    wa[1] *= 0
    ba[1] = 0
    wa[4] *= 10
    ba[4] *= 10
    s = scores_of(build(wa, ba, wb, bb), criterion)
    assert lowest_and_highest(s) == (1, 4)
    assert s[1] == 0


@pytest.mark.parametrize("criterion", ["mean_abs", "act_l2"])
def test_activation_criteria_ignore_weight_magnitude_of_the_consumer(criterion):
    """mean_abs / act_l2 read only the activation: scaling B's column does not matter."""
    wa, ba, wb, bb = weights()
    base = scores_of(build(wa, ba, wb, bb), criterion, member_norm="none")
    wb[:, 2] *= 100
    np.testing.assert_allclose(scores_of(build(wa, ba, wb, bb), criterion, member_norm="none"),
                               base, rtol=1e-9)


def test_apoz_always_zero_channel_scores_lowest():
    wa, ba, wb, bb = weights()
    wa[2] = 0
    ba[2] = -1.0  # Relu(-1) = 0 for every sample and position
    s = scores_of(build(wa, ba, wb, bb), "apoz", member_norm="none")
    assert lowest(s) == 2
    assert s[2] == 0
    others = np.delete(s, 2)
    assert np.all((others > 0.2) & (others < 1.0))  # fraction of non-zeros, ~0.5 after Relu


def test_relief_channel_with_zero_consumer_column_scores_lowest_despite_large_activation():
    wa, ba, wb, bb = weights()
    wa[2] *= 10
    ba[2] *= 10
    wb[:, 2] = 0
    model = build(wa, ba, wb, bb)
    assert highest(scores_of(model, "mean_abs")) == 2  # the largest activation
    s = scores_of(model, "relief")
    assert lowest(s) == 2
    assert s[2] == 0


def test_relief_shares_sum_to_one_per_consumer_neuron_without_bias():
    """Relief is each channel's share of |w x| per neuron, summed over neurons:
    with no consumer bias the shares over channels add up to the number of neurons."""
    wa, ba, wb, bb = weights()
    model = build(wa, ba, wb, np.zeros_like(bb))
    s = scores_of(model, "relief", member_norm="none")
    assert s.sum() == pytest.approx(wb.shape[0], rel=1e-9)


def test_flap_constant_channel_scores_zero():
    wa, ba, wb, bb = weights()
    wa[3] = 0
    ba[3] = 0.8  # Relu(0.8) = 0.8 everywhere: zero variance
    s = scores_of(build(wa, ba, wb, bb), "flap", member_norm="none")
    assert lowest(s) == 3
    assert s[3] == pytest.approx(0.0, abs=1e-9 * s.max())
    assert np.all(np.delete(s, 3) > 1e-3 * s.max())


def test_flap_is_variance_times_squared_consumer_column():
    wa, ba, wb, bb = weights()
    model = build(wa, ba, wb, bb)
    groups = onnxprune.analyze(model)
    cal = calibrate(model, {"x": data()}, calibration_requests(groups))
    s = score(groups, "flap", calibration=cal, member_norm="none")[groups.prunable[0].id]
    st = cal.get("r", 1)
    expected = st.var * (wb.astype(np.float32).astype(np.float64) ** 2).sum(axis=(0, 2, 3))
    np.testing.assert_allclose(s, expected, rtol=1e-6)


# ------------------------------------------------------------------ fpgm

def test_fpgm_identical_filters_score_lowest():
    wa, ba, wb, bb = weights()
    wa[3] = wa[1]
    s = scores_of(build(wa, ba, wb, bb), "fpgm", calibrated=False)
    lowest = set(np.argsort(s)[:2].tolist())
    assert lowest == {1, 3}
    assert s[1] == pytest.approx(s[3], rel=1e-6)
    assert s[1] < np.delete(s, [1, 3]).min()


def test_fpgm_ignores_the_bias():
    """Two filters equal but their biases different: still the most redundant pair."""
    wa, ba, wb, bb = weights()
    wa[3] = wa[1]
    ba[3] = ba[1] + 5.0
    s = scores_of(build(wa, ba, wb, bb), "fpgm", calibrated=False)
    assert set(np.argsort(s)[:2].tolist()) == {1, 3}


# ------------------------------------------------------------------ normalisation and reduction

def l1_members(wa, ba, wb) -> list[np.ndarray]:
    """The three members of the group, as the l1 criterion sees them."""
    f32 = lambda a: np.asarray(a, dtype=np.float32).astype(np.float64)  # noqa: E731
    return [np.abs(f32(wa)).reshape(C, -1).sum(1), np.abs(f32(ba)),
            np.abs(f32(wb)).transpose(1, 0, 2, 3).reshape(C, -1).sum(1)]


@pytest.mark.parametrize("norm", ["none", "mean", "max"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "max"])
def test_l1_score_is_the_reduction_of_normalised_members(norm, reduction):
    wa, ba, wb, bb = weights()
    s = scores_of(build(wa, ba, wb, bb), "l1", calibrated=False, member_norm=norm,
                  reduction=reduction)
    members = l1_members(wa, ba, wb)
    if norm == "mean":
        members = [m / m.mean() for m in members]
    elif norm == "max":
        members = [m / m.max() for m in members]
    expected = {"mean": np.mean, "sum": np.sum, "max": np.max}[reduction](np.stack(members), axis=0)
    np.testing.assert_allclose(s, expected, rtol=1e-9)


def test_mean_normalisation_makes_a_member_scale_irrelevant():
    wa, ba, wb, bb = weights()
    before = {n: scores_of(build(wa, ba, wb, bb), "l2", calibrated=False, member_norm=n)
              for n in ("mean", "max", "none")}
    after = {n: scores_of(build(wa, ba, wb * 1000, bb), "l2", calibrated=False, member_norm=n)
             for n in ("mean", "max", "none")}
    np.testing.assert_allclose(after["mean"], before["mean"], rtol=1e-6)
    np.testing.assert_allclose(after["max"], before["max"], rtol=1e-6)
    assert not np.allclose(after["none"], before["none"], rtol=1e-3)


def two_consumers() -> onnx.ModelProto:
    """x -> A -> Relu r -> {B1, B2} (1x1) -> Add -> y: two linear consumers read r."""
    wa, ba, wb, bb = weights()
    rng = np.random.default_rng(7)
    g = Graph()
    a = g.add("Conv", ["x", g.init("A_W", wa), g.init("A_B", ba)], name="A", pads=[1, 1, 1, 1])
    r = g.add("Relu", [a], name="r")
    b1 = g.add("Conv", [r, g.init("B1_W", wb), g.init("B1_B", bb)], name="B1")
    b2 = g.add("Conv", [r, g.init("B2_W", rng.standard_normal(wb.shape) * 3)], name="B2")
    y = g.add("Add", [b1, b2], name="y")
    return g.build({"x": ["N", CIN, HW, HW]}, [y])


@pytest.mark.parametrize("criterion", ["mean_abs", "act_l2", "apoz"])
@pytest.mark.parametrize("norm", ["none", "mean", "max"])
def test_equal_members_sum_is_n_times_mean_and_max_is_mean(criterion, norm):
    model = two_consumers()
    s = {red: scores_of(model, criterion, member_norm=norm, reduction=red)
         for red in ("mean", "sum", "max")}
    np.testing.assert_allclose(s["sum"], 2 * s["mean"], rtol=1e-9)
    np.testing.assert_allclose(s["max"], s["mean"], rtol=1e-9)


def test_normalisation_mean_gives_unit_mean_and_max_gives_unit_max():
    model = two_consumers()
    assert scores_of(model, "mean_abs", member_norm="mean").mean() == pytest.approx(1.0)
    assert scores_of(model, "mean_abs", member_norm="max").max() == pytest.approx(1.0)
    raw = scores_of(model, "mean_abs", member_norm="none")
    np.testing.assert_allclose(scores_of(model, "mean_abs", member_norm="mean"), raw / raw.mean())


def test_none_normalisation_of_mean_abs_is_the_calibration_mean_abs():
    model = two_consumers()
    groups = onnxprune.analyze(model)
    cal = calibrate(model, {"x": data()}, calibration_requests(groups))
    s = score(groups, "mean_abs", calibration=cal, member_norm="none")[groups.prunable[0].id]
    np.testing.assert_allclose(s, cal.get("r", 1).mean_abs, rtol=1e-12)


def test_relief_with_two_consumers_sums_their_shares():
    model = two_consumers()
    mean = scores_of(model, "relief", member_norm="none", reduction="mean")
    total = scores_of(model, "relief", member_norm="none", reduction="sum")
    np.testing.assert_allclose(total, 2 * mean, rtol=1e-9)
    assert not np.allclose(mean, mean[0])  # the consumers differ: a real ranking


# ------------------------------------------------------------------ errors and fallback

@pytest.mark.parametrize("criterion", sorted(DATA_CRITERIA))
def test_data_criterion_without_calibration_is_an_error(criterion):
    wa, ba, wb, bb = weights()
    groups = onnxprune.analyze(build(wa, ba, wb, bb))
    with pytest.raises(OnnxPruneError, match="calibration"):
        score(groups, criterion)


@pytest.mark.parametrize("kw,word", [({"criterion": "nope"}, "criterion"),
                                     ({"reduction": "median"}, "reduction"),
                                     ({"member_norm": "l2"}, "normalisation")])
def test_unknown_criterion_reduction_or_normalisation_is_an_error(kw, word):
    wa, ba, wb, bb = weights()
    groups = onnxprune.analyze(build(wa, ba, wb, bb))
    with pytest.raises(OnnxPruneError, match=word):
        score(groups, **{"criterion": "l2", **kw})


def test_prune_api_data_criterion_without_calib_warns_random():
    wa, ba, wb, bb = weights()
    with pytest.warns(UserWarning, match="random"):
        result = onnxprune.prune(build(wa, ba, wb, bb), ratio=0.5, criterion="mean_abs",
                                 compensate="none")
    assert result.report.calibration["random"] is True


@pytest.mark.parametrize("criterion", sorted(DATA_CRITERIA))
def test_data_criterion_with_no_statistics_falls_back_to_l2(criterion):
    wa, ba, wb, bb = weights()
    groups = onnxprune.analyze(build(wa, ba, wb, bb))
    atom = groups.prunable[0].id
    np.testing.assert_allclose(score(groups, criterion, calibration=Calibration())[atom],
                               score(groups, "l2")[atom])


def two_groups() -> onnx.ModelProto:
    """x -> A (3->6) -> Relu r1 -> B (6->5, 3x3) -> Relu r2 -> D (5->4, 1x1) -> y."""
    wa, ba, _, _ = weights()
    rng = np.random.default_rng(11)
    g = Graph()
    a = g.add("Conv", ["x", g.init("A_W", wa), g.init("A_B", ba)], name="A", pads=[1, 1, 1, 1])
    r1 = g.add("Relu", [a], name="r1")
    b = g.add("Conv", [r1, g.init("B_W", rng.standard_normal((5, C, 3, 3)) * 0.3),
                       g.init("B_B", rng.standard_normal(5) * 0.1)], name="B", pads=[1, 1, 1, 1])
    r2 = g.add("Relu", [b], name="r2")
    y = g.add("Conv", [r2, g.init("D_W", rng.standard_normal((4, 5, 1, 1)))], name="D")
    return g.build({"x": ["N", CIN, HW, HW]}, [y])


@pytest.mark.parametrize("criterion", sorted(DATA_CRITERIA))
def test_only_the_group_without_statistics_falls_back_to_l2(criterion):
    model = two_groups()
    groups = onnxprune.analyze(model)
    by_first = {g.members[0]: g.id for g in groups.prunable}
    assert set(by_first) == {"A", "B"}
    requests = calibration_requests(groups)
    assert set(requests) == {("r1", 1), ("r2", 1)}
    cal = calibrate(model, {"x": data()}, {("r1", 1): False})  # statistics for A's group only
    s, l2 = score(groups, criterion, calibration=cal), score(groups, "l2")
    np.testing.assert_allclose(s[by_first["B"]], l2[by_first["B"]])
    assert not np.allclose(s[by_first["A"]], l2[by_first["A"]])
