"""onnxruntime's fused contrib ops (``com.microsoft``) that its transformer
optimizer writes: the regular ones get rules, so their channels prune or
freeze for a stated reason instead of "no rule".

- Gelu, QuickGelu, FastGelu (with or without bias), BiasGelu, BiasAdd:
  element-wise, with a per-channel bias sliced like an Add's.
- SkipLayerNormalization, SkipSimplifiedLayerNormalization: the residual Add
  (input, skip, optional bias) fused with a norm over the last axis: the
  operands are one channel space, normalised, so it freezes (the hidden size);
  gamma, beta and bias belong to it (``analyze`` counts them).
- EmbedLayerNormalization: the embedding tables' columns are the hidden
  size, created here and normalised (inexact, ``--prune hidden``).
"""
from __future__ import annotations

from onnxprune.ops.base import Rule
from onnxprune.ops.elementwise import Broadcast, Unary
from onnxprune.ops.registry import register


@register("Gelu", "QuickGelu", domain="com.microsoft")
class ContribUnary(Unary):
    """y = f(x) element by element: every axis passes through."""


@register("FastGelu", "BiasGelu", "BiasAdd", domain="com.microsoft")
class ContribBias(Broadcast):
    """f(x + bias [+ skip]): the operands broadcast like an Add; the bias is per channel."""

    scales: dict = {}


@register("SkipLayerNormalization", "SkipSimplifiedLayerNormalization", domain="com.microsoft")
class SkipNorm(Broadcast):
    """LayerNorm(x + skip + bias) over the last axis: one channel space, normalised, frozen."""

    scales: dict = {}

    def reads_merged_axis(self, node, view, tensor, axis, dim):
        return False  # normalises over its last axis: not position by position

    def analyze(self, node, ctx):
        super().analyze(node, ctx)  # x, skip, gamma, beta, bias share the last axis
        y = node.output[0]
        rank = ctx.view.rank(y)
        if rank is None:
            return
        for ax, lay in ctx.axes(y).items():
            if ax == rank - 1:
                ctx.inexact(lay, f"normalises over axis {ax}: removing channels changes the statistics")
        # the optional 4th output is x + skip + bias, before the norm
        if len(node.output) > 3 and node.output[3]:
            ctx.passthrough(y, node.output[3])


@register("EmbedLayerNormalization", domain="com.microsoft")
class EmbedLayerNorm(Rule):
    """Word + position (+ segment) embeddings, summed and layer-normalised:
    the tables' columns are the hidden size this node creates (each table is
    sliced along axis 1, gamma and beta with them), normalised, so inexact
    (``--prune hidden``). The optional embedding sum output carries it too."""

    def analyze(self, node, ctx):
        y = node.output[0]
        word = ctx.const_shape(2)
        if word is None or len(word) != 2 or ctx.view.rank(y) != 3:
            ctx.freeze_node("EmbedLayerNormalization with tables computed at run time")
            return
        lay = ctx.fresh(y, 2, word[1])
        if lay is None:
            return
        for slot in (2, 3, 4):  # word, position, segment tables: (rows, hidden)
            if slot < len(node.input) and node.input[slot]:
                ctx.weight(slot, 1, lay, "out" if slot == 2 else "param")
        for slot, role in ((5, "scale"), (6, "param")):
            if slot < len(node.input) and node.input[slot]:
                ctx.weight(slot, 0, lay, role)
        ctx.inexact(lay, "normalises over axis 2: removing channels changes the statistics")
        if len(node.output) > 2 and node.output[2]:
            ctx.set(node.output[2], 2, lay)
