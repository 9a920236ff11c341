"""A read-only index over an ONNX graph: producers, consumers, constants, shapes.

Read-only but for one addition: shapes an op rule derives where inference
stopped (``derive_shape``), kept apart from the caller's shapes.

The pruner edits the ModelProto itself (so opset, metadata, doc strings and
external-data settings survive untouched); this view only answers questions
about it. Weights may be initializers, ``Constant`` nodes, or either behind a
chain of ``Identity`` nodes: ``const()`` sees through all three.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx

from onnxprune.core.tensors import to_array
from onnxprune.core.walk import all_graphs, captured_names, subgraphs

_NO_FOLD = {"QuantizeLinear", "DynamicQuantizeLinear", "RandomNormal",
            "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
            "If", "Loop", "Scan"}
_FOLD_LIMIT = 1 << 24  # elements: weights, not activations
CACHE_ELEMENTS = 1 << 16  # stored constants up to this size stay cached as arrays


def _foldable(node: onnx.NodeProto) -> bool:
    return (node.domain in ("", "ai.onnx") and node.op_type not in _NO_FOLD and bool(node.input)
            and not subgraphs(node))


def _dequantize(values: list, axis: int) -> np.ndarray:
    """(x - zero_point) * scale, per tensor or per ``axis`` (every opset: the
    reference evaluator only has the newest)."""
    x, scale = values[0], np.asarray(values[1])
    zp = values[2] if len(values) > 2 and values[2] is not None else np.zeros((), x.dtype)
    zp = np.asarray(zp)
    if scale.ndim == 1 and scale.size > 1 and x.ndim:
        shape = [1] * x.ndim
        shape[axis % x.ndim] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape) if zp.size > 1 else zp
    return ((x.astype(np.float32) - zp.astype(np.float32)) * scale).astype(scale.dtype)


def _defined_names(graph: onnx.GraphProto) -> list[str]:
    """Every name a graph and its nested subgraphs define (with repeats)."""

    out = []
    for g in all_graphs(graph):
        out += [i.name for i in g.input] + [t.name for t in g.initializer]
        out += [o for n in g.node for o in n.output if o]
    return out


def _chain(first, rest):
    yield from first
    yield from rest


def tensor_shape(vi: onnx.ValueInfoProto):
    t = vi.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    dims = []
    for d in t.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def _constant_node_value(node: onnx.NodeProto):
    for attr in node.attribute:
        if attr.name == "value":
            return to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None


class GraphView:
    def __init__(self, model: onnx.ModelProto, shapes: dict[str, tuple]) -> None:
        self.model = model
        self.graph = model.graph
        self.shapes = shapes  # the caller's: inference and data; never written here
        self.derived: dict[str, tuple] = {}  # shapes op rules derived where inference stopped
        self.opsets = {("" if o.domain in ("", "ai.onnx") else o.domain): int(o.version)
                       for o in model.opset_import}
        self.opset = self.opsets.get("", 0)
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.graph_inputs = [i.name for i in self.graph.input]
        self.graph_outputs = [o.name for o in self.graph.output]
        # Before IR version 4 every initializer is also listed as a graph input
        # (a default value, in practice a weight): only real inputs count then.
        old_ir = 0 < model.ir_version < 4
        self._inputs = {n for n in self.graph_inputs if not (old_ir and n in self.initializers)}
        # Symbolic leading dims of the inputs: the batch. A tensor dim that is
        # one of these counts as 1 in MACs (MACs per sample); any other
        # symbolic dim leaves MACs unknown.
        inits = set(self.initializers)
        self.batch_symbols = {i.type.tensor_type.shape.dim[0].dim_param for i in self.graph.input
                              if i.name not in inits and i.type.HasField("tensor_type")
                              and len(i.type.tensor_type.shape.dim)
                              and i.type.tensor_type.shape.dim[0].dim_param}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        self.captured: dict[str, str] = {}  # tensor -> node whose (unflattened) subgraph reads it
        self._flatten()
        for node in self.nodes:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for k, name in enumerate(node.input):
                if name:
                    self.consumers[name].append((node, k))
        self._const_cache: dict[str, np.ndarray] = {}  # small constants only
        self._fold_cache: dict[str, np.ndarray | None] = {}
        # Tensors computed from constants only, found in one pass in graph
        # order: only these are ever evaluated by ``_folded``.
        self._foldable: set[str] = set()
        for node in self.nodes:
            if _foldable(node) and all(not i or self.const_root(i) is not None or i in self._foldable
                                       for i in node.input):
                self._foldable.update(o for o in node.output if o)
        self.index_of = {id(n): i for i, n in enumerate(self.nodes)}

    def _flatten(self) -> None:
        """One node list over the main graph and its subgraphs.

        A subgraph's nodes come just before the node that owns it (they read
        only what is computed before that node, and it reads their outputs),
        so rules see a branch's network like any other: groups that live
        inside an If branch or a Loop body are found, and a weight read inside
        a branch is an ordinary reader. ``scope`` tells, per node, the owner
        and which of its subgraphs holds it. A subgraph's formal inputs
        (``sub_inputs``) and outputs (``sub_outputs``) are boundaries that the
        owner's rule alone may couple (an If's outputs are its branches'
        outputs). A subgraph that reuses a name defined elsewhere (sibling
        branches may) stays opaque: what it reads from outside is
        ``captured``, and freezes."""
        g = self.graph
        self.nodes: list[onnx.NodeProto] = []
        self.scope: dict[int, tuple[onnx.NodeProto, int] | None] = {}
        self.sub_inputs: dict[str, onnx.NodeProto] = {}
        self.sub_outputs: dict[str, onnx.NodeProto] = {}
        self.opaque: dict[str, str] = {}  # owner node name -> why its subgraphs are not analysed
        self.graphs: list[onnx.GraphProto] = [g]  # the graphs whose nodes are in ``nodes``
        defined = {i.name for i in g.input} | {t.name for t in g.initializer}
        defined |= {o for n in g.node for o in n.output if o}
        stack = [(iter(g.node), None)]
        while stack:
            it, owner = stack[-1]
            node = next(it, None)
            if node is None:
                stack.pop()
                continue
            if isinstance(node, tuple):  # (owner node, its scope) after its subgraphs
                self._add(*node)
                continue
            subs = subgraphs(node)
            if not subs:
                self._add(node, owner)
                continue
            names = [_defined_names(sub) for sub in subs]
            local = [n for ns in names for n in ns]
            if len(set(local)) != len(local) or defined & set(local):
                self._add(node, owner)
                clash = sorted((defined & set(local)) or {n for n in local if local.count(n) > 1})
                self.opaque[node.name] = f"it reuses the name '{clash[0]}', defined in another scope"
                for sub in subs:
                    for name in captured_names(sub):
                        self.captured.setdefault(name, node.name)
                continue
            defined.update(local)
            # after the subgraphs' nodes: the owner itself
            stack[-1] = (_chain([(node, owner)], it), owner)
            for k in range(len(subs) - 1, -1, -1):
                sub = subs[k]
                self.graphs.append(sub)
                for t in sub.initializer:
                    self.initializers[t.name] = t
                for vi in sub.input:
                    self.sub_inputs.setdefault(vi.name, node)
                for vi in sub.output:
                    self.sub_outputs.setdefault(vi.name, node)
                stack.append((iter(sub.node), (node, k)))

    def _add(self, node: onnx.NodeProto, scope) -> None:
        if not node.name:
            node.name = f"{node.op_type}_{len(self.nodes)}"
        self.scope[id(node)] = scope
        self.nodes.append(node)

    def escapes(self, name: str) -> bool:
        """Read by something no rewrite reaches: a graph output, an opaque
        subgraph, or the owner of the subgraph it is an output of."""
        return name in self.graph_outputs or name in self.captured or name in self.sub_outputs

    def const_chain(self, name: str) -> tuple[set[str], set[int]]:
        """For a tensor folded from constants: the constants it is computed from
        and the indices of the nodes that compute it."""
        leaves, chain, todo = set(), set(), [name]
        while todo:
            t = todo.pop()
            if self.const_root(t) == t and (t in self.initializers or t in self.producer):
                leaves.add(t)
                continue
            node = self.producer.get(t)
            if node is None:
                continue
            i = self.index_of[id(node)]
            if i in chain:
                continue
            chain.add(i)
            todo.extend(x for x in node.input if x)
        return leaves, chain

    def readers(self, name: str) -> list[tuple[int | None, int, str]]:
        """Everything that reads a tensor, seen through Identity chains:
        ``(node index, input slot, label)``; the index is None for a graph
        output or a subgraph capture (readers no rewrite can reach)."""
        out, todo, seen = [], [name], set()
        while todo:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            if t in self.graph_outputs:
                out.append((None, -1, f"graph output '{t}'"))
            if t in self.captured:
                out.append((None, -1, f"a subgraph of node '{self.captured[t]}'"))
            if t in self.sub_outputs:
                out.append((None, -1, f"node '{self.sub_outputs[t].name}' as a subgraph output"))
            for node, k in self.consumers.get(t, []):
                if node.op_type == "Identity":
                    todo.append(node.output[0])
                else:
                    out.append((self.index_of[id(node)], k, f"node '{node.name}' ({node.op_type})"))
        return out

    # -- constants -----------------------------------------------------------
    def const_root(self, name: str) -> str | None:
        """The initializer or Constant-node output a tensor is, seen through
        Identity (memoised along the chain: linear even for long chains)."""
        cache = self.__dict__.setdefault("_roots", {})
        walked: list[str] = []
        root = None
        while name:
            if name in cache:
                root = cache[name]
                break
            if name in walked:  # a cycle: no root
                break
            walked.append(name)
            if name in self.initializers and name not in self._inputs:
                root = name
                break
            node = self.producer.get(name)
            if node is None or node.op_type not in ("Constant", "Identity"):
                break
            if node.op_type == "Constant":
                root = name
                break
            name = node.input[0]
        for n in walked:
            cache[n] = root
        return root

    def _stored(self, root: str) -> np.ndarray | None:
        if root in self.initializers:
            return to_array(self.initializers[root])  # lazy external data: read on demand
        return _constant_node_value(self.producer[root])

    def const(self, name: str) -> np.ndarray | None:
        """The value of a tensor that does not depend on any graph input.

        Stored weights are read on demand and cached only when small, so that
        analysing a large model does not hold a second copy of its weights.
        Values folded from constants (Cast, Sqrt...) are cached.
        """
        root = self.const_root(name)
        if root is not None:
            value = self._const_cache.get(root)
            if value is None:
                value = self._stored(root)
                if value is not None and value.size <= CACHE_ELEMENTS:
                    self._const_cache[root] = value
            return value
        return self._folded(name)

    def const_shape(self, name: str) -> tuple | None:
        """The shape of a constant, without reading a stored weight's bytes."""
        root = self.const_root(name)
        if root is not None and root in self.initializers:
            return tuple(int(d) for d in self.initializers[root].dims)
        value = self.const(name)
        return None if value is None else tuple(value.shape)

    def _folded(self, name: str) -> np.ndarray | None:
        """Fold a tensor computed from constants only. Iterative over the
        producers, so a chain thousands of nodes deep needs no recursion."""
        if name in self._fold_cache:
            return self._fold_cache[name]
        if name not in self._foldable:
            return None
        stack = [(name, None)]
        while stack:
            t, node = stack.pop()
            if node is not None:  # every input is done: post-order
                self._fold_cache[t] = self._fold(node, t)
                continue
            if t in self._fold_cache or self.const_root(t) is not None:
                continue
            node = self.producer.get(t)
            if node is None or not _foldable(node):
                self._fold_cache[t] = None
                continue
            self._fold_cache[t] = None  # a cycle guard until computed
            stack.append((t, node))
            stack.extend((i, None) for i in node.input if i)
        return self._fold_cache.get(name)

    def _fold(self, node: onnx.NodeProto, name: str) -> np.ndarray | None:
        """Evaluate a node whose inputs are all constants (decomposed BatchNorm's
        Sqrt(var), Cast of fp16 weights, DequantizeLinear of int8 weights...).
        The folded value is what the analysis and the criteria read; the
        rewrite slices the stored constants behind it (``weights.trace``), so
        an int8 weight stays int8. Quantize ops stay symbolic."""
        values = [self.const(i) if i else None for i in node.input]
        if any(v is None for i, v in zip(node.input, values) if i):
            return None
        if sum(v.size for v in values if v is not None) > _FOLD_LIMIT:
            return None
        if node.op_type == "DequantizeLinear" and not attr(node, "block_size", 0):
            return _dequantize(values, int(attr(node, "axis", 1)))
        try:
            from onnx.reference import ReferenceEvaluator

            feeds = {f"in{k}": v for k, v in enumerate(values) if v is not None}
            inputs = [f"in{k}" if i else "" for k, i in enumerate(node.input)]
            outputs = [f"out{k}" for k in range(len(node.output))]
            single = onnx.helper.make_node(node.op_type, inputs, outputs, domain=node.domain)
            single.attribute.extend(node.attribute)
            graph = onnx.helper.make_graph(
                [single], "fold",
                [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                 for n, v in feeds.items()],
                [onnx.helper.make_empty_tensor_value_info(o) for o in outputs])
            model = onnx.helper.make_model(graph, opset_imports=list(self.model.opset_import))
            results = ReferenceEvaluator(model).run(None, feeds)
        except Exception:  # noqa: BLE001 - anything the evaluator cannot do stays dynamic
            return None
        out = results[list(node.output).index(name)]
        return np.asarray(out)

    def is_const(self, name: str) -> bool:
        return self.const_root(name) is not None or self._folded(name) is not None

    # -- shapes and attributes ----------------------------------------------
    def shape(self, name: str):
        if self.is_const(name):
            return self.const_shape(name)
        found = self.shapes.get(name)
        return found if found is not None else self.derived.get(name)

    def derive_shape(self, name: str, dims) -> None:
        """A shape an op rule worked out where inference stopped (a Reshape to
        a computed target): the one thing the analysis adds to this index, so
        the rules downstream read it as they read any other."""
        self.derived[name] = tuple(dims)

    def all_shapes(self) -> dict:
        """Every shape known: inferred, observed, and derived by the rules."""
        return {**self.derived, **self.shapes}

    def sizes(self, name: str) -> list[int] | None:
        """A tensor's dims as numbers for counting: the batch counts as 1; None
        when any other dim is unknown or symbolic (sequence, spatial)."""
        s = self.shape(name)
        if s is None:
            return None
        out = []
        for d in s:
            if isinstance(d, int):
                out.append(d)
            elif d in self.batch_symbols:
                out.append(1)
            elif isinstance(d, str) and factor(d)[0] in self.batch_symbols and factor(d)[1] > 1:
                out.append(factor(d)[1])  # the batch times k (shapes.py's name): k per sample
            else:
                return None
        return out

    def rank(self, name: str) -> int | None:
        s = self.shape(name)
        return None if s is None else len(s)

    def static(self, name: str, axis: int) -> int | None:
        s = self.shape(name)
        if s is None or axis >= len(s) or axis < -len(s):
            return None
        d = s[axis]
        return d if isinstance(d, int) else None


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def factor(dim):
    """A symbolic dim as (symbol, multiplier): ``'s*4'`` (``shapes.py``'s name
    for the batch times 4) -> ``('s', 4)``, ``'s'`` -> ``('s', 1)``; None for ints."""
    if not isinstance(dim, str):
        return None
    base, _, k = dim.rpartition("*")
    return (base, int(k)) if base and k.isdigit() else (dim, 1)


