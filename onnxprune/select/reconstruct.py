"""Which channels to remove when the next layer will be compensated.

A per-channel score ranks channels as if each were removed alone and left
uncorrected. But a removed channel is compensated (``compensate.py``, mode
``lsq``): its consumer's weights are refitted on the kept channels by least
squares. What matters is the error left *after* that refit, and it depends on
which other channels stay: a channel the others can reproduce costs nothing.

For one dense consumer ``y = W^T x`` (W: channels x outputs) with input
covariance ``G`` and ``P = G^-1``, removing a block ``B`` of channels and
refitting the rest optimally leaves the output error
``tr(W_B^T (P_BB)^-1 W_B)`` (Optimal Brain Surgeon, the layer-wise form used
by OBC / SparseGPT and ThiNet). Removing it also updates the kept weights
``W -= P[:, B] (P_BB)^-1 W_B`` and downdates ``P``, so the next choice sees
the already-compensated layer. ``obs_order`` runs this greedily, a few units
at a time, summing the error over every consumer of the group, each
normalised by its output energy ``tr(W^T G W)`` so that consumers and groups
of different scale compare. The result is a removal order and the marginal
cost of each removal: the order is the selection, the costs feed the global
allocation (``planner.plan_global``).
"""
from __future__ import annotations

import numpy as np

RIDGE = 1e-3  # as compensate.lsq: x mean variance on the diagonal
STEP = 0.02  # fraction of the group's units removed per greedy step (at least one)


class _Consumer:
    """The greedy state of one consumer, in channel space only: ``M = W W^T``
    (every cost and update needs W only through it, so a conv's outputs x taps
    never enter the loop) and the inverse covariance ``P``."""

    def __init__(self, w: np.ndarray, cov: np.ndarray, blocks: np.ndarray):
        c = cov.shape[0]
        scale = np.trace(cov) / max(c, 1) + 1e-12
        g = cov + RIDGE * scale * np.eye(c)
        flat = w.reshape(c, -1).astype(np.float64)  # (channels, outputs x taps)
        self.m = flat @ flat.T
        self.energy = float(np.sum(g * self.m)) + 1e-30  # tr(W^T G W)
        self.p = np.linalg.inv(g)
        self.blocks = blocks  # (units, positions per unit) in this consumer's axis

    def costs(self, alive: np.ndarray) -> np.ndarray:
        """The error of removing each alive unit alone, now (normalised)."""
        if self.blocks.shape[1] == 1:  # one position per unit: vectorised
            j = self.blocks[alive, 0]
            return self.m[j, j] / np.maximum(self.p[j, j], 1e-30) / self.energy
        out = np.empty(len(alive))
        for k, u in enumerate(alive):
            b = self.blocks[u]
            out[k] = float(np.trace(np.linalg.solve(self.p[np.ix_(b, b)], self.m[np.ix_(b, b)])))
        return out / self.energy

    def remove(self, units: np.ndarray) -> float:
        """Remove units together and refit the rest
        (``W -= A W_B`` with ``A = P[:, B] P_BB^-1``); returns the error added."""
        b = np.concatenate([self.blocks[u] for u in units])
        pbb = self.p[np.ix_(b, b)]
        pb = self.p[:, b]
        a = np.linalg.solve(pbb, pb.T).T  # (channels, |b|)
        err = float(np.trace(np.linalg.solve(pbb, self.m[np.ix_(b, b)])))
        mb = self.m[b, :]  # (|b|, channels)
        am = a @ mb
        self.m += a @ self.m[np.ix_(b, b)] @ a.T - am - am.T
        self.p -= a @ pb.T
        self.m[b, :] = 0.0
        self.m[:, b] = 0.0
        self.p[b, :] = 0.0
        self.p[:, b] = 0.0
        self.p[b, b] = 1.0  # removed: inert
        return err / self.energy


def obs_order(consumers: list, units: int, limit: int | None = None):
    """Greedy removal order over ``units`` units, given ``consumers`` as
    ``(weight rows (positions, outputs...), covariance (positions, positions),
    blocks (units, positions per unit))``. Returns ``(order, costs)``: the
    units in removal order (the first ``limit``, by default all but one) and
    the error each removal added, made non-decreasing (a later removal never
    looks cheaper than an earlier one, so a prefix is always the cheapest)."""
    state = [_Consumer(*c) for c in consumers]
    limit = units - 1 if limit is None else min(limit, units - 1)
    alive = np.arange(units)
    order, costs = [], []
    step = max(1, int(round(STEP * units)))
    while len(order) < limit:
        total = sum(s.costs(alive) for s in state)
        take = np.argsort(total, kind="stable")[:min(step, limit - len(order))]
        chosen = alive[take]
        added = sum(s.remove(chosen) for s in state)
        # spread the block's error over its units by their solo costs
        share = total[take] / max(float(total[take].sum()), 1e-30)
        order.extend(int(u) for u in chosen)
        costs.extend(float(added) * share if added > 0 else total[take])
        alive = np.delete(alive, take)
    costs = np.maximum.accumulate(np.asarray(costs, dtype=np.float64)) if costs else np.zeros(0)
    return np.asarray(order, dtype=np.int64), costs


__all__ = ["obs_order"]
