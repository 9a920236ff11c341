"""Ops that select or scatter along one axis by value or by run-time index.

Along that axis they mix channel positions (a channel removed would change
which elements are picked, or where they land), so it freezes with its
reason; the other axes pass through where the op keeps them.
"""
from __future__ import annotations

from onnxprune.ops.base import Rule
from onnxprune.ops.registry import register


@register("TopK")
class TopK(Rule):
    """The sorted axis freezes; other axes pass to values and indices."""

    def analyze(self, node, ctx):
        x = node.input[0]
        rank = ctx.view.rank(x)
        if rank is None:
            ctx.freeze_node("input rank unknown")
            return
        axis = int(ctx.attr("axis", -1)) % rank
        for ax, lay in ctx.axes(x).items():
            if ax == axis:
                ctx.freeze(lay, f"TopK selects along axis {ax} (a channel axis)")
                continue
            for out in node.output:
                if out:
                    ctx.set(out, ax, lay)


@register("CumSum")
class CumSum(Rule):
    """The summed axis freezes; other axes pass through."""

    def analyze(self, node, ctx):
        x, y = node.input[0], node.output[0]
        axis = ctx.const(1)
        rank = ctx.view.rank(x)
        if axis is None or rank is None:
            ctx.freeze_tensor(x, "cumulative-sum axis computed at run time")
            return
        axis = int(axis.reshape(-1)[0]) % rank
        for ax, lay in ctx.axes(x).items():
            if ax == axis:
                ctx.freeze(lay, f"cumulative sum along axis {ax} (a channel axis)")
            else:
                ctx.set(y, ax, lay)


@register("GatherElements", "GatherND", "ScatterElements", "ScatterND", "Scatter", "OneHot",
          "NonZero", "Compress", "Unique", "NonMaxSuppression", "ReverseSequence")
class ByIndex(Rule):
    """Picks or places elements by run-time indices: every channel axis it touches freezes."""

    def analyze(self, node, ctx):
        ctx.freeze_node(f"{node.op_type} moves elements by run-time indices, so channel "
                        f"positions do not survive it")
