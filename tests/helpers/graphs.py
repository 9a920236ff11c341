"""Small hand-built ONNX graphs for the op-rule tests (no torch).

    g = Graph(opset=17)
    a = g.conv("x", 3, 6, name="c1")
    b = g.add("Relu", [a])
    y = g.conv(b, 6, 4, name="c2")
    model = g.build({"x": [1, 3, 8, 8]}, [y])

Weights are random float32 from a seeded rng. ``build`` runs ONNX shape
inference only to type the graph outputs; the pruner infers shapes itself.
``exact`` is ``oracle.check_exact`` fed with inputs that match the declared
input shapes (symbolic dims -> 2).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.rewrite.engine import apply
from tests.helpers.oracle import check_exact

IR_VERSION = 8


class Graph:
    def __init__(self, opset: int = 17, seed: int = 0, extra_opsets: dict | None = None) -> None:
        self.opset = opset
        self.extra_opsets = dict(extra_opsets or {})
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._names: set[str] = set()
        self._count = 0

    # -- names and constants ---------------------------------------------------
    def fresh(self, hint: str) -> str:
        name = hint
        while name in self._names:
            self._count += 1
            name = f"{hint}_{self._count}"
        self._names.add(name)
        return name

    def init(self, name: str, value, dtype=None) -> str:
        """An initializer with the given value (float64 -> float32 unless ``dtype``)."""
        arr = np.asarray(value)
        if dtype is not None:
            arr = arr.astype(dtype)
        elif arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        name = self.fresh(name)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def ints(self, name: str, values) -> str:
        return self.init(name, np.asarray(values, dtype=np.int64))

    def rand(self, name: str, shape, low: float | None = None, high: float | None = None) -> str:
        """A random float32 initializer: standard normal, or uniform in [low, high)."""
        if low is None:
            value = self.rng.standard_normal(shape) * 0.5
        else:
            value = self.rng.uniform(low, high, size=shape)
        return self.init(name, np.asarray(value, dtype=np.float32))

    def constant(self, name: str, value) -> str:
        """A Constant node holding ``value`` (instead of an initializer)."""
        arr = np.asarray(value)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        out = self.fresh(name)
        self.nodes.append(helper.make_node("Constant", [], [out], name=self.fresh(f"{name}_const"),
                                           value=numpy_helper.from_array(arr, out)))
        return out

    # -- nodes -----------------------------------------------------------------
    def add(self, op: str, inputs, n_out: int = 1, name: str | None = None, domain: str = "",
            outputs=None, **attrs):
        """Append a node; returns its output name (or list of names when n_out > 1)."""
        name = self.fresh(name or op.lower())
        if outputs is None:
            outputs = [name if n_out == 1 else f"{name}_out{k}" for k in range(n_out)]
            for o in outputs:
                self._names.add(o)
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name,
                                           domain=domain, **attrs))
        return outputs[0] if len(outputs) == 1 else list(outputs)

    def conv(self, x: str, cin: int, cout: int, k: int = 3, group: int = 1, bias: bool = True,
             name: str | None = None, weight_as: str = "init", **attrs) -> str:
        """Conv with same padding; ``weight_as`` "init" or "constant" (Constant nodes)."""
        name = name or self.fresh("conv")
        wshape = (cout, cin // group, k, k)
        w = self.rng.standard_normal(wshape).astype(np.float32) * 0.3
        b = self.rng.standard_normal(cout).astype(np.float32) * 0.1
        make = self.init if weight_as == "init" else self.constant
        inputs = [x, make(f"{name}_W", w)]
        if bias:
            inputs.append(make(f"{name}_B", b))
        p = k // 2
        attrs.setdefault("pads", [p, p, p, p])
        if group != 1:
            attrs["group"] = group
        return self.add("Conv", inputs, name=name, **attrs)

    def gemm(self, x: str, k: int, n: int, trans_b: int = 0, bias_shape=None,
             name: str | None = None) -> str:
        name = name or self.fresh("gemm")
        w = self.rand(f"{name}_W", (n, k) if trans_b else (k, n))
        inputs = [x, w]
        if bias_shape is not None:
            inputs.append(self.rand(f"{name}_C", bias_shape))
        attrs = {"transB": trans_b} if trans_b else {}
        return self.add("Gemm", inputs, name=name, **attrs)

    def matmul(self, x: str, k: int, n: int, name: str | None = None) -> str:
        name = name or self.fresh("matmul")
        return self.add("MatMul", [x, self.rand(f"{name}_W", (k, n))], name=name)

    # -- model -----------------------------------------------------------------
    def build(self, inputs: dict, outputs, value_info: bool = False) -> onnx.ModelProto:
        """``inputs``: name -> shape (ints or symbolic strings), or name -> (shape, elem_type).
        ``outputs``: names (typed by shape inference) or name -> shape."""
        ins = []
        for name, spec in inputs.items():
            shape, elem = (spec if isinstance(spec, tuple) and len(spec) == 2
                           and isinstance(spec[1], int) and isinstance(spec[0], (list, tuple))
                           else (spec, TensorProto.FLOAT))
            ins.append(helper.make_tensor_value_info(name, elem, list(shape)))
        given = dict(outputs) if isinstance(outputs, dict) else {}
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, given.get(o))
                for o in outputs]
        graph = helper.make_graph(list(self.nodes), "g", ins, outs, list(self.inits))
        opsets = [helper.make_opsetid("", self.opset)]
        opsets += [helper.make_opsetid(d, v) for d, v in self.extra_opsets.items()]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="onnxprune-tests")
        model.ir_version = max(IR_VERSION, helper.find_min_ir_version_for(opsets[:1]))
        inferred = onnx.shape_inference.infer_shapes(model)
        known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
        for out in model.graph.output:
            vi = known.get(out.name)
            if out.name not in given and vi is not None and vi.type.tensor_type.elem_type:
                out.type.CopyFrom(vi.type)
        if value_info:
            model.graph.value_info.extend(
                vi for vi in inferred.graph.value_info if vi.name not in set(outputs))
        return model


# -- running -------------------------------------------------------------------
_NP = {TensorProto.FLOAT: np.float32, TensorProto.INT64: np.int64, TensorProto.DOUBLE: np.float64}


def feeds(model: onnx.ModelProto, seed: int = 0, symbolic: int = 2) -> dict:
    """Random inputs of exactly the declared shapes (symbolic dims -> ``symbolic``)."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = [d.dim_value if d.HasField("dim_value") else symbolic
                 for d in vi.type.tensor_type.shape.dim]
        dtype = _NP.get(vi.type.tensor_type.elem_type, np.float32)
        out[vi.name] = rng.standard_normal(shape).astype(dtype)
    return out


