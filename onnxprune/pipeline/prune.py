"""The prune as a whole: ``run`` strings the stages together (``stages``) and,
where the config asks for it, the searches above them (``search``):
sensitivity prices for the budget split, a latency search for
``--latency-target``.

    load -> analyze -> hold_out -> calibrate -> score (-> price) -> make_plan (<- latency search)
         -> compensate -> refit -> reference -> apply -> check (-> repair) -> make_report -> validation -> save

(validation's ``reference`` run of the original comes just before ``apply``,
which then rewrites the loaded model in place: no copy of the weights; with
``--repair`` the original's onnxruntime session is opened there too, as the
repair's teacher). The
CLI and the Python API both call ``run``, so they can never do different
things.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, replace

from onnxprune.analysis.groups import Groups
from onnxprune.calibration.sources import known_count, rereadable
from onnxprune.core import model as modelio
from onnxprune.core.data import load_npz, sample_count
from onnxprune.core.errors import OnnxPruneError
from onnxprune.core.timing import Timings
from onnxprune.refit.edges import ratio_for_params
from onnxprune.rewrite import invariants, io_change
from onnxprune.search import sensitivity
from onnxprune.search.explain import explain
from onnxprune.search.latency import plan_latency
from onnxprune.select.planner import Plan
from onnxprune.stages.config import PruneConfig
from onnxprune.stages.loading import analyze, load, preflight
from onnxprune.stages.results import PruneReport, PruneResult, save
from onnxprune.stages.steps import (
    apply,
    calibrate,
    check,
    compensate,
    edge_stage,
    edge_summary,
    hold_out,
    known_inputs,
    make_plan,
    make_report,
    reference,
    refit,
    score,
    validation,
)

SWEEP_WORK = 4e12  # MACs a default sensitivity sweep may run (sensitivity.work: about a minute on two cores)
MIN_PRICE_SAMPLES = 4  # calibration samples below which the default allocation is uniform (the sweep holds one out)


def price(groups: Groups, scores, cfg: PruneConfig):
    """With ``--allocate sensitivity``: removals priced by measured damage, from
    a saved sweep or one run now on the calibration data; otherwise the scores
    as they are."""
    if scores is None or cfg.allocate != "sensitivity":
        return scores
    if cfg.sensitivity is not None:
        sweep = sensitivity.load(cfg.sensitivity)
    elif cfg.calib is not None:
        sweep = sensitivity.sweep(groups.model, calib=cfg.calib, criterion=cfg.criterion,
                                  compensate=cfg.compensate, input_shapes=known_inputs(groups, cfg),
                                  calib_samples=cfg.calib_samples, prune=cfg.prune, batch_axes=cfg.batch_axes)
    else:
        raise OnnxPruneError("--allocate sensitivity needs a sweep: --calib (one is run), or "
                             "--sensitivity FILE from 'onnxprune sensitivity'")
    return sensitivity.removal_costs(sweep, groups, scores)


def latency_search(groups: Groups, cfg: PruneConfig):
    """For ``--latency-target``: the ``search`` the plan stage takes (ratio ->
    plan, candidates timed in onnxruntime); None without a latency target."""
    if cfg.latency_target is None:
        return None

    def search(plan_at):
        if cfg.macs_target is not None or cfg.params_target is not None:
            raise OnnxPruneError("give one of --macs-target, --params-target and --latency-target")
        if cfg.allow_io_change:
            raise OnnxPruneError("--latency-target times candidates on the original's inputs, which "
                                 "--allow-io-change changes: use --macs-target or --params-target")
        result, found = plan_latency(groups, plan_at, cfg.latency_target, cfg)
        result.notes.append(f"--latency-target {cfg.latency_target:g}: the plan ran in "
                            f"x{found.achieved:.3f} of the original's time on this machine "
                            f"({len(found.tried)} candidates timed, original {found.original_ms:.3f} ms)")
        return result

    return search


def choose_allocation(groups: Groups, cfg: PruneConfig, asked: str | None) -> tuple[PruneConfig, str | None]:
    """With data and no --allocate: ``uniform`` from fewer than
    ``MIN_PRICE_SAMPLES`` calibration samples (the sweep needs one sample to
    measure on and a few to calibrate on); else ``sensitivity`` when its
    sweep (every prunable group at each default ratio, run on the held-out
    quarter of the calibration data, at least one sample) fits
    ``SWEEP_WORK`` multiply-accumulates, else the resolved ``global``. A
    sweep measured on one held-out sample already beats uniform: on real
    pretrained models with 6 calibration samples, at a MACs target of 0.75,
    it kept the output faithful on more of them than uniform (its error is
    measured, where a uniform split assumes every layer costs the same).
    Counted in samples and MACs, so the choice never depends on the
    machine's load. -> (config, a note)."""
    if cfg.allow_io_change and (asked == "sensitivity" or cfg.sensitivity):
        raise OnnxPruneError("--allocate sensitivity measures pruned models on the original's inputs, "
                             "which --allow-io-change changes: use --allocate global or uniform")
    if asked is not None or cfg.calib is None or cfg.allocate != "global" or not groups.macs \
            or not rereadable(cfg.calib) or cfg.keep is not None or cfg.plan is not None:
        return cfg, None
    samples = cfg.calib_samples or known_count(cfg.calib, groups.model)
    if samples is None and isinstance(cfg.calib, (str, os.PathLike)) and os.fspath(cfg.calib).endswith(".npz"):
        samples = sample_count(load_npz(cfg.calib, groups.model)[0])
    if not samples:
        return cfg, None
    if cfg.allow_io_change:
        return cfg, None  # a sweep would run pruned models on the original's inputs: global
    if samples < MIN_PRICE_SAMPLES:
        return replace(cfg, allocate="uniform"), (
            f"uniform allocation: {samples} calibration samples are too few to price removals "
            f"across groups (global and sensitivity allocation need {MIN_PRICE_SAMPLES})")
    held = max(1, min(samples // 4, 256))
    work = sensitivity.work(groups, sensitivity.DEFAULT_RATIOS, held)
    if work > SWEEP_WORK:
        return cfg, (f"global allocation by obs costs: a sensitivity sweep ({len(groups.prunable)} groups x "
                     f"{len(sensitivity.DEFAULT_RATIOS)} ratios) would run {work:.1e} MACs, over {SWEEP_WORK:.0e}; "
                     f"run 'onnxprune sensitivity' and pass --allocate sensitivity --sensitivity FILE")
    return replace(cfg, allocate="sensitivity"), None


def run_edges(source, cfg: PruneConfig) -> PruneResult:
    """``--mode edges``: load, analyse (for each layer's linear form),
    calibrate when the criterion or the weight update needs data, zero
    weights in place, check, validate, save."""
    if cfg.repair:
        raise OnnxPruneError("--repair fine-tunes the kept channels of a channel prune: not with --mode edges")
    if cfg.masked_output or cfg.save_plan or cfg.plan or cfg.keep is not None:
        raise OnnxPruneError("--mode edges writes no plan and no masked model (the pruned model is "
                             "its own masked model)")
    if cfg.macs_target is not None or cfg.latency_target is not None:
        raise OnnxPruneError("--mode edges takes --ratio, --pattern or --params-target (zeros change no "
                             "MACs or latency on dense kernels)")
    if cfg.params_target is not None and cfg.pattern:
        raise OnnxPruneError("--mode edges: --params-target or --pattern, not both (N:M fixes the sparsity)")
    preflight(source, cfg)
    loaded = load(source, cfg)
    groups = analyze(loaded, cfg)
    ratio = cfg.ratio if cfg.params_target is None else ratio_for_params(groups, cfg.params_target)
    run_cfg, held_note = hold_out(groups, cfg)
    original = invariants.summarize(groups.model)
    ref = reference(groups, run_cfg)
    rep, criterion, update, calibration = edge_stage(groups, run_cfg, cfg.criterion, ratio)
    pruned = groups.model
    check(original, pruned, run_cfg)
    report = PruneReport(criterion=criterion, ratio=None if cfg.pattern else ratio,
                         params={"before": groups.params_total, "after": groups.params_total - rep.zeroed},
                         macs={"before": groups.macs, "after": groups.macs},
                         compensate="lsq" if update else "none", allocate="per layer", notes=list(rep.notes),
                         target=None if cfg.params_target is None else
                         {"measure": "params", "fraction": cfg.params_target})
    report.edges = edge_summary(rep)
    if calibration is not None:
        report.calibration = {"samples": calibration.samples, "seconds": calibration.seconds,
                              "random": calibration.random, "tensors": len(calibration.stats)}
    if held_note:
        report.notes.append(held_note)
    result = PruneResult(pruned, report, groups, Plan(), None, config=cfg, source=source, summary=original)
    if ref is not None:
        result.validation = validation(groups, pruned, run_cfg, ref)
    result.written = save(result, cfg)
    return result


def _explain(groups: Groups, plan: Plan, comp, calibration, ref, cfg: PruneConfig) -> dict:
    """``--explain``: measured before the in-place rewrite (each candidate is a copy)."""
    if ref is None:
        raise OnnxPruneError("--explain measures on the validation samples: not with --no-validate")
    return explain(groups, plan, comp, calibration, cfg.resolved_compensation(), ref).to_dict()


def _repairer(groups: Groups, cfg: PruneConfig):
    """With ``--repair``: everything that can refuse is checked before the
    prune (torch present, data re-readable, every op with a differentiable
    rule), so a user never waits for a prune the repair then refuses.
    -> (the repair module, the calibration batches) or None."""
    if not cfg.repair:
        return None
    try:
        from onnxprune.repair import interpret, train
    except ImportError:
        raise OnnxPruneError("--repair needs torch: pip install 'onnxprune[repair]'") from None
    interpret.require_rules(groups.model)
    one = groups.shape_info is not None and bool(groups.shape_info.fixed_batch)
    return train, train.calibration_batches(cfg.calib, groups.model, cfg.calib_samples, cfg.batch_axes, one)


def run(source, cfg: PruneConfig) -> PruneResult:
    """Every stage in order."""
    if cfg.mode == "edges":
        return run_edges(source, cfg)
    if cfg.mode != "channels":
        raise OnnxPruneError(f"unknown mode '{cfg.mode}' (channels or edges)")
    if (cfg.edge_ratio is not None or cfg.pattern is not None) and cfg.masked_output:
        raise OnnxPruneError("--masked-output shows channels only: not with --edge-ratio or --pattern")
    t = Timings()
    with t.stage("load"):
        preflight(source, cfg)
        loaded = load(source, cfg)
        if loaded.external:
            preflight(source, cfg, loaded.files)
    with t.stage("analyze"):
        groups = analyze(loaded, cfg)
        run_cfg, held_note = hold_out(groups, cfg)
        run_cfg = run_cfg.resolved()
        repairer = _repairer(groups, run_cfg)
        run_cfg, allocation_note = choose_allocation(groups, run_cfg, cfg.allocate)
    with t.stage("calibrate"):
        calibration = calibrate(groups, run_cfg)
    with t.stage("score"):
        scores = score(groups, calibration, run_cfg)
    if run_cfg.allocate == "sensitivity":
        with t.stage("price"):
            scores = price(groups, scores, run_cfg)
    with t.stage("plan"):
        plan = make_plan(groups, scores, run_cfg, search=latency_search(groups, run_cfg))
    with t.stage("compensate"):
        comp = compensate(groups, plan, calibration, run_cfg)
    with t.stage("refit"):
        seq = refit(groups, plan, comp, calibration, run_cfg)
    io = io_change.changed(groups, plan.keep) if cfg.allow_io_change else []
    original = invariants.summarize(groups.model)
    # The original's half of validation runs first; then the loaded model is
    # rewritten in place, never copied (masked() re-derives the original from
    # the source).
    with t.stage("reference"):
        ref = reference(groups, run_cfg)
    explained = None
    if cfg.explain:
        with t.stage("explain"):
            explained = _explain(groups, plan, comp, calibration, ref, run_cfg)
    teacher = repairer[0].Teacher(groups.model, run_cfg.threads) if repairer else None
    with t.stage("apply"):
        pruned = apply(groups, plan, comp, in_place=True)
    with t.stage("check"):
        check(original, pruned, run_cfg, comp)
    repaired = None
    if repairer:
        with t.stage("repair"):
            repaired = repairer[0].repair(pruned, repairer[1], teacher, cfg.repair, seed=cfg.seed)
    rep_edges = None
    if cfg.edge_ratio is not None or cfg.pattern is not None:
        with t.stage("edges"):  # channels first, then edge sparsity on what is left (its own analysis)
            after = analyze(modelio.Loaded(pruned, None, groups.external, groups.source_files), run_cfg)
            rep_edges, _, _, _ = edge_stage(after, replace(run_cfg, criterion=None), None, cfg.edge_ratio)
            pruned = after.model
            check(original, pruned, run_cfg, comp)
    report_start = time.perf_counter()
    result = PruneResult(pruned, make_report(groups, plan, pruned, calibration, comp, run_cfg), groups,
                         plan, comp, config=cfg, source=source, summary=original, io=io)
    result.report.io_changes = [c.to_dict() for c in io]
    result.report.explain = explained
    if repaired is not None:
        result.report.repair = asdict(repaired)
        result.report.notes.extend(repaired.notes)
    if cfg.allow_io_change and not io:
        result.report.notes.append("--allow-io-change: no input or output changed size")
    if rep_edges is not None:
        result.report.edges = edge_summary(rep_edges)
        result.report.notes.extend(rep_edges.notes)
    if held_note:
        result.report.notes.append(held_note)
    if allocation_note:
        result.report.notes.append(allocation_note)
    if run_cfg.calib is None and cfg.keep is None and cfg.plan is None and cfg.criterion is None:
        result.report.notes.append(
            "pruned without data: channels chosen by weight magnitude (l2), nothing compensated. "
            "Calibration data (--calib or --data, a few hundred real inputs) lets onnxprune choose the "
            "channels the next layers can make up for and refit them: on the sample models that kept "
            "all but 0.2 points of accuracy where weights alone lost 60 (benchmarks/fidelity.py --ablation)")
    result.report.notes.extend(plan.notes)
    approx = [g for g in groups.groups if g.approximate and plan.kept.get(g.id, (1, 1))[0] < g.units]
    if approx:
        result.report.notes.append(
            f"{len(approx)} pruned group(s) pass a dynamic quantization (DynamicQuantizeLinear): its "
            "scale comes from the kept channels' range, so where a removed channel held the extreme the "
            "kept ones are quantized finer and the pruned model is not exactly the masked one; the "
            "validation measures the real error")
    result.report.notes.extend(comp.notes)
    if seq is not None:
        result.report.sequential = asdict(seq)
        result.report.notes.extend(seq.notes)
    # A model with external data (possibly GBs) is validated from its output
    # files as written, inside save: onnxruntime then maps the weights from
    # disk instead of holding a copy of those in memory.
    deferred = ref is not None and bool(cfg.output) and groups.external_data
    t.add("report", time.perf_counter() - report_start)
    result.report.timings = t  # save adds itself before it writes the report
    if ref is not None and not deferred:
        with t.stage("validate"):
            result.validation = validation(groups, pruned, run_cfg, ref, io=io)
    result.written = save(result, cfg, ref if deferred else None)
    return result


__all__ = ["run", "run_edges", "price", "latency_search", "choose_allocation", "SWEEP_WORK", "MIN_PRICE_SAMPLES"]
