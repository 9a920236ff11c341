"""Load and save models; nothing else in the package touches files.

Loading keeps everything the input had (opset, ir_version, producer,
metadata_props, doc strings) because later stages edit a copy of the same
proto. Saving is atomic: a temporary file in the target folder, then a rename,
so a failed run never leaves a partial output and never touches the input.
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
from dataclasses import dataclass

import onnx
from google.protobuf.message import DecodeError

from onnxprune.core import tensors
from onnxprune.core.errors import OnnxPruneError
from onnxprune.core.walk import all_graphs, node_reads, unshadow

TWO_GB = 2**31 - 1


@dataclass
class Loaded:
    model: onnx.ModelProto
    path: str | None
    external: frozenset = frozenset()  # initializers the input file stored as external data
    files: frozenset = frozenset()  # real paths of the model file and its external-data files
    notes: tuple = ()  # what the user should know about the input (e.g. onnxruntime's dialect)

    @property
    def external_data(self) -> bool:
        return bool(self.external)


def load(source, label: str | None = None) -> Loaded:
    """A path or a ModelProto -> a private copy of the model. Weights the file
    stores inline are in memory; large external ones stay in their files,
    memory-mapped per tensor when read (``tensors.to_array``)."""
    if isinstance(source, onnx.ModelProto):
        model = copy.deepcopy(source)
        toposort(model.graph)
        return Loaded(model, None, notes=_unshadow(model))
    path = os.fspath(source)
    if not os.path.exists(path):
        raise OnnxPruneError(f"{path}: no such file")
    if os.path.isdir(path):
        raise OnnxPruneError(f"{path}: is a folder, not an ONNX model")
    if os.path.getsize(path) == 0:
        raise OnnxPruneError(f"{path}: empty file, not an ONNX model")
    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as e:
        raise OnnxPruneError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise OnnxPruneError(f"{path}: not an ONNX model (no graph nodes)")
    external = frozenset(t.name for g in all_graphs(model.graph) for t in g.initializer
                         if t.data_location == onnx.TensorProto.EXTERNAL)
    files = external_files(path, model)
    if external or _attribute_external(model):
        # Large weights stay in their files, read per tensor on demand (tensors.py).
        try:
            tensors.open_external(model, os.path.dirname(os.path.abspath(path)), path)
        except (OSError, ValueError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise OnnxPruneError(f"{path}: cannot read its external data ({first})") from None
    try:
        toposort(model.graph)
    except OnnxPruneError as e:
        raise OnnxPruneError(f"{path}: {e}") from None
    return Loaded(model, path, external, frozenset(files), notes=_unshadow(model))


def _unshadow(model: onnx.ModelProto) -> tuple:
    """Subgraph names that repeat another scope's get fresh ones (``walk.unshadow``)."""

    n = unshadow(model.graph)
    return (f"{n} name(s) defined inside If branches or loop bodies repeated names of other scopes "
            "(optimum's merged decoders do): they were renamed there, so the branches are analysed; "
            "the written model keeps the new names",) if n else ()


def _attribute_external(model: onnx.ModelProto) -> bool:
    """A Constant node's value stored as external data (rare: onnx can write them)."""
    return any(a.type == onnx.AttributeProto.TENSOR and a.t.data_location == onnx.TensorProto.EXTERNAL
               for g in all_graphs(model.graph) for n in g.node for a in n.attribute)


def toposort(graph: onnx.GraphProto) -> None:
    """Order nodes so each comes after its producers (stable; a no-op when sorted).

    onnxruntime runs unsorted graphs (some converters append nodes at the end),
    but the analysis walks producers first and the checker requires the order.
    Subgraph captures count as inputs of the node that owns the subgraph.
    """
    nodes = list(graph.node)
    produced: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            if o and o in produced:
                first = nodes[produced[o]].name or nodes[produced[o]].op_type
                raise OnnxPruneError(f"tensor '{o}' is written by two nodes ('{first}' and "
                                     f"'{n.name or n.op_type}'): not a valid ONNX graph")
            if o:
                produced[o] = i
    needs = [{produced[x] for x in node_reads(n) if x in produced} for n in nodes]
    if all(all(j < i for j in deps) for i, deps in enumerate(needs)):
        return
    order, done, visiting = [], set(), set()
    for start in range(len(nodes)):
        stack = [(start, iter(sorted(needs[start])))]
        if start in done:
            continue
        visiting.add(start)
        while stack:
            i, it = stack[-1]
            nxt = next((j for j in it if j not in done), None)
            if nxt is None:
                stack.pop()
                visiting.discard(i)
                if i not in done:
                    done.add(i)
                    order.append(i)
            elif nxt in visiting:
                raise OnnxPruneError("the graph has a cycle")
            else:
                visiting.add(nxt)
                stack.append((nxt, iter(sorted(needs[nxt]))))
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def parse_input_shapes(specs) -> dict[str, list[int]]:
    """``["input:1,3,224,224"]`` -> ``{"input": [1, 3, 224, 224]}``."""
    out: dict[str, list[int]] = {}
    for spec in specs or ():
        name, sep, dims = spec.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            raise OnnxPruneError(f"--input-shape '{spec}': expected NAME:D1,D2,...") from None
    return out


def external_files(loaded_path: str | None, model: onnx.ModelProto | None = None) -> set[str]:
    """The model file and every external-data file it names (to never overwrite)."""
    if loaded_path is None:
        return set()
    out = {os.path.realpath(loaded_path)}
    try:
        proto = model if model is not None else onnx.load(loaded_path, load_external_data=False)
    except Exception:  # noqa: BLE001 - unreadable: nothing more to protect
        return out
    folder = os.path.dirname(os.path.abspath(loaded_path))
    for t in (t for g in all_graphs(proto.graph) for t in g.initializer):
        for entry in t.external_data:
            if entry.key == "location":
                out.add(os.path.realpath(os.path.join(folder, entry.value)))
    return out


