"""Ops that move channel axes around without computing: Transpose, Concat,
Split, Slice, and Shape (which reads a channel count). Reshape-like ops live
in ``reshape.py``.
"""
from __future__ import annotations

import math

import numpy as np

from onnxprune.core.graph import factor, set_attr
from onnxprune.core.layout import Segment
from onnxprune.ops.base import Rule, attr_of
from onnxprune.ops.fold import (
    Dim,
    blind_reader,
    evaluate_with,
    follows,
    known_ints,
    partial_value,
)
from onnxprune.ops.registry import register


@register("Transpose")
class Transpose(Rule):
    """Axes are permuted; channels follow their axis."""

    def analyze(self, node, ctx):
        x = node.input[0]
        rank = ctx.view.rank(x)
        if rank is None:
            ctx.freeze_node("input rank unknown")
            return
        perm = ctx.attr("perm") or list(range(rank))[::-1]
        ctx.passthrough(x, node.output[0], {int(p): k for k, p in enumerate(perm)})

    def trace(self, node, view, axis, follow):
        shape = view.const_shape(node.output[0])
        if shape is None:
            return None
        perm = attr_of(node, view, "perm") or list(range(len(shape)))[::-1]
        return follow(node.input[0], int(perm[axis]))

    def keeps_zero(self, node):
        return True

    def reads_merged_axis(self, node, view, tensor, axis, dim):
        return True  # moves it whole


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


@register("Concat")
class Concat(Rule):
    """The concat axis is the operands' channel spaces end to end; other axes are shared."""

    def analyze(self, node, ctx):
        y = node.output[0]
        rank = ctx.view.rank(y)
        inputs = [n for n in node.input if n]
        if rank is None:
            ctx.freeze_node("output rank unknown")
            return
        axis = int(ctx.attr("axis", 0)) % rank
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
    """Each output is a slice of the input's channel space; split sizes are rewritten."""

    sizes_input = True  # split sizes are input 1 (opset 13+), else the ``split`` attribute

    def analyze(self, node, ctx):
        x = node.input[0]
        outs = [o for o in node.output]
        rank = ctx.view.rank(x)
        if rank is None:
            ctx.freeze_node("input rank unknown")
            return
        axis = int(ctx.attr("axis", 0)) % rank
        for o in outs:
            if o:
                ctx.passthrough(x, o, {a: a for a in range(rank) if a != axis})
        lay = ctx.get(x, axis)
        if lay is None:
            return
        sizes = [ctx.view.static(o, axis) if o else None for o in outs]
        if any(s is None for s in sizes):
            split = ctx.const(1) if len(node.input) > 1 and node.input[1] else ctx.attr("split")
            if split is None:
                ctx.freeze(lay, "split sizes unknown")
                return
            sizes = [int(s) for s in split]
        parts = [ctx.atoms.plain(s) for s in sizes if s > 0]
        if not ctx.unify(lay, tuple(seg for p in parts for seg in p)):
            return
        it = iter(parts)
        pieces = [next(it) if s > 0 else None for s in sizes]  # an empty piece stays empty
        for o, part in zip(outs, pieces):
            if o and part is not None:
                ctx.set(o, axis, part)
        ctx.state(pieces=pieces)  # also of outputs with no layout (shape unknown, or no output)

    def rewrite(self, node, index, rw):
        st = rw.state(index)
        if "pieces" not in st:
            return
        lays = st["pieces"]
        if not any(lay is not None and rw.size(lay) != rw.full_size(lay) for lay in lays):
            return
        sizes = np.array([rw.size(lay) if lay is not None else 0 for lay in lays], dtype=np.int64)
        if self.sizes_input:
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


@register("Split", since=13)
class SplitSizesInput(Split):
    """Each output is a slice of the input's channel space; split sizes (input 1) are rewritten."""


@register("Split", until=12)
class SplitSizesAttribute(Split):
    """Each output is a slice of the input's channel space; the ``split`` attribute is rewritten."""

    sizes_input = False


