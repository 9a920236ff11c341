"""The folder's evaluators for ops that make, move or pick entries: Shape,
Size, ConstantOfShape, Identity, Squeeze, Unsqueeze, Reshape, Flatten,
Transpose, Gather, Concat, Slice.

One function per op (or per opset range of an op), registered with
``@evaluates`` like the rules and called by ``fold.Folder`` with the node's
``Inputs``. Each matches the operator's definition for every attribute it
accepts and returns None for anything else (``tests/ops/test_fold_reference.py``
holds each to onnx's reference evaluator). Entries move as they are, so a
``Dim`` keeps where it came from.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxprune.ops.fold import (
    INTS,
    MAX_ELEMENTS,
    Inputs,
    Value,
    all_ints,
    entries_of,
    same_dtype,
)
from onnxprune.ops.registry import evaluates


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


def _axes(a: Inputs) -> tuple[bool, list | None]:
    """Squeeze/Unsqueeze axes, an attribute up to opset 12 and an input
    since 13: (whether they are given, their values or None when unknown)."""
    if a.version is not None and a.version <= 12:
        axes = a.attr("axes")
        return axes is not None, None if axes is None else [int(x) for x in axes]
    if not a.given(1):
        return False, None
    v = all_ints(a.value(1))
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
    x, (_, axes) = a.value(0), _axes(a)
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
    x, idx = a.value(0), all_ints(a.value(1))
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
    dtype = same_dtype(values)
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
    bounds = [all_ints(a.value(k)).reshape(-1).tolist() if a.given(k) and all_ints(a.value(k)) is not None
              else (None if a.given(k) else "absent") for k in (1, 2, 3, 4)]
    if x is None or any(b is None for b in bounds) or "absent" in bounds[:2]:
        return None
    starts, ends, axes, steps = (None if b == "absent" else b for b in bounds)
    return _slice(x, starts, ends, axes, steps)


# -- arithmetic ------------------------------------------------------------------------
