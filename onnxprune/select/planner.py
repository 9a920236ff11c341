"""Scores -> keep-sets (which unit indices of each group survive).

A ``Plan`` is keyed by group id, like everything a user sees. It can be saved
as JSON and replayed (``prune --save-plan`` / ``--plan``), so a user or another
tool can pick channels by hand.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from onnxprune.analysis.costs import unknown_dims
from onnxprune.analysis.groups import Groups
from onnxprune.core.errors import OnnxPruneError
from onnxprune.select.importance import Scores

PLAN_FORMAT = "onnxprune-plan/1"


@dataclass
class Plan:
    keep: dict = field(default_factory=dict)  # group id -> sorted np.ndarray of kept units
    kept: dict = field(default_factory=dict)  # group id -> (kept, units)
    ratio: float | None = None  # the uniform ratio used, when there was one
    notes: list = field(default_factory=list)  # what the planner could not do as asked

    @property
    def removed(self) -> int:
        return sum(c - k for k, c in self.kept.values())

    def to_dict(self, groups: Groups | None = None) -> dict:
        out = {"format": PLAN_FORMAT, "ratio": self.ratio, "groups": {}}
        for gid, idx in sorted(self.keep.items()):
            entry = {"units": self.kept[gid][1], "keep": [int(i) for i in idx]}
            if groups is not None:
                entry["members"] = groups.group(gid).members[:4]
            out["groups"][str(gid)] = entry
        return out

    def save(self, path, groups: Groups | None = None) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(groups), f, indent=1)


def _rounds(channels: int, round_to: int, round_from: int | None) -> bool:
    """Whether a group's kept count is rounded: from ``round_from`` units up
    (default: any group of at least ``round_to``)."""
    return round_to > 1 and channels >= max(round_to, round_from or 0)


def unit_step(units: int, width: int, round_to: int, round_from: int | None = None) -> int:
    """The multiple of units a group's kept count is rounded to (1: none).
    Rounding is for the kernels' channel blocks, so it counts tensor
    positions: a unit spanning ``width`` positions (an attention head of 64
    dims) already keeps a multiple of 8 channels; rounding 16 such heads to
    multiples of 8 heads would leave only 8 or 16."""
    if not _rounds(units, round_to, round_from):
        return 1
    return round_to // math.gcd(round_to, max(int(width), 1))


def n_keep(channels: int, ratio: float, min_channels: int, round_to: int, round_from: int | None = None,
           width: int = 1) -> int:
    keep = channels - int(round(ratio * channels))
    step = unit_step(channels, width, round_to, round_from)
    if step > 1:
        keep = max(step, int(round(keep / step)) * step)
    keep = max(keep, min(min_channels, channels))
    return min(keep, channels)


def plan_uniform(groups: Groups, scores: Scores, ratio: float, *, min_channels: int = 1,
                 round_to: int = 1, round_from: int | None = None) -> Plan:
    """Remove ``round(ratio * channels)`` lowest-scoring units from every prunable group."""
    if not 0.0 <= ratio < 1.0:
        raise OnnxPruneError(f"--ratio must be in [0, 1), got {ratio}")
    if min_channels < 1 or round_to < 1:
        raise OnnxPruneError("--min-channels and --round-to must be at least 1")
    plan = Plan(ratio=ratio)
    for g in groups.prunable:
        k = n_keep(g.units, ratio, max(min_channels, g.min_keep), round_to, round_from, g.width)
        order = np.argsort(-scores[g.id], kind="stable")
        plan.keep[g.id] = np.sort(order[:k])
        plan.kept[g.id] = (k, g.units)
    return plan


def plan_from_keep(groups: Groups, keep_by_id: dict) -> Plan:
    """An explicit plan (tests, the oracle, a replayed plan file): group id -> indices to keep."""
    plan = Plan()
    for gid, idx in keep_by_id.items():
        gid = int(gid)
        if not 0 <= gid < len(groups.groups):
            raise OnnxPruneError(f"the plan names group {gid}, but the model has groups 0 to "
                                 f"{len(groups.groups) - 1}")
        g = groups.group(gid)
        if not g.prunable:
            raise OnnxPruneError(f"group {gid} is frozen: {'; '.join(g.frozen)}")
        idx = np.unique(np.asarray(idx, dtype=np.int64))
        if len(idx) == 0 or idx.min() < 0 or idx.max() >= g.units:
            raise OnnxPruneError(f"group {gid}: keep-set must be non-empty indices below {g.units}")
        if len(idx) < g.min_keep:
            raise OnnxPruneError(f"group {gid}: must keep at least {g.min_keep} units")
        plan.keep[gid] = idx
        plan.kept[gid] = (len(idx), g.units)
    return plan


def load_plan(path, groups: Groups) -> Plan:
    """Read a plan saved by ``Plan.save``; its group ids and unit counts must match."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise OnnxPruneError(f"{path}: not a readable plan file ({e})") from None
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT \
            or not isinstance(data.get("groups"), dict):
        raise OnnxPruneError(f"{path}: not an onnxprune plan (expected format '{PLAN_FORMAT}')")
    keep = {}
    for key, entry in data["groups"].items():
        try:
            gid, units, idx = int(key), int(entry["units"]), list(entry["keep"])
        except (KeyError, TypeError, ValueError):
            raise OnnxPruneError(f"{path}: group '{key}' needs 'units' and 'keep'") from None
        if 0 <= gid < len(groups.groups) and groups.group(gid).units != units:
            raise OnnxPruneError(f"{path}: group {gid} has {groups.group(gid).units} units in "
                                 f"this model, the plan says {units}: a plan for another model?")
        keep[gid] = idx
    plan = plan_from_keep(groups, keep)
    plan.ratio = data.get("ratio")
    return plan