class Slice(Rule):
    """A contiguous slice of a channel axis is a sub-space; its bounds are rewritten."""

    bounds_input = True  # starts/ends/axes/steps are inputs (opset 10+), else attributes

    def _params(self, node, ctx_or_rw, view):
        if not self.bounds_input:
            starts, ends = attr_of(node, view, "starts"), attr_of(node, view, "ends")
            axes, steps = attr_of(node, view, "axes"), None
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
        computed = self.bounds_input and any(ctx.view.const(node.input[i]) is None for i in (1, 2))
        deps = self._counts_read(node, ctx) if computed else {}
        if not lays and not deps:
            return

        def give_up(why):
            ctx.freeze_tensor(x, why)
            for read in deps.values():
                for lay in read:
                    ctx.freeze(lay, f"its size sets a slice bound: {why}")

        starts, ends, axes, steps = self._params(node, ctx, ctx.view)
        if "dynamic" in (starts, ends, axes, steps):
            give_up("slice bounds computed at run time")
            return
        rank = ctx.view.rank(x)
        if axes is not None and None in axes or rank is None:
            give_up("slice axes computed at run time")
            return
        axes = [a % rank for a in (axes if axes is not None else range(len(starts)))]
        steps = steps or [1] * len(axes)
        sliced = {a: k for k, a in enumerate(axes)}
        ctx.passthrough(x, y, {a: a for a in range(rank) if a not in sliced})
        for k, read in deps.items():
            if k < len(axes) and axes[k] not in lays:
                for lay in read:  # pruning would change how much of a fixed axis is kept
                    ctx.freeze(lay, f"its size sets the bound of a slice along axis {axes[k]} of '{x}', "
                                    "which has no channels")
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
            s, e = _clip(starts[k], n), _clip(ends[k], n)
            if e <= s:
                ctx.freeze(lay, "empty slice along a channel axis")
                continue
            if computed:  # bounds from the shape: they must follow every pruned size themselves
                if not self._computed(node, ctx, y, ax, k, lay, n, s, e):
                    for read in deps.get(k, ()):
                        ctx.freeze(read, f"its size sets a bound of slice '{node.name}' that does not follow")
                continue
            if s == 0 and e >= n:
                ctx.set(y, ax, lay)
                continue
            before, kept, after = (ctx.atoms.plain(m) if m else () for m in (s, e - s, n - e))
            if ctx.unify(lay, before + kept + after):
                ctx.set(y, ax, kept)
                state[ax] = (k, before, kept)
        if state:
            ctx.state(slices=state)

    def _counts_read(self, node, ctx) -> dict:
        """Entry k of the starts/ends -> the channel layouts whose size it
        reads (known normally, unknown once that size is)."""

        asked = {}

        def note(tensor, axis, static):
            lay = ctx.get(tensor, axis)
            if lay is not None:
                asked[ctx.atoms.resolve(lay)] = lay
            return static

        def entries(dims):
            out = []
            for q in (1, 2):
                v = evaluate_with(ctx.view, node.input[q], dims) if len(node.input) > q and node.input[q] else None
                out.append(None if v is None else list(v.reshape(-1)))
            return out

        base = entries(note)
        deps: dict = {}
        for key, lay in asked.items():
            blind = entries(lambda t, a, st: None if ctx.get(t, a) is not None
                            and ctx.atoms.resolve(ctx.get(t, a)) == key else st)
            for b, o in zip(base, blind):
                for k, e in enumerate(b or ()):
                    if e is not None and (o is None or k >= len(o) or o[k] is None):
                        deps.setdefault(k, []).append(lay)
        return deps

    def _computed(self, node, ctx, y, ax, k, lay, n, s, e) -> bool:
        """Bounds computed from the shape at run time (``qkv.chunk(3)`` with
        dynamic shapes: ``(C + 2) // 3 * i``). The slice must cut the axis
        into r equal pieces (its bounds multiples of n / r), which become one
        channel space repeated r times (so every piece keeps the same count),
        and the same arithmetic, evaluated at every size the pruned axis
        could have (r x 1 .. n / r), must give the same pieces. Nothing is
        rewritten: the bounds follow by themselves."""

        piece = math.gcd(math.gcd(s, e), n)
        r, i, j = n // piece, s // piece, e // piece
        same = ctx.atoms.resolve(lay)

        if piece > _MAX_COUNTS:
            ctx.freeze(lay, f"slice bounds on a channel axis computed at run time: {piece} sizes to check")
            return False
        counts = np.arange(1, piece + 1, dtype=np.int64)  # per piece, every count pruning could leave
        sizes = r * counts

        def dims(tensor, axis, static):
            other = ctx.get(tensor, axis)
            if other is None:
                return static  # not a channel axis: pruning leaves it
            return sizes if ctx.atoms.resolve(other) == same else None  # another count: unknown

        got = []
        for q in (1, 2):
            try:
                v = evaluate_with(ctx.view, node.input[q], dims)
                v = None if v is None or v.size <= k or v.reshape(-1)[k] is None else v.reshape(-1)[k]
                got.append(None if v is None else np.broadcast_to(np.asarray(v, dtype=np.int64), sizes.shape))
            except (TypeError, ValueError, OverflowError):
                got.append(None)
        if any(v is None for v in got):
            ctx.freeze(lay, "slice bounds on a channel axis computed at run time from something other "
                            "than its own size")
            return False
        lo = np.clip(np.where(got[0] < 0, got[0] + sizes, got[0]), 0, sizes)
        hi = np.clip(np.where(got[1] < 0, got[1] + sizes, got[1]), 0, sizes)
        bad = np.flatnonzero((lo != i * counts) | (hi != j * counts))
        if bad.size:
            c = int(counts[bad[0]])
            ctx.freeze(lay, f"slice bounds on a channel axis computed at run time do not follow the "
                            f"pruned size: at {r * c} channels they give {int(lo[bad[0]])}:{int(hi[bad[0]])}, "
                            f"not {i * c}:{j * c}")
            return False
        if r == 1:
            ctx.set(y, ax, lay)
            return True
        base = ctx.atoms.plain(piece)[0].atom
        if ctx.unify(lay, (Segment(base, r, 1),)):
            ctx.set(y, ax, (Segment(base, j - i, 1),))
            return True
        return False

    def rewrite(self, node, index, rw):
        state = rw.state(index).get("slices")
        if not state:
            return
        starts, ends, axes, steps = self._params(node, rw, rw.view)
        starts, ends = list(starts), list(ends)
        for ax, (k, before, kept) in state.items():
            s = rw.size(before) if before else 0
            starts[k], ends[k] = s, s + rw.size(kept)
        if not self.bounds_input:
            set_attr(node, "starts", starts)
            set_attr(node, "ends", ends)
        else:
            dt = rw.view.const(node.input[1]).dtype
            rw.set_const(index, 1, np.array(starts, dtype=dt))
            rw.set_const(index, 2, np.array(ends, dtype=dt))


