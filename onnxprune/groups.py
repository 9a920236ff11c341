"""Stage 2: find every group of coupled channels, and index them.

Runs each node's rule (from the registry in ``ops``) in topological order over
a union-find of channel atoms, then freezes what must not change: dims that
reach the graph's inputs or outputs, tensors read inside subgraphs, layouts
the algebra cannot express, weights shared with a reader that cannot follow
a slice. Knows no op by name.

The result, ``Groups``, is an index: each group's weight slices ("members"),
each linear consumer's activation dim, each tensor's layouts, all looked up by
key, never rescanned. Later stages speak to it in stable group ids (the plan,
the report, ``analyze --json`` and a saved plan file use the same ids) and
never reach into the analysis internals.
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field

import numpy as np
import onnx

from .costs import count_macs, count_params
from .errors import InternalError
from .graph import GraphView, factor
from .layout import LayoutError
from .weights import trace
from .ops import UNSUPPORTED, Analysis, Context, LinearForm, WeightUse, rule_for


def strict_default() -> bool:
    """Strict mode (a rule that raises fails the run) is on in tests and with --strict."""
    return os.environ.get("ONNXPRUNE_STRICT", "") not in ("", "0")


@dataclass
class Group:
    """One set of channels that must keep the same index subset everywhere."""

    id: int
    atom: int
    channels: int  # prunable units (channels, or whole blocks such as conv groups / heads)
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
    def params(self) -> int:
        return self.channels * self.per_channel

    @property
    def prunable(self) -> bool:
        return not self.frozen

    def to_dict(self) -> dict:
        return {"id": self.id, "units": self.channels, "unit_width": self.width,
                "channels": self.channels, "params": self.params,
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
    """Result of analysis: the groups, and an index over what the later stages need."""

    groups: list[Group]
    params_total: int
    macs: int
    model: onnx.ModelProto = field(repr=False)
    view: GraphView = field(repr=False)
    analysis: Analysis = field(repr=False)
    source_path: str | None = None
    external: frozenset = frozenset()  # initializers the input stored as external data
    source_files: frozenset = frozenset()  # the input model file and its data files (never written)
    consumed: bool = False  # the model was rewritten in place (``rewrite.apply(in_place=True)``)
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
        fraction of each layout (its output channels and its linear inputs)."""
        if "macs_terms" not in self._index:
            from .costs import counted_nodes, node_macs

            in_layouts: dict[int, list] = {}
            for use in self.analysis.uses:
                if use.role == "in":
                    in_layouts.setdefault(use.node, []).append(use.layout)
            terms = []
            found = counted_nodes(self.view)
            for i in (found[1] if found is not None else range(len(self.view.nodes))):
                node = self.view.nodes[i]
                macs = node_macs(self.view, node)
                if macs:
                    outs = list(self.analysis.layouts.get(node.output[0], {}).values()) if node.output else []
                    terms.append((macs, outs + in_layouts.get(i, [])))
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
        from .costs import _WEIGHT_TYPES

        view = self.view
        by_weight: dict[str, list] = {}
        for use in self.analysis.uses:
            by_weight.setdefault(self.weight_name(use), []).append(use)
        atom_group = self.by_atom()
        out = []
        for name, dims, dtype, where in _stored_weights(view):
            if dtype not in _WEIGHT_TYPES:
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

    def select(self, kinds) -> None:
        """Prune only groups of these kinds (``--prune``): ``heads`` are units
        that span several positions (attention heads; the blocks of a grouped
        conv), ``neurons`` single channels (MLP neurons, conv filters). The
        others freeze, with the reason."""
        from .ops.base import INEXACT

        kinds = set(kinds or ())
        unknown = kinds - {"heads", "neurons", "hidden"}
        if unknown:
            from .errors import OnnxPruneError
            raise OnnxPruneError(f"--prune takes heads, neurons or hidden, not {', '.join(sorted(unknown))}")
        if "hidden" in kinds:
            for g in self.groups:  # frozen only because a norm reads them: prunable, not exactly
                if g.frozen and all(INEXACT in r for r in g.frozen):
                    g.inexact = list(g.frozen)
                    g.frozen = []
        if not kinds or kinds == {"heads", "neurons"} or kinds == {"heads", "neurons", "hidden"}:
            return
        for g in self.groups:
            kind = "hidden" if g.inexact else "heads" if g.width > 1 else "neurons"
            if kind not in kinds:
                reason = f"not selected: --prune {','.join(sorted(kinds))} (this group's units are {kind})"
                if reason not in g.frozen:
                    g.frozen.append(reason)

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


