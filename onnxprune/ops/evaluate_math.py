"""The folder's evaluators for arithmetic, comparisons, Where and Cast.

Each computes in the tensor's own element type (int32 wraps as int32 does,
float32 rounds as float32 does) and leaves unknown what the operator leaves
undefined or what it does not model: a zero integer divisor, Mod of floats
without fmod, a float cast out of an integer's range, bfloat16 and float8.
Arithmetic gives plain numbers, except a product of a ``Dim`` by a plain
integer (``heads * head_dim`` with head_dim stated) or by another ``Dim``
(``c * h`` read from one shape), the same products by ReduceProd
(tf2onnx's ``ReduceProd(Shape(x)[1:3])``) and Max with 1 or less (a count is
at least 1): those still follow the counts.
"""
from __future__ import annotations

import functools

import numpy as np
import onnx

from onnxprune.ops.fold import (
    INTS,
    Dim,
    Inputs,
    Value,
    all_ints,
    arithmetic,
    as_entry,
    as_numpy,
    elementwise,
)
from onnxprune.ops.registry import evaluates


@evaluates("Add")
def add(a: Inputs):
    return arithmetic(a, np.add, "iuf")


@evaluates("Sub")
def sub(a: Inputs):
    return arithmetic(a, np.subtract, "iuf")


@evaluates("Mul")
def mul(a: Inputs):
    out = arithmetic(a, np.multiply, "iuf")
    if out is None or out.dtype.kind not in INTS:
        return out
    x, y = (v.entries for v in a.values())
    xs, ys = np.broadcast_arrays(x, y)
    for idx in np.ndindex(out.entries.shape):  # a Dim times a stated int or another Dim follows its counts
        p, q, got = xs[idx], ys[idx], out.entries[idx]
        if got is None or isinstance(got, np.ndarray) or not (isinstance(p, Dim) or isinstance(q, Dim)):
            continue
        d, k = (p, q) if isinstance(p, Dim) else (q, p)
        if isinstance(k, np.ndarray) or k is None or int(d) * int(k) != got:
            continue
        if isinstance(k, Dim):  # ``c * h`` of one tensor's shape: a flatten of both axes
            out.entries[idx] = Dim(got, d.src, d.factors + k.sources)
        else:
            out.entries[idx] = Dim(got, d.src, d.factors)
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
    return arithmetic(a, _divide, "iuf")


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

    return arithmetic(a, fn, "iuf")


def _extreme(a: Inputs, reduce, keeps_dim) -> Value | None:
    values = a.values()
    if not values:
        return None
    out = arithmetic(a, lambda *xs: reduce(xs), "iuf")
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
    return arithmetic(a, np.negative, "if")


@evaluates("Floor")
def floor(a: Inputs):
    return arithmetic(a, np.floor, "f")


@evaluates("Ceil")
def ceil(a: Inputs):
    return arithmetic(a, np.ceil, "f")


# -- reductions -------------------------------------------------------------------------

_REDUCE_AXES_INPUT = {"ReduceSum": 13}  # the opset where axes became an input (18 for the others)


def _reduced_axes(a: Inputs, op: str, rank: int):
    """The axes a Reduce op reduces: an attribute, or input 1 from the opset
    where it became one; none given means all of them, or none at all with
    ``noop_with_empty_axes`` ("noop"). None when unknown or out of range."""
    if a.version is not None and a.version >= _REDUCE_AXES_INPUT.get(op, 18):
        given = all_ints(a.value(1)) if a.given(1) else np.zeros(0, np.int64)
        if given is None:
            return None
        axes = given.reshape(-1).tolist()
        if not axes and int(a.attr("noop_with_empty_axes", 0) or 0):
            return "noop"
    else:
        axes = list(a.attr("axes") or [])
    axes = sorted({int(k) + rank if int(k) < 0 else int(k) for k in axes}) or list(range(rank))
    return None if any(not 0 <= k < rank for k in axes) else axes


