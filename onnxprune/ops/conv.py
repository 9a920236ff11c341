"""Conv and ConvTranspose: dense, depthwise and grouped.

Dense (group=1): the input channels are a linear input of the weight ("in"),
the output channels are a new prunable space. Grouped (group=g>1): input
group j feeds only output group j, so the layer is channel-wise at the
granularity of groups; the pruner removes whole groups (the input space is
coarsened into g blocks) and rewrites ``group``. Depthwise is the case
``C_in/g == 1``: channels couple one to one (times the depth multiplier).
"""
from __future__ import annotations

from onnxprune.core.graph import set_attr
from onnxprune.core.layout import Segment
from onnxprune.ops.base import LinearForm, Rule, attr_of, numel
from onnxprune.ops.registry import register


@register("Conv")
class Conv(Rule):
    """Output channels are a new group; input channels are its linear input (whole groups when grouped)."""

    # ConvTranspose keeps W as (C_in, C_out/g, k...): the axes swap roles.
    in_axis, out_axis = 1, 0
    bias_input = 2  # ConvInteger has no bias (its input 2 is the activations' zero point)

    def analyze(self, node, ctx):
        x, y = node.input[0], node.output[0]
        w = ctx.const_shape(1)
        if w is None:
            ctx.freeze_node("weight is computed at run time; its channels stay unpruned")
            return
        g = int(ctx.attr("group", 1))
        if self.in_axis == 1:
            cin, cout = w[1] * g, w[0]
        else:
            cin, cout = w[0], w[1] * g
        lin = ctx.require(x, 1, cin)
        b = self.bias_input
        has_bias = b is not None and len(node.input) > b and node.input[b]
        if g == 1:
            ctx.weight(1, self.in_axis, lin, "in")
            lout = ctx.fresh(y, 1, cout)
            ctx.weight(1, self.out_axis, lout, "out")
            if has_bias:
                ctx.weight(2, 0, lout, "out")
        else:
            groups = ctx.atoms.new(g)
            ctx.unify(lin, (Segment(groups, 1, cin // g),))
            lout = (Segment(groups, 1, cout // g),)
            ctx.set(y, 1, lout)
            # W's group-major axis follows the groups; the other axis stays whole.
            ctx.weight(1, 0, lout if self.in_axis == 1 else lin, "param")
            if has_bias:
                ctx.weight(2, 0, lout, "param")
            ctx.state(per_group=cin // g)
        for ax, lay in ctx.axes(x).items():
            if ax == 0:
                ctx.set(y, 0, lay)
            elif ax >= 2:
                ctx.freeze(lay, f"convolved along axis {ax}")

    def rewrite(self, node, index, rw):
        g = int(rw.attr(node, "group", 1))
        if g == 1:
            return
        lin = rw.layout(node.input[0], 1)
        if lin is not None:
            set_attr(node, "group", rw.size(lin) // rw.state(index)["per_group"])

    def macs(self, node, view):
        w = view.const_shape(node.input[1]) if len(node.input) > 1 else None
        out = view.sizes(node.output[0])
        if w is None:
            return 0  # a weight computed at run time: the rule froze it, nothing to count
        if out is None:
            return None
        # Every output position of a Conv sums over (C_in/g) x kernel taps.
        return numel(out) * numel(w[1:])

    def linear(self, node, view):
        if view.const_shape(node.input[1]) is None:
            return None
        g = int(attr_of(node, view, "group", 1))
        return LinearForm(weight=1, in_axis=self.in_axis, out_axis=self.out_axis, x=0, x_axis=1,
                          y_axis=1, bias=2, dense=g == 1)


@register("ConvTranspose")
class ConvTranspose(Conv):
    """Like Conv, with the weight laid out (C_in, C_out/g, k...)."""

    in_axis, out_axis = 0, 1

    def macs(self, node, view):
        w = view.const_shape(node.input[1]) if len(node.input) > 1 else None
        x = view.sizes(node.input[0])
        if w is None:
            return 0
        if x is None:
            return None
        # Every input position is scattered into (C_out/g) x kernel taps.
        return numel(x) * numel(w[1:])

