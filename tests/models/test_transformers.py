"""Transformer exports: the zoo built by
``tests/fixtures/build_transformers.py`` (GPT-2, Llama-style with grouped-query
attention and RoPE, a decoder step with a KV cache, DistilBERT, a
Whisper-style encoder; TorchScript and dynamo exporters). Each must show its
heads and MLP neurons as groups (or say exactly why not), and every random
prune must be exact (pruned == masked) at the analysed size *and* at another
batch and sequence length: run-time shapes keep working."""
from __future__ import annotations

import glob
import os

import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune.rewrite.engine import apply
from tests.helpers.oracle import random_keep, run
from tests.helpers.paths import FIXTURES

HERE = os.path.join(FIXTURES, "transformers")
ZOO = sorted(glob.glob(os.path.join(HERE, "*.onnx")))

# model -> unit counts that must be prunable groups (heads of 8 dims show as
# their head count; MLP neurons as the FFN width)
EXPECTED = {
    "gpt2_ts": {4, 128}, "gpt2_dyn": {4, 128},  # heads, Conv1D MLP
    "llama_gqa_ts": {2, 64}, "llama_gqa_dyn": {2, 64},  # K/V heads with their Q groups, gated MLP
    "distilbert_ts": {4, 64}, "distilbert_dyn": {4, 64},  # dyn: K^T goes through (B*H, D, S)
    "whisper_enc_ts": {4, 64}, "whisper_enc_dyn": {4, 64},
    "llama_kv_ts": {64}, "llama_kv_dyn": {64},  # K/V heads reach the cache inputs: frozen
    "digits_tf_ts": {4, 64}, "digits_tf_dyn": {4, 64},  # trained on digits
    # after onnxruntime's transformer optimizer: fused norms (LayerNormalization at
    # opset 14 and SimplifiedLayerNormalization are onnxruntime's own), BiasGelu
    "bert_opt": {4, 64}, "distilbert_opt": {4, 64}, "llama_gqa_opt": {2, 64},
    "bert_attention_opt": {4, 64},  # com.microsoft Attention (packed QKV, num_heads) x 2 layers
}


def feeds(model: onnx.ModelProto, batch: int, seq: int) -> dict:
    rng = np.random.default_rng(batch * 100 + seq)
    out = {}
    for i in model.graph.input:
        if i.name == "x" and len(i.type.tensor_type.shape.dim) == 3 and \
                i.type.tensor_type.shape.dim[2].dim_value == 8:  # digits: 8 rows of 8 pixels
            out[i.name] = rng.random((batch, 8, 8)).astype(np.float32)
        elif i.name == "input_ids":
            out[i.name] = rng.integers(0, 50, (batch, seq)).astype(np.int64)
        elif i.name == "attention_mask":
            out[i.name] = np.ones((batch, seq), np.int64)
            out[i.name][:, seq - 2:] = 0 if "token_type_ids" in [j.name for j in model.graph.input] else 1
        elif i.name == "token_type_ids":
            out[i.name] = np.zeros((batch, seq), np.int64)
        elif i.name == "input_features":
            out[i.name] = rng.standard_normal((batch, 8, 16)).astype(np.float32)
        elif i.name == "x":
            out[i.name] = rng.standard_normal((batch, seq, 32)).astype(np.float32)
        else:  # past_k / past_v: (batch, kv heads, past, head dim)
            out[i.name] = rng.standard_normal((batch, 2, 5, 8)).astype(np.float32)
    return out


def _name(path):
    return os.path.basename(path)[:-5]


def test_the_zoo_is_there():
    assert {_name(p) for p in ZOO} == set(EXPECTED)


