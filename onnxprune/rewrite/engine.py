"""Apply keep-sets to the model.

Every weight slice recorded by the rules becomes an edit of one node input;
rules then rewrite attributes and shape constants; value_info shapes follow.
A constant read by several nodes (exporters share biases, shape vectors,
scalars) is edited in place only when every reader wants the same new value;
otherwise each distinct value gets its own initializer, so no reader sees a
slice meant for another.

The *masked* model (the exactness oracle, docs/architecture.md) uses the same
machinery: full-size weights, with removed channels zeroed in every linear
consumer ("in" role slices).
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.analysis.build import UNIFORM_LIMIT
from onnxprune.analysis.groups import Groups
from onnxprune.core.errors import InternalError
from onnxprune.core.graph import GraphView, skeleton
from onnxprune.core.tensors import to_array
from onnxprune.core.walk import all_graphs, node_reads, read_names
from onnxprune.ops import Rewriter, rule_for
from onnxprune.ops.weights import neutral, trace, zero_safe

_KEEP_BYTES = 1 << 20  # a written weight above this is not also kept as an array


def _all_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor and node name the model uses: a new one must differ from
    all (a model pruned again already holds the nodes an earlier prune added)."""
    names = set()
    for g in all_graphs(model.graph):
        names |= {t.name for t in g.initializer} | {i.name for i in g.input} | {o.name for o in g.output}
        for node in g.node:
            names.update(node.input)
            names.update(node.output)
            names.add(node.name)
    return names


class _Edits(Rewriter):
    def __init__(self, view, analysis, keep, model, overrides=None):
        super().__init__(view, analysis, keep)
        self.model = model
        self.names = _all_names(model)
        self.new_inits: list[onnx.TensorProto] = []
        self.overrides = overrides or {}  # (node, slot) -> full-size value (compensation)
        self.new_nodes: list[tuple[int, onnx.NodeProto, bool]] = []  # (next to node index, node, before it)
        self.inits = {t.name: t for g in all_graphs(model.graph) for t in g.initializer}
        self.written: dict[tuple[int, int], np.ndarray] = {}  # (node, slot) -> value written

    def value(self, index: int, slot: int) -> np.ndarray:
        """The original value of a node input (or its compensated replacement)."""
        if (index, slot) in self.overrides:
            return self.overrides[(index, slot)]
        return self.view.const(self.view.nodes[index].input[slot])

    def current(self, index: int, slot: int) -> np.ndarray:
        """A node input's value as rewritten so far."""
        if (index, slot) in self.const_edits:
            return self.const_edits[(index, slot)]
        if (index, slot) in self.written:
            value = self.written[(index, slot)]
            return to_array(value) if isinstance(value, onnx.TensorProto) else value
        return self.value(index, slot)

    def unique_name(self, hint: str) -> str:
        name, k = hint, 1
        while name in self.names:
            name, k = f"{hint}_{k}", k + 1
        self.names.add(name)
        return name

    def new_const(self, hint: str, value: np.ndarray) -> str:
        name = self.unique_name(hint)
        self.new_inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def select_input(self, index: int, slot: int, axis: int, positions: np.ndarray) -> None:
        """Node ``index`` reads input ``slot`` through a Gather of ``positions``
        along ``axis``, inserted just before it."""
        node = self.view.nodes[index]
        name = node.input[slot]
        out = self.unique_name(f"{name}_selected")
        gather = onnx.helper.make_node("Gather", [name, self.new_const(f"{name}_kept", positions.astype(np.int64))],
                                       [out], name=self.unique_name(f"{node.name or name}_select"), axis=axis)
        node.input[slot] = out
        self.new_nodes.append((index, gather, True))


def _weight_edit(rw: _Edits, index: int, slot: int, uses: list, masked: bool):
    """(signature, new value or None) of one reader's view of a weight: its
    slices along each axis (or, masked, the removed "in" positions zeroed).
    Readers with the same signature get the same value, computed once."""
    steps = []
    for use in uses:
        pos = rw.a.atoms.positions(use.layout, rw.keep)
        full = rw.a.atoms.layout_size(use.layout)
        if len(pos) == full or (masked and use.role != "in"):
            continue
        steps.append((use.axis, np.setdiff1d(np.arange(full), pos) if masked else pos))
    sig = [(axis, idx.tobytes()) for axis, idx in steps]
    override = (index, slot) in rw.overrides
    if not steps and not override:
        return None, None
    key = (tuple(sorted(sig)), (index, slot) if override else None)
    return key, steps


