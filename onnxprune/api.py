"""The Python API: what users import and what the CLI calls.

    groups = onnxprune.analyze("model.onnx")
    result = onnxprune.prune("model.onnx", ratio=0.3, criterion="l2")
    result.save("pruned.onnx")
    report = onnxprune.validate("model.onnx", result.model, data="data.npz")
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import onnx

from .costs import count_macs, count_params
from .errors import OnnxPruneError
from .graph import GraphView
from .groups import Groups, analyze_model
from .calibration import calibrate
from .compensate import MODES, Compensation
from .compensate import compensate as run_compensation
from .importance import DATA_CRITERIA, calibration_requests, score
from .model import external_files, load, save, shapes_of
from .planner import Plan, plan_from_keep, plan_macs, plan_uniform
from .rewrite import apply
from . import invariants
from .validate import check_written, full_check


def analyze(model, *, input_shapes: dict | None = None, exclude=()) -> Groups:
    """Find every group of coupled channels. ``model``: a path or a ModelProto."""
    loaded = load(model)
    groups = analyze_model(loaded.model, shapes_of(loaded.model, input_shapes))
    groups.exclude(exclude)
    groups.source_path = loaded.path
    groups.external = loaded.external
    return groups


@dataclass
class PruneReport:
    criterion: str
    ratio: float
    params: dict
    macs: dict
    groups: list = field(default_factory=list)  # per group: id, channels, kept, members, frozen
    compensate: str = "none"
    calibration: dict | None = None  # samples, seconds, random, tensors

    def to_dict(self) -> dict:
        return {"criterion": self.criterion, "ratio": self.ratio, "compensate": self.compensate,
                "calibration": self.calibration, "params": self.params, "macs": self.macs,
                "groups": self.groups}


@dataclass
class PruneResult:
    model: onnx.ModelProto
    report: PruneReport
    groups: Groups = field(repr=False)
    plan: Plan = field(repr=False)
    compensation: Compensation | None = field(default=None, repr=False)

    def masked(self) -> onnx.ModelProto:
        """The full-size model with removed channels zeroed in every linear consumer
        (and the same compensation): what the pruned model computes exactly."""
        return apply(self.groups, self.plan.keep, masked=True, compensation=self.compensation)

    def save(self, path, external_data: bool | None = None) -> list[str]:
        """Write atomically; never over the input model or its external data."""
        if external_data is None:
            external_data = self.groups.external_data
        return save(self.model, path, external_data=external_data,
                    protect=external_files(self.groups.source_path), verify=check_written,
                    stored_external=self.groups.external)


def prune(model, ratio: float = 0.3, criterion: str = "l2", *, min_channels: int = 1,
          round_to: int = 1, exclude=(), input_shapes: dict | None = None, seed: int = 0,
          keep: dict | None = None, member_norm: str = "mean", reduction: str = "mean",
          calib=None, calib_samples: int | None = None, calib_batch: int = 16,
          compensate: str | None = None, progress: bool = False, macs_target: float | None = None,
          check: bool = True) -> PruneResult:
    """Remove channels from every prunable group and rewrite the model.

    ``keep`` (group id -> indices) overrides scoring and planning, for tests
    and for users who chose channels themselves. ``calib`` is any source
    ``calibration.load_data`` accepts; data criteria and compensation need it
    (without it they run on random inputs, with a warning). ``compensate``
    defaults to ``bias`` when calibration data is given, else ``none``.
    ``macs_target`` (pruned / original MACs) replaces ``ratio`` by the uniform
    ratio that meets that budget.
    """
    groups = analyze(model, input_shapes=input_shapes, exclude=exclude)
    if not groups.prunable:
        reasons = sorted({r for g in groups.groups for r in g.frozen})
        hint = f" ({reasons[0]}{'; ...' if len(reasons) > 1 else ''})" if reasons else ""
        raise OnnxPruneError(f"nothing to prune: all {len(groups.groups)} channel groups are "
                             f"frozen{hint}; run 'onnxprune analyze' for the reasons")
    if compensate is None:
        compensate = "bias" if calib is not None else "none"
    if compensate not in MODES:
        raise OnnxPruneError(f"unknown compensation '{compensate}' (choose from {', '.join(MODES)})")
    calibration = None
    if criterion in DATA_CRITERIA or compensate != "none":
        requests = calibration_requests(groups, gram=compensate == "lsq")
        calibration = calibrate(groups.model, calib, requests, samples=calib_samples,
                                batch=calib_batch, progress=progress)
    if keep is not None:
        plan = plan_from_keep(groups, keep)
    else:
        scores = score(groups, criterion, calibration=calibration, member_norm=member_norm,
                       reduction=reduction, seed=seed)
        if macs_target is not None:
            plan = plan_macs(groups, scores, macs_target, min_channels=min_channels, round_to=round_to)
            ratio = plan.ratio
        else:
            plan = plan_uniform(groups, scores, ratio, min_channels=min_channels, round_to=round_to)
    comp = run_compensation(groups, plan.keep, calibration, compensate)
    pruned = apply(groups, plan.keep, compensation=comp)
    invariants.check(groups.model, pruned)
    if check:
        full_check(pruned)
    after = GraphView(pruned, shapes_of(pruned, input_shapes))
    report = PruneReport(
        criterion="explicit" if keep is not None else criterion, ratio=ratio,
        compensate=compensate,
        calibration=None if calibration is None else {
            "samples": calibration.samples, "seconds": calibration.seconds,
            "random": calibration.random, "tensors": len(calibration.stats)},
        params={"before": groups.params_total, "after": count_params(pruned)},
        macs={"before": groups.macs, "after": count_macs(after)},
        groups=[{"id": g.id, "channels": g.channels,
                 "kept": plan.kept.get(g.id, (g.channels, g.channels))[0],
                 "members": g.members, "frozen": g.frozen} for g in groups.groups])
    return PruneResult(pruned, report, groups, plan, comp)


def same_file(a, b) -> bool:
    try:
        return os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)
