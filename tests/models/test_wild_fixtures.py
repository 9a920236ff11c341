"""The exactness oracle (pruned == masked) over the "wild" test
models, one per class of graph real exporters emit and self-built ones miss
(tests/fixtures/wild/build_wild.py says how each was made): symbolic spatial
dims, batch 1 fixed inside, the network inside an If, torch LSTM / GRU, QDQ
per-channel int8, float16 weights behind Cast, Keras NHWC, IR 3.

Each model gets: the oracle on random keep-sets with feeds it can run
(int64 tokens, the If's both branches, batch 1 where the graph fixes it,
spatial sizes the detector accepts), under the exported graph and two of the
zoo's variants; what is expected to prune and what to freeze, with the
reason; and ``onnxprune prune`` from the command line."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import onnxprune
from onnxprune.cli import main
from onnxprune.rewrite.engine import apply
from tests.helpers import oracle
from tests.helpers.graphs import assert_frozen, assert_prunable, frozen_text
from tests.helpers.oracle import check_exact
from tests.helpers.paths import FIXTURES
from tests.helpers.variants import VARIANTS

WILD = os.path.join(FIXTURES, "wild")
_F = np.float32


def _f(rng, *shape):
    return rng.standard_normal(shape).astype(_F)


@dataclass
class Wild:
    """How to run one wild model: feeds (one dict per case to cover), dims for
    its symbolic inputs, and the extra CLI arguments ``prune`` needs."""

    feeds: object  # rng -> list of feed dicts
    cli: list = field(default_factory=list)
    calib: object = None  # rng -> {input: samples} written to an npz for --calib
    shapes_from_feeds: bool = False  # pass the feeds' shapes as input_shapes to analyze
    unoptimized: bool = False  # compare under ONNX semantics (see test_qdq_...)


MODELS = {
    # valid sizes are multiples of 16 (two stride-2 levels meet in a Concat)
    "detector_symbolic_hw": Wild(lambda r: [{"images": _f(r, 2, 3, 32, 48)}, {"images": _f(r, 1, 3, 48, 16)}],
                                 calib=lambda r: {"images": _f(r, 8, 3, 32, 48)}, shapes_from_feeds=True),
    "fixed_batch1_reshape": Wild(lambda r: [{"input": _f(r, 1, 1, 16, 16)}]),
    # the If takes the "loud" branch when mean(x) > 0: cover both branches
    "if_network": Wild(lambda r: [{"x": _f(r, 2, 1, 16, 16) + 1}, {"x": _f(r, 3, 1, 16, 16) - 1}]),
    "lstm_torch": Wild(lambda r: [{"tokens": r.integers(0, 40, (7, 2))}], cli=["--input-shape", "tokens:7,2"]),
    "gru_torch": Wild(lambda r: [{"feats": _f(r, 2, 9, 6)}], cli=["--input-shape", "feats:2,9,6"]),
    "qdq_per_channel": Wild(lambda r: [{"input": _f(r, 2, 3, 12, 12)}], unoptimized=True),
    "fp16_behind_cast": Wild(lambda r: [{"input": _f(r, 2, 3, 12, 12)}]),
    "keras_nhwc": Wild(lambda r: [{"input_1": _f(r, 2, 16, 16, 3)}]),
    "ir3_inputs": Wild(lambda r: [{"data": _f(r, 1, 3, 8, 8)}]),
}
NAMES = sorted(MODELS)
_cache: dict = {}


def _path(name: str) -> str:
    return os.path.join(WILD, f"{name}.onnx")


def _model(name: str, variant: str = "exported") -> onnx.ModelProto:
    if (name, variant) not in _cache:
        _cache[(name, variant)] = VARIANTS[variant](onnx.load(_path(name)))
    return _cache[(name, variant)]


def _groups(name: str):
    spec = MODELS[name]
    shapes = None
    if spec.shapes_from_feeds:
        shapes = {k: list(v.shape) for k, v in spec.feeds(np.random.default_rng(0))[0].items()}
    return onnxprune.analyze(_model(name), input_shapes=shapes)


def _run_unoptimized(model, feeds):
    """ONNX semantics: no graph optimizations, so DequantizeLinear -> op ->
    QuantizeLinear runs as written, not as onnxruntime's fused int8 kernels."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_every_wild_model_is_there_small_and_valid():
    assert sorted(f[:-5] for f in os.listdir(WILD) if f.endswith(".onnx")) == NAMES
    for name in NAMES:
        assert os.path.getsize(_path(name)) < 200 * 1024, name
        onnx.checker.check_model(_path(name), full_check=True)


