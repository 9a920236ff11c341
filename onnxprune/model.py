"""Load and save models; nothing else in the package touches files.

Loading keeps everything the input had (opset, ir_version, producer,
metadata_props, doc strings) because later stages edit a copy of the same
proto. Saving is atomic: a temporary file in the target folder, then a rename,
so a failed run never leaves a partial output and never touches the input.
"""
from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass

import onnx
from google.protobuf.message import DecodeError

from .errors import OnnxPruneError
from .graph import infer_shapes

TWO_GB = 2**31 - 1


@dataclass
class Loaded:
    model: onnx.ModelProto
    path: str | None
    external_data: bool


def load(source, label: str | None = None) -> Loaded:
    """A path or a ModelProto -> a private copy of the model with all weights in memory."""
    if isinstance(source, onnx.ModelProto):
        return Loaded(copy.deepcopy(source), None, False)
    path = os.fspath(source)
    if not os.path.exists(path):
        raise OnnxPruneError(f"{path}: no such file")
    if os.path.isdir(path):
        raise OnnxPruneError(f"{path}: is a folder, not an ONNX model")
    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as e:
        raise OnnxPruneError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise OnnxPruneError(f"{path}: not an ONNX model (no graph nodes)")
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    if external:
        try:
            onnx.load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))
        except (OSError, ValueError) as e:
            raise OnnxPruneError(f"{path}: cannot read its external data ({e})") from None
    return Loaded(model, path, external)


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


def with_input_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> onnx.ModelProto:
    """A copy of the model whose named inputs have the given fixed dims."""
    if not shapes:
        return model
    known = {i.name for i in model.graph.input}
    for name in shapes:
        if name not in known:
            raise OnnxPruneError(f"--input-shape names '{name}', which is not a model input "
                                 f"(inputs: {', '.join(sorted(known))})")
    model = copy.deepcopy(model)
    for inp in model.graph.input:
        if inp.name in shapes:
            dims = inp.type.tensor_type.shape.dim
            if len(dims) != len(shapes[inp.name]):
                raise OnnxPruneError(f"--input-shape {inp.name}: model input has rank {len(dims)}")
            for d, v in zip(dims, shapes[inp.name]):
                d.Clear()
                d.dim_value = v
    return model


def shapes_of(model: onnx.ModelProto, input_shapes: dict | None = None) -> dict[str, tuple]:
    return infer_shapes(with_input_shapes(model, input_shapes or {}))


def save(model: onnx.ModelProto, path, external_data: bool = False) -> None:
    """Write atomically; weights go to ``<name>.data`` beside it when asked or needed."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise OnnxPruneError(f"{path}: folder {folder} does not exist")
    external_data = external_data or model.ByteSize() > TWO_GB
    fd, tmp = tempfile.mkstemp(prefix=".onnxprune-", suffix=".onnx", dir=folder)
    os.close(fd)
    data_name = os.path.basename(path) + ".data"
    tmp_data = os.path.join(folder, os.path.basename(tmp) + ".data")
    try:
        if external_data:
            model = copy.deepcopy(model)
            onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=os.path.basename(tmp_data), size_threshold=1024)
            # The model must name the final data file: rewrite locations, then save again.
            for t in model.graph.initializer:
                for entry in t.external_data:
                    if entry.key == "location":
                        entry.value = data_name
            with open(tmp, "wb") as f:
                f.write(model.SerializeToString())
            os.replace(tmp_data, os.path.join(folder, data_name))
        else:
            onnx.save_model(model, tmp)
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, tmp_data):
            if os.path.exists(leftover):
                os.remove(leftover)
        raise
