"""Weights stored in another form than the layer reads (float16 behind a
Cast, int8 behind a DequantizeLinear, transposed, unsqueezed) are sliced
where they are stored, in their stored dtype; activations quantized per
tensor or per channel pass their channels."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

import onnxprune
from onnxprune.rewrite.invariants import violations, weight_bytes
from tests.helpers.graphs import Graph, assert_prunable, exact, group_at, keep_of, pruned, value


def _stored(model, name):
    return next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def test_float16_weights_behind_a_cast_are_sliced_in_float16():
    g = Graph()
    rng = np.random.default_rng(0)
    w1 = g.add("Cast", [g.init("w1", rng.standard_normal((8, 3, 3, 3)), dtype=np.float16)], to=TensorProto.FLOAT)
    w2 = g.add("Cast", [g.init("w2", rng.standard_normal((4, 8, 3, 3)), dtype=np.float16)], to=TensorProto.FLOAT)
    a = g.add("Relu", [g.add("Conv", ["x", w1], name="c1", pads=[1, 1, 1, 1])])
    y = g.add("Conv", [a, w2], name="c2", pads=[1, 1, 1, 1])
    model = g.build({"x": [1, 3, 6, 6]}, [y])
    groups = exact(model, trials=4)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    m = pruned(groups, keep_of(grp, [1, 6]))
    assert _stored(m, "w1").dtype == np.float16 and _stored(m, "w1").shape == (2, 3, 3, 3)
    assert _stored(m, "w2").shape == (4, 2, 3, 3)
    np.testing.assert_array_equal(_stored(m, "w2"), _stored(model, "w2")[:, [1, 6]])
    assert weight_bytes(m).get("float", 0) == 0 and not violations(groups.model, m)


@pytest.mark.parametrize("zero_point", [0, 3])
def test_int8_weights_behind_a_per_channel_dequantize_are_sliced_as_int8(zero_point):
    g = Graph(opset=13)
    rng = np.random.default_rng(1)
    w8 = g.init("w8", rng.integers(-60, 60, (6, 5)), dtype=np.int8)
    scale = g.init("scale", rng.uniform(0.01, 0.05, 5), dtype=np.float32)
    zp = g.init("zp", np.full(5, zero_point), dtype=np.int8)
    w = g.add("DequantizeLinear", [w8, scale, zp], name="dq", axis=1)
    h = g.add("Relu", [g.matmul("x", 4, 6, name="up")])
    mid = g.add("Relu", [g.add("MatMul", [h, w], name="q_mm")])
    y = g.matmul(mid, 5, 3, name="down")
    model = g.build({"x": [2, 4]}, [y])
    groups = exact(model, trials=5)
    inner, neurons = group_at(groups, "up", -1), group_at(groups, "q_mm", -1)
    assert_prunable(inner)
    assert_prunable(neurons)
    m = pruned(groups, {**keep_of(inner, [0, 5]), **keep_of(neurons, [1, 2, 4])})
    assert _stored(m, "w8").dtype == np.int8
    np.testing.assert_array_equal(_stored(m, "w8"), _stored(model, "w8")[[0, 5]][:, [1, 2, 4]])
    np.testing.assert_array_equal(_stored(m, "scale"), _stored(model, "scale")[[1, 2, 4]])
    assert _stored(m, "zp").shape == (3,)
    assert not violations(groups.model, m)


def test_transposed_and_unsqueezed_weights_are_sliced_where_stored():
    g = Graph()
    rng = np.random.default_rng(2)
    wt = g.add("Transpose", [g.init("wt", rng.standard_normal((3, 3, 3, 8)))], perm=[3, 2, 0, 1])
    bias = g.add("Unsqueeze", [g.init("b", rng.standard_normal(8)), g.ints("ax", [1, 2])])
    a = g.add("Relu", [g.add("Add", [g.add("Conv", ["x", wt], name="c1", pads=[1, 1, 1, 1]), bias])])
    model = g.build({"x": [1, 3, 5, 5]}, [g.conv(a, 8, 4, name="c2")])
    groups = exact(model, trials=4)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    m = pruned(groups, keep_of(grp, [2, 3, 7]))
    np.testing.assert_array_equal(_stored(m, "wt"), _stored(model, "wt")[..., [2, 3, 7]])
    np.testing.assert_array_equal(_stored(m, "b"), _stored(model, "b")[[2, 3, 7]])


@pytest.mark.parametrize("per_channel", [False, True])
def test_quantize_dequantize_on_activations_passes_channels(per_channel):
    g = Graph(opset=13)
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")])
    shape = (6,) if per_channel else ()
    s = g.init("s", np.full(shape, 0.05), dtype=np.float32)
    z = g.init("z", np.full(shape, 10), dtype=np.uint8)
    q = g.add("QuantizeLinear", [a, s, z], name="q", axis=1)
    d = g.add("DequantizeLinear", [q, s, z], name="d", axis=1)
    groups = exact(g.build({"x": [1, 3, 4, 4]}, [g.conv(d, 6, 4, name="c2")]), trials=4)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    m = pruned(groups, keep_of(grp, [0, 4]))
    if per_channel:
        assert value(m, next(n for n in m.graph.node if n.name == "q").input[1]).shape == (2,)


def _dynamic_mlp(per_column_zp: bool, second_zp: int = 0, chain: bool = True, column_scales: bool = False):
    """``quantize_dynamic``'s pattern twice: x -> DynamicQuantizeLinear ->
    MatMulInteger (uint8 weight 16 x 32, zero point 128 per column or per
    tensor) -> Cast -> Mul(x_scale * w_scale) -> Relu -> again with a 32 x 4
    weight (int8, zero point ``second_zp``). Columns 0..7 of the first weight
    are tiny (their activations never hold the range's extreme), column 31 is
    an outlier (it always does). ``chain=False`` scales the second layer's
    output by the two scales one after the other, not by their product: the
    same values, but not quantize_dynamic's pattern. ``column_scales``
    gives the second weight a scale per column (per output)."""
    g = Graph(opset=13)
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((16, 32))
    w1[:, :8] *= 1e-3
    w1[:, 31] = np.abs(w1[:, 31]) * 20

    def layer(x, w, name, zp_shape, zp_value=128):
        q, x_scale, x_zp = g.add("DynamicQuantizeLinear", [x], n_out=3, name=f"{name}_dql")
        w_scale = float(np.abs(w).max() / 127)
        if column_scales and name == "mmi2":
            w_scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
        dtype = np.uint8 if zp_value >= 128 else np.int8
        zp = np.full(zp_shape, zp_value, dtype)
        wq = g.init(f"{name}_w", np.clip(np.round(w / w_scale) + zp_value, -127, 255), dtype=dtype)
        mm = g.add("MatMulInteger", [q, wq, x_zp, g.init(f"{name}_zp", zp)], name=name)
        out = g.add("Cast", [mm], to=TensorProto.FLOAT)
        if not chain and name == "mmi2":
            return g.add("Mul", [g.add("Mul", [out, x_scale]), g.init(f"{name}_scale", np.float32(w_scale))])
        scale = g.add("Mul", [x_scale, g.init(f"{name}_scale", np.asarray(w_scale, np.float32))])
        return g.add("Mul", [out, scale])

    h = g.add("Relu", [layer("x", w1, "mmi1", (32,) if per_column_zp else ())], name="relu")
    y = layer(h, rng.standard_normal((32, 4)), "mmi2", (), second_zp)
    return g.build({"x": ["N", 16]}, {y: ["N", 4]}), w1


@pytest.mark.parametrize("per_column_zp", [True, False])
def test_dynamic_quantization_prunes_approximately_and_says_so(per_column_zp):
    """MatMulInteger's stored weight (and per-column zero point) is sliced
    like a MatMul's; DynamicQuantizeLinear passes channels but makes the
    group *approximate*: without the channels that never hold the range's
    extreme, pruned == masked exactly; without the outlier, the kept
    channels are quantized finer, so the pruned model is nearer the float
    computation than the masked one."""
    from onnxprune.rewrite.engine import apply
    from tests.helpers.graphs import feeds, keep_of, pruned
    from tests.helpers.oracle import run

    model, w1 = _dynamic_mlp(per_column_zp)
    groups = onnxprune.analyze(model)
    grp = group_at(groups, "mmi1", -1)
    assert_prunable(grp)
    assert grp.approximate and "dynamic quantization" in grp.approximate[0]
    assert ("mmi1_zp", 0) in grp.weights if per_column_zp else ("mmi1_zp", 0) not in grp.weights
    x = feeds(model, seed=1, symbolic=64)
    small = keep_of(grp, range(8, 32))
    (a,), (b,) = run(pruned(groups, small), x), run(apply(groups, small, masked=True), x)
    np.testing.assert_array_equal(a, b)
    w = {t.name: tuple(t.dims) for t in pruned(groups, small).graph.initializer}
    assert w["mmi1_w"] == (16, 24) and w["mmi2_w"] == (24, 4)
    assert w.get("mmi1_zp", ()) == ((24,) if per_column_zp else ())
    no_outlier = keep_of(grp, range(31))
    (a,), (b,) = run(pruned(groups, no_outlier), x), run(apply(groups, no_outlier, masked=True), x)
    h = np.maximum(x["x"].astype(np.float64) @ w1, 0)[:, :31]
    w2 = value(model, "mmi2_w").astype(np.float64) * float(value(model, "mmi2_scale"))
    ref = h @ w2[:31]
    assert np.abs(a - b).max() > 0  # not exact: the range changed
    assert np.abs(a - ref).mean() < np.abs(b - ref).mean()
    res = onnxprune.prune(model, keep={grp.id: list(range(8, 32))}, validate=False)
    assert any("dynamic quantization" in n for n in res.report.notes)
    # With data: scores read the float activations before the quantization and
    # the stored integers (obs).
    from onnxprune import stages

    cfg = onnxprune.PruneConfig(calib={"x": np.random.default_rng(5).standard_normal((64, 16)).astype(np.float32)},
                                ratio=0.25, round_to=1).resolved()
    again = stages.analyze(stages.load(model, cfg), cfg)
    reads = {again.activation(u)[0] for u in again.consumers(grp.id)}
    assert reads == {"relu"}  # the float activations, not the quantized ones
    calibration = stages.calibrate(again, cfg)
    assert cfg.criterion == "obs" and grp.id in stages.score(again, calibration, cfg).orders
    # uint8 weights around a zero point of 128: the masked model fills a removed row with the
    # zero point (W - zp = 0 there), and scores read W - zp
    offset, _ = _dynamic_mlp(per_column_zp, second_zp=128)
    og = onnxprune.analyze(offset)
    ogrp = group_at(og, "mmi1", -1)
    assert_prunable(ogrp)
    (a,), (b,) = run(pruned(og, keep_of(ogrp, range(8, 32))), x), run(apply(og, keep_of(ogrp, range(8, 32)),
                                                                            masked=True), x)
    np.testing.assert_array_equal(a, b)
    use = next(u for u in og.consumers(ogrp.id) if og.view.nodes[u.node].name == "mmi2")
    np.testing.assert_array_equal(og.weight(use), value(offset, "mmi2_w").astype(np.float64) - 128)


@pytest.mark.parametrize("chain", [True, False, "column_scales"])
@pytest.mark.parametrize("second_zp", [0, 128])
def test_integer_weights_are_refitted_in_units_of_their_scale_and_rounded_back(second_zp, chain):
    """lsq compensation of a MatMulInteger reader: the removed rows regressed
    on the kept ones, computed on W - zp, rounded, plus the zero point, in the
    stored integer type. Behind quantize_dynamic's scale (Cast, then Mul by
    x_scale * w_scale) the bias goes on the float output, times w_scale;
    where the graph scales otherwise, the fit goes through the origin
    (uncentred moments) and adds no bias. Either way the pruned model is
    nearer the original on new inputs than without compensation; ``bias``
    compensation has nothing to write into without the pattern and says so."""
    from onnxprune.refit.compensate import _regress
    from tests.helpers.oracle import run

    model, _ = _dynamic_mlp(False, second_zp, bool(chain), column_scales=chain == "column_scales")
    rng = np.random.default_rng(5)
    mix = rng.standard_normal((16, 16)) * 0.3 + np.eye(16)  # correlated inputs: a refit has something to use
    calib = {"x": (rng.standard_normal((256, 16)) @ mix).astype(np.float32)}
    held = {"x": (rng.standard_normal((256, 16)) @ mix).astype(np.float32)}
    common = dict(ratio=0.5, calib=calib, round_to=1, validate=False, sequential=False, criterion="l2")
    res = onnxprune.prune(model, compensate="lsq", **common)
    flat = onnxprune.prune(model, compensate="none", **common)
    groups = res.groups
    grp = group_at(groups, "mmi1", -1)
    use = next(u for u in groups.consumers(grp.id) if groups.view.nodes[u.node].name == "mmi2")
    new = res.compensation.weights[(use.node, use.input)]
    assert new.dtype == value(model, "mmi2_w").dtype and new.shape == (32, 4)
    kept = np.sort(np.asarray(res.plan.keep[grp.id]))
    removed = np.setdiff1d(np.arange(32), kept)
    h = np.maximum(calib["x"].astype(np.float64) @ (value(model, "mmi1_w").astype(np.float64) - 128)
                   * float(value(model, "mmi1_scale")), 0)
    moments = np.cov(h.T, bias=True) if chain else h.T @ h / len(h)
    coef = _regress(moments, kept, removed, 1e-3)
    w = value(model, "mmi2_w").astype(np.float64) - second_zp
    expect = w.copy()
    expect[kept] += coef.T @ w[removed]
    info = np.iinfo(new.dtype)
    want = np.clip(np.rint(expect) + second_zp, info.min, info.max)
    off = np.abs(new.astype(np.float64) - want)  # h here skips the first layer's quantization: a tie may round apart
    assert off.max() <= 1 and (off > 0).mean() < 0.1, off
    adds = [n for n in res.model.graph.node if n.op_type == "Add"]
    if chain:
        offset = h[:, removed].mean(0) - coef @ h[:, kept].mean(0)
        scale = value(model, "mmi2_scale").astype(np.float64)  # one, or one per column
        bias = offset @ w[removed] * scale
        np.testing.assert_allclose(res.compensation.biases[use.node] * scale, bias,
                                   atol=0.02 * np.abs(bias).max())  # h here is the float layer, not the quantized one
        assert len(adds) == 1 and adds[0].output[0] == model.graph.output[0].name  # after the scale Mul
        added = {t.name: onnx.numpy_helper.to_array(t) for t in res.model.graph.initializer}[adds[0].input[1]]
        np.testing.assert_allclose(added.reshape(-1), res.compensation.biases[use.node] * scale, rtol=1e-6)
    else:
        assert not res.compensation.biases and not adds
    seq = onnxprune.prune(model, compensate="lsq", **{**common, "sequential": True})
    assert seq.report.sequential["refitted"] == (1 if chain else 0)  # a stage refit needs the bias too
    assert seq.compensation.weights[(use.node, use.input)].dtype == new.dtype
    ref = run(model, held)[0]
    err = [np.abs(run(r.model, held)[0] - ref).mean() for r in (res, flat, seq)]
    assert err[0] < 0.8 * err[1] and err[2] < 0.8 * err[1], err
    if not chain:
        bias = onnxprune.prune(model, compensate="bias", **common)
        assert any("stored as integers" in n for n in bias.compensation.skipped)


def test_a_weight_behind_an_op_that_cannot_be_traced_is_folded_and_its_chain_removed():
    # A Reshape of the stored weight cannot be sliced at the source: the folded
    # value becomes one new initializer, and the bypassed chain (the Reshape
    # and the stored tensor) is removed, not left behind unused.
    g = Graph()
    flat = g.rand("w_flat", (8 * 3 * 3 * 3,))
    w = g.add("Reshape", [flat, g.ints("wshape", [8, 3, 3, 3])], name="unflatten")
    a = g.add("Relu", [g.add("Conv", ["x", w], name="c1", pads=[1, 1, 1, 1])])
    model = g.build({"x": [1, 3, 5, 5]}, [g.conv(a, 8, 4, name="c2")])
    groups = exact(model, trials=3)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    m = pruned(groups, keep_of(grp, [0, 7]))
    assert not any(n.name == "unflatten" for n in m.graph.node)
    assert {t.name for t in m.graph.initializer}.isdisjoint({"w_flat", "wshape"})
    assert not violations(groups.model, m)


def test_quantized_attention_scores_keep_heads_prunable():
    """optimum's dynamic quantization also quantizes attention's Q.K^T: a
    MatMulInteger of two activations with scalar zero points. Heads are its
    batch axis: they stay prunable (approximately: the scores pass a
    DynamicQuantizeLinear); the head dim it contracts freezes, as MatMul's."""
    from tests.helpers.graphs import feeds, keep_of, pruned
    from tests.helpers.oracle import run

    g = Graph(opset=13)

    def heads(name, perm):
        h = g.add("Reshape", [g.matmul("x", 8, 8, name=name), g.ints(f"{name}_shape", [0, 0, 2, 4])])
        return g.add("Transpose", [h], perm=perm)

    q, k, v = heads("q", [0, 2, 1, 3]), heads("k", [0, 2, 3, 1]), heads("v", [0, 2, 1, 3])
    qq, qs, qz = g.add("DynamicQuantizeLinear", [q], n_out=3, name="dq_q")
    kq, ks, kz = g.add("DynamicQuantizeLinear", [k], n_out=3, name="dq_k")
    s = g.add("Cast", [g.add("MatMulInteger", [qq, kq, qz, kz], name="scores")], to=TensorProto.FLOAT)
    p = g.add("Softmax", [g.add("Mul", [s, g.add("Mul", [qs, ks])])], axis=-1)
    c = g.add("Reshape", [g.add("Transpose", [g.add("MatMul", [p, v])], perm=[0, 2, 1, 3]),
                          g.ints("merge", [0, 0, 8])])
    y = g.matmul(c, 8, 3, name="o")
    model = g.build({"x": ["N", 5, 8]}, {y: ["N", 5, 3]})
    groups = onnxprune.analyze(model)
    grp = group_at(groups, "q", -1)
    assert_prunable(grp)
    assert grp.units == 2 and grp.approximate
    out = pruned(groups, keep_of(grp, [1]))
    w = {t.name: tuple(t.dims) for t in out.graph.initializer}
    assert w["q_W"] == w["k_W"] == w["v_W"] == (8, 4) and w["o_W"] == (4, 3)
    (y1,) = run(out, feeds(model, seed=2, symbolic=3))
    assert y1.shape == (3, 5, 3)


