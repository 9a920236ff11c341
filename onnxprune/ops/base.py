"""What a rule is (``Rule``), and the records of an analysis (``Analysis``,
``WeightUse``, ``LinearForm``); what a rule sees while analysing and
rewriting is in ``context.py``.

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
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxprune.core.graph import GraphView
from onnxprune.core.layout import Atoms, Layout
from onnxprune.ops.registry import domain_of, lookup, node_attr

if TYPE_CHECKING:  # what rules are handed; context.py imports this module
    from onnxprune.ops.context import Context, Rewriter

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
    ``integer``: W holds quantized integers (``zero_point`` names their zero
    point): compensation refits W in units of its scale (a per-tensor or
    per-output scale cancels out of a refit that mixes inputs) and rounds it
    back to the integers. Their op takes no float bias; ``dequantized`` names
    the float tensor its output becomes once scaled, ``scale`` W's stored
    scale (one, or one per output): a bias, times ``scale``, is added there.
    Without it the refit goes through the origin and adds no bias.
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
    zero_point: int | None = None  # the input slot of W's zero point: the effective weight is W - zp
    integer: bool = False  # W is stored as quantized integers (MatMulInteger, ConvInteger)
    dequantized: str | None = None  # integer W: the float output after the scale Mul, where a bias can go
    scale: tuple = ()  # integer W: its stored scale (one value, or one per output)

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

    def quantized(self, effective: np.ndarray, zp, like: np.ndarray) -> np.ndarray:
        """Inverse of ``effective`` for integer weights: rounded, plus the
        zero point, clipped to the stored type's range, in that type."""
        info = np.iinfo(np.asarray(like).dtype)
        w = np.rint(effective)
        if zp is not None:
            w = w + self.along_outputs(np.asarray(zp, np.float64), w.ndim)
        return np.clip(w, info.min, info.max).astype(np.asarray(like).dtype)

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
