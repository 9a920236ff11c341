"""The stages of a prune, each a plain function from the earlier stages'
results and one ``PruneConfig`` to its own result:

    calibrate -> score -> make_plan -> compensate -> refit -> apply -> check -> make_report -> validation

(``loading``: preflight, load and analyze come before them; ``results``: save
after). The pipeline strings them together (``pipeline.run``); a later feature
can call them one by one: re-calibrate after a step, score a sweep, replay a
plan.
"""
from __future__ import annotations

import os
from dataclasses import asdict, replace

import onnx

from onnxprune.analysis.costs import count_macs, count_params
from onnxprune.analysis.groups import Groups
from onnxprune.calibration.run import calibrate as run_calibration
from onnxprune.calibration.sources import hold_out as split
from onnxprune.calibration.statistics import Calibration
from onnxprune.check.validate import Reference, Validation, full_check
from onnxprune.check.validate import compare as run_compare
from onnxprune.check.validate import reference as run_reference
from onnxprune.core.data import load_npz, rows, sample_count
from onnxprune.core.errors import OnnxPruneError
from onnxprune.core.graph import GraphView
from onnxprune.core.shapes import shapes as shape_info
from onnxprune.refit import edges
from onnxprune.refit.compensate import Compensation
from onnxprune.refit.compensate import compensate as run_compensation
from onnxprune.refit.datafree import moment_statistics
from onnxprune.refit.sequential import reconstruct
from onnxprune.rewrite import invariants
from onnxprune.rewrite.engine import apply as run_apply
from onnxprune.select import importance, planner
from onnxprune.select.planner import Plan
from onnxprune.stages.config import PruneConfig
from onnxprune.stages.results import PruneReport


def calibrate(groups: Groups, cfg: PruneConfig) -> Calibration | None:
    """One onnxruntime pass over the calibration data, when a data criterion or
    compensation needs it."""
    mode = cfg.resolved_compensation()
    chosen = cfg.keep is not None or cfg.plan is not None  # no scoring: only compensation needs data
    data_criterion = cfg.criterion in importance.DATA_CRITERIA or cfg.criterion in importance.GRAM_CRITERIA
    if (mode == "none" or cfg.calib is None) and (chosen or not data_criterion):
        return None  # compensation without data uses what the model states (``compensate``), not noise
    gram = mode == "lsq" or (not chosen and cfg.criterion in importance.GRAM_CRITERIA)
    requests = importance.calibration_requests(groups, gram=gram)
    batch = 1 if groups.shape_info is not None and groups.shape_info.fixed_batch else cfg.calib_batch
    return run_calibration(groups.model, cfg.calib, requests, samples=cfg.calib_samples,
                           batch=batch, progress=cfg.progress, input_shapes=known_inputs(groups, cfg),
                           batch_axes=cfg.batch_axes)


def known_inputs(groups: Groups, cfg: PruneConfig) -> dict:
    """Input dims known from the user or the data (for random inputs)."""
    return dict(groups.shape_info.inputs) if groups.shape_info is not None else dict(cfg.input_shapes or {})