# -- (a) the oracle ---------------------------------------------------------------------
def _cases():
    for name in NAMES:
        for variant in ("exported", "constant_nodes", "identity_chains"):
            if name == "ir3_inputs" and variant == "constant_nodes":
                continue  # the variant drops initializers that are also graph inputs: IR 3 has no other kind
            yield pytest.param(name, variant, id=f"{name}-{variant}")


@pytest.mark.parametrize("name, variant", list(_cases()))
def test_pruned_equals_masked(name, variant, monkeypatch):
    spec = MODELS[name]
    if spec.unoptimized:
        monkeypatch.setattr(oracle, "run", _run_unoptimized)
    model = _model(name, variant)
    for seed in range(2):
        rng = np.random.default_rng(seed)
        for case, feeds in enumerate(spec.feeds(rng)):
            shapes = {k: list(v.shape) for k, v in feeds.items()} if spec.shapes_from_feeds else None
            groups = check_exact(model, feeds=feeds, trials=2, seed=10 * seed + case, input_shapes=shapes)
            assert groups.prunable


def test_qdq_model_is_within_one_output_step_under_fused_int8_kernels():
    """onnxruntime's default optimizations fuse the QDQ graph into
    QLinearConv / QLinearAdd / QGemm, whose integer arithmetic rounds
    differently when channels are zeroed than when they are gone: one output
    quantisation step at most (the unfused graph is bit-exact above)."""
    model = _model("qdq_per_channel")
    scale = next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer
                 if t.name == next(n for n in model.graph.node
                                   if n.op_type == "DequantizeLinear" and n.output[0] == "logits").input[1])
    feeds = MODELS["qdq_per_channel"].feeds(np.random.default_rng(0))[0]
    check_exact(model, feeds=feeds, trials=4, rtol=0, atol=float(scale) * 1.01)


# -- (b) what prunes and what freezes ------------------------------------------------------
def _with(groups, *nodes):
    """The groups whose members include every one of ``nodes``."""
    found = [g for g in groups.groups if set(nodes) <= set(g.members)]
    assert found, f"no group has members {nodes}"
    return found


def _stored(model, name):
    return next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def test_detector_backbone_and_both_scales_prune_its_head_outputs_stay():
    groups = _groups("detector_symbolic_hw")
    for g in _with(groups, "/lateral/Conv", "/fuse/fuse.0/Conv") + \
            _with(groups, "/s8/s8.3/Conv", "/fuse/fuse.0/Conv"):  # upsampled branch; concat offset
        assert_prunable(g)
    assert_prunable(_with(groups, "/s16/s16.0/Conv", "/lateral/Conv", "/head16/Conv")[0])
    for head in ("/head8/Conv", "/head16/Conv"):
        assert_frozen(next(g for g in groups.groups if g.members == [head]), "reaches graph output 'detections'")
    assert len(groups.prunable) == 6


def test_batch_fixed_inside_still_prunes_through_the_literal_reshape():
    groups = _groups("fixed_batch1_reshape")
    assert_prunable(_with(groups, "/features/features.4/Conv", "/fc1/Gemm")[0])  # flattened by Reshape [1, -1]
    assert len(groups.prunable) == 3


def test_if_network_prunes_inside_both_branches_and_through_the_if():
    groups = _groups("if_network")
    for branch in ("loud", "quiet"):
        assert_prunable(_with(groups, f"/{branch}/conv1/Conv", f"/{branch}/conv2/Conv")[0])
        assert_prunable(_with(groups, f"/{branch}/fc1/Gemm", f"/{branch}/fc2/Gemm")[0])
    # the outer stem weight both branches capture: one group across them
    assert_prunable(_with(groups, "/loud/stem/Conv", "/quiet/stem/Conv", "/loud/conv1/Conv", "/quiet/conv1/Conv")[0])
    # the If's output: both branches' last layer and the head after it
    assert_prunable(_with(groups, "/loud/fc2/Gemm", "/quiet/fc2/Gemm", "/head/Gemm")[0])
    assert len(groups.prunable) == 8


@pytest.mark.parametrize("name, rnn, before", [("lstm_torch", "/rnn/LSTM", "/embed/Gather"),
                                               ("gru_torch", "/rnn/GRU", "/proj/MatMul")])
