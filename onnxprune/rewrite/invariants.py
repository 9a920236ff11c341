"""What every pruned model must satisfy before it is written.

These are checked by the pipeline, not trusted to the reader's head: a
violation is a bug (or an unsupported case) caught before a wrong file
reaches the user.

- no more parameters, and no more weight bytes per dtype, than the input
  (but for copies of a small uniform constant, as long as the model's bytes
  shrink: see ``_uniform_copies``; integer indices are metadata);
- every graph input and output keeps its name, dtype and shape, unless the
  user allowed an interface change;
- no initializer is left unused that the input used.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.analysis.build import UNIFORM_LIMIT
from onnxprune.analysis.costs import count_params
from onnxprune.core.errors import InternalError
from onnxprune.core.tensors import METADATA_TYPES, is_metadata, to_array
from onnxprune.core.walk import all_graphs, read_names


def _numel(dims) -> int:
    return int(np.prod([int(d) for d in dims], dtype=np.int64)) if len(dims) else 1


def _tensors(model: onnx.ModelProto):
    for g in all_graphs(model.graph):
        yield from g.initializer
        for node in g.node:
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                        yield a.t


def weight_bytes(model: onnx.ModelProto) -> dict[str, int]:
    """Bytes of stored weights per dtype name. Small integer tensors (shape
    vectors, axes, split sizes) and the integer indices a Gather picks
    channels with (a shared input read per layer) are metadata, not
    weights, and are left out."""
    indices = {node.input[1] for g in all_graphs(model.graph) for node in g.node
               if node.op_type == "Gather" and len(node.input) > 1}
    out: dict[str, int] = {}
    for t in _tensors(model):
        n = _numel(t.dims)
        if is_metadata(t.data_type, n) or (t.data_type in METADATA_TYPES and t.name in indices):
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type) \
            if t.data_type != onnx.TensorProto.STRING else np.dtype(object)
        name = onnx.TensorProto.DataType.Name(t.data_type).lower()
        out[name] = out.get(name, 0) + n * max(1, dtype.itemsize)
    return out


def _signature(vi: onnx.ValueInfoProto):
    t = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
    if t is None:
        return (vi.type.WhichOneof("value"),)
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                 for d in t.shape.dim) if t.HasField("shape") else None
    return (onnx.TensorProto.DataType.Name(t.elem_type).lower(), dims)


def _unused_initializers(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    used = read_names(g) | {i.name for i in g.input}
    return {t.name for t in g.initializer if t.name not in used}


@dataclass(frozen=True)
class Summary:
    """What the invariants compare, taken from a model (small: no weights)."""

    params: int
    bytes: dict
    inputs: tuple
    outputs: tuple
    unused: frozenset
    names: frozenset = frozenset()  # initializer names


def summarize(model: onnx.ModelProto) -> Summary:

    inits = {t.name for t in model.graph.initializer}
    io = {kind: tuple((v.name, _signature(v)) for v in getattr(model.graph, kind) if v.name not in inits)
          for kind in ("input", "output")}
    return Summary(count_params(model), weight_bytes(model), io["input"], io["output"],
                   frozenset(_unused_initializers(model)),
                   frozenset(t.name for g in all_graphs(model.graph) for t in g.initializer))


def _uniform_copies(before: Summary, pruned: onnx.ModelProto) -> dict[str, int]:
    """Bytes per dtype of initializers the rewrite added whose elements are all
    equal. Exporters deduplicate constants by value, so one zero bias can
    serve a layer that is pruned and a norm that is not; each reader then
    gets its own slice (``groups._uniform``), which adds a few bytes of that
    dtype while the model as a whole shrinks."""

    out: dict[str, int] = {}
    for g in all_graphs(pruned.graph):
        for t in g.initializer:
            if t.name in before.names or _numel(t.dims) > UNIFORM_LIMIT or t.data_type in METADATA_TYPES:
                continue
            value = to_array(t).reshape(-1)
            if value.size and np.all(value == value[0]):
                name = onnx.TensorProto.DataType.Name(t.data_type).lower()
                out[name] = out.get(name, 0) + value.nbytes
    return out


def violations(original, pruned: onnx.ModelProto, *, allow_io_change: bool = False,
               slack: int = 0, float_biases: int = 0) -> list[str]:
    """Every invariant the pruned model breaks, as readable sentences.
    ``original``: the input model or its ``summarize``. ``slack``: parameters
    the model may gain (the masked model is full size and carries the biases
    compensation adds). ``float_biases``: float32 values compensation adds
    as biases of integer layers (a quantized model stores few floats): the
    float bytes may grow by that much, the total bytes still may not."""
    before = original if isinstance(original, Summary) else summarize(original)
    after = summarize(pruned)
    out = []
    if after.params > before.params + slack:
        out.append(f"the pruned model has more parameters than the input ({after.params} > {before.params})")
    copies = _uniform_copies(before, pruned) if before.names else {}
    if sum(after.bytes.values()) > sum(before.bytes.values()) + 8 * slack:
        copies = {}  # the model grew: no allowance
    total_after, total_before = sum(after.bytes.values()), sum(before.bytes.values())
    if float_biases and total_after > total_before + 8 * slack:
        out.append(f"the pruned model stores more weight bytes than the input ({total_after} > {total_before})")
    for dtype, size in sorted(after.bytes.items()):
        grown = 4 * float_biases if dtype == "float" else 0
        if size > before.bytes.get(dtype, 0) + 8 * slack + copies.get(dtype, 0) + grown:
            out.append(f"the pruned model stores more {dtype} weight bytes than the input "
                       f"({size} > {before.bytes.get(dtype, 0)})")
    for kind in ("input", "output"):
        a, b = getattr(before, f"{kind}s"), getattr(after, f"{kind}s")
        if [n for n, _ in a] != [n for n, _ in b]:
            out.append(f"graph {kind}s changed from {[n for n, _ in a]} to {[n for n, _ in b]}")
            continue
        for (name, sa), (_, sb) in zip(a, b):
            if sa != sb and not (allow_io_change and len(sa or ()) == len(sb or ())):
                out.append(f"graph {kind} '{name}' changed from {sa} to {sb}")
    unused = sorted(after.unused - before.unused)
    if unused:
        more = f" (+{len(unused) - 3} more)" if len(unused) > 3 else ""
        out.append(f"initializer(s) {', '.join(unused[:3])}{more} are no longer used")
    return out


def check(original, pruned: onnx.ModelProto, *, allow_io_change: bool = False, slack: int = 0,
          float_biases: int = 0) -> None:
    """Raise InternalError naming every broken invariant."""
    found = violations(original, pruned, allow_io_change=allow_io_change, slack=slack,
                       float_biases=float_biases)
    if found:
        raise InternalError("the pruned model breaks an invariant, so it was not written: "
                            + "; ".join(found))


__all__ = ["Summary", "summarize", "check", "violations", "weight_bytes"]
