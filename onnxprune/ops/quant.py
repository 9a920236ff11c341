"""Quantization ops on activations.

QuantizeLinear / DequantizeLinear with one scale for the whole tensor treat
every element alike: channels pass through. With a scale per position of one
axis (per-channel), that axis is channel-wise and its scale and zero point are
per-channel parameters, sliced with it. (A DequantizeLinear of a stored weight
folds away: the layer reads its value, and the rewrite slices the int8 weight
and its scales where they are stored.)

DynamicQuantizeLinear computes one scale from the min and max of the whole
tensor: removing channels could change it, so the channels it reads freeze.
The integer compute ops (ConvInteger, MatMulInteger, QLinear*) read those
dynamic or static quantization parameters; they freeze with their reason.
"""
from __future__ import annotations

import numpy as np

from .base import Rule
from .registry import register


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


@register("DynamicQuantizeLinear")
class DynamicQuantize(Rule):
    """One scale from the whole tensor's range: the channels it reads freeze."""

    def analyze(self, node, ctx):
        ctx.freeze_node("dynamic quantization takes one scale from the whole tensor's range; "
                        "removing channels could change it")


@register("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul")
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
