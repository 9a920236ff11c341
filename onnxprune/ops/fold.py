"""Partial evaluation of small shape-arithmetic tensors.

Exporters often compute pads, reshape targets and slice bounds at run time:
``Shape -> Gather -> Unsqueeze -> Concat`` (TorchScript ``x.view(x.size(0), -1)``),
TF-style "same" padding from spatial sizes, detector heads. The entries a rule
needs are usually static even when the batch size is not. ``partial_value``
evaluates such tensors entry by entry, leaving an entry ``None`` where it
depends on a symbolic dim, so a rule can accept the graph when the entries it
cares about are known, and freeze otherwise.

What each op computes lives in its evaluator (``evaluate_shapes.py``,
``evaluate_math.py``), registered per op and opset like the rules. An
evaluator computes in the tensor's own element type (int32 wraps as int32
does, float32 rounds as float32 does), so a known entry is the value
onnxruntime would compute, and returns None for whatever it does not model
(an attribute, a type, an undefined case): the folder never guesses.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from onnxprune.core.graph import GraphView, attr
from onnxprune.ops.registry import domain_of, evaluator, node_attr

MAX_ELEMENTS = 64
MAX_DEPTH = 64


class Dim(int):
    """A shape entry read from a tensor's static dim by ``Shape``: an int that
    remembers where it came from, the size of axis ``src[1]`` of tensor
    ``src[0]``, times the sizes of the axes in ``factors`` (more ``(tensor,
    axis)`` pairs) and any plain ints it was multiplied by. Gather, Slice,
    Concat, Unsqueeze, an integer Cast... keep it; a Mul by a plain int
    keeps it (its value says by how much), a Mul by another ``Dim`` adds
    that one's axes to ``factors``; any other arithmetic gives a plain int.
    A rule reading a run-time shape can then tell an entry that follows a
    channel count by itself (``x.view(-1, x.size(-1))``, grouped-query
    attention's ``kv_heads * n_rep``, a CRNN's ``x.view(b, w, c * h)``)
    from one that states it."""

    src: tuple
    factors: tuple

    def __new__(cls, value: int, src: tuple, factors: tuple = ()):
        obj = super().__new__(cls, int(value))
        obj.src, obj.factors = src, tuple(factors)
        return obj

    @property
    def sources(self) -> tuple:
        """Every ``(tensor, axis)`` whose size is a factor of this entry."""
        return (self.src, *self.factors)

    def __reduce__(self):
        return Dim, (int(self), self.src, self.factors)


def follows(atoms, coef: int, src_layout, out_layout) -> bool:
    """Whether ``coef`` x the size of ``src_layout`` equals the size of
    ``out_layout`` under every pruning: ``coef`` x the units of
    ``src_layout`` per kept atom, atom by atom."""
    def mult(layout):
        out: dict = {}
        for seg in atoms.resolve(layout):
            out[seg.atom] = out.get(seg.atom, 0) + seg.outer * seg.inner
        return out

    src = {a: m * coef for a, m in mult(src_layout).items()}
    return src == mult(out_layout)


@dataclass(frozen=True)
class Value:
    """A folded tensor: ``entries`` is an object array of its shape holding,
    per entry, a Python number (an int, maybe a ``Dim``; a float; a bool),
    None where unknown, or an array of numbers (the entry at many sizes at
    once, ``evaluate_with``); ``dtype`` is the element type the model
    computes it in."""

    entries: np.ndarray
    dtype: np.dtype


def entries_of(values, shape=None) -> np.ndarray:
    """An object array of ``values`` (arrays among them stay single entries)."""
    values = list(values)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out if shape is None else out.reshape(shape)


NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float: what the evaluators compute in


def from_array(array: np.ndarray) -> Value | None:
    """A stored constant as a Value (None for strings and other types)."""
    array = np.asarray(array)
    if array.dtype.kind not in NUMERIC_KINDS or array.size > MAX_ELEMENTS:
        return None
    return Value(entries_of(array.reshape(-1).tolist(), array.shape), array.dtype)


class Inputs:
    """What an evaluator sees of its node: input values (folded on demand,
    so ``Shape`` never folds its data), attributes with the schema's
    defaults, the opset, and the static shapes the graph index knows."""

    def __init__(self, folder: Folder, node, depth: int) -> None:
        self.folder, self.node, self.depth = folder, node, depth
        self.version = folder.view.opsets.get(domain_of(node))

    def given(self, k: int) -> bool:
        return k < len(self.node.input) and bool(self.node.input[k])

    def value(self, k: int) -> Value | None:
        """Input ``k`` folded (None when absent or unknown)."""
        return self.folder.value(self.node.input[k], self.depth + 1) if self.given(k) else None

    def values(self) -> list | None:
        """Every input folded, or None when any is unknown."""
        out = [self.value(k) for k in range(len(self.node.input))]
        return None if any(v is None for v in out) else out

    def attr(self, name: str, default=None):
        return node_attr(self.node, name, self.version, default)

    def shape(self, k: int):
        """Input ``k``'s shape as the graph index knows it (ints and names)."""
        return self.folder.view.shape(self.node.input[k]) if self.given(k) else None

    def dim(self, k: int, axis: int, static):
        """Entry of ``Shape`` for axis ``axis`` of input ``k``: a ``Dim``,
        or what ``evaluate_with``'s ``dims`` says."""
        name = self.node.input[k]
        if self.folder.dims is not None:
            return self.folder.dims(name, axis, static if isinstance(static, int) else None)
        return Dim(static, (name, axis)) if isinstance(static, int) else None


