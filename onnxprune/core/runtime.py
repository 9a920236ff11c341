"""onnxruntime sessions: plain ones, and ones that also return intermediate
tensors (for calibration statistics and for observing shapes).

A model is serialised once for its session; intermediate outputs are added to
the proto only for that serialisation and removed again, so no copy of the
model is kept. Weights still in external files are not serialised at all:
onnxruntime maps them from their files (``serialised``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.core.errors import OnnxPruneError
from onnxprune.core.graph import skeleton
from onnxprune.core.tensors import copy_except, runtime_proto
from onnxprune.core.walk import all_graphs, node_reads


def serialised(model: onnx.ModelProto) -> tuple[bytes, str | None]:
    """(the bytes onnxruntime loads, the folder their external data is
    relative to, or None). Weights still in their files (lazy, ``tensors.py``)
    are not copied: onnxruntime maps them from there itself."""
    proto, folder = runtime_proto(model)
    try:
        return proto.SerializeToString(), folder
    except ValueError:  # protobuf's 2 GB limit
        raise OnnxPruneError("onnxruntime cannot load the model: the weights it holds in memory "
                             "are over protobuf's 2 GB limit") from None


def session(model: onnx.ModelProto | bytes | str, threads: int | None = 1, optimize: bool = True,
            folder: str | None = None, spinning: bool = True):
    """A CPU session on a ModelProto, its serialised bytes (with the
    ``folder`` of its external data) or a path. ``spinning=False``: idle
    intra-op threads block at once instead of spinning for more work (they
    leave the cores to other threads of the process, at some wake-up cost)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # Fatal only: every error comes back as an exception and is reported once, as
    # one line; onnxruntime's own log would print it again on stderr.
    opts.log_severity_level = 4
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        # A session to load or probe the model, not to time it: packing MatMul
        # and Conv weights ahead would copy every one of them.
        opts.add_session_config_entry("session.disable_prepacking", "1")
    src = model
    if isinstance(model, onnx.ModelProto):
        src, folder = serialised(model)
    if folder is not None:
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
    try:
        return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises several unrelated types
        raise OnnxPruneError(f"onnxruntime cannot load the model: {str(e).splitlines()[0]}") from None


# The op domains onnxruntime's CPU build implements; an op of any other domain
# (not a function the model defines) is a custom op, which needs its library.
RUNTIME_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc",
                   "com.microsoft.experimental", "ai.onnx.preview.training", "ai.onnx.training")


def foreign_ops(model: onnx.ModelProto) -> list[str]:
    """Custom ops onnxruntime cannot know: ``domain.op (node 'name')``, once per op."""

    local = {(f.domain, f.name) for f in model.functions}
    out: dict[tuple, str] = {}
    for g in all_graphs(model.graph):
        for n in g.node:
            if n.domain not in RUNTIME_DOMAINS and (n.domain, n.op_type) not in local:
                where = f"node '{n.name}'" if n.name else f"the node writing '{n.output[0]}'"
                out.setdefault((n.domain, n.op_type), f"{n.domain}.{n.op_type} ({where})")
    return list(out.values())


def load_failure(model: onnx.ModelProto | str, error: OnnxPruneError) -> str:
    """Why onnxruntime does not load a model, naming its custom ops when it has any."""
    proto = onnx.load(model, load_external_data=False) if isinstance(model, str) else model
    foreign = foreign_ops(proto)
    if foreign:
        return (f"onnxruntime cannot load it: op {', '.join(foreign)} is a custom op onnxruntime does "
                f"not implement (its library must be registered)")
    return str(error).replace("the model", "it", 1)


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor ONNX shape inference can type (on the skeleton)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=False)
    except Exception:  # noqa: BLE001 - best effort
        inferred = model
    g = inferred.graph
    out = {}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            out[vi.name] = vi.type.tensor_type.elem_type
    for t in model.graph.initializer:
        out.setdefault(t.name, t.data_type)
    return out


