"""Tensor values wherever they are stored: the one accessor of the package.

Why this exists: a model past protobuf's 2 GB limit keeps its weights in
external data files. Reading them all into the proto
(``onnx.load_external_data_for_model``) puts the whole model in memory, and
every later copy doubles it. Instead an external initializer stays external
after ``model.load`` (a *lazy* tensor): its value is memory-mapped per tensor
when read and unmapped when the array is dropped, so analysis and scoring
touch one weight at a time, the rewrite slices from the map (only the smaller
result lives in memory) and an unchanged weight is never read at all.

A lazy tensor is an ordinary ONNX external-data tensor whose ``location`` was
made absolute at load. The tensor alone then says where its bytes are: no
registry of open models (protobuf messages take no weak references), and it
survives copies of the proto. Absolute locations never leave the process:
onnxruntime gets relative ones and the folder they are relative to
(``runtime_proto``), and ``model.save`` streams every external tensor into
the output's own data file (``write_external``).

Everything that reads a tensor's value calls ``to_array``; a model without
external data is untouched by this module.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from onnxprune.core.errors import OnnxPruneError
from onnxprune.core.walk import all_graphs

# External tensors up to this size are read into the proto at load: shape
# vectors, axes, scalars and small biases are what shape inference, the
# checker and the rules read as metadata, and they cost nothing in memory.
EAGER_BYTES = 4096
# Lazy values below this size are read into an ordinary array rather than
# mapped: the graph view caches small constants, and a cached map would hold
# a file descriptor per tensor.
MAP_BYTES = 1 << 20
# Tensors from this size start on a 64 KiB boundary in a written data file (as
# onnx aligns them), so onnxruntime can map them instead of copying them.
ALIGN_FROM, ALIGN = 1 << 20, 1 << 16
_CHUNK = 16 << 20  # bytes per read when a tensor is copied between files

# Types whose bytes are the numpy array's bytes, little-endian: these may stay
# lazy. Others (bfloat16, float8, 4-bit, strings) are read at load as before.
_PLAIN = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT8,
          TensorProto.INT16, TensorProto.INT32, TensorProto.INT64, TensorProto.UINT8,
          TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64, TensorProto.BOOL}


METADATA_TYPES = {TensorProto.INT64, TensorProto.INT32, TensorProto.BOOL, TensorProto.STRING}
SMALL_METADATA = 64  # elements: integer vectors of this size are shapes and axes, not weights


def is_metadata(data_type: int, numel: int) -> bool:
    """Whether a stored tensor is a shape vector, axes or split sizes (a small
    integer tensor) rather than a weight: copying or sharing it ties nothing."""
    return data_type in METADATA_TYPES and numel <= SMALL_METADATA


def _info(t: TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def _dtype(t: TensorProto) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).newbyteorder("<")


def _numel(t: TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= int(d)
    return n


def is_lazy(t: TensorProto) -> bool:
    """Stored in an external file that ``load`` resolved (its bytes are not in memory)."""
    if t.data_location != TensorProto.EXTERNAL:
        return False
    return os.path.isabs(_info(t).get("location", ""))


def has_lazy(model: onnx.ModelProto) -> bool:
    return any(is_lazy(t) for g in all_graphs(model.graph) for t in g.initializer)


def stored_bytes(t: TensorProto) -> int:
    """Bytes of a tensor's data, in memory or in its file, without copying
    them (reading ``raw_data`` copies it)."""
    if is_lazy(t):
        return int(_info(t)["length"])
    if t.data_type in _PLAIN:
        return _numel(t) * _dtype(t).itemsize
    return len(t.raw_data) if t.HasField("raw_data") else 0


def to_array(t: TensorProto) -> np.ndarray:
    """A tensor's value. A lazy one is read from its file: a small one into
    memory, a large one as a read-only view of a memory map of its bytes
    (read-only like ``numpy_helper.to_array``'s); dropping the array unmaps it."""
    if not is_lazy(t):
        return numpy_helper.to_array(t)
    info = _info(t)
    path, offset = info["location"], int(info.get("offset", 0))
    dtype, shape = _dtype(t), tuple(int(d) for d in t.dims)
    count = _numel(t)
    if count * dtype.itemsize < MAP_BYTES or count == 0:
        with open(path, "rb") as f:
            f.seek(offset)
            value = np.fromfile(f, dtype=dtype, count=count)
        return value.reshape(shape).astype(dtype.newbyteorder("="), copy=False)
    mapped = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    return np.asarray(mapped)  # an ndarray view: the map lives as long as the array


def open_external(model: onnx.ModelProto, folder: str, label: str) -> frozenset:
    """Resolve every external tensor of a model loaded from ``folder``.

    Each data file is checked now (it exists, is long enough, the tensor's
    length matches its dims), so a missing or truncated file is a clear error
    at load, not a crash later. Large initializers of plain types become lazy;
    everything else is read into the proto as before. Returns the lazy names.
    """
    lazy = set()
    sizes: dict[str, int] = {}
    root = os.path.realpath(folder)
    for t, initializer in _external_tensors(model):
        info = _info(t)
        location = info.get("location", "")
        # The real path: a symlink inside the folder (to a file, or a folder on the
        # way) that leads out of it is refused like '../x' (onnx does the same).
        path = os.path.realpath(os.path.join(root, location))
        if not location or os.path.isabs(location) or os.path.commonpath([root, path]) != root:
            raise OnnxPruneError(f"{label}: cannot read its external data (tensor '{t.name}': "
                                 f"location '{location}' is not inside the model's folder)")
        if path not in sizes:
            if not os.path.isfile(path):
                raise OnnxPruneError(f"{label}: cannot read its external data ({location}: no such file)")
            sizes[path] = os.path.getsize(path)
        offset = int(info.get("offset") or 0)
        expected = _numel(t) * _dtype(t).itemsize if t.data_type in _PLAIN else None
        length = int(info["length"]) if info.get("length") else expected
        if length is None:
            length = sizes[path] - offset
        if expected is not None and length != expected:
            raise OnnxPruneError(f"{label}: cannot read its external data (tensor '{t.name}' has "
                                 f"{length} bytes for dims {list(t.dims)})")
        if offset < 0 or offset + length > sizes[path]:
            raise OnnxPruneError(f"{label}: cannot read its external data ({location} is truncated: "
                                 f"tensor '{t.name}' needs bytes {offset}..{offset + length}, "
                                 f"the file has {sizes[path]})")
        _set_location(t, path, offset, length)
        if t.data_type in _PLAIN and length > EAGER_BYTES and initializer:
            lazy.add(t.name)
        else:
            _read_in(t)
    return frozenset(lazy)


def _external_tensors(model: onnx.ModelProto):
    """(tensor, is an initializer) for every tensor stored externally:
    initializers and attribute tensors (Constant values)."""
    for g in all_graphs(model.graph):
        for t in g.initializer:
            if t.data_location == TensorProto.EXTERNAL:
                yield t, True
        for node in g.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR and a.t.data_location == TensorProto.EXTERNAL:
                    yield a.t, False


def _set_location(t: TensorProto, path: str, offset: int, length: int) -> None:
    del t.external_data[:]
    for key, value in (("location", path), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value


def _read_in(t: TensorProto) -> None:
    """Move a tensor's bytes from its file into ``raw_data``."""
    info = _info(t)
    with open(info["location"], "rb") as f:
        f.seek(int(info["offset"]))
        data = f.read(int(info["length"]))
    del t.external_data[:]
    t.data_location = TensorProto.DEFAULT
    t.raw_data = data


def inline(t: TensorProto) -> TensorProto:
    """A copy of a tensor with its data in ``raw_data``."""
    out = TensorProto()
    out.CopyFrom(t)
    if is_lazy(out):
        _read_in(out)
    return out


def copy_except(msg, skip: set[str]):
    """A new message with every field of ``msg`` but those named in ``skip``."""
    out = type(msg)()
    for field, value in msg.ListFields():
        if field.name in skip:
            continue
        # ``is_repeated`` is protobuf 5's name; older releases only have ``label``
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        if repeated:
            getattr(out, field.name).extend(value)
        elif field.message_type is not None:
            getattr(out, field.name).CopyFrom(value)
        else:
            setattr(out, field.name, value)
    return out


def shell(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without its main graph's initializers, and nothing else
    copied that could be large (nodes and subgraphs are copied as they are)."""
    out = copy_except(model, {"graph"})
    out.graph.CopyFrom(copy_except(model.graph, {"initializer"}))
    return out


def write_external(t: TensorProto, f, location: str) -> TensorProto:
    """Append a tensor's bytes (from memory, or copied in chunks from its
    file) to the open data file ``f``; return the tensor's header that names
    them: the same tensor with ``location``, offset and length instead of data."""
    size = stored_bytes(t) if is_lazy(t) else None
    if size is None:
        data = t.raw_data
        size = len(data)
    if size >= ALIGN_FROM:
        f.write(b"\0" * ((-f.tell()) % ALIGN))
    offset = f.tell()
    if is_lazy(t):
        info = _info(t)
        _copy_range(info["location"], int(info["offset"]), size, f)
    else:
        f.write(data)
        del data
    header = copy_except(t, {"raw_data", "external_data", "data_location"})
    header.data_location = TensorProto.EXTERNAL
    _set_location(header, location, offset, size)
    return header


def _copy_range(path: str, offset: int, length: int, out) -> None:
    """Copy ``length`` bytes from ``path`` at ``offset`` into the open file
    ``out``, a chunk at a time (never the tensor in memory)."""
    buf = bytearray(min(_CHUNK, max(length, 1)))
    view = memoryview(buf)
    with open(path, "rb") as src:
        src.seek(offset)
        left = length
        while left:
            n = src.readinto(view[:min(left, len(buf))])
            if not n:
                raise OSError(f"{path}: ended {left} bytes early")
            out.write(view[:n])
            left -= n


def runtime_proto(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """(a proto onnxruntime accepts, the folder its external data is relative
    to). A model without lazy tensors is returned as it is. Otherwise a shell
    of it (no weight copied) whose lazy tensors name their files relative to
    the folder the files share: onnxruntime maps them itself."""
    if not has_lazy(model):
        return model, None
    out = shell(model)
    lazy = [t for g in all_graphs(model.graph) for t in g.initializer if is_lazy(t)]
    folder = os.path.commonpath([os.path.dirname(_info(t)["location"]) for t in lazy])
    for t in model.graph.initializer:
        out.graph.initializer.append(t)
    for g in all_graphs(out.graph):
        for t in g.initializer:
            if is_lazy(t):
                info = _info(t)
                _set_location(t, os.path.relpath(info["location"], folder), int(info["offset"]),
                              int(info["length"]))
    return out, folder


__all__ = ["to_array", "is_lazy", "has_lazy", "stored_bytes", "open_external", "inline",
           "shell", "copy_except", "write_external", "runtime_proto", "EAGER_BYTES", "MAP_BYTES"]
