"""Channel-wise ops: unary activations and numpy-broadcasting n-ary ops.

Broadcasting decides coupling per output axis: two activation operands of the
same full size on an axis are the same channel space (residual Add, SE Mul);
a constant operand of full size is a per-channel parameter and is sliced; an
operand of size 1 is broadcast and stays. An activation that is broadcast
*along* a channel axis freezes it: removing its one channel would change what
every other channel receives.
"""
from __future__ import annotations

from math import erf, exp, pi, sqrt

import numpy as np

from onnxprune.ops.base import Rule, broadcast_keeps_merged, broadcast_trace
from onnxprune.ops.registry import register

UNARY = ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu",
         "Celu", "Softplus", "Softsign", "Gelu", "Erf", "Mish", "Neg", "Abs", "Sqrt", "Exp",
         "Log", "Cast", "CastLike", "Identity", "Reciprocal", "Floor", "Ceil", "Round", "Sign",
         "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh",
         "ThresholdedRelu", "Shrink", "IsNaN", "IsInf", "Not", "BitwiseNot")


# Unary ops whose f(0) is exactly 0 for every input type they take.
ZERO_KEEPING = {"Cast", "Identity", "Neg", "Abs", "Relu", "Sign"}


@register(*UNARY)
class Unary(Rule):
    """y = f(x) element by element: every axis passes through."""

    def analyze(self, node, ctx):
        ctx.passthrough(node.input[0], node.output[0])

    def trace(self, node, view, axis, follow):
        return follow(node.input[0], axis)

    def keeps_zero(self, node):
        return node.op_type in ZERO_KEEPING

    def reads_merged_axis(self, node, view, tensor, axis, dim):
        return True  # position by position

    def moments(self, node, view, given):
        """Relu of a Gaussian channel: the rectified Gaussian's moments;
        Identity and Cast keep them."""
        if given is None:
            return None
        if node.op_type in ("Identity", "Cast", "CastLike"):
            return given
        if node.op_type != "Relu":
            return None
        return rectified(*given)


def rectified(mean: np.ndarray, std: np.ndarray):
    """(mean, std) of max(0, y) for y ~ N(mean, std^2), per channel."""

    std = np.maximum(std, 1e-12)
    a = mean / std
    cdf = np.array([0.5 * (1 + erf(v / sqrt(2))) for v in a])
    pdf = np.array([exp(-0.5 * v * v) / sqrt(2 * pi) for v in a])
    m1 = mean * cdf + std * pdf
    m2 = (mean ** 2 + std ** 2) * cdf + mean * std * pdf
    return m1, np.sqrt(np.maximum(m2 - m1 ** 2, 0.0))


@register("Dropout")
class Dropout(Rule):
    """Inference Dropout is Identity; its optional mask output has the same shape."""

    def analyze(self, node, ctx):
        for out in node.output:
            if out:
                ctx.passthrough(node.input[0], out)


@register("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where",
          "Clip", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or",
          "Xor", "Mod", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitShift")
class Broadcast(Rule):
    """Operands of full size on an axis are one channel space; full-size constants are per-channel parameters."""

    # A per-channel constant these ops multiply by is a scale (a decomposed
    # BatchNorm's gamma): what the ``bn`` criterion reads.
    scales = {"Mul": (0, 1)}

    def trace(self, node, view, axis, follow):
        return broadcast_trace(node, view, axis, follow)

    def keeps_zero(self, node):
        return node.op_type in ("Mul", "Div")  # 0 * c and 0 / c: a zeroed numerator stays zero

    def reads_merged_axis(self, node, view, tensor, axis, dim):
        return broadcast_keeps_merged(node, view, tensor, axis, dim)

    def analyze(self, node, ctx):
        view = ctx.view
        out = node.output[0]
        rank = view.rank(out)
        inputs = [(k, n) for k, n in enumerate(node.input) if n]
        if rank is None:
            ctx.freeze_node("output shape unknown")
            return
        scale_slots = self.scales.get(node.op_type, ())
        for ax in range(rank):
            out_size = view.static(out, ax)
            layouts, untracked, consts = [], [], []
            for k, name in inputs:
                r = view.rank(name)
                if r is None:
                    ctx.freeze_node(f"shape of '{name}' unknown")
                    return
                a = ax - (rank - r)
                if a < 0:
                    continue
                size = view.static(name, a)
                if view.is_const(name):
                    if size is not None and size > 1:
                        consts.append((k, a))
                    continue
                lay = ctx.get(name, a)
                if size == 1 and out_size != 1:
                    if lay is not None:
                        ctx.freeze(lay, f"'{name}' is broadcast along a channel axis")
                    continue
                if lay is None:
                    untracked.append((name, a))
                else:
                    layouts.append(lay)
            if not layouts:
                continue
            for name, a in untracked:
                layouts.append(ctx.require(name, a))
            base = layouts[0]
            for other in layouts[1:]:
                ctx.unify(base, other)
            ctx.set(out, ax, base)
            for k, a in consts:
                ctx.weight(k, a, base, "scale" if k in scale_slots else "param")