class Folder:
    """Evaluates tensors of one graph and remembers what it found. One per
    graph index (``partial_value``), or a fresh one per ``evaluate_with``
    call, whose ``dims`` replaces what ``Shape`` reads."""

    def __init__(self, view: GraphView, dims=None) -> None:
        self.view, self.dims = view, dims
        self.cache: dict[str, Value | None] = {}

    def value(self, name: str, depth: int = 0) -> Value | None:
        if name in self.cache:
            return self.cache[name]
        self.cache[name] = None  # cycles and depth guard
        value = None if depth > MAX_DEPTH else self._evaluate(name, depth)
        if value is not None and value.entries.size > MAX_ELEMENTS:
            value = None
        self.cache[name] = value
        return value

    def _evaluate(self, name: str, depth: int) -> Value | None:
        const = self.view.const(name)
        if const is not None:
            return from_array(const)
        node = self.view.producer.get(name)
        if node is None:
            return None
        fn = evaluator(node.domain, node.op_type, self.view.opsets.get(domain_of(node)))
        if fn is None:
            return None
        try:
            with np.errstate(all="ignore"):  # integer wrap-around and inf as the model has them
                out = fn(Inputs(self, node, depth))
        except (ValueError, IndexError, OverflowError):
            return None  # an input the evaluator cannot take: unknown, never a guess
        if out is None:
            return None
        values = out if isinstance(out, (list, tuple)) else [out]
        k = list(node.output).index(name)
        return values[k] if k < len(values) else None


# -- what evaluators share (evaluate_shapes.py, evaluate_math.py) ----------------------
INTS = "iu"  # integer kinds


def as_numpy(entry, dtype: np.dtype):
    """An entry as numpy, in the value's element type."""
    if isinstance(entry, np.ndarray):
        return entry.astype(dtype)
    return np.asarray(entry, dtype=dtype)


def as_entry(result):
    """A numpy result as an entry: a Python number, or an array of them."""
    result = np.asarray(result)
    return result.item() if result.ndim == 0 else result


def same_dtype(values: list) -> np.dtype | None:
    dtypes = {v.dtype for v in values}
    return dtypes.pop() if len(dtypes) == 1 else None


def elementwise(values: list, fn, dtype: np.dtype) -> Value | None:
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


def arithmetic(a: Inputs, fn, kinds: str = "biuf") -> Value | None:
    """An elementwise op of operands of one element type, computed by
    ``fn(*numpy operands)`` (which may return None for an undefined entry)."""
    values = a.values()
    if values is None or not values:
        return None
    dtype = same_dtype(values)
    if dtype is None or dtype.kind not in kinds:
        return None

    def entry(*xs):
        r = fn(*(as_numpy(x, dtype) for x in xs))
        return None if r is None else as_entry(r)

    return elementwise(values, entry, dtype)


def all_ints(v: Value | None) -> np.ndarray | None:
    """All entries of an integer value as an int64 array (None if any is unknown)."""
    if v is None or v.dtype.kind not in INTS:
        return None
    flat = v.entries.reshape(-1)
    if any(e is None or isinstance(e, np.ndarray) for e in flat):
        return None
    return np.array([int(e) for e in flat], dtype=np.int64).reshape(v.entries.shape)


_FOLDERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _folder(view: GraphView) -> Folder:
    folder = _FOLDERS.get(view)
    if folder is None:
        folder = _FOLDERS[view] = Folder(view)
    return folder


def typed_value(view: GraphView, name: str) -> Value | None:
    """``name`` folded, with its element type."""
    return _folder(view).value(name)


def partial_value(view: GraphView, name: str) -> np.ndarray | None:
    """An object array of known ints/floats/bools and None, or None when unknowable."""
    value = _folder(view).value(name)
    return None if value is None else value.entries


def evaluate_with(view: GraphView, name: str, dims) -> np.ndarray | None:
    """``partial_value`` of ``name`` with every entry ``Shape`` reads replaced
    by ``dims(tensor, axis, static)`` (an int, an int64 array of sizes, or
    None for unknown): the same shape arithmetic at other sizes, e.g. a slice
    bound at every channel count pruning could leave, in one pass (entries
    that depend on an array are arrays). Nothing is cached across calls."""
    value = Folder(view, dims).value(name)
    return None if value is None else value.entries


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