def _dynamic_cnn(w_zp: int = 0, per_channel: bool = True):
    """``quantize_dynamic`` on a CNN (rapid_table_det's detector is 152 of
    these): images -> DynamicQuantizeLinear -> ConvInteger (int8 weight
    8 x 3 x 3 x 3, zero point ``w_zp`` per output channel or per tensor) ->
    Cast -> Mul(x_scale * w_scale) -> Relu -> the same with 8 -> 4."""
    g = Graph(opset=13)
    rng = np.random.default_rng(4)

    def layer(x, cin, cout, name):
        q, x_scale, x_zp = g.add("DynamicQuantizeLinear", [x], n_out=3, name=f"{name}_dql")
        w = rng.standard_normal((cout, cin, 3, 3))
        w_scale = float(np.abs(w).max() / 100)
        wq = g.init(f"{name}_w", np.round(w / w_scale) + w_zp, dtype=np.int8)
        zp = g.init(f"{name}_zp", np.full((cout,) if per_channel else (), w_zp, np.int8))
        conv = g.add("ConvInteger", [q, wq, x_zp, zp], name=name, pads=[1, 1, 1, 1])
        scale = g.add("Mul", [x_scale, g.init(f"{name}_scale", np.float32(w_scale))])
        return g.add("Mul", [g.add("Cast", [conv], to=TensorProto.FLOAT), scale])

    h = g.add("Relu", [layer("x", 3, 8, "ci1")], name="relu")
    return g.build({"x": ["N", 3, 6, 6]}, [layer(h, 8, 4, "ci2")])


