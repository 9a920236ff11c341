"""onnxruntime sessions: plain ones, and ones that also return intermediate
tensors (for calibration statistics and for observing shapes).

A model is serialised once for its session; intermediate outputs are added to
the proto only for that serialisation and removed again, so no copy of the
model is kept.
"""
from __future__ import annotations

import onnx

from .errors import OnnxPruneError
from .graph import skeleton


def session(model: onnx.ModelProto | bytes | str, threads: int | None = 1, optimize: bool = True):
    """A CPU session on a ModelProto, its serialised bytes or a path."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    try:
        return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises several unrelated types
        raise OnnxPruneError(f"onnxruntime cannot load the model: {str(e).splitlines()[0]}") from None


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


def exposing(model: onnx.ModelProto, tensors, threads: int | None = None, optimize: bool = True):
    """(session, exposed names): a session whose outputs are the model's own
    outputs followed by ``tensors`` (those that can be typed)."""
    types = tensor_types(model)
    present = {o.name for o in model.graph.output}
    added = []
    for t in dict.fromkeys(tensors):
        if t in present:
            continue
        if t in types:
            model.graph.output.append(onnx.helper.make_tensor_value_info(t, types[t], None))
            added.append(t)
    try:
        data = model.SerializeToString()
    finally:
        for _ in added:
            model.graph.output.pop()
    sess = session(data, threads=threads, optimize=optimize)
    del data
    names = {o.name for o in sess.get_outputs()}
    return sess, [t for t in dict.fromkeys(tensors) if t in names]
