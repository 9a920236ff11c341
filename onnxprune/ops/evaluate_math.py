"""The folder's evaluators for arithmetic, comparisons, Where and Cast.

Each computes in the tensor's own element type (int32 wraps as int32 does,
float32 rounds as float32 does) and leaves unknown what the operator leaves
undefined or what it does not model: a zero integer divisor, Mod of floats
without fmod, a float cast out of an integer's range, bfloat16 and float8.
Arithmetic gives plain numbers, except a product of a ``Dim`` by a plain
integer (``heads * head_dim`` with head_dim stated) or by another ``Dim``
(``c * h`` read from one shape) and Max with 1 or less (a count is at least
1): those still follow the counts.
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