def set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(onnx.helper.make_attribute(name, value))


SKELETON_BYTES = 4096  # constants above this size are replaced by typed inputs in a skeleton


def _big(t: onnx.TensorProto) -> bool:
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return True
    n = 1
    for d in t.dims:
        n *= int(d)
    return n * 4 > SKELETON_BYTES


def skeleton(model: onnx.ModelProto, value_info: bool = True) -> onnx.ModelProto:
    """The model without its large weights: every big initializer or Constant
    becomes a graph input of the same type and shape. Shape inference and the
    checker's graph checks need only that, so they run on a skeleton without
    copying the weights (and past protobuf's 2 GB limit). ``value_info``
    False drops the shape hints (some converters leave stale ones)."""
    out = onnx.ModelProto()
    for name in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(out, name, getattr(model, name))
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    g, sg = model.graph, out.graph
    sg.name = g.name
    inputs = {i.name for i in g.input}
    sg.input.extend(g.input)
    sg.output.extend(g.output)
    if value_info:
        sg.value_info.extend(g.value_info)
    for t in g.initializer:
        if not _big(t):
            sg.initializer.append(t)
        elif t.name not in inputs:
            sg.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    for node in g.node:
        value = next((a.t for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR),
                     None) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        if value is not None and _big(value):
            sg.input.append(onnx.helper.make_tensor_value_info(node.output[0], value.data_type,
                                                               list(value.dims)))
        else:
            sg.node.append(node)
    return out
