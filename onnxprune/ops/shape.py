"""Ops that move channel axes around without computing: Reshape, Flatten,
Squeeze, Unsqueeze, Transpose, Concat, Split, Slice, and Shape (which reads
a channel count).

Reshape-like ops are handled by one algebra: the input and output shapes are
cut into blocks of axes with equal products; inside a block, the channel axis
is flattened into the block's row-major index (outer/inner expansion) and then
unflattened onto the output axes. This gives Flatten ``C,H,W -> C*H*W``,
channels-last flatten, unflatten back, and head splits ``H*D -> H,D`` (the
space is coarsened into blocks of D) from the same code.
"""
from __future__ import annotations

import numpy as np

from ..fold import known_ints, partial_value
from ..graph import attr, set_attr
from ..layout import LayoutError, Segment
from .base import Rule

INT_MAX = 2**62


def _prod(xs) -> int:
    p = 1
    for x in xs:
        p *= x
    return p


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
        try:
            mapped = map_block(ctx.atoms, [ins[i] for i in in_axes], [outs[o] for o in out_axes],
                               in_axes.index(a), lays[a])
        except LayoutError as e:
            ctx.freeze(lays[a], str(e))
            continue
        for k, lay in mapped.items():
            ctx.set(y, out_axes[k], lay)


class Reshape(Rule):
    ops = ("Reshape",)

    def analyze(self, node, ctx):
        x, y = node.input[0], node.output[0]
        if not ctx.axes(x):
            return
        const = ctx.const(1) is not None
        shape = known_ints(partial_value(ctx.view, node.input[1]))
        if shape is None:
            ctx.freeze_tensor(x, "reshape to a shape computed at run time")
            return
        allowzero = int(attr(node, "allowzero", 0))
        outs = reshape_target(ctx.view.shape(x), ctx.view.shape(y), shape, bool(allowzero))
        if outs is not None and ctx.view.shape(y) is None:
            ctx.view.shapes[y] = outs  # what inference missed, rules downstream can use
        reshape_layouts(ctx, x, y, outs)
        for ax, lay in ctx.axes(y).items():
            entry = shape[ax] if ax < len(shape) else None
            copied = ctx.get(x, ax)
            same = copied is not None and ctx.atoms.resolve(copied) == ctx.atoms.resolve(lay)
            if entry == 0 and not allowzero and not same:
                ctx.freeze(lay, "reshape copies a channel size with 0")
            elif entry is None or (entry > 0 and not const):
                # A run-time shape names this channel count: we cannot rewrite it.
                ctx.freeze(lay, "reshape to a shape computed at run time names the channel count")

    def rewrite(self, node, index, rw):
        y = node.output[0]
        if not rw.changed(y) or rw.view.const(node.input[1]) is None:
            return
        shape = np.array(rw.view.const(node.input[1]), dtype=np.int64).copy()
        new = rw.new_shape(y)
        for ax in range(len(shape)):
            if rw.layout(y, ax) is not None and shape[ax] > 0:
                shape[ax] = new[ax]
        rw.set_const(index, 1, shape)


class ReshapeLike(Rule):
    """Flatten, Squeeze, Unsqueeze: the output shape follows from the input."""

    ops = ("Flatten", "Squeeze", "Unsqueeze")

    def analyze(self, node, ctx):
        x = node.input[0]
        if node.op_type == "Squeeze" and attr(node, "axes") is None and len(node.input) < 2:
            # Without axes, Squeeze drops every size-1 axis: a channel axis
            # pruned down to one channel would vanish.
            for lay in ctx.axes(x).values():
                ctx.atoms.require_min_keep(lay, 2)
        reshape_layouts(ctx, x, node.output[0])


class Transpose(Rule):
    ops = ("Transpose",)

    def analyze(self, node, ctx):
        x = node.input[0]
        rank = ctx.view.rank(x)
        if rank is None:
            ctx.freeze_node("input rank unknown")
            return
        perm = attr(node, "perm") or list(range(rank))[::-1]
        ctx.passthrough(x, node.output[0], {int(p): k for k, p in enumerate(perm)})


