"""Shapes of every tensor, from inference and, where inference stops, from data.

1. ONNX shape inference on the model's skeleton (no weights copied), with
   input dims fixed by the user (``--input-shape``) or by the data.
2. Where inference leaves a dim unknown (``None``, or one of the ``unk__N``
   symbols ONNX invents: a Pad or Reshape whose sizes are computed at run
   time), the model is run once in onnxruntime on one real sample and the
   unknown tensors are observed. When the batch is symbolic a second run with
   two samples tells which dims follow the batch (they stay symbolic) and
   whether the graph fixes batch 1 inside (a Reshape to a literal 1).

Nothing is guessed: without data, a probe is run only when every input dim
other than a symbolic batch is known, and then on random inputs of exactly
those dims.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune.core.data import concat, model_inputs, np_type, per_sample
from onnxprune.core.errors import OnnxPruneError
from onnxprune.core.graph import skeleton, tensor_shape
from onnxprune.core.runtime import exposing
from onnxprune.core.tensors import is_lazy
from onnxprune.core.walk import all_graphs

_MAX_PROBE_BYTES = 2**31 - (64 << 20)  # onnxruntime takes the in-memory weights as one protobuf


@dataclass
class Shapes:
    dims: dict  # tensor -> tuple of int / symbolic str / None
    probed: bool = False  # observed in onnxruntime
    fixed_batch: bool | None = None  # True: the graph only runs with batch 1 (None: not probed)
    notes: list = field(default_factory=list)
    inputs: dict = field(default_factory=dict)  # input dims fixed by the user or the data
    sample: dict | None = field(default=None, repr=False)  # the sample they came from


def _unknown(dim, known: frozenset = frozenset()) -> bool:
    """A dim inference did not determine: None, or a symbol it invented
    (``unk__N``, ``Gemm225_dim_0``...) rather than one the model's inputs declare."""
    return dim is None or (isinstance(dim, str) and dim not in known)


def _declared(model: onnx.ModelProto) -> frozenset:
    """The symbolic dims the model's inputs declare (output dims are derived
    from them; exporters name those freely)."""
    out = set()
    for vi in model.graph.input:
        if vi.type.HasField("tensor_type"):
            out.update(d.dim_param for d in vi.type.tensor_type.shape.dim if d.dim_param)
    return frozenset(out)


def fix_inputs(model: onnx.ModelProto, input_shapes: dict) -> None:
    """Give the named inputs of ``model`` (a skeleton, edited in place) fixed
    dims. A symbol a fixed dim replaces is that value wherever the model
    states it (ONNX: one name, one value): the value_info an optimizer kept
    for a fused op's output, which inference cannot recompute, says ``s50``
    for the sequence the input fixed at 12."""
    known = {i.name: i for i in model.graph.input}
    values: dict[str, int] = {}
    for name, dims in (input_shapes or {}).items():
        if name not in known:
            raise OnnxPruneError(f"--input-shape names '{name}', which is not a model input "
                                 f"(inputs: {', '.join(sorted(known))})")
        shape = known[name].type.tensor_type.shape.dim
        if len(shape) != len(dims):
            raise OnnxPruneError(f"--input-shape {name}: model input has rank {len(shape)}, "
                                 f"got {len(dims)} dims")
        for d, v in zip(shape, dims):
            if v is None:
                continue  # keep the model's own dim (a symbolic batch)
            if int(v) < 1:
                raise OnnxPruneError(f"--input-shape {name}: dims must be positive, got {list(dims)}")
            if d.dim_param:
                values[d.dim_param] = int(v)
            d.Clear()
            d.dim_value = int(v)
    if not values:
        return
    for g in all_graphs(model.graph):
        for vi in list(g.value_info) + list(g.output) + list(g.input):
            if vi.type.HasField("tensor_type"):
                for d in vi.type.tensor_type.shape.dim:
                    if d.dim_param in values:
                        v = values[d.dim_param]
                        d.Clear()
                        d.dim_value = v


