"""Partial evaluation of small shape-arithmetic tensors.

Exporters often compute pads, reshape targets and slice bounds at run time:
``Shape -> Gather -> Unsqueeze -> Concat`` (TorchScript ``x.view(x.size(0), -1)``),
TF-style "same" padding from spatial sizes, detector heads. The entries a rule
needs are usually static even when the batch size is not. ``partial_value``
evaluates such tensors with numpy, leaving an entry ``None`` where it depends
on a symbolic dim, so a rule can accept the graph when the entries it cares
about are known, and freeze otherwise.
"""
from __future__ import annotations

import numpy as np

from .graph import GraphView, attr

MAX_ELEMENTS = 64


class Dim(int):
    """A shape entry read from a tensor's static dim by ``Shape``: an int that
    remembers where it came from, ``coef`` x the size of axis ``src[1]`` of
    tensor ``src[0]``. Gather, Slice, Concat, Unsqueeze, Cast... keep it; a
    Mul by a plain int scales ``coef``; any other arithmetic gives a plain
    int. A rule reading a run-time shape can then tell an entry that follows
    a channel count by itself (``x.view(-1, x.size(-1))``, grouped-query
    attention's ``kv_heads * n_rep``) from one that states it."""

    src: tuple
    coef: int

    def __new__(cls, value: int, src: tuple, coef: int = 1):
        obj = super().__new__(cls, int(value))
        obj.src, obj.coef = src, coef
        return obj

    def __reduce__(self):
        return Dim, (int(self), self.src, self.coef)


def follows(atoms, entry, src_layout, out_layout) -> bool:
    """Whether a ``Dim`` entry equals the size of ``out_layout`` under every
    pruning: ``coef`` x the units of ``src_layout`` per kept atom, atom by
    atom."""
    def mult(layout):
        out: dict = {}
        for seg in atoms.resolve(layout):
            out[seg.atom] = out.get(seg.atom, 0) + seg.outer * seg.inner
        return out

    src = {a: m * entry.coef for a, m in mult(src_layout).items()}
    return src == mult(out_layout)


