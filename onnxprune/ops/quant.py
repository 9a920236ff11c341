"""Quantization ops on activations.

QuantizeLinear / DequantizeLinear with one scale for the whole tensor treat
every element alike: channels pass through. With a scale per position of one
axis (per-channel), that axis is channel-wise and its scale and zero point are
per-channel parameters, sliced with it. (A DequantizeLinear of a stored weight
folds away: the layer reads its value, and the rewrite slices the int8 weight
and its scales where they are stored.)

DynamicQuantizeLinear computes one scale from the min and max of the whole
tensor: channels pass, but removing the one that held the extreme makes
the scale finer, so those groups are *approximate* (pruned == masked up to
a quantization step; the report says so, validation measures it).
MatMulInteger and ConvInteger with a stored weight (``quantize_dynamic``'s
output) are sliced like a MatMul and a Conv. The other integer compute ops
(QLinear*) read static quantization parameters; they freeze with their
reason.
"""
from __future__ import annotations

import numpy as np

from onnxprune.core.graph import attr
from onnxprune.ops.base import LinearForm, Rule
from onnxprune.ops.conv import Conv
from onnxprune.ops.linear import MatMul
from onnxprune.ops.registry import register


def _dequantized(node, view, outputs: int) -> dict:
    """``quantize_dynamic``'s dequantization of an integer product: the int32
    output Cast to float, times (the activation's DynamicQuantizeLinear scale
    x the weight's stored scale, one or one per of the ``outputs``). ->
    LinearForm fields naming the float output and the weight's scale, or
    none where the graph says otherwise."""
    def only(name, op):
        readers = view.consumers.get(name, [])
        if len(readers) != 1 or view.escapes(name) or readers[0][0].op_type != op:
            return None
        return readers[0][0]

    cast = only(node.output[0], "Cast")
    if cast is None or attr(cast, "to") != 1:  # float
        return {}
    mul = only(cast.output[0], "Mul")
    dql = view.producer.get(node.input[0])
    if mul is None or dql is None or dql.op_type != "DynamicQuantizeLinear" or len(dql.output) < 2:
        return {}
    scales = view.producer.get(mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0])
    if scales is None or scales.op_type != "Mul" or dql.output[1] not in scales.input:
        return {}
    w_scale = view.const(scales.input[1] if scales.input[0] == dql.output[1] else scales.input[0])
    if w_scale is None or np.asarray(w_scale).dtype.kind != "f" or np.size(w_scale) not in (1, outputs):
        return {}
    return {"dequantized": mul.output[0], "scale": tuple(float(v) for v in np.asarray(w_scale).reshape(-1))}


def _weight_zero_point(ctx, node, out, lin) -> None:
    """MatMulInteger's and ConvInteger's weight zero point (input 3): one
    computed at run time freezes both channel axes; one per output neuron
    (along its last axis) is sliced with them. A nonzero one is no reason to
    freeze: scores read W - zp and the masked model fills with it."""
    if not (len(node.input) > 3 and node.input[3]):
        return
    zp = ctx.const(3)
    if zp is None:
        ctx.freeze(out, "weight zero point computed at run time")
        ctx.freeze(lin, "weight zero point computed at run time")
    elif out is not None and np.size(zp) > 1:
        ctx.weight(3, np.ndim(zp) - 1, out, "param")  # one per output neuron


@register("QuantizeLinear", "DequantizeLinear")
class QuantizeDequantize(Rule):
    """Per-tensor: channels pass. Per-axis: that axis is channel-wise, its scale and zero point sliced."""

    def analyze(self, node, ctx):
        x, y = node.input[0], node.output[0]
        lays = ctx.axes(x)
        if not lays:
            return
        rank = ctx.view.rank(x)
        scale = ctx.const_shape(1)
        if scale is None or (len(node.input) > 2 and node.input[2] and ctx.const_shape(2) is None):
            ctx.freeze_tensor(x, "quantization parameters computed at run time")
            return
        per_tensor = int(np.prod(scale)) <= 1
        if ctx.attr("block_size", 0):
            ctx.freeze_tensor(x, "block-wise quantization along a channel axis")
            return
        axis = int(ctx.attr("axis", 1)) % rank
        for ax, lay in lays.items():
            ctx.set(y, ax, lay)
            if not per_tensor and ax == axis:
                for slot in (1, 2):
                    if len(node.input) > slot and node.input[slot]:
                        ctx.weight(slot, 0, lay, "param")

    def trace(self, node, view, axis, follow):
        if node.op_type != "DequantizeLinear" or attr(node, "block_size", 0):
            return None
        shape = view.const_shape(node.output[0])
        out = follow(node.input[0], axis) if shape is not None else None
        if out is None:
            return None
        per_axis = int(attr(node, "axis", 1)) % len(shape)
        for name in node.input[1:3]:
            s = view.const_shape(name) if name else None
            if s is None or int(np.prod(s)) <= 1 or per_axis != axis:
                continue  # absent, per tensor, or per channel along another axis: broadcast along this one
            sub = follow(name, 0)
            if sub is None:
                return None
            out += sub
        return out

    def keeps_zero(self, node):
        return node.op_type == "DequantizeLinear"  # once its input holds the zero point (``zero_for``)

    def zero_for(self, node, view, slot, value):
        """The quantized input of a DequantizeLinear reads as zero when it holds
        its zero point (per tensor, or per channel along ``axis``)."""
        if node.op_type != "DequantizeLinear" or slot != 0 or len(node.input) < 3 or not node.input[2]:
            return super().zero_for(node, view, slot, value)
        zp = view.const(node.input[2])
        if zp is None:
            return None
        zp = np.asarray(zp)
        if zp.size == 1:
            return np.full(value.shape, zp.reshape(-1)[0], dtype=value.dtype)
        shape = [1] * value.ndim
        shape[int(attr(node, "axis", 1)) % value.ndim] = -1
        return np.broadcast_to(zp.reshape(shape), value.shape).astype(value.dtype)


