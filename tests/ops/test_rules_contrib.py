"""onnxruntime's fused contrib ops: Gelu, FastGelu, BiasGelu,
BiasAdd element-wise with per-channel biases; SkipLayerNormalization freezes
the hidden size it normalises, with the reason. Each prunable case runs the
oracle (onnxruntime runs these ops on CPU)."""
from __future__ import annotations

import numpy as np

from tests.helpers.graphs import Graph, assert_frozen, assert_prunable, exact, group_at

MS = "com.microsoft"


def _graph():
    g = Graph(seed=5)
    g.extra_opsets[MS] = 1
    return g


def test_bias_gelu_and_gelu_neurons_prune_with_their_bias():
    g = _graph()
    a = g.add("BiasGelu", [g.matmul("x", 16, 32, name="up"), g.rand("b1", (32,))], domain=MS, name="bg")
    b = g.add("Gelu", [g.matmul(a, 32, 24, name="mid")], domain=MS, name="gelu")
    c = g.add("FastGelu", [g.matmul(b, 24, 20, name="mid2"), g.rand("b3", (20,))], domain=MS, name="fg")
    y = g.matmul(c, 20, 4, name="down")
    groups = exact(g.build({"x": ["N", 16]}, {y: ["N", 4]}))
    for at in ("bg", "gelu", "fg"):
        assert_prunable(group_at(groups, at))
    weights = {w for w, _ in group_at(groups, "bg").weights}
    assert "b1" in weights  # the fused bias is sliced with its neurons


def test_skip_layer_norm_freezes_the_hidden_size_and_keeps_the_mlp_prunable():
    g = _graph()
    h = g.add("FastGelu", [g.matmul("x", 16, 32, name="fc1"), g.rand("b1", (32,))], domain=MS, name="act")
    z = g.matmul(h, 32, 16, name="fc2")
    out = g.add("SkipLayerNormalization", [z, "x", g.rand("gamma", (16,), 0.5, 1.5), g.rand("beta", (16,)),
                                           g.rand("bias", (16,))], domain=MS, n_out=4, name="skipln",
                outputs=["ln", "", "", "sum"])
    y = g.matmul(out[0] if isinstance(out, list) else out, 16, 4, name="head")
    model = g.build({"x": ["N", 6, 16]}, {y: ["N", 6, 4]})
    groups = exact(model)
    assert_prunable(group_at(groups, "act", 2))
    assert_frozen(group_at(groups, "fc2", 2), "normalises over axis 2")
    hidden = group_at(groups, "fc2", 2)
    assert {"gamma", "beta", "bias"} <= {w for w, _ in hidden.weights}  # accounted to the hidden size


def _attr(model, node, name):
    n = next(n for n in model.graph.node if n.name == node)
    return next(a for a in n.attribute if a.name == name)


def test_fused_attention_prunes_whole_heads_and_rewrites_num_heads():
    """com.microsoft Attention: the packed QKV weight's three sections lose
    the same heads, the bias with them, and num_heads follows."""
    from tests.helpers.graphs import keep_of, pruned

    g = _graph()
    w = g.rand("Wqkv", (16, 48))
    att = g.add("Attention", ["x", w, g.rand("bqkv", (48,))], domain=MS, name="att", num_heads=4)
    y = g.matmul(att, 16, 5, name="proj")
    model = g.build({"x": ["N", 6, 16]}, {y: ["N", 6, 5]})
    groups = exact(model)
    heads = group_at(groups, "att", 2)
    assert_prunable(heads)
    assert heads.channels == 4 and heads.width == 12  # 4 positions in each of Q, K, V
    m = pruned(groups, keep_of(heads, [0, 2]))
    assert _attr(m, "att", "num_heads").i == 2
    dims = {t.name: list(t.dims) for t in m.graph.initializer}
    assert dims["Wqkv"] == [16, 24] and dims["bqkv"] == [24]


def test_multi_head_attention_prunes_heads_of_q_k_v_and_the_output():
    from tests.helpers.graphs import keep_of, pruned

    g = _graph()
    q, k, v = (g.matmul("x", 16, 16, name=n) for n in ("q", "k", "v"))
    att = g.add("MultiHeadAttention", [q, k, v], domain=MS, name="mha", num_heads=4)
    y = g.matmul(att, 16, 5, name="proj")
    model = g.build({"x": ["N", 6, 16]}, {y: ["N", 6, 5]})
    groups = exact(model)
    heads = group_at(groups, "mha", 2)
    assert_prunable(heads)
    assert {"q", "k", "v", "proj"} <= set(heads.members)
    m = pruned(groups, keep_of(heads, [3]))
    assert _attr(m, "mha", "num_heads").i == 1


