"""The op rule table: op type -> rule. ``groups.py`` knows no op by name."""
from __future__ import annotations

from .base import Analysis, Context, Rewriter, Rule, Unsupported, WeightUse
from .conv import Conv, ConvTranspose
from .elementwise import Broadcast, Dropout, Unary
from .gather import Gather
from .linear import Gemm, MatMul
from .norm import NormOverAxes, PerChannelNorm
from .pool import Pad, Pool, Resize
from .reduce import Reduce, Softmax
from .reshape import Reshape, ReshapeLike
from .shape import Concat, Shape, Slice, Split, Transpose

RULES: dict[str, Rule] = {}
for _cls in (Unary, Dropout, Broadcast, Conv, ConvTranspose, PerChannelNorm, NormOverAxes,
             Gemm, MatMul, Pool, Resize, Pad, Reduce, Softmax, Reshape, ReshapeLike,
             Transpose, Concat, Split, Slice, Shape, Gather):
    _rule = _cls()
    for _op in _cls.ops:
        RULES[_op] = _rule

UNSUPPORTED = Unsupported()

def rule_for(node) -> Rule:
    if node.domain not in ("", "ai.onnx"):
        return UNSUPPORTED
    return RULES.get(node.op_type, UNSUPPORTED)


__all__ = ["Analysis", "Context", "Rewriter", "Rule", "WeightUse", "RULES", "rule_for"]