def inferred(model: onnx.ModelProto, input_shapes: dict | None = None) -> dict:
    skel = skeleton(model)
    fix_inputs(skel, input_shapes or {})
    try:
        out = onnx.shape_inference.infer_shapes(skel, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort; unknown shapes freeze
        out = skel
    dims: dict = {}
    for g in all_graphs(out.graph):  # subgraphs too: their networks are analysed
        for vi in list(g.value_info) + list(g.input) + list(g.output):
            s = tensor_shape(vi)
            if s is not None:
                dims.setdefault(vi.name, s)
    return dims


def incomplete(model: onnx.ModelProto, dims: dict) -> list[str]:
    """Tensors nodes read or write whose shape inference left unknown."""
    consts = {t.name for t in model.graph.initializer}
    known = _declared(model)
    out = []
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        for name in list(node.input) + list(node.output):
            if not name or name in consts:
                continue
            s = dims.get(name)
            if s is None or any(_unknown(d, known) for d in s):
                out.append(name)
    return list(dict.fromkeys(out))


def probe_feeds(model: onnx.ModelProto, input_shapes: dict | None, sample: dict | None, seed: int = 0):
    """One sample to observe shapes with: the data's first sample, else random
    inputs when every dim but a symbolic batch is known. None when neither."""
    feeds = {}
    rng = np.random.default_rng(seed)
    for vi in model_inputs(model):
        if sample is not None:
            if vi.name not in sample:
                return None
            feeds[vi.name] = np.asanyarray(sample[vi.name])  # keeps where its samples are (``data.Along``)
            continue
        dims = list((input_shapes or {}).get(vi.name) or
                    [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim])
        if any(d is None or d < 1 for d in dims[1:]):
            return None
        if dims and (dims[0] is None or dims[0] < 1):
            dims[0] = 1
        dtype = np_type(vi.type.tensor_type.elem_type)
        if dtype is None:
            return None
        if dtype == np.bool_:
            feeds[vi.name] = np.ones(dims, dtype=bool)
        elif dtype.kind in "iu":
            feeds[vi.name] = np.zeros(dims, dtype=dtype)
        else:
            feeds[vi.name] = rng.standard_normal(dims).astype(dtype)
    return feeds


def _batch_symbol(model: onnx.ModelProto, input_shapes: dict | None) -> str | None:
    """The name of the symbolic leading dim of the inputs, if there is one."""
    for vi in model_inputs(model):
        given = (input_shapes or {}).get(vi.name)
        if given is not None and given and given[0] is not None:
            continue
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            return dims[0].dim_param or "batch"
    return None


def observe(model: onnx.ModelProto, feeds: dict, tensors: list[str]) -> dict:
    """Shapes of ``tensors`` in one onnxruntime run."""

    sess, names = exposing(model, tensors, threads=None, optimize=False)
    outputs = [o.name for o in sess.get_outputs()]
    values = sess.run(None, feeds)  # the model's own outputs too: the whole graph must run
    wanted = set(names)
    # a sequence or map (scikit-learn's ZipMap output) has no shape
    return {n: tuple(int(d) for d in v.shape) for n, v in zip(outputs, values)
            if n in wanted and isinstance(v, np.ndarray)}


def data_shapes(model: onnx.ModelProto, sample: dict | None, input_shapes: dict | None = None) -> dict:
    """Input dims taken from the data: every dim of the sample except a
    symbolic batch (kept symbolic); the user's ``--input-shape`` wins."""
    out = dict(input_shapes or {})
    if not sample:
        return out
    for vi in model_inputs(model):
        if vi.name in out or vi.name not in sample:
            continue
        arr = np.asarray(sample[vi.name])
        dims = vi.type.tensor_type.shape.dim
        if arr.ndim != len(dims) or not dims:
            continue
        fixed = [None if k == 0 and not d.HasField("dim_value") else int(arr.shape[k])
                 for k, d in enumerate(dims)]
        if any(v is not None and not d.HasField("dim_value") for v, d in zip(fixed, dims)):
            out[vi.name] = fixed
    return out


def shapes(model: onnx.ModelProto, input_shapes: dict | None = None, sample: dict | None = None,
           probe: bool = True) -> Shapes:
    """Every tensor's shape (see the module docstring). ``sample``: one input
    sample (name -> array with a leading batch axis of 1); its dims fix the
    inputs' symbolic dims other than the batch, unless ``input_shapes`` does."""
    input_shapes = data_shapes(model, sample, input_shapes)
    dims = inferred(model, input_shapes)
    result = Shapes(dims, inputs=input_shapes, sample=sample)
    missing = incomplete(model, dims)
    if not probe or not missing:
        return result
    # Weights still in their files (tensors.py) are mapped by onnxruntime, not serialised.
    size = sum(int(np.prod(t.dims, dtype=np.int64)) * 4 for t in model.graph.initializer if not is_lazy(t))
    if size > _MAX_PROBE_BYTES:
        result.notes.append("shapes not observed: the model is over 2 GB")
        return result
    feeds = probe_feeds(model, input_shapes, sample)
    if feeds is None:
        result.notes.append("some shapes are unknown and no data fixes them: pass --calib/--data "
                            "or --input-shape")
        return result
    try:
        one = observe(model, feeds, missing)
    except Exception as e:  # noqa: BLE001 - the original model fails on these inputs
        result.notes.append(f"shapes not observed: the model does not run on the probe inputs "
                            f"({str(e).splitlines()[0][:200]})")
        return result
    two = None
    batch_name = _batch_symbol(model, input_shapes)
    if batch_name is not None:
        doubled = {k: concat([v, v]) if per_sample(v) else v for k, v in feeds.items()}
        try:
            two = observe(model, doubled, missing)
            result.fixed_batch = False
        except Exception:  # noqa: BLE001 - a graph that fixes batch 1 inside
            result.fixed_batch = True
    known = _declared(model)
    for name, seen in one.items():
        old = dims.get(name)
        new = []
        for k, d in enumerate(seen):
            prev = old[k] if old is not None and len(old) == len(seen) else None
            varies = two is not None and name in two and len(two[name]) == len(seen) and two[name][k] != d
            if varies:
                if isinstance(prev, str) and not _unknown(prev, known):
                    new.append(prev)
                elif d == 1:
                    new.append(batch_name)
                elif two[name][k] == 2 * d:
                    new.append(f"{batch_name}*{d}")  # the batch times d (batch x heads merged)
                else:
                    new.append(f"{batch_name}~{name}:{k}")  # follows the batch some other way
            elif isinstance(prev, int) or (isinstance(prev, str) and not _unknown(prev, known)):
                new.append(prev)  # known to inference: a size, or a real symbolic dim
            else:
                new.append(d)
        dims[name] = tuple(new)
    result.probed = True
    return result


__all__ = ["Shapes", "shapes", "inferred", "incomplete", "fix_inputs", "probe_feeds", "observe"]
