"""The stages before any data: refuse outputs that would collide with an
input (``preflight``), read and check the model (``load``), find its channel
groups with the shapes the data or the user give (``analyze``).
"""
from __future__ import annotations

import os
from dataclasses import replace

import onnx

from onnxprune.analysis.build import analyze_model
from onnxprune.analysis.groups import Groups
from onnxprune.calibration.sources import first_sample
from onnxprune.check.validate import check_input
from onnxprune.core import dialect
from onnxprune.core import model as modelio
from onnxprune.core.data import feeds_and_labels, model_inputs, rows
from onnxprune.core.errors import OnnxPruneError
from onnxprune.core.shapes import shapes as shape_info
from onnxprune.stages.config import PruneConfig


# -- the stages ------------------------------------------------------------------------
def preflight(source, cfg: PruneConfig, files=()) -> None:
    """Refuse, before any work, outputs that collide with each other or with an
    input: the model (and, once loaded, its external-data ``files``), the
    calibration and validation data, a replayed plan."""
    targets = [p for p in (cfg.output, cfg.masked_output, cfg.report, cfg.save_plan) if p]
    if len({os.path.abspath(p) for p in targets}) != len(targets):
        raise OnnxPruneError("-o, --masked-output, --report and --save-plan must name different files")
    if not targets:
        return
    protect = set(files)
    if isinstance(source, (str, os.PathLike)) and os.path.exists(source):
        protect.add(os.path.realpath(source))
    for other in (cfg.calib, cfg.data, cfg.plan):
        if isinstance(other, (str, os.PathLike)) and os.path.exists(other):
            protect.add(os.path.realpath(other))
    for path in targets:
        modelio.check_writable(path, protect)


def load(source, cfg: PruneConfig) -> modelio.Loaded:
    """Read the model and check it first: a broken input is reported as the
    input's fault, never blamed on the pruned model."""
    loaded = modelio.load(source)
    loaded.notes = tuple(loaded.notes) + tuple(dialect.declare(loaded.model))
    check_input(loaded.model, f"{loaded.path or 'the input model'}: input model")
    if not model_inputs(loaded.model):
        # Then every tensor folds from the stored ones: nothing tells a weight
        # from an activation, no data can rank channels, no run can check them.
        raise OnnxPruneError(f"{loaded.path or 'the input model'}: has no graph inputs, so nothing it computes "
                             "depends on data: no input can rank its channels and no run can check a prune; "
                             "make the tensor it should read a graph input")
    return loaded


def sample(cfg: PruneConfig, model: onnx.ModelProto) -> dict | None:
    """One input sample from the user's data (validation data first, then
    calibration data), to take shapes from; None when there is none."""

    if isinstance(cfg.data, (str, os.PathLike, dict)):
        feeds, _ = feeds_and_labels(cfg.data, model, cfg.batch_axes)
        return rows(feeds, slice(0, 1))
    return first_sample(cfg.calib, model, cfg.batch_axes)


def analyze(loaded: modelio.Loaded, cfg: PruneConfig) -> Groups:
    info = shape_info(loaded.model, cfg.input_shapes, sample(cfg, loaded.model))
    info.notes[:0] = list(loaded.notes)
    groups = analyze_model(loaded.model, info.dims, strict=cfg.strict, allow_io=cfg.allow_io_change)
    groups = replace(groups, shape_info=info, source_path=loaded.path, external=loaded.external,
                     source_files=loaded.files)
    return groups.exclude(cfg.exclude).select(cfg.prune)


