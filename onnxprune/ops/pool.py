"""Spatial ops that treat every channel alike: pooling, Resize/Upsample, Pad."""
from __future__ import annotations

import numpy as np

from onnxprune.core.graph import set_attr
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
    """Constant padding along a channel axis adds channels that hold the pad
    value: the output's channels are the new ones before, the input's, and
    the new ones after (a ResNet shortcut that pads its channels with zeros
    to match the next stage). The added channels are atoms of their own,
    pruned with whatever they are added to; the pads are rewritten to the
    counts kept. Reflect, edge and wrap padding copy channels: they freeze."""

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
        mode = ctx.attr("mode", "constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        padded = {}
        for ax, lay in lays.items():
            if ax not in axes:
                ctx.set(y, ax, lay)
                continue
            k = axes.index(ax)
            begin, end = pads[k], pads[k + len(axes)]
            if begin is None or end is None:
                ctx.freeze(lay, "channel-axis pads computed at run time")
            elif not begin and not end:
                ctx.set(y, ax, lay)
            elif mode != "constant":
                ctx.freeze(lay, f"{mode} padding along a channel axis copies channels")
            elif begin < 0 or end < 0:
                ctx.freeze(lay, "cropped along a channel axis (negative pads)")
            elif ctx.opset >= 11 and ctx.const(1) is None:
                ctx.freeze(lay, "padded along a channel axis by pads computed at run time")
            else:
                before = ctx.atoms.plain(begin) if begin else ()
                after = ctx.atoms.plain(end) if end else ()
                ctx.set(y, ax, (*before, *lay, *after))
                padded[ax] = (k, before, after)
        if padded:
            ctx.state(padded=padded, n_axes=len(axes), in_attr=ctx.opset < 11)

    def rewrite(self, node, index, rw):
        state = rw.state(index)
        if not state.get("padded"):
            return
        n = state["n_axes"]
        if state["in_attr"]:
            pads = np.array(rw.attr(node, "pads") or rw.attr(node, "paddings"), dtype=np.int64)
        else:
            pads = np.array(rw.current(index, 1), dtype=np.int64).reshape(-1).copy()
        for k, before, after in state["padded"].values():
            pads[k] = rw.size(before) if before else 0
            pads[k + n] = rw.size(after) if after else 0
        if state["in_attr"]:
            set_attr(node, "pads" if rw.attr(node, "pads") is not None else "paddings", [int(v) for v in pads])
        else:
            rw.set_const(index, 1, pads)
