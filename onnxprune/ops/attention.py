"""onnxruntime's fused attention (``com.microsoft``): Attention and
MultiHeadAttention, with the head count as an attribute.

A head is one unit over every tensor it touches: its ``head_size`` positions
of Q, K and V (and of the packed QKV weight and bias, section by section) and
of the output. Removing heads slices those and rewrites ``num_heads`` (and
``qkv_hidden_sizes``). Inputs this rule cannot slice per head freeze the
heads: a past K/V cache or present outputs, an attention bias computed at run
time, packed K/V (5-D) or a relative position bias.
"""
from __future__ import annotations

from onnxprune.core.graph import set_attr
from onnxprune.core.layout import Segment
from onnxprune.ops.base import Rule, attr_of
from onnxprune.ops.registry import register


def _heads(ctx, n: int, size: int):
    """A fresh head atom of ``n`` units, as the layout of an axis of
    ``size`` positions (n blocks of size/n), or None when it does not divide."""
    if n <= 0 or size % n:
        return None, None
    h = ctx.atoms.new(n)
    return h, (Segment(h, 1, size // n),)


def _sections(h: int, sizes) -> tuple:
    """The packed layout of Q, K, V sections, each n blocks of its head size."""
    return tuple(Segment(h, 1, s) for s in sizes)


class _HeadsRule(Rule):
    def _freeze_extras(self, node, ctx, lays, slots: dict) -> bool:
        """Inputs/outputs beyond the supported ones: freeze the heads."""
        for slot, what in slots.items():
            if slot < len(node.input) and node.input[slot]:
                for lay in lays:
                    ctx.freeze(lay, f"{node.op_type} with {what}: its heads are not sliced")
                return True
        if any(o for o in node.output[1:]):
            for lay in lays:
                ctx.freeze(lay, f"{node.op_type} returns present K/V: its heads are not sliced")
            return True
        return False

    def rewrite(self, node, index, rw):
        st = rw.state(index)
        if "heads" not in st or not rw.changed(node.output[0]):
            return
        n = rw.size(st["heads"])
        set_attr(node, "num_heads", int(n))
        sizes = rw.attr(node, "qkv_hidden_sizes")
        if sizes is not None:
            full = rw.full_size(st["heads"])
            set_attr(node, "qkv_hidden_sizes", [int(s) // full * n for s in sizes])


@register("MultiHeadAttention", domain="com.microsoft")
class MultiHeadAttention(_HeadsRule):
    """Q, K, V (3-D, already projected) split into num_heads: heads are units."""

    def analyze(self, node, ctx):
        q = node.input[0]
        k = node.input[1] if len(node.input) > 1 else ""
        v = node.input[2] if len(node.input) > 2 else ""
        y = node.output[0]
        n = int(ctx.attr("num_heads", 0))
        ranks = [ctx.view.rank(t) for t in (q, k, v) if t]
        if not k or not v or any(r != 3 for r in ranks):
            for t in (q, k, v):
                if t:
                    ctx.freeze_tensor(t, "MultiHeadAttention with packed Q/K/V: its heads are not sliced")
            return
        dq, dv = ctx.view.static(q, 2), ctx.view.static(v, 2)
        if dq is None or dv is None or ctx.view.static(k, 2) != dq:
            ctx.freeze_node("MultiHeadAttention with sizes unknown")
            return
        h, lq = _heads(ctx, n, dq)
        _, lv = _heads(ctx, n, dv) if h is not None else (None, None)
        if h is None or lv is None:
            ctx.freeze_node(f"num_heads {n} does not divide the hidden sizes {dq}, {dv}")
            return
        lv = (Segment(h, 1, dv // n),)
        for t, lay in ((q, lq), (k, lq), (v, lv)):
            ctx.unify(ctx.require(t, 2), lay)
        ctx.set(y, 2, lv)
        # bias: Q, K, V sections; key_padding_mask has no heads axis
        if len(node.input) > 3 and node.input[3]:
            ctx.weight(3, 0, _sections(h, (dq // n, dq // n, dv // n)), "param")
        if self._freeze_extras(node, ctx, [lq], {5: "an attention bias", 6: "a past key",
                                                   7: "a past value"}):
            return
        ctx.state(heads=(Segment(h, 1, 1),))

    def macs(self, node, view):
        q, k, v = (view.sizes(t) if t else None for t in node.input[:3])
        if q is None or k is None or v is None or len(q) != 3 or len(k) != 3:
            return None
        return q[0] * q[1] * k[1] * (q[2] + v[2])


@register("Attention", domain="com.microsoft")
class Attention(_HeadsRule):
    """x @ W_qkv + b split into num_heads, attention, heads concatenated:
    the packed weight's Q, K and V column sections are sliced head by head."""

    def analyze(self, node, ctx):
        x, y = node.input[0], node.output[0]
        n = int(ctx.attr("num_heads", 0))
        w = ctx.const_shape(1)
        if w is None or len(w) != 2 or ctx.view.rank(x) != 3:
            ctx.freeze_node("Attention with weights computed at run time")
            return
        sizes = ctx.attr("qkv_hidden_sizes")
        sizes = [int(s) for s in sizes] if sizes is not None else [w[1] // 3] * 3
        if sum(sizes) != w[1] or sizes[0] != sizes[1] or n <= 0 or any(s % n for s in sizes):
            ctx.freeze_node(f"Attention: num_heads {n} does not divide the sections {sizes}")
            return
        h = ctx.atoms.new(n)
        packed = _sections(h, [s // n for s in sizes])
        ctx.weight(1, 1, packed, "out")
        ctx.weight(2, 0, packed, "param")
        ctx.weight(1, 0, ctx.require(x, 2), "in")
        ctx.set(y, 2, (Segment(h, 1, sizes[2] // n),))
        if self._freeze_extras(node, ctx, [packed], {4: "a past K/V", 5: "an attention bias",
                                                       6: "a past sequence length"}):
            return
        ctx.state(heads=(Segment(h, 1, 1),))

    def macs(self, node, view):
        """The QKV projection, then Q K^T and the weighted sum of V (K's
        positions: the sequence again, self-attention)."""
        x, w = view.sizes(node.input[0]), view.const_shape(node.input[1])
        if x is None or w is None or len(x) != 3:
            return None
        sizes = attr_of(node, view, "qkv_hidden_sizes")
        q, v = (int(sizes[0]), int(sizes[2])) if sizes is not None else (w[1] // 3, w[1] // 3)
        return x[0] * x[1] * x[2] * w[1] + x[0] * x[1] * x[1] * (q + v)


@register("GroupQueryAttention", domain="com.microsoft")
class GroupQueryAttention(_HeadsRule):
    """Grouped-query attention: a unit is one K/V head with the num_heads /
    kv_num_heads query heads it serves (contiguous in Q). Q, K, V (or packed
    QKV), the output and the past/present caches (B, kv_heads, S, head) lose
    whole units; num_heads and kv_num_heads are rewritten."""

    def analyze(self, node, ctx):
        n, kv = int(ctx.attr("num_heads", 0)), int(ctx.attr("kv_num_heads", 0))
        q = node.input[0]
        k = node.input[1] if len(node.input) > 1 else ""
        v = node.input[2] if len(node.input) > 2 else ""
        dq = ctx.view.static(q, 2) if ctx.view.rank(q) == 3 else None
        if kv <= 0 or n <= 0 or n % kv or dq is None:
            ctx.freeze_node(f"GroupQueryAttention with num_heads {n}, kv_num_heads {kv} or sizes unknown")
            return
        rep = n // kv
        packed = not k
        head = dq // (n + 2 * kv) if packed else dq // n
        if head <= 0 or (packed and dq != (n + 2 * kv) * head) or (not packed and dq != n * head):
            ctx.freeze_node("GroupQueryAttention sizes do not match its head counts")
            return
        u = ctx.atoms.new(kv)
        lq, lkv = (Segment(u, 1, rep * head),), (Segment(u, 1, head),)
        if packed:
            ctx.unify(ctx.require(q, 2), (Segment(u, 1, rep * head), Segment(u, 1, head), Segment(u, 1, head)))
        else:
            if ctx.view.static(k, 2) != kv * head or ctx.view.static(v, 2) != kv * head:
                ctx.freeze_node("GroupQueryAttention key/value sizes do not match kv_num_heads")
                return
            ctx.unify(ctx.require(q, 2), lq)
            ctx.unify(ctx.require(k, 2), lkv)
            ctx.unify(ctx.require(v, 2), lkv)
        ctx.set(node.output[0], 2, lq)
        one = (Segment(u, 1, 1),)  # the caches: (batch, kv heads, sequence, head)
        for slot in (3, 4):
            if slot < len(node.input) and node.input[slot]:
                if ctx.view.rank(node.input[slot]) != 4:
                    ctx.freeze(lkv, "GroupQueryAttention with a past cache that is not (B, kv_heads, S, head)")
                    return
                ctx.unify(ctx.require(node.input[slot], 1), one)
        for out in node.output[1:3]:
            if out:
                ctx.set(out, 1, one)
        for slot, what in ((10, "an attention bias"), (11, "head sinks")):
            if slot < len(node.input) and node.input[slot]:
                ctx.freeze(lkv, f"GroupQueryAttention with {what}: its heads are not sliced")
                return
        ctx.state(heads=one, rep=rep)

    def rewrite(self, node, index, rw):
        st = rw.state(index)
        if "heads" not in st or not rw.changed(node.output[0]):
            return
        kv = rw.size(st["heads"])
        set_attr(node, "kv_num_heads", int(kv))
        set_attr(node, "num_heads", int(kv * st["rep"]))


@register("RotaryEmbedding", domain="com.microsoft")
class RotaryEmbedding(Rule):
    """Rotates pairs of positions inside each head: heads pass through
    whole (a 3-D input is num_heads blocks of head_size, and num_heads is
    rewritten); the head size itself is frozen."""

    def analyze(self, node, ctx):
        x, y = node.input[0], node.output[0]
        rank = ctx.view.rank(x)
        if rank == 4:  # (B, heads, S, head) or (B, S, heads, head): which one is not stated
            lays = ctx.axes(x)
            for ax, lay in lays.items():
                ctx.freeze(lay, "RotaryEmbedding on a 4-D input: the heads axis is not stated")
            ctx.passthrough(x, y)
            return
        n = int(ctx.attr("num_heads", 0))
        size = ctx.view.static(x, 2) if rank == 3 else None
        lay = ctx.get(x, 2) if rank == 3 else None
        if lay is None:
            ctx.passthrough(x, y)
            return
        stated = n > 0
        cos = ctx.const_shape(2)
        if not stated and cos is not None and len(cos) == 2 and not int(ctx.attr("rotary_embedding_dim", 0)):
            n = size // (2 * cos[1]) if size else 0  # head size = 2 x the cache's width
        if n <= 0 or size is None or size % n:
            ctx.freeze(lay, "RotaryEmbedding without num_heads: where heads start is not stated")
            ctx.passthrough(x, y)
            return
        h = ctx.atoms.new(n)
        ctx.unify(lay, (Segment(h, 1, size // n),))
        ctx.passthrough(x, y)
        ctx.state(heads=(Segment(h, 1, 1),), stated=stated)

    def rewrite(self, node, index, rw):
        st = rw.state(index)
        if st.get("stated") and rw.changed(node.output[0]):
            set_attr(node, "num_heads", int(rw.size(st["heads"])))


__all__ = ["Attention", "MultiHeadAttention", "GroupQueryAttention", "RotaryEmbedding"]
