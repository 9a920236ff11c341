"""The folder's evaluators: what each shape-arithmetic op computes.

One function per op (or per opset range of an op), registered with
``@evaluates`` like the rules, called by ``fold.Folder`` with the node's
``Inputs``. Each one matches the operator's definition (and onnx's reference
evaluator) for every attribute and element type it accepts, computing in the
tensor's own element type, and returns None for anything else: an attribute
value, an element type or an undefined case (a zero divisor, a float cast out
of an integer's range) is unknown, never approximated. ``tests`` compares
every evaluator here with the reference evaluator on random graphs.

Entries move through the layout ops (Gather, Slice, Concat, Reshape...) as
they are, so a ``Dim`` keeps where it came from; arithmetic gives plain
numbers, except a product of a ``Dim`` by a plain integer (``heads *
head_dim`` where head_dim is a stated count) and Max with 1 or less (a count
is at least 1), which still follow the count.
"""
from __future__ import annotations

import functools

import numpy as np
import onnx

from .fold import MAX_ELEMENTS, Dim, Inputs, Value, entries_of
from .registry import evaluates

INTS = "iu"


def _np(entry, dtype: np.dtype):
    """An entry as numpy, in the value's element type."""
    if isinstance(entry, np.ndarray):
        return entry.astype(dtype)
    return np.asarray(entry, dtype=dtype)


def _py(result):
    """A numpy result as an entry: a Python number, or an array of them."""
    result = np.asarray(result)
    return result.item() if result.ndim == 0 else result


def _same_dtype(values: list) -> np.dtype | None:
    dtypes = {v.dtype for v in values}
    return dtypes.pop() if len(dtypes) == 1 else None


def _map(values: list, fn, dtype: np.dtype) -> Value | None:
    """Apply ``fn`` entry by entry under multidirectional broadcasting; an
    entry is unknown where any operand's is, or where ``fn`` says None."""
    arrays = np.broadcast_arrays(*(v.entries for v in values))  # ValueError: not broadcastable
    out = np.empty(arrays[0].shape, dtype=object)
    if out.size > MAX_ELEMENTS:
        return None
    for idx in np.ndindex(out.shape):
        xs = [a[idx] for a in arrays]
        out[idx] = None if any(x is None for x in xs) else fn(*xs)
    return Value(out, dtype)


def _arith(a: Inputs, fn, kinds: str = "biuf") -> Value | None:
    """An elementwise op of operands of one element type, computed by
    ``fn(*numpy operands)`` (which may return None for an undefined entry)."""
    values = a.values()
    if values is None or not values:
        return None
    dtype = _same_dtype(values)
    if dtype is None or dtype.kind not in kinds:
        return None

    def entry(*xs):
        r = fn(*(_np(x, dtype) for x in xs))
        return None if r is None else _py(r)

    return _map(values, entry, dtype)


# -- where shapes come from --------------------------------------------------------

@evaluates("Shape")
def shape(a: Inputs):
    """The static dims of the input, as ``Dim`` entries (``start``/``end`` since
    opset 15); the shape of a folded input is its own."""
    dims = a.shape(0)
    if dims is None:
        folded = a.value(0)
        if folded is None:
            return None
        dims = folded.entries.shape
    r = len(dims)
    start, end = int(a.attr("start", 0)), a.attr("end")
    start = max(0, min(r, start + r if start < 0 else start))
    end = r if end is None else max(0, min(r, int(end) + r if int(end) < 0 else int(end)))
    return Value(entries_of(a.dim(0, start + k, d) for k, d in enumerate(dims[start:end])),
                 np.dtype(np.int64))


@evaluates("Size")
def size(a: Inputs):
    dims = a.shape(0)
    if dims is None and a.value(0) is not None:
        dims = a.value(0).entries.shape
    if dims is None or not all(isinstance(d, int) for d in dims):
        return None
    return Value(entries_of([int(np.prod(dims, dtype=np.int64))], ()), np.dtype(np.int64))


@evaluates("ConstantOfShape")
def constant_of_shape(a: Inputs):
    target = a.value(0)
    if target is None or target.dtype.kind not in INTS or target.entries.ndim != 1:
        return None
    dims = list(target.entries)
    if any(d is None or isinstance(d, np.ndarray) or d < 0 for d in dims):
        return None
    t = a.attr("value")
    fill = onnx.numpy_helper.to_array(t).reshape(-1) if t is not None else np.zeros(1, np.float32)
    if fill.size != 1 or fill.dtype.kind not in "biuf":
        return None
    n = int(np.prod(dims, dtype=np.int64))
    if n > MAX_ELEMENTS:
        return None
    return Value(entries_of([fill[0].item()] * n, [int(d) for d in dims]), fill.dtype)


