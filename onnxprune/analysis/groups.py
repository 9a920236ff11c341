"""The channel groups the analysis found (``analysis.build``), as an index.

``Groups`` holds each group's weight slices ("members"),
each linear consumer's activation dim, each tensor's layouts, all looked up by
key, never rescanned. Later stages speak to it in stable group ids (the plan,
the report, ``analyze --json`` and a saved plan file use the same ids) and
never reach into the analysis internals.
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from onnxprune.analysis.costs import WEIGHT_TYPES, counted_nodes, node_macs
from onnxprune.core.errors import OnnxPruneError
from onnxprune.core.graph import GraphView
from onnxprune.core.walk import all_graphs, subgraphs
from onnxprune.ops import UNSUPPORTED, Analysis, LinearForm, WeightUse, rule_for
from onnxprune.ops.base import INEXACT


def strict_default() -> bool:
    """Strict mode (a rule that raises fails the run) is on in tests and with --strict."""
    return os.environ.get("ONNXPRUNE_STRICT", "") not in ("", "0")


@dataclass(frozen=True)
class Group:
    """One set of channels that must keep the same index subset everywhere.
    Never changed once found: selecting or excluding groups makes new ones."""

    id: int
    atom: int
    units: int  # prunable units: channels, or whole blocks (conv groups, attention heads) of ``width``
    width: int  # tensor positions one unit spans in its widest member (1 for plain channels)
    per_channel: int  # parameters attached to one unit
    members: list[str]  # node names, in graph order
    tensors: list[str]  # activation tensors the group lives on
    weights: list[tuple[str, int]]  # (stored weight, axis) pairs it slices
    frozen: list[str]
    min_keep: int = 1
    inexact: list = field(default_factory=list)  # with --prune hidden: why pruned != masked here
    approximate: list = field(default_factory=list)  # pruned == masked up to a run-time quantization step

    @property
    def channels(self) -> int:
        """The older name of ``units`` (what plans and reports call "channels")."""
        return self.units

    @property
    def params(self) -> int:
        return self.units * self.per_channel

    @property
    def prunable(self) -> bool:
        return not self.frozen

    def to_dict(self) -> dict:
        return {"id": self.id, "units": self.units, "unit_width": self.width,
                "channels": self.units, "params": self.params,
                "weights": [{"tensor": t, "axis": a} for t, a in self.weights],
                "members": self.members, "frozen": self.frozen, "inexact": self.inexact,
                "approximate": self.approximate}


@dataclass
class WeightStatus:
    """How one stored weight relates to the groups (for ``analyze`` accounting)."""

    tensor: str
    params: int
    status: str  # "prunable", "frozen" or "none"
    why: str = ""


@dataclass
class Groups:
    """Result of analysis: the groups, and an index over what the later stages
    need. Built once (``analysis.build``, then ``stages.loading.analyze`` adds
    where the model came from with ``dataclasses.replace``); ``select`` and
    ``exclude`` return new ones."""

    groups: list[Group]
    params_total: int
    macs: int
    model: onnx.ModelProto = field(repr=False)
    view: GraphView = field(repr=False)
    analysis: Analysis = field(repr=False)
    source_path: str | None = None
    external: frozenset = frozenset()  # initializers the input stored as external data
    source_files: frozenset = frozenset()  # the input model file and its data files (never written)
    # The one field set later, and not about the analysis: the model this index
    # reads was rewritten in place (``rewrite.engine.apply(in_place=True)``).
    consumed: bool = False
    shape_info: object = None  # shapes.Shapes: how the shapes were found (probed, fixed batch, notes)
    _index: dict = field(default_factory=dict, repr=False)

    # -- basic lookups -----------------------------------------------------------
    @property
    def external_data(self) -> bool:
        return bool(self.external)

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    @property
    def internal_errors(self) -> list[str]:
        return self.analysis.internal_errors

    def group(self, gid: int) -> Group:
        return self.groups[gid]

    def by_atom(self) -> dict[int, Group]:
        return {g.atom: g for g in self.groups}

    def uses(self, gid: int) -> list[WeightUse]:
        """Every weight slice of a group, in graph order."""
        return self._index["uses"].get(self.groups[gid].atom, [])

    def consumers(self, gid: int) -> list[WeightUse]:
        """The "in" slices: linear consumers that read the group's channels."""
        return [u for u in self.uses(gid) if u.role == "in"]

    def node(self, use: WeightUse) -> onnx.NodeProto:
        return self.view.nodes[use.node]

    def weight(self, use: WeightUse) -> np.ndarray:
        """The (effective) constant value a slice reads; an integer weight
        with a zero point as it computes, minus the zero point."""
        node = self.view.nodes[use.node]
        value = self.view.const(node.input[use.input])
        form = self.linear(use.node)
        zp = form.zero_point_input(node) if form is not None and use.input == form.weight else ""
        if zp and value is not None:
            return form.effective(value, self.view.const(zp))
        return value

    def weight_name(self, use: WeightUse) -> str:
        name = self.view.nodes[use.node].input[use.input]
        return self.view.const_root(name) or name

    def linear(self, index: int) -> LinearForm | None:
        """The linear form of node ``index`` (its rule's answer, cached)."""
        cache = self._index.setdefault("linear", {})
        if index not in cache:
            node = self.view.nodes[index]
            cache[index] = rule_for(node, self.view).linear(node, self.view)
        return cache[index]

    def linear_readers(self, gids):
        """(use, node, form) once per consumer input that reads these groups;
        ``form`` is None where the node's rule gives no linear form for that
        input (compensation and refits can then not touch it)."""
        seen = set()
        for gid in gids:
            for use in self.consumers(gid):
                key = (use.node, use.input, use.axis)
                if key in seen:
                    continue
                seen.add(key)
                form = self.linear(use.node)
                if form is not None and (form.weight != use.input
                                         or form.in_axis % np.ndim(self.weight(use)) != use.axis):
                    form = None
                yield use, self.node(use), form

    def activation(self, use: WeightUse) -> tuple[str, int] | None:
        """The (tensor, axis) a linear consumer reads through this "in" slice."""
        key = (use.node, use.input, use.axis)
        return self._index["activation"].get(key)

    # -- index algebra -------------------------------------------------------------
    def atom_keep(self, keep: dict) -> dict:
        """Group id -> kept units, as the rewrite needs it (leaf atom -> indices)."""
        return {self.groups[gid].atom: np.asarray(idx, dtype=np.int64) for gid, idx in keep.items()}

    def positions(self, layout, keep: dict) -> np.ndarray:
        """Positions along an axis that survive a plan (group id -> kept units)."""
        return self.analysis.atoms.positions(layout, self.atom_keep(keep))

    def kept_fraction(self, layout, atom_keep: dict) -> float:
        atoms = self.analysis.atoms
        full = atoms.layout_size(layout)
        return atoms.new_size(layout, atom_keep) / full if full else 1.0

    def unit_rows(self, gid: int, layout, values: np.ndarray) -> np.ndarray:
        """Per-position values along an axis laid out by ``layout`` -> an array
        (units, rest) holding, for each unit of the group, every value it owns
        (the positions of its block, across every segment it appears in)."""
        atoms = self.analysis.atoms
        atom = self.groups[gid].atom
        n = atoms.size[atom]
        rows = np.asarray(values)
        if rows.dtype.kind != "f" or rows.dtype.itemsize < 4:
            rows = rows.astype(np.float32)  # float16, bfloat16, integers: compute in float32
        rows = rows.reshape(rows.shape[0], -1)
        start, parts = 0, []
        for seg in self._resolved(layout):
            size = seg.outer * atoms.size[seg.atom] * seg.inner
            if seg.atom == atom:
                block = rows[start:start + size].reshape(seg.outer, n, seg.inner, -1)
                parts.append(np.moveaxis(block, 1, 0).reshape(n, -1))
            start += size
        return np.concatenate(parts, axis=1) if parts else np.zeros((n, 0))

    def weight_rows(self, gid: int, use: WeightUse) -> np.ndarray:
        """A member's weight as (units, everything else), in float32 or wider."""
        value = np.moveaxis(np.asarray(self.weight(use)), use.axis, 0)
        return self.unit_rows(gid, use.layout, value.reshape(value.shape[0], -1))

    def _resolved(self, layout):
        cache = self._index.setdefault("resolved", {})
        key = id(layout)
        hit = cache.get(key)
        if hit is None or hit[0] is not layout:
            hit = cache[key] = (layout, self.analysis.atoms.resolve(layout))
        return hit[1]

    def macs_terms(self) -> list[tuple[int, list]]:
        """(MACs, layouts) per costly node: its MACs scale with the kept
        fraction of each layout (its output channels and its linear inputs).
        A node with linear inputs in more than one weight (a recurrent cell's
        W reads the input features, R the hidden state) is a sum: one term
        per weight, its share of the MACs that weight's share of their
        elements (every element is one multiply per step), so removing
        hidden units saves what they cost in W and in R, not their product."""
        if "macs_terms" not in self._index:

            in_layouts: dict[int, dict] = {}
            for use in self.analysis.uses:
                if use.role == "in":
                    in_layouts.setdefault(use.node, {}).setdefault(use.input, []).append(use.layout)
            terms = []
            found = counted_nodes(self.view)
            for i in (found[1] if found is not None else range(len(self.view.nodes))):
                node = self.view.nodes[i]
                macs = node_macs(self.view, node)
                if not macs:
                    continue
                outs = list(self.analysis.layouts.get(node.output[0], {}).values()) if node.output else []
                by_weight = in_layouts.get(i, {})
                sizes = {slot: int(np.prod(self.view.const_shape(node.input[slot]) or [0], dtype=np.int64))
                         for slot in by_weight}
                if len(by_weight) < 2 or not all(sizes.values()):
                    terms.append((macs, outs + [lay for lays in by_weight.values() for lay in lays]))
                    continue
                total = sum(sizes.values())
                terms.extend((macs * sizes[slot] / total, outs + lays) for slot, lays in by_weight.items())
            self._index["macs_terms"] = terms
        return self._index["macs_terms"]

    # -- accounting ----------------------------------------------------------------
    @property
    def params_prunable(self) -> int:
        """Weight elements that some prunable group could remove, each counted once."""
        return sum(w.params for w in self._weight_masks(prunable_only=True))

    def _weight_masks(self, prunable_only: bool):
        atoms = self.analysis.atoms
        wanted = {g.atom for g in self.groups if g.prunable or not prunable_only}
        masks: dict[str, np.ndarray] = {}
        for use in self.analysis.uses:
            leaves = atoms.leaves(use.layout)
            hit = leaves & wanted
            if not hit:
                continue
            name = self.weight_name(use)
            shape = self.view.const_shape(self.view.nodes[use.node].input[use.input])
            mask = masks.setdefault(name, np.zeros(shape, dtype=bool))
            if mask.shape != tuple(shape):
                continue  # a folded value of another shape reads this weight
            for atom in hit:
                pos = atoms.positions(use.layout, {a: np.zeros(0, np.int64) for a in leaves if a != atom})
                idx = [slice(None)] * mask.ndim
                idx[use.axis] = pos
                mask[tuple(idx)] = True
        return [WeightStatus(n, int(m.sum()), "prunable") for n, m in masks.items()]

    def weight_status(self) -> list[WeightStatus]:
        """Every float weight: in a prunable group, only in frozen groups (with the
        first reason), or in no group (with why: its readers)."""

        view = self.view
        by_weight: dict[str, list] = {}
        for use in self.analysis.uses:
            by_weight.setdefault(self.weight_name(use), []).append(use)
        atom_group = self.by_atom()
        out = []
        for name, dims, dtype, where in _stored_weights(view):
            if dtype not in WEIGHT_TYPES:
                continue
            size = int(np.prod(dims, dtype=np.int64)) if len(dims) else 1
            uses = by_weight.get(name, []) if where is None else []
            groups = [atom_group.get(a) for u in uses for a in self.analysis.atoms.leaves(u.layout)]
            groups = [g for g in groups if g is not None]
            if any(g.prunable for g in groups):
                out.append(WeightStatus(name, size, "prunable"))
            elif groups:
                out.append(WeightStatus(name, size, "frozen", groups[0].frozen[0]))
            elif where is not None:
                out.append(WeightStatus(name, size, "none", where))
            else:
                kinds: dict[str, int] = {}
                for index, _, label in view.readers(name):
                    if index is None:
                        kind = label
                    else:
                        reader = view.nodes[index]
                        kind = reader.op_type if rule_for(reader, view) is not UNSUPPORTED \
                            else f"{reader.op_type} (an op with no rule)"
                    kinds[kind] = kinds.get(kind, 0) + 1
                why = ("read by " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
                       + " with no channel axis through it") if kinds else "read by no node"
                out.append(WeightStatus(name, size, "none", why))
        return out

    def to_dict(self) -> dict:
        status = self.weight_status()
        per = {k: sum(w.params for w in status if w.status == k) for k in ("prunable", "frozen", "none")}
        return {"params_total": self.params_total, "params_prunable": self.params_prunable,
                "params_in_prunable_groups": per["prunable"],
                "params_in_frozen_groups": per["frozen"], "params_in_no_group": per["none"],
                "macs": self.macs, "internal_errors": list(self.internal_errors),
                "groups": [g.to_dict() for g in self.groups],
                "ungrouped": [{"tensor": w.tensor, "params": w.params, "why": w.why}
                              for w in status if w.status == "none"]}

    def select(self, kinds) -> Groups:
        """Only groups of these kinds stay prunable (``--prune``): ``heads`` are
        units that span several positions (attention heads; the blocks of a
        grouped conv), ``neurons`` single channels (MLP neurons, conv
        filters), ``hidden`` the groups only a norm freezes (pruned, not
        exactly). -> a new ``Groups``; the others freeze there, with the
        reason. This one is left as it is."""
        kinds = set(kinds or ())
        unknown = kinds - {"heads", "neurons", "hidden"}
        if unknown:
            raise OnnxPruneError(f"--prune takes heads, neurons or hidden, not {', '.join(sorted(unknown))}")
        out = []
        for g in self.groups:
            if "hidden" in kinds and g.frozen and all(INEXACT in r for r in g.frozen):
                g = replace(g, inexact=list(g.frozen), frozen=[])  # frozen only because a norm reads them
            if kinds and kinds not in ({"heads", "neurons"}, {"heads", "neurons", "hidden"}):
                kind = "hidden" if g.inexact else "heads" if g.width > 1 else "neurons"
                reason = f"not selected: --prune {','.join(sorted(kinds))} (this group's units are {kind})"
                if kind not in kinds and reason not in g.frozen:
                    g = replace(g, frozen=[*g.frozen, reason])
            out.append(g)
        return replace(self, groups=out)

    def exclude(self, patterns) -> Groups:
        """-> a new ``Groups`` where groups with a member node or tensor matching
        any glob pattern are frozen, with the pattern as the reason."""
        out = []
        for g in self.groups:
            for pat in patterns:
                hit = next((n for n in g.members + g.tensors if fnmatch.fnmatchcase(n, pat)), None)
                if hit is not None:
                    reason = f"excluded by pattern '{pat}' (matches '{hit}')"
                    if reason not in g.frozen:
                        g = replace(g, frozen=[*g.frozen, reason])
                    break
            out.append(g)
        return replace(self, groups=out)


def _stored_weights(view: GraphView):
    """(name, dims, dtype, why not analysed or None) of every stored tensor the
    parameter count counts: initializers and Constant values, subgraphs included
    (those of an opaque subgraph with why)."""

    def constants(nodes, why):
        for n in nodes:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        yield n.output[0], a.t.dims, a.t.data_type, why

    for t in view.initializers.values():
        why = "also a graph input, so it can be replaced at run time" \
            if view.const_root(t.name) is None else None
        yield t.name, t.dims, t.data_type, why
    yield from constants(view.nodes, None)
    for node in view.nodes:
        if node.name not in view.opaque:
            continue
        for sub in subgraphs(node):
            for g in all_graphs(sub):
                why = (f"inside a subgraph of node '{node.name}' ({node.op_type}), which is not "
                       f"analysed ({view.opaque[node.name]})")
                for t in g.initializer:
                    yield t.name, t.dims, t.data_type, why
                yield from constants(g.node, why)


__all__ = ["Group", "Groups", "WeightStatus", "strict_default"]