@register("Slice", since=10)
class SliceBoundsInput(Slice):
    """A contiguous slice of a channel axis is a sub-space; its bound inputs are rewritten."""


@register("Slice", until=9)
class SliceBoundsAttribute(Slice):
    """A contiguous slice of a channel axis is a sub-space; its bound attributes are rewritten."""

    bounds_input = False


def _clip(bound: int, n: int) -> int:
    """A Slice bound on an axis of size n, as ONNX clamps it."""
    return max(0, min(n, bound + n if bound < 0 else bound))


_ARITH = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Mod", "Neg", "Floor", "Ceil", "ReduceProd", "ReduceSum",
          "ReduceMax", "ReduceMin")


def _only_checked(view, name: str, depth: int = 0) -> bool:
    """Whether arithmetic on a count reaches nothing but Slice bounds and
    Reshape targets (through more arithmetic and entry picking): the places
    its value is checked at every pruned size (``Slice._computed``,
    ``computed_entries``)."""
    if depth > 16 or view.escapes(name):
        return False
    readers = view.consumers.get(name, [])
    for consumer, slot in readers:
        op = consumer.op_type
        if (op == "Slice" and slot in (1, 2)) or (op == "Reshape" and slot == 1):
            continue
        if op in _ARITH or op in _SELECT or op == "Concat":
            if not (consumer.output and _only_checked(view, consumer.output[0], depth + 1)):
                return False
            continue
        return False
    return bool(readers)


_MAX_COUNTS = 16384  # sizes a computed slice bound is evaluated at
_SELECT = ("Identity", "Cast", "Gather", "Slice", "Unsqueeze", "Squeeze", "Reshape", "Flatten")


