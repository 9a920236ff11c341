"""Compensation (beside rewrite): ``bias`` is exact on a planted constant channel,
``lsq`` on a planted linear combination; lsq never does worse than bias on the
calibration data; the pruned == masked oracle holds with compensation on the
trained models; a bias is created where the consumer had none.
"""
from __future__ import annotations

import glob
import os

import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune.calibration.run import calibrate
from onnxprune.core.errors import OnnxPruneError
from onnxprune.refit.compensate import Compensation, compensate
from onnxprune.rewrite.engine import apply
from onnxprune.select.importance import calibration_requests
from tests.helpers.graphs import Graph
from tests.helpers.oracle import random_keep, run
from tests.helpers.paths import MODELS, ROOT

MODELS = MODELS
CIN, HW = 3, 6


def rng_(seed):
    return np.random.default_rng(seed)


def conv_data(n: int = 32, seed: int = 1) -> np.ndarray:
    return rng_(seed).standard_normal((n, CIN, HW, HW)).astype(np.float32)


def the_group(groups):
    assert len(groups.prunable) == 1, groups.prunable
    return groups.prunable[0]


def prune_with(model, data: dict, keep_idx, mode: str, **kw):
    """(groups, compensation, pruned, masked) for one keep-set of the single prunable group."""
    groups = onnxprune.analyze(model)
    cal = calibrate(model, data, calibration_requests(groups, gram=mode == "lsq"))
    keep = {the_group(groups).id: np.asarray(keep_idx, dtype=np.int64)}
    comp = compensate(groups, keep, cal, mode, **kw)
    return groups, comp, apply(groups, keep, compensation=comp), \
        apply(groups, keep, masked=True, compensation=comp)


def assert_same_output(a: onnx.ModelProto, b: onnx.ModelProto, feeds: dict, rtol: float):
    ya, yb = run(a, feeds)[0], run(b, feeds)[0]
    assert ya.shape == yb.shape
    np.testing.assert_allclose(ya, yb, rtol=rtol, atol=rtol * float(np.abs(yb).max()))


def mse(a: onnx.ModelProto, b: onnx.ModelProto, feeds: dict) -> float:
    return float(np.mean((run(a, feeds)[0].astype(np.float64) - run(b, feeds)[0]) ** 2))


# ------------------------------------------------------------------ planted constant channel

CONST = 2  # channel made constant: zero filter, positive bias, through Relu


def const_conv_model(consumer: str) -> onnx.ModelProto:
    """x -> Conv A (3->4, 3x3) with channel 2 constant -> Relu -> consumer."""
    r = rng_(0)
    wa = r.standard_normal((4, CIN, 3, 3)) * 0.4
    ba = r.standard_normal(4) * 0.1
    wa[CONST] = 0
    ba[CONST] = 0.7
    g = Graph()
    a = g.add("Conv", ["x", g.init("A_W", wa), g.init("A_B", ba)], name="A", pads=[1, 1, 1, 1])
    h = g.add("Relu", [a], name="h")
    if consumer in ("conv1x1", "conv1x1_nobias"):
        ins = [h, g.init("B_W", r.standard_normal((5, 4, 1, 1)))]
        if consumer == "conv1x1":
            ins.append(g.init("B_B", r.standard_normal(5)))
        y = g.add("Conv", ins, name="B")
    else:
        f = g.add("Flatten", [h], name="flat")
        k = 4 * HW * HW
        if consumer == "gemm":
            y = g.add("Gemm", [f, g.init("B_W", r.standard_normal((5, k)) * 0.1),
                               g.init("B_C", r.standard_normal(5))], name="B", transB=1)
        elif consumer == "gemm_noC":
            y = g.add("Gemm", [f, g.init("B_W", r.standard_normal((k, 5)) * 0.1)], name="B")
        elif consumer == "gemm_beta":
            y = g.add("Gemm", [f, g.init("B_W", r.standard_normal((k, 5)) * 0.1),
                               g.init("B_C", r.standard_normal(5))], name="B", beta=0.5)
        elif consumer == "matmul":
            y = g.add("MatMul", [f, g.init("B_W", r.standard_normal((k, 5)) * 0.1)], name="B")
        else:
            raise AssertionError(consumer)
    return g.build({"x": ["N", CIN, HW, HW]}, [y])