def _apply_steps(value: np.ndarray, steps, masked: bool, fill=0) -> np.ndarray:
    if masked:
        value = np.array(value, copy=True)
        for axis, removed in steps:
            idx = [slice(None)] * value.ndim
            idx[axis] = removed
            value[tuple(idx)] = fill
        return value
    for axis, pos in steps:
        if len(pos) != value.shape[axis]:
            value = np.take(value, pos, axis=axis)
    return value


def _mask_fill(rw: _Edits, index: int, slot: int):
    """What a masked integer weight with a zero point holds at a removed
    input: the zero point (broadcast along the output axis), so that the
    position computes W - zp = 0 as a zeroed float weight does; None for a
    plain weight (zeroed)."""
    node = rw.view.nodes[index]
    form = rule_for(node, rw.view).linear(node, rw.view)
    if form is None or slot != form.weight or not form.zero_point_input(node):
        return None
    zp = form.along_outputs(rw.value(index, form.zero_point), len(rw.view.const_shape(node.input[slot])))
    return zp if np.any(zp != 0) else None


def _rewrite_weights(rw: _Edits, masked: bool) -> None:
    """Slice (or mask) every stored weight once, source by source, writing each
    new value into the model at once: the old bytes are released as the new
    ones arrive, so the rewrite never holds a second copy of the weights."""
    view = rw.view
    by_source: dict[str, dict] = {}
    for use in rw.a.uses:
        name = view.nodes[use.node].input[use.input]
        by_source.setdefault(view.const_root(name) or name, {}).setdefault((use.node, use.input), []).append(use)
    for index, slot in rw.overrides:
        name = view.nodes[index].input[slot]
        by_source.setdefault(view.const_root(name) or name, {}).setdefault((index, slot), [])
    for source, readers in by_source.items():
        if view.const_root(source) is None and not any(key in rw.overrides for key in readers):
            traced = _traced_values(rw, source, readers, masked)
            if traced is not None:  # sliced where stored; the chain recomputes from them
                for stored, value in traced.items():
                    _write_stored(rw, stored, value)
                continue
        computed: dict = {}
        edits = []
        for (index, slot), uses in readers.items():
            key, steps = _weight_edit(rw, index, slot, uses, masked)
            if key is None:
                continue
            fill = _mask_fill(rw, index, slot) if masked else None
            if fill is not None:
                key = (key, index, slot)
            if key not in computed:
                computed[key] = np.ascontiguousarray(_apply_steps(rw.value(index, slot), steps, masked,
                                                                  0 if fill is None else fill))
            edits.append((index, slot, computed[key]))
        if edits:
            _write_source(rw, source, edits, masked)
        del computed, edits


def _traced_values(rw: _Edits, source: str, readers: dict, masked: bool) -> dict | None:
    """New values of the stored constants a folded weight is computed from
    (``weights.trace``), or None when some slice cannot be traced to them (the
    folded value is then written as a new initializer, if that is allowed)."""
    view = rw.view
    steps: dict[str, dict[int, np.ndarray]] = {}
    for (index, slot), uses in readers.items():
        name = view.nodes[index].input[slot]
        for use in uses:
            pos = rw.a.atoms.positions(use.layout, rw.keep)
            full = rw.a.atoms.layout_size(use.layout)
            if len(pos) == full or (masked and use.role != "in"):
                continue
            sources = trace(view, name, use.axis)
            if sources is None:
                return None
            idx = np.setdiff1d(np.arange(full), pos) if masked else pos
            for stored, axis in sources:
                prev = steps.setdefault(stored, {}).get(axis)
                if prev is not None and not np.array_equal(prev, idx):
                    return None
                steps[stored][axis] = idx
    if masked and steps and not zero_safe(view, source):
        return None
    out = {}
    for stored, axes in steps.items():
        value = view.const(stored)
        if masked:
            value = np.array(value, copy=True)
            fill = neutral(view, stored, view.readers(stored))
            if fill is None:
                return None
            for axis, removed in axes.items():
                idx = [slice(None)] * value.ndim
                idx[axis] = removed
                value[tuple(idx)] = fill[tuple(idx)]
        else:
            for axis, pos in axes.items():
                value = np.take(value, pos, axis=axis)
        out[stored] = np.ascontiguousarray(value)
    return out


