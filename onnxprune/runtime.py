"""onnxruntime sessions: plain ones, and ones that also return intermediate
tensors (for calibration statistics and for observing shapes).

A model is serialised once for its session; intermediate outputs are added to
the proto only for that serialisation and removed again, so no copy of the
model is kept. Weights still in external files are not serialised at all:
onnxruntime maps them from their files (``serialised``).
"""
from __future__ import annotations

import onnx

from .errors import OnnxPruneError
from .graph import skeleton
from .tensors import runtime_proto


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
            folder: str | None = None):
    """A CPU session on a ModelProto, its serialised bytes (with the
    ``folder`` of its external data) or a path."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # Fatal only: every error comes back as an exception and is reported once, as
    # one line; onnxruntime's own log would print it again on stderr.
    opts.log_severity_level = 4
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
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
        data, folder = serialised(model)
    finally:
        for _ in added:
            model.graph.output.pop()
    sess = session(data, threads=threads, optimize=optimize, folder=folder)
    del data
    names = {o.name for o in sess.get_outputs()}
    return sess, [t for t in dict.fromkeys(tensors) if t in names]