@pytest.mark.parametrize("per_channel", [True, False])
def test_conv_integer_slices_its_weight_and_zero_points_like_a_conv(per_channel):
    from onnxprune.rewrite.engine import apply
    from tests.helpers.graphs import feeds, keep_of, pruned
    from tests.helpers.oracle import run

    model = _dynamic_cnn(per_channel=per_channel)
    groups = onnxprune.analyze(model)
    grp = group_at(groups, "ci1")
    assert_prunable(grp)
    assert grp.approximate and "dynamic quantization" in grp.approximate[0]
    assert (("ci1_zp", 0) in grp.weights) == per_channel
    keep = keep_of(grp, [0, 2, 3, 7])
    m = pruned(groups, keep)
    onnx.checker.check_model(m, full_check=True)
    dims = {t.name: tuple(t.dims) for t in m.graph.initializer}
    assert dims["ci1_w"] == (4, 3, 3, 3) and dims["ci2_w"] == (4, 4, 3, 3)
    assert dims["ci1_zp"] == ((4,) if per_channel else ())
    if not per_channel:  # onnxruntime's ConvInteger takes one weight zero point only
        x = feeds(model, seed=2, symbolic=3)
        (a,), (b,) = run(m, x), run(apply(groups, keep, masked=True), x)
        assert a.shape == b.shape == (3, 4, 6, 6)
        # approximate: the kept channels may be quantized a step finer than in the masked model
        assert np.abs(a - b).max() <= 0.1 * np.abs(b).max()
    assert group_at(groups, "ci2").frozen  # reaches the graph output
    # a weight zero point of 3: a removed input channel is masked with it, not with 0
    offset = _dynamic_cnn(w_zp=3, per_channel=per_channel)
    og = onnxprune.analyze(offset)
    ogrp = group_at(og, "ci1")
    assert_prunable(ogrp)
    masked = apply(og, keep_of(ogrp, [0, 2, 3, 7]), masked=True)
    w = value(masked, "ci2_w")
    assert (w[:, [1, 4, 5, 6]] == 3).all() and (w[:, [0, 2, 3, 7]] == value(offset, "ci2_w")[:, [0, 2, 3, 7]]).all()
    if not per_channel:
        (a,), (b,) = run(pruned(og, keep_of(ogrp, [0, 2, 3, 7])), x), run(masked, x)
        assert np.abs(a - b).max() <= 0.1 * np.abs(b).max()


