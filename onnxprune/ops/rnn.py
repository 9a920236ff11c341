"""RNN, GRU and LSTM: the input features and the hidden size.

The input features of X are a linear input of W (its last axis). The hidden
size is a new channel space, laid out in the packed gate weights as the same
units repeated once per gate: W and R rows ``(h, G)``, the biases ``(h, 2G)``,
LSTM peepholes ``(h, 3)``; R's columns read the hidden state ("in"), and the
initial and final states and Y carry it. Removing a hidden unit removes its
row in every gate and its column in R, so the kept units compute exactly what
they computed before; ``hidden_size`` is rewritten. Batch positions run
independently: one prunes with its ``sequence_lens`` entry and its rows of
the initial states. The sequence axis freezes (the recurrence carries each
step into the next).
"""
from __future__ import annotations

from onnxprune.core.graph import set_attr
from onnxprune.core.layout import Segment
from onnxprune.ops.base import Rule, attr_of
from onnxprune.ops.registry import register

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


@register("RNN", "GRU", "LSTM")
class Recurrent(Rule):
    """Input features are W's linear input; the hidden size prunes across every gate, R, the biases and the states."""

    def _axes(self, node, layout: int):
        """(X batch, X seq) and the hidden / batch axes of Y, of the states."""
        if layout:
            return {"x_batch": 0, "x_seq": 1, "y_seq": 1, "y_batch": 0, "y_hidden": 3,
                    "s_batch": 0, "s_hidden": 2}
        return {"x_batch": 1, "x_seq": 0, "y_seq": 0, "y_batch": 2, "y_hidden": 3,
                "s_batch": 1, "s_hidden": 2}

    def analyze(self, node, ctx):
        x = node.input[0]
        gates = GATES[node.op_type]
        w, r = ctx.const_shape(1), ctx.const_shape(2)
        hidden = int(ctx.attr("hidden_size", 0) or 0)
        if w is None or r is None or not hidden:
            ctx.freeze_node("weights computed at run time or hidden_size missing")
            return
        ax = self._axes(node, int(ctx.attr("layout", 0) or 0))
        # Input side: the features of X are W's linear input.
        lin = ctx.require(x, 2, w[2])
        ctx.weight(1, 2, lin, "in")
        # Hidden side: one new space, repeated once per gate in the packed weights
        # (as one segment per gate, not one repeated segment: a later Split or
        # Slice of the hidden features splits the space under every gate).
        h = ctx.atoms.new(hidden)
        per_gate = (Segment(h),) * gates
        ctx.weight(1, 1, per_gate, "out")
        ctx.weight(2, 1, per_gate, "out")
        ctx.weight(2, 2, (Segment(h),), "in")
        if len(node.input) > 3 and node.input[3]:
            ctx.weight(3, 1, (Segment(h),) * (2 * gates), "out")
        # The batch: each sequence runs on its own, so a batch position prunes
        # with its length and its initial states (constants sliced, run-time
        # tensors coupled).
        states = [5] + ([6] if node.op_type == "LSTM" else [])
        batch_of = [(slot, ax["s_batch"]) for slot in states] + [(4, 0)]
        batch_of = [(slot, axis) for slot, axis in batch_of if len(node.input) > slot and node.input[slot]]
        batch = ctx.get(x, ax["x_batch"])
        if batch is None and any(ctx.get(node.input[slot], axis) is not None for slot, axis in batch_of
                                 if not ctx.view.is_const(node.input[slot])):
            batch = ctx.require(x, ax["x_batch"])
        if batch is not None:
            for slot, axis in batch_of:
                name = node.input[slot]
                if ctx.view.is_const(name):
                    ctx.weight(slot, axis, batch, "param")
                else:
                    ctx.unify(batch, ctx.require(name, axis))
        for slot in states:
            if len(node.input) > slot and node.input[slot]:
                name = node.input[slot]
                if ctx.view.is_const(name):
                    ctx.weight(slot, ax["s_hidden"], (Segment(h),), "param")
                else:
                    ctx.unify(ctx.require(name, ax["s_hidden"], hidden), (Segment(h),))
        if node.op_type == "LSTM" and len(node.input) > 7 and node.input[7]:
            ctx.weight(7, 1, (Segment(h),) * 3, "param")
        outs = list(node.output) + [""] * 3
        if outs[0]:
            ctx.set(outs[0], ax["y_hidden"], (Segment(h),))
        for out in outs[1:3]:
            if out:
                ctx.set(out, ax["s_hidden"], (Segment(h),))
        # Sequence and batch axes pass from X to Y and the states. A step of
        # the sequence cannot go: the recurrence carries it into every later step.
        for axis, lay in ctx.axes(x).items():
            if axis == ax["x_seq"]:
                ctx.freeze(lay, "the recurrence runs along the sequence axis: removing a step "
                                "changes every later step")
                if outs[0]:
                    ctx.set(outs[0], ax["y_seq"], lay)
            elif axis == ax["x_batch"]:
                if outs[0]:
                    ctx.set(outs[0], ax["y_batch"], lay)
                for out in outs[1:3]:
                    if out:
                        ctx.set(out, ax["s_batch"], lay)

    def rewrite(self, node, index, rw):
        # The hidden axis is 3 of Y and 2 of Y_h / Y_c in either layout.
        for out, axis in zip(node.output, (3, 2, 2)):
            lay = rw.layout(out, axis) if out else None
            if lay is not None:
                set_attr(node, "hidden_size", rw.size(lay))
                return

    def macs(self, node, view):
        w, r = view.const_shape(node.input[1]), view.const_shape(node.input[2])
        x = view.sizes(node.input[0])
        if w is None or r is None:
            return 0
        if x is None:
            return None
        layout = int(attr_of(node, view, "layout", 0) or 0)
        seq, batch = (x[1], x[0]) if layout else (x[0], x[1])
        d, rows, inputs = w
        return seq * batch * d * rows * (inputs + r[2])