def _write_stored(rw: _Edits, stored: str, value: np.ndarray) -> None:
    """Replace a stored constant (initializer or Constant node) in place."""
    if stored in rw.inits:
        rw.inits[stored].CopyFrom(numpy_helper.from_array(value, stored))
    else:
        _set_constant_value(rw.view.producer[stored], value)


def _add_biases(rw: _Edits, groups: Groups, biases: dict, masked: bool) -> None:
    """Add compensation deltas to each consumer's bias: into the bias input its
    rule names (created when absent), or through an Add after it; for an
    integer weight, times its scale, after the Mul that scales its output
    (``LinearForm.dequantized``)."""
    for index, delta in biases.items():
        form = groups.linear(index)
        if form.integer:  # on the float output its scale Mul gives, in float units
            index = rw.view.index_of[id(rw.view.producer[form.dequantized])]
            delta = np.asarray(delta, dtype=np.float64) * np.asarray(form.scale, dtype=np.float64)
        node = rw.view.nodes[index]
        y = node.output[0]
        lay = rw.layout(y, form.y_axis)
        if not masked and lay is not None:
            delta = delta[rw.a.atoms.positions(lay, rw.keep)]
        dtype = np.dtype(np.float32) if form.integer else rw.value(index, form.weight).dtype  # Cast to float
        if form.bias is not None and not form.integer:
            delta = delta / (form.bias_scale or 1.0)
            if len(node.input) > form.bias and node.input[form.bias]:
                base = rw.current(index, form.bias)
                new = (base.reshape(-1) + delta.astype(base.dtype)).astype(base.dtype)
                rw.set_const(index, form.bias, new.reshape(base.shape))
            else:
                while len(node.input) <= form.bias:
                    node.input.append("")
                node.input[form.bias] = rw.new_const(f"{node.name}_bias", delta.astype(dtype))
        else:  # no bias input: an Add after the node carries it
            rank = len(rw.view.shape(y) or ())
            axis = form.y_axis
            shape = [1] * max(1, -axis if axis < 0 else rank - axis)
            shape[0] = -1
            bias = rw.new_const(f"{node.name}_bias", delta.astype(dtype).reshape(shape))
            inner = rw.unique_name(f"{y}_before_bias")
            node.output[0] = inner
            add = onnx.helper.make_node("Add", [inner, bias], [y], name=rw.unique_name(f"{node.name}_bias_add"))
            rw.new_nodes.append((index, add, False))


def _set_constant_value(node: onnx.NodeProto, value: np.ndarray) -> None:
    for i, a in enumerate(node.attribute):
        if a.name.startswith("value"):
            del node.attribute[i]
            break
    node.attribute.append(onnx.helper.make_attribute("value", numpy_helper.from_array(value)))


def _is_weight(value: np.ndarray) -> bool:
    """Float or quantized tensors are weights; small integer vectors (shapes,
    axes, split sizes) are metadata, and small uniform tensors (a shared zero
    bias) hold no per-channel information: those may be copied per reader."""

    if value.size <= UNIFORM_LIMIT and value.size and np.all(value == value.reshape(-1)[0]):
        return False
    return value.dtype.kind in "fc" or value.dtype.itemsize == 1 or value.size > 64


def _apply_const_edits(rw: _Edits, masked: bool) -> None:
    """Write the rules' constant edits (shape vectors, split sizes, slice
    bounds) and compensation biases, by source."""
    view = rw.view
    by_source: dict[str, list] = {}
    for (index, slot), value in rw.const_edits.items():
        name = view.nodes[index].input[slot]
        by_source.setdefault(view.const_root(name) or name, []).append((index, slot, value))
    for source, edits in by_source.items():
        _write_source(rw, source, edits, masked)


