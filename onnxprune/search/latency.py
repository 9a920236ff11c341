"""A latency budget: prune until onnxruntime, on this machine, runs the model
in at most a given fraction of the original's time.

Latency does not follow MACs exactly (per-op overhead, kernels that want
multiples of 8), so the plan is found by measuring, not by estimating: the
budget's ratio is searched by bisection, each candidate plan is applied and
timed with the settings ``validate`` uses (one sample, its threads, the
median of up to 30 runs), against the original timed the same way. The
largest ratio whose measured latency meets the target wins: pruning no more
than the target needs. A target no plan reaches is an error that names the
best ratio measured.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from onnxprune.check.validate import latency_ms, session
from onnxprune.core.data import random_feeds, rows
from onnxprune.core.errors import OnnxPruneError
from onnxprune.rewrite.engine import apply

STEPS = 7  # bisection steps (each applies and times one candidate)
DEEPEST = 0.95  # the largest ratio tried


@dataclass
class LatencySearch:
    target: float
    original_ms: float = 0.0
    tried: list = field(default_factory=list)  # (ratio, MACs or None, latency ratio)
    achieved: float | None = None  # measured latency ratio of the chosen plan


def _feeds(groups, cfg) -> dict:

    sample = groups.shape_info.sample if groups.shape_info is not None else None
    if sample:
        return rows(sample, slice(0, 1))
    known = dict(groups.shape_info.inputs) if groups.shape_info is not None else dict(cfg.input_shapes or {})
    return random_feeds(groups.model, 1, known, 0)


def time_ratio(base, sess, feeds: dict, runs: int, rounds: int = 3) -> tuple[float, float]:
    """(candidate / original median latency, original ms), the two timed in
    alternating rounds so that a load change on the machine hits both."""

    a, b = [], []
    for _ in range(rounds):
        a.append(latency_ms(base, feeds, max(5, runs // rounds), budget_s=1.0))
        b.append(latency_ms(sess, feeds, max(5, runs // rounds), budget_s=1.0))
    a.sort(), b.sort()
    return b[rounds // 2] / a[rounds // 2], a[rounds // 2]


def plan_latency(groups, plan_at, target: float, cfg, runs: int = 30):
    """(plan, LatencySearch): ``plan_at(ratio)`` gives the plan of a ratio
    under the configured allocation and rounding."""

    if not 0.0 < target < 1.0:
        raise OnnxPruneError(f"--latency-target must be in (0, 1), got {target}")
    feeds = _feeds(groups, cfg)
    search = LatencySearch(target)
    try:
        base = session(groups.model, cfg.threads)
        base.run(None, feeds)
    except Exception as e:  # noqa: BLE001 - onnxruntime run errors
        raise OnnxPruneError(f"--latency-target: the original model does not run on one sample: "
                             f"{str(e).splitlines()[0]}") from None

    def measure(ratio: float):
        plan = plan_at(ratio)
        sess = session(apply(groups, plan.keep), cfg.threads)
        got, search.original_ms = time_ratio(base, sess, feeds, runs)
        search.tried.append((round(ratio, 4), got))
        return plan, got

    deepest, got = measure(DEEPEST)
    if got > target:
        raise OnnxPruneError(f"--latency-target {target} cannot be met: the deepest plan tried (ratio "
                             f"{DEEPEST}) runs in x{got:.3f} of the original's time on this machine; "
                             f"ask for {got:.2f} or more")
    best, best_got = deepest, got
    lo, hi = 0.0, DEEPEST  # latency(lo) above the target, latency(hi) within it
    for _ in range(STEPS):
        mid = (lo + hi) / 2
        plan, got = measure(mid)
        if got <= target:
            hi, best, best_got = mid, plan, got
        else:
            lo = mid
    search.achieved = best_got
    best.ratio = hi
    return best, search


__all__ = ["plan_latency", "LatencySearch"]