def const_dense_model(consumer: str, rank3: bool = False) -> onnx.ModelProto:
    """x (N,[T,]5) -> MatMul + Add b (5->4), channel 2 constant -> Relu -> consumer (4->3)."""
    r = rng_(2)
    w = r.standard_normal((5, 4))
    b = r.standard_normal(4) * 0.1
    w[:, CONST] = 0
    b[CONST] = 0.7
    g = Graph()
    m = g.add("MatMul", ["x", g.init("A_W", w)], name="A")
    a = g.add("Add", [m, g.init("A_B", b)], name="A_add")
    h = g.add("Relu", [a], name="h")
    if consumer == "matmul":
        y = g.add("MatMul", [h, g.init("B_W", r.standard_normal((4, 3)))], name="B")
    elif consumer == "gemm_noC":
        y = g.add("Gemm", [h, g.init("B_W", r.standard_normal((3, 4)))], name="B", transB=1)
    else:
        raise AssertionError(consumer)
    return g.build({"x": ["N", 7, 5] if rank3 else ["N", 5]}, [y])


def dense_data(rank3: bool, n: int = 32, seed: int = 1) -> np.ndarray:
    shape = (n, 7, 5) if rank3 else (n, 5)
    return rng_(seed).standard_normal(shape).astype(np.float32)


KEEP_NOT_CONST = [0, 1, 3]


@pytest.mark.parametrize("consumer", ["conv1x1", "gemm", "gemm_beta", "matmul",
                                      "conv1x1_nobias", "gemm_noC"])
def test_bias_compensation_is_exact_on_a_constant_channel(consumer):
    model = const_conv_model(consumer)
    groups, comp, pruned, masked = prune_with(model, {"x": conv_data()}, KEEP_NOT_CONST, "bias")
    assert comp.mode == "bias" and comp.biases and not comp.weights
    fresh = {"x": conv_data(8, seed=99)}  # exact on any input, not just the calibration set
    assert_same_output(pruned, model, fresh, rtol=1e-5)
    assert_same_output(masked, model, fresh, rtol=1e-5)
    onnx.checker.check_model(pruned, full_check=True)


def test_without_compensation_removing_the_constant_channel_changes_the_output():
    model = const_conv_model("conv1x1")
    _, comp, pruned, _ = prune_with(model, {"x": conv_data()}, KEEP_NOT_CONST, "none")
    assert not comp
    feeds = {"x": conv_data(8, seed=99)}
    assert mse(pruned, model, feeds) > 1e-3


def _node(model, name):
    return next(n for n in model.graph.node if n.name == name)


@pytest.mark.parametrize("consumer", ["conv1x1_nobias", "gemm_noC"])
def test_compensation_creates_the_missing_bias_input(consumer):
    model = const_conv_model(consumer)
    assert len(_node(model, "B").input) == 2
    _, _, pruned, masked = prune_with(model, {"x": conv_data()}, KEEP_NOT_CONST, "bias")
    for m in (pruned, masked):
        b = _node(m, "B")
        assert len(b.input) == 3 and b.input[2]
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
        assert inits[b.input[2]].shape == (5,)
        assert inits[b.input[2]].dtype == np.float32
    assert_same_output(pruned, model, {"x": conv_data(8, seed=5)}, rtol=1e-5)


@pytest.mark.parametrize("consumer,rank3", [("matmul", False), ("matmul", True), ("gemm_noC", False)],
                         ids=["matmul_rank2", "matmul_rank3", "gemm_noC"])
def test_dense_consumer_without_bias_gets_one_and_is_exact(consumer, rank3):
    model = const_dense_model(consumer, rank3)
    groups, comp, pruned, masked = prune_with(model, {"x": dense_data(rank3)}, KEEP_NOT_CONST, "bias")
    fresh = {"x": dense_data(rank3, 8, seed=42)}
    assert_same_output(pruned, model, fresh, rtol=1e-5)
    assert_same_output(masked, model, fresh, rtol=1e-5)
    onnx.checker.check_model(pruned, full_check=True)
    if consumer == "matmul":
        adds = [n for n in pruned.graph.node if n.op_type == "Add" and n.name != "A_add"]
        assert len(adds) == 1, [n.name for n in pruned.graph.node]
        # The Add now produces the MatMul's old output name; the graph output is unchanged.
        assert adds[0].output[0] == "B"
        assert [o.name for o in pruned.graph.output] == ["B"]
        assert _node(pruned, "B").output[0] in adds[0].input


