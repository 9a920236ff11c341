"""What an op rule sees while analysing (Context) and while rewriting (Rewriter).

A rule answers three questions for its op family:
1. which input/output dims are the same channel space (``ctx.set``/``ctx.unify``);
2. which constant inputs are indexed by which dim (``ctx.weight``);
3. what attribute or shape constant changes when a dim shrinks (``rewrite``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..graph import GraphView
from ..layout import Atoms, Layout, LayoutError

# Roles of a weight slice. "out": the slice produces the channel (a filter, its
# bias); "in": a linear consumer reads the channel (the masked model zeroes
# these); "param": a per-channel parameter of a channel-wise op (BN, PRelu...).
ROLES = ("out", "in", "param")


@dataclass
class WeightUse:
    node: int  # node index in the graph
    input: int  # input slot of that node
    axis: int
    layout: Layout
    role: str


@dataclass
class Analysis:
    """Everything a later stage needs from the analysis pass."""

    atoms: Atoms = field(default_factory=Atoms)
    layouts: dict = field(default_factory=dict)  # (tensor, axis) -> Layout
    origin: dict = field(default_factory=dict)  # (tensor, axis) -> node index that set it
    uses: list = field(default_factory=list)  # [WeightUse]
    states: dict = field(default_factory=dict)  # node index -> rule data for rewrite


class Context:
    def __init__(self, view: GraphView, analysis: Analysis) -> None:
        self.view = view
        self.a = analysis
        self.atoms = analysis.atoms
        self.node: onnx.NodeProto | None = None
        self.index = -1

    # -- naming --------------------------------------------------------------
    def where(self) -> str:
        return f"node '{self.node.name}' ({self.node.op_type})"

    def _axis(self, tensor: str, axis: int) -> int | None:
        r = self.view.rank(tensor)
        if r is None:
            return None
        if axis < 0:
            axis += r
        return axis if 0 <= axis < r else None

    # -- layouts -------------------------------------------------------------
    def get(self, tensor: str, axis: int) -> Layout | None:
        ax = self._axis(tensor, axis)
        return None if ax is None else self.a.layouts.get((tensor, ax))

    def axes(self, tensor: str) -> dict[int, Layout]:
        return {ax: lay for (t, ax), lay in self.a.layouts.items() if t == tensor}

    def set(self, tensor: str, axis: int, layout: Layout) -> None:
        ax = self._axis(tensor, axis)
        if ax is None or not tensor:
            # Never drop a layout silently: a consumer would miss its slice.
            self.atoms.freeze(layout, f"{self.where()}: shape of '{tensor}' unknown")
            return
        size = self.view.static(tensor, ax)
        if size is not None and size != self.atoms.layout_size(layout):
            self.atoms.freeze(layout, f"{self.where()}: channel count {self.atoms.layout_size(layout)} "
                                      f"does not match shape {size} of '{tensor}'")
            return
        old = self.a.layouts.get((tensor, ax))
        if old is not None:
            self.unify(old, layout)
            return
        self.a.layouts[(tensor, ax)] = layout
        self.a.origin[(tensor, ax)] = self.index

    def origin_reason(self, tensor: str) -> str:
        if tensor in self.view.graph_inputs:
            return f"reaches graph input '{tensor}'"
        if self.view.is_const(tensor):
            return f"constant '{tensor}' meets channels along an axis it is not sliced on"
        p = self.view.producer.get(tensor)
        if p is None:
            return f"tensor '{tensor}' has no producer"
        return f"produced by node '{p.name}' ({p.op_type}) whose channels are not tracked"

    def require(self, tensor: str, axis: int, size: int | None = None) -> Layout | None:
        """The layout of a dim, or a new frozen one when nothing upstream tracked it."""
        lay = self.get(tensor, axis)
        if lay is not None:
            return lay
        ax = self._axis(tensor, axis)
        if size is None and ax is not None:
            size = self.view.static(tensor, ax)
        if size is None or ax is None:
            return None
        lay = self.atoms.plain(size, self.origin_reason(tensor))
        self.a.layouts[(tensor, ax)] = lay
        self.a.origin[(tensor, ax)] = self.index
        return lay

    def fresh(self, tensor: str, axis: int, size: int | None = None) -> Layout | None:
        """A new prunable channel space created by this node (Conv filters, Gemm neurons)."""
        ax = self._axis(tensor, axis)
        if size is None and ax is not None:
            size = self.view.static(tensor, ax)
        if size is None or ax is None or size <= 0:
            return None
        lay = self.atoms.plain(size)
        self.set(tensor, ax, lay)
        return lay

    def unify(self, l1: Layout | None, l2: Layout | None) -> bool:
        if l1 is None or l2 is None:
            for lay in (l1, l2):
                if lay is not None:
                    self.atoms.freeze(lay, f"{self.where()}: channel size unknown on one side")
            return False
        try:
            self.atoms.unify(l1, l2)
            return True
        except LayoutError as e:
            reason = f"{self.where()}: {e}"
            self.atoms.freeze(l1, reason)
            self.atoms.freeze(l2, reason)
            return False

    def freeze(self, layout: Layout | None, why: str) -> None:
        if layout is not None:
            self.atoms.freeze(layout, f"{self.where()}: {why}")

    def freeze_tensor(self, tensor: str, why: str) -> None:
        for lay in self.axes(tensor).values():
            self.freeze(lay, why)

    def freeze_node(self, why: str) -> None:
        for name in list(self.node.input) + list(self.node.output):
            if name and not self.view.is_const(name):
                self.freeze_tensor(name, why)

    def passthrough(self, src: str, dst: str, mapping: dict[int, int] | None = None) -> None:
        """Copy layouts of ``src`` onto ``dst`` (axis a of src -> mapping[a] of dst)."""
        for ax, lay in self.axes(src).items():
            to = ax if mapping is None else mapping.get(ax)
            if to is None:
                continue
            if self.view.static(src, ax) != self.view.static(dst, to) and self.view.rank(dst) is not None:
                self.freeze(lay, f"size of axis {ax} changes from '{src}' to '{dst}'")
                continue
            self.set(dst, to, lay)

    # -- weights -------------------------------------------------------------
    def weight(self, slot: int, axis: int, layout: Layout | None, role: str) -> bool:
        """Record that constant input ``slot`` is indexed by ``layout`` along ``axis``."""
        assert role in ROLES
        if layout is None or slot >= len(self.node.input) or not self.node.input[slot]:
            return False
        name = self.node.input[slot]
        value = self.view.const(name)
        if value is None:
            self.freeze(layout, f"input '{name}' is computed at run time; its channels stay unpruned")
            return False
        if axis < 0:
            axis += value.ndim
        if not 0 <= axis < value.ndim or value.shape[axis] != self.atoms.layout_size(layout):
            self.freeze(layout, f"constant '{name}' of shape {list(value.shape)} does not match the channels")
            return False
        self.a.uses.append(WeightUse(self.index, slot, axis, layout, role))
        return True

    def const(self, slot: int):
        if slot >= len(self.node.input) or not self.node.input[slot]:
            return None
        return self.view.const(self.node.input[slot])

    def state(self, **data) -> None:
        self.a.states.setdefault(self.index, {}).update(data)


class Rewriter:
    """What a rule may change when the keep-sets are applied."""

    def __init__(self, view: GraphView, analysis: Analysis, keep: dict[int, np.ndarray]) -> None:
        self.view = view
        self.a = analysis
        self.keep = keep
        self.const_edits: dict[tuple[int, int], np.ndarray] = {}

    def layout(self, tensor: str, axis: int) -> Layout | None:
        r = self.view.rank(tensor)
        if r is not None and axis < 0:
            axis += r
        return self.a.layouts.get((tensor, axis))

    def size(self, layout: Layout) -> int:
        return self.a.atoms.new_size(layout, self.keep)

    def new_shape(self, tensor: str) -> tuple | None:
        shape = self.view.shape(tensor)
        if shape is None:
            return None
        out = list(shape)
        for ax in range(len(out)):
            lay = self.a.layouts.get((tensor, ax))
            if lay is not None:
                out[ax] = self.size(lay)
        return tuple(out)

    def changed(self, tensor: str) -> bool:
        return self.new_shape(tensor) != self.view.shape(tensor)

    def state(self, index: int) -> dict:
        return self.a.states.get(index, {})

    def set_const(self, index: int, slot: int, value: np.ndarray) -> None:
        self.const_edits[(index, slot)] = value


class Rule:
    """Base class: one op family. Subclasses list their op types in ``ops``."""

    ops: tuple[str, ...] = ()

    def analyze(self, node: onnx.NodeProto, ctx: Context) -> None:  # pragma: no cover
        raise NotImplementedError

    def rewrite(self, node: onnx.NodeProto, index: int, rw: Rewriter) -> None:
        """Change attributes / shape constants after dims shrink. Default: nothing."""


class Unsupported(Rule):
    """Any op not in the table: every channel it touches is frozen."""

    def analyze(self, node, ctx):
        if any(ctx.axes(n) for n in node.input if n and not ctx.view.is_const(n)):
            domain = f"{node.domain}." if node.domain not in ("", "ai.onnx") else ""
            ctx.freeze_node(f"op {domain}{node.op_type} is not supported; its channels are frozen")
