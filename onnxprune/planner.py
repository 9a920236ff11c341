"""Stage 5: scores -> keep-sets (which unit indices of each group survive)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import OnnxPruneError
from .groups import Groups
from .importance import Scores


@dataclass
class Plan:
    keep: dict = field(default_factory=dict)  # atom -> sorted np.ndarray of kept indices
    kept: dict = field(default_factory=dict)  # group id -> (kept, channels)
    ratio: float | None = None  # the uniform ratio used, when there was one

    @property
    def removed(self) -> int:
        return sum(c - k for k, c in self.kept.values())


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
        order = np.argsort(-scores[g.atom], kind="stable")
        plan.keep[g.atom] = np.sort(order[:k])
        plan.kept[g.id] = (k, g.channels)
    return plan


def plan_from_keep(groups: Groups, keep_by_id: dict[int, list[int]]) -> Plan:
    """An explicit plan (tests, the oracle): group id -> indices to keep."""
    plan = Plan()
    by_id = {g.id: g for g in groups.groups}
    for gid, idx in keep_by_id.items():
        g = by_id[gid]
        if not g.prunable:
            raise OnnxPruneError(f"group {gid} is frozen: {'; '.join(g.frozen)}")
        idx = np.unique(np.asarray(idx, dtype=np.int64))
        if len(idx) == 0 or idx.min() < 0 or idx.max() >= g.channels:
            raise OnnxPruneError(f"group {gid}: keep-set must be non-empty indices below {g.channels}")
        plan.keep[g.atom] = idx
        plan.kept[gid] = (len(idx), g.channels)
    return plan


def estimate_macs(groups: Groups, keep: dict) -> int:
    """MACs after applying ``keep``, without rewriting: each node's MACs scale
    with the kept fraction of its output channels and of its linear input."""
    from .costs import node_macs

    a = groups.analysis
    atoms = a.atoms

    def frac(layout) -> float:
        full = atoms.layout_size(layout)
        return atoms.new_size(layout, keep) / full if full else 1.0

    out_layouts: dict[str, list] = {}
    for (tensor, _), lay in a.layouts.items():
        out_layouts.setdefault(tensor, []).append(lay)
    in_layouts: dict[int, list] = {}
    for use in a.uses:
        if use.role == "in":
            in_layouts.setdefault(use.node, []).append(use.layout)
    total = 0.0
    for index, node in enumerate(groups.view.nodes):
        macs = node_macs(groups.view, node)
        if not macs:
            continue
        f = 1.0
        for lay in out_layouts.get(node.output[0], []) + in_layouts.get(index, []):
            f *= frac(lay)
        total += macs * f
    return int(round(total))


def plan_macs(groups: Groups, scores: Scores, target: float, *, min_channels: int = 1,
              round_to: int = 1, steps: int = 30) -> Plan:
    """The uniform ratio whose plan keeps about ``target`` x the original MACs."""
    if not 0.0 < target <= 1.0:
        raise OnnxPruneError(f"--macs-target must be in (0, 1], got {target}")
    full = groups.macs or 1
    lo, hi = 0.0, 0.99
    best = plan_uniform(groups, scores, 0.0, min_channels=min_channels, round_to=round_to)
    for _ in range(steps):
        mid = (lo + hi) / 2
        plan = plan_uniform(groups, scores, mid, min_channels=min_channels, round_to=round_to)
        if estimate_macs(groups, plan.keep) / full > target:
            lo = mid
        else:
            hi, best = mid, plan
    best.ratio = hi
    return best