# -- entries that move: layout ops ---------------------------------------------------

@evaluates("Identity")
def identity(a: Inputs):
    return a.value(0)


def _known_ints(v: Value | None) -> np.ndarray | None:
    """All entries of an integer value as an int64 array (None if any is unknown)."""
    if v is None or v.dtype.kind not in INTS:
        return None
    flat = v.entries.reshape(-1)
    if any(e is None or isinstance(e, np.ndarray) for e in flat):
        return None
    return np.array([int(e) for e in flat], dtype=np.int64).reshape(v.entries.shape)


def _axes(a: Inputs) -> tuple[bool, list | None]:
    """Squeeze/Unsqueeze axes, an attribute up to opset 12 and an input
    since 13: (whether they are given, their values or None when unknown)."""
    if a.version is not None and a.version <= 12:
        axes = a.attr("axes")
        return axes is not None, None if axes is None else [int(x) for x in axes]
    if not a.given(1):
        return False, None
    v = _known_ints(a.value(1))
    return True, None if v is None else v.reshape(-1).tolist()


@evaluates("Squeeze")
def squeeze(a: Inputs):
    x, (given, axes) = a.value(0), _axes(a)
    if x is None or given and axes is None:
        return None
    shape = x.entries.shape
    r = len(shape)
    if not given:
        axes = [k for k, d in enumerate(shape) if d == 1]  # no axes: every size-1 axis
    norm = sorted({k + r if k < 0 else k for k in axes})
    if len(norm) != len(axes) or any(not 0 <= k < r or shape[k] != 1 for k in norm):
        return None
    return Value(x.entries.reshape([d for k, d in enumerate(shape) if k not in norm]), x.dtype)


@evaluates("Unsqueeze")
def unsqueeze(a: Inputs):
    x, (given, axes) = a.value(0), _axes(a)
    if x is None or axes is None:
        return None
    r = x.entries.ndim + len(axes)
    norm = sorted({k + r if k < 0 else k for k in axes})
    if len(norm) != len(axes) or any(not 0 <= k < r for k in norm):
        return None
    shape = list(x.entries.shape)
    for k in norm:
        shape.insert(k, 1)
    return Value(x.entries.reshape(shape), x.dtype)


@evaluates("Reshape", since=5)
def reshape(a: Inputs):
    x, target = a.value(0), a.value(1)
    if x is None or target is None or target.dtype.kind not in INTS or target.entries.ndim != 1:
        return None
    dims = list(target.entries)
    if any(d is None or isinstance(d, np.ndarray) for d in dims):
        return None
    allowzero = int(a.attr("allowzero", 0) or 0)
    if allowzero and 0 in dims and -1 in dims:
        return None  # invalid by the operator's definition
    shape = []
    for k, d in enumerate(dims):
        if d == 0 and not allowzero:
            if k >= x.entries.ndim:
                return None
            shape.append(x.entries.shape[k])
        elif d < -1:
            return None
        else:
            shape.append(int(d))
    if shape.count(-1) > 1:
        return None
    if -1 in shape:
        known = int(np.prod([d for d in shape if d != -1], dtype=np.int64))
        if known == 0 or x.entries.size % known:
            return None
        shape[shape.index(-1)] = x.entries.size // known
    if int(np.prod(shape, dtype=np.int64)) != x.entries.size:
        return None
    return Value(x.entries.reshape(shape), x.dtype)