def _arr(values) -> np.ndarray:
    values = list(values)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _binary(op: str, a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    try:
        a2, b2 = np.broadcast_arrays(a, b)
    except ValueError:
        return None
    out = np.empty(a2.shape, dtype=object)
    for idx in np.ndindex(a2.shape):
        x, y = a2[idx], b2[idx]
        if x is None or y is None:
            out[idx] = None
            continue
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            out[idx] = _vector(op, x, y)  # an entry at many sizes at once (``evaluate_with``)
            if out[idx] is None:
                return None
            continue
        if op == "Mul" and isinstance(x, Dim) != isinstance(y, Dim) and \
                isinstance(x if isinstance(y, Dim) else y, (int, np.integer)):
            d, k = (x, y) if isinstance(x, Dim) else (y, x)
            out[idx] = Dim(int(d) * int(k), d.src, d.coef * int(k))  # still follows the count
        elif op == "Add":
            out[idx] = x + y
        elif op == "Sub":
            out[idx] = x - y
        elif op == "Mul":
            out[idx] = x * y
        elif op == "Div":
            if y == 0:
                return None
            both_int = isinstance(x, (int, np.integer)) and isinstance(y, (int, np.integer))
            out[idx] = int(x / y) if both_int else x / y  # ONNX integer Div truncates
        elif op == "Max":
            out[idx] = max(x, y)
        elif op == "Min":
            out[idx] = min(x, y)
        elif op == "Mod":
            out[idx] = x % y if y else None
        else:
            return None
    return out


def _vector(op: str, x, y):
    """``_binary`` on an entry evaluated at many sizes (a numpy array)."""
    x, y = np.asarray(x), np.asarray(y)
    ints = x.dtype.kind in "iu" and y.dtype.kind in "iu"
    if op == "Add":
        return x + y
    if op == "Sub":
        return x - y
    if op == "Mul":
        return x * y
    if op == "Div":
        if np.any(y == 0):
            return None
        return np.sign(x) * np.sign(y) * (np.abs(x) // np.abs(y)) if ints else x / y  # ONNX truncates
    if op == "Max":
        return np.maximum(x, y)
    if op == "Min":
        return np.minimum(x, y)
    if op == "Mod":
        return None if np.any(y == 0) else np.mod(x, y)
    return None


def partial_value(view: GraphView, name: str, depth: int = 0) -> np.ndarray | None:
    """An object array of known ints/floats and None, or None when unknowable."""
    cache = view.__dict__.setdefault("_partial_cache", {})
    if name in cache:
        return cache[name]
    cache[name] = None  # cycles and depth guard
    value = None if depth > 64 else _evaluate(view, name, depth)
    if value is not None and value.size > MAX_ELEMENTS:
        value = None
    cache[name] = value
    return value


def evaluate_with(view: GraphView, name: str, dims) -> np.ndarray | None:
    """``partial_value`` of ``name`` with every entry ``Shape`` reads replaced
    by ``dims(tensor, axis, static)`` (an int, an int64 array of sizes, or
    None for unknown): the same shape arithmetic at other sizes, e.g. a slice
    bound at every channel count pruning could leave, in one pass (entries
    that depend on an array are arrays). Nothing is cached across calls."""
    saved = view.__dict__.get("_partial_cache"), view.__dict__.get("_dims_override")
    view.__dict__["_partial_cache"], view.__dict__["_dims_override"] = {}, dims
    try:
        return partial_value(view, name)
    finally:
        for key, value in zip(("_partial_cache", "_dims_override"), saved):
            if value is None:
                view.__dict__.pop(key, None)
            else:
                view.__dict__[key] = value


def _evaluate(view: GraphView, name: str, depth: int) -> np.ndarray | None:
    const = view.const(name)
    if const is not None:
        if const.size > MAX_ELEMENTS:
            return None
        return np.array(const.tolist(), dtype=object).reshape(const.shape)
    node = view.producer.get(name)
    if node is None:
        return None
    op = node.op_type

    def arg(k):
        if k >= len(node.input) or not node.input[k]:
            return None
        return partial_value(view, node.input[k], depth + 1)

    if op == "Shape":
        shape = view.shape(node.input[0])
        if shape is None:
            return None
        r = len(shape)
        start = int(attr(node, "start", 0))
        end = attr(node, "end")
        start = max(0, min(r, start + r if start < 0 else start))
        end = r if end is None else max(0, min(r, int(end) + r if int(end) < 0 else int(end)))
        x = node.input[0]
        override = view.__dict__.get("_dims_override")
        if override is not None:
            return _arr(override(x, start + k, d if isinstance(d, int) else None)
                        for k, d in enumerate(shape[start:end]))
        return _arr(Dim(d, (x, start + k)) if isinstance(d, int) else None
                    for k, d in enumerate(shape[start:end]))
    if op in ("Identity", "Cast", "Squeeze", "Unsqueeze", "Reshape", "Flatten"):
        x = arg(0)
        if x is None:
            return None
        out_shape = view.shape(node.output[0])
        if out_shape is not None and all(isinstance(d, int) for d in out_shape):
            if int(np.prod(out_shape)) == x.size:
                x = x.reshape(out_shape)
        if op == "Cast":
            x = _arr(v if v is None or isinstance(v, (Dim, np.ndarray)) else (int(v) if float(v).is_integer() else v)
                     for v in x.reshape(-1)).reshape(x.shape)
        return x
    if op == "Gather":
        data, idx = arg(0), view.const(node.input[1])
        if data is None or idx is None or data.ndim != 1 or int(attr(node, "axis", 0)) != 0:
            return None
        picked = data[np.asarray(idx, dtype=np.int64)]
        if isinstance(picked, np.ndarray) and picked.dtype == object:
            return picked
        out = np.empty((), dtype=object)
        out[()] = picked  # one entry (an array of sizes stays one entry)
        return out
    if op == "Concat":
        parts = [arg(k) for k in range(len(node.input))]
        if any(p is None for p in parts):
            return None
        return np.concatenate([p.reshape(-1) for p in parts]).astype(object)
    if op == "Slice" and view.opset >= 10:
        data = arg(0)
        consts = [view.const(node.input[k]) if len(node.input) > k and node.input[k] else None
                  for k in (1, 2, 3, 4)]
        if data is None or consts[0] is None or consts[1] is None:
            return None
        starts, ends = (np.asarray(c).reshape(-1).tolist() for c in consts[:2])
        axes = np.asarray(consts[2]).reshape(-1).tolist() if consts[2] is not None else list(range(len(starts)))
        steps = np.asarray(consts[3]).reshape(-1).tolist() if consts[3] is not None else [1] * len(starts)
        index = [slice(None)] * data.ndim
        for st, en, ax, step in zip(starts, ends, axes, steps):
            dim = data.shape[ax]
            if step > 0:
                index[ax] = slice(st, None if en >= dim else en, step)
            else:
                index[ax] = slice(st, None if en < -dim else en, step)
        return data[tuple(index)]
    if op == "Transpose":
        data = arg(0)
        if data is None:
            return None
        perm = attr(node, "perm")
        return np.transpose(data, perm) if perm else data.T
    if op in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Mod"):
        a, b = arg(0), arg(1)
        if a is None or b is None:
            return None
        return _binary(op, a, b)
    if op == "Equal":
        a, b = arg(0), arg(1)
        if a is None or b is None:
            return None
        try:
            a2, b2 = np.broadcast_arrays(a, b)
        except ValueError:
            return None
        if any(isinstance(v, np.ndarray) for v in list(a.reshape(-1)) + list(b.reshape(-1))):
            return None  # a comparison at many sizes: not followed
        return _arr(None if x is None or y is None else bool(x == y)
                    for x, y in zip(a2.reshape(-1), b2.reshape(-1))).reshape(a2.shape)
    if op == "Where":
        c, a, b = arg(0), arg(1), arg(2)
        if c is None or a is None or b is None:
            return None
        try:
            c2, a2, b2 = np.broadcast_arrays(c, a, b)
        except ValueError:
            return None
        return _arr(None if k is None else (x if k else y)
                    for k, x, y in zip(c2.reshape(-1), a2.reshape(-1), b2.reshape(-1))).reshape(c2.shape)
    if op == "Neg":
        a = arg(0)
        return None if a is None else _binary("Sub", _arr([0]) if a.ndim else np.array(0, dtype=object), a)
    if op in ("Floor", "Ceil"):
        a = arg(0)
        if a is None:
            return None
        f = np.floor if op == "Floor" else np.ceil
        return _arr(None if v is None else f(v) if isinstance(v, np.ndarray) else float(f(v))
                    for v in a.reshape(-1)).reshape(a.shape)
    if op == "ConstantOfShape":
        shape = arg(0)
        if shape is None or any(v is None for v in shape.reshape(-1)):
            return None
        from .tensors import to_array
        t = attr(node, "value")
        fill = to_array(t).reshape(-1)[0].item() if t is not None else 0.0
        n = int(np.prod([int(v) for v in shape.reshape(-1)]))
        return None if n > MAX_ELEMENTS else _arr([fill] * n).reshape([int(v) for v in shape.reshape(-1)])
    return None


def known_ints(values: np.ndarray | None) -> list | None:
    """Flatten to a list of ints (None for unknown entries)."""
    if values is None:
        return None
    out = []
    for v in values.reshape(-1):
        out.append(None if v is None else int(v))
    return out


def blind_reader(view: GraphView, reader, slot: int) -> bool:
    """A reader a new (positive) count cannot affect: Shape/Size (the
    vector's length), or a comparison with constants <= 0 (TorchScript's
    ``s == -1`` in expand)."""
    if reader.op_type in ("Shape", "Size"):
        return True
    if reader.op_type in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual") and \
            len(reader.input) == 2 and slot in (0, 1):
        other = partial_value(view, reader.input[1 - slot])
        return other is not None and other.size > 0 and all(v is not None and v <= 0 for v in other.reshape(-1))
    return False


def literal_source(view: GraphView, name: str, index: int, depth: int = 0, shared: set | None = None):
    """Where entry ``index`` of a shape vector built at run time is stated as a
    literal: ``(reader node index, input slot, flat index)`` of the constant
    that holds it, seen through Concat, Unsqueeze, Squeeze, Cast, Identity and
    Gather (TorchScript's ``Concat(Shape(x)[:2], [heads], [head_dim])``), or
    a dimension of a constant read only by a Shape (``_dim_source``). None when
    the entry is not a literal, or when a tensor on the way has another reader
    (rewriting it would change what that reader sees) -- unless ``shared`` is
    given and every reader is a Reshape or Expand target (the dynamo
    exporter's one shape vector for K and V): their node indices are added to
    ``shared``, and each of them must state the same count (the caller's
    ``Context.claim_literal``)."""
    node = view.producer.get(name)
    if node is None or depth > 32 or view.escapes(name):
        return None
    readers = [(r, slot) for r, slot in view.consumers.get(name, []) if not blind_reader(view, r, slot)]
    if len(readers) != 1:
        if shared is None or not readers or \
                any(r.op_type not in ("Reshape", "Expand") or slot != 1 for r, slot in readers):
            return None
        shared.update(view.index_of[id(r)] for r, _ in readers)
    at = view.index_of[id(node)]
    if node.op_type == "Concat" and int(attr(node, "axis", 0)) == 0:
        offset = 0
        for slot, part in enumerate(node.input):
            value = partial_value(view, part)
            if value is None:
                return None
            if index < offset + value.size:
                local = index - offset
                if view.const_root(part) is not None:
                    return at, slot, local
                return literal_source(view, part, local, depth + 1, shared)
            offset += value.size
        return None
    if node.op_type == "Where":  # TorchScript's expand: Where(s == -1, 1, s), decided per entry
        cond = partial_value(view, node.input[0])
        if cond is None:
            return None
        flat = cond.reshape(-1)
        pick = flat[0] if flat.size == 1 else flat[index] if index < flat.size else None
        if pick is None:
            return None
        part = node.input[1 if pick else 2]
        if view.const_root(part) is not None:
            return at, 1 if pick else 2, index
        return literal_source(view, part, index, depth + 1, shared)
    if node.op_type in ("Unsqueeze", "Squeeze", "Cast", "Identity", "Reshape", "Flatten"):
        part = node.input[0]
        if view.const_root(part) is not None:
            return at, 0, index
        return literal_source(view, part, index, depth + 1, shared)
    if node.op_type == "Gather" and int(attr(node, "axis", 0)) == 0:  # picks entries of a shape vector
        picks, vector = partial_value(view, node.input[1]), partial_value(view, node.input[0])
        if picks is None or vector is None or vector.ndim != 1 or index >= picks.size:
            return None
        pick = picks.reshape(-1)[index]
        if pick is None:
            return None
        if view.const_root(node.input[0]) is not None:
            return at, 0, int(pick) % vector.size
        return literal_source(view, node.input[0], int(pick) % vector.size, depth + 1, shared)
    if node.op_type == "Shape":
        return _dim_source(view, node, at, index)
    return None


def _dim_source(view: GraphView, node, at: int, index: int):
    """Entry ``index`` of ``Shape(C)`` where C is a stored constant that
    nothing else reads: tf2onnx keeps an einsum kernel in its original shape
    ``[1, 1, heads, head_dim, hidden]`` only to compute the reshape to heads
    from it (``Gather(Shape(C), [2, 3])``) while the Gemm reads a folded copy.
    The literal is then a dimension of C: ``(reader, 0, ("dim", axis))``,
    rewritten by cutting C along that axis (``Rewriter.rewrite_literals``)."""
    data = node.input[0]
    rank = view.rank(data)
    if view.const_root(data) != data or rank is None or view.escapes(data) or \
            [r for r, _ in view.consumers.get(data, [])] != [node]:
        return None
    start = int(attr(node, "start", 0))
    start = start + rank if start < 0 else start
    axis = min(max(start, 0), rank) + index
    return (at, 0, ("dim", axis)) if 0 <= index and axis < rank else None
