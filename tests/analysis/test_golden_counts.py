"""Golden MACs, parameters, prunable groups and prunable parameters for every
sample and fixture model.

MACs are computed here, independently of ``onnxprune.costs``: every tensor's
shape is observed in an onnxruntime run (batch 1), and each Conv /
ConvTranspose / Gemm / MatMul contributes the textbook formula. A rule whose
MACs drift, or that silently stops matching (fewer groups, fewer prunable
parameters), fails here.
"""
from __future__ import annotations

import glob
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import onnxprune
from tests.helpers.paths import ROOT

ROOT = ROOT
ZOO = sorted(glob.glob(os.path.join(ROOT, "models", "*.onnx")) +
             glob.glob(os.path.join(ROOT, "tests", "fixtures", "*.onnx")))

# model: (params, MACs at batch 1, prunable groups, prunable params)
GOLDEN = {
    "densenet_mnist": (48090, 15246720, 11, 48080),
    "mobilenet_mnist": (44082, 4096512, 14, 44070),
    "resnet_mnist": (175994, 20183936, 9, 175984),
    "unet_mnist": (116997, 20396544, 11, 116992),
    "hf_bert_dyn": (12117, 108640, 3, 9408),
    "hf_bert_ts": (11790, 108640, 2, 5312),
    "hf_mobilenetv2_dyn": (158226, 659488, 25, 158224),
    "hf_mobilenetv2_ts": (158356, 659488, 25, 158224),
    "hf_resnet_dyn": (4882, 320464, 12, 4872),
    "hf_resnet_ts": (4882, 320464, 12, 4872),
    "hf_vit_dyn": (15814, 256384, 2, 8288),
    "hf_vit_ts": (15541, 256384, 2, 8288),
    "mixed_dyn": (9601, 165988, 7, 9596),
    "mixed_ts": (9601, 165988, 7, 9596),
}
SEQ = 12  # token count for the text models (their export length)


def _feeds(model: onnx.ModelProto) -> dict:
    rng = np.random.default_rng(0)
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        dims = [1 if k == 0 and d is None else (SEQ if d is None else d) for k, d in enumerate(dims)]
        if vi.type.tensor_type.elem_type == onnx.TensorProto.INT64:
            out[vi.name] = rng.integers(0, 40, dims).astype(np.int64)
        else:
            out[vi.name] = rng.standard_normal(dims).astype(np.float32)
    return out


def _observed_shapes(model: onnx.ModelProto, feeds: dict) -> dict:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inferred = onnx.shape_inference.infer_shapes(m)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    names = [o for n in m.graph.node for o in n.output if o in types]
    known = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.helper.make_tensor_value_info(n, types[n], None) for n in names if n not in known)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    shapes = {n: v.shape for n, v in zip(outs, sess.run(outs, feeds))}
    shapes.update({k: v.shape for k, v in feeds.items()})
    return shapes


def _constants(model: onnx.ModelProto) -> dict:
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def independent_counts(model: onnx.ModelProto) -> tuple[int, int]:
    consts = _constants(model)
    shapes = _observed_shapes(model, _feeds(model))
    shape = lambda name: consts[name].shape if name in consts else shapes[name]  # noqa: E731
    params = sum(v.size for v in consts.values() if v.dtype.kind == "f")
    macs = 0
    for n in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Conv":
            macs += int(np.prod(shape(n.output[0]))) * int(np.prod(shape(n.input[1])[1:]))
        elif n.op_type == "ConvTranspose":
            macs += int(np.prod(shape(n.input[0]))) * int(np.prod(shape(n.input[1])[1:]))
        elif n.op_type == "Gemm":
            a = shape(n.input[0])
            macs += int(np.prod(shape(n.output[0]))) * (a[0] if attrs.get("transA") else a[1])
        elif n.op_type == "MatMul":
            macs += int(np.prod(shape(n.output[0]))) * shape(n.input[0])[-1]
    return params, macs


def _name(path: str) -> str:
    return os.path.basename(path)[:-5]


def test_every_zoo_model_has_golden_counts():
    assert sorted(GOLDEN) == sorted(_name(p) for p in ZOO)


@pytest.mark.parametrize("path", ZOO, ids=_name)
def test_params_and_macs_match_the_textbook_formula_and_the_golden_values(path):
    model = onnx.load(path)
    params, macs, _, _ = GOLDEN[_name(path)]
    assert independent_counts(model) == (params, macs)
    groups = onnxprune.analyze(model, data={k: v for k, v in _feeds(model).items()})
    assert (groups.params_total, groups.macs) == (params, macs)


@pytest.mark.parametrize("path", ZOO, ids=_name)
def test_prunable_groups_and_parameters_match_the_golden_values(path):
    _, _, n_groups, prunable = GOLDEN[_name(path)]
    groups = onnxprune.analyze(path)
    assert (len(groups.prunable), groups.params_prunable) == (n_groups, prunable)
