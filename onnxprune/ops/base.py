"""What a rule is, and what it sees while analysing (Context) and rewriting (Rewriter).

A rule answers, for its op family, everything the engine needs:

1. ``analyze``: which input/output dims are the same channel space
   (``ctx.set`` / ``ctx.unify``) and which constant inputs are indexed by
   which dim (``ctx.weight``);
2. ``rewrite``: what attribute or shape constant changes when a dim shrinks;
3. ``macs``: its cost, from the shapes;
4. ``linear``: its linear form ``y = W x (+ b)`` where it has one (what
   masking, compensation and the activation criteria need).

No module outside ``ops/`` names an op type: it asks the node's rule.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune.core.graph import GraphView
from onnxprune.core.layout import Atoms, Layout, LayoutError
from onnxprune.ops.fold import known_ints, literal_source, partial_value
from onnxprune.ops.registry import domain_of, lookup, node_attr

# Roles of a weight slice. "out": the slice produces the channel (a filter, its
# bias); "in": a linear consumer reads the channel (the masked model zeroes
# these); "scale": a per-channel multiplier of a channel-wise op (BatchNorm's
# gamma, a decomposed BN's Mul: what the ``bn`` criterion reads); "param": any
# other per-channel parameter of a channel-wise op.
ROLES = ("out", "in", "scale", "param")
INEXACT = "inexact (prune with --prune hidden): "  # a freeze reason --prune hidden lifts
# Not a freeze: pruned == masked up to one step of a quantization the model does
# at run time (see ``Ctx.approximate``); groups list these apart from freezes.
APPROX = "approximate: "


@dataclass
class WeightUse:
    node: int  # node index in the graph
    input: int  # input slot of that node
    axis: int
    layout: Layout
    role: str


@dataclass(frozen=True)
class LinearForm:
    """``y = W x + b`` along one axis pair, whatever the op's layout.

    ``weight``: the input slot holding W; ``in_axis`` / ``out_axis``: W's axes
    indexed by input features and by output neurons (other W axes are kernel
    taps); ``x``: the activation's input slot and ``x_axis`` its contracted
    axis; ``y_axis``: the output axis holding the neurons; ``bias``: the input
    slot where the op takes a per-neuron bias, present or not (None when it
    takes none: compensation then adds an Add node); ``bias_scale``: what the
    op multiplies its bias by (Gemm's beta).
    ``dense``: every input feeds every output (False for grouped convs).
    ``refit``: compensation may rewrite W and the bias (False for integer
    weights, which scores still read).
    """

    weight: int
    in_axis: int
    out_axis: int
    x: int
    x_axis: int
    y_axis: int
    bias: int | None = None
    bias_scale: float = 1.0
    dense: bool = True
    refit: bool = True  # False: stored as integers (MatMulInteger): scored, never rewritten by compensation
    zero_point: int | None = None  # the input slot of W's zero point: the effective weight is W - zp

    def zero_point_input(self, node) -> str:
        """The name of W's zero point input ('' when the op has none)."""
        k = self.zero_point
        return node.input[k] if k is not None and len(node.input) > k else ""

    def along_outputs(self, zp, ndim: int) -> np.ndarray:
        """A zero point (a scalar, or one per output neuron) shaped to
        broadcast against a W of ``ndim`` axes."""
        zp = np.asarray(zp)
        if zp.size <= 1:
            return zp
        shape = [1] * ndim
        shape[self.out_axis] = zp.size
        return zp.reshape(shape)

    def effective(self, value: np.ndarray, zp) -> np.ndarray:
        """W as it computes: minus its zero point, in float64."""
        w = np.asarray(value, dtype=np.float64)
        return w if zp is None else w - self.along_outputs(np.asarray(zp, np.float64), w.ndim)

    def matrix(self, value: np.ndarray) -> np.ndarray:
        """W as (inputs, outputs, kernel taps), float64."""
        w = np.moveaxis(np.asarray(value, dtype=np.float64), [self.in_axis, self.out_axis], [0, 1])
        return w.reshape(w.shape[0], w.shape[1], -1)

    def from_matrix(self, m: np.ndarray, like: np.ndarray) -> np.ndarray:
        """Inverse of ``matrix``: back to W's own layout and dtype."""
        ndim = np.ndim(like)
        in_axis, out_axis = self.in_axis % ndim, self.out_axis % ndim
        moved = np.moveaxis(like, [in_axis, out_axis], [0, 1])
        back = np.moveaxis(m.reshape(moved.shape), [0, 1], [in_axis, out_axis])
        return back.astype(np.asarray(like).dtype)


@dataclass
class Analysis:
    """Everything a later stage needs from the analysis pass."""

    atoms: Atoms = field(default_factory=Atoms)
    layouts: dict = field(default_factory=dict)  # tensor -> {axis: Layout}
    uses: list = field(default_factory=list)  # [WeightUse]
    states: dict = field(default_factory=dict)  # node index -> rule data for rewrite
    internal_errors: list = field(default_factory=list)  # "rule X on node Y: ..."
    # literal location -> [(claiming node, layout, nodes that share its shape vector)]
    literal_claims: dict = field(default_factory=dict)
    allow_io: bool = False  # graph inputs may carry prunable channels (``io_change``; settled at the end)

    def layout(self, tensor: str, axis: int) -> Layout | None:
        return self.layouts.get(tensor, {}).get(axis)

    def items(self):
        """((tensor, axis), layout) for every tracked dim."""
        for tensor, axes in self.layouts.items():
            for axis, lay in axes.items():
                yield (tensor, axis), lay


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


class Rule:
    """One op family. Register with ``@register(...)`` from ``ops.registry``."""

    ops: tuple[str, ...] = ()
    domain: str = ""
    # One line for ``onnxprune ops``: what channels do through this op.
    summary: str = ""
    # Ops with subgraphs: True when ``analyze`` relates the subgraphs' outputs
    # to the node's (an If's outputs are its branches'); otherwise they freeze.
    couples_subgraph_outputs: bool = False
    # How the cost of the subgraphs counts in the node's MACs: "max" (one
    # branch runs: the costlier counts), or "none" (a loop body: its trip count
    # is data, so it is left out of MACs per sample).
    subgraph_cost: str = "none"

    def analyze(self, node: onnx.NodeProto, ctx: Context) -> None:  # pragma: no cover
        raise NotImplementedError

    def rewrite(self, node: onnx.NodeProto, index: int, rw: Rewriter) -> None:
        """Change attributes / shape constants after dims shrink. Default: nothing."""

    def macs(self, node: onnx.NodeProto, view: GraphView) -> int | None:
        """Multiply-accumulates per sample (the symbolic batch counts as 1);
        None when a shape it needs is unknown. Default: 0."""
        return 0

    def linear(self, node: onnx.NodeProto, view: GraphView) -> LinearForm | None:
        """The node's linear form, when it is a linear layer with a constant weight."""
        return None

    def moments(self, node: onnx.NodeProto, view: GraphView, given):
        """Per-channel (mean, std) along axis 1 of output 0, from what the
        model stores (data-free compensation, ``datafree.py``): ``given`` is
        input 0's, or None when unknown. None when the op cannot say."""
        return None

    def trace(self, node: onnx.NodeProto, view: GraphView, axis: int, follow):
        """Which stored constants axis ``axis`` of this node's constant-folded
        output is cut from, so the rewrite can slice them at their source:
        ``follow(input, axis)`` answers for one input ([(constant, axis)], or
        None). None when the op cannot say. Default: None."""
        return None

    def keeps_zero(self, node: onnx.NodeProto) -> bool:
        """Whether the op maps zero to zero exactly, so a stored constant zeroed
        in the masked model still reads as zero through it (``weights.zero_safe``)."""
        return False

    def zero_for(self, node: onnx.NodeProto, view: GraphView, slot: int, value: np.ndarray) -> np.ndarray | None:
        """What the stored ``value`` at input ``slot`` must hold for this node to
        read it as zero (a masked weight): zero, unless the op says otherwise
        (a quantized input: its zero point); None when that cannot be stated."""
        return np.zeros(value.shape, dtype=value.dtype)

    def reads_merged_axis(self, node: onnx.NodeProto, view: GraphView, tensor: str, axis: int, dim) -> bool:
        """Whether the node reads ``axis`` of ``tensor``, an axis that merges the
        batch with channels (``s*K``), only by moving it or position by
        position, so that each period of K positions keeps its channels'
        layout. Default: no (the channels then freeze)."""
        return False

    def describe(self) -> str:
        return self.summary or (self.__doc__ or "").strip().splitlines()[0]


def broadcast_trace(node: onnx.NodeProto, view: GraphView, axis: int, follow, inputs=None):
    """``Rule.trace`` through multidirectional broadcasting: each input of full
    size along ``axis`` is followed; one broadcast along it is left as it is."""
    shape = view.const_shape(node.output[0])
    if shape is None:
        return None
    out = []
    for name in (node.input if inputs is None else inputs):
        if not name:
            continue
        s = view.const_shape(name)
        if s is None:
            return None
        a = axis - (len(shape) - len(s))
        if a < 0 or s[a] == 1:
            continue  # broadcast along the traced axis: left as it is
        sub = follow(name, a)
        if sub is None:
            return None
        out += sub
    return out


def broadcast_keeps_merged(node: onnx.NodeProto, view: GraphView, tensor: str, axis: int, dim) -> bool:
    """``Rule.reads_merged_axis`` for an element-wise op: every other operand
    broadcasts along the merged axis or merges it the same way."""
    rank, out_rank = view.rank(tensor), view.rank(node.output[0])
    for other in (n for n in node.input if n and n != tensor):
        shape, r = view.shape(other), view.rank(other)
        if shape is None or r is None or out_rank is None or rank is None:
            return False
        k = axis + (out_rank - rank) - (out_rank - r)
        if k < 0:
            continue  # broadcast from the left
        if shape[k] != 1 and shape[k] != dim:
            return False
    return True


class Unsupported(Rule):
    """Any op with no rule: every channel it touches is frozen."""

    def analyze(self, node, ctx):
        if any(ctx.axes(n) for n in node.input if n and not ctx.view.is_const(n)):
            domain = f"{node.domain}." if domain_of(node) else ""
            ctx.freeze_node(f"op {domain}{node.op_type} has no rule (opset {ctx.opset}); "
                            f"its channels are frozen")


UNSUPPORTED = Unsupported()


_RULES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # graph index -> {(domain, op): rule}


def rule_for(node: onnx.NodeProto, view: GraphView) -> Rule:

    key = (node.domain, node.op_type)
    cache = _RULES.get(view)
    if cache is None:
        cache = _RULES[view] = {}
    rule = cache.get(key)
    if rule is None:
        rule = cache[key] = lookup(node.domain, node.op_type, view.opsets.get(domain_of(node))) or UNSUPPORTED
    return rule


def attr_of(node: onnx.NodeProto, view: GraphView, name: str, default=None):
    """A node's attribute (schema default when absent), outside analysis."""
    return node_attr(node, name, view.opsets.get(domain_of(node)), default)


def numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