def _stored_weights(view: GraphView):
    """(name, dims, dtype, why not analysed or None) of every stored tensor the
    parameter count counts: initializers and Constant values, subgraphs included
    (those of an opaque subgraph with why)."""
    from .walk import all_graphs, subgraphs

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


# -- the analysis pass ---------------------------------------------------------------
def _interface_atoms(view: GraphView, analysis: Analysis, names) -> set:
    out = set()
    for name in names:
        for lay in analysis.layouts.get(name, {}).values():
            try:
                out.update(s.atom for s in analysis.atoms.resolve(lay))
            except LayoutError:
                pass
    return out


def _freeze_interface(view: GraphView, analysis: Analysis, allow_io: bool = False) -> None:
    atoms = analysis.atoms
    state = (_interface_atoms(view, analysis, view.graph_inputs)
             & _interface_atoms(view, analysis, view.graph_outputs)) if allow_io else set()

    def carried(lay) -> bool:
        try:
            return all(s.atom in state for s in atoms.resolve(lay))
        except LayoutError:
            return False

    hint = " (--allow-io-change frees only a state carried from a graph input to a graph output, " \
           "like a KV cache)" if allow_io else ""
    for name in view.graph_outputs:
        for lay in analysis.layouts.get(name, {}).values():
            if not carried(lay):
                atoms.freeze(lay, f"reaches graph output '{name}'{hint}")
    for name in view.graph_inputs:
        for lay in analysis.layouts.get(name, {}).values():
            if not carried(lay):
                atoms.freeze(lay, f"reaches graph input '{name}'{hint}")
    for name, node in view.captured.items():
        for lay in analysis.layouts.get(name, {}).values():
            atoms.freeze(lay, f"read inside a subgraph of node '{node}', which is not analysed "
                              f"({view.opaque.get(node, 'opaque')})")
    for name, owner in view.sub_inputs.items():
        for lay in analysis.layouts.get(name, {}).values():
            atoms.freeze(lay, f"an input of a subgraph of node '{owner.name}' ({owner.op_type})")
    for name, owner in view.sub_outputs.items():
        if not rule_for(owner, view).couples_subgraph_outputs:
            for lay in analysis.layouts.get(name, {}).values():
                atoms.freeze(lay, f"an output of a subgraph of node '{owner.name}' ({owner.op_type})")
    for lay in [lay for _, lay in analysis.items()] + [u.layout for u in analysis.uses]:
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
        if len(readers) > 1 and _uniform(view, source):
            continue  # an exporter's deduplicated zeros (or ones): not a tie between layers
        stray = []
        if view.const_root(source) is None:  # folded: its constants must be private
            leaves, chain = view.const_chain(source)
            traced = all(trace(view, view.nodes[u.node].input[u.input], u.axis) is not None for u in uses)
            if not traced:  # the folded value itself would be written: never wider than stored
                folded = view.const(source)
                narrow = [view.const(t) for t in leaves]
                narrow = [v for v in narrow if v is not None and v.size > 1
                          and v.dtype.itemsize < folded.dtype.itemsize]
                if narrow:
                    stray.append(f"'{source}' is computed from {narrow[0].dtype} constants through ops "
                                 f"that cannot be sliced at the source; sliced here it would be "
                                 f"stored as {folded.dtype}")
            own = {(index, slot) for index, slot, _ in readers}  # the weight's readers, seen through Identity
            for t in leaves | {o for i in chain for o in view.nodes[i].output}:
                if t == source:
                    continue
                for index, slot, label in view.readers(t):
                    if index not in chain and (index, slot) not in own:
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


UNIFORM_LIMIT = 1 << 16  # elements: a uniform constant this small may be copied per reader


def _uniform(view: GraphView, name: str) -> bool:
    """A small stored constant whose elements are all equal (exporters share one
    zero bias among every layer that has one): readers may each get their own
    slice of it, since the slices hold the same values. The invariants still
    refuse a model that grows."""
    if view.const_root(name) is None:
        return False
    shape = view.const_shape(name)
    if shape is None or int(np.prod(shape, dtype=np.int64)) > UNIFORM_LIMIT:
        return False
    value = view.const(name)
    return value.size > 1 and bool(np.all(value == value.reshape(-1)[0]))