@pytest.mark.parametrize("path", ZOO, ids=[_name(p) for p in ZOO])
def test_heads_and_neurons_are_groups_and_prune_exactly_at_any_length(path):
    model = onnx.load(path)
    sample = feeds(model, 1, 12)
    shapes = {k: [None] + list(v.shape[1:]) for k, v in sample.items()}  # as data would fix them
    groups = onnxprune.analyze(model, input_shapes=shapes)
    units = {g.units for g in groups.prunable}
    assert EXPECTED[_name(path)] <= units, (units, [(g.units, g.frozen[:2]) for g in groups.frozen])
    rng = np.random.default_rng(7)
    for _ in range(3):
        keep = random_keep(groups, rng)
        pruned, masked = apply(groups, keep), apply(groups, keep, masked=True)
        onnx.checker.check_model(pruned, full_check=True)
        for batch, seq in ((2, 12), (3, 7)):
            fd = feeds(model, batch, seq)
            for a, b in zip(run(pruned, fd), run(masked, fd)):
                assert a.shape == b.shape
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(b).max())))


def test_kv_heads_and_their_query_heads_are_one_unit():
    """Grouped-query attention: a K/V head and the Q heads it serves go
    together (whole groups): q_proj, k_proj, v_proj and o_proj share a group of 2."""
    model = onnx.load(os.path.join(HERE, "llama_gqa_ts.onnx"))
    groups = onnxprune.analyze(model, input_shapes={"input_ids": [None, 12], "attention_mask": [None, 12]})
    kv = next(g for g in groups.prunable if g.units == 2)
    names = " ".join(kv.members)
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert proj in names, kv.members
    keep = {kv.id: np.array([1])}
    pruned = apply(groups, keep)
    w = {t.name: t for t in pruned.graph.initializer}
    q = next(n for n in pruned.graph.node if "q_proj" in n.name and n.op_type == "MatMul")
    k = next(n for n in pruned.graph.node if "k_proj" in n.name and n.op_type == "MatMul")
    assert tuple(w[q.input[1]].dims) == (32, 16)  # 2 of 4 Q heads (one K/V group of 2) x 8
    assert tuple(w[k.input[1]].dims) == (32, 8)  # 1 of 2 K/V heads x 8


def test_prune_heads_or_neurons_only():
    model = os.path.join(HERE, "digits_tf_ts.onnx")
    d = np.load(os.path.join(HERE, "digits_data.npz"))
    units = {}
    for kind in ("heads", "neurons"):
        res = onnxprune.prune(model, ratio=0.5, prune=kind, calib={"x": d["x"][:200]}, round_to=1)
        changed = {g["channels"]: g["kept"] for g in res.report.groups if g["kept"] != g["channels"]}
        units[kind] = changed
    assert units["heads"] == {4: 2} and units["neurons"] == {64: 32}
    groups = onnxprune.analyze(model)
    heads = groups.select(("heads",))
    assert all("not selected: --prune heads" in " ".join(g.frozen) for g in heads.groups if g.width == 1)
    assert all(not any("not selected" in r for r in g.frozen) for g in groups.groups)  # a new view, not an edit


