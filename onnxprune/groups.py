"""Stage 2: find every group of coupled channels.

Runs each node's rule (from the table in ``ops``) in topological order over a
union-find of channel atoms, then freezes what must not change: dims that reach
the graph's inputs or outputs, tensors read inside subgraphs, layouts the
algebra cannot express. Knows no op by name.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np

import onnx

from .costs import count_macs, count_params
from .graph import GraphView
from .layout import LayoutError
from .ops import Analysis, Context, rule_for


@dataclass
class Group:
    """One set of channels that must keep the same index subset everywhere."""

    id: int
    atom: int
    channels: int  # prunable units (channels, or whole blocks such as conv groups / heads)
    width: int  # tensor positions one unit spans in its widest member (1 for plain channels)
    per_channel: int  # parameters attached to one unit
    members: list[str]  # node names, in graph order
    tensors: list[str]
    frozen: list[str]
    min_keep: int = 1

    @property
    def params(self) -> int:
        return self.channels * self.per_channel

    @property
    def prunable(self) -> bool:
        return not self.frozen

    def to_dict(self) -> dict:
        return {"id": self.id, "channels": self.channels, "width": self.width,
                "params": self.params, "members": self.members, "frozen": self.frozen}


@dataclass
class Groups:
    """Result of analysis: the groups and everything the rewrite needs."""

    groups: list[Group]
    params_total: int
    macs: int
    model: onnx.ModelProto = field(repr=False)
    view: GraphView = field(repr=False)
    analysis: Analysis = field(repr=False)
    source_path: str | None = None
    external: frozenset = frozenset()  # initializers the input stored as external data

    @property
    def external_data(self) -> bool:
        return bool(self.external)

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    @property
    def params_prunable(self) -> int:
        """Weight elements that some prunable group could remove, each counted once."""
        atoms = self.analysis.atoms
        open_atoms = {g.atom for g in self.prunable}
        masks: dict[str, np.ndarray] = {}
        for use in self.analysis.uses:
            leaves = atoms.leaves(use.layout)
            hit = leaves & open_atoms
            if not hit:
                continue
            name = self.view.const_root(self.view.nodes[use.node].input[use.input])
            value = self.view.const(name)
            mask = masks.setdefault(name, np.zeros(value.shape, dtype=bool))
            for atom in hit:
                pos = atoms.positions(use.layout, {a: np.zeros(0, np.int64) for a in leaves if a != atom})
                idx = [slice(None)] * mask.ndim
                idx[use.axis] = pos
                mask[tuple(idx)] = True
        return int(sum(m.sum() for m in masks.values()))

    def by_atom(self) -> dict[int, Group]:
        return {g.atom: g for g in self.groups}

    def to_dict(self) -> dict:
        return {"params_total": self.params_total, "params_prunable": self.params_prunable,
                "macs": self.macs, "groups": [g.to_dict() for g in self.groups]}

    def exclude(self, patterns) -> None:
        """Freeze groups with a member node or tensor matching any glob pattern."""
        for g in self.groups:
            for pat in patterns:
                hit = next((n for n in g.members + g.tensors if fnmatch.fnmatchcase(n, pat)), None)
                if hit is not None:
                    reason = f"excluded by pattern '{pat}' (matches '{hit}')"
                    if reason not in g.frozen:
                        g.frozen.append(reason)
                    break


def _freeze_interface(view: GraphView, ctx: Context, analysis: Analysis) -> None:
    atoms = analysis.atoms
    by_tensor: dict[str, list] = {}
    for (tensor, _), lay in analysis.layouts.items():
        by_tensor.setdefault(tensor, []).append(lay)
    for name in view.graph_outputs:
        for lay in by_tensor.get(name, []):
            atoms.freeze(lay, f"reaches graph output '{name}'")
    for name in view.graph_inputs:
        for lay in by_tensor.get(name, []):
            atoms.freeze(lay, f"reaches graph input '{name}'")
    for name, node in view.captured.items():
        for lay in by_tensor.get(name, []):
            atoms.freeze(lay, f"read inside a subgraph of node '{node}'")
    for lay in list(analysis.layouts.values()) + [u.layout for u in analysis.uses]:
        try:
            atoms.resolve(lay)
        except LayoutError as e:
            atoms.freeze(lay, str(e))


def _couple_shared_weights(view: GraphView, analysis: Analysis) -> None:
    """A weight read by several nodes has one keep-set: its readers' channel
    spaces along each sliced axis become one group, or freeze when some
    reader cannot follow the slice. A weight is never duplicated.

    Weights are keyed by what is stored: the initializer or Constant behind an
    Identity chain, or, for a value folded from constants (Cast, Sqrt...), the
    folded tensor itself, whose source constants must have no other reader.
    """
    by_source: dict[str, list] = {}
    for use in analysis.uses:
        name = view.nodes[use.node].input[use.input]
        by_source.setdefault(view.const_root(name) or name, []).append(use)
    for source, uses in by_source.items():
        readers = view.readers(source)
        stray = []
        if view.const_root(source) is None:  # folded: its constants must be private
            leaves, chain = view.const_chain(source)
            folded = view.const(source)
            narrow = [view.const(t) for t in leaves]
            narrow = [v for v in narrow if v is not None and v.dtype.kind == folded.dtype.kind
                      and v.dtype.itemsize < folded.dtype.itemsize]
            if narrow:
                stray.append(f"'{source}' is computed from {narrow[0].dtype} constants; sliced "
                             f"here it would be stored as {folded.dtype}")
            for t in leaves | {o for i in chain for o in view.nodes[i].output}:
                if t == source:
                    continue
                for index, _, label in view.readers(t):
                    if index not in chain:
                        stray.append(f"'{source}' is computed from constant '{t}', "
                                     f"which {label} also reads")
        for axis in sorted({u.axis for u in uses}):
            on_axis = [u for u in uses if u.axis == axis]
            covered = {(u.node, u.input) for u in on_axis}
            why = list(stray)
            why += [f"weight '{source}' is also read by {label}, which does not slice it "
                    f"along axis {axis}" for index, slot, label in readers
                    if (index, slot) not in covered]
            if why:
                for u in on_axis:
                    analysis.atoms.freeze(u.layout, why[0])
                continue
            for u in on_axis[1:]:
                try:
                    analysis.atoms.unify(on_axis[0].layout, u.layout)
                except LayoutError as e:
                    reason = f"weight '{source}' is shared by several nodes: {e}"
                    analysis.atoms.freeze(on_axis[0].layout, reason)
                    analysis.atoms.freeze(u.layout, reason)


def analyze_model(model: onnx.ModelProto, shapes: dict[str, tuple]) -> Groups:
    view = GraphView(model, shapes)
    analysis = Analysis()
    ctx = Context(view, analysis)
    for index, node in enumerate(view.nodes):
        ctx.node, ctx.index = node, index
        try:
            rule_for(node).analyze(node, ctx)
        except (LayoutError, ValueError, IndexError, KeyError, TypeError) as e:
            # A rule met a graph it does not understand: freeze, never guess.
            ctx.freeze_node(f"could not be analysed ({type(e).__name__}: {e})")
    _couple_shared_weights(view, analysis)
    _freeze_interface(view, ctx, analysis)
    return _collect(model, view, analysis)


def _collect(model, view: GraphView, analysis: Analysis) -> Groups:
    atoms = analysis.atoms
    per_channel: dict[int, int] = {}
    width: dict[int, int] = {}
    members: dict[int, list[int]] = {}
    tensors: dict[int, list[str]] = {}
    for use in analysis.uses:
        node = view.nodes[use.node]
        value = view.const(node.input[use.input])
        rest = value.size // max(1, value.shape[use.axis])
        for atom, count in atoms.per_index(use.layout).items():
            per_channel[atom] = per_channel.get(atom, 0) + rest * count
            width[atom] = max(width.get(atom, 1), count)
            members.setdefault(atom, []).append(use.node)
    for (tensor, _), lay in analysis.layouts.items():
        for atom, count in atoms.per_index(lay).items():
            if atom in per_channel:
                tensors.setdefault(atom, []).append(tensor)
                width[atom] = max(width.get(atom, 1), count)
    order = sorted(per_channel, key=lambda a: (min(members[a]), a))
    groups = []
    for gid, atom in enumerate(order):
        names = [view.nodes[i].name for i in sorted(set(members[atom]))]
        groups.append(Group(
            id=gid, atom=atom, channels=atoms.size[atom], width=width.get(atom, 1),
            per_channel=per_channel[atom], members=names,
            tensors=list(dict.fromkeys(tensors.get(atom, []))),
            frozen=list(atoms.frozen(atom)), min_keep=atoms.min_keep.get(atom, 1)))
    return Groups(
        groups=groups, params_total=count_params(model), macs=count_macs(view), model=model, view=view, analysis=analysis)


__all__ = ["Group", "Groups", "analyze_model"]
