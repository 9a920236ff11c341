"""Gather: indexing along one axis.

Gathering *along* a channel axis picks channels by position, so that axis
freezes; the other axes of the data pass through (a class-token pick
``x[:, 0]`` keeps the hidden channels). An embedding lookup (constant table,
run-time indices) produces a new channel space from the table's last axis.
"""
from __future__ import annotations

from onnxprune.ops.base import Rule
from onnxprune.ops.registry import register


@register("Gather")
class Gather(Rule):
    """Other axes pass through; the gathered axis freezes; an embedding table makes a new group."""

    def analyze(self, node, ctx):
        data, idx, y = node.input[0], node.input[1], node.output[0]
        rd, ri = ctx.view.rank(data), ctx.view.rank(idx)
        if rd is None or ri is None:
            ctx.freeze_node("shapes unknown")
            return
        axis = int(ctx.attr("axis", 0)) % rd
        table = ctx.const_shape(0)
        if table is not None:
            if len(table) == 2 and axis == 0 and ctx.const_shape(1) is None:
                lout = ctx.fresh(y, -1, table[1])
                ctx.weight(0, 1, lout, "out")
            return
        ctx.freeze_tensor(idx, "used as gather indices")
        for ax, lay in ctx.axes(data).items():
            if ax == axis:
                ctx.freeze(lay, "gathered along a channel axis")
            else:
                ctx.set(y, ax if ax < axis else ax + ri - 1, lay)