@register("Shape")
class Shape(Rule):
    """Shape reads sizes. A channel count read here must not flow into run-time
    arithmetic we cannot follow: the shape vector is followed through ops
    that only pick, move or join entries (Gather, Slice, Concat, Unsqueeze,
    Cast...) and through Mul by a literal (``kv_heads * n_rep``); where it
    lands in a Reshape or Expand target, that rule checks each entry that
    came from a channel axis follows the pruned count there (``fold.Dim``).
    Any other reader of a channel count freezes it."""

    def analyze(self, node, ctx):
        x = node.input[0]
        lays = ctx.axes(x)
        if not lays:
            return
        rank = ctx.view.rank(x)
        start = int(ctx.attr("start", 0))
        start = max(0, min(rank, start + rank if start < 0 else start))
        end = ctx.attr("end")
        end = rank if end is None else max(0, min(rank, int(end) + rank if int(end) < 0 else int(end)))
        every = set(range(start, end))

        def carried(name):
            """Axes of x whose size is in this shape vector (all: unknown)."""
            value = partial_value(ctx.view, name)
            if value is None:
                return every
            return {ax for e in value.reshape(-1) if isinstance(e, Dim) for t, ax in e.sources if t == x}

        read: set[int] = set()
        computed: dict[str, set] = {}  # arithmetic on counts -> the axes it depends on
        todo, seen = [node.output[0]], set()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            here = computed.get(name) or carried(name)
            if ctx.view.escapes(name):
                read |= here
            for consumer, slot in ctx.view.consumers.get(name, []):
                op = consumer.op_type
                out = consumer.output[0] if consumer.output else ""
                follow = out and partial_value(ctx.view, out) is not None  # still a shape vector
                if name in computed and follow and (op in _SELECT or op in _ARITH or op == "Concat"):
                    computed[out] = computed.get(out, set()) | here  # still arithmetic on the counts
                    todo.append(out)
                elif op == "Slice" and slot in (1, 2):
                    continue  # bounds: the Slice rule checks them at every pruned size
                elif ((op in _SELECT and slot == 0) or op == "Concat") and follow:
                    todo.append(out)  # picks or joins entries: dropping one is no read
                elif op == "Mul" and follow and here - carried(out) and _only_checked(ctx.view, out):
                    computed[out] = set(here)  # a product checked where it lands
                    todo.append(out)
                elif op == "Mul" and follow:
                    read |= here - carried(out)  # a count used in a product is read
                    todo.append(out)
                elif op in _ARITH and follow and _only_checked(ctx.view, out):
                    computed[out] = set(here)  # ``(C + 2) // 3``: followed to where it is checked
                    todo.append(out)
                elif op == "Where" and slot in (1, 2) and follow:
                    todo.append(out)  # picks entries (TorchScript's expand: Where(s == -1, 1, s))
                elif blind_reader(ctx.view, consumer, slot):
                    continue  # its length (Shape), or a count (>= 1) compared with -1 or 0
                elif op in ("Reshape", "Expand") and slot == 1:
                    if partial_value(ctx.view, name) is None:
                        read |= here  # the reader cannot see where the count lands
                else:
                    read |= here
        for ax in sorted(read & set(lays)):
            ctx.freeze(lays[ax], f"its size is read by Shape node '{node.name}'")


_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53)


def _symbol_value(symbols: dict, dim, rnd: int):
    """A symbolic dim (``'batch'``, ``'batch*8'``) at round ``rnd``: every
    symbol 1 in round 0 (a batch of one), distinct primes after; None for a
    dim that is neither an int nor a symbol."""
    if isinstance(dim, int):
        return dim
    f = factor(dim)
    if f is None:
        return None
    k = symbols.setdefault(f[0], len(symbols))
    return f[1] * (1 if rnd == 0 else _PRIMES[(2 * k + rnd - 1) % len(_PRIMES)])