def _other_axes(ctx, node, out, axis) -> None:
    """Axes other than the concat axis are shared by every operand; a constant
    operand (a class token, a fixed feature) is sliced like a parameter."""
    rank = ctx.view.rank(out)
    operands = [(k, n) for k, n in enumerate(node.input) if n]
    for ax in range(rank):
        if ax == axis:
            continue
        lays = [ctx.get(n, ax) for _, n in operands]
        if not any(lays):
            continue
        base = next(lay for lay in lays if lay is not None)
        for (k, n), lay in zip(operands, lays):
            if ctx.view.is_const(n):
                ctx.weight(k, ax, base, "param")
            else:
                ctx.unify(base, lay if lay is not None else ctx.require(n, ax))
        ctx.set(out, ax, base)


class Concat(Rule):
    ops = ("Concat",)

    def analyze(self, node, ctx):
        y = node.output[0]
        rank = ctx.view.rank(y)
        inputs = [n for n in node.input if n]
        if rank is None:
            ctx.freeze_node("output rank unknown")
            return
        axis = int(attr(node, "axis", 0)) % rank
        _other_axes(ctx, node, y, axis)
        if not any(ctx.get(n, axis) for n in inputs):
            return
        segments = []
        for n in inputs:
            if ctx.view.static(n, axis) == 0:
                continue
            lay = ctx.require(n, axis)
            if lay is None:
                ctx.freeze_node("concatenated size unknown")
                return
            segments.extend(lay)
        ctx.set(y, axis, tuple(segments))


class Split(Rule):
    ops = ("Split",)

    def analyze(self, node, ctx):
        x = node.input[0]
        outs = [o for o in node.output]
        rank = ctx.view.rank(x)
        if rank is None:
            ctx.freeze_node("input rank unknown")
            return
        axis = int(attr(node, "axis", 0)) % rank
        for o in outs:
            if o:
                ctx.passthrough(x, o, {a: a for a in range(rank) if a != axis})
        lay = ctx.get(x, axis)
        if lay is None:
            return
        sizes = [ctx.view.static(o, axis) if o else None for o in outs]
        if any(s is None for s in sizes):
            split = ctx.const(1) if len(node.input) > 1 and node.input[1] else attr(node, "split")
            if split is None:
                ctx.freeze(lay, "split sizes unknown")
                return
            sizes = [int(s) for s in split]
        parts = [ctx.atoms.plain(s) for s in sizes if s > 0]
        if not ctx.unify(lay, tuple(seg for p in parts for seg in p)):
            return
        it = iter(parts)
        for o, s in zip(outs, sizes):
            if s > 0:
                part = next(it)
                if o:
                    ctx.set(o, axis, part)
        ctx.state(axis=axis)

    def rewrite(self, node, index, rw):
        st = rw.state(index)
        if "axis" not in st:
            return
        axis = st["axis"]
        lays = [rw.layout(o, axis) for o in node.output]
        if not any(lay is not None and rw.size(lay) != rw.a.atoms.layout_size(lay) for lay in lays):
            return
        sizes = np.array([rw.size(lay) for lay in lays], dtype=np.int64)
        if rw.view.opset >= 13:
            for i, a in enumerate(node.attribute):
                if a.name == "num_outputs":
                    del node.attribute[i]
                    break
            if len(node.input) > 1 and node.input[1]:
                rw.set_const(index, 1, sizes)
            else:
                while len(node.input) < 2:
                    node.input.append("")
                node.input[1] = rw.new_const(f"{node.name}_split", sizes)
        else:
            set_attr(node, "split", [int(s) for s in sizes])