def upto(model: onnx.ModelProto, tensors) -> onnx.ModelProto:
    """The part of ``model`` that computes ``tensors`` (its outputs then; not
    typed, onnxruntime infers them): onnxruntime runs every node of a graph
    whatever outputs are asked for, so a pass that needs early tensors only
    runs a model cut after them. Every input stays declared (feeds need not
    change); the initializers it does not read are left out."""

    g = model.graph
    need = set(tensors)
    keep = []
    for node in reversed(g.node):
        if any(o in need for o in node.output if o):
            keep.append(node)
            need |= node_reads(node)
    out = copy_except(model, {"graph"})
    out.graph.CopyFrom(copy_except(g, {"initializer", "node", "output", "value_info"}))
    out.graph.node.extend(reversed(keep))
    out.graph.initializer.extend(t for t in g.initializer if t.name in need)
    out.graph.value_info.extend(vi for vi in g.value_info if vi.name in need)
    for t in dict.fromkeys(tensors):
        out.graph.output.append(onnx.ValueInfoProto(name=t))
    return out


@dataclass
class Tail:
    """The part of a changed model that computes differently from its
    original: ``given`` are the tensors it reads that the original computes
    alike (fed from the original's run), ``outputs`` the indices of the
    model's outputs it computes (the others are the original's)."""

    given: list
    outputs: list
    nodes: list
    model: onnx.ModelProto

    def build(self, runs: list) -> onnx.ModelProto:
        """The tail as a model whose inputs are ``given`` and the original
        inputs it reads; ``runs``: the values ``given`` will take (one dict a
        run), which type and shape them (a dim that differs between runs is
        left open: onnxruntime infers a Resize's output from the length of
        its sizes, a Reshape's from its target)."""
        model = self.model
        g = model.graph
        reads = set().union(*(node_reads(n) for n in self.nodes))
        out = copy_except(model, {"graph"})
        out.graph.CopyFrom(copy_except(g, {"initializer", "node", "input", "output", "value_info"}))
        out.graph.input.extend(vi for vi in g.input if vi.name in reads)
        for name in self.given:
            shapes = {np.shape(run[name]) for run in runs}
            first = np.shape(runs[0][name])
            dims = [d if all(len(sh) == len(first) and sh[k] == d for sh in shapes) else None
                    for k, d in enumerate(first)]
            out.graph.input.append(onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(np.asarray(runs[0][name]).dtype), dims))
        out.graph.node.extend(self.nodes)
        out.graph.initializer.extend(t for t in g.initializer if t.name in reads)
        out.graph.output.extend(g.output[k] for k in self.outputs)
        return out


def tail(model: onnx.ModelProto, original: onnx.ModelProto) -> Tail | None:
    """What of ``model`` (the original with some weights and nodes
    rewritten, nodes added) must run again: every node that differs from the
    original's node with the same first output, reads a weight that differs,
    or is new, and every node after one. A pruned layer deep in a network
    leaves the layers before it as they were: their tensors can come from one
    run of the original, shared by every model that changes only later.
    None when the whole model changes, nothing does, or the changed part
    reads nothing computed before it."""
    g, o = model.graph, original.graph
    before = {n.output[0]: n for n in o.node if n.output}
    weights = {t.name: t for t in o.initializer}
    new_weights = {t.name for t in g.initializer if weights.get(t.name) != t}
    changed: set = set()
    nodes = []
    for node in g.node:
        reads = node_reads(node)
        if (reads & changed or reads & new_weights or not node.output
                or before.get(node.output[0]) != node):
            changed.update(x for x in node.output if x)
            nodes.append(node)
    if not nodes or len(nodes) == len(g.node):
        return None
    nodes = _with_constants(g, nodes)
    made = {x for n in nodes for x in n.output} | {t.name for t in g.initializer} | {vi.name for vi in g.input}
    given = sorted(set().union(*(node_reads(n) for n in nodes)) - made)
    if not given:
        return None  # nothing before it to share
    outputs = [k for k, vi in enumerate(g.output) if vi.name in changed]
    return Tail(given, outputs, nodes, model)


