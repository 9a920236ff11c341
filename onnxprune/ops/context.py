"""What a rule sees while analysing a node (``Context``: the graph index, the
layouts found so far, the atoms, and the calls that record couplings,
weights and freezes) and while rewriting it (``Rewriter``: new sizes, the
node's state from analysis, constants to replace)."""
from __future__ import annotations

import numpy as np
import onnx

from onnxprune.core.graph import GraphView
from onnxprune.core.layout import Layout, LayoutError
from onnxprune.ops.base import APPROX, INEXACT, ROLES, Analysis, WeightUse
from onnxprune.ops.fold import known_ints, literal_source, partial_value
from onnxprune.ops.registry import domain_of, node_attr


class Context:
    def __init__(self, view: GraphView, analysis: Analysis) -> None:
        self.view = view
        self.a = analysis
        self.atoms = analysis.atoms
        self.node: onnx.NodeProto | None = None
        self.index = -1

    # -- naming and attributes -------------------------------------------------
    def where(self) -> str:
        return f"node '{self.node.name}' ({self.node.op_type})"

    @property
    def opset(self) -> int | None:
        """The model's opset for the current node's domain."""
        return self.view.opsets.get(domain_of(self.node))

    def attr(self, name: str, default=None):
        """The current node's attribute, else the schema default, else ``default``."""
        return node_attr(self.node, name, self.opset, default)

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
        return None if ax is None else self.a.layout(tensor, ax)

    def axes(self, tensor: str) -> dict[int, Layout]:
        return dict(self.a.layouts.get(tensor, {}))

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
        old = self.a.layout(tensor, ax)
        if old is not None:
            self.unify(old, layout)
            return
        self.a.layouts.setdefault(tensor, {})[ax] = layout

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
        lay = self._expanded_constant(tensor, ax, size)
        if lay is not None:
            return lay
        why = self.origin_reason(tensor)
        if self.a.allow_io and tensor in self.view.graph_inputs:
            # a cache: groups._freeze_interface decides -- unless a node before this one read the
            # input without these channels (its rule ran without the layout: it would not follow)
            earlier = [c for c, _ in self.view.consumers.get(tensor, []) if self.view.index_of[id(c)] < self.index]
            why = (f"graph input '{tensor}' is read by node '{earlier[0].name}' before its channels are "
                   f"tracked") if earlier else None
        lay = self.atoms.plain(size, why)
        self.a.layouts.setdefault(tensor, {})[ax] = lay
        return lay

    def _expanded_constant(self, tensor: str, ax: int, size: int) -> Layout | None:
        """A stored constant broadcast by Expand to the batch (a ViT's class
        token ``cls.expand(B, -1, -1)``) meets channels here: a parameter of
        those channels, sliced where it is stored. Only along an axis the
        constant has whole (size > 1) and the target keeps (entry 1, or not
        stated), and only when no reader of the Expand ran before this one
        (it would not have seen the channels)."""

        p = self.view.producer.get(tensor)
        if p is None or p.op_type != "Expand" or size <= 1 or not self.view.is_const(p.input[0]):
            return None
        shape, ry = self.view.const_shape(p.input[0]), self.view.rank(tensor)
        target = known_ints(partial_value(self.view, p.input[1]))
        if shape is None or ry is None or target is None:
            return None
        src, k = ax - (ry - len(shape)), ax - (ry - len(target))
        if src < 0 or shape[src] != size or (k >= 0 and target[k] != 1):
            return None
        if any(self.view.index_of[id(c)] < self.index for c, _ in self.view.consumers.get(tensor, [])):
            return None
        lay = self.atoms.plain(size)
        self.a.uses.append(WeightUse(self.view.index_of[id(p)], 0, src, lay, "param"))
        self.a.layouts.setdefault(tensor, {})[ax] = lay
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

    def inexact(self, layout: Layout | None, why: str) -> None:
        """Frozen unless the user asks for the hidden size (``--prune hidden``):
        removing these channels changes a statistic (a norm's mean and
        variance), so pruned != masked; the validation shows the real error."""
        self.freeze(layout, INEXACT + why)

    def approximate(self, layout: Layout | None, why: str) -> None:
        """Prunable, but pruned == masked only up to a run-time quantization
        step: ``DynamicQuantizeLinear`` takes its scale from the range of the
        whole tensor, so without a removed channel that held the extreme
        value the kept ones are quantized a little finer. The report says
        so and the validation measures the real error."""
        self.freeze(layout, APPROX + why)

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
        assert role in ROLES, role
        if layout is None or slot >= len(self.node.input) or not self.node.input[slot]:
            return False
        name = self.node.input[slot]
        shape = self.view.const_shape(name)
        if shape is None:
            self.freeze(layout, f"input '{name}' is computed at run time; its channels stay unpruned")
            return False
        if axis < 0:
            axis += len(shape)
        if not 0 <= axis < len(shape) or shape[axis] != self.atoms.layout_size(layout):
            self.freeze(layout, f"constant '{name}' of shape {list(shape)} does not match the channels")
            return False
        self.a.uses.append(WeightUse(self.index, slot, axis, layout, role))
        return True

    def const(self, slot: int):
        if slot >= len(self.node.input) or not self.node.input[slot]:
            return None
        return self.view.const(self.node.input[slot])

    def const_shape(self, slot: int):
        if slot >= len(self.node.input) or not self.node.input[slot]:
            return None
        return self.view.const_shape(self.node.input[slot])

    def literal(self, shape_input: str, entry: int, layout: Layout):
        """Where a run-time shape states this channel count as a literal
        (``fold.literal_source``), claimed for this node; None if nowhere."""

        shared: set = set()
        src = literal_source(self.view, shape_input, entry, shared=shared)
        if src is not None:
            self.a.literal_claims.setdefault(src, []).append((self.index, layout, shared))
        return src

    def state(self, **data) -> None:
        self.a.states.setdefault(self.index, {}).update(data)