def test_matmul_flatten_consumer_gets_an_add_node():
    model = const_conv_model("matmul")
    _, _, pruned, _ = prune_with(model, {"x": conv_data()}, KEEP_NOT_CONST, "bias")
    assert [n.op_type for n in pruned.graph.node].count("Add") == 1


# ------------------------------------------------------------------ planted linear combination

def lincomb_conv_model(offset: float) -> onnx.ModelProto:
    """x -> Conv A (3->4, 3x3) with filter3 = 2*f0 - f1, b3 = 2*b0 - b1 + offset -> Conv B 1x1."""
    r = rng_(3)
    wa = r.standard_normal((4, CIN, 3, 3)) * 0.4
    ba = r.standard_normal(4) * 0.3
    wa[3] = 2 * wa[0] - wa[1]
    ba[3] = 2 * ba[0] - ba[1] + offset
    g = Graph()
    a = g.add("Conv", ["x", g.init("A_W", wa), g.init("A_B", ba)], name="A", pads=[1, 1, 1, 1])
    y = g.add("Conv", [a, g.init("B_W", r.standard_normal((5, 4, 1, 1))),
                       g.init("B_B", r.standard_normal(5))], name="B")
    return g.build({"x": ["N", CIN, HW, HW]}, [y])


def lincomb_gemm_model(offset: float) -> onnx.ModelProto:
    """x (N,6) -> Gemm A (6->4) with column 3 = 2*c0 - c1 (+offset in C) -> Gemm B (4->3)."""
    r = rng_(4)
    wa = r.standard_normal((6, 4))
    ca = r.standard_normal(4) * 0.3
    wa[:, 3] = 2 * wa[:, 0] - wa[:, 1]
    ca[3] = 2 * ca[0] - ca[1] + offset
    g = Graph()
    a = g.add("Gemm", ["x", g.init("A_W", wa), g.init("A_C", ca)], name="A")
    y = g.add("Gemm", [a, g.init("B_W", r.standard_normal((4, 3))),
                       g.init("B_C", r.standard_normal(3))], name="B")
    return g.build({"x": ["N", 6]}, [y])


LINCOMB = {
    "conv": (lincomb_conv_model, lambda n, s: conv_data(n, s)),
    "gemm": (lincomb_gemm_model, lambda n, s: rng_(s).standard_normal((n, 6)).astype(np.float32)),
}


@pytest.mark.parametrize("offset", [0.0, 0.5], ids=["no_offset", "offset"])
@pytest.mark.parametrize("kind", sorted(LINCOMB))
def test_lsq_algebra_is_exact_on_a_linear_combination_with_a_small_ridge(kind, offset):
    build, make = LINCOMB[kind]
    model = build(offset)
    groups, comp, pruned, masked = prune_with(model, {"x": make(64, 1)}, [0, 1, 2], "lsq",
                                              ridge=1e-7)
    assert comp.mode == "lsq" and comp.weights and comp.biases
    fresh = {"x": make(8, 77)}
    assert_same_output(pruned, model, fresh, rtol=1e-4)
    assert_same_output(masked, model, fresh, rtol=1e-4)


@pytest.mark.parametrize("offset", [0.0, 0.5], ids=["no_offset", "offset"])
@pytest.mark.parametrize("kind", sorted(LINCOMB))
def test_lsq_is_exact_on_a_linear_combination(kind, offset):
    build, make = LINCOMB[kind]
    model = build(offset)
    _, _, pruned, _ = prune_with(model, {"x": make(64, 1)}, [0, 1, 2], "lsq")
    assert_same_output(pruned, model, {"x": make(8, 77)}, rtol=1e-4)


@pytest.mark.parametrize("kind", sorted(LINCOMB))
def test_lsq_recovers_most_of_a_linear_combination_with_the_default_ridge(kind):
    """Whatever the ridge, lsq is far closer than bias on the planted combination."""
    build, make = LINCOMB[kind]
    model = build(0.5)
    feeds = {"x": make(64, 1)}
    errors = {mode: mse(prune_with(model, feeds, [0, 1, 2], mode)[2], model, feeds)
              for mode in ("none", "bias", "lsq")}
    assert errors["lsq"] < 1e-3 * errors["bias"] < errors["none"], errors


