"""One pipeline of named stages, driven by one ``PruneConfig``:

    load -> analyze -> calibrate -> score -> plan -> compensate -> apply -> check -> validate -> save

(validation's ``reference`` run of the original comes just before ``apply``,
which then rewrites the loaded model in place: no copy of the weights).

The CLI and the Python API both call ``run`` (so they can never do different
things), and each stage is a plain function from the previous stages' results
to its own, so a later feature can call them one by one: re-calibrate after a
step, score a sweep, replay a plan.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import onnx

from . import dialect, importance, invariants, io_change, model as modelio, planner
from .calibration import Calibration
from .calibration import calibrate as run_calibration
from .compensate import MODES, Compensation
from .compensate import compensate as run_compensation
from .costs import count_macs, count_params
from .data import model_inputs, rows, sample_count
from .errors import OnnxPruneError
from .graph import GraphView
from .groups import Groups, analyze_model
from .planner import Plan
from .shapes import shapes as shape_info
from .rewrite import apply as run_apply
from .validate import Validation, check_input, check_written, full_check
from .validate import Reference
from .validate import compare as run_compare
from .validate import reference as run_reference


AUTO_ROUND = (8, 16)  # the default rounding: multiples of 8, in groups of 16 units or more


@dataclass
class PruneConfig:
    """Everything a prune is asked to do (the CLI's flags, the API's keywords)."""

    # what to remove
    mode: str = "channels"  # or "edges": single weights (``edges.py``)
    pattern: str | None = None  # N:M weight sparsity, like "2:4" (mode="edges", or after the channels)
    edge_ratio: float | None = None  # with mode="channels": then zero this fraction of each layer's weights
    ratio: float = 0.3
    macs_target: float | None = None
    params_target: float | None = None  # keep about this fraction of the parameters
    latency_target: float | None = None  # run in at most this fraction of the time (measured, ``latency.py``)
    sensitivity: str | None = None  # a sweep (``onnxprune sensitivity --out/--json``) for allocate="sensitivity"
    criterion: str | None = None  # None: "obs" with calibration data, else "l2" (``resolved``)
    group_reduction: str = "mean"
    normalize: str = "mean"
    min_channels: int = 1
    round_to: int | None = None  # None: multiples of 8 in groups of 16+ units (AUTO_ROUND); 1: exact
    allocate: str | None = None  # how a budget is spread over groups (planner.ALLOCATIONS); None: "uniform"
    max_group_ratio: float = 0.9  # with allocate="global": no group loses more than this
    calibrate_from_data: bool = True  # --data without --calib: calibrate on its first part
    exclude: tuple = ()
    allow_io_change: bool = False  # a state carried from an input to an output (a KV cache) may shrink
    prune: tuple = ()  # only these kinds of groups: "heads" (multi-position units), "neurons"; () = all
    keep: dict | None = None  # explicit plan: group id -> kept units
    plan: str | None = None  # a saved plan file to replay
    seed: int = 0
    # data
    calib: object = None
    calib_samples: int | None = None
    calib_batch: int = 16
    compensate: str | None = None  # None: "lsq" with calibration data, else "none"
    sequential: bool | None = None  # refit consumers stage by stage on the pruned model's inputs (``sequential.py``)
    input_shapes: dict | None = None
    batch_axes: dict | None = None  # input -> the axis holding its samples (--batch-axis), where not axis 0
    # checks
    strict: bool | None = None  # None: the ONNXPRUNE_STRICT environment variable
    check: bool = True
    validate: bool = False
    data: object = None
    samples: int = 8
    threads: int = 1
    progress: bool = False
    # outputs (written together, all or nothing)
    output: str | None = None
    masked_output: str | None = None
    report: str | None = None
    save_plan: str | None = None

    def rounding(self) -> dict:
        """How kept counts are rounded: ``--round-to N`` rounds every group of
        N units or more; by default, multiples of 8 in groups of 16 units or
        more (onnxruntime's blocked NCHWc conv kernels want channel counts
        that are multiples of 8 on AVX2: exact counts ran up to 2x slower
        than the unpruned model, rounded ones never slower, in
        benchmarks/fidelity.py --ablation; a group of 8 to 15 units rounded
        could only keep 8, so it stays exact). The planner rounds each group
        up or down so that the budget still holds (``planner.round_to_budget``)."""
        if self.round_to is None:
            return {"round_to": AUTO_ROUND[0], "round_from": AUTO_ROUND[1]}
        return {"round_to": self.round_to, "round_from": None}

    def resolved(self) -> PruneConfig:
        """The defaults that depend on the data, filled in. With calibration
        data: the ``obs`` criterion (channels chosen by the error left after
        least-squares compensation), ``lsq`` compensation refitted
        sequentially; without: ``l2`` and none (measured in
        benchmarks/fidelity.py)."""
        from dataclasses import replace

        data = self.calib is not None
        criterion = self.criterion or ("obs" if data else "l2")
        # With data, global allocation (obs prices); ``run`` upgrades it to
        # sensitivity (prices measured by a sweep) where the sweep is
        # affordable (``choose_allocation``). Both met every goal on the
        # samples where uniform missed two (benchmarks/fidelity.py --allocate).
        allocate = self.allocate or ("global" if data else "uniform")
        # Sequential reconstruction refits the lsq compensation stage by stage
        # (benchmarks/fidelity.py: it kept more accuracy on every sample model).
        sequential = self.sequential if self.sequential is not None else data
        return replace(self, criterion=criterion, compensate=self.resolved_compensation(), allocate=allocate,
                       sequential=sequential)

    def resolved_compensation(self) -> str:
        mode = self.compensate
        if mode is None:
            mode = "lsq" if self.calib is not None else "none"
        if mode not in MODES:
            raise OnnxPruneError(f"unknown compensation '{mode}' (choose from {', '.join(MODES)})")
        return mode

    @classmethod
    def from_kwargs(cls, **kwargs) -> PruneConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown prune option(s): {', '.join(unknown)}")
        return cls(**kwargs)


@dataclass
class PruneReport:
    criterion: str
    ratio: float | None
    params: dict
    macs: dict
    groups: list = field(default_factory=list)  # per group: id, channels, kept, members, frozen
    compensate: str = "none"
    calibration: dict | None = None  # samples, seconds, random, tensors
    compensation_skipped: list = field(default_factory=list)
    internal_errors: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # what the user should know about how it was done
    allocate: str = "uniform"  # how the budget was spread over the groups
    sequential: dict | None = None  # stages, refitted consumers, re-selected groups, seconds, runs
    target: dict | None = None  # the budget asked for: {"measure": "macs"|"params", "fraction": F}
    auto: dict | None = None  # the --auto trajectory (``auto.AutoRun.to_dict``)
    edges: dict | None = None  # with --mode edges: sparsity, layers, sizes (``edges.EdgeReport``)
    io_changes: list = field(default_factory=list)  # with --allow-io-change: inputs/outputs that shrank

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PruneResult:
    model: onnx.ModelProto
    report: PruneReport
    groups: Groups = field(repr=False)
    plan: Plan = field(repr=False)
    compensation: Compensation | None = field(default=None, repr=False)
    validation: Validation | None = None
    config: PruneConfig = field(default_factory=PruneConfig, repr=False)
    io: list = field(default_factory=list, repr=False)  # io_change.Changed: inputs/outputs that shrank
    written: list = field(default_factory=list)
    source: object = field(default=None, repr=False)  # the path or ModelProto pruned
    summary: object = field(default=None, repr=False)  # invariants.summarize of the original

    def masked(self) -> onnx.ModelProto:
        """The full-size model with removed channels zeroed in every linear consumer
        (and the same compensation): what the pruned model computes exactly.

        The prune rewrote its copy of the model in place, so the source is
        analysed again: group ids are stable, so the same plan applies."""
        groups = self.groups
        if groups.consumed:
            groups = analyze(load(self.source, self.config), self.config)
        return run_apply(groups, self.plan.keep, masked=True, compensation=self.compensation)

    def save(self, path, external_data: bool | None = None) -> list[str]:
        """Write atomically, checked as written; never over the input model or its data."""
        if external_data is None:
            external_data = self.groups.external_data
        with _writing(path):
            return modelio.save(self.model, path, external_data=external_data,
                                protect=set(self.groups.source_files),
                                verify=_checked(self), stored_external=self.groups.external)

    def to_dict(self) -> dict:
        out = self.report.to_dict()
        if self.validation is not None:
            out.update(self.validation.to_dict())
        return out


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
    from .calibration import first_sample
    from .data import feeds_and_labels

    if isinstance(cfg.data, (str, os.PathLike, dict)):
        feeds, _ = feeds_and_labels(cfg.data, model, cfg.batch_axes)
        return rows(feeds, slice(0, 1))
    return first_sample(cfg.calib, model, cfg.batch_axes)


def analyze(loaded: modelio.Loaded, cfg: PruneConfig) -> Groups:
    info = shape_info(loaded.model, cfg.input_shapes, sample(cfg, loaded.model))
    groups = analyze_model(loaded.model, info.dims, strict=cfg.strict, allow_io=cfg.allow_io_change)
    info.notes[:0] = list(loaded.notes)
    groups.shape_info = info
    groups.exclude(cfg.exclude)
    groups.select(cfg.prune)
    groups.source_path = loaded.path
    groups.external = loaded.external
    groups.source_files = loaded.files
    return groups


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
                           batch=batch, progress=cfg.progress, input_shapes=_known_inputs(groups, cfg),
                           batch_axes=cfg.batch_axes)


def _known_inputs(groups: Groups, cfg: PruneConfig) -> dict:
    """Input dims known from the user or the data (for random inputs)."""
    return dict(groups.shape_info.inputs) if groups.shape_info is not None else dict(cfg.input_shapes or {})


def hold_out(groups: Groups, cfg: PruneConfig) -> tuple[PruneConfig, str | None]:
    """Validation never reuses calibration samples. With --calib and no --data,
    the last quarter of the calibration data (at most 256 samples) is held out
    for validation, and calibration stops before it. With --data and no
    --calib, the data serves both: its first part calibrates (data beats no
    data: see ``resolved_compensation``), its last quarter validates, labels
    included."""
    from dataclasses import replace

    from .calibration import hold_out as split

    if cfg.calib is None and cfg.data is not None and cfg.calibrate_from_data \
            and isinstance(cfg.data, (str, os.PathLike)):
        from .data import load_npz

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


SWEEP_WORK = 2e12  # MACs a default sensitivity sweep may run (jobs x MACs x held-out samples)
MIN_PRICE_SAMPLES = 32  # calibration samples below which the default allocation is uniform


def choose_allocation(groups: Groups, cfg: PruneConfig, asked: str | None) -> tuple[PruneConfig, str | None]:
    """With data and no --allocate: ``uniform`` from fewer than
    ``MIN_PRICE_SAMPLES`` calibration samples (prices measured on a handful
    of samples are noise: on the devset's 6-sample sets uniform kept more
    than global on 7 of 10 models); else ``sensitivity`` when its sweep
    (every prunable group at each default ratio, run on the held-out quarter
    of the calibration data) fits ``SWEEP_WORK`` multiply-accumulates, else
    the resolved ``global``. Counted in samples and MACs, so the choice
    never depends on the machine's load. -> (config, a note)."""
    from dataclasses import replace

    from .calibration import _known_count, _rereadable
    from .sensitivity import DEFAULT_RATIOS

    if cfg.allow_io_change and (asked == "sensitivity" or cfg.sensitivity):
        raise OnnxPruneError("--allocate sensitivity measures pruned models on the original's inputs, "
                             "which --allow-io-change changes: use --allocate global or uniform")
    if asked is not None or cfg.calib is None or cfg.allocate != "global" or not groups.macs \
            or not _rereadable(cfg.calib) or cfg.keep is not None or cfg.plan is not None:
        return cfg, None
    samples = cfg.calib_samples or _known_count(cfg.calib, groups.model)
    if samples is None and isinstance(cfg.calib, (str, os.PathLike)) and os.fspath(cfg.calib).endswith(".npz"):
        from .data import load_npz

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
    work = len(groups.prunable) * len(DEFAULT_RATIOS) * float(groups.macs) * held
    if work > SWEEP_WORK:
        return cfg, (f"global allocation by obs costs: a sensitivity sweep ({len(groups.prunable)} groups x "
                     f"{len(DEFAULT_RATIOS)} ratios) would run {work:.1e} MACs, over {SWEEP_WORK:.0e}; "
                     f"run 'onnxprune sensitivity' and pass --allocate sensitivity --sensitivity FILE")
    return replace(cfg, allocate="sensitivity"), None