@evaluates("Flatten")
def flatten(a: Inputs):
    x = a.value(0)
    if x is None:
        return None
    shape, axis = x.entries.shape, int(a.attr("axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    if not 0 <= axis <= len(shape):
        return None
    outer, inner = (int(np.prod(part, dtype=np.int64)) for part in (shape[:axis], shape[axis:]))
    return Value(x.entries.reshape(outer, inner), x.dtype)


@evaluates("Transpose")
def transpose(a: Inputs):
    x = a.value(0)
    if x is None:
        return None
    perm = a.attr("perm")
    if perm is not None and sorted(int(p) for p in perm) != list(range(x.entries.ndim)):
        return None
    return Value(np.transpose(x.entries, perm) if perm is not None else x.entries.T, x.dtype)


@evaluates("Gather")
def gather(a: Inputs):
    x, idx = a.value(0), _known_ints(a.value(1))
    if x is None or idx is None or x.entries.ndim == 0:
        return None
    axis = int(a.attr("axis", 0))
    r = x.entries.ndim
    axis = axis + r if axis < 0 else axis
    if not 0 <= axis < r:
        return None
    n = x.entries.shape[axis]
    if np.any((idx < -n) | (idx >= n)):
        return None  # out of range: an error in the runtime
    picked = np.take(x.entries, np.where(idx < 0, idx + n, idx).reshape(-1), axis=axis)
    shape = x.entries.shape[:axis] + idx.shape + x.entries.shape[axis + 1:]
    return Value(picked.reshape(shape), x.dtype)


@evaluates("Concat")
def concat(a: Inputs):
    values = a.values()
    if not values:
        return None
    dtype = _same_dtype(values)
    if dtype is None or any(v.entries.ndim == 0 for v in values):
        return None
    axis = a.attr("axis")
    r = values[0].entries.ndim
    if axis is None or not -r <= int(axis) < r:
        return None
    return Value(np.concatenate([v.entries for v in values], axis=int(axis)), dtype)


def _slice(x: Value, starts, ends, axes, steps) -> Value | None:
    """Slice as the operator defines it: negative bounds count from the end,
    then starts clamp to [0, n] ([0, n-1] going backwards) and ends to [0, n]
    ([-1, n-1] going backwards, -1 meaning before the first entry)."""
    r = x.entries.ndim
    if axes is None:
        axes = list(range(len(starts)))
    if steps is None:
        steps = [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        return None
    axes = [int(ax) + r if int(ax) < 0 else int(ax) for ax in axes]
    if len(set(axes)) != len(axes) or any(not 0 <= ax < r for ax in axes):
        return None
    out = x.entries
    for st, en, ax, step in zip(starts, ends, axes, steps):
        n = x.entries.shape[ax]
        st, en, step = int(st), int(en), int(step)
        if step == 0:
            return None
        if step < 0 and en >= n:
            return None  # an end past the last entry going backwards: onnxruntime reads INT64_MAX as
            # "to the first entry", the operator's definition as "nothing"; no value is certain
        st, en = st + n if st < 0 else st, en + n if en < 0 else en
        if step > 0:
            st, en = min(max(st, 0), n), min(max(en, 0), n)
        else:
            st, en = min(max(st, 0), n - 1), min(max(en, -1), n - 1)
        out = np.take(out, np.arange(st, en, step, dtype=np.int64), axis=ax)
    return Value(out, x.dtype)


@evaluates("Slice", until=9)
def slice_attributes(a: Inputs):
    x, starts, ends = a.value(0), a.attr("starts"), a.attr("ends")
    if x is None or starts is None or ends is None:
        return None
    return _slice(x, starts, ends, a.attr("axes"), None)


@evaluates("Slice", since=10)
def slice_inputs(a: Inputs):
    x = a.value(0)
    bounds = [_known_ints(a.value(k)).reshape(-1).tolist() if a.given(k) and _known_ints(a.value(k)) is not None
              else (None if a.given(k) else "absent") for k in (1, 2, 3, 4)]
    if x is None or any(b is None for b in bounds) or "absent" in bounds[:2]:
        return None
    starts, ends, axes, steps = (None if b == "absent" else b for b in bounds)
    return _slice(x, starts, ends, axes, steps)


# -- arithmetic ------------------------------------------------------------------------

@evaluates("Add")
def add(a: Inputs):
    return _arith(a, np.add, "iuf")


@evaluates("Sub")
def sub(a: Inputs):
    return _arith(a, np.subtract, "iuf")


@evaluates("Mul")
def mul(a: Inputs):
    out = _arith(a, np.multiply, "iuf")
    if out is None or out.dtype.kind not in INTS:
        return out
    x, y = (v.entries for v in a.values())
    xs, ys = np.broadcast_arrays(x, y)
    for idx in np.ndindex(out.entries.shape):  # a Dim times a stated int still follows its count
        p, q, got = xs[idx], ys[idx], out.entries[idx]
        if isinstance(p, Dim) != isinstance(q, Dim) and got is not None and not isinstance(got, np.ndarray):
            d, k = (p, q) if isinstance(p, Dim) else (q, p)
            if not isinstance(k, np.ndarray) and int(d) * int(k) == got:
                out.entries[idx] = Dim(got, d.src, d.coef * int(k))
    return out


def _divide(x, y):
    if x.dtype.kind in INTS:
        if np.any(y == 0):
            return None  # undefined: the runtime fails or gives garbage
        q = np.floor_divide(x, y)
        return q + ((np.remainder(x, y) != 0) & ((x < 0) ^ (y < 0))).astype(q.dtype)  # truncates
    return np.divide(x, y)


@evaluates("Div")
def div(a: Inputs):
    return _arith(a, _divide, "iuf")


@evaluates("Mod")
def mod(a: Inputs):
    fmod = int(a.attr("fmod", 0) or 0)
    values = a.values()
    if values is None or fmod not in (0, 1):
        return None
    if not fmod and any(v.dtype.kind == "f" for v in values):
        return None  # the operator requires fmod=1 for floats

    def fn(x, y):
        if x.dtype.kind in INTS and np.any(y == 0):
            return None
        return np.fmod(x, y) if fmod else np.mod(x, y)

    return _arith(a, fn, "iuf")


def _extreme(a: Inputs, reduce, keeps_dim) -> Value | None:
    values = a.values()
    if not values:
        return None
    out = _arith(a, lambda *xs: reduce(xs), "iuf")
    if out is None or out.dtype.kind not in INTS:
        return out
    arrays = np.broadcast_arrays(*(v.entries for v in values))
    for idx in np.ndindex(out.entries.shape):
        xs = [arr[idx] for arr in arrays]
        dims = [x for x in xs if isinstance(x, Dim)]
        if len(dims) == 1 and keeps_dim(dims[0], [x for x in xs if x is not dims[0]]):
            out.entries[idx] = dims[0]
    return out


@evaluates("Max")
def maximum(a: Inputs):
    """Variadic, broadcasting. Max(count, c <= 1) is the count for every count
    pruning can leave (at least 1), so it keeps the ``Dim``."""
    return _extreme(a, lambda xs: functools.reduce(np.maximum, xs),
                    lambda d, rest: all(not isinstance(x, np.ndarray) and x is not None and x <= 1
                                        for x in rest))


@evaluates("Min")
def minimum(a: Inputs):
    return _extreme(a, lambda xs: functools.reduce(np.minimum, xs), lambda d, rest: False)


@evaluates("Neg")
def neg(a: Inputs):
    return _arith(a, np.negative, "if")


@evaluates("Floor")
def floor(a: Inputs):
    return _arith(a, np.floor, "f")


@evaluates("Ceil")
def ceil(a: Inputs):
    return _arith(a, np.ceil, "f")


# -- comparisons and selection ---------------------------------------------------------

def _compare(a: Inputs, fn) -> Value | None:
    out = _arith(a, fn, "biuf")
    return None if out is None else Value(out.entries, np.dtype(bool))


@evaluates("Equal")
def equal(a: Inputs):
    return _compare(a, np.equal)


@evaluates("Less")
def less(a: Inputs):
    return _compare(a, np.less)


@evaluates("LessOrEqual")
def less_or_equal(a: Inputs):
    return _compare(a, np.less_equal)


@evaluates("Greater")
def greater(a: Inputs):
    return _compare(a, np.greater)


@evaluates("GreaterOrEqual")
def greater_or_equal(a: Inputs):
    return _compare(a, np.greater_equal)


@evaluates("Where")
def where(a: Inputs):
    values = a.values()
    if values is None or len(values) != 3 or values[0].dtype.kind != "b" or values[1].dtype != values[2].dtype:
        return None

    def pick(c, x, y):
        if isinstance(c, np.ndarray) or isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            return _py(np.where(c, _np(x, values[1].dtype), _np(y, values[1].dtype)))
        return x if c else y  # the entry itself: a Dim keeps where it came from

    return _map(values, pick, values[1].dtype)


# -- element types -----------------------------------------------------------------------

_CASTABLE = "biuf"


def _target(to) -> np.dtype | None:
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(to)))
    except (KeyError, TypeError, ValueError):
        return None
    if dtype.kind not in _CASTABLE or int(to) in (onnx.TensorProto.BFLOAT16,):
        return None  # bfloat16, float8, int4, strings: not modelled
    return dtype


def _cast_entry(x, src: np.dtype, dst: np.dtype):
    v = _np(x, src)
    if src.kind == "f" and dst.kind in INTS:
        info = np.iinfo(dst)
        t = np.trunc(v.astype(np.float64))
        if not np.all(np.isfinite(t)) or np.any(t < float(info.min)) or np.any(t >= float(info.max) + 1):
            return None  # undefined for the operator: unknown
    out = _py(v.astype(dst))
    if isinstance(x, Dim) and dst.kind in "iuf" and out == int(x):
        return x  # the same count in another type: still the count (the dtype sets the arithmetic)
    return out


@evaluates("Cast")
def cast(a: Inputs):
    x, dst = a.value(0), _target(a.attr("to"))
    if x is None or dst is None:
        return None
    return _map([x], lambda e: _cast_entry(e, x.dtype, dst), dst)
