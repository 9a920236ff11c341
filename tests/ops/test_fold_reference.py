"""The shape-arithmetic folder against onnx's reference evaluator.

Random graphs of shape arithmetic over a graph input of static shape: every
op the folder has an evaluator for, with its attributes, over int8..uint64,
float16/32/64 and bool, broadcasting, negative values, wrap-around and 3+
inputs for the variadic ops. Every node reads at least one value computed
from ``Shape(x)``, so the folder (not the graph index's constant folding)
evaluates it. What the folder knows must equal what the reference computes,
entry by entry, in the same element type; what it does not model it must
leave unknown. The seeded run also checks that every evaluator knows a
value in most of its cases, so an evaluator that always says "unknown"
fails.
"""
from __future__ import annotations

import random

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from onnxprune.core.graph import GraphView
from onnxprune.ops import registry
from onnxprune.ops.fold import partial_value, typed_value

NUMERIC = [TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16, TensorProto.INT32,
           TensorProto.UINT32, TensorProto.INT64, TensorProto.UINT64, TensorProto.FLOAT16, TensorProto.FLOAT,
           TensorProto.DOUBLE]
CAST_TARGETS = NUMERIC + [TensorProto.BOOL, TensorProto.BFLOAT16]
OPSETS = [9, 11, 13, 15, 18, 21]


class RandomDraw:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def pick(self, seq):
        return seq[self.rng.randrange(len(seq))]


class HypothesisDraw:
    def __init__(self, data) -> None:
        self.data = data

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def pick(self, seq):
        return self.data.draw(st.sampled_from(list(seq)))


def np_dtype(elem: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem))