def score(groups: Groups, calibration: Calibration | None, cfg: PruneConfig):
    if cfg.keep is not None or cfg.plan is not None:
        return None
    scores = importance.score(groups, cfg.criterion, calibration=calibration, member_norm=cfg.normalize,
                              reduction=cfg.group_reduction, seed=cfg.seed)
    if cfg.allocate == "sensitivity":
        # removals priced by measured damage: a saved sweep, or one run now
        from . import sensitivity

        if cfg.sensitivity is not None:
            sweep = sensitivity.load(cfg.sensitivity)
        elif cfg.calib is not None:
            sweep = sensitivity.sweep(groups.model, calib=cfg.calib, criterion=cfg.criterion,
                                      compensate=cfg.compensate, input_shapes=_known_inputs(groups, cfg),
                                      calib_samples=cfg.calib_samples, prune=cfg.prune,
                                      batch_axes=cfg.batch_axes)
        else:
            raise OnnxPruneError("--allocate sensitivity needs a sweep: --calib (one is run), or "
                                 "--sensitivity FILE from 'onnxprune sensitivity'")
        scores = sensitivity.removal_costs(sweep, groups, scores)
    return scores


def plan(groups: Groups, scores, cfg: PruneConfig) -> Plan:
    if cfg.plan is not None:
        result = planner.load_plan(cfg.plan, groups)
    elif cfg.keep is not None:
        result = planner.plan_from_keep(groups, cfg.keep)
    else:
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
        budget = dict(allocate=cfg.allocate, min_channels=cfg.min_channels,
                      max_group_ratio=cfg.max_group_ratio, **cfg.rounding())
        if cfg.latency_target is not None:
            if cfg.macs_target is not None or cfg.params_target is not None:
                raise OnnxPruneError("give one of --macs-target, --params-target and --latency-target")
            if cfg.allow_io_change:
                raise OnnxPruneError("--latency-target times candidates on the original's inputs, which "
                                     "--allow-io-change changes: use --macs-target or --params-target")
            from .latency import plan_latency

            result, search = plan_latency(groups, lambda r: planner.plan_budget(
                groups, scores, ratio=r, macs_target=None, **budget), cfg.latency_target, cfg)
            result.notes.append(f"--latency-target {cfg.latency_target:g}: the plan ran in "
                                f"x{search.achieved:.3f} of the original's time on this machine "
                                f"({len(search.tried)} candidates timed, original "
                                f"{search.original_ms:.3f} ms)")
        else:
            result = planner.plan_budget(groups, scores, ratio=cfg.ratio, macs_target=cfg.macs_target,
                                         params_target=cfg.params_target, **budget)
    if result.removed == 0:
        raise OnnxPruneError("the plan removes no channel (a no-op is not a prune): raise --ratio "
                             "or --macs-target's reduction, or lower --min-channels / --round-to")
    return result