def _write_source(rw: _Edits, source: str, edits: list, masked: bool) -> None:
    """Write new values of one stored constant. When every reader wants the
    same value it is edited in place (a folded one becomes one new initializer
    for all its readers). Readers that disagree get their own copies only for
    small metadata tensors: analysis couples the readers of a shared weight,
    so a weight that would be copied is a bug."""
    view = rw.view
    first = edits[0][2]
    same = all(v is first or (v.dtype == first.dtype and np.array_equal(v, first)) for _, _, v in edits)
    readers = {(i, k) for i, k, _ in view.readers(source)}
    if same and readers == {(i, k) for i, k, _ in edits}:
        value = np.ascontiguousarray(first)
        if view.const_root(source) is None:  # folded: one new initializer for all
            name = rw.new_const(f"{source}_pruned", value)
            for index, slot, _ in edits:
                view.nodes[index].input[slot] = name
                rw.written[(index, slot)] = value
        else:
            if source in rw.inits:
                rw.inits[source].CopyFrom(numpy_helper.from_array(value, source))
                if value.nbytes > _KEEP_BYTES:  # read back from the proto if asked: never held twice
                    value = rw.inits[source]
            else:
                _set_constant_value(view.producer[source], value)
            for index, slot, _ in edits:
                rw.written[(index, slot)] = value
        return
    if not masked and any(_is_weight(v) for _, _, v in edits):
        raise InternalError(f"weight '{source}' would be copied: its readers disagree on its "
                            f"new value (a shared weight the analysis did not couple)")
    made: list[tuple[np.ndarray, str]] = []
    for index, slot, value in edits:
        name = next((n for v, n in made if v.dtype == value.dtype and np.array_equal(v, value)), None)
        if name is None:
            name = rw.new_const(f"{source}_pruned", value)
            made.append((value, name))
        view.nodes[index].input[slot] = name
        rw.written[(index, slot)] = value


def _update_value_info(rw: _Edits, g: onnx.GraphProto, main: bool = True) -> None:
    """Shrink recorded shapes of one graph: tracked activations from their
    layouts, initializers from their new values (also where an old-IR model
    lists them as graph inputs), a subgraph's declared outputs (an If branch's
    channels shrink with the If's); Constant outputs are re-inferred."""
    inits = {t.name: t for t in g.initializer}
    for vi in g.input:
        t = inits.get(vi.name)
        if t is not None and vi.type.HasField("tensor_type"):
            shape = vi.type.tensor_type.shape
            if len(shape.dim) == len(t.dims):
                for d, v in zip(shape.dim, t.dims):
                    d.Clear()
                    d.dim_value = int(v)
    constants = {n.output[0] for n in g.node if n.op_type == "Constant"}
    infos = [vi for vi in g.value_info if vi.name not in constants]
    # the main graph's inputs and outputs change only where --allow-io-change freed them
    interface = [vi for vi in g.input if vi.name not in inits] if main else []
    for vi in infos + list(g.output) + interface:
        if not vi.type.HasField("tensor_type"):
            continue
        new = list(inits[vi.name].dims) if vi.name in inits else rw.new_shape(vi.name)
        dims = vi.type.tensor_type.shape.dim
        if new is None or len(new) != len(dims):  # a stated rank that is wrong stays as stated
            continue
        old = None if vi.name in inits else rw.view.shape(vi.name)
        for ax, d in enumerate(dims):
            # Only what the prune changed: a stated dim that disagrees with inference (an
            # exporter's wrong output shape) or -1 (Paddle's "any size") stays as stated.
            if d.HasField("dim_value") and d.dim_value > 0 and isinstance(new[ax], int) and \
                    (old is None or old[ax] != new[ax]):
                d.dim_value = new[ax]
    if len(infos) != len(g.value_info):
        del g.value_info[:]
        g.value_info.extend(infos)


def _drop_orphans(g: onnx.GraphProto, before: set[str]) -> None:
    """Remove nodes and initializers of one graph that were read before our
    edits and no longer are (constant chains a sliced weight now bypasses)."""
    nodes = list(g.node)
    reads: dict[str, int] = {}
    for node in nodes:
        for name in node_reads(node):
            reads[name] = reads.get(name, 0) + 1
    for o in g.output:
        reads[o.name] = reads.get(o.name, 0) + 1
    # One pass from the end (consumers come after producers): a node nobody
    # reads any more dies, and its inputs lose a reader.
    alive = [True] * len(nodes)
    for i in range(len(nodes) - 1, -1, -1):
        outs = [o for o in nodes[i].output if o]
        if any(reads.get(o, 0) for o in outs) or not all(o in before for o in outs):
            continue
        alive[i] = False
        for name in node_reads(nodes[i]):
            reads[name] -= 1
    if not all(alive):
        del g.node[:]
        g.node.extend(n for n, keep_it in zip(nodes, alive) if keep_it)
    read = {name for name, count in reads.items() if count > 0}
    keep = [t for t in g.initializer if t.name in read or t.name not in before]
    if len(keep) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(keep)
    alive = read | {o for node in g.node for o in node.output} | {t.name for t in g.initializer}
    infos = [vi for vi in g.value_info if vi.name in alive]
    if len(infos) != len(g.value_info):
        del g.value_info[:]
        g.value_info.extend(infos)


