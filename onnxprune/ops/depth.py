"""DepthToSpace and SpaceToDepth: channels traded for spatial blocks.

DepthToSpace with block b turns every output channel into b*b input channels:
in CRD mode those are consecutive (``c * b*b + k``: blocks of b*b, as grouped
convs are pruned), in DCR mode they are spread (``k * C' + c``: the output
space repeated b*b times over). SpaceToDepth is the inverse of DCR. Either way
an output channel and its input channels are kept or removed together, and
the block size never changes.
"""
from __future__ import annotations

from onnxprune.core.layout import Segment
from onnxprune.ops.base import Rule
from onnxprune.ops.registry import register


@register("DepthToSpace")
class DepthToSpace(Rule):
    """Each output channel owns b*b input channels (a block in CRD mode, a repeat in DCR mode)."""

    def analyze(self, node, ctx):
        x, y = node.input[0], node.output[0]
        lays = ctx.axes(x)
        b = int(ctx.attr("blocksize"))
        c = ctx.view.static(x, 1)
        if c is None or c % (b * b):
            ctx.freeze_node("channel count unknown")
            return
        for ax, lay in lays.items():
            if ax >= 2:
                ctx.freeze(lay, f"moved between space and depth along axis {ax}")
            elif ax == 0:
                ctx.set(y, 0, lay)
        lin = lays.get(1)
        if lin is None:
            return
        out = ctx.atoms.new(c // (b * b))
        crd = str(ctx.attr("mode", "DCR")).upper() == "CRD"
        ctx.unify(lin, (Segment(out, 1, b * b),) if crd else (Segment(out, b * b, 1),))
        ctx.set(y, 1, (Segment(out),))


@register("SpaceToDepth")
class SpaceToDepth(Rule):
    """Each input channel becomes b*b output channels (``k * C + c``: the space repeated b*b times)."""

    def analyze(self, node, ctx):
        x, y = node.input[0], node.output[0]
        b = int(ctx.attr("blocksize"))
        for ax, lay in ctx.axes(x).items():
            if ax >= 2:
                ctx.freeze(lay, f"moved between space and depth along axis {ax}")
            elif ax == 0:
                ctx.set(y, 0, lay)
            else:
                rep = ctx.atoms.repeated(lay, b * b)
                if rep is None:
                    ctx.freeze(lay, "a concatenated channel space is moved to depth")
                else:
                    ctx.set(y, 1, rep)