def compensate(groups: Groups, the_plan: Plan, calibration, cfg: PruneConfig) -> Compensation:
    mode = cfg.resolved_compensation()
    if calibration is None and mode == "bias" and cfg.calib is None:
        # no data: the channel means the model states (BatchNorm statistics)
        from .datafree import moment_statistics

        calibration = moment_statistics(groups, importance.calibration_requests(groups))
        comp = run_compensation(groups, the_plan.keep, calibration, mode)
        comp.notes.extend(calibration.notes if calibration is not None else
                          ["no data and no BatchNorm statistics to compensate from: nothing was "
                           "compensated (pass --calib or --data)"])
        return comp
    return run_compensation(groups, the_plan.keep, calibration, mode)


def refit(groups: Groups, the_plan: Plan, comp: Compensation, calibration, cfg: PruneConfig):
    """Sequential reconstruction (``sequential.py``), when asked for: the
    consumers refitted stage by stage in graph order, each on the inputs the
    pruned model gives it; a group chosen by ``obs`` whose consumers share a
    stage is chosen again there. Updates the plan and compensation in place."""
    if not cfg.sequential or cfg.resolved_compensation() != "lsq" or calibration is None:
        return None
    from .sequential import reconstruct

    explicit = cfg.keep is not None or cfg.plan is not None
    rep = reconstruct(groups, the_plan.keep, comp, calibration, cfg,
                      reselect=not explicit and cfg.criterion in importance.GRAM_CRITERIA)
    the_plan.kept = {gid: (len(idx), groups.group(gid).channels) for gid, idx in the_plan.keep.items()}
    return rep