def _run_rules(view: GraphView, analysis: Analysis, strict: bool) -> None:
    ctx = Context(view, analysis)
    for index, node in enumerate(view.nodes):
        ctx.node, ctx.index = node, index
        rule = rule_for(node, view)
        try:
            rule.analyze(node, ctx)
        except LayoutError as e:
            # The algebra cannot express this graph: freeze, never guess.
            ctx.freeze_node(f"could not be analysed ({e})")
        except Exception as e:  # noqa: BLE001 - a bug in a rule
            where = f"rule {type(rule).__name__} on node '{node.name}' ({node.op_type})"
            if strict:
                raise InternalError(f"internal error in {where}: {type(e).__name__}: {e}") from e
            analysis.internal_errors.append(f"{where}: {type(e).__name__}: {e}")
            ctx.freeze_node(f"internal error in {where}: {type(e).__name__}: {e}")


_MERGE_SAFE = {"Transpose", "Reshape", "Identity", "Cast", "Softmax", "LogSoftmax", "Relu", "Gelu", "Tanh",
               "Sigmoid", "Erf", "Exp", "Neg", "Sqrt", "Reciprocal"}


def _check_batch_merged(view: GraphView, analysis: Analysis) -> None:
    """An axis that merges the batch with channels (``s*K``, see
    ``reshape._batch_merge``) carries the channels' layout within each period
    of K positions. Only ops that move it or work element-wise on it keep
    that true (Transpose, Reshape back, unary ops, Softmax over another axis,
    element-wise ops with operands that broadcast or merge the same way,
    MatMul on it as a batch axis); any other reader would index positions
    that are not channels, so the channels freeze."""
    for tensor, axes in list(analysis.layouts.items()):
        shape = view.shape(tensor)
        for ax, lay in axes.items():
            dim = shape[ax] if shape is not None and ax < len(shape) else None
            f = factor(dim)
            if f is None or f[1] == 1 or f[0] == dim:
                continue
            for node, slot in view.consumers.get(tensor, []):
                if not _merge_safe(view, node, tensor, ax, dim):
                    analysis.atoms.freeze(lay, f"node '{node.name}' ({node.op_type}) reads an axis that merges "
                                               f"the batch with channels ('{dim}')")
            if view.escapes(tensor):
                analysis.atoms.freeze(lay, f"an axis merging the batch with channels ('{dim}') leaves the graph")


def _merge_safe(view: GraphView, node, tensor: str, ax: int, dim: str) -> bool:
    op = node.op_type
    rank = view.rank(tensor)
    if op in _MERGE_SAFE:
        return True
    others = [n for n in node.input if n and n != tensor]
    if op in ("Mul", "Div", "Add", "Sub", "Where", "MatMul"):
        if op == "MatMul" and (rank is None or ax >= rank - 2):
            return False  # a contracted or output row axis, not a batch axis
        out_rank = view.rank(node.output[0])
        for other in others:
            shape, r = view.shape(other), view.rank(other)
            if shape is None or r is None or out_rank is None or rank is None:
                return False
            k = ax + (out_rank - rank) - (out_rank - r)
            if k < 0:
                continue  # broadcast from the left
            if shape[k] != 1 and shape[k] != dim:
                return False
        return True
    return False


def _settle_literals(view: GraphView, analysis: Analysis) -> None:
    """A literal that several Reshape/Expand targets share (one shape vector
    for K and V) is rewritten once: every node sharing it must have claimed it
    for a channel axis, and those axes must be the same channel space;
    otherwise they all freeze."""
    atoms = analysis.atoms
    for (reader, slot, _), claims in analysis.literal_claims.items():
        needed = set().union(*(c[2] for c in claims))
        missing = needed - {c[0] for c in claims}
        lays = [c[1] for c in claims]
        why = None
        if missing:
            other = view.nodes[min(missing)]
            why = (f"the literal {view.nodes[reader].input[slot]!r} stating its count is shared with "
                   f"node '{other.name}' ({other.op_type}), where it is not this count")
        else:
            try:
                for lay in lays[1:]:
                    atoms.unify(lays[0], lay)
            except LayoutError as e:
                why = f"one literal states the counts of different channel spaces ({e})"
        if why:
            for lay in lays:
                atoms.freeze(lay, why)