def test_a_kv_cache_shrinks_only_with_allow_io_change(tmp_path):
    """K/V heads of a decoder step reach past_k/past_v (inputs) and
    present_k/present_v (outputs): frozen by default; with the flag they
    prune, every changed input and output is listed, the declared shapes
    follow, and validation feeds the kept slices of the cache."""
    import json

    from click.testing import CliRunner

    from onnxprune.cli import main
    from onnxprune.rewrite.io_change import adapt_feeds, adapt_outputs, changed

    for name in ("llama_kv_ts", "llama_kv_dyn"):
        path = os.path.join(HERE, f"{name}.onnx")
        model = onnx.load(path)
        shapes = {"x": [None, 3, 32], "past_k": [None, 2, 5, 8], "past_v": [None, 2, 5, 8]}
        frozen = onnxprune.analyze(model, input_shapes=shapes)
        assert not any(g.units == 2 for g in frozen.prunable)
        groups = onnxprune.stages.analyze(
            onnxprune.stages.load(model, onnxprune.PruneConfig()),
            onnxprune.PruneConfig(input_shapes=shapes, allow_io_change=True))
        kv = next(g for g in groups.prunable if g.units == 2)
        keep = {kv.id: np.array([1])}
        io = changed(groups, keep)
        assert {(c.name, c.kind, c.axis, c.before, c.after) for c in io} == {
            ("past_k", "input", 1, 2, 1), ("past_v", "input", 1, 2, 1),
            ("present_k", "output", 1, 2, 1), ("present_v", "output", 1, 2, 1)}
        pruned, masked = apply(groups, keep), apply(groups, keep, masked=True)
        onnx.checker.check_model(pruned, full_check=True)
        for batch, seq in ((2, 3), (1, 6)):
            fd = feeds(model, batch, seq)
            names = [o.name for o in model.graph.output]
            got = run(pruned, adapt_feeds(io, fd))
            want = adapt_outputs(io, names, run(masked, fd))
            for a, b in zip(got, want):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(b).max())))
        dims = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in pruned.graph.input}
        assert dims["past_k"][1] == 1 and dims["x"][2] == 32
    # the CLI: the report lists the changes and validation runs on the sliced cache
    path = os.path.join(HERE, "llama_kv_ts.onnx")
    data = tmp_path / "kv.npz"
    np.savez(data, **feeds(onnx.load(path), 48, 3))
    out, rep = tmp_path / "kv.onnx", tmp_path / "kv.json"
    res = CliRunner().invoke(main, ["prune", path, "-o", str(out), "--ratio", "0.5", "--data", str(data),
                                    "--allow-io-change", "--round-to", "1", "--report", str(rep)])
    assert res.exit_code == 0, res.output
    assert "graph input 'past_k' changed: axis 1 2 -> 1" in res.output
    report = json.loads(rep.read_text())
    assert len(report["io_changes"]) == 4 and report["validation"]["outputs"]
    res = CliRunner().invoke(main, ["prune", path, "-o", str(out), "--auto", "--data", str(data),
                                    "--allow-io-change"])
    assert res.exit_code == 2 and "--allow-io-change" in res.output


def test_the_hidden_size_prunes_only_when_asked_and_says_it_is_not_exact():
    """The residual stream (embeddings, every norm, every projection's input
    or output) is one group that norms freeze: `--prune hidden` lifts that
    freeze (the norm's statistics change: pruned != masked), the validation
    measures the real error, and the model keeps working at other sizes."""
    path = os.path.join(HERE, "gpt2_ts.onnx")
    model = onnx.load(path)
    shapes = {"input_ids": [None, 12], "attention_mask": [None, 12]}
    plain = onnxprune.analyze(model, input_shapes=shapes)
    hidden = next(g for g in plain.groups if any("wte" in m for m in g.members))
    assert hidden.frozen and all("inexact (prune with --prune hidden)" in r for r in hidden.frozen)
    groups = onnxprune.analyze(model, input_shapes=shapes, prune="hidden")
    (only,) = groups.prunable
    assert only.channels == 32 and only.inexact and not only.frozen
    cal, val = feeds(model, 64, 12), feeds(model, 16, 12)
    res = onnxprune.prune(path, ratio=0.25, prune="hidden", calib=cal, data=val, validate=True, round_to=1,
                          input_shapes=shapes)
    assert [(g["channels"], g["kept"]) for g in res.report.groups if g["kept"] != g["channels"]] == [(32, 24)]
    onnx.checker.check_model(res.model, full_check=True)
    assert 0.5 < res.validation.cosine_mean < 0.9999  # measured, and not exact
    emb = {t.name: list(t.dims) for t in res.model.graph.initializer}
    assert emb["model.transformer.wte.weight"] == [50, 24]
    (y,) = run(res.model, feeds(model, 3, 7))
    assert y.shape == (3, 7, 50)