def _with_constants(g: onnx.GraphProto, nodes: list) -> list:
    """``nodes`` (in graph order) and the nodes computing only from
    constants that they read: a Resize's scales or a Reshape's target stay
    constants onnxruntime folds and infers shapes from, not inputs."""
    weights = {t.name for t in g.initializer}
    constant: dict = {}  # output -> node, for nodes reading only constants
    for node in g.node:
        if all(x in weights or x in constant for x in node_reads(node)):
            constant.update((x, node) for x in node.output if x)
    want, todo = {id(n) for n in nodes}, [x for n in nodes for x in node_reads(n)]
    while todo:
        node = constant.get(todo.pop())
        if node is not None and id(node) not in want:
            want.add(id(node))
            todo.extend(node_reads(node))
    return [n for n in g.node if id(n) in want]


def exposing(model: onnx.ModelProto, tensors, threads: int | None = None, optimize: bool = True,
             spinning: bool = True):
    """(session, exposed names): a session whose outputs are the model's own
    outputs followed by ``tensors`` (those of the main graph: a subgraph's
    tensors are left out, and callers get no statistics for them)."""
    types = tensor_types(model)
    present = {o.name for o in model.graph.output}
    g = model.graph  # a tensor inside an If branch or loop body cannot be a graph output: not exposed
    main = {i.name for i in g.input} | {t.name for t in g.initializer} | {o for n in g.node for o in n.output}
    added = []
    for t in dict.fromkeys(tensors):
        if t in present or t not in main:
            continue
        if t in types:
            model.graph.output.append(onnx.helper.make_tensor_value_info(t, types[t], None))
        else:  # after a contrib op ONNX cannot type: onnxruntime types it (as ``upto`` relies on)
            model.graph.output.append(onnx.ValueInfoProto(name=t))
        added.append(t)
    try:
        data, folder = serialised(model)
    finally:
        for _ in added:
            model.graph.output.pop()
    sess = session(data, threads=threads, optimize=optimize, folder=folder, spinning=spinning)
    del data
    names = {o.name for o in sess.get_outputs()}
    return sess, [t for t in dict.fromkeys(tensors) if t in names]


class Fetcher:
    """``sess.run(names, feeds)``, but into arrays of an earlier run with the
    same input shapes that the caller has handed back (``recycle``), through
    an IO binding: a run that returns many intermediate tensors otherwise
    allocates and first-touches all of them every time, which costs more than
    the copy-free views numpy gets of them save. A run the binding cannot
    serve (other input shapes, outputs whose shapes depend on the data) is a
    plain ``run``; after one failed bound run, every run is."""

    def __init__(self, sess, names: list[str], keep: int = 2):
        self.sess, self.names, self.keep = sess, list(names), keep
        self.spare: list = []  # (input signature, arrays) free for reuse
        self.bound = True

    @staticmethod
    def signature(feeds: dict) -> tuple:
        return tuple(sorted((k, v.shape, v.dtype.str) for k, v in feeds.items()))

    def run(self, feeds: dict) -> list:
        import onnxruntime as ort

        sig = self.signature(feeds)
        arrays = None
        if self.bound:
            for i, (s, a) in enumerate(self.spare):
                if s == sig:
                    arrays = self.spare.pop(i)[1]
                    break
        if arrays is not None:
            io = self.sess.io_binding()
            try:
                for k, v in feeds.items():
                    io.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)))
                for name, a in zip(self.names, arrays):
                    io.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(a))
                self.sess.run_with_iobinding(io)
                return arrays
            except Exception:  # noqa: BLE001 - then plainly, from now on
                self.bound = False
        return self.sess.run(self.names, feeds)

    def recycle(self, feeds_signature: tuple, arrays: list) -> None:
        """Hand back the arrays of a run with these inputs: the next run with
        the same input shapes writes into them."""
        if self.bound and all(isinstance(a, np.ndarray) and a.flags.c_contiguous and a.flags.writeable
                              for a in arrays):
            self.spare.append((feeds_signature, arrays))
            del self.spare[:-self.keep]