def elem_of(dtype: np.dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


class Builder:
    """A graph grown one node at a time; each node is run alone in the
    reference evaluator (and typed by strict shape inference) before it is
    kept, so the graph stays valid and every tensor's true value is known."""

    def __init__(self, draw, opset: int) -> None:
        self.draw, self.opset = draw, opset
        rank = draw.int(1, 4)
        self.x_shape = [draw.int(1, 7) for _ in range(rank)]
        self.nodes: list = []
        self.inits: list = []
        self.values: dict[str, np.ndarray] = {"x": np.zeros(self.x_shape, np.float32)}  # tensor -> true value
        self.dynamic: list[str] = []  # tensors computed from Shape(x): the folder's to evaluate
        self.ops: dict[str, str] = {}  # tensor -> op that made it
        self.n = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    # -- constants ---------------------------------------------------------------
    def const(self, array) -> str:
        array = np.asarray(array)
        name = self.name("c")
        self.inits.append(onnx.numpy_helper.from_array(array, name))
        self.values[name] = array
        return name

    def numbers(self, dtype: np.dtype, shape) -> np.ndarray:
        d = self.draw
        n = int(np.prod(shape, dtype=np.int64))
        if dtype.kind == "b":
            return np.array([bool(d.int(0, 1)) for _ in range(n)], dtype=bool).reshape(shape)
        if dtype.kind == "f":
            vals = [d.pick([-2.5, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.5, 7.0]) for _ in range(n)]
        else:
            info = np.iinfo(dtype)
            edge = [int(info.max), int(info.min), int(info.max) // 2 + 1]
            vals = [d.pick([d.int(max(-9, int(info.min)), 9)] * 6 + edge) for _ in range(n)]
        return np.array(vals, dtype=dtype).reshape(shape)

    # -- nodes -------------------------------------------------------------------
    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> str | None:
        """Run the node alone on the true values of its inputs; keep it when
        it is valid and small. -> its first output, or None."""
        outs = [self.name("t") for _ in range(n_out)]
        node = helper.make_node(op, inputs, outs, **attrs)
        feeds = {i: self.values[i] for i in inputs if i}
        graph = helper.make_graph(
            [node], "one",
            [helper.make_tensor_value_info(i, elem_of(v.dtype), v.shape) for i, v in feeds.items()],
            [helper.make_empty_tensor_value_info(o) for o in outs])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        try:
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
            with np.errstate(all="ignore"):
                results = ReferenceEvaluator(model).run(None, feeds)
        except Exception:  # noqa: BLE001 - not a valid node for these inputs: not kept
            return None
        if any(np.asarray(r).size > 64 for r in results):
            return None
        results = _as_onnxruntime_computes(model, feeds, results)
        self.nodes.append(node)
        for o, r in zip(outs, results):
            self.values[o] = np.asarray(r)
            self.dynamic.append(o)
            self.ops[o] = op
        return outs[0]

    def shape_of_x(self) -> str | None:
        r = len(self.x_shape)
        attrs = {}
        if self.opset >= 15 and self.draw.int(0, 1):
            # within [-r, r]: below -r the reference evaluator slices as Python does, not as
            # the operator clamps (test_shape_bounds_below_minus_rank_clamp covers that)
            attrs = {"start": self.draw.int(-r, r + 1), "end": self.draw.int(-r, r + 1)}
        return self.node("Shape", ["x"], **attrs)

    def operand(self, kinds: str = "biuf") -> str | None:
        """A dynamic tensor whose element kind is in ``kinds`` (made by a Cast if needed)."""
        ready = [t for t in self.dynamic if self.values[t].dtype.kind in kinds]
        if ready and self.draw.int(0, 3):
            return self.draw.pick(ready)
        base = self.draw.pick(self.dynamic) if self.dynamic and self.draw.int(0, 1) else self.shape_of_x()
        if base is None:
            return None
        targets = [t for t in CAST_TARGETS if np_dtype(t).kind in kinds and t != TensorProto.BFLOAT16]
        return self.node("Cast", [base], to=self.draw.pick(targets))

    def matrix(self) -> str | None:
        """A dynamic 2-D tensor: ``Shape(x)`` as a column beside a constant or itself."""
        s = self.shape_of_x()
        if s is None or self.values[s].ndim != 1 or not self.values[s].size:
            return None
        col = self.node("Unsqueeze", [s, self.ints([1])]) if self.opset >= 13 else \
            self.node("Unsqueeze", [s], axes=[1])
        if col is None:
            return None
        other = col if self.draw.int(0, 1) else self.const(self.numbers(np.dtype(np.int64), self.values[col].shape))
        return self.node("Concat", [col, other] if self.draw.int(0, 1) else [other, col], axis=1)

    def array_operand(self) -> str | None:
        """A dynamic tensor of rank 1 or more (2-D half the time)."""
        return self.matrix() if self.draw.int(0, 1) else self.operand()

    def partner(self, a: str, kinds: str = "biuf") -> str:
        """A second operand of a's element type: dynamic, or a constant of a
        shape that broadcasts with a's."""
        v = self.values[a]
        same = [t for t in self.dynamic if self.values[t].dtype == v.dtype]
        if same and self.draw.int(0, 2) == 0:
            return self.draw.pick(same)
        shape = [d if self.draw.int(0, 2) else 1 for d in v.shape]
        shape = shape[self.draw.int(0, len(shape)):] if shape else shape
        return self.const(self.numbers(v.dtype, shape))

    def ints(self, values, dtype=np.int64) -> str:
        return self.const(np.array(values, dtype=dtype))


DEVIATIONS: dict = {}  # op -> how often the reference evaluator and onnxruntime disagreed
# Ops where the reference evaluator departs from the operator's definition and
# onnxruntime follows it (elsewhere the reference decides: older onnxruntime
# releases compute an int64 fmod through doubles, for one).
RUNTIME_DECIDES = {"Slice", "Shape", "Unsqueeze"}


def _as_onnxruntime_computes(model, feeds, results):
    """The reference evaluator's values, except where onnxruntime (which
    follows the operator's definition there) computes otherwise: the
    reference slices as Python does, so a negative step with a start before
    the first entry gives nothing, where the operator clamps the start to 0
    (and ``Shape``'s bounds below -rank likewise)."""
    if model.graph.node[0].op_type not in RUNTIME_DECIDES:
        return results
    options = ort.SessionOptions()
    options.log_severity_level = 4  # its refusals (integer division by zero...) are expected here
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        got = session.run(None, feeds)
    except Exception:  # noqa: BLE001 - a type or op onnxruntime does not implement: the reference decides
        return results
    out = []
    for r, g in zip(results, got):
        r, g = np.asarray(r), np.asarray(g)
        same = r.shape == g.shape and r.dtype == g.dtype and np.array_equal(r, g, equal_nan=r.dtype.kind == "f")
        if not same:
            op = model.graph.node[0].op_type
            DEVIATIONS[op] = DEVIATIONS.get(op, 0) + 1
        out.append(r if same else g)
    return out


def _binary(kinds):
    def make(b: Builder, op: str):
        a = b.operand(kinds)
        if a is None:
            return None
        others = [b.partner(a) for _ in range(b.draw.int(1, 3) if op in ("Max", "Min") else 1)]
        order = [a] + others
        if b.draw.int(0, 1):
            order.reverse()
        attrs = {"fmod": b.draw.int(0, 1)} if op == "Mod" else {}
        return b.node(op, order, **attrs)
    return make


def _unary(kinds):
    def make(b: Builder, op: str):
        a = b.operand(kinds)
        return None if a is None else b.node(op, [a])
    return make


def _cast(b: Builder, op: str):
    a = b.operand()
    return None if a is None else b.node("Cast", [a], to=b.draw.pick(CAST_TARGETS))


def _where(b: Builder, op: str):
    c = b.operand("b")
    x = b.operand()
    if c is None or x is None:
        return None
    return b.node("Where", [c, x, b.partner(x)])


def _shape(b: Builder, op: str):
    if b.draw.int(0, 1):
        return b.shape_of_x()
    a = b.operand()
    if a is None:
        return None
    r = b.values[a].ndim
    attrs = {"start": b.draw.int(-r, r), "end": b.draw.int(-r, r)} if b.opset >= 15 and b.draw.int(0, 1) else {}
    return b.node("Shape", [a], **attrs)


def _size(b: Builder, op: str):
    a = b.draw.pick(["x"] + b.dynamic)
    return b.node("Size", [a])


def _gather(b: Builder, op: str):
    a = b.array_operand()
    if a is None or b.values[a].ndim == 0:
        return None
    v = b.values[a]
    axis = b.draw.int(-v.ndim, v.ndim - 1)
    n = v.shape[axis]
    shape = b.draw.pick([(), (1,), (2,), (2, 2)])
    idx = np.array([b.draw.int(-n, n - 1) if n else 0 for _ in range(int(np.prod(shape, dtype=np.int64)))])
    return b.node("Gather", [a, b.ints(idx.reshape(shape), b.draw.pick([np.int32, np.int64]))], axis=axis)


def _concat(b: Builder, op: str):
    a = b.array_operand()
    if a is None or b.values[a].ndim == 0:
        return None
    v = b.values[a]
    axis = b.draw.int(-v.ndim, v.ndim - 1)
    parts = [a]
    for _ in range(b.draw.int(0, 3)):
        same = [t for t in b.dynamic if b.values[t].dtype == v.dtype and b.values[t].ndim == v.ndim and all(
            s == w for k, (s, w) in enumerate(zip(b.values[t].shape, v.shape)) if k != axis % v.ndim)]
        if same and b.draw.int(0, 1):
            parts.append(b.draw.pick(same))
        else:
            shape = list(v.shape)
            shape[axis] = b.draw.int(0, 3)
            parts.append(b.const(b.numbers(v.dtype, shape)))
    return b.node("Concat", parts, axis=axis)


def _bound(b: Builder, n: int) -> int:
    return b.draw.pick([b.draw.int(-n - 2, n + 2)] * 4 + [2**63 - 1, -(2**63)])


def _slice(b: Builder, op: str):
    a = b.array_operand()
    if a is None or b.values[a].ndim == 0:
        return None
    v = b.values[a]
    k = b.draw.int(1, v.ndim)
    axes = [b.draw.pick(range(-v.ndim, v.ndim)) for _ in range(k)]
    starts = [_bound(b, v.shape[ax]) for ax in axes]
    ends = [_bound(b, v.shape[ax]) for ax in axes]
    if b.opset < 10:
        attrs = {"starts": starts, "ends": ends}
        if b.draw.int(0, 1):
            attrs["axes"] = [ax % v.ndim for ax in axes]
        return b.node("Slice", [a], **attrs)
    steps = [b.draw.pick([1, 1, 2, -1, -2, 3]) for _ in axes]
    dt = b.draw.pick([np.int32, np.int64])
    clip = (lambda x: int(np.clip(x, -(2**31), 2**31 - 1))) if dt is np.int32 else int
    inputs = [a, b.ints([clip(s) for s in starts], dt), b.ints([clip(e) for e in ends], dt)]
    if b.draw.int(0, 2):
        inputs.append(b.ints(axes, dt))
        if b.draw.int(0, 1):
            inputs.append(b.ints(steps, dt))
    elif b.draw.int(0, 1) and k == v.ndim:
        inputs += ["", b.ints(steps, dt)]
    return b.node("Slice", inputs)


def _axes_args(b: Builder, a: str, axes: list) -> tuple[list, dict]:
    if b.opset >= 13:
        return [a, b.ints(axes)], {}
    return [a], {"axes": axes}


def _squeeze(b: Builder, op: str):
    a = b.array_operand()
    if a is None:
        return None
    v = b.values[a]
    ones = [k for k, d in enumerate(v.shape) if d == 1]
    if not ones or b.draw.int(0, 3) == 0:
        return b.node("Squeeze", [a])
    axes = [k - v.ndim if b.draw.int(0, 1) else k for k in ones[:b.draw.int(1, len(ones))]]
    inputs, attrs = _axes_args(b, a, axes)
    return b.node("Squeeze", inputs, **attrs)


def _unsqueeze(b: Builder, op: str):
    a = b.operand()
    if a is None:
        return None
    r = b.values[a].ndim + b.draw.int(1, 2)
    axes = sorted({b.draw.int(-r, r - 1) % r for _ in range(r - b.values[a].ndim)})
    if len(axes) != r - b.values[a].ndim:
        return None
    axes = [ax - r if b.draw.int(0, 1) else ax for ax in axes]
    inputs, attrs = _axes_args(b, a, axes)
    return b.node("Unsqueeze", inputs, **attrs)


def _reshape(b: Builder, op: str):
    a = b.operand()
    if a is None:
        return None
    v = b.values[a]
    n = v.size
    divisors = [d for d in range(1, n + 1) if n % d == 0] or [1]
    first = b.draw.pick(divisors)
    target = b.draw.pick([[n], [first, -1], [-1, first], [0, -1] if v.ndim else [n], [first, n // first, 1],
                          [-1], [0] * v.ndim])
    attrs = {"allowzero": b.draw.int(0, 1)} if b.opset >= 14 and b.draw.int(0, 2) == 0 else {}
    dynamic_target = b.draw.int(0, 3) == 0
    if dynamic_target:  # the target itself computed (from Shape(x)), as exporters do
        s = b.shape_of_x()
        return None if s is None else b.node("Reshape", [a, s], **attrs)
    return b.node("Reshape", [a, b.ints(target)], **attrs)


def _flatten(b: Builder, op: str):
    a = b.array_operand()
    if a is None:
        return None
    r = b.values[a].ndim
    return b.node("Flatten", [a], axis=b.draw.int(-r, r))


def _transpose(b: Builder, op: str):
    a = b.array_operand()
    if a is None or b.values[a].ndim == 0:
        return None
    perm = list(range(b.values[a].ndim))
    for k in range(len(perm) - 1, 0, -1):
        j = b.draw.int(0, k)
        perm[k], perm[j] = perm[j], perm[k]
    return b.node("Transpose", [a], **({"perm": perm} if b.draw.int(0, 3) else {}))


def _reduce(b: Builder, op: str):
    a = b.array_operand()
    if a is None:
        return None
    v = b.values[a]
    r = v.ndim
    axes = sorted({b.draw.int(-r, r - 1) for _ in range(b.draw.int(0, r))}) if r else []
    attrs = {"keepdims": b.draw.int(0, 1)} if b.draw.int(0, 1) else {}
    if b.opset >= (13 if op == "ReduceSum" else 18):
        if b.draw.int(0, 3) == 0:
            attrs["noop_with_empty_axes"] = b.draw.int(0, 1)
        return b.node(op, [a, b.ints(axes)] if axes or b.draw.int(0, 1) else [a], **attrs)
    return b.node(op, [a], **({"axes": axes} if axes else {}), **attrs)


def _constant_of_shape(b: Builder, op: str):
    s = b.shape_of_x()
    if s is None:
        return None
    if b.draw.int(0, 1) and b.values[s].size:
        s = b.node("Slice", [s, b.ints([0]), b.ints([b.draw.int(0, 2)])]) if b.opset >= 10 else s
        if s is None:
            return None
    if b.draw.int(0, 2) == 0:
        return b.node("ConstantOfShape", [s])
    elem = b.draw.pick(NUMERIC + [TensorProto.BOOL])
    fill = b.numbers(np_dtype(elem), (1,))
    return b.node("ConstantOfShape", [s], value=onnx.numpy_helper.from_array(fill))


MAKERS = {
    "Add": _binary("iuf"), "Sub": _binary("iuf"), "Mul": _binary("iuf"), "Div": _binary("iuf"),
    "Mod": _binary("iuf"), "Max": _binary("iuf"), "Min": _binary("iuf"),
    "Equal": _binary("biuf"), "Less": _binary("iuf"), "LessOrEqual": _binary("iuf"),
    "Greater": _binary("iuf"), "GreaterOrEqual": _binary("iuf"),
    "Neg": _unary("if"), "Floor": _unary("f"), "Ceil": _unary("f"), "Identity": _unary("biuf"),
    "Cast": _cast, "Where": _where, "Shape": _shape, "Size": _size, "Gather": _gather, "Concat": _concat,
    "Slice": _slice, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Reshape": _reshape, "Flatten": _flatten,
    "Transpose": _transpose, "ConstantOfShape": _constant_of_shape,
    "ReduceProd": _reduce, "ReduceSum": _reduce, "ReduceMax": _reduce, "ReduceMin": _reduce,
}


def folded_ops() -> list[str]:
    return sorted({e.op for e in registry.evaluator_entries() if e.domain == ""})


def build(draw, steps: int) -> Builder:
    b = Builder(draw, draw.pick(OPSETS))
    available = [op for op in folded_ops() if _defined(op, b.opset)]
    for _ in range(steps):
        op = draw.pick(available)
        MAKERS[op](b, op)
    return b


def _defined(op: str, opset: int) -> bool:
    try:
        onnx.defs.get_schema(op, opset)
    except onnx.defs.SchemaError:
        return False
    return True


def model_of(b: Builder) -> onnx.ModelProto:
    graph = helper.make_graph(
        b.nodes, "arith", [helper.make_tensor_value_info("x", TensorProto.FLOAT, b.x_shape)],
        [helper.make_empty_tensor_value_info(t) for t in b.dynamic], initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", b.opset)])
    model.ir_version = 8
    return model


def compare(b: Builder) -> dict:
    """Check every tensor the folder knows; -> op -> [cases, fully known]."""
    model = model_of(b)
    view = GraphView(model, {"x": tuple(b.x_shape)})
    seen: dict = {}
    for t in b.dynamic:
        truth, value = b.values[t], typed_value(view, t)
        count = seen.setdefault(b.ops[t], [0, 0])
        count[0] += 1
        if value is None:
            continue
        where = f"{t} = {b.ops[t]} in\n{onnx.printer.to_text(model.graph)}"
        assert value.dtype == truth.dtype, where
        assert value.entries.shape == truth.shape, where
        known = 0
        for got, want in zip(value.entries.reshape(-1), truth.reshape(-1)):
            if got is None:
                continue
            assert not isinstance(got, np.ndarray), where
            got = np.asarray(got, dtype=truth.dtype)
            assert got == want or (truth.dtype.kind == "f" and np.isnan(want) and np.isnan(got)), \
                f"{got} != {want}: {where}"
            known += 1
        count[1] += known == truth.size
    return seen


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_folder_matches_the_reference_evaluator(data):
    compare(build(HypothesisDraw(data), data.draw(st.integers(1, 8))))


def test_every_evaluator_knows_most_of_its_cases():
    """A seeded run: each evaluator is exercised, and knows the value in at
    least half of its cases (the rest: undefined results and types it does
    not model), so an evaluator that answers "unknown" to everything fails."""
    totals: dict = {}
    for seed in range(400):
        for op, (cases, known) in compare(build(RandomDraw(seed), 6)).items():
            t = totals.setdefault(op, [0, 0])
            t[0] += cases
            t[1] += known
    assert set(folded_ops()) <= set(totals), f"never generated: {set(folded_ops()) - set(totals)}"
    weak = {op: t for op, t in totals.items() if t[1] < 0.5 * t[0]}
    assert not weak, f"evaluators that rarely know their value: {weak}"


def test_every_evaluator_has_a_generator():
    assert set(folded_ops()) <= set(MAKERS)


# -- the three values the folder once got wrong ---------------------------------------

def _fold_one(nodes, inits, x_shape, opset=13):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_empty_tensor_value_info(nodes[-1].output[0])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    view = GraphView(model, {"x": tuple(x_shape)})
    value = partial_value(view, nodes[-1].output[0])
    truth = ReferenceEvaluator(model).run(None, {"x": np.zeros(x_shape, np.float32)})[0]
    return value, truth


def _i64(name, values):
    return onnx.numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def test_max_of_three_inputs_reads_all_three():
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Slice", ["s", "b", "e"], ["hw"]),
             helper.make_node("Max", ["hw", "ones", "big"], ["y"])]
    value, truth = _fold_one(nodes, [_i64("b", [2]), _i64("e", [4]), _i64("ones", [1, 1]), _i64("big", [7, 9])],
                             [1, 1, 2, 3])
    assert list(value) == [7, 9] == truth.tolist()


@pytest.mark.parametrize("fmod", [0, 1])
def test_mod_follows_fmod(fmod):
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Neg", ["s"], ["n"]),
             helper.make_node("Mod", ["n", "d"], ["y"], fmod=fmod)]
    value, truth = _fold_one(nodes, [_i64("d", [3, 3])], [2, 1])
    assert list(value) == truth.tolist() == ([1, 2] if fmod == 0 else [-2, -1])


def test_a_dim_cast_to_float_divides_as_float():
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Cast", ["s"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Div", ["f", "two"], ["q"]),
             helper.make_node("Ceil", ["q"], ["c"]),
             helper.make_node("Cast", ["c"], ["y"], to=TensorProto.INT64)]
    value, truth = _fold_one(nodes, [onnx.numpy_helper.from_array(np.array([2.0], np.float32), "two")], [7])
    assert list(value) == truth.tolist() == [4]


