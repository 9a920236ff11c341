"""onnxruntime's own operators in the ONNX domain.

onnxruntime registers two normalisations in the *default* domain that ONNX
itself does not have at the opsets they are used with:

- ``LayerNormalization`` below opset 17 (ONNX adopted it at 17; onnxruntime
  has had it as a contrib op since opset 1);
- ``SimplifiedLayerNormalization`` (RMSNorm) at any opset.

onnxruntime's transformer optimizer (and optimum's O2+ exports, and
onnxruntime-genai's builder) write them into models exported at opsets 11-16.
onnxruntime runs those models; ``onnx.checker`` rejects them ("No Op
registered for LayerNormalization with domain_version of 14"), and so would
every check we run on the input and on what we write.

``declare(model)`` registers, in onnx's schema registry, just the schemas the
model needs and onnx lacks (at since-version 1, so an opset-17+ model still
resolves to ONNX's own LayerNormalization), with the shape inference of their
ONNX counterparts. It returns a note for the report, so the user knows the
model was checked against onnxruntime's dialect and not plain ONNX.
Registration is process-wide and idempotent; it only widens what the checker
accepts to what onnxruntime runs.
"""
from __future__ import annotations

import onnx
import onnx.defs as defs
from onnx.defs import OpSchema

from onnxprune.core.walk import all_graphs

_FLOATS = ["tensor(float)", "tensor(float16)", "tensor(double)", "tensor(bfloat16)"]
_STATS = ["tensor(float)", "tensor(double)", "tensor(bfloat16)"]

# op -> (inputs, outputs, the ONNX schema whose shape inference it shares, why)
_OPS = {
    "LayerNormalization": (("X", "Scale", "?B"), ("Y", "?Mean", "?InvStdDev"), ("LayerNormalization", 17),
                           "ONNX has it from opset 17"),
    "SimplifiedLayerNormalization": (("X", "scale"), ("Y", "?inv_std_var"), ("RMSNormalization", 23),
                                     "ONNX has no such op (its RMSNormalization is opset 23)"),
}
_registered: set[str] = set()


def _param(name: str, typ: str) -> OpSchema.FormalParameter:
    opt = OpSchema.FormalParameterOption.Optional if name.startswith("?") else OpSchema.FormalParameterOption.Single
    return OpSchema.FormalParameter(name.lstrip("?"), typ, param_option=opt)


def _schema(op: str) -> OpSchema:
    inputs, outputs, (twin, version), _ = _OPS[op]
    attr = lambda n, t: OpSchema.Attribute(n, t, "", required=False)  # noqa: E731
    schema = OpSchema(
        op, "", 1, doc=f"onnxruntime's {op} in the ONNX domain",
        inputs=[_param(n, "T") for n in inputs],
        outputs=[_param(n, "T" if i == 0 else "U") for i, n in enumerate(outputs)],
        type_constraints=[("T", _FLOATS, ""), ("U", _STATS, "")],
        attributes=[attr("axis", OpSchema.AttrType.INT), attr("epsilon", OpSchema.AttrType.FLOAT),
                    attr("stash_type", OpSchema.AttrType.INT)])
    try:
        schema.set_type_and_shape_inference_function(
            defs.get_schema(twin, version).get_type_and_shape_inference_function())
    except Exception:  # noqa: BLE001 - an older onnx without the twin: no inference, the probe observes shapes
        pass
    return schema


def _lacks(op: str, version: int) -> bool:
    """onnx has no schema of its own for ``op`` at ``version`` (ours, once
    registered, is the one with since-version 1)."""
    try:
        found = defs.get_schema(op, version, "")
    except Exception:  # noqa: BLE001 - onnx raises SchemaError
        return True
    return op in _registered and found.since_version == 1


def needed(model: onnx.ModelProto) -> dict[str, int]:
    """Default-domain ops of onnxruntime's dialect that onnx has no schema for
    at the model's opset: op -> that opset."""

    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if version is None:
        return {}
    used = {n.op_type for g in all_graphs(model.graph) for n in g.node if n.domain in ("", "ai.onnx")}
    return {op: version for op in _OPS if op in used and _lacks(op, version)}


def declare(model: onnx.ModelProto) -> list[str]:
    """Register the schemas ``model`` needs (see the module docstring); a
    note per op, empty when the model is plain ONNX."""
    notes = []
    for op, version in sorted(needed(model).items()):
        if op not in _registered:
            defs.register_schema(_schema(op))
            _registered.add(op)
        notes.append(f"the model uses onnxruntime's {op} in the ONNX domain at opset {version} "
                     f"({_OPS[op][3]}; onnxruntime's transformer optimizer writes it): it is checked "
                     "against onnxruntime's schema, and the written model keeps it")
    return notes
