"""Stage 5: scores -> keep-sets (which unit indices of each group survive).

A ``Plan`` is keyed by group id, like everything a user sees. It can be saved
as JSON and replayed (``prune --save-plan`` / ``--plan``), so a user or another
tool can pick channels by hand.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from .errors import OnnxPruneError
from .groups import Groups
from .importance import Scores

PLAN_FORMAT = "onnxprune-plan/1"


@dataclass
class Plan:
    keep: dict = field(default_factory=dict)  # group id -> sorted np.ndarray of kept units
    kept: dict = field(default_factory=dict)  # group id -> (kept, units)
    ratio: float | None = None  # the uniform ratio used, when there was one

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


def n_keep(channels: int, ratio: float, min_channels: int, round_to: int) -> int:
    keep = channels - int(round(ratio * channels))
    if round_to > 1 and channels >= round_to:
        keep = max(round_to, int(round(keep / round_to)) * round_to)
    keep = max(keep, min(min_channels, channels))
    return min(keep, channels)


def plan_uniform(groups: Groups, scores: Scores, ratio: float, *, min_channels: int = 1,
                 round_to: int = 1) -> Plan:
    """Remove ``round(ratio * channels)`` lowest-scoring units from every prunable group."""
    if not 0.0 <= ratio < 1.0:
        raise OnnxPruneError(f"--ratio must be in [0, 1), got {ratio}")
    if min_channels < 1 or round_to < 1:
        raise OnnxPruneError("--min-channels and --round-to must be at least 1")
    plan = Plan(ratio=ratio)
    for g in groups.prunable:
        k = n_keep(g.channels, ratio, max(min_channels, g.min_keep), round_to)
        order = np.argsort(-scores[g.id], kind="stable")
        plan.keep[g.id] = np.sort(order[:k])
        plan.kept[g.id] = (k, g.channels)
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
        if len(idx) == 0 or idx.min() < 0 or idx.max() >= g.channels:
            raise OnnxPruneError(f"group {gid}: keep-set must be non-empty indices below {g.channels}")
        if len(idx) < g.min_keep:
            raise OnnxPruneError(f"group {gid}: must keep at least {g.min_keep} units")
        plan.keep[gid] = idx
        plan.kept[gid] = (len(idx), g.channels)
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
        if 0 <= gid < len(groups.groups) and groups.group(gid).channels != units:
            raise OnnxPruneError(f"{path}: group {gid} has {groups.group(gid).channels} units in "
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


def plan_macs(groups: Groups, scores: Scores, target: float, *, min_channels: int = 1,
              round_to: int = 1, steps: int = 30) -> Plan:
    """The uniform ratio whose plan keeps about ``target`` x the original MACs."""
    if not 0.0 < target <= 1.0:
        raise OnnxPruneError(f"--macs-target must be in (0, 1], got {target}")
    if groups.macs is None:
        from .costs import unknown_dims

        need = "; ".join(f"input '{n}' has the symbolic dim(s) {', '.join(d)}"
                         for n, d in unknown_dims(groups.view).items()) or "some shapes are unknown"
        raise OnnxPruneError(f"--macs-target needs the model's MACs, which are unknown: {need}. Give "
                             f"--calib or --data (their shapes are used), or --input-shape NAME:D1,D2,...")
    if not groups.macs:
        raise OnnxPruneError("--macs-target is meaningless for this model: it has no multiply-"
                             "accumulates (no Conv, Gemm or MatMul with a known cost)")
    full = groups.macs
    lo, hi = 0.0, 0.99
    best = plan_uniform(groups, scores, 0.0, min_channels=min_channels, round_to=round_to)
    best_frac = 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        plan = plan_uniform(groups, scores, mid, min_channels=min_channels, round_to=round_to)
        frac = estimate_macs(groups, plan.keep) / full
        if frac > target:
            lo = mid
        else:
            hi, best, best_frac = mid, plan, frac
    if best_frac > target + 0.01:
        floor = estimate_macs(groups, plan_uniform(groups, scores, 0.99, min_channels=min_channels,
                                                   round_to=round_to).keep) / full
        raise OnnxPruneError(f"--macs-target {target} cannot be met: pruning every prunable group as "
                             f"far as it goes keeps {floor:.3f} of the MACs (frozen groups keep the "
                             f"rest); ask for {floor:.2f} or more")
    best.ratio = hi
    return best