@pytest.mark.parametrize("name", ["bert_opt", "distilbert_opt", "llama_gqa_opt", "bert_attention_opt"])
def test_optimized_models_prune_their_hidden_size_through_the_fused_norms(name):
    """EmbedLayerNormalization, SkipLayerNormalization, SkipSimplified- and
    SimplifiedLayerNormalization slice their gamma/beta/bias with the hidden
    size; the model is valid and runs at another batch and length."""
    path = os.path.join(HERE, f"{name}.onnx")
    model = onnx.load(path)
    shapes = {i.name: [None, 12] for i in model.graph.input}
    groups = onnxprune.analyze(model, input_shapes=shapes, prune="hidden")
    (hidden,) = groups.prunable
    assert hidden.channels == 32 and hidden.inexact
    res = onnxprune.prune(path, ratio=0.25, prune="hidden", round_to=1, calib=feeds(model, 32, 12),
                          input_shapes=shapes)
    onnx.checker.check_model(res.model, full_check=True)
    fused = [n for n in res.model.graph.node if "Normalization" in n.op_type]
    w = {t.name: t for t in res.model.graph.initializer}
    params = [tuple(w[i].dims) for n in fused for i in n.input[1:] if i in w and len(w[i].dims) == 1]
    assert len(params) >= len(fused) and set(params) == {(24,)}, params
    (y,) = run(res.model, feeds(model, 3, 7))
    assert y.shape[:2] == (3, 7) or y.shape[0] == 3


def test_the_digits_transformer_keeps_its_accuracy_with_a_quarter_of_the_hidden_size_gone():
    d = np.load(os.path.join(HERE, "digits_data.npz"))
    res = onnxprune.prune(os.path.join(HERE, "digits_tf_ts.onnx"), ratio=0.25, prune="hidden",
                          calib={"x": d["x"][:300]}, data={"x": d["x"][300:], "labels": d["labels"][300:]},
                          validate=True, round_to=1)
    v = res.validation
    assert v.accuracy_before - v.accuracy_after <= 0.03, (v.accuracy_before, v.accuracy_after)


def test_an_input_whose_channels_are_found_late_is_analysed_with_them_from_the_start():
    """With --allow-io-change, x (the decoder step's hidden input) gets its
    channels where the residual Add needs them, after a Shape and the first
    RMSNorm read it: those must see them too (a second pass), or the norm's
    weight would stay full size and the model break (found by the benchmark)."""
    from onnxprune.rewrite.io_change import adapt_feeds

    for name in ("llama_kv_ts", "llama_kv_dyn"):
        path = os.path.join(HERE, f"{name}.onnx")
        model = onnx.load(path)
        shapes = {"x": [None, 3, 32], "past_k": [None, 2, 5, 8], "past_v": [None, 2, 5, 8]}
        groups = onnxprune.analyze(model, input_shapes=shapes, allow_io_change=True,
                                   prune=("heads", "neurons", "hidden"))
        assert not any("not tracked" in r for g in groups.groups for r in g.frozen), \
            [g.frozen for g in groups.groups]
        res = onnxprune.prune(path, ratio=0.25, prune="hidden", allow_io_change=True, round_to=1,
                              calib=feeds(model, 48, 3), input_shapes=shapes)
        onnx.checker.check_model(res.model, full_check=True)
        (y, *_) = run(res.model, adapt_feeds(res.io, feeds(model, 2, 4)))
        assert y.shape == (2, 4, 24)


def test_both_exporters_count_the_same_macs():
    """The dynamo export's attention runs over (batch*heads, S, D) axes; MACs
    count those as heads per sample, so both exports of a model agree. The
    optimized DistilBERT agrees too: the optimizer kept the dynamo export's
    value_info (``s50`` for the sequence) on the fused ops' outputs, which
    inference cannot recompute; fixing input_ids' ``s50`` fixes it there."""
    for name, shapes in (("gpt2", {"input_ids": [None, 12], "attention_mask": [None, 12]}),
                         ("distilbert", {"input_ids": [None, 12]})):
        macs = {e: onnxprune.analyze(os.path.join(HERE, f"{name}_{e}.onnx"), input_shapes=shapes).macs
                for e in ("ts", "dyn")}
        assert macs["ts"] and macs["ts"] == macs["dyn"], (name, macs)
    opt = onnxprune.analyze(os.path.join(HERE, "distilbert_opt.onnx"), input_shapes={"input_ids": [None, 12]})
    assert opt.macs == macs["dyn"]