class Rewriter:
    """What a rule may change when the keep-sets are applied."""

    def __init__(self, view: GraphView, analysis: Analysis, keep: dict[int, np.ndarray]) -> None:
        self.view = view
        self.a = analysis
        self.keep = keep  # leaf atom -> kept indices
        self.const_edits: dict[tuple[int, int], np.ndarray] = {}

    def attr(self, node: onnx.NodeProto, name: str, default=None):
        return node_attr(node, name, self.view.opsets.get(domain_of(node)), default)

    def layout(self, tensor: str, axis: int) -> Layout | None:
        r = self.view.rank(tensor)
        if r is not None and axis < 0:
            axis += r
        return self.a.layout(tensor, axis)

    def size(self, layout: Layout) -> int:
        return self.a.atoms.new_size(layout, self.keep)

    def full_size(self, layout: Layout) -> int:
        return self.a.atoms.layout_size(layout)

    def new_shape(self, tensor: str) -> tuple | None:
        shape = self.view.shape(tensor)
        if shape is None:
            return None
        out = list(shape)
        for ax, lay in self.a.layouts.get(tensor, {}).items():
            if ax < len(out):
                out[ax] = self.size(lay)
        return tuple(out)

    def changed(self, tensor: str) -> bool:
        return self.new_shape(tensor) != self.view.shape(tensor)

    def state(self, index: int) -> dict:
        return self.a.states.get(index, {})

    def set_const(self, index: int, slot: int, value: np.ndarray) -> None:
        self.const_edits[(index, slot)] = value

    def current(self, index: int, slot: int) -> np.ndarray:
        """A node input's value with this rewrite's edits so far."""
        if (index, slot) in self.const_edits:
            return self.const_edits[(index, slot)]
        return self.view.const(self.view.nodes[index].input[slot])

    def rewrite_literals(self, index: int, tensor: str) -> None:
        """Write the new sizes of ``tensor``'s axes into the literals a shape
        computed at run time states them in (``fold.literal_source``, saved by
        the rule as ``literals``: axis -> (reader, slot, flat index))."""
        new = self.new_shape(tensor)
        for ax, (reader, slot, flat) in self.state(index).get("literals", {}).items():
            if self.layout(tensor, ax) is not None and new[ax] != self.view.shape(tensor)[ax]:
                if isinstance(flat, tuple):  # ("dim", axis): a constant read only for its shape
                    value = np.take(self.current(reader, slot), np.arange(new[ax]), axis=flat[1])
                else:
                    value = np.array(self.current(reader, slot), copy=True)
                    value.reshape(-1)[flat] = new[ax]
                self.set_const(reader, slot, value)

    def new_const(self, hint: str, value: np.ndarray) -> str:  # pragma: no cover - see rewrite._Edits
        raise NotImplementedError

    def select_input(self, index: int, slot: int, axis: int, positions: np.ndarray) -> None:  # pragma: no cover
        raise NotImplementedError  # see rewrite._Edits

    def positions(self, layout: Layout) -> np.ndarray:
        """The kept positions along an axis of this layout (of its full size)."""
        return self.a.atoms.positions(layout, self.keep)