def estimate_macs(groups: Groups, keep: dict) -> int:
    """MACs after applying ``keep`` (group id -> units), without rewriting: each
    node's MACs scale with the kept fraction of its output channels and of its
    linear input."""
    atom_keep = groups.atom_keep(keep)
    total = 0.0
    for macs, lays in groups.macs_terms():
        f = 1.0
        for lay in lays:
            f *= groups.kept_fraction(lay, atom_keep)
        total += macs * f
    return int(round(total))


def params_terms(groups: Groups) -> list[tuple[int, list]]:
    """(elements, layouts) per stored weight a group slices: its size
    scales with the kept fraction of each sliced axis. Readers of a shared
    weight slice it alike (``groups._couple_shared_weights``): the first
    reader's axes count."""
    cache = groups._index
    if "params_terms" not in cache:
        found: dict[str, tuple] = {}
        for use in groups.analysis.uses:
            name = groups.weight_name(use)
            reader = (use.node, use.input)
            entry = found.get(name)
            if entry is None:
                shape = groups.view.const_shape(groups.view.nodes[use.node].input[use.input])
                if shape is None:
                    continue
                entry = found[name] = (reader, int(np.prod(shape, dtype=np.int64)), {})
            if entry[0] == reader:
                entry[2].setdefault(use.axis, use.layout)
        cache["params_terms"] = [(n, list(axes.values())) for _, n, axes in found.values()]
    return cache["params_terms"]


def estimate_params(groups: Groups, keep: dict) -> int:
    """Parameters after applying ``keep``, without rewriting (an estimate:
    the report counts the written model's)."""
    atom_keep = groups.atom_keep(keep)
    removed = 0.0
    for n, lays in params_terms(groups):
        f = 1.0
        for lay in lays:
            f *= groups.kept_fraction(lay, atom_keep)
        removed += n * (1.0 - f)
    return int(round(groups.params_total - removed))


@dataclass
class Measure:
    """What a budget counts: its name (in messages), the original's total,
    and an estimate for a plan's keep-sets."""

    name: str
    full: float
    estimate: object  # (groups, keep) -> number

    @staticmethod
    def of(groups: Groups, what: str = "macs") -> "Measure":
        if what == "params":
            return Measure("parameters", groups.params_total, estimate_params)
        return Measure("MACs", groups.macs, estimate_macs)


def _check_target(groups: Groups, target: float, measure: "Measure") -> None:
    if measure.name == "MACs":
        _check_macs_known(groups, target)
    elif not 0.0 < target <= 1.0:
        raise OnnxPruneError(f"--params-target must be in (0, 1], got {target}")


