"""Spatial ops that treat every channel alike: pooling, Resize/Upsample, Pad."""
from __future__ import annotations

import numpy as np

from onnxprune.ops.base import Rule
from onnxprune.ops.fold import known_ints, partial_value
from onnxprune.ops.registry import register


@register("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
class Pool(Rule):
    """N and C pass through; spatial axes change size and carry no channels."""

    def analyze(self, node, ctx):
        x, y = node.input[0], node.output[0]
        for ax, lay in ctx.axes(x).items():
            if ax >= 2:
                ctx.freeze(lay, "pooled along a channel axis")
        ctx.passthrough(x, y, {0: 0, 1: 1})
        if len(node.output) > 1 and node.output[1]:
            ctx.freeze(ctx.get(x, 1), "MaxPool indices encode the channel position")


@register("Resize", "Upsample")
class Resize(Rule):
    """Axes whose size does not change pass through; a constant ``sizes``
    input names the channel count and is rewritten."""

    def analyze(self, node, ctx):
        x, y = node.input[0], node.output[0]
        lays = ctx.axes(x)
        if not lays:
            return
        sizes_slot = 3 if node.op_type == "Resize" else None
        if sizes_slot is not None and len(node.input) > sizes_slot and node.input[sizes_slot]:
            if ctx.const(sizes_slot) is None:
                ctx.freeze_tensor(x, "Resize sizes computed at run time")
                return
            ctx.state(sizes=sizes_slot)
        for ax, lay in lays.items():
            if ctx.view.static(x, ax) is not None and ctx.view.static(x, ax) == ctx.view.static(y, ax):
                ctx.set(y, ax, lay)
            else:
                ctx.freeze(lay, "resized along a channel axis")

    def rewrite(self, node, index, rw):
        slot = rw.state(index).get("sizes")
        y = node.output[0]
        if slot is None or not rw.changed(y):
            return
        sizes = np.array(rw.view.const(node.input[slot]), dtype=np.int64).copy()
        rank = len(rw.view.shape(y))
        axes = rw.attr(node, "axes") or list(range(rank))
        new = rw.new_shape(y)
        for k, ax in enumerate(axes):
            sizes[k] = new[ax % rank]
        rw.set_const(index, slot, sizes)


@register("Pad")
class Pad(Rule):
    """Padding a channel axis would invent channels: only unpadded axes pass."""

    def analyze(self, node, ctx):
        x, y = node.input[0], node.output[0]
        lays = ctx.axes(x)
        if not lays:
            return
        rank = ctx.view.rank(x)
        if ctx.opset < 11:
            pads = ctx.attr("pads") or ctx.attr("paddings")
            axes = list(range(rank))
        else:
            pads = known_ints(partial_value(ctx.view, node.input[1]))
            axes = ctx.const(3) if len(node.input) > 3 and node.input[3] else list(range(rank))
        if pads is None or axes is None:
            ctx.freeze_tensor(x, "pads computed at run time")
            return
        axes = [int(a) % rank for a in np.asarray(axes).reshape(-1)]
        if len(pads) != 2 * len(axes):
            ctx.freeze_tensor(x, "pads do not match the input rank")
            return
        for ax, lay in lays.items():
            if ax not in axes:
                ctx.set(y, ax, lay)
                continue
            k = axes.index(ax)
            begin, end = pads[k], pads[k + len(axes)]
            if begin is None or end is None:
                ctx.freeze(lay, "channel-axis pads computed at run time")
            elif begin or end:
                ctx.freeze(lay, "padded along a channel axis")
            else:
                ctx.set(y, ax, lay)
