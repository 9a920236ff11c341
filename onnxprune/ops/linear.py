"""Gemm and MatMul: neurons of MLPs and feature consumers of flattened maps.

With a constant weight, the contracted axis of the activation is a linear
input ("in") and the output feature axis is a new prunable space. Other axes
of the activation (batch, sequence, even NCHW channels under a MatMul on the
last axis) pass through. A MatMul of two activations contracts an axis no
weight can mask; that axis freezes until a rule for it exists.
"""
from __future__ import annotations

from onnxprune.ops.base import LinearForm, Rule, attr_of, broadcast_keeps_merged, numel
from onnxprune.ops.registry import register


@register("Gemm")
class Gemm(Rule):
    """Output features are a new group; the contracted input features are its linear input."""

    def analyze(self, node, ctx):
        a, y = node.input[0], node.output[0]
        b = ctx.const_shape(1)
        ta, tb = int(ctx.attr("transA", 0)), int(ctx.attr("transB", 0))
        if b is None or ctx.const_shape(0) is not None or len(b) != 2:
            ctx.freeze_node("needs a constant weight B and an activation A")
            return
        k_axis, n_axis = (1, 0) if tb else (0, 1)
        lin = ctx.require(a, 0 if ta else 1, b[k_axis])
        ctx.weight(1, k_axis, lin, "in")
        n = b[n_axis]
        lout = ctx.fresh(y, 1, n)
        ctx.weight(1, n_axis, lout, "out")
        if len(node.input) > 2 and node.input[2] and n > 1:
            c = node.input[2]
            if ctx.view.is_const(c):
                cv = ctx.const_shape(2)
                if len(cv) >= 1 and cv[-1] == n:
                    ctx.weight(2, len(cv) - 1, lout, "out")
            elif ctx.view.static(c, -1) == n:
                ctx.unify(lout, ctx.require(c, -1))
        rows = ctx.get(a, 1 if ta else 0)
        if rows is not None:
            ctx.set(y, 0, rows)

    def macs(self, node, view):
        a, out = view.sizes(node.input[0]), view.sizes(node.output[0])
        if a is None or out is None or len(a) != 2:
            return None
        return numel(out) * (a[0] if int(attr_of(node, view, "transA", 0)) else a[1])

    def linear(self, node, view):
        b = view.const_shape(node.input[1])
        if b is None or len(b) != 2 or view.is_const(node.input[0]):
            return None
        tb = int(attr_of(node, view, "transB", 0))
        if len(node.input) > 2 and node.input[2]:
            c = view.const_shape(node.input[2])
            n = b[0] if tb else b[1]
            if c is None or not c or c[-1] != n or any(d != 1 for d in c[:-1]):
                return None  # a bias that is not one value per neuron: nothing to fold into
        return LinearForm(weight=1, in_axis=1 if tb else 0, out_axis=0 if tb else 1, x=0,
                          x_axis=0 if int(attr_of(node, view, "transA", 0)) else 1, y_axis=1,
                          bias=2, bias_scale=float(attr_of(node, view, "beta", 1.0)))


@register("MatMul")
class MatMul(Rule):
    """With a constant operand: new output features fed by the contracted axis; batch axes pass through."""

    def reads_merged_axis(self, node, view, tensor, axis, dim):
        rank = view.rank(tensor)
        if node.op_type != "MatMul" or rank is None or axis >= rank - 2:
            return False  # a contracted or output row axis, not a batch axis
        return broadcast_keeps_merged(node, view, tensor, axis, dim)

    def analyze(self, node, ctx):
        a, b, y = node.input[0], node.input[1], node.output[0]
        av, bv = ctx.const_shape(0), ctx.const_shape(1)
        view = ctx.view
        ra, rb, ry = view.rank(a), view.rank(b), view.rank(y)
        if ry is None or (av is None and ra is None) or (bv is None and rb is None):
            ctx.freeze_node("shapes unknown")
            return
        if bv is not None and av is None and len(bv) in (1, 2):
            lin = ctx.require(a, -1, bv[0])
            ctx.weight(1, 0, lin, "in")
            if len(bv) == 2:
                lout = ctx.fresh(y, -1, bv[1])
                ctx.weight(1, 1, lout, "out")
            for ax, lay in ctx.axes(a).items():
                if ax < ra - 1:
                    ctx.set(y, ax + (ry - ra) if ra > 1 else ax, lay)
        elif av is not None and bv is None and len(av) == 2 and rb >= 2:
            lin = ctx.require(b, -2, av[1])
            ctx.weight(0, 1, lin, "in")
            lout = ctx.fresh(y, -2, av[0])
            ctx.weight(0, 0, lout, "out")
            for ax, lay in ctx.axes(b).items():
                if ax != rb - 2:
                    ctx.set(y, ax + (ry - rb), lay)
        elif av is None and bv is None and ra >= 2 and rb >= 2:
            why = "contracted by a MatMul of two activations"
            ctx.freeze(ctx.get(a, -1), why)
            ctx.freeze(ctx.get(b, -2), why)
            rows, cols = ctx.get(a, -2), ctx.get(b, -1)
            if rows is not None:
                ctx.set(y, -2, rows)
            if cols is not None:
                ctx.set(y, -1, cols)
            for ax in range(ry - 2):
                lays = []
                for name, r in ((a, ra), (b, rb)):
                    src = ax - (ry - r)
                    if src < 0:
                        continue
                    lay = ctx.get(name, src)
                    if view.static(name, src) == 1 and view.static(y, ax) != 1:
                        ctx.freeze(lay, f"'{name}' is broadcast along a channel axis")
                        continue
                    lays.append((name, src, lay))
                if not any(lay for _, _, lay in lays):
                    continue
                lays = [lay if lay is not None else ctx.require(name, src) for name, src, lay in lays]
                if None in lays:  # an operand without channels there, of a size only the run knows
                    for lay in lays:
                        ctx.freeze(lay, "a batched MatMul meets an operand whose channels on this axis are "
                                        "not tracked")
                    continue
                for lay in lays[1:]:
                    ctx.unify(lays[0], lay)
                ctx.set(y, ax, lays[0])
        else:
            ctx.freeze_node("constant operand of rank above 2")

    def macs(self, node, view):
        a, out = view.sizes(node.input[0]), view.sizes(node.output[0])
        if a is None or out is None or not a:
            return None
        return numel(out) * a[-1]

    def linear(self, node, view):
        a, b = view.const_shape(node.input[0]), view.const_shape(node.input[1])
        if b is not None and a is None and len(b) == 2:
            return LinearForm(weight=1, in_axis=0, out_axis=1, x=0, x_axis=-1, y_axis=-1)
        if a is not None and b is None and len(a) == 2:
            return LinearForm(weight=0, in_axis=1, out_axis=0, x=1, x_axis=-2, y_axis=-2)
        return None