def _check_macs_known(groups: Groups, target: float) -> None:
    """A MACs target needs known, non-zero MACs: otherwise it is an error, never a silent no-op."""
    if not 0.0 < target <= 1.0:
        raise OnnxPruneError(f"--macs-target must be in (0, 1], got {target}")
    if groups.macs is None:

        need = "; ".join(f"input '{n}' has the symbolic dim(s) {', '.join(d)}"
                         for n, d in unknown_dims(groups.view).items()) or "some shapes are unknown"
        raise OnnxPruneError(f"--macs-target needs the model's MACs, which are unknown: {need}. Give "
                             f"--calib or --data (their shapes are used), or --input-shape NAME:D1,D2,...")
    if not groups.macs:
        raise OnnxPruneError("--macs-target is meaningless for this model: it has no multiply-"
                             "accumulates (no Conv, Gemm or MatMul with a known cost)")


def plan_macs(groups: Groups, scores: Scores, target: float, *, min_channels: int = 1,
              round_to: int = 1, round_from: int | None = None, steps: int = 30,
              measure: Measure | None = None) -> Plan:
    """The uniform ratio whose plan keeps about ``target`` x the original
    MACs (or another ``measure``: parameters)."""
    measure = measure or Measure.of(groups)
    _check_target(groups, target, measure)
    full, estimate = measure.full, measure.estimate
    lo, hi = 0.0, 0.99
    opts = dict(min_channels=min_channels, round_to=round_to, round_from=round_from)
    best = plan_uniform(groups, scores, 0.0, **opts)
    best_frac = 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        plan = plan_uniform(groups, scores, mid, **opts)
        frac = estimate(groups, plan.keep) / full
        if frac > target:
            lo = mid
        else:
            hi, best, best_frac = mid, plan, frac
    if best_frac > target + 0.01:
        floor = estimate(groups, plan_uniform(groups, scores, 0.99, **opts).keep) / full
        raise OnnxPruneError(f"the {measure.name} target {target} cannot be met: pruning every prunable "
                             f"group as far as it goes keeps {floor:.3f} of the {measure.name} (frozen "
                             f"groups keep the rest); ask for {floor:.2f} or more")
    best.ratio = hi
    return best


ALLOCATIONS = ("uniform", "global", "sensitivity")  # sensitivity: global, priced by a sweep


def _with_counts(groups: Groups, scores: Scores, counts: dict, ratio: float | None) -> Plan:
    plan = Plan(ratio=ratio)
    for g in groups.prunable:
        k = counts[g.id]
        order = np.argsort(-scores[g.id], kind="stable")
        plan.keep[g.id] = np.sort(order[:k])
        plan.kept[g.id] = (k, g.units)
    return plan