def test_prune_api_with_lsq_gives_pruned_equal_to_masked():
    model = lincomb_gemm_model(0.5)
    x = LINCOMB["gemm"][1](64, 1)
    result = onnxprune.prune(model, ratio=0.25, criterion="l2", calib={"x": x}, compensate="lsq")
    assert result.report.compensate == "lsq" and result.report.calibration["samples"] == 64
    assert_same_output(result.model, result.masked(), {"x": x[:8]}, rtol=1e-4)


# ------------------------------------------------------------------ lsq <= bias <= none

def relu_model() -> onnx.ModelProto:
    """x -> Conv A (3->8, 3x3) -> Relu -> Conv B (8->5, 1x1): random weights."""
    g = Graph(seed=21)
    a = g.conv("x", CIN, 8, name="A")
    h = g.add("Relu", [a], name="h")
    y = g.conv(h, 8, 5, k=1, name="B")
    return g.build({"x": ["N", CIN, HW, HW]}, [y])


def test_lsq_never_does_worse_than_bias_on_the_calibration_data():
    model = relu_model()
    feeds = {"x": conv_data(32)}
    groups = onnxprune.analyze(model)
    atom = the_group(groups).id
    cal = calibrate(model, feeds, calibration_requests(groups, gram=True))
    rng = np.random.default_rng(0)
    checked = 0
    for k in [1, 2, 3, 4, 5, 6, 7, 4, 2, 6]:
        keep = {atom: np.sort(rng.choice(8, k, replace=False))}
        err = {}
        for mode in ("none", "bias", "lsq"):
            comp = compensate(groups, keep, cal, mode)
            err[mode] = mse(apply(groups, keep, compensation=comp), model, feeds)
        assert err["lsq"] <= err["bias"] * (1 + 1e-4) + 1e-10, (keep, err)
        assert err["bias"] <= err["none"] * (1 + 1e-4) + 1e-10, (keep, err)
        checked += err["lsq"] < err["bias"] * 0.999
    assert checked >= 5  # lsq is usually strictly better, not just equal


def test_bias_beats_none_on_a_constant_channel():
    model = const_conv_model("conv1x1")
    feeds = {"x": conv_data()}
    err = {mode: mse(prune_with(model, feeds, KEEP_NOT_CONST, mode)[2], model, feeds)
           for mode in ("none", "bias")}
    assert err["bias"] < 1e-10 < err["none"], err


# ------------------------------------------------------------------ housekeeping

def test_compensate_none_and_no_calibration_change_nothing():
    model = relu_model()
    groups = onnxprune.analyze(model)
    keep = {the_group(groups).id: np.arange(4)}
    cal = calibrate(model, {"x": conv_data(8)}, calibration_requests(groups))
    for comp in (compensate(groups, keep, cal, "none"), compensate(groups, keep, None, "bias")):
        assert isinstance(comp, Compensation) and not comp
        assert apply(groups, keep, compensation=comp).SerializeToString() == \
            apply(groups, keep).SerializeToString()


def test_unknown_compensation_mode_is_an_error():
    model = relu_model()
    groups = onnxprune.analyze(model)
    with pytest.raises(OnnxPruneError, match="compensation"):
        compensate(groups, {the_group(groups).id: np.arange(4)}, None, "ridge")


def test_lsq_without_gram_statistics_falls_back_to_bias_with_a_reason():
    model = relu_model()
    groups = onnxprune.analyze(model)
    keep = {the_group(groups).id: np.arange(4)}
    cal = calibrate(model, {"x": conv_data(8)}, calibration_requests(groups, gram=False))
    comp = compensate(groups, keep, cal, "lsq")
    bias = compensate(groups, keep, cal, "bias")
    assert not comp.weights and comp.biases.keys() == bias.biases.keys()
    for k in comp.biases:
        np.testing.assert_allclose(comp.biases[k], bias.biases[k])
    assert any("bias compensation only" in s for s in comp.skipped)


def test_keeping_every_channel_compensates_nothing():
    model = relu_model()
    groups = onnxprune.analyze(model)
    keep = {the_group(groups).id: np.arange(8)}
    cal = calibrate(model, {"x": conv_data(8)}, calibration_requests(groups, gram=True))
    for mode in ("bias", "lsq"):
        assert not compensate(groups, keep, cal, mode)


# ------------------------------------------------------------------ the oracle on trained models

