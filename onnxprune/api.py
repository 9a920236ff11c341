"""The Python API: what users import. It builds a ``PruneConfig`` and runs the
same pipeline the CLI runs.

    groups = onnxprune.analyze("model.onnx")
    result = onnxprune.prune("model.onnx", ratio=0.3, criterion="l2")
    result.save("pruned.onnx")
    report = onnxprune.validate("model.onnx", result.model, data="data.npz")
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Union

import onnx

from onnxprune import pipeline, stages
from onnxprune.analysis.groups import Groups
from onnxprune.stages.config import PruneConfig
from onnxprune.stages.results import PruneReport, PruneResult

# Old keyword names, still accepted.
_ALIASES = {"member_norm": "normalize", "reduction": "group_reduction"}


ModelSource = Union[str, "os.PathLike[str]", onnx.ModelProto]


def analyze(model: ModelSource, *, input_shapes: dict | None = None, exclude: Iterable[str] = (),
            strict: bool | None = None, data: str | dict | None = None, prune: str | Iterable[str] = (),
            allow_io_change: bool = False) -> Groups:
    """Find every group of coupled channels. ``model``: a path or a ModelProto;
    ``data`` (an .npz or a dict of arrays) fixes the shapes inference cannot;
    ``prune`` and ``allow_io_change`` as for ``prune``."""
    cfg = PruneConfig(input_shapes=input_shapes, exclude=tuple(exclude), strict=strict, data=data,
                      prune=(prune,) if isinstance(prune, str) else tuple(prune), allow_io_change=allow_io_change)
    return stages.analyze(stages.load(model, cfg), cfg)


def prune(model: ModelSource, ratio: float = 0.3, criterion: str | None = None, *,
          config: PruneConfig | None = None, **options) -> PruneResult:
    """Remove channels from every prunable group and rewrite the model.

    ``options`` are the fields of ``PruneConfig`` (``macs_target``, ``calib``,
    ``compensate``, ``keep`` (group id -> indices), ``plan`` (a saved plan
    file), ``round_to``, ``validate``, ``data``, ``output``...). ``config``
    passes a whole ``PruneConfig`` instead. Unlike the CLI, the API does not
    validate unless asked (``validate=True``): call ``onnxprune.validate``
    when you need the comparison.
    """
    if config is None:
        for old, new in _ALIASES.items():
            if old in options:
                options[new] = options.pop(old)
        if "exclude" in options:
            options["exclude"] = tuple(options["exclude"])
        if isinstance(options.get("prune"), str):
            options["prune"] = (options["prune"],)
        config = PruneConfig.from_kwargs(ratio=ratio, criterion=criterion, **options)
    return pipeline.run(model, config)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


__all__ = ["analyze", "prune", "PruneConfig", "PruneReport", "PruneResult", "same_file"]