def round_to_budget(groups: Groups, scores: Scores, exact: Plan, target: float, *, round_to: int,
                    round_from: int | None = None, min_channels: int = 1,
                    measure: Measure | None = None) -> Plan:
    """Round an exact plan's kept counts to multiples of ``round_to`` (where
    ``_rounds``) and still keep about ``target`` x the MACs (or ``measure``).

    Rounding each count to the nearest multiple on its own misses a MACs
    target by a lot when groups are small (16 units at 0.3 keep 11.2: 8 or
    16), always in the same direction. Here each group keeps the multiple
    just below or just above its exact count: all start above, then the
    groups whose exact count lies nearest the multiple below go down, as
    many as the target needs (largest-remainder rounding). Every group stays
    within one step of its exact count, and the MACs land at the target."""
    counts = {g.id: exact.kept[g.id][0] for g in groups.prunable}
    choices = []
    for g in groups.prunable:
        k = counts[g.id]
        step = unit_step(g.units, g.width, round_to, round_from)
        if k >= g.units or step == 1:
            continue
        floor = max(min_channels, g.min_keep, 1)
        lo = max(step, (k // step) * step, -(-floor // step) * step)
        hi = min(g.units, max(lo, -(-k // step) * step))
        if lo >= hi:
            counts[g.id] = min(lo, g.units)
            continue
        choices.append(((k - lo) / step, g.id, lo, hi))
    choices.sort()

    def plan_with(down: int) -> Plan:
        for i, (_, gid, lo, hi) in enumerate(choices):
            counts[gid] = lo if i < down else hi
        return _with_counts(groups, scores, counts, exact.ratio)

    measure = measure or Measure.of(groups)
    if not measure.full:
        return plan_with(sum(1 for c in choices if c[0] < 0.5))  # nothing to count: the nearest multiple
    budget, estimate = target * measure.full, measure.estimate
    lo_n, hi_n = 0, len(choices)  # the fewest groups rounded down that meet the budget
    if estimate(groups, plan_with(hi_n).keep) > budget:
        return plan_with(hi_n)
    while lo_n < hi_n:
        mid = (lo_n + hi_n) // 2
        if estimate(groups, plan_with(mid).keep) <= budget:
            hi_n = mid
        else:
            lo_n = mid + 1
    plan = plan_with(hi_n)
    # One step down can save far more than needed (a 16-unit group at full
    # resolution halves its layers' MACs): groups that went down go back up,
    # nearest the multiple above first, wherever the budget still holds.
    for _, gid, lo, hi in reversed(choices[:hi_n]):
        counts[gid] = hi
        trial = _with_counts(groups, scores, counts, exact.ratio)
        if estimate(groups, trial.keep) <= budget:
            plan = trial
        else:
            counts[gid] = lo
    return plan


def _unit_macs(groups: Groups, gid: int, full: int, estimate=estimate_macs) -> float:
    """MACs (or what ``estimate`` counts) one unit of a group costs
    (removing half of it, divided)."""
    g = groups.group(gid)
    half = g.units // 2
    if half == 0:
        return 0.0
    kept = estimate(groups, {gid: np.arange(g.units - half)})
    return max(0.0, (full - kept) / half)


def _ranked(prices: dict) -> dict:
    """Prices -> their ranks over all groups, non-decreasing within each:
    equal prices (a linear stretch of a sweep's curve) then go one at a time."""
    if not prices:
        return prices
    ids = sorted(prices)
    flat = np.concatenate([prices[i] for i in ids])
    owner = np.concatenate([np.full(len(prices[i]), n) for n, i in enumerate(ids)])
    step = np.concatenate([np.arange(len(prices[i])) for i in ids])
    rank = np.empty(len(flat))
    rank[np.lexsort((owner, step, flat))] = np.arange(len(flat), dtype=np.float64)
    parts = np.split(rank, np.cumsum([len(prices[i]) for i in ids])[:-1])
    return {i: np.maximum.accumulate(part) for i, part in zip(ids, parts)}


def plan_global(groups: Groups, scores: Scores, target: float, *, min_channels: int = 1,
                round_to: int = 1, round_from: int | None = None, max_group_ratio: float = 0.9,
                best_effort: bool = False, measure: Measure | None = None) -> Plan:
    """Keep about ``target`` x the MACs (or ``measure``), removing units where they cost least
    across all groups.

    Each group removes units in its criterion's order (``Scores.removal``);
    the k-th removal costs ``cost_k / macs_per_unit``: the damage it adds
    (a normalised score, or the measured reconstruction error for ``obs``)
    per MAC it saves. One threshold over those prices, found by bisection,
    decides how far every group goes; ``max_group_ratio`` caps any group
    (no layer is emptied because it looked cheap) and ``min_channels`` /
    ``round_to`` floor and round what each keeps. An unreachable target is an
    error, or with ``best_effort`` the deepest plan, with a note."""
    measure = measure or Measure.of(groups)
    if not 0.0 < target <= 1.0:
        raise OnnxPruneError(f"the {measure.name} target must be in (0, 1], got {target}")
    if not 0.0 < max_group_ratio < 1.0:
        raise OnnxPruneError(f"--max-group-ratio must be in (0, 1), got {max_group_ratio}")
    full, estimate = measure.full, measure.estimate
    prices: dict[int, np.ndarray] = {}
    orders: dict[int, np.ndarray] = {}
    caps: dict[int, int] = {}
    for g in groups.prunable:
        order, cost = scores.removal(g.id)
        floor = max(min_channels, g.min_keep, 1)
        cap = min(len(order), g.units - min(floor, g.units), int(np.floor(max_group_ratio * g.units)))
        per_unit = _unit_macs(groups, g.id, full, estimate)
        if cap <= 0 or per_unit <= 0:
            continue
        orders[g.id], caps[g.id] = order, cap
        prices[g.id] = np.asarray(cost[:cap], dtype=np.float64) / per_unit

    prices = _ranked(prices)

    def plan_at(threshold: float) -> Plan:
        plan = Plan()
        for g in groups.prunable:
            if g.id not in prices:
                plan.keep[g.id] = np.arange(g.units)
                plan.kept[g.id] = (g.units, g.units)
                continue
            n = int(np.searchsorted(prices[g.id], threshold, side="right"))
            keep = g.units - n
            step = unit_step(g.units, g.width, round_to, round_from)
            if step > 1 and n:
                keep = max(step, int(np.ceil(keep / step)) * step)
            keep = min(g.units, max(keep, g.units - caps[g.id]))
            removed = orders[g.id][:g.units - keep]
            plan.keep[g.id] = np.setdiff1d(np.arange(g.units), removed)
            plan.kept[g.id] = (keep, g.units)
        return plan

    levels = np.unique(np.concatenate(list(prices.values()))) if prices else np.zeros(0)
    if not len(levels):
        raise OnnxPruneError(f"no prunable group has a {measure.name} cost to reduce")
    lo, hi = -1, len(levels) - 1  # plan_at(levels[hi]) goes as far as the caps allow
    deepest = plan_at(levels[hi])
    if estimate(groups, deepest.keep) / full > target + 0.01:
        floor = estimate(groups, deepest.keep) / full
        if best_effort:
            deepest.notes.append(f"kept {floor:.3f} of the {measure.name}, not {target:.3f}: --max-group-ratio "
                                 f"{max_group_ratio}, --min-channels and --round-to stop it there")
            return deepest
        raise OnnxPruneError(f"the {measure.name} target {target} cannot be met: every prunable group "
                             f"pruned as far as --max-group-ratio {max_group_ratio} allows keeps "
                             f"{floor:.3f} of the {measure.name}; ask for {floor:.2f} or more, or raise "
                             f"--max-group-ratio")
    while hi - lo > 1:  # the smallest threshold whose plan meets the target
        mid = (lo + hi) // 2
        if estimate(groups, plan_at(levels[mid]).keep) / full <= target:
            hi = mid
        else:
            lo = mid
    return plan_at(levels[hi])


def plan_budget(groups: Groups, scores: Scores, *, ratio: float | None, macs_target: float | None,
                allocate: str = "uniform", min_channels: int = 1, round_to: int = 1,
                round_from: int | None = None, max_group_ratio: float = 0.9,
                params_target: float | None = None) -> Plan:
    """The plan for a ratio, a MACs target or a parameters target under an
    allocation. A ratio's budget is the MACs the exact uniform ratio keeps:
    rounding and ``global`` spend that, ``global`` where removal costs
    least."""
    if allocate not in ALLOCATIONS:
        raise OnnxPruneError(f"unknown allocation '{allocate}' (choose from {', '.join(ALLOCATIONS)})")
    if macs_target is not None and params_target is not None:
        raise OnnxPruneError("give --macs-target or --params-target, not both")
    measure = Measure.of(groups, "params" if params_target is not None else "macs")
    target = params_target if params_target is not None else macs_target
    opts = dict(min_channels=min_channels, round_to=round_to, round_from=round_from)
    if target is not None:
        _check_target(groups, target, measure)
    if allocate == "uniform":
        exact_opts = dict(opts, round_to=1, round_from=None)
        if target is not None:
            exact = plan_macs(groups, scores, target, measure=measure, **exact_opts)
        else:
            exact = plan_uniform(groups, scores, ratio, **exact_opts)
            target = measure.estimate(groups, exact.keep) / measure.full if measure.full else 1.0
        if round_to <= 1:
            return exact
        return round_to_budget(groups, scores, exact, target, round_to=round_to, round_from=round_from,
                               min_channels=min_channels, measure=measure)
    best_effort = target is None  # global or sensitivity: priced removals under one threshold
    if target is None:
        if not measure.full:  # no MACs to allocate by: the uniform ratio it is
            return plan_uniform(groups, scores, ratio, **opts)
        # the budget of the plain ratio (unrounded: rounding is the allocation's business)
        uniform = plan_uniform(groups, scores, ratio, min_channels=min_channels, round_to=1)
        target = measure.estimate(groups, uniform.keep) / measure.full
        if target >= 1.0:
            return plan_uniform(groups, scores, ratio, **opts)
    plan = plan_global(groups, scores, target, max_group_ratio=max_group_ratio,
                       best_effort=best_effort, measure=measure, **opts)
    plan.ratio = ratio
    return plan