ZOO = sorted(glob.glob(os.path.join(MODELS, "*_mnist.onnx")))


@pytest.mark.parametrize("path", ZOO, ids=[os.path.basename(p)[:-5] for p in ZOO])
def test_pruned_equals_masked_with_compensation_on_trained_models(path):
    assert ZOO, "no sample models found"
    data = np.load(path[:-5] + "_data.npz")["input"]
    groups = onnxprune.analyze(path)
    cal = calibrate(groups.model, {"input": data[:32]}, calibration_requests(groups, gram=True))
    assert cal.samples == 32
    feeds = {"input": data[32:40]}
    rng = np.random.default_rng(0)
    for mode in ("bias", "lsq"):
        for _ in range(4):
            keep = random_keep(groups, rng)
            comp = compensate(groups, keep, cal, mode)
            assert comp.biases, f"{mode}: nothing compensated ({comp.skipped[:3]})"
            assert bool(comp.weights) == (mode == "lsq")
            pruned = apply(groups, keep, compensation=comp)
            masked = apply(groups, keep, masked=True, compensation=comp)
            onnx.checker.check_model(pruned, full_check=True)
            yp, ym = run(pruned, feeds), run(masked, feeds)
            for a, b in zip(yp, ym):
                assert a.shape == b.shape
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("name,floor", [("densenet_mnist", 0.85), ("mobilenet_mnist", 0.75)])
def test_lsq_keeps_accuracy_at_half_the_macs_on_trained_models(name, floor):
    """Regression guard on real data: lsq must not amplify near-dependent kept
    channels (a near-singular Gram matrix once sent densenet to chance)."""
    import os

    from onnxprune.calibration.run import calibrate
    from onnxprune.refit.compensate import compensate
    from onnxprune.rewrite.engine import apply
    from onnxprune.select.importance import calibration_requests, score
    from onnxprune.select.planner import plan_macs
    from tests.helpers.oracle import run

    root = ROOT
    data = np.load(os.path.join(root, "models", f"{name}_data.npz"))
    x, y = data["input"], data["labels"]
    groups = onnxprune.analyze(os.path.join(root, "models", f"{name}.onnx"))
    cal = calibrate(groups.model, {"input": x[:128]}, calibration_requests(groups, gram=True))
    plan = plan_macs(groups, score(groups, "act_l2", calibration=cal), 0.5)
    pruned = apply(groups, plan.keep, compensation=compensate(groups, plan.keep, cal, "lsq"))
    plain = apply(groups, plan.keep)
    accuracy = float(np.mean(run(pruned, {"input": x[128:]})[0].argmax(1) == y[128:]))
    without = float(np.mean(run(plain, {"input": x[128:]})[0].argmax(1) == y[128:]))
    assert accuracy >= floor, accuracy
    assert accuracy >= without + 0.3, (accuracy, without)  # compensation is what keeps it
    from onnxprune.analysis.costs import count_macs
    from onnxprune.core.graph import GraphView
    from onnxprune.core.shapes import shapes

    macs = count_macs(GraphView(pruned, shapes(pruned).dims)) / groups.macs
    assert 0.45 <= macs <= 0.55, macs


# -- a weight several layers share --------------------------------------------
def _tied_stack(layers: int = 2, hidden: int = 6, inner: int = 10) -> onnx.ModelProto:
    """A layer applied ``layers`` times (ALBERT-style): every down projection
    reads the same weight ``w2``, each through its own Add of the shared b2."""
    g = Graph()
    w1, b1 = g.rand("w1", (hidden, inner)), g.rand("b1", (inner,))
    w2, b2 = g.rand("w2", (inner, hidden)), g.rand("b2", (hidden,))
    x = "x"
    for i in range(layers):
        h = g.add("Relu", [g.add("Add", [g.add("MatMul", [x, w1], name=f"up{i}"), b1])], name=f"act{i}")
        x = g.add("Add", [x, g.add("Add", [g.add("MatMul", [h, w2], name=f"down{i}"), b2])], name=f"res{i}")
    return g.build({"x": ["N", hidden]}, [x])