def test_rnn_input_features_prune_with_their_producer(name, rnn, before):
    groups = _groups(name)
    assert_prunable(_with(groups, before, rnn)[0])
    for g in groups.groups:  # everything else frozen, each with its reason
        assert g.prunable or frozen_text(g)


@pytest.mark.parametrize("name, first, second", [("lstm_torch", "/rnn/LSTM", "/rnn/LSTM_1"),
                                                 ("gru_torch", "/rnn/GRU", "/rnn/GRU_1")])
def test_torch_rnn_hidden_size_prunes(name, first, second):
    """torch builds the zero initial state as ConstantOfShape(Concat(.., [H]))
    (sliced per layer): the literal H is rewritten with the hidden size."""
    groups = _groups(name)
    assert_prunable(_with(groups, first, second)[0])  # and test_pruned_equals_masked prunes it exactly


def test_qdq_int8_weights_prune_and_stay_int8():
    groups = _groups("qdq_per_channel")
    assert_prunable(_with(groups, "/c1/Conv", "/c2/Conv")[0])
    assert_prunable(_with(groups, "/c2/Conv", "/c3/Conv", "/fc1/Gemm")[0])  # the residual Add, quantized
    assert len(groups.prunable) == 3
    keep = {g.id: np.arange(g.units // 2) for g in groups.prunable}
    before, after = _model("qdq_per_channel"), apply(groups, keep)
    for t in after.graph.initializer:
        if t.name in {i.name for i in before.graph.initializer}:
            assert t.data_type == next(i.data_type for i in before.graph.initializer if i.name == t.name)
    assert sum(t.data_type == onnx.TensorProto.INT8 for t in after.graph.initializer) >= 5


def test_fp16_weights_behind_cast_prune_and_stay_float16():
    groups = _groups("fp16_behind_cast")
    assert len(groups.prunable) == 3
    after = apply(groups, {g.id: np.arange(g.units // 2) for g in groups.prunable})
    weights = [t for t in after.graph.initializer if len(t.dims) >= 1 and t.data_type != onnx.TensorProto.INT64]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    first = next(n for n in after.graph.node if n.op_type == "Conv")  # its weight: Cast of a float16 tensor
    cast = next(n for n in after.graph.node if n.output[0] == first.input[1])
    assert cast.op_type == "Cast" and _stored(after, cast.input[0]).shape == (6, 3, 3, 3)


def test_keras_nhwc_convs_depthwise_and_flattened_dense_prune():
    groups = _groups("keras_nhwc")
    assert_prunable(_with(groups, "model/conv2d/Conv2D", "model/conv2d/BiasAdd", "model/conv2d_1/Conv2D")[0])
    assert_prunable(_with(groups, "model/conv2d_1/Conv2D", "model/batch_normalization/batchnorm/mul_1",
                          "model/depthwise_conv2d/Conv2D", "model/conv2d_2/Conv2D")[0])
    flat = _with(groups, "model/conv2d_2/Conv2D", "model/dense/MatMul")[0]  # NHWC flatten: channel fastest
    assert_prunable(flat)
    assert flat.width == 16
    assert_frozen(_with(groups, "model/dense_1/MatMul")[-1], "Softmax")
    assert len(groups.prunable) == 4


def test_ir3_initializers_listed_as_inputs_prune_and_their_inputs_shrink():
    groups = _groups("ir3_inputs")
    assert_prunable(_with(groups, "conv1", "bn1", "conv2")[0])
    assert len(groups.prunable) == 3
    after = apply(groups, {g.id: np.arange(g.units // 2) for g in groups.prunable})
    assert after.ir_version == 3
    declared = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in after.graph.input}
    for t in after.graph.initializer:
        assert declared[t.name] == list(t.dims), t.name
    assert declared["conv1_w"] == [4, 3, 3, 3]


# -- (c) the command line --------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_cli_prune_writes_a_smaller_valid_model(name, tmp_path):
    spec = MODELS[name]
    args = ["prune", _path(name), "-o", os.fspath(tmp_path / "out.onnx"), "--ratio", "0.25", *spec.cli]
    if spec.calib is not None:
        np.savez(tmp_path / "calib.npz", **spec.calib(np.random.default_rng(0)))
        args += ["--calib", os.fspath(tmp_path / "calib.npz")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, (r.output, r.exception)
    out = tmp_path / "out.onnx"
    assert os.path.getsize(out) < os.path.getsize(_path(name))
    onnx.checker.check_model(os.fspath(out), full_check=True)