def hold_out(groups: Groups, cfg: PruneConfig) -> tuple[PruneConfig, str | None]:
    """Validation never reuses calibration samples. With --calib and no --data,
    the last quarter of the calibration data (at most 256 samples) is held out
    for validation, and calibration stops before it. With --data and no
    --calib, the data serves both: its first part calibrates (data beats no
    data: see ``resolved_compensation``), its last quarter validates, labels
    included."""


    if cfg.calib is None and cfg.data is not None and cfg.calibrate_from_data \
            and isinstance(cfg.data, (str, os.PathLike)):

        feeds, labels = load_npz(cfg.data, groups.model, cfg.batch_axes)
        total = sample_count(feeds)
        if not cfg.validate:
            return replace(cfg, calib=feeds), "calibrating on --data"
        if total >= 4:
            k = max(1, min(total // 4, 256))
            calib, held = rows(feeds, slice(0, total - k)), rows(feeds, slice(total - k, None))
            if labels is not None:
                held["labels"] = labels[total - k:]
            note = (f"calibrating on the first {total - k} samples of --data and validating on "
                    f"the last {k}, held out; pass --calib for a separate calibration set")
            return replace(cfg, calib=calib, data=held), note
    if not cfg.validate or cfg.data is not None or cfg.calib is None:
        return cfg, None
    parts = split(cfg.calib, groups.model, batch_axes=cfg.batch_axes)
    if parts is None:
        return cfg, None
    limit, held = parts
    n = sample_count(held)
    samples = limit if cfg.calib_samples is None else min(cfg.calib_samples, limit)
    note = (f"validating on the last {n} calibration samples, held out of calibration "
            f"(calibrating on {samples}); pass --data for a separate validation set")
    return replace(cfg, data=held, calib_samples=samples), note


def score(groups: Groups, calibration: Calibration | None, cfg: PruneConfig):
    """The criterion's scores (None when the plan is given). With
    ``--allocate sensitivity`` the pipeline then prices removals by a sweep
    (``pipeline.run``: a search, above the stages)."""
    if cfg.keep is not None or cfg.plan is not None:
        return None
    return importance.score(groups, cfg.criterion, calibration=calibration, member_norm=cfg.normalize,
                            reduction=cfg.group_reduction, seed=cfg.seed)


def make_plan(groups: Groups, scores, cfg: PruneConfig, search=None) -> Plan:
    """The plan: replayed, given as keep-sets, or spent from a budget.
    ``search``: a callable that takes ``ratio -> Plan`` and returns the plan
    it settles on (the pipeline's latency search for ``--latency-target``);
    without one, the ratio, MACs or parameters budget is spent directly."""
    if cfg.plan is not None:
        result = planner.load_plan(cfg.plan, groups)
    elif cfg.keep is not None:
        result = planner.plan_from_keep(groups, cfg.keep)
    else:
        _refuse_nothing_to_prune(groups)
        budget = dict(allocate=cfg.allocate, min_channels=cfg.min_channels,
                      max_group_ratio=cfg.max_group_ratio, **cfg.rounding())
        if search is not None:
            result = search(lambda r: planner.plan_budget(groups, scores, ratio=r, macs_target=None, **budget))
        else:
            result = planner.plan_budget(groups, scores, ratio=cfg.ratio, macs_target=cfg.macs_target,
                                         params_target=cfg.params_target, **budget)
    if result.removed == 0:
        raise OnnxPruneError("the plan removes no channel (a no-op is not a prune): raise --ratio "
                             "or --macs-target's reduction, or lower --min-channels / --round-to")
    return result


def _refuse_nothing_to_prune(groups: Groups) -> None:
    if not groups.groups:  # no channel axis reached a weight: say what the weights sit in
        loose = sorted((w for w in groups.weight_status() if w.status == "none"), key=lambda w: -w.params)
        hint = f" (the largest weight, '{loose[0].tensor}', is {loose[0].why})" if loose else ""
        raise OnnxPruneError(f"nothing to prune: no weight is in a channel group{hint}; run "
                             f"'onnxprune analyze' for every weight")
    if not groups.prunable:
        reasons = sorted({r for g in groups.groups for r in g.frozen})
        hint = f" ({reasons[0]}{'; ...' if len(reasons) > 1 else ''})" if reasons else ""
        raise OnnxPruneError(f"nothing to prune: all {len(groups.groups)} channel groups are "
                             f"frozen{hint}; run 'onnxprune analyze' for the reasons")


def compensate(groups: Groups, plan: Plan, calibration, cfg: PruneConfig) -> Compensation:
    mode = cfg.resolved_compensation()
    if calibration is None and mode == "bias" and cfg.calib is None:
        # no data: the channel means the model states (BatchNorm statistics)

        calibration = moment_statistics(groups, importance.calibration_requests(groups))
        comp = run_compensation(groups, plan.keep, calibration, mode)
        comp.notes.extend(calibration.notes if calibration is not None else
                          ["no data and no BatchNorm statistics to compensate from: nothing was "
                           "compensated (pass --calib or --data)"])
        return comp
    return run_compensation(groups, plan.keep, calibration, mode)


def refit(groups: Groups, plan: Plan, comp: Compensation, calibration, cfg: PruneConfig):
    """Sequential reconstruction (``sequential.py``), when asked for: the
    consumers refitted stage by stage in graph order, each on the inputs the
    pruned model gives it; a group chosen by ``obs`` whose consumers share a
    stage is chosen again there. Updates the plan and compensation in place."""
    if not cfg.sequential or cfg.resolved_compensation() != "lsq" or calibration is None:
        return None

    explicit = cfg.keep is not None or cfg.plan is not None
    rep = reconstruct(groups, plan.keep, comp, calibration, cfg,
                      reselect=not explicit and cfg.criterion in importance.GRAM_CRITERIA)
    plan.kept = {gid: (len(idx), groups.group(gid).units) for gid, idx in plan.keep.items()}
    return rep


def apply(groups: Groups, plan: Plan, comp: Compensation | None, in_place: bool = False) -> onnx.ModelProto:
    """The pruned model. ``in_place`` rewrites the loaded model itself, with no
    second copy of the weights (when nothing later needs the original)."""
    return run_apply(groups, plan.keep, compensation=comp, in_place=in_place)


def check(original, pruned: onnx.ModelProto, cfg: PruneConfig, comp: Compensation | None = None) -> None:
    """The invariants (never bigger, same interface, nothing orphaned) against
    the original (a model or its ``invariants.summarize``), then the full
    checker, here in memory unless the model will be written: ``save`` checks
    it from disk, as written."""
    invariants.check(original.model if isinstance(original, Groups) else original, pruned,
                     allow_io_change=cfg.allow_io_change,
                     float_biases=comp.integer_biases() if comp is not None else 0)
    if cfg.check and not cfg.output:
        full_check(pruned)


def make_report(groups: Groups, plan: Plan, pruned: onnx.ModelProto, calibration, comp,
           cfg: PruneConfig) -> PruneReport:
    first = groups.shape_info.sample if groups.shape_info is not None else None
    info = shape_info(pruned, cfg.input_shapes, first)
    after = GraphView(pruned, info.dims)
    explicit = cfg.keep is not None or cfg.plan is not None
    return PruneReport(
        criterion="explicit" if explicit else cfg.criterion,
        ratio=plan.ratio if not explicit else None,
        compensate=cfg.resolved_compensation(),
        allocate="explicit" if explicit else (cfg.allocate or "uniform"),
        calibration=None if calibration is None else {
            "samples": calibration.samples, "seconds": calibration.seconds,
            "random": calibration.random, "tensors": len(calibration.stats)},
        params={"before": groups.params_total, "after": count_params(pruned)},
        macs={"before": groups.macs, "after": count_macs(after)},
        groups=[{"id": g.id, "channels": g.units,
                 "kept": plan.kept.get(g.id, (g.units, g.units))[0],
                 "members": g.members, "frozen": g.frozen} for g in groups.groups],
        compensation_skipped=list(comp.skipped) if comp is not None else [],
        internal_errors=list(groups.internal_errors),
        target=({"measure": "latency", "fraction": cfg.latency_target} if cfg.latency_target is not None else
                {"measure": "params", "fraction": cfg.params_target} if cfg.params_target is not None else
                {"measure": "macs", "fraction": cfg.macs_target} if cfg.macs_target is not None else None),
        notes=list(groups.shape_info.notes if groups.shape_info is not None else [])
        + (list(calibration.notes) if calibration is not None else []))


def reference(groups: Groups, cfg: PruneConfig) -> Reference | None:
    """Validation's first half: the original model runs on the validation
    inputs now, before ``apply`` rewrites it in place (so it is never copied)."""
    if not cfg.validate:
        return None
    if groups.consumed:
        raise OnnxPruneError("internal: the original model was already rewritten in place")
    return run_reference(groups.model, cfg.data, input_shapes=known_inputs(groups, cfg),
                         samples=cfg.samples, threads=cfg.threads, batch_axes=cfg.batch_axes)


def validation(groups: Groups, pruned: onnx.ModelProto, cfg: PruneConfig,
             ref: Reference | None = None, io: list | None = None) -> Validation | None:
    """Compare the pruned model with the original's ``reference`` (taken
    here when not given: the original must then still be unmodified);
    ``io``: the inputs and outputs it changed (``io_change``)."""
    if not cfg.validate:
        return None
    return run_compare(ref if ref is not None else reference(groups, cfg), pruned, io=io)


def edge_stage(groups: Groups, run_cfg: PruneConfig, criterion: str | None, ratio: float | None):
    """Zero weights of ``groups.model`` in place (``edges.py``), calibrating
    first when the criterion or the weight update needs data. -> (report,
    criterion used, whether weights were updated, calibration)."""

    data = run_cfg.calib is not None
    aliases = {None: "obs" if data else "magnitude", "l1": "magnitude", "l2": "magnitude"}
    criterion = aliases.get(criterion, criterion)
    update = run_cfg.resolved_compensation() == "lsq"
    calibration = None
    if data and (update or criterion in ("relief", "obs")):
        calibration = run_calibration(groups.model, run_cfg.calib,
                                      edges.requests(groups, gram=update or criterion == "obs"),
                                      samples=run_cfg.calib_samples, batch=run_cfg.calib_batch,
                                      progress=run_cfg.progress, input_shapes=known_inputs(groups, run_cfg))
    elif criterion in ("relief", "obs"):
        raise OnnxPruneError(f"edge criterion '{criterion}' needs calibration data (--calib or --data)")
    rep = edges.prune_edges(groups, calibration, ratio=ratio, pattern=edges.parse_pattern(run_cfg.pattern),
                            criterion=criterion, update=update,
                            cfg=run_cfg if run_cfg.sequential is not False else None)
    groups.consumed = True
    return rep, criterion, update, calibration


def edge_summary(rep) -> dict:
    return {"sparsity": rep.sparsity, "zeroed": rep.zeroed, "elements": rep.elements, "pattern": rep.pattern,
            "dense_bytes": rep.dense_bytes, "sparse_bytes": rep.sparse_bytes,
            "compressed_bytes": rep.compressed_bytes, "compressed_before": rep.compressed_before,
            "layers": [vars(x) for x in rep.layers],
            "sequential": None if rep.sequential is None else asdict(rep.sequential)}