def check_writable(path, protect: set[str] = frozenset()) -> str:
    """Fail early, before any work, when ``path`` cannot or must not be written."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        above = folder  # the nearest part of the path that exists says what is wrong
        while not os.path.lexists(above) and os.path.dirname(above) != above:
            above = os.path.dirname(above)
        if os.path.lexists(above) and not os.path.isdir(above):
            raise OnnxPruneError(f"{path}: {above} is a file, not a folder")
        raise OnnxPruneError(f"{path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise OnnxPruneError(f"{path}: folder {folder} is not writable")
    if os.path.isdir(path):
        raise OnnxPruneError(f"{path}: is a folder")
    if os.path.realpath(path) in protect:
        raise OnnxPruneError(f"{path}: would overwrite the input model or its data; choose another path")
    return path


def _weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the initializers, from their dims (no copy of their data)."""
    total = 0
    for g in all_graphs(model.graph):
        for t in g.initializer:
            if t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
                continue
            n = 1
            for d in t.dims:
                n *= int(d)
            total += n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return total


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


SMALL_TENSOR = 1024  # bytes: onnx's own threshold for external data


def _goes_external(t: onnx.TensorProto, stored: set) -> bool:
    """Where an initializer's bytes go. A tensor the input stored inline
    stays inline, and a small integer tensor (shape, axes, pads: what shape
    inference must read) is always inline, because onnxruntime refuses those
    as external data. Anything else the input stored externally stays
    external; a new tensor goes external from ``SMALL_TENSOR`` bytes up."""
    lazy = tensors.is_lazy(t)
    if not lazy and not t.HasField("raw_data"):
        return False
    size = tensors.stored_bytes(t)
    integer = t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
    if lazy or t.name in stored:
        return not (integer and size < SMALL_TENSOR)
    return size >= SMALL_TENSOR


def _write_external(model: onnx.ModelProto, path: str, data_name: str, stored_external) -> None:
    """Write ``model`` to ``path`` and its large weights to ``data_name``
    beside it, streaming: each tensor's bytes go to the data file one at a
    time (a lazy one copied from its own file in chunks), then the small
    proto that names them. Nothing is copied whole, not even the proto."""
    stored = set(stored_external)
    out = tensors.shell(model)  # everything but the main graph's weights
    with open(os.path.join(os.path.dirname(path), data_name), "wb") as f:
        for t in model.graph.initializer:
            if _goes_external(t, stored):
                out.graph.initializer.append(tensors.write_external(t, f, data_name))
            else:
                out.graph.initializer.append(tensors.inline(t) if tensors.is_lazy(t) else t)
        for g in list(all_graphs(out.graph))[1:]:  # subgraphs: the shell's own copies
            for t in g.initializer:
                if _goes_external(t, stored):
                    t.CopyFrom(tensors.write_external(t, f, data_name))
                elif tensors.is_lazy(t):
                    t.CopyFrom(tensors.inline(t))
    with open(path, "wb") as f:
        f.write(out.SerializeToString())


def _inline_all(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a model with lazy tensors read into it (saved without external data)."""
    out = tensors.shell(model)
    out.graph.initializer.extend(tensors.inline(t) if tensors.is_lazy(t) else t
                                 for t in model.graph.initializer)
    for g in list(all_graphs(out.graph))[1:]:
        for t in g.initializer:
            if tensors.is_lazy(t):
                t.CopyFrom(tensors.inline(t))
    return out


def save(model: onnx.ModelProto, path, external_data: bool = False,
         protect: set[str] = frozenset(), verify=None, stored_external=()) -> list[str]:
    """Write atomically; weights go to ``<name>.data`` beside it when asked or needed.

    Both files are first written under their final names inside a private
    temporary folder next to the target, so the model names its data file
    correctly without a second serialisation. ``verify(path)`` (e.g. the full
    checker and an onnxruntime session from the path) then runs on the files
    as written; only when it passes are they moved into place. Any failure
    leaves nothing behind. Small tensors (shape vectors, axes, scalars) stay
    inline: onnxruntime refuses some of them as external data
    (``_goes_external``). External data is written tensor by tensor
    (``_write_external``): neither the weights nor the proto are copied whole.

    Returns the files written. ``protect`` lists files that must never be
    replaced (the input model and its external data).
    """
    path = check_writable(path, protect)
    folder = os.path.dirname(path)
    external_data = external_data or _weight_bytes(model) > TWO_GB - (64 << 20)
    name = os.path.basename(path)
    data_name = name + ".data"
    data_path = os.path.join(folder, data_name)
    if external_data:
        check_writable(data_path, protect)
    tmpdir = tempfile.mkdtemp(prefix=".onnxprune-", dir=folder)
    tmp, tmp_data = os.path.join(tmpdir, name), os.path.join(tmpdir, data_name)
    try:
        if external_data:
            _write_external(model, tmp, data_name, stored_external)
        else:
            onnx.save_model(_inline_all(model) if tensors.has_lazy(model) else model, tmp)
        if verify is not None:
            verify(tmp)
        written = []
        try:
            if external_data:
                os.chmod(tmp_data, _umask_mode())
                os.replace(tmp_data, data_path)
                written.append(data_path)
            os.chmod(tmp, _umask_mode())
            os.replace(tmp, path)
        except BaseException:
            for done in written:
                os.remove(done)
            raise
        return [path] + written
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
