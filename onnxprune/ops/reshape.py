"""Reshape, Flatten, Squeeze, Unsqueeze: one algebra for every reshape.

The input and output shapes are cut into blocks of axes with equal products;
inside a block, the channel axis is flattened into the block's row-major
index (outer/inner expansion) and then unflattened onto the output axes. This
gives Flatten ``C,H,W -> C*H*W``, channels-last flatten, unflatten back, and
head splits ``H*D -> H,D`` (the space is coarsened into blocks of D) from the
same code.
"""
from __future__ import annotations

import numpy as np

from onnxprune.core.graph import attr, factor
from onnxprune.core.layout import LayoutError, Segment
from onnxprune.ops.base import Rule
from onnxprune.ops.fold import known_ints, partial_value
from onnxprune.ops.registry import register
from onnxprune.ops.shape import check_dims, computed_entries


def _prod(xs) -> int:
    p = 1
    for x in xs:
        p *= x
    return p


def _merge(ins, outs, ia, oa):
    """A symbol times the int axes after it on one side, one axis named
    ``symbol*product`` on the other: -> (input axes, output axes) or None."""
    fi, fo = factor(ins[ia[0]]), factor(outs[oa[0]])
    if fi is None or fo is None or fi[0] != fo[0] or fi[1] == fo[1]:
        return None
    side, dims, need = (ia, ins, fo[1]) if fi[1] < fo[1] else (oa, outs, fi[1])
    have = min(fi[1], fo[1])
    if need % have:
        return None
    take, prod = [side[0]], 1
    for nxt in side[1:]:
        if prod == need // have:
            break
        if not isinstance(dims[nxt], int) or dims[nxt] <= 0:
            return None
        prod *= dims[nxt]
        take.append(nxt)
    if prod != need // have:
        return None
    return (take, [oa[0]]) if side is ia else ([ia[0]], take)


def align_blocks(ins: tuple, outs: tuple):
    """Cut two shapes into blocks of axes of equal product.

    Integer axes are matched from both ends; whatever is left in the middle
    (symbolic dims) is one opaque block. Returns [(in_axes, out_axes, exact)].
    """

    def scan(ia, oa, step):
        blocks = []
        while ia and oa:
            if isinstance(ins[ia[0]], str) and ins[ia[0]] == outs[oa[0]]:
                blocks.append(([ia[0]], [oa[0]], True))  # the same symbolic dim
                ia, oa = ia[1:], oa[1:]
                continue
            merged = _merge(ins, outs, ia, oa) if step == 1 else None
            if merged is not None:  # (batch, heads) <-> (batch*heads): the probe names it so
                a, b = merged
                blocks.append((sorted(a), sorted(b), True))
                ia, oa = ia[len(a):], oa[len(b):]
                continue
            if not (isinstance(ins[ia[0]], int) and isinstance(outs[oa[0]], int)):
                break
            if ins[ia[0]] == 0 or outs[oa[0]] == 0:
                break
            a, b = [ia[0]], [oa[0]]
            pi, po = ins[ia[0]], outs[oa[0]]
            ok = True
            while pi != po:
                src, dst, lst = (ia, a, ins) if pi < po else (oa, b, outs)
                nxt = len(dst)
                if nxt >= len(src) or not isinstance(lst[src[nxt]], int) or lst[src[nxt]] == 0:
                    ok = False
                    break
                dst.append(src[nxt])
                if lst is ins:
                    pi *= ins[src[nxt]]
                else:
                    po *= outs[src[nxt]]
            if not ok:
                break
            blocks.append((sorted(a), sorted(b), True))
            ia, oa = ia[len(a):], oa[len(b):]
        return blocks, ia, oa

    tail, ia, oa = scan(list(range(len(ins)))[::-1], list(range(len(outs)))[::-1], -1)
    head, ia, oa = scan(sorted(ia), sorted(oa), 1)
    middle = []
    if ia or oa:
        middle = [(sorted(ia), sorted(oa), False)]
    return head + middle + tail[::-1]


