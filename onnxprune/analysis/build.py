"""The analysis pass: run every node's rule over a union-find of channel atoms,
then freeze what must not change and collect the groups (``analyze_model``).

Rules run in topological order (``ops``); then literals that state channel
counts are settled, batch-merged axes checked, weights shared by several
readers coupled, and dims that reach the graph's inputs or outputs frozen. The
result is a ``Groups`` index. Knows no op by name: what an op does is its rule's.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxprune.analysis.costs import count_macs, count_params
from onnxprune.analysis.groups import Group, Groups, strict_default
from onnxprune.core.errors import InternalError
from onnxprune.core.graph import GraphView, factor
from onnxprune.core.layout import LayoutError
from onnxprune.core.tensors import is_metadata
from onnxprune.ops import Analysis, Context, rule_for
from onnxprune.ops.base import APPROX
from onnxprune.ops.weights import trace


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
                if t == source or _metadata(view, t):
                    continue  # a shape vector (tf2onnx's [-1] in every reshape target) ties nothing
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


def _metadata(view: GraphView, name: str) -> bool:
    """A small integer constant or folded value: shapes and axes, not weight data."""
    root = view.const_root(name)
    if root in view.initializers:
        t = view.initializers[root]
        return is_metadata(t.data_type, int(np.prod(t.dims, dtype=np.int64)))
    value = view.const(name)
    if value is None or value.dtype.kind not in "iub":
        return False
    try:
        data_type = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
    except (KeyError, ValueError, TypeError):
        return False
    return is_metadata(data_type, int(value.size))


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
                if not rule_for(node, view).reads_merged_axis(node, view, tensor, ax, dim):
                    analysis.atoms.freeze(lay, f"node '{node.name}' ({node.op_type}) reads an axis that merges "
                                               f"the batch with channels ('{dim}')")
            if view.escapes(tensor):
                analysis.atoms.freeze(lay, f"an axis merging the batch with channels ('{dim}') leaves the graph")


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

    order = sorted(per_channel, key=lambda a: (min(members[a]), a))
    groups = []
    for gid, atom in enumerate(order):
        reasons = atoms.frozen(atom)
        names = [view.nodes[i].name for i in sorted(set(members[atom]))]
        groups.append(Group(
            id=gid, atom=atom, units=atoms.size[atom], width=width.get(atom, 1),
            per_channel=per_channel[atom], members=names,
            tensors=list(dict.fromkeys(tensors.get(atom, []))),
            weights=list(dict.fromkeys(weights[atom])),
            frozen=[r for r in reasons if APPROX not in r], min_keep=atoms.min_keep.get(atom, 1),
            approximate=[r for r in reasons if APPROX in r]))
    index = {"uses": uses_of, "activation": _activation_index(view, analysis)}
    return Groups(groups=groups, params_total=count_params(model), macs=count_macs(view),
                  model=model, view=view, analysis=analysis, _index=index)


__all__ = ["analyze_model"]