def test_a_shared_weight_gets_one_refit_from_all_its_readers_statistics():
    """Each reader's activations have their own mean and correlations: the one
    weight solves the least squares pooled over every reader's rows (about
    each reader's own mean), and each reader gets its own offset."""
    from onnxprune.calibration.statistics import Calibration, ChannelStats

    model = _tied_stack()
    groups = onnxprune.analyze(model)
    gid = next(g.id for g in groups.prunable if "down0" in g.members)
    keep = {gid: np.arange(0, 10, 2)}
    rng = rng_(3)
    stats, xs = {}, {}
    readers = [(use, node, form) for use, node, form in groups.linear_readers([gid]) if form is not None]
    assert sorted(n.name for _, n, _ in readers) == ["down0", "down1"]
    for k, (use, node, _) in enumerate(readers):
        mix = rng.standard_normal((10, 10)) * (1 + 2 * k)
        x = rng.standard_normal((200 + 100 * k, 10)) @ mix + 5 * k
        st = ChannelStats(10, gram=True)
        st.update(x.astype(np.float32), 1)
        stats[groups.activation(use)] = st
        xs[node.name] = x.astype(np.float32).astype(np.float64)
    comp = compensate(groups, keep, Calibration(stats=stats, samples=8), mode="lsq", ridge=0.0)
    assert not comp.skipped, comp.skipped
    kept, removed = keep[gid], np.setdiff1d(np.arange(10), keep[gid])
    centred = [x - x.mean(axis=0) for x in xs.values()]
    cov = sum(c.T @ c for c in centred) / sum(len(c) for c in centred)
    coef = np.linalg.solve(cov[np.ix_(kept, kept)], cov[np.ix_(kept, removed)]).T  # (R, K)
    w2 = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w2")).astype(np.float64)
    want = w2.copy()
    want[kept] += coef.T @ w2[removed]
    written = [v for (i, _), v in comp.weights.items()]
    assert len(written) == 2 and written[0] is written[1]
    np.testing.assert_allclose(written[0][kept], want[kept], rtol=1e-4, atol=1e-4)
    by_name = {groups.view.nodes[i].name: d for i, d in comp.biases.items()}
    for name, x in xs.items():
        mean = x.mean(axis=0)
        np.testing.assert_allclose(by_name[name], (mean[removed] - coef @ mean[kept]) @ w2[removed],
                                   rtol=1e-4, atol=1e-4)


def test_a_tied_layer_is_compensated_and_the_written_model_is_exact():
    model = _tied_stack(layers=3, hidden=8, inner=24)
    rng = rng_(4)
    base = rng.standard_normal((64, 8)).astype(np.float32)
    calib = [{"x": (base[i * 8:(i + 1) * 8] @ rng.standard_normal((8, 8)).astype(np.float32))}
             for i in range(8)]
    kw = dict(ratio=0.5, calib=calib, criterion="act_l2", sequential=False)
    plain = onnxprune.prune(model, compensate="none", **kw)
    fitted = onnxprune.prune(model, compensate="lsq", **kw)
    assert not any("shared" in s for s in fitted.compensation.skipped)
    assert fitted.compensation.weights
    names = [t.name for t in fitted.model.graph.initializer]
    assert "w2" in names and not any("w2" in n and n != "w2" for n in names)  # one w2, not one per layer

    def error(result):
        return sum(float(np.sum((run(model, f)[0] - run(result.model, f)[0]) ** 2)) for f in calib)
    assert error(fitted) < 0.8 * error(plain)


def test_a_model_pruned_twice_gets_new_names_for_the_bias_adds_it_gains():
    """Compensation adds an Add after a consumer with no bias input, named
    after that consumer; pruning the result again (``--steps``, or a user
    pruning a pruned model) must name the second one differently: ONNX
    rejects a model with two nodes of one name."""
    from tests.helpers.graphs import Graph
    from tests.helpers.oracle import run

    g = Graph()
    h = g.add("Relu", [g.matmul("x", 8, 16, name="fc1")], name="act")
    model = g.build({"x": ["N", 8]}, [g.matmul(h, 16, 4, name="fc2")])
    calib = {"x": np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)}
    once = onnxprune.prune(model, ratio=0.25, calib=calib, round_to=1, validate=False).model
    twice = onnxprune.prune(once, ratio=0.25, calib=calib, round_to=1, validate=False).model
    names = [n.name for n in twice.graph.node]
    assert sum("bias_add" in n for n in names) == 2 and len(set(names)) == len(names)
    onnx.checker.check_model(twice, full_check=True)
    run(twice, calib)