def map_block(atoms, in_sizes, out_sizes, pos: int, layout):
    """Layout of the output axes of one block, given the channel axis at ``pos``."""
    lay = atoms.resolve(layout)
    pre, post = _prod(in_sizes[:pos]), _prod(in_sizes[pos + 1:])
    if len(lay) == 1:
        s = lay[0]
        flat = [Segment(s.atom, s.outer * pre, s.inner * post)]
    elif pre == 1:
        flat = [Segment(s.atom, s.outer, s.inner * post) for s in lay]
    else:
        raise LayoutError("concatenated channels are interleaved by a reshape")
    strides = [_prod(out_sizes[k + 1:]) for k in range(len(out_sizes))]
    if len(flat) == 1:
        # The channel index is the digit [inner, n*inner) of the block's
        # row-major index. The output axis holding its top digit receives it:
        # whole (with the digits above / below as outer / inner), or, when the
        # axis boundary cuts through it, coarsened into blocks (heads).
        s = flat[0]
        n = atoms.size[s.atom]
        top = n * s.inner
        k0 = next((k for k in range(len(out_sizes))
                   if out_sizes[k] > 1 and strides[k] < top <= strides[k] * out_sizes[k]), None)
        if k0 is None:
            raise LayoutError("a reshape mixes channels with another axis")
        st, span = strides[k0], strides[k0] * out_sizes[k0]
        if span % top:
            raise LayoutError("a reshape mixes channels with another axis")
        outer = span // top
        if st <= s.inner:
            if s.inner % st:
                raise LayoutError("a reshape splits channel blocks unevenly")
            return {k0: (Segment(s.atom, outer, s.inner // st),)}
        if st % s.inner or n % (st // s.inner):
            raise LayoutError("a reshape splits channels unevenly")
        heads = atoms.new(n // (st // s.inner))
        atoms._substitute(s.atom, (Segment(heads, 1, st // s.inner),))
        return {k0: (Segment(heads, outer, 1),)}
    total = _prod(out_sizes)
    k0 = next((k for k in range(len(out_sizes))
               if out_sizes[k] > 1 and strides[k] * out_sizes[k] == total), None)
    if k0 is None or any(s.inner % strides[k0] for s in flat):
        raise LayoutError("a reshape splits concatenated channels")
    return {k0: tuple(Segment(s.atom, s.outer, s.inner // strides[k0]) for s in flat)}


def _batch_merge(ctx, y, ins, outs, in_axes, out_axes, a, lay) -> None:
    """(batch, ..channels..) -> (batch*K) or back: the merged axis carries the
    channels' layout within each period of K positions (its index is
    b*K + position). The dynamo exporter's attention (K^T as (B*H, D, S))
    does this; ``groups._check_batch_merged`` keeps such an axis away from
    ops that would index it."""
    try:
        if len(out_axes) == 1 and a != in_axes[0] and isinstance(ins[in_axes[0]], str):
            ints = [ins[i] for i in in_axes[1:]]
            mapped = map_block(ctx.atoms, ints, [_prod(ints)], in_axes[1:].index(a), lay)
            ctx.set(y, out_axes[0], mapped[0])
            return
        if len(in_axes) == 1 and a == in_axes[0] and isinstance(outs[out_axes[0]], str):
            ints = [outs[o] for o in out_axes[1:]]
            for k, part in map_block(ctx.atoms, [_prod(ints)], ints, 0, lay).items():
                ctx.set(y, out_axes[1 + k], part)
            return
    except LayoutError as e:
        ctx.freeze(lay, str(e))
        return
    ctx.freeze(lay, "reshape over symbolic dims")


def reshape_target(ins, inferred, entries, allowzero: bool):
    """Output shape of a Reshape: inference, completed from the shape vector."""
    if entries is None:
        return inferred
    if inferred is not None and len(inferred) != len(entries):
        return inferred
    out = list(inferred) if inferred is not None else [None] * len(entries)
    for k, e in enumerate(entries):
        if isinstance(out[k], int):
            continue
        if e is not None and e > 0:
            out[k] = e
        elif e == 0 and not allowzero and ins is not None and k < len(ins):
            out[k] = ins[k]
    if ins is not None and -1 in entries:
        k = entries.index(-1)
        # Symbolic dims present on both sides cancel out; -1 is then the
        # ratio of the remaining static sizes.
        in_syms = sorted(d for d in ins if isinstance(d, str))
        out_syms = sorted(d for j, d in enumerate(out) if j != k and isinstance(d, str))
        rest = [d for j, d in enumerate(out) if j != k]
        if in_syms == out_syms and None not in ins and None not in rest:
            known = _prod(d for d in rest if isinstance(d, int))
            total = _prod(d for d in ins if isinstance(d, int))
            if known and total % known == 0:
                out[k] = total // known
    return tuple(out)


def reshape_layouts(ctx, x: str, y: str, outs=None) -> None:
    """Carry the layouts of ``x`` onto ``y`` across any reshape."""
    lays = ctx.axes(x)
    if not lays:
        return
    ins = ctx.view.shape(x)
    outs = outs if outs is not None else ctx.view.shape(y)
    if ins is None or outs is None:
        for lay in lays.values():
            ctx.freeze(lay, "shape unknown around a reshape")
        return
    for in_axes, out_axes, exact in align_blocks(ins, outs):
        carrying = [a for a in in_axes if a in lays]
        if not carrying:
            continue
        if len(in_axes) == 1 and len(out_axes) == 1 and ins[in_axes[0]] == outs[out_axes[0]]:
            ctx.set(y, out_axes[0], lays[in_axes[0]])  # the same axis (a symbolic size included)
            continue
        if not exact:
            if len(in_axes) == 1 and len(out_axes) == 1 and ins[in_axes[0]] == outs[out_axes[0]]:
                ctx.set(y, out_axes[0], lays[in_axes[0]])
            else:
                for a in carrying:
                    ctx.freeze(lays[a], "reshape over symbolic dims")
            continue
        if len(carrying) > 1:
            for a in carrying:
                ctx.freeze(lays[a], "a reshape merges two channel axes")
            continue
        a = carrying[0]
        if any(isinstance(ins[i], str) for i in in_axes) or any(isinstance(outs[o], str) for o in out_axes):
            _batch_merge(ctx, y, ins, outs, in_axes, out_axes, a, lays[a])
            continue
        try:
            mapped = map_block(ctx.atoms, [ins[i] for i in in_axes], [outs[o] for o in out_axes],
                               in_axes.index(a), lays[a])
        except LayoutError as e:
            ctx.freeze(lays[a], str(e))
            continue
        for k, lay in mapped.items():
            ctx.set(y, out_axes[k], lay)


@register("Reshape")
class Reshape(Rule):
    """Channels follow the row-major index (flatten, unflatten, head split); the shape constant is rewritten."""

    def reads_merged_axis(self, node, view, tensor, axis, dim):
        return True  # the merged axis is moved, or split back (``reshape.py``'s batch merge)

    def analyze(self, node, ctx):

        x, y = node.input[0], node.output[0]
        raw = partial_value(ctx.view, node.input[1])
        if not ctx.axes(x):
            check_dims(ctx, raw, y, lambda k: None, "reshape")  # a count read elsewhere lands here
            if ctx.const(1) is None:
                computed_entries(ctx, node.input[1], y, None, lambda k: None, "reshape")
            return
        const = ctx.const(1) is not None
        shape = known_ints(raw)
        if shape is None:
            ctx.freeze_tensor(x, "reshape to a shape computed at run time")
            return
        allowzero = int(ctx.attr("allowzero", 0))
        outs = reshape_target(ctx.view.shape(x), ctx.view.shape(y), shape, bool(allowzero))
        if outs is not None and ctx.view.shape(y) is None:
            ctx.view.derive_shape(y, outs)  # what inference missed, rules downstream can use
        reshape_layouts(ctx, x, y, outs)
        dynamic = check_dims(ctx, raw, y, lambda k: k, "reshape")  # entries that follow a count by themselves
        if not const:  # and those computed from counts that follow them
            dynamic |= computed_entries(ctx, node.input[1], y, outs, lambda k: k, "reshape")
        literals = {}
        for ax, lay in ctx.axes(y).items():
            entry = shape[ax] if ax < len(shape) else None
            copied = ctx.get(x, ax)
            same = copied is not None and ctx.atoms.resolve(copied) == ctx.atoms.resolve(lay)
            if entry == 0 and not allowzero and not same:
                ctx.freeze(lay, "reshape copies a channel size with 0")
            elif ax in dynamic:
                continue
            elif entry is not None and entry > 0 and not const:
                # A run-time shape states this channel count as a literal
                # (Concat(Shape(x)[:2], [heads], [dim])): rewrite it where it is stated.
                src = ctx.literal(node.input[1], ax, lay)
                if src is None:
                    ctx.freeze(lay, "reshape to a shape computed at run time names the channel count")
                else:
                    literals[ax] = src
            elif entry is None:
                ctx.freeze(lay, "reshape to a shape computed at run time names the channel count")
        if literals:
            ctx.state(literals=literals)

    def rewrite(self, node, index, rw):
        y = node.output[0]
        if not rw.changed(y):
            return
        new = rw.new_shape(y)
        rw.rewrite_literals(index, y)
        if rw.view.const(node.input[1]) is None:
            return
        shape = np.array(rw.view.const(node.input[1]), dtype=np.int64).copy()
        for ax in range(len(shape)):
            if rw.layout(y, ax) is not None and shape[ax] > 0:
                shape[ax] = new[ax]
        rw.set_const(index, 1, shape)


@register("Flatten", "Squeeze", "Unsqueeze")
class ReshapeLike(Rule):
    """Flatten, Squeeze, Unsqueeze: the output shape follows from the input."""

    def analyze(self, node, ctx):
        x = node.input[0]
        if node.op_type == "Squeeze" and ctx.attr("axes") is None and len(node.input) < 2:
            # Without axes, Squeeze drops every size-1 axis: a channel axis
            # pruned down to one channel would vanish.
            for lay in ctx.axes(x).values():
                ctx.atoms.require_min_keep(lay, 2)
        reshape_layouts(ctx, x, node.output[0])

    def trace(self, node, view, axis, follow):
        if node.op_type == "Flatten":
            return None
        shape = view.const_shape(node.output[0])
        if shape is None:
            return None
        axes = _axes(node, view)
        if node.op_type == "Unsqueeze":
            if axes is None:
                return None
            added = {a % len(shape) for a in axes}
            if axis in added:
                return []  # a new axis of size 1: nothing stored along it
            return follow(node.input[0], axis - sum(a < axis for a in added))
        in_shape = view.const_shape(node.input[0])
        if in_shape is None:
            return None
        removed = sorted({a % len(in_shape) for a in axes}) if axes else [k for k, d in enumerate(in_shape) if d == 1]
        return follow(node.input[0], [k for k in range(len(in_shape)) if k not in removed][axis])

    def keeps_zero(self, node):
        return node.op_type in ("Squeeze", "Unsqueeze")


def _axes(node, view):
    """Squeeze / Unsqueeze axes, from the attribute (old opsets) or input 1."""
    axes = attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        v = view.const(node.input[1])
        axes = None if v is None else [int(a) for a in np.asarray(v).reshape(-1)]
    return axes
