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
    plan = Plan()
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
