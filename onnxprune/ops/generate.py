"""Ops that make a tensor from values rather than from channels: Range,
ConstantOfShape, EyeLike, random generators. Their inputs are shape vectors
or scalars, which carry no channel space, and their outputs start none: a
size they copy from a channel tensor reaches them through Shape, whose rule
freezes that channel count."""
from __future__ import annotations

from onnxprune.ops.base import Rule
from onnxprune.ops.fold import literal_source
from onnxprune.ops.registry import register


@register("Range", "RandomNormal", "RandomUniform", "Size")
class Generate(Rule):
    """Makes a tensor from shape values: no channel flows through it."""

    def analyze(self, node, ctx):
        for name in node.input:
            if name and ctx.axes(name):
                ctx.freeze_tensor(name, f"its values become the {node.op_type} output's content")


@register("EyeLike", "RandomNormalLike", "RandomUniformLike")
class Like(Rule):
    """Makes a tensor of another's shape: its channel axes would change size with it."""

    def analyze(self, node, ctx):
        ctx.freeze_tensor(node.input[0], f"{node.op_type} copies its shape into a new tensor")


@register("ConstantOfShape")
class ConstantOfShape(Rule):
    """One value everywhere: an axis sized by a literal of its shape vector takes its readers' channels (the literal is rewritten)."""

    def analyze(self, node, ctx):
        # torch exports an RNN's zero initial state as
        # ConstantOfShape(Concat([layers], [batch], [hidden])): any subset of a
        # constant tensor is the same constant, so an axis whose size is stated
        # as a literal can follow whatever channels its readers have, as long
        # as the literal is rewritten with them.
        shape, y = node.input[0], node.output[0]
        if ctx.axes(shape):
            ctx.freeze_tensor(shape, "its values become the ConstantOfShape output's shape")
        rank = ctx.view.rank(y)
        literals = {}
        for ax in range(rank or 0):
            size = ctx.view.static(y, ax)
            if size is None or size < 2:
                continue
            src = literal_source(ctx.view, shape, ax)
            if src is not None:
                ctx.fresh(y, ax, size)
                literals[ax] = src
        if literals:
            ctx.state(literals=literals)

    def rewrite(self, node, index, rw):
        if rw.changed(node.output[0]):
            rw.rewrite_literals(index, node.output[0])