def apply(groups: Groups, the_plan: Plan, comp: Compensation | None, in_place: bool = False) -> onnx.ModelProto:
    """The pruned model. ``in_place`` rewrites the loaded model itself, with no
    second copy of the weights (when nothing later needs the original)."""
    return run_apply(groups, the_plan.keep, compensation=comp, in_place=in_place)


def check(original, pruned: onnx.ModelProto, cfg: PruneConfig) -> None:
    """The invariants (never bigger, same interface, nothing orphaned) against
    the original (a model or its ``invariants.summarize``), then the full
    checker, here in memory unless the model will be written: ``save`` checks
    it from disk, as written."""
    invariants.check(original.model if isinstance(original, Groups) else original, pruned,
                     allow_io_change=cfg.allow_io_change)
    if cfg.check and not cfg.output:
        full_check(pruned)


def report(groups: Groups, the_plan: Plan, pruned: onnx.ModelProto, calibration, comp,
           cfg: PruneConfig) -> PruneReport:
    first = groups.shape_info.sample if groups.shape_info is not None else None
    info = shape_info(pruned, cfg.input_shapes, first)
    after = GraphView(pruned, info.dims)
    explicit = cfg.keep is not None or cfg.plan is not None
    return PruneReport(
        criterion="explicit" if explicit else cfg.criterion,
        ratio=the_plan.ratio if not explicit else None,
        compensate=cfg.resolved_compensation(),
        allocate="explicit" if explicit else (cfg.allocate or "uniform"),
        calibration=None if calibration is None else {
            "samples": calibration.samples, "seconds": calibration.seconds,
            "random": calibration.random, "tensors": len(calibration.stats)},
        params={"before": groups.params_total, "after": count_params(pruned)},
        macs={"before": groups.macs, "after": count_macs(after)},
        groups=[{"id": g.id, "channels": g.channels,
                 "kept": the_plan.kept.get(g.id, (g.channels, g.channels))[0],
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
    return run_reference(groups.model, cfg.data, input_shapes=_known_inputs(groups, cfg),
                         samples=cfg.samples, threads=cfg.threads, batch_axes=cfg.batch_axes)


def validate(groups: Groups, pruned: onnx.ModelProto, cfg: PruneConfig,
             ref: Reference | None = None, io: list | None = None) -> Validation | None:
    """Compare the pruned model with the original's ``reference`` (taken
    here when not given: the original must then still be unmodified);
    ``io``: the inputs and outputs it changed (``io_change``)."""
    if not cfg.validate:
        return None
    return run_compare(ref if ref is not None else reference(groups, cfg), pruned, io=io)


def _checked(result: PruneResult):
    """A ``verify`` for ``model.save``: the checks of a model as written. A
    session check skipped because the input itself does not load in
    onnxruntime (a custom op) is said in the report's notes."""
    def verify(path: str) -> None:
        note = check_written(path, original=result.source)
        if note and note not in result.report.notes:
            result.report.notes.append(note)
    return verify


def _validated(result: PruneResult, ref: Reference):
    """A ``verify`` for ``model.save`` that also validates the model from the
    files as written: onnxruntime maps its weights from disk rather than
    holding a second copy of them next to the one in memory."""
    def verify(path: str) -> None:
        check_written(path)
        result.validation = run_compare(ref, modelio.load(path).model, io=result.io)
    return verify


@contextmanager
def _writing(path):
    """A failed write (a full disk, no permission, a read-only folder) is the
    environment's fault, not the input's or a bug: one line naming the file
    and the reason (exit code 2). The writer has already removed its partial
    files."""
    try:
        yield
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise OnnxPruneError(f"cannot write {os.fspath(path)}: {reason}") from e


def save(result: PruneResult, cfg: PruneConfig, ref: Reference | None = None) -> list[str]:
    """Write every requested output, or none of them: a later failure removes
    what was already written. Models are checked as written, from disk; with
    a validation ``ref``, the output is also validated from disk before it is
    moved into place."""
    written: list[str] = []
    protect = set(result.groups.source_files)
    try:
        if cfg.output:
            verify = _checked(result) if ref is None else _validated(result, ref)
            with _writing(cfg.output):
                written += modelio.save(result.model, cfg.output,
                                        external_data=result.groups.external_data, protect=protect,
                                        verify=verify, stored_external=result.groups.external)
        if cfg.masked_output:
            masked = result.masked()
            added = sum(int(np.size(b)) for b in result.compensation.biases.values()) \
                if result.compensation is not None else 0
            invariants.check(result.summary, masked, slack=added)
            with _writing(cfg.masked_output):
                written += modelio.save(masked, cfg.masked_output,
                                        external_data=result.groups.external_data, protect=protect,
                                        verify=_checked(result), stored_external=result.groups.external)
        if cfg.save_plan:
            with _writing(cfg.save_plan):
                _write_json(cfg.save_plan, result.plan.to_dict(result.groups))
            written.append(os.path.abspath(cfg.save_plan))
        if cfg.report:
            with _writing(cfg.report):
                _write_json(cfg.report, result.to_dict())
            written.append(os.path.abspath(cfg.report))
    except BaseException:
        for path in written:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        raise
    return written


def _write_json(path, payload: dict) -> None:
    """Atomically: a temporary file beside ``path``, then a rename. The JSON is
    built first, so an unserialisable value never leaves a half-written file."""
    text = json.dumps(payload, indent=2, default=_json_default)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _json_default(x):
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def edge_stage(groups: Groups, run_cfg: PruneConfig, criterion: str | None, ratio: float | None):
    """Zero weights of ``groups.model`` in place (``edges.py``), calibrating
    first when the criterion or the weight update needs data. -> (report,
    criterion used, whether weights were updated, calibration)."""
    from . import edges

    data = run_cfg.calib is not None
    aliases = {None: "obs" if data else "magnitude", "l1": "magnitude", "l2": "magnitude"}
    criterion = aliases.get(criterion, criterion)
    update = run_cfg.resolved_compensation() == "lsq"
    calibration = None
    if data and (update or criterion in ("relief", "obs")):
        calibration = run_calibration(groups.model, run_cfg.calib,
                                      edges.requests(groups, gram=update or criterion == "obs"),
                                      samples=run_cfg.calib_samples, batch=run_cfg.calib_batch,
                                      progress=run_cfg.progress, input_shapes=_known_inputs(groups, run_cfg))
    elif criterion in ("relief", "obs"):
        raise OnnxPruneError(f"edge criterion '{criterion}' needs calibration data (--calib or --data)")
    rep = edges.prune_edges(groups, calibration, ratio=ratio, pattern=edges.parse_pattern(run_cfg.pattern),
                            criterion=criterion, update=update,
                            cfg=run_cfg if run_cfg.sequential is not False else None)
    groups.consumed = True
    return rep, criterion, update, calibration


def _edge_summary(rep) -> dict:
    return {"sparsity": rep.sparsity, "zeroed": rep.zeroed, "elements": rep.elements, "pattern": rep.pattern,
            "dense_bytes": rep.dense_bytes, "sparse_bytes": rep.sparse_bytes,
            "compressed_bytes": rep.compressed_bytes, "compressed_before": rep.compressed_before,
            "layers": [vars(x) for x in rep.layers],
            "sequential": None if rep.sequential is None else asdict(rep.sequential)}


def run_edges(source, cfg: PruneConfig) -> PruneResult:
    """``--mode edges``: load, analyse (for each layer's linear form),
    calibrate when the criterion or the weight update needs data, zero
    weights in place, check, validate, save."""
    if cfg.masked_output or cfg.save_plan or cfg.plan or cfg.keep is not None:
        raise OnnxPruneError("--mode edges writes no plan and no masked model (the pruned model is "
                             "its own masked model)")
    if cfg.macs_target is not None or cfg.latency_target is not None:
        raise OnnxPruneError("--mode edges takes --ratio, --pattern or --params-target (zeros change no "
                             "MACs or latency on dense kernels)")
    if cfg.params_target is not None and cfg.pattern:
        raise OnnxPruneError("--mode edges: --params-target or --pattern, not both (N:M fixes the sparsity)")
    from .edges import ratio_for_params

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
    report.edges = _edge_summary(rep)
    if calibration is not None:
        report.calibration = {"samples": calibration.samples, "seconds": calibration.seconds,
                              "random": calibration.random, "tensors": len(calibration.stats)}
    if held_note:
        report.notes.append(held_note)
    result = PruneResult(pruned, report, groups, Plan(), None, config=cfg, source=source, summary=original)
    if ref is not None:
        result.validation = validate(groups, pruned, run_cfg, ref)
    result.written = save(result, cfg)
    return result


def run(source, cfg: PruneConfig) -> PruneResult:
    """Every stage in order."""
    if cfg.mode == "edges":
        return run_edges(source, cfg)
    if cfg.mode != "channels":
        raise OnnxPruneError(f"unknown mode '{cfg.mode}' (channels or edges)")
    if (cfg.edge_ratio is not None or cfg.pattern is not None) and cfg.masked_output:
        raise OnnxPruneError("--masked-output shows channels only: not with --edge-ratio or --pattern")
    preflight(source, cfg)
    loaded = load(source, cfg)
    if loaded.external:
        preflight(source, cfg, loaded.files)
    groups = analyze(loaded, cfg)
    run_cfg, held_note = hold_out(groups, cfg)
    run_cfg = run_cfg.resolved()
    run_cfg, allocation_note = choose_allocation(groups, run_cfg, cfg.allocate)
    calibration = calibrate(groups, run_cfg)
    scores = score(groups, calibration, run_cfg)
    the_plan = plan(groups, scores, run_cfg)
    comp = compensate(groups, the_plan, calibration, run_cfg)
    seq = refit(groups, the_plan, comp, calibration, run_cfg)
    io = io_change.changed(groups, the_plan.keep) if cfg.allow_io_change else []
    original = invariants.summarize(groups.model)
    # The original's half of validation runs first; then the loaded model is
    # rewritten in place, never copied (masked() re-derives the original from
    # the source).
    ref = reference(groups, run_cfg)
    pruned = apply(groups, the_plan, comp, in_place=True)
    check(original, pruned, run_cfg)
    rep_edges = None
    if cfg.edge_ratio is not None or cfg.pattern is not None:
        # channels first, then edge sparsity on what is left (its own analysis and calibration)
        from dataclasses import replace

        after = analyze(modelio.Loaded(pruned, None, groups.external, groups.source_files), run_cfg)
        rep_edges, _, _, _ = edge_stage(after, replace(run_cfg, criterion=None), None, cfg.edge_ratio)
        pruned = after.model
        check(original, pruned, run_cfg)
    result = PruneResult(pruned, report(groups, the_plan, pruned, calibration, comp, run_cfg), groups,
                         the_plan, comp, config=cfg, source=source, summary=original, io=io)
    result.report.io_changes = [c.to_dict() for c in io]
    if cfg.allow_io_change and not io:
        result.report.notes.append("--allow-io-change: no input or output changed size")
    if rep_edges is not None:
        result.report.edges = _edge_summary(rep_edges)
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
    result.report.notes.extend(the_plan.notes)
    approx = [g for g in groups.groups if g.approximate and the_plan.kept.get(g.id, (1, 1))[0] < g.channels]
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
    if ref is not None and not deferred:
        result.validation = validate(groups, pruned, run_cfg, ref, io=io)
    result.written = save(result, cfg, ref if deferred else None)
    return result


__all__ = ["PruneConfig", "PruneReport", "PruneResult", "run", "preflight", "load", "analyze",
           "calibrate", "score", "plan", "compensate", "reference", "apply", "check", "report", "validate",
           "save"]
