"""Ops that make a tensor from values rather than from channels: Range,
ConstantOfShape, EyeLike, random generators. Their inputs are shape vectors
or scalars, which carry no channel space, and their outputs start none: a
size they copy from a channel tensor reaches them through Shape, whose rule
freezes that channel count."""
from __future__ import annotations

from .base import Rule
from .registry import register


@register("Range", "ConstantOfShape", "RandomNormal", "RandomUniform", "Size")
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