def exact(model: onnx.ModelProto, keep: dict | None = None, trials: int = 4, **kw):
    """``check_exact`` with inputs of the declared shapes; returns the Groups."""
    kw.setdefault("feeds", feeds(model))
    return check_exact(model, keep=keep, trials=trials, **kw)


# -- looking at groups -----------------------------------------------------------
def groups_at(groups, tensor: str, axis: int = 1) -> list:
    """The groups laid along one axis of a tensor, in axis order (a group may repeat)."""
    a = groups.analysis
    view = groups.view
    rank = view.rank(tensor)
    if rank is not None and axis < 0:
        axis += rank
    lay = a.layout(tensor, axis)
    if lay is None:
        return []
    by_atom = groups.by_atom()
    out = []
    for seg in a.atoms.resolve(lay):
        g = by_atom.get(seg.atom)
        out.append(g if g is not None else _bare_atom(groups, seg.atom))
    return out


def group_at(groups, tensor: str, axis: int = 1):
    """The one group along an axis of a tensor (asserts there is exactly one)."""
    found = groups_at(groups, tensor, axis)
    assert len(found) == 1, f"expected one group on ({tensor}, {axis}), found {found}"
    return found[0]


class _Atom:
    """A channel space with no weight slices (so no Group): still has a frozen list."""

    def __init__(self, groups, atom: int) -> None:
        atoms = groups.analysis.atoms
        self.atom = atom
        self.id = None
        self.channels = atoms.size[atom]
        self.frozen = list(atoms.frozen(atom))
        self.members: list[str] = []
        self.min_keep = atoms.min_keep.get(atom, 1)

    @property
    def prunable(self) -> bool:
        return not self.frozen

    def __repr__(self) -> str:
        return f"_Atom({self.atom}, channels={self.channels}, frozen={self.frozen})"


def _bare_atom(groups, atom: int):
    return _Atom(groups, atom)


def group_of(groups, node: str) -> list:
    """Groups that list ``node`` among their members."""
    return [g for g in groups.groups if node in g.members]


def frozen_text(group) -> str:
    return " | ".join(group.frozen)


def assert_frozen(group, *words: str) -> None:
    assert group.frozen, f"group {group} should be frozen"
    text = frozen_text(group)
    for w in words:
        assert w in text, f"reason {text!r} does not mention {w!r}"


def assert_prunable(group) -> None:
    assert not group.frozen, f"group should be prunable, frozen because: {frozen_text(group)}"


# -- looking at pruned models ------------------------------------------------------
def pruned(groups, keep: dict) -> onnx.ModelProto:
    return apply(groups, {g: np.asarray(v, dtype=np.int64) for g, v in keep.items()})


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def attr(model: onnx.ModelProto, node_name: str, attr_name: str, default=None):
    for a in node(model, node_name).attribute:
        if a.name == attr_name:
            return helper.get_attribute_value(a)
    return default


def value(model: onnx.ModelProto, tensor: str) -> np.ndarray:
    """The constant value of a tensor: initializer, Constant node, or behind Identity."""
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    for _ in range(100):
        if tensor in inits:
            return numpy_helper.to_array(inits[tensor])
        n = producers[tensor]
        if n.op_type == "Constant":
            return numpy_helper.to_array(n.attribute[0].t)
        assert n.op_type == "Identity", f"'{tensor}' is not a constant"
        tensor = n.input[0]
    raise AssertionError("Identity loop")


def input_value(model: onnx.ModelProto, node_name: str, slot: int) -> np.ndarray:
    return value(model, node(model, node_name).input[slot])


def keep_of(group, indices) -> dict:
    """A plan for one group: group id -> kept units."""
    assert group.id is not None, f"{group} owns no weights: it is not a group a plan can name"
    return {group.id: np.asarray(indices, dtype=np.int64)}