def _reduction(op: str, fn, empty):
    """The evaluator of one Reduce op over small integer or float tensors:
    entries along the reduced axes combined in the element type; unknown
    where any of them is. A product of counts keeps them (``Dim``), as Mul's does."""
    def evaluate(a: Inputs) -> Value | None:
        x = a.value(0)
        if x is None or x.dtype.kind not in "iuf":
            return None
        rank = x.entries.ndim
        axes = _reduced_axes(a, op, rank)
        if axes is None or axes == "noop":
            return x if axes == "noop" else None
        keep = [k for k in range(rank) if k not in axes]
        moved = np.moveaxis(x.entries, axes, list(range(rank - len(axes), rank))) if rank else x.entries
        rows = moved.reshape([x.entries.shape[k] for k in keep] + [-1])
        out = np.empty(rows.shape[:-1], dtype=object)
        for idx in np.ndindex(out.shape):
            xs = list(rows[idx])
            if any(e is None for e in xs):
                out[idx] = None
            elif not xs:
                out[idx] = None if empty is None else as_entry(np.asarray(empty, dtype=x.dtype))
            else:
                acc = as_numpy(xs[0], x.dtype)
                for e in xs[1:]:
                    acc = fn(acc, as_numpy(e, x.dtype))
                out[idx] = _product_dim(op, xs, as_entry(acc), x.dtype)
        if int(a.attr("keepdims", 1)):
            out = out.reshape([1 if k in axes else d for k, d in enumerate(x.entries.shape)])
        return Value(out, x.dtype)
    evaluate.__name__ = evaluate.__qualname__ = f"reduce_{op}"
    return evaluate


def _product_dim(op: str, xs: list, got, dtype: np.dtype):
    """ReduceProd of counts and stated ints is a count (``Dim``) as Mul's is."""
    dims = [e for e in xs if isinstance(e, Dim)]
    if op != "ReduceProd" or dtype.kind not in INTS or not dims or isinstance(got, np.ndarray) or \
            any(isinstance(e, np.ndarray) for e in xs):
        return got
    exact = 1
    for e in xs:
        exact *= int(e)
    if exact != got:
        return got  # wrapped: no longer the product of the counts
    return Dim(got, dims[0].src, dims[0].factors + tuple(s for d in dims[1:] for s in d.sources))


REDUCTIONS = {"ReduceProd": (np.multiply, 1), "ReduceSum": (np.add, 0), "ReduceMax": (np.maximum, None),
              "ReduceMin": (np.minimum, None)}
for _op, (_fn, _empty) in REDUCTIONS.items():
    evaluates(_op)(_reduction(_op, _fn, _empty))


# -- comparisons and selection ---------------------------------------------------------

COMPARISONS = {"Equal": np.equal, "Less": np.less, "LessOrEqual": np.less_equal, "Greater": np.greater,
               "GreaterOrEqual": np.greater_equal}


def _comparison(op: str, fn):
    """The evaluator of one comparison: broadcasting operands of one type -> bools."""
    def evaluate(a: Inputs) -> Value | None:
        out = arithmetic(a, fn, "biuf")
        return None if out is None else Value(out.entries, np.dtype(bool))
    evaluate.__name__ = evaluate.__qualname__ = f"compare_{op}"
    return evaluate


for _op, _fn in COMPARISONS.items():  # one evaluator per op, registered like the others
    evaluates(_op)(_comparison(_op, _fn))


@evaluates("Where")
def where(a: Inputs):
    values = a.values()
    if values is None or len(values) != 3 or values[0].dtype.kind != "b" or values[1].dtype != values[2].dtype:
        return None

    def pick(c, x, y):
        if isinstance(c, np.ndarray) or isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            return as_entry(np.where(c, as_numpy(x, values[1].dtype), as_numpy(y, values[1].dtype)))
        return x if c else y  # the entry itself: a Dim keeps where it came from

    return elementwise(values, pick, values[1].dtype)


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
    v = as_numpy(x, src)
    if src.kind == "f" and dst.kind in INTS:
        info = np.iinfo(dst)
        t = np.trunc(v.astype(np.float64))
        if not np.all(np.isfinite(t)) or np.any(t < float(info.min)) or np.any(t >= float(info.max) + 1):
            return None  # undefined for the operator: unknown
    out = as_entry(v.astype(dst))
    if isinstance(x, Dim) and dst.kind in "iuf" and out == int(x):
        return x  # the same count in another type: still the count (the dtype sets the arithmetic)
    return out


@evaluates("Cast")
def cast(a: Inputs):
    x, dst = a.value(0), _target(a.attr("to"))
    if x is None or dst is None:
        return None
    return elementwise([x], lambda e: _cast_entry(e, x.dtype, dst), dst)
