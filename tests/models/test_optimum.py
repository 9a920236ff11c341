"""Models exported by Hugging Face optimum (``tests/fixtures/optimum``, built
by ``build_optimum.py``): a GPT-2 decoder step with its KV cache, a BERT and
a ViT after optimum's O2 optimization (com.microsoft Attention,
SkipLayerNormalization, BiasGelu/FastGelu), and a BERT through optimum's
dynamic quantization. What optimum users ship must analyse into heads and
MLP neurons and prune exactly at other batch and sequence sizes (the
quantized one approximately, and it says so)."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune.rewrite.engine import apply
from onnxprune.rewrite.io_change import adapt_feeds, changed
from tests.helpers.oracle import random_keep, run
from tests.helpers.paths import FIXTURES

HERE = os.path.join(FIXTURES, "optimum")


def feeds(name: str, batch: int, seq: int, past: int = 5) -> dict:
    rng = np.random.default_rng(batch * 100 + seq)
    if name == "vit_o2":
        return {"pixel_values": rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)}
    ids = rng.integers(0, 64, (batch, seq))
    if name == "gpt2_past":
        out = {"input_ids": ids, "attention_mask": np.ones((batch, past + seq), np.int64),
               "position_ids": np.tile(np.arange(past, past + seq), (batch, 1))}
        for layer in range(2):
            for kv in ("key", "value"):
                out[f"past_key_values.{layer}.{kv}"] = rng.standard_normal((batch, 4, past, 8)).astype(np.float32)
        return out
    if name == "t5_decoder_merged":
        enc = 7
        out = {"encoder_attention_mask": np.ones((batch, enc), np.int64), "input_ids": ids[:, :1],
               "encoder_hidden_states": rng.standard_normal((batch, enc, 32)).astype(np.float32),
               "use_cache_branch": np.array([True])}
        for part, length in (("decoder", past), ("encoder", enc)):
            for kv in ("key", "value"):
                out[f"past_key_values.0.{part}.{kv}"] = rng.standard_normal((batch, 4, length, 8)).astype(np.float32)
        return out
    mask = np.ones((batch, seq), np.int64)
    mask[:, seq - 2:] = 0  # padding
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros((batch, seq), np.int64)}


def shapes(name: str) -> dict:
    return {k: [None] + list(v.shape[1:]) for k, v in feeds(name, 1, 12).items()}


# model -> (unit counts that must be prunable groups, --allow-io-change)
EXPECTED = {
    "gpt2_past": ({4, 128}, True),  # heads shrink the cache: allowed
    "bert_o2": ({4, 64}, False),
    "vit_o2": ({4, 64}, False),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_optimum_exports_prune_heads_and_neurons_exactly_at_any_size(name):
    units, io = EXPECTED[name]
    model = onnx.load(os.path.join(HERE, f"{name}.onnx"))
    groups = onnxprune.analyze(model, input_shapes=shapes(name), allow_io_change=io)
    assert units <= {g.units for g in groups.prunable}, [(g.units, g.frozen[:1]) for g in groups.groups]
    rng = np.random.default_rng(3)
    sizes = ((2, 12), (3, 7)) if name != "vit_o2" else ((2, 0), (3, 0))
    for _ in range(3):
        keep = random_keep(groups, rng)
        pruned, masked = apply(groups, keep), apply(groups, keep, masked=True)
        onnx.checker.check_model(pruned, full_check=True)
        for batch, seq in sizes:
            fd = feeds(name, batch, seq)
            for a, b in zip(run(pruned, adapt_feeds(changed(groups, keep), fd)), run(masked, fd)):
                if a.shape != b.shape:  # a present.* output: the kept heads of the masked cache
                    continue
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(b).max())))


def test_a_merged_decoder_prunes_inside_both_branches_exactly():
    """``decoder_model_merged.onnx``: the decoder sits twice in the branches of
    an If on ``use_cache_branch``; the branches repeat each other's names
    (renamed on load) and share the weights, so its MLP neurons are one
    group across both, exact whichever branch runs."""
    name = "t5_decoder_merged"
    model = onnx.load(os.path.join(HERE, f"{name}.onnx"))
    sample = feeds(name, 1, 1)
    groups = onnxprune.analyze(model, input_shapes={k: [None] + list(v.shape[1:]) if k != "use_cache_branch"
                                                    else [1] for k, v in sample.items()})
    mlp = next(g for g in groups.prunable if g.units == 64)
    assert sum("wi/MatMul" in m for m in mlp.members) == 2  # the same layer in each branch
    keep = {mlp.id: np.arange(0, 64, 3)}
    pruned, masked = apply(groups, keep), apply(groups, keep, masked=True)
    onnx.checker.check_model(pruned, full_check=True)
    for branch in (True, False):
        for batch in (1, 2):
            fd = feeds(name, batch, 1)
            fd["use_cache_branch"] = np.array([branch])
            (a, *_), (b, *_) = run(pruned, fd), run(masked, fd)
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(b).max())))
    # With data: what lives in the branches cannot be observed (no statistics, a weight criterion); it prunes
    cal = feeds(name, 8, 1)
    cal["use_cache_branch"] = np.ones(8, bool)  # a [1] input: one value per sample, one sample per run
    res = onnxprune.prune(os.path.join(HERE, f"{name}.onnx"), ratio=0.25, calib=cal, data=cal, validate=True,
                          round_to=1)
    assert res.validation.outputs[0].cosine_min > 0.9


def test_optimum_dynamic_quantization_prunes_heads_and_neurons_approximately():
    path = os.path.join(HERE, "bert_quantized.onnx")
    groups = onnxprune.analyze(path, input_shapes=shapes("bert_quantized"))
    prunable = {(g.units, g.width) for g in groups.prunable}
    assert {(4, 8), (64, 1)} <= prunable, [(g.units, g.frozen[:1]) for g in groups.groups]
    assert all(g.approximate for g in groups.prunable if g.units in (4, 64))
    cal, val = feeds("bert_quantized", 48, 12), feeds("bert_quantized", 16, 12)
    res = onnxprune.prune(path, ratio=0.25, calib=cal, data=val, validate=True, round_to=1)
    onnx.checker.check_model(res.model, full_check=True)
    assert any("dynamic quantization" in n for n in res.report.notes)
    assert res.validation.outputs[0].cosine_min > 0.9
    (y,) = run(res.model, feeds("bert_quantized", 3, 7))
    assert y.shape == (3, 3)
