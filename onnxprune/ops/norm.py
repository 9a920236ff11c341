"""Normalisations. Per-channel ones (BatchNorm, InstanceNorm) slice their
parameters; ones that normalise *over* a channel axis (LayerNorm, LRN,
GroupNorm) would compute different statistics after removal, so that axis
freezes."""
from __future__ import annotations

import numpy as np

from onnxprune.ops.base import Rule
from onnxprune.ops.registry import register


@register("BatchNormalization", "InstanceNormalization")
class PerChannelNorm(Rule):
    """y[:, c] depends on x[:, c] and the c-th entry of each parameter."""

    def analyze(self, node, ctx):
        x, y = node.input[0], node.output[0]
        scale = ctx.const_shape(1)
        size = None if not scale else scale[0]
        lay = ctx.require(x, 1, size)
        params = range(1, len(node.input))
        if any(ctx.const_shape(k) is None for k in params if node.input[k]):
            ctx.freeze(lay, "normalisation parameters computed at run time")
        else:
            for k in params:
                if node.input[k]:
                    ctx.weight(k, 0, lay, "scale" if k == 1 else "param")
        if any(o for o in node.output[1:]):
            ctx.freeze(lay, "training-mode statistics outputs are used")
        if node.op_type == "InstanceNormalization":
            for ax, other in ctx.axes(x).items():
                if ax >= 2:
                    ctx.freeze(other, f"normalises over axis {ax}: removing channels changes the statistics")
        ctx.passthrough(x, y)

    def moments(self, node, view, given):
        """Inference BatchNorm maps its running statistics to mean B and std
        |scale|: on data like the training data, that is its output's."""
        if node.op_type != "BatchNormalization" or len(node.input) < 3:
            return None
        scale, bias = view.const(node.input[1]), view.const(node.input[2])
        if scale is None or bias is None or np.ndim(scale) != 1:
            return None
        return np.asarray(bias, dtype=np.float64), np.abs(np.asarray(scale, dtype=np.float64))


# Normalise from ``axis`` to the last axis, with a scale (and LayerNorm's bias)
# per position of those axes: ONNX's LayerNormalization (opset 17, and
# onnxruntime's below it), RMSNormalization (opset 23) and onnxruntime's
# SimplifiedLayerNormalization (RMSNorm in the ONNX domain, see dialect.py).
_OVER_LAST = ("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization")


@register("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization", "LRN",
          "GroupNormalization", "MeanVarianceNormalization")
class NormOverAxes(Rule):
    """Normalises over some axes; a channel axis among them freezes."""

    def normalized(self, node, ctx, rank):
        if node.op_type in _OVER_LAST:
            a = int(ctx.attr("axis", -1))
            return set(range(a % rank, rank))
        if node.op_type == "MeanVarianceNormalization":
            return {a % rank for a in ctx.attr("axes", [0, 2, 3])}
        return {1}  # LRN and GroupNorm mix channels

    def analyze(self, node, ctx):
        x = node.input[0]
        rank = ctx.view.rank(x)
        if rank is None:
            ctx.freeze_node("input shape unknown")
            return
        axes = self.normalized(node, ctx, rank)
        for ax, lay in ctx.axes(x).items():
            if ax in axes:
                why = f"normalises over axis {ax}: removing channels changes the statistics"
                if node.op_type in _OVER_LAST or node.op_type == "MeanVarianceNormalization":
                    ctx.inexact(lay, why)  # the hidden size of a transformer
                else:
                    ctx.freeze(lay, why)
        ctx.passthrough(x, node.output[0])
        if node.op_type in _OVER_LAST:
            # Scale and bias are per position of the normalised axes: they belong
            # to those (frozen) channel spaces, so ``analyze`` accounts for them.
            first = min(axes)
            for slot in (1, 2):
                shape = ctx.const_shape(slot)
                if shape is None:
                    continue
                for k in range(len(shape)):
                    ax = rank - len(shape) + k
                    lay = ctx.get(x, ax) if ax >= first else None
                    if lay is not None and shape[k] > 1:
                        ctx.weight(slot, k, lay, "scale" if slot == 1 else "param")
