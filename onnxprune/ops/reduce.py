"""Reductions and soft-maxes: fine over spatial axes, frozen over a channel axis
(removing a channel would change the sum / max / normaliser)."""
from __future__ import annotations

import numpy as np

from onnxprune.ops.base import Rule
from onnxprune.ops.registry import register


@register("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1",
          "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin")
class Reduce(Rule):
    """Axes not reduced pass through; a reduced channel axis freezes."""

    def reduced_axes(self, node, ctx, rank):
        if node.op_type in ("ArgMax", "ArgMin"):
            return {int(ctx.attr("axis", 0)) % rank}
        axes = ctx.attr("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = ctx.const(1)
            if axes is None:
                return None
        if axes is None or len(np.asarray(axes).reshape(-1)) == 0:
            if int(ctx.attr("noop_with_empty_axes", 0)):
                return set()
            return set(range(rank))
        return {int(a) % rank for a in np.asarray(axes).reshape(-1)}

    def analyze(self, node, ctx):
        x, y = node.input[0], node.output[0]
        lays = ctx.axes(x)
        if not lays:
            return
        rank = ctx.view.rank(x)
        axes = self.reduced_axes(node, ctx, rank)
        if axes is None:
            ctx.freeze_tensor(x, "reduction axes computed at run time")
            return
        keep = int(ctx.attr("keepdims", 1))
        mapping, k = {}, 0
        for ax in range(rank):
            if ax in axes:
                if keep:
                    k += 1
                continue
            mapping[ax] = k
            k += 1
        for ax, lay in lays.items():
            if ax in axes:
                if node.op_type == "ReduceMean":  # a decomposed LayerNorm / RMSNorm: the hidden size
                    ctx.inexact(lay, f"averaged over axis {ax} (a channel axis)")
                else:
                    ctx.freeze(lay, f"reduced over axis {ax} (a channel axis)")
        ctx.passthrough(x, y, mapping)


@register("Softmax", "LogSoftmax", "Hardmax")
class Softmax(Rule):
    """Axes not normalised over pass through; the normalised axis freezes."""

    def reads_merged_axis(self, node, view, tensor, axis, dim):
        return node.op_type in ("Softmax", "LogSoftmax")

    def analyze(self, node, ctx):
        x = node.input[0]
        lays = ctx.axes(x)
        if not lays:
            return
        rank = ctx.view.rank(x)
        if ctx.opset >= 13:
            over = {int(ctx.attr("axis", -1)) % rank}
        else:
            over = set(range(int(ctx.attr("axis", 1)) % rank, rank))
        for ax, lay in lays.items():
            if ax in over:
                ctx.freeze(lay, f"{node.op_type} normalises over axis {ax}")
        ctx.passthrough(x, node.output[0])
