"""Sequential reconstruction: compensation in graph order, each consumer
refitted to what the *original* model computes, from the inputs it sees in
the *pruned* model.

``compensate.lsq`` fits every consumer on the original model's statistics,
as if the layers before it were untouched. They are not: each pruned layer
hands the next a slightly different input, and the errors compound with
depth. Here the consumers are taken stage by stage in graph order (layer-wise
reconstruction, as OBC/SparseGPT, ThiNet and the ONNX-level OBS of
"Structurally Prune Anything" do): the masked model with every plan applied
and the stages before compensated runs beside the original on the same
calibration batches, and each consumer of the stage gets the weights that
best map its pruned-model input to the original's output:

    min over V, c   E || W^T x_o + b  -  (V^T x_p[K] + c) ||^2

with ``x_o`` / ``x_p`` its input in the original / masked model and ``K`` its
kept input channels. With ``C`` the centred (cross-)covariances, the ridge
acting on the change from the current weights:

    V = W_K + (C_pp[K,K] + r I)^-1 (C_po[K,:] W - C_pp[K,K] W_K)
    c = b + W^T mu_o - V^T mu_p[K]

which is ``compensate.lsq`` when ``x_p = x_o``, and which also corrects the
error the earlier stages left when it is not. A consumer whose input no
pruned layer changes, and which loses no channel, is left alone.

Stages are levels: a consumer's level is the number of refitted consumers on
the longest path to its input, so no consumer of a stage feeds another of
the same stage (its input is final when it is measured). A group whose
consumers all sit in one stage is selected again there (``obs`` on the
refitted weights and the pruned-model covariance, same kept count): the
error left then is the refit's, by Pythagoras, since the full refit's
residual is orthogonal to every input channel.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from onnxprune.analysis.groups import Groups
from onnxprune.calibration.run import batch_for
from onnxprune.calibration.sources import batches as batches
from onnxprune.calibration.sources import load_data
from onnxprune.calibration.sources import rereadable as rereadable
from onnxprune.calibration.statistics import GRAM_ROWS, gram_subset
from onnxprune.core.data import model_inputs
from onnxprune.core.errors import OnnxPruneError
from onnxprune.core.runtime import session, upto
from onnxprune.refit.compensate import Compensation, held, shared_weight, to_stored
from onnxprune.rewrite.engine import apply as run_apply
from onnxprune.select.reconstruct import obs_order

RIDGE = 1e-3  # x mean variance, as compensate.lsq
MAX_CHANNELS = 4096  # wider inputs: the cross-covariances are too big; the plain lsq fit stays
MAX_STAGES = 24  # at most this many levels are refitted (each stage costs about one pass over the data)
MIN_SAMPLES = 4  # fewer calibration samples: no refit (too few rows for the shrinkage below to be measured)
SHRINK = 1.0  # ridge added per (kept channels / rows measured): few rows per weight keep a refit near the one-shot fit
WORK = 2e12  # multiply-accumulates the stages may run, all together (about 100 s on one core)


def stage_limit(macs: int | None, samples: int) -> int:
    """How many stages the work budget allows: each runs (the first part of)
    both models over the calibration samples, about one full pass. Counted
    in MACs, not seconds, so that the plan never depends on the machine's
    load; a model of unknown MACs gets ``MAX_STAGES``."""
    if not macs or not samples:
        return MAX_STAGES
    return int(max(1, min(MAX_STAGES, WORK // (float(macs) * samples))))
MIN_ROWS = 2  # rows per kept channel a refit needs, at least


def _stages(levels: list, limit: int) -> list:
    """At most ``limit`` of the levels, evenly spaced and ending with the
    last (whose refit corrects everything before it). Levels are never
    merged: a stage that held a consumer and one feeding it would refit the
    second for an input the first's refit then changes (measured on
    real pretrained models: a merged text detector lost far more than no
    refit at all); a level left out keeps its one-shot lsq compensation."""
    if len(levels) <= limit:
        return levels
    n = len(levels)
    picks = sorted({int(round((i + 1) * n / limit)) - 1 for i in range(limit)})
    return [levels[i] for i in picks]


@dataclass
class SequentialReport:
    stages: int = 0
    levels: int = 0  # levels of consumers (the stages, unless the work budget allows fewer)
    refitted: int = 0  # consumers refitted
    reselected: int = 0  # groups whose channels were chosen again
    seconds: float = 0.0
    runs: int = 0  # onnxruntime runs (two per batch and stage)
    notes: list = field(default_factory=list)


class CrossStats:
    """Per tensor: centred covariance of the pruned-model input and its
    cross-covariance with the original's, on a strided subset of rows."""

    def __init__(self, size: int):
        self.size = size
        self.count = 0
        self.sum_p = np.zeros(size)
        self.sum_o = np.zeros(size)
        self.pp = np.zeros((size, size))
        self.po = np.zeros((size, size))

    def update(self, xp: np.ndarray, xo: np.ndarray, axis: int) -> None:
        p, o = _rows(xp, axis, self.size), _rows(xo, axis, self.size)
        self.count += p.shape[1]
        self.sum_p += p.sum(axis=1, dtype=np.float64)
        self.sum_o += o.sum(axis=1, dtype=np.float64)
        self.pp += p @ p.T
        self.po += p @ o.T

    @property
    def mean_p(self) -> np.ndarray:
        return self.sum_p / max(self.count, 1)

    @property
    def mean_o(self) -> np.ndarray:
        return self.sum_o / max(self.count, 1)

    def cov_pp(self) -> np.ndarray:
        n = max(self.count, 1)
        return self.pp / n - np.outer(self.mean_p, self.mean_p)

    def cov_po(self) -> np.ndarray:
        n = max(self.count, 1)
        return self.po / n - np.outer(self.mean_p, self.mean_o)


