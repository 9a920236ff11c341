"""Random valid ONNX graphs built from the op table, for the fuzz property.

``random_model(draw)`` stacks random blocks on an NCHW tensor: dense,
grouped and depthwise convs, activations, BatchNorm, per-channel scales,
residual adds, concats, channel splits and slices, pools, Resize, NHWC round
trips, MatMul on the last axis, Expand/Tile repeats, an If whose branch reads
a tensor, and a head (global pool, flatten, Gemm). Every shape is static and
every graph runs in onnxruntime; which channels can prune is the analysis'
business.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from graphs import Graph

BLOCKS = ("conv", "grouped", "depthwise", "act", "bn", "scale", "residual", "concat", "split",
          "slice", "pool", "resize", "nhwc", "matmul_last", "tile", "if_branch", "transpose_conv")


class Builder:
    def __init__(self, draw, st, seed: int) -> None:
        self.draw, self.st = draw, st
        self.g = Graph(opset=17, seed=seed)
        self.t, self.c, self.h, self.w = "x", 3, 8, 8
        self.pool: list[tuple[str, int]] = []  # earlier tensors of the current shape family

    def pick(self, options):
        return self.draw(self.st.sampled_from(list(options)))

    def channels(self) -> int:
        return self.draw(self.st.integers(2, 8))

    def conv(self, cout: int | None = None, group: int = 1, k: int | None = None) -> None:
        cout = cout or self.channels()
        k = k or self.pick([1, 3])
        self.t = self.g.conv(self.t, self.c, cout, k=k, group=group, bias=self.pick([True, False]))
        self.c = cout

    def block(self, kind: str) -> None:
        g = self.g
        if kind == "conv":
            self.conv()
        elif kind == "grouped" and self.c % 2 == 0:
            self.conv(cout=self.c * self.pick([1, 2]) // 2 * 2, group=2)
        elif kind == "depthwise":
            self.conv(cout=self.c * self.pick([1, 2]), group=self.c, k=3)
        elif kind == "act":
            op = self.pick(["Relu", "Sigmoid", "HardSwish", "Tanh", "LeakyRelu"])
            self.t = g.add(op, [self.t])
        elif kind == "bn":
            c = self.c
            self.t = g.add("BatchNormalization", [self.t, g.rand("s", (c,), 0.5, 1.5), g.rand("b", (c,)),
                                                  g.rand("m", (c,)), g.rand("v", (c,), 0.5, 1.5)])
        elif kind == "scale":
            self.t = g.add(self.pick(["Mul", "Add"]), [self.t, g.rand("k", (self.c, 1, 1))])
        elif kind == "residual":
            branch = g.add("Relu", [g.conv(self.t, self.c, self.c, k=3)])
            self.t = g.add("Add", [self.t, branch])
        elif kind == "concat":
            cout = self.channels()
            other = g.conv(self.t, self.c, cout, k=1)
            parts = [self.t, other] if self.pick([True, False]) else [other, self.t]
            self.t = g.add("Concat", parts, axis=1)
            self.c += cout
        elif kind == "split" and self.c >= 2:
            first = self.draw(self.st.integers(1, self.c - 1))
            a, b = g.add("Split", [self.t, g.ints("sp", [first, self.c - first])], n_out=2, axis=1)
            self.t, self.c = (a, first) if self.pick([True, False]) else (b, self.c - first)
        elif kind == "slice" and self.c >= 2:
            s = self.draw(self.st.integers(0, self.c - 1))
            e = self.draw(self.st.integers(s + 1, self.c))
            self.t = g.add("Slice", [self.t, g.ints("st", [s]), g.ints("en", [e]), g.ints("ax", [1])])
            self.c = e - s
        elif kind == "pool" and self.h >= 4:
            self.t = g.add(self.pick(["MaxPool", "AveragePool"]), [self.t], kernel_shape=[2, 2], strides=[2, 2])
            self.h, self.w = self.h // 2, self.w // 2
        elif kind == "resize" and self.h <= 8:
            scales = g.init("sc", np.array([1, 1, 2, 2], np.float32))
            self.t = g.add("Resize", [self.t, "", scales], mode="nearest")
            self.h, self.w = self.h * 2, self.w * 2
        elif kind == "nhwc":
            nhwc = g.add("Transpose", [self.t], perm=[0, 2, 3, 1])
            nhwc = g.add("Mul", [nhwc, g.rand("k", (self.c,))])  # channels-last constant
            self.t = g.add("Transpose", [nhwc], perm=[0, 3, 1, 2])
        elif kind == "matmul_last":
            # MatMul over the last axis mixes W positions; channels pass.
            self.t = g.add("MatMul", [self.t, g.rand("mw", (self.w, self.w))])
        elif kind == "tile":
            self.t = g.add("Tile", [self.t, g.ints("reps", [1, 2, 1, 1])])
            self.c *= 2
        elif kind == "if_branch":
            self.if_branch()
        elif kind == "transpose_conv" and self.h <= 8:
            cout = self.channels()
            w = g.rand("tw", (self.c, cout, 2, 2))
            self.t = g.add("ConvTranspose", [self.t, w], strides=[2, 2])
            self.c, self.h, self.w = cout, self.h * 2, self.w * 2

    def if_branch(self) -> None:
        """An If whose then-branch reads the current tensor (a capture) and whose
        else-branch reads another: both freeze their own groups only."""
        g = self.g
        shape = [1, self.c, self.h, self.w]
        cond = g.init("cond", np.array(True))
        out = g.fresh("if_out")

        def branch(name, node):
            return helper.make_graph([node], name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, shape)])

        then = branch("then", helper.make_node("Relu", [self.t], ["then_y"]))
        other = branch("else", helper.make_node("Sigmoid", [self.t], ["else_y"]))
        g.nodes.append(helper.make_node("If", [cond], [out], name=g.fresh("if"), then_branch=then, else_branch=other))
        self.t = out

    def head(self) -> str:
        g = self.g
        p = g.add("GlobalAveragePool", [self.t])
        flat = g.add("Flatten", [p], axis=1)
        return g.gemm(flat, self.c, 5, trans_b=self.pick([0, 1]), bias_shape=(5,))


def random_model(draw, st, max_blocks: int = 8) -> onnx.ModelProto:
    seed = draw(st.integers(0, 2**16))
    b = Builder(draw, st, seed)
    b.conv()
    for kind in draw(st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=max_blocks)):
        b.block(kind)
    y = b.head()
    return b.g.build({"x": [1, 3, 8, 8]}, [y])