@pytest.mark.parametrize("op,keeps_zero", [("Exp", False), ("Neg", True)])
def test_a_weight_behind_an_op_that_does_not_keep_zero_is_masked_where_it_is_read(op, keeps_zero):
    """The masked model zeroes a consumer's removed inputs. Behind Neg the stored
    constant is zeroed (-0 is 0); behind Exp it cannot be (exp(0) = 1): the
    folded weight is masked where the layer reads it. Either way pruned ==
    masked, and the pruned model slices the stored constant."""
    g = Graph()
    rng = np.random.default_rng(3)
    w1 = g.init("w1", rng.standard_normal((6, 3, 3, 3)))
    w2 = g.add(op, [g.init("w2", rng.standard_normal((4, 6, 3, 3)) * 0.3)], name="w2_chain")
    a = g.add("Relu", [g.add("Conv", ["x", w1], name="c1", pads=[1, 1, 1, 1])])
    y = g.add("Conv", [a, w2], name="c2", pads=[1, 1, 1, 1])
    model = g.build({"x": [1, 3, 6, 6]}, [y])
    groups = exact(model, trials=4)
    grp = group_at(groups, "c1")
    assert_prunable(grp)
    m = pruned(groups, keep_of(grp, [0, 2, 5]))
    assert _stored(m, "w2").shape == (4, 3, 3, 3)
    np.testing.assert_array_equal(_stored(m, "w2"), _stored(model, "w2")[:, [0, 2, 5]])
    masked = onnxprune.prune(model, keep=keep_of(grp, [0, 2, 5]), compensate="none").masked()
    chain = [n for n in masked.graph.node if n.op_type == op]
    assert bool(chain) == keeps_zero  # zeroed where stored, or the folded value written masked