class Slice(Rule):
    ops = ("Slice",)

    def _params(self, node, ctx_or_rw, view):
        if view.opset < 10:
            starts, ends = attr(node, "starts"), attr(node, "ends")
            axes, steps = attr(node, "axes"), None
        else:
            def get(k):
                if len(node.input) > k and node.input[k]:
                    v = known_ints(partial_value(view, node.input[k]))
                    return "dynamic" if v is None else v
                return None
            starts, ends, axes, steps = get(1), get(2), get(3), get(4)
        return starts, ends, axes, steps

    def analyze(self, node, ctx):
        x, y = node.input[0], node.output[0]
        lays = ctx.axes(x)
        if not lays:
            return
        starts, ends, axes, steps = self._params(node, ctx, ctx.view)
        if "dynamic" in (starts, ends, axes, steps):
            ctx.freeze_tensor(x, "slice bounds computed at run time")
            return
        rank = ctx.view.rank(x)
        if axes is not None and None in axes:
            ctx.freeze_tensor(x, "slice axes computed at run time")
            return
        axes = [a % rank for a in (axes if axes is not None else range(len(starts)))]
        steps = steps or [1] * len(axes)
        sliced = {a: k for k, a in enumerate(axes)}
        ctx.passthrough(x, y, {a: a for a in range(rank) if a not in sliced})
        state = {}
        for ax, lay in lays.items():
            if ax not in sliced:
                continue
            k = sliced[ax]
            n = ctx.atoms.layout_size(lay)
            if None in (starts[k], ends[k], steps[k]):
                ctx.freeze(lay, "slice bounds on a channel axis computed at run time")
                continue
            if steps[k] != 1:
                ctx.freeze(lay, "strided slice along a channel axis")
                continue
            s, e = starts[k], ends[k]
            s = max(0, min(n, s + n if s < 0 else s))
            e = max(0, min(n, e + n if e < 0 else e))
            if s == 0 and e >= n:
                ctx.set(y, ax, lay)
                continue
            if e <= s:
                ctx.freeze(lay, "empty slice along a channel axis")
                continue
            if ctx.view.opset >= 10 and any(ctx.view.const(node.input[i]) is None for i in (1, 2)):
                ctx.freeze(lay, "slice bounds on a channel axis computed at run time")
                continue
            before, kept, after = (ctx.atoms.plain(m) if m else () for m in (s, e - s, n - e))
            if ctx.unify(lay, before + kept + after):
                ctx.set(y, ax, kept)
                state[ax] = (k, before, kept)
        if state:
            ctx.state(slices=state)

    def rewrite(self, node, index, rw):
        state = rw.state(index).get("slices")
        if not state:
            return
        starts, ends, axes, steps = self._params(node, rw, rw.view)
        starts, ends = list(starts), list(ends)
        for ax, (k, before, kept) in state.items():
            s = rw.size(before) if before else 0
            starts[k], ends[k] = s, s + rw.size(kept)
        if rw.view.opset < 10:
            set_attr(node, "starts", starts)
            set_attr(node, "ends", ends)
        else:
            dt = rw.view.const(node.input[1]).dtype
            rw.set_const(index, 1, np.array(starts, dtype=dt))
            rw.set_const(index, 2, np.array(ends, dtype=dt))


class Shape(Rule):
    """Shape reads channel counts. Fine when every consumer only picks other
    axes (batch size, spatial size) with constant indices; otherwise the
    channel count would flow into run-time arithmetic we cannot follow."""

    ops = ("Shape",)

    def analyze(self, node, ctx):
        x = node.input[0]
        lays = ctx.axes(x)
        if not lays:
            return
        rank = ctx.view.rank(x)
        start = int(attr(node, "start", 0))
        start = max(0, min(rank, start + rank if start < 0 else start))
        end = attr(node, "end")
        end = rank if end is None else max(0, min(rank, int(end) + rank if int(end) < 0 else int(end)))
        read: set[int] = set()
        for consumer, slot in ctx.view.consumers.get(node.output[0], []):
            axes = self._axes_read(consumer, slot, ctx, start, end)
            read |= set(range(start, end)) if axes is None else axes
        for ax in read:
            if ax in lays:
                ctx.freeze(lays[ax], f"its size is read by Shape node '{node.name}'")

    def _axes_read(self, consumer, slot, ctx, start, end):
        """Tensor axes a consumer of the shape vector reads, or None if unknown."""
        if slot != 0:
            return None
        n = end - start
        if consumer.op_type == "Gather":
            idx = ctx.view.const(consumer.input[1])
            if idx is None:
                return None
            return {start + (int(i) % n) for i in np.asarray(idx).reshape(-1)}
        if consumer.op_type == "Slice" and ctx.view.opset >= 10:
            s, e = ctx.view.const(consumer.input[1]), ctx.view.const(consumer.input[2])
            if s is None or e is None:
                return None
            s, e = int(np.asarray(s).reshape(-1)[0]), int(np.asarray(e).reshape(-1)[0])
            s = max(0, min(n, s + n if s < 0 else s))
            e = max(0, min(n, e + n if e < 0 else e))
            return {start + i for i in range(s, e)}
        return None