def analyze_model(model: onnx.ModelProto, shapes: dict[str, tuple], strict: bool | None = None,
                  allow_io: bool = False) -> Groups:
    """``allow_io``: a state carried from a graph input to a graph output (a
    KV cache) may change size (``io_change.py``)."""
    view = GraphView(model, shapes)
    strict = strict_default() if strict is None else strict
    analysis = Analysis(allow_io=allow_io)
    _run_rules(view, analysis, strict)
    seeds = [(name, ax) for name in view.graph_inputs for ax in analysis.layouts.get(name, {})] \
        if allow_io else []
    if seeds:
        # A graph input's channels are found where a later node needs them; nodes before it
        # (a Shape, a norm) ran without them. Run again with those layouts there from the start.
        analysis = Analysis(allow_io=allow_io)
        for name, ax in seeds:
            size = view.static(name, ax)
            if size:
                analysis.layouts.setdefault(name, {})[ax] = analysis.atoms.plain(size)
        _run_rules(view, analysis, strict)
    _settle_literals(view, analysis)
    _check_batch_merged(view, analysis)
    _couple_shared_weights(view, analysis)
    _freeze_interface(view, analysis, allow_io)
    return _collect(model, view, analysis)


def _activation_index(view: GraphView, analysis: Analysis) -> dict:
    """For each "in" slice, the activation dim its node reads through it: the
    node's non-constant input whose layout is the same channel space."""
    atoms = analysis.atoms
    out = {}
    for use in analysis.uses:
        if use.role != "in":
            continue
        node = view.nodes[use.node]
        want = atoms.resolve(use.layout)
        for k, name in enumerate(node.input):
            if not name or k == use.input or view.is_const(name):
                continue
            found = next((ax for ax, lay in analysis.layouts.get(name, {}).items()
                          if atoms.resolve(lay) == want), None)
            if found is not None:
                p = view.producer.get(name)
                if p is not None and p.op_type == "DynamicQuantizeLinear" and p.output[0] == name:
                    name = p.input[0]  # the float values it quantizes, same layout (scores read those)
                out[(use.node, use.input, use.axis)] = (name, found)
                break
    return out


def _collect(model, view: GraphView, analysis: Analysis) -> Groups:
    atoms = analysis.atoms
    per_channel: dict[int, int] = {}
    width: dict[int, int] = {}
    members: dict[int, list[int]] = {}
    uses_of: dict[int, list] = {}
    weights: dict[int, list] = {}
    for use in analysis.uses:
        node = view.nodes[use.node]
        shape = view.const_shape(node.input[use.input])
        rest = int(np.prod(shape, dtype=np.int64)) // max(1, shape[use.axis])
        name = view.const_root(node.input[use.input]) or node.input[use.input]
        for atom, count in atoms.per_index(use.layout).items():
            per_channel[atom] = per_channel.get(atom, 0) + rest * count
            width[atom] = max(width.get(atom, 1), count)
            members.setdefault(atom, []).append(use.node)
            uses_of.setdefault(atom, []).append(use)
            weights.setdefault(atom, []).append((name, use.axis))
    tensors: dict[int, list[str]] = {}
    for (tensor, _), lay in analysis.items():
        for atom, count in atoms.per_index(lay).items():
            if atom in per_channel:
                tensors.setdefault(atom, []).append(tensor)
                width[atom] = max(width.get(atom, 1), count)
    from .ops.base import APPROX

    order = sorted(per_channel, key=lambda a: (min(members[a]), a))
    groups = []
    for gid, atom in enumerate(order):
        reasons = atoms.frozen(atom)
        names = [view.nodes[i].name for i in sorted(set(members[atom]))]
        groups.append(Group(
            id=gid, atom=atom, channels=atoms.size[atom], width=width.get(atom, 1),
            per_channel=per_channel[atom], members=names,
            tensors=list(dict.fromkeys(tensors.get(atom, []))),
            weights=list(dict.fromkeys(weights[atom])),
            frozen=[r for r in reasons if APPROX not in r], min_keep=atoms.min_keep.get(atom, 1),
            approximate=[r for r in reasons if APPROX in r]))
    index = {"uses": uses_of, "activation": _activation_index(view, analysis)}
    return Groups(groups=groups, params_total=count_params(model), macs=count_macs(view),
                  model=model, view=view, analysis=analysis, _index=index)


__all__ = ["Group", "Groups", "WeightStatus", "analyze_model", "strict_default"]