@register("DynamicQuantizeLinear")
class DynamicQuantize(Rule):
    """Element-wise, with one scale from the whole tensor's range: channels
    pass, approximately (``Ctx.approximate``)."""

    def analyze(self, node, ctx):
        x, y = node.input[0], node.output[0]
        for ax, lay in ctx.axes(x).items():
            ctx.set(y, ax, lay)
            ctx.approximate(lay, "dynamic quantization takes its scale from the whole tensor's range; "
                                 "without a removed channel that held the extreme, the kept ones are "
                                 "quantized a little finer")


@register("MatMulInteger")
class MatMulInteger(MatMul):
    """``quantize_dynamic``'s MatMul: activations (uint8/int8 from a
    DynamicQuantizeLinear) times a stored integer weight, int32 out. The
    weight is sliced like a MatMul's, with its per-column zero point; the
    scales are applied after (a Mul by a scalar, element-wise). A weight
    with a zero point computes W - zp: scores read that
    (``LinearForm.zero_point``), and the masked model fills a removed row
    with the zero point, not 0 (``rewrite._mask_fill``). Compensation
    refits the integers in units of the scale (``LinearForm.integer``). Two quantized
    activations (attention's Q.K^T and P.V) with scalar zero points are a
    MatMul of activations: batch axes, the heads, pass."""

    def analyze(self, node, ctx):
        a, y = node.input[0], node.output[0]
        bv = ctx.const_shape(1)
        if ctx.view.is_const(a) or (bv is not None and len(bv) != 2):
            ctx.freeze_node("MatMulInteger with a stored first operand, or a weight not 2-D, is not rewritten")
            return
        if bv is None:  # two activations (attention's scores and context): batch axes (heads) pass
            zps = [node.input[k] for k in (2, 3) if len(node.input) > k and node.input[k]]
            if any(ctx.view.rank(z) != 0 for z in zps):
                ctx.freeze_node("MatMulInteger of two activations with per-row or per-column zero points")
                return
            super().analyze(node, ctx)
            return
        rows = ctx.get(a, -2) if (ctx.view.rank(a) or 0) >= 2 else None
        a_zp = node.input[2] if len(node.input) > 2 else ""
        if rows is not None and a_zp and ctx.view.rank(a_zp) != 0:
            ctx.freeze(rows, "per-row zero point of the activations along a channel axis")
        super().analyze(node, ctx)
        _weight_zero_point(ctx, node, ctx.get(y, -1), ctx.get(a, -1))

    def linear(self, node, view):
        """Scores read the stored integers: with quantize_dynamic's one scale
        per tensor, the weight up to a factor that is the same for every
        channel (per-column scales, where a model has them, are not applied:
        its scores are then approximate). Compensation refits them in the
        same units and rounds back (``integer``)."""
        b = view.const_shape(node.input[1])
        if b is None or len(b) != 2 or view.is_const(node.input[0]):
            return None
        return LinearForm(weight=1, in_axis=0, out_axis=1, x=0, x_axis=-1, y_axis=-1, zero_point=3, integer=True,
                          **_dequantized(node, view, b[1]))


@register("ConvInteger")
class ConvInteger(Conv):
    """``quantize_dynamic``'s Conv: activations quantized by a
    DynamicQuantizeLinear, a stored integer weight, int32 out (no bias; the
    scales are a Mul after). Channels as a Conv's, with the weight's per
    output channel zero point sliced along; the zero point is handled as
    MatMulInteger's; compensation refits the integers as MatMulInteger's."""

    bias_input = None

    def analyze(self, node, ctx):
        x, y = node.input[0], node.output[0]
        x_zp = node.input[2] if len(node.input) > 2 else ""
        if x_zp and int(np.prod(ctx.view.shape(x_zp) or ())) > 1:
            ctx.freeze_node("ConvInteger with a zero point per input channel")
            return
        super().analyze(node, ctx)
        if ctx.view.const_shape(node.input[1]) is not None:
            _weight_zero_point(ctx, node, ctx.get(y, 1), ctx.get(x, 1))

    def linear(self, node, view):
        form = super().linear(node, view)
        shape = view.const_shape(node.input[1])
        if form is None or not shape:
            return None
        return LinearForm(weight=1, in_axis=1, out_axis=0, x=0, x_axis=1, y_axis=1, dense=form.dense, zero_point=3,
                          integer=True, **_dequantized(node, view, shape[0]))


@register("QLinearConv", "QLinearMatMul")
class IntegerCompute(Rule):
    """Integer kernels with quantization parameters: their channels freeze (not rewritten yet)."""

    def analyze(self, node, ctx):
        ctx.freeze_node(f"{node.op_type} computes on quantized integers; its weights, scales and "
                        f"zero points are not rewritten yet")


@register("QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearGlobalAveragePool", "QLinearLeakyRelu",
          "QLinearSigmoid", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "MatMulIntegerToFloat",
          domain="com.microsoft")
class ContribIntegerCompute(IntegerCompute):
    """onnxruntime's quantized contrib kernels: their channels freeze (not rewritten yet)."""