def apply(groups: Groups, keep: dict, masked: bool = False, compensation=None,
          in_place: bool = False, hints: bool = True) -> onnx.ModelProto:
    """A new model with a plan's keep-sets (group id -> kept units) applied
    (or, with ``masked``, the removed channels zeroed).

    ``compensation`` (from ``compensate.py``) replaces consumer weights before
    slicing and adds bias deltas; the masked model gets the same changes, so
    the oracle pruned == masked holds with compensation too. ``in_place``
    rewrites ``groups.model`` itself (no copy of the weights): the groups are
    then consumed and cannot be applied again. ``hints=False``, for a model
    that is only run (a sensitivity job): its value_info hints are dropped
    rather than shrunk, which on a detector of a thousand tensors was a third
    of the job; onnxruntime infers the shapes.
    """
    if getattr(groups, "consumed", False):
        raise InternalError("these groups were already applied in place; analyse the model again")
    if in_place:
        model, view = groups.model, groups.view
        groups.consumed = True
    else:
        model = copy.deepcopy(groups.model)
        view = GraphView(model, groups.view.all_shapes())
    read_before = set().union(*(read_names(g) for g in all_graphs(model.graph)))
    rw = _Edits(view, groups.analysis, groups.atom_keep(keep), model,
                compensation.weights if compensation is not None else None)
    _rewrite_weights(rw, masked)
    if not masked:
        for index, node in enumerate(view.nodes):
            try:
                rule_for(node, view).rewrite(node, index, rw)
            except Exception as e:  # noqa: BLE001 - a rewrite that raises is always a bug
                raise InternalError(f"internal error in the rewrite of node '{node.name}' "
                                    f"({node.op_type}): {type(e).__name__}: {e}") from e
    if compensation is not None and compensation.biases:
        _add_biases(rw, groups, compensation.biases, masked)
    _apply_const_edits(rw, masked)
    if not masked:
        for g in view.graphs:  # opaque subgraphs keep theirs: nothing in them changed
            if not hints:
                del g.value_info[:]
            _update_value_info(rw, g, main=g is model.graph)
    if rw.new_nodes:  # last: node lists are rebuilt, so the view's node objects go stale
        _insert_nodes(model, view, rw.new_nodes)
    model.graph.initializer.extend(rw.new_inits)  # subgraphs read them from the outer scope
    for g in reversed(list(all_graphs(model.graph))):  # inner graphs first: their reads count outside
        _drop_orphans(g, read_before)
    _settle_value_info(model)
    return model


def _insert_nodes(model: onnx.ModelProto, view: GraphView, new_nodes: list) -> None:
    """Put each new node right after (or before) the node it goes with, in
    that node's own graph (the main graph or a subgraph)."""
    after: dict[int, list] = {}
    before: dict[int, list] = {}
    for index, node, first in new_nodes:
        (before if first else after).setdefault(id(view.nodes[index]), []).append(node)
    placed = 0
    # Inner graphs first: rebuilding a graph's node list copies its nodes,
    # subgraphs included, so an outer graph goes after what it holds.
    for g in reversed(list(all_graphs(model.graph))):
        if not any(id(n) in after or id(n) in before for n in g.node):
            continue
        ordered = []
        for node in g.node:
            ordered.extend(before.get(id(node), []))
            ordered.append(node)
            ordered.extend(after.get(id(node), []))
            placed += len(after.get(id(node), [])) + len(before.get(id(node), []))
        del g.node[:]
        g.node.extend(ordered)
    if placed != len(new_nodes):
        raise InternalError(f"{len(new_nodes) - placed} new node(s) found no place in the graph")


def _settle_value_info(model: onnx.ModelProto) -> None:
    """value_info is a hint: keep it only if strict shape inference agrees with it.

    Some converters leave entries that are only self-consistent as a whole (the
    float16 converter's, for one); after channels shrink, dropping them is safer
    than shipping hints ONNX would reject.
    """
    if not any(g.value_info for g in all_graphs(model.graph)):
        return
    try:
        onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=True)
    except Exception:  # noqa: BLE001 - InferenceError, ValidationError
        for g in all_graphs(model.graph):
            del g.value_info[:]