def test_shape_bounds_below_minus_rank_clamp():
    """``Shape(start=0, end=-5)`` of a rank-4 tensor is empty (end clamps to
    0), as onnxruntime computes it."""
    import onnxruntime as ort

    nodes = [helper.make_node("Shape", ["x"], ["y"], start=0, end=-5)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    truth = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.zeros([1, 2, 3, 4], np.float32)})[0]
    assert truth.size == 0
    assert partial_value(GraphView(model, {"x": (1, 2, 3, 4)}), "y").size == 0


def test_a_product_of_counts_by_reduce_prod_still_follows_them():
    """``ReduceProd(Shape(x)[1:3])`` (tf2onnx's flatten of two axes) is the
    product of both counts, as ``Mul`` of the two entries would be; a sum is not."""
    from onnxprune.ops.fold import Dim

    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "i"], ["hw"], axis=0),
             helper.make_node("ReduceProd", ["hw"], ["p"], keepdims=1),
             helper.make_node("ReduceSum", ["hw", "axes"], ["y"], keepdims=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 4])],
                              [helper.make_empty_tensor_value_info("p"), helper.make_empty_tensor_value_info("y")],
                              initializer=[_i64("i", [1, 2]), _i64("axes", [0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    view = GraphView(model, {"x": (1, 2, 3, 4)})
    (p,), y = partial_value(view, "p"), partial_value(view, "y")
    assert p == 6 and isinstance(p, Dim) and sorted(p.sources) == [("x", 1), ("x", 2)]
    assert y.shape == () and y.item() == 5 and not isinstance(y.item(), Dim)