def _gqa_graph(rotary: str | None = None):
    """x (1, 6, 32) -> q (4 heads of 8), k, v (2 K/V heads) -> [RotaryEmbedding on q]
    -> GroupQueryAttention -> proj."""
    g = _graph()
    q, k, v = g.matmul("x", 32, 32, name="q"), g.matmul("x", 32, 16, name="k"), g.matmul("x", 32, 16, name="v")
    if rotary is not None:
        pos = g.init("pos", np.arange(6, dtype=np.int64)[None])
        cos, sin = g.rand("cos", (16, 4)), g.rand("sin", (16, 4))
        attrs = {"num_heads": 4} if rotary == "stated" else {}
        q = g.add("RotaryEmbedding", [q, pos, cos, sin], domain=MS, name="rope", **attrs)
    seqlens = g.init("seqlens", np.array([5], dtype=np.int32))
    total = g.init("total", np.array(6, dtype=np.int32))
    att = g.add("GroupQueryAttention", [q, k, v, "", "", seqlens, total], domain=MS, name="gqa",
                outputs=["att", "present_k", "present_v"], num_heads=4, kv_num_heads=2)
    y = g.matmul(att if isinstance(att, str) else att[0], 32, 5, name="proj")
    return g.build({"x": [1, 6, 32]}, {y: [1, 6, 5]})


def test_group_query_attention_prunes_a_kv_head_with_its_query_heads():
    from tests.helpers.graphs import keep_of, pruned

    groups = exact(_gqa_graph())
    unit = group_at(groups, "att", 2)
    assert_prunable(unit)
    assert unit.channels == 2 and {"q", "k", "v", "proj"} <= set(unit.members)
    m = pruned(groups, keep_of(unit, [1]))
    assert _attr(m, "gqa", "num_heads").i == 2 and _attr(m, "gqa", "kv_num_heads").i == 1
    dims = {t.name: list(t.dims) for t in m.graph.initializer}
    assert dims["q_W"][1] == 16 and dims["k_W"][1] == 8


def test_rotary_embedding_keeps_heads_whole():
    from tests.helpers.graphs import keep_of, pruned

    for how in ("stated", "from_cache"):
        groups = exact(_gqa_graph(rotary=how))
        unit = group_at(groups, "att", 2)
        assert_prunable(unit)
        m = pruned(groups, keep_of(unit, [0]))
        if how == "stated":
            assert _attr(m, "rope", "num_heads").i == 2


def test_embed_layer_norm_is_the_hidden_size_pruned_only_with_prune_hidden():
    """The optimizer's fused embeddings: tables, gamma and beta are the
    hidden size's (accounted, not "no rule"); --prune hidden slices them and
    the model still runs (inexact by nature: no oracle)."""
    from onnx import TensorProto

    import onnxprune
    from onnxprune.rewrite.engine import apply
    from tests.helpers.oracle import run

    g = _graph()
    ids = "ids"
    seg = "seg"
    out = g.add("EmbedLayerNormalization",
                [ids, seg, g.rand("word", (20, 16)), g.rand("pos", (8, 16)), g.rand("segtab", (2, 16)),
                 g.rand("gamma", (16,), 0.5, 1.5), g.rand("beta", (16,))],
                domain=MS, name="eln", outputs=["emb", "mask_index"])
    y = g.matmul(out[0] if isinstance(out, list) else out, 16, 5, name="head")
    model = g.build({ids: ([1, 6], TensorProto.INT32), seg: ([1, 6], TensorProto.INT32)}, {y: [1, 6, 5]})
    plain = onnxprune.analyze(model)
    hid = group_at(plain, "emb", 2)
    assert hid.frozen and "inexact (prune with --prune hidden)" in hid.frozen[0]
    assert {"word", "pos", "segtab", "gamma", "beta"} <= {w for w, _ in hid.weights}
    groups = onnxprune.analyze(model, prune="hidden")
    hid = group_at(groups, "emb", 2)
    assert hid.prunable and hid.inexact
    pruned = apply(groups, {hid.id: np.arange(0, 16, 2)})
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert dims["word"] == [20, 8] and dims["gamma"] == [8]
    feeds = {ids: np.array([[1, 5, 7, 2, 0, 3]], dtype=np.int32), seg: np.zeros((1, 6), dtype=np.int32)}
    (out,) = run(pruned, feeds)
    assert out.shape == (1, 6, 5) and np.isfinite(out).all()
