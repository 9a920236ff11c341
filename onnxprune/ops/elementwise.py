"""Channel-wise ops: unary activations and numpy-broadcasting n-ary ops.

Broadcasting decides coupling per output axis: two activation operands of the
same full size on an axis are the same channel space (residual Add, SE Mul);
a constant operand of full size is a per-channel parameter and is sliced; an
operand of size 1 is broadcast and stays. An activation that is broadcast
*along* a channel axis freezes it: removing its one channel would change what
every other channel receives. A tensor computed once and only added to
several layers' tensors (T5's position bias) is read by each through a
Gather of that layer's kept channels (``side_inputs``), so the layers prune
apart.
"""
from __future__ import annotations

import weakref
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


BINARY = ("Add", "Sub", "Mul", "Div")
LAYERS = ("MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "MatMulInteger", "ConvInteger", "QLinearMatMul",
          "QLinearConv", "MatMulNBits", "Attention", "MultiHeadAttention")  # they mix channels
_SIDE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def side_inputs(view) -> set:
    """Tensors computed once and added to (or multiplying) several others,
    and read by nothing else: T5's relative position bias, computed in the
    first block and added to every block's attention scores. Coupling its
    heads with each reader's would make the heads of every layer one group;
    instead each reader takes the channels it keeps through a Gather, and
    the tensor itself stays whole. A tensor any other op reads (a residual
    stream, also read by the layer it feeds, or by a decomposed norm's Mul
    by a constant) couples as usual, and so does one the other operands are
    computed from without a layer between (``x * (1 + erf(x / sqrt 2))``: a
    decomposed GELU)."""
    found = _SIDE.get(view)
    if found is None:
        found = set()
        for name, readers in view.consumers.items():
            if len(readers) > 1 and not view.is_const(name) and name not in view.graph_inputs and \
                    all(r.op_type in BINARY and len(r.input) == 2 and r.input[1 - slot] != name
                        and not view.is_const(r.input[1 - slot]) for r, slot in readers) and \
                    not _reached(view, name, {r.input[1 - slot] for r, slot in readers}):
                found.add(name)
        _SIDE[view] = found
    return found


def _reached(view, name: str, targets: set) -> bool:
    """Whether a target is computed from ``name`` by ops that keep its
    channels (a path through no layer that mixes them)."""
    todo, seen = [name], {name}
    while todo:
        for reader, _ in view.consumers.get(todo.pop(), []):
            if reader.op_type in LAYERS:
                continue
            for out in reader.output:
                if out in targets:
                    return True
                if out and out not in seen:
                    seen.add(out)
                    todo.append(out)
    return False


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
        side = side_inputs(view)
        selects: dict = {}  # input slot -> {its axis: output axis}
        for ax in range(rank):
            out_size = view.static(out, ax)
            layouts, untracked, consts, shared = [], [], [], []
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
                if name in side and size is not None and size == out_size:
                    shared.append((k, name, a, lay))
                elif lay is None:
                    untracked.append((name, a))
                else:
                    layouts.append(lay)
            if not layouts:
                # only shared inputs: the first one's channels are the output's
                layouts = [lay for _, _, _, lay in shared[:1] if lay is not None]
                shared = shared[1:] if layouts else shared
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
            for k, name, a, lay in shared:
                if lay is not None:
                    ctx.freeze(lay, f"'{name}' is read by {len(ctx.view.consumers[name])} nodes, each "
                                    f"through a Gather of its own channels")
                selects.setdefault(k, {})[a] = ax
        if selects:
            ctx.state(selects=selects)

    def rewrite(self, node, index, rw):
        # A shared input read through a Gather of the output's kept channels
        # (an axis of the input -> the output's axis it meets).
        for k, axes in rw.state(index).get("selects", {}).items():
            for a, ax in axes.items():
                lay = rw.layout(node.output[0], ax)
                if lay is not None and rw.size(lay) != rw.full_size(lay):
                    rw.select_input(index, k, a, rw.positions(lay))