def _rows(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    """(channels, rows) of a batch along ``axis``, an evenly strided subset
    of at most GRAM_ROWS rows (the same rows for the same shape)."""
    x = np.asarray(x, dtype=np.float32)
    axis %= max(x.ndim, 1)
    x3 = x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), size, -1)
    rows = x3.shape[0] * x3.shape[2]
    sub = gram_subset(x3, -(-rows // GRAM_ROWS))
    return np.ascontiguousarray(sub.transpose(1, 0, 2)).reshape(size, -1).astype(np.float64)


def levels_of(groups: Groups, nodes: set) -> dict:
    """Node index -> level for ``nodes``: the most of them on any path to
    its input (0: none)."""
    view = groups.view
    level: dict[str, int] = {}
    inner: dict[int, int] = {}  # owner node id -> deepest level among its subgraphs' outputs
    out = {}
    for i, node in enumerate(view.nodes):
        lv = max((level.get(n, 0) for n in node.input if n), default=0)
        lv = max(lv, inner.get(id(node), 0))
        if i in nodes:
            out[i] = lv
            lv += 1
        for o in node.output:
            if o:
                level[o] = lv
                owner = view.sub_outputs.get(o)
                if owner is not None:
                    inner[id(owner)] = max(inner.get(id(owner), 0), lv)
        scope = view.scope.get(id(node))
        if scope is not None:  # anything computed inside a subgraph reaches its owner's outputs
            inner[id(scope[0])] = max(inner.get(id(scope[0]), 0), lv)
    return out


def _changed(groups: Groups, keep: dict) -> set:
    """Tensors whose values the plan changes in the masked model: everything
    downstream of a consumer that loses input channels."""
    view = groups.view
    starts = set()
    for gid, kept in keep.items():
        if len(kept) < groups.group(gid).units:
            starts.update(u.node for u in groups.consumers(gid))
    changed: set = set()
    for i, node in enumerate(view.nodes):
        if i in starts or any(n in changed for n in node.input if n):
            changed.update(o for o in node.output if o)
            scope = view.scope.get(id(node))
            if scope is not None:
                changed.update(o for o in scope[0].output if o)
    return changed


@dataclass
class _Target:
    use: object  # WeightUse
    node: int
    form: object
    tensor: str
    axis: int
    size: int
    kept: np.ndarray  # kept positions along the consumer's input
    reselected: bool = False  # its group was chosen again in its stage


def _targets(groups: Groups, keep: dict, calibration) -> tuple[list, list]:
    """The consumers a sequential pass can refit, and readable reasons for
    those it cannot."""
    atoms = groups.analysis.atoms
    changed = _changed(groups, keep)
    view = groups.view
    found, skipped = [], []
    for use, node, form in groups.linear_readers(g.id for g in groups.groups):
        if form is None or not form.dense:
            continue
        if form.integer and not form.dequantized:
            continue  # no bias to add: the one-shot fit through the origin stays
        dim = groups.activation(use)
        if dim is None or view.scope.get(id(node)) is not None:
            continue  # inside a subgraph: calibration cannot observe it
        size = atoms.layout_size(use.layout)
        kept = groups.positions(use.layout, keep)
        if len(kept) == size and dim[0] not in changed:
            continue  # untouched input, nothing removed
        if view.const_root(node.input[form.weight]) is None or shared_weight(groups, node, form):
            continue  # compensate() says why
        if size > MAX_CHANNELS:
            skipped.append(f"{node.name}: {size} input channels, too wide for a sequential refit")
            continue
        st = calibration.get(*dim) if calibration is not None else None
        if st is not None and st.size != size:
            continue
        found.append(_Target(use, use.node, form, dim[0], dim[1], size, kept))
    return found, skipped


def _refit(w: np.ndarray, cs: CrossStats, kept: np.ndarray, full: np.ndarray | None = None):
    """(new kept rows of W (flattened), bias delta per output) for target
    weights ``w`` (inputs, outputs x taps, float64); ``full``: the weights
    the refit starts from and is pulled back to (the one-shot compensated
    fit), else ``w``. The ridge grows as rows per weight shrink
    (``SHRINK``): with thousands of rows per channel (a conv layer, even on
    a few samples) it is the plain refit, with a few (a transformer's tokens
    of 6 samples) the one-shot fit moves little."""
    cpp, cpo = cs.cov_pp(), cs.cov_po()
    ckk = cpp[np.ix_(kept, kept)]
    scale = np.trace(ckk) / max(len(kept), 1) + 1e-12
    base = w[kept] if full is None else full[kept]
    rhs = cpo[kept] @ w - ckk @ base
    lam, vec = np.linalg.eigh(ckk)
    ridge = RIDGE + SHRINK * len(kept) / max(cs.count, 1)
    v = base + vec @ ((vec.T @ rhs) / (lam + ridge * scale)[:, None])
    return v, (cs.mean_o @ w - cs.mean_p[kept] @ v)


def _reselect(groups: Groups, gid: int, n_remove: int, targets: list, cross: dict):
    """The group's units chosen again on the pruned-model statistics: obs on
    each consumer's full refit (the weights that best reproduce the original
    output from every input channel of the pruned model)."""

    consumers = []
    for t in targets:
        cs = cross[(t.tensor, t.axis)]
        w = t.form.matrix(groups.weight(t.use))
        flat = w.reshape(w.shape[0], -1)
        allpos = np.arange(t.size)
        full, _ = _refit(flat, cs, allpos)
        blocks = groups.unit_rows(gid, t.use.layout, np.arange(t.size, dtype=np.float64)[:, None]).astype(np.int64)
        consumers.append((full, cs.cov_pp(), blocks))
    order, _ = obs_order(consumers, groups.group(gid).units, limit=n_remove)
    return np.setdiff1d(np.arange(groups.group(gid).units), order[:n_remove])


def _measure(s_o, s_p, exposed: set, model, tensors: list, cfg, batch: int) -> tuple[dict, int]:
    """Run the original's session ``s_o`` and the masked model's ``s_p``
    (both exposing ``exposed``) on the same calibration batches ->
    {(tensor, axis): CrossStats}."""
    names = [i.name for i in model_inputs(model)]
    wanted = sorted({t for t, _ in tensors} & exposed)
    stats: dict = {}
    runs = 0
    data, _ = load_data(cfg.calib, model)
    for feeds in batches(data, names, model, batch, cfg.calib_samples, cfg.batch_axes):
        try:
            out_o = dict(zip(wanted, s_o.run(wanted, feeds))) if wanted else {}
            out_p = dict(zip(wanted, s_p.run(wanted, feeds))) if wanted else {}
        except Exception as e:  # noqa: BLE001 - onnxruntime raises many types
            raise OnnxPruneError(f"sequential calibration run failed: {str(e).splitlines()[0]}") from None
        runs += 2 if wanted else 0
        out_o.update(feeds)
        out_p.update(feeds)
        for tensor, axis in tensors:
            xo, xp = out_o.get(tensor), out_p.get(tensor)
            if xo is None or xp is None or xo.shape != xp.shape:
                continue
            st = stats.get((tensor, axis))
            if st is None:
                st = stats[(tensor, axis)] = CrossStats(xo.shape[axis])
            st.update(xp, xo, axis)
    return stats, runs


def plan_stages(groups: Groups, targets: list, calibration, cfg, rep) -> tuple[list, int]:
    """Group ``targets`` (anything with a ``node`` index) into stages by level,
    at most as many as the work budget allows (a note says when fewer), and
    the batch size calibration ran with. -> (stages, batch)."""
    levels = levels_of(groups, {t.node for t in targets})
    by_level: dict[int, list] = {}
    for t in targets:
        by_level.setdefault(levels[t.node], []).append(t)
    limit = stage_limit(groups.macs, calibration.samples if calibration is not None else 0)
    stages = _stages([by_level[lv] for lv in sorted(by_level)], limit)
    rep.levels = len(by_level)
    if len(stages) < len(by_level):
        rep.notes.append(f"sequential reconstruction: {len(stages)} of {len(by_level)} levels of layers "
                         f"refitted (each runs about one pass over the calibration data; more would "
                         f"exceed {WORK:.0e} MACs); the others keep their one-shot fit")
    # as calibration ran: one sample at a time where the graph fixes batch 1 inside
    fixed = groups.shape_info is not None and groups.shape_info.fixed_batch
    batch = 1 if fixed or getattr(calibration, "one_at_a_time", False) else batch_for(groups.model, cfg.calib_batch)
    return stages, batch


def measure_stage(original, current, tensors: list, cfg, batch: int) -> tuple[dict, int]:
    """Cross statistics of ``tensors`` ((name, axis)) between ``current`` (the
    pruned or masked model so far) and ``original``, both cut after those
    tensors. -> ({(tensor, axis): CrossStats}, onnxruntime runs)."""

    threads = cfg.threads or None
    names = {i.name for i in model_inputs(original)}
    mine = sorted({t for t, _ in tensors} - names)
    s_o = session(upto(original, mine), threads=threads) if mine else None
    s_p = session(upto(current, mine), threads=threads) if mine else None
    return _measure(s_o, s_p, set(mine), original, tensors, cfg, batch)  # inputs come from the feeds


def usable(cfg, calibration, rep, floor: int = MIN_SAMPLES) -> bool:
    """Whether a sequential pass can run on this calibration data, of at
    least ``floor`` samples (a note says why not)."""
    if cfg.calib is None or not rereadable(cfg.calib):
        rep.notes.append("sequential reconstruction needs calibration data that can be read again "
                         "(a file, folder, dict or list): skipped")
        return False
    if calibration is not None and calibration.samples < floor:
        rep.notes.append(f"sequential reconstruction needs at least {floor} calibration samples "
                         f"(got {calibration.samples}): skipped, one-shot fit only")
        return False
    return True


def reconstruct(groups: Groups, keep: dict, comp: Compensation, calibration, cfg,
                reselect: bool = True) -> SequentialReport:
    """Refit, stage by stage, every consumer the plan touches; ``keep`` and
    ``comp`` are updated in place (a re-selected group's kept units, the
    refitted weights and bias deltas)."""
    t0 = time.perf_counter()
    rep = SequentialReport()
    if not usable(cfg, calibration, rep):
        return rep
    targets, skipped = _targets(groups, keep, calibration)
    rep.notes.extend(skipped)
    if not targets:
        return rep
    stages, batch = plan_stages(groups, targets, calibration, cfg, rep)
    by_group: dict[int, set] = {}
    for g in groups.groups:
        for use in groups.consumers(g.id):
            by_group.setdefault(g.id, set()).add(use.node)
    bar = _progress(len(stages)) if cfg.progress else None
    try:
        for stage in stages:
            _stage(groups, keep, comp, stage, by_group, reselect, cfg, batch, rep)
            if bar is not None:
                bar.advance(bar.task_ids[0])
    finally:
        if bar is not None:
            bar.stop()
    rep.seconds = time.perf_counter() - t0
    return rep


def _stage(groups: Groups, keep: dict, comp: Compensation, stage: list, by_group: dict, reselect: bool,
           cfg, batch: int, rep: SequentialReport) -> None:
    """One stage: measure its consumers' inputs in both models, choose again
    the groups it alone reads, refit its consumers."""

    # both models cut after the stage's tensors: no pass runs the layers after them
    masked = run_apply(groups, keep, masked=True, compensation=comp)
    cross, runs = measure_stage(groups.model, masked, [(t.tensor, t.axis) for t in stage], cfg, batch)
    del masked
    rep.runs += runs
    rep.stages += 1
    nodes = {t.node for t in stage}
    for gid in sorted(keep) if reselect else ():
        g = groups.group(gid)
        reads = [t for t in stage if any(u.node == t.node and u.input == t.use.input
                                         for u in groups.consumers(gid))]
        n_remove = g.units - len(keep[gid])
        if not n_remove or not reads or not by_group.get(gid, set()) <= nodes \
                or len(reads) != len(by_group[gid]) or not all(_fits(t, cross) for t in reads):
            # read elsewhere too, or a reader that will not be refitted here
            # (it keeps the compensation fitted to the first selection): it stands
            continue
        keep[gid] = _reselect(groups, gid, n_remove, reads, cross)
        rep.reselected += 1
        for t in reads:  # their kept positions follow the new selection
            t.kept = groups.positions(t.use.layout, keep)
            t.reselected = True
    for t in stage:
        if not _fits(t, cross):
            continue  # too few rows to fit this many weights: the plain lsq fit stays
        cs = cross[(t.tensor, t.axis)]
        value = groups.weight(t.use)
        w = t.form.matrix(value)
        flat = w.reshape(w.shape[0], -1)
        # Pulled back to the one-shot fit, unless the group was chosen again (its fit is for other channels).
        prior = None if t.reselected else held(groups, comp, t.node, t.use.input, t.form)
        full = None if prior is None else np.asarray(t.form.matrix(prior), np.float64).reshape(flat.shape)
        v, delta = _refit(flat, cs, t.kept, full)
        new = np.zeros_like(flat)
        new[t.kept] = v
        comp.weights[(t.node, t.use.input)] = to_stored(groups, t.node, t.form, new.reshape(w.shape), value)
        comp.biases[t.node] = delta.reshape(w.shape[1], w.shape[2]).sum(axis=1)
        if t.form.integer:
            comp.integer.add(t.node)  # its bias goes after the output's scale
        rep.refitted += 1


def _fits(t: _Target, cross: dict) -> bool:
    """Whether the stage measured enough rows to refit this consumer."""
    cs = cross.get((t.tensor, t.axis))
    return cs is not None and cs.count >= MIN_ROWS * len(t.kept)


def _progress(stages: int):
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("refitting"), BarColumn(), TextColumn("{task.completed}/{task.total} stages"),
                   TimeElapsedColumn(), console=Console(stderr=True), transient=True)
    bar.add_task("refitting", total=stages)
    bar.start()
    return bar


__all__ = ["reconstruct", "SequentialReport", "CrossStats", "plan_stages", "measure_stage", "usable"]