def computed_entries(ctx, target: str, y: str, outs, axis_of, what: str) -> set:
    """Entries of a run-time shape computed from channel counts by
    arithmetic (tf2onnx's ``ReduceProd(Shape(x)[0:2])``, batch x heads for a
    batched MatMul; ``Max`` of two tensors' head counts): each is evaluated
    at every count its output axis ``axis_of(k)`` could be pruned to, with
    the symbolic dims at 1 and at two other values, and must equal that
    axis's size (``outs``; a batch-merged axis ``batch*K`` is the batch times
    the kept channels) every time. Nothing is rewritten: they follow by
    themselves. Entries ``check_dims`` follows (``Dim``) are left to it.
    -> the entry indices that follow; an entry that reads a count and does
    not follow freezes what it reads and the output axis."""
    raw = partial_value(ctx.view, target)
    if raw is None:
        return set()
    flat = list(raw.reshape(-1))
    symbols: dict = {}
    read: dict = {}  # resolved layout -> a layout read by Shape

    def dims_at(counts, atom, rnd: int, blind=None):
        def dims(tensor, axis, static):
            lay = ctx.get(tensor, axis)
            shape = ctx.view.shape(tensor)
            dim = shape[axis] if shape is not None and axis < len(shape) else static
            if lay is None:
                return _symbol_value(symbols, dim, rnd)
            key = ctx.atoms.resolve(lay)
            read.setdefault(key, lay)
            if key == blind:
                return None
            full = ctx.atoms.layout_size(lay)
            if counts is None:
                size = full
            elif any(seg.atom != atom for seg in key):
                return None  # another count: unknown
            else:
                size = sum(seg.outer * seg.inner for seg in key) * counts
            if isinstance(dim, int) or dim is None:
                return size
            f = factor(dim)
            return size * _symbol_value(symbols, f[0], rnd) if f[1] == full else None  # batch-merged
        return dims

    def evaluate(dims):
        try:
            v = evaluate_with(ctx.view, target, dims)
        except (TypeError, ValueError, OverflowError):
            return None
        return None if v is None or v.size != len(flat) else list(v.reshape(-1))

    base = evaluate(dims_at(None, None, 1))
    if base is None:
        for lay in read.values():
            ctx.freeze(lay, f"its size, read by Shape, sets the {what} target, which cannot be evaluated "
                            f"at other sizes")
        return set()
    deps: dict = {}  # entry -> the counts it reads (all of them where the entry is unknowable)
    for key, lay in list(read.items()):
        blind = evaluate(dims_at(None, None, 1, key))
        for k in range(len(flat)):
            if base[k] is None or blind is None or blind[k] is None:
                deps.setdefault(k, []).append((key, lay))
    ok = set()
    for k, e in enumerate(flat):
        to = axis_of(k)
        out = ctx.get(y, to) if to is not None else None
        if isinstance(e, Dim) or not (deps.get(k) or (e is None and out is not None)):
            continue
        if _follows_everywhere(ctx, evaluate, dims_at, k, out, outs[to] if out is not None else None,
                               [key for key, _ in deps.get(k, ())], symbols):
            ok.add(k)
            continue
        for _, lay in deps.get(k, ()):
            ctx.freeze(lay, f"its size, read by Shape, sets entry {k} of the {what} target through "
                            f"arithmetic that does not follow the pruned count")
        if out is not None:
            ctx.freeze(out, f"{what} target entry {k} is computed at run time and does not follow the "
                            f"pruned count")
    return ok


def _follows_everywhere(ctx, evaluate, dims_at, k: int, out, dim, keys, symbols) -> bool:
    """Whether entry ``k`` equals the size of the output axis (layout ``out``,
    dim ``dim``) at every count its one atom could be pruned to, in every round."""
    if out is None:
        return False
    key = ctx.atoms.resolve(out)
    atom = key[0].atom
    if any(seg.atom != atom for seg in key) or any(seg.atom != atom for rd in keys for seg in rd):
        return False  # several counts: not checked
    n = ctx.atoms.size[atom]
    if n > _MAX_COUNTS:
        return False
    counts = np.arange(1, n + 1, dtype=np.int64)
    per = sum(seg.outer * seg.inner for seg in key) * counts
    f = factor(dim)
    if f is not None and f[1] != ctx.atoms.layout_size(out):
        return False
    for rnd in range(3):
        got = evaluate(dims_at(counts, atom, rnd))
        if got is None or got[k] is None:
            return False
        want = per if f is None else per * _symbol_value(symbols, f[0], rnd)
        try:
            if not np.array_equal(np.broadcast_to(np.asarray(got[k], dtype=np.int64), counts.shape), want):
                return False
        except (TypeError, ValueError, OverflowError):
            return False
    return True


def check_dims(ctx, entries, y: str, axis_of, what: str) -> set:
    """Entries of a run-time shape that came from a channel count
    (``fold.Dim``) must follow the pruned size of the output axis they set
    (``axis_of(k)``); otherwise the channel axis they were read from, and the
    output axis, freeze. -> the entry indices that follow (nothing to rewrite)."""
    ok = set()
    if entries is None:
        return ok
    for k, e in enumerate(entries.reshape(-1)):
        if not isinstance(e, Dim):
            continue
        channels = [(t, ax) for t, ax in e.sources if ctx.get(t, ax) is not None]
        if not channels:
            continue  # no channel axis: its size does not change
        to = axis_of(k)
        out = ctx.get(y, to) if to is not None else None
        src = ctx.get(*channels[0])
        size = ctx.view.static(*channels[0])
        coef = int(e) // size if size and len(channels) == 1 and int(e) % size == 0 else None
        if out is not None and coef is not None and follows(ctx.atoms, coef, src, out):
            ok.add(k)  # the other factors are sizes pruning does not change
            continue
        for t, ax in channels[1:]:
            ctx.freeze(ctx.get(t, ax), f"its size, read by Shape, is multiplied by another channel count in "
                                       f"entry {k} of the {what} target")
        ctx.freeze(src, f"its size, read by Shape, sets entry {k} of the {what} target to a count pruning "
                        f"would not follow")
        if out is not None:
            ctx.freeze(out, f"{what} target entry {k} is another tensor's size")
    return ok
