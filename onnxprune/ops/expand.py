"""Expand and Tile: repeat a tensor along some axes.

Expand broadcasts size-1 axes to a target shape; an axis that keeps its size
passes its channels through, and a constant target that names the channel
count is rewritten (grouped-query attention's ``repeat_kv`` expands a new
axis next to the K/V heads, which then merge by Reshape). An axis it
broadcasts from an input without channels holds n copies of one slice, so
any k of them are the same copies: where the target states n as a literal,
the axis starts a channel space its readers' channels join (Paddle's zero
initial RNN state, ``Expand(0.0, Concat([layers], [batch], [hidden]))``),
and the literal is rewritten. Tile repeats whole
axes: ``r`` copies of a channel space end to end are the same space repeated
along an outer index, which the layout algebra expresses directly.
"""
from __future__ import annotations

import numpy as np

from onnxprune.ops.base import Rule
from onnxprune.ops.fold import known_ints, literal_source, partial_value
from onnxprune.ops.registry import register
from onnxprune.ops.shape import check_dims


@register("Expand")
class Expand(Rule):
    """Axes that keep their size pass through; a constant target naming a channel count is rewritten."""

    def analyze(self, node, ctx):

        x, y = node.input[0], node.output[0]
        lays = ctx.axes(x)
        rx, ry = ctx.view.rank(x), ctx.view.rank(y)
        raw = partial_value(ctx.view, node.input[1])
        if not lays:
            check_dims(ctx, raw, y, lambda k: None, "expand")  # a count read elsewhere lands here
            names, literals = self._broadcast(node, ctx, raw, rx, ry)
            if names or literals:
                ctx.state(entries=names, literals=literals)
            return
        target = known_ints(raw)
        if rx is None or ry is None or target is None:
            ctx.freeze_tensor(x, "expand to a shape computed at run time")
            return
        names, literals, placed = {}, {}, {}
        for ax, lay in lays.items():
            to = ax + (ry - rx)
            k = to - (ry - len(target))
            entry = target[k] if 0 <= k < len(target) else 1
            if ctx.view.static(x, ax) != ctx.view.static(y, to):
                ctx.freeze(lay, f"size of axis {ax} changes from '{x}' to '{y}'")
                continue
            if entry is None:
                ctx.freeze(lay, "expand to a shape computed at run time names the channel count")
                continue
            ctx.set(y, to, lay)
            if entry > 1:
                placed[k] = to
        offset = ry - len(target)
        dynamic = check_dims(ctx, raw, y, lambda k: k + offset, "expand")  # they follow the count themselves
        for k, to in placed.items():
            if k in dynamic:
                continue
            if ctx.const(1) is not None:
                names[k] = to  # the target states this channel count: rewrite it
                continue
            src = ctx.literal(node.input[1], k, ctx.get(y, to))  # Concat(..., [heads], ...)
            if src is None:
                ctx.freeze(ctx.get(y, to), "expand to a shape computed at run time names the channel count")
            else:
                literals[to] = src
        if names or literals:
            ctx.state(entries=names, literals=literals)

    @staticmethod
    def _broadcast(node, ctx, raw, rx, ry) -> tuple[dict, dict]:
        """For an input without channels: output axes the Expand broadcasts
        from size 1 to a stated count n > 1, each a channel space of n copies.
        (Not beside an input's channels: ``repeat_kv``'s copies of each head
        stay one block the Reshape after it merges with the heads.) ->
        (target entry -> axis, for a constant target; axis -> literal source,
        for one built at run time), as the rewrite takes them."""
        target = known_ints(raw) if raw is not None else None
        if rx is None or ry is None or target is None:
            return {}, {}
        names, literals = {}, {}
        x, y, offset = node.input[0], node.output[0], ry - len(target)
        constant = ctx.const(1) is not None
        for k, n in enumerate(target):
            to, ax = k + offset, k + offset - (ry - rx)
            if n is None or n < 2 or to < 0 or (ax >= 0 and ctx.view.static(x, ax) != 1):
                continue
            if constant:
                ctx.fresh(y, to, n)
                names[k] = to
            elif literal_source(ctx.view, node.input[1], k, shared=set()) is not None:
                literals[to] = ctx.literal(node.input[1], k, ctx.fresh(y, to, n))
        return names, literals

    def rewrite(self, node, index, rw):
        entries = rw.state(index).get("entries")
        if not rw.changed(node.output[0]):
            return
        rw.rewrite_literals(index, node.output[0])
        if not entries:
            return
        shape = np.array(rw.view.const(node.input[1]), dtype=np.int64).copy()
        new = rw.new_shape(node.output[0])
        for k, to in entries.items():
            shape[k] = new[to]
        rw.set_const(index, 1, shape)


@register("Tile")
class Tile(Rule):
    """Repeated axes carry the same channels r times over (an outer index); repeats never change."""

    def analyze(self, node, ctx):
        x, y = node.input[0], node.output[0]
        lays = ctx.axes(x)
        if not lays:
            return
        reps = known_ints(partial_value(ctx.view, node.input[1]))
        if reps is None or len(reps) != ctx.view.rank(x):
            ctx.freeze_tensor(x, "tile repeats computed at run time")
            return
        for ax, lay in lays.items():
            r = reps[ax]
            if r is None:
                ctx.freeze(lay, "tile repeats along a channel axis computed at run time")
            elif r == 1:
                ctx.set(y, ax, lay)
            else:
                rep = ctx.atoms.repeated(lay, r)
                if rep is None:
                    ctx.freeze(lay, "a concatenated channel space is tiled")
                else:
                    ctx.set(y, ax, rep)
