"""Where a prune's error comes from (``prune --explain``), measured on the
held-out samples validation uses.

Three measurements of the same plan, each in onnxruntime:
- the model as it will be written (compensated, refitted);
- the same plan without compensation: what compensation and the refits
  made up for;
- each pruned group alone at the units the plan keeps, compensated alone:
  which groups the error comes from, and at what price per MAC saved.

The error of a model is, per output, one minus the mean centred cosine with
the original's outputs over the samples (each sample's values minus their
mean: an output that moves where it varies), and the worst output counts.
When the groups alone add up to much less than the whole, they interact
(errors that compound through the layers); when a few groups carry most of
the error for little of the MACs saved, the budget split is what to look at;
when compensation made up for little, the channels chosen are.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from onnxprune.analysis.groups import Groups
from onnxprune.check.similarity import centred_cosines
from onnxprune.check.validate import Reference, by_sample, run_batched, session
from onnxprune.core.data import sample_count
from onnxprune.refit.compensate import Compensation, compensate
from onnxprune.rewrite.engine import apply
from onnxprune.select.planner import Plan, estimate_macs

TOP = 3  # groups named in the summary
NOISE = 1e-4  # errors below this are rounding: nothing to explain


@dataclass
class GroupError:
    group: int
    units: int
    kept: int
    members: list
    error: float  # this group pruned alone (compensated alone)
    macs_saved: float | None  # share of the model's MACs its removal saves


@dataclass
class Explanation:
    metric: str
    samples: int
    error: float  # the pruned model as written (compensated, refitted)
    uncompensated: float  # the same plan, nothing compensated
    groups: list[GroupError] = field(default_factory=list)  # worst first
    findings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def model_error(ref: Reference, outputs: list) -> float:
    """The worst output's 1 - mean centred cosine with the original's."""
    worst = 0.0
    for a, b in zip(by_sample(ref.outputs, ref.sample_axes), by_sample(outputs, ref.sample_axes)):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype.kind not in "fc" or not a.size:
            worst = max(worst, float(np.mean(a.reshape(len(a), -1) != b.reshape(len(b), -1))) if a.size else 0.0)
            continue
        worst = max(worst, float(np.mean(1.0 - centred_cosines(a.reshape(len(a), -1), b.reshape(len(b), -1)))))
    return worst


def _error_of(groups: Groups, keep: dict, comp: Compensation | None, ref: Reference) -> float:
    model = apply(groups, keep, compensation=comp)
    return model_error(ref, run_batched(session(model, ref.threads), ref.feeds, ref.batch))


def explain(groups: Groups, plan: Plan, comp: Compensation | None, calibration, mode: str,
            ref: Reference) -> Explanation:
    """Measure where the error of ``plan`` (compensated as ``comp``) comes
    from, on the reference's samples. Runs 2 + (pruned groups) models."""
    pruned = {gid: idx for gid, idx in plan.keep.items() if len(idx) < groups.group(gid).units}
    out = Explanation(metric="1 - centred cosine (mean over samples, worst output)",
                      samples=sample_count(ref.feeds),
                      error=_error_of(groups, plan.keep, comp, ref),
                      uncompensated=_error_of(groups, plan.keep, None, ref))
    for gid, idx in pruned.items():
        keep = {gid: idx}
        alone = compensate(groups, keep, calibration, mode) if calibration is not None and mode != "none" else None
        g = groups.group(gid)
        saved = 1.0 - estimate_macs(groups, keep) / groups.macs if groups.macs else None
        out.groups.append(GroupError(gid, g.units, len(idx), g.members[:3], _error_of(groups, keep, alone, ref),
                                     saved))
    out.groups.sort(key=lambda r: -r.error)
    out.findings = _findings(out)
    return out


def _findings(x: Explanation) -> list[str]:
    """What the numbers say, in words: the worst groups and their price, how
    much the groups interact, what compensation made up for."""
    said = []
    if x.uncompensated > NOISE:
        share = 1.0 - x.error / x.uncompensated
        said.append(f"compensation and refits removed {100 * share:.0f}% of the error the plan makes uncompensated "
                    f"({x.uncompensated:.4f} -> {x.error:.4f})" if share >= 0 else
                    f"compensation and refits added error ({x.uncompensated:.4f} -> {x.error:.4f}): the refits "
                    f"fit the calibration samples, not these")
    alone = sum(r.error for r in x.groups)
    if len(x.groups) > TOP and alone > NOISE:
        top = x.groups[:TOP]
        part = sum(r.error for r in top) / alone
        macs = sum(r.macs_saved or 0.0 for r in top)
        total_macs = sum(r.macs_saved or 0.0 for r in x.groups)
        names = ", ".join(f"{r.group} ({r.members[0] if r.members else '?'})" for r in top)
        said.append(f"groups {names} carry {100 * part:.0f}% of the error the groups make alone, for "
                    f"{100 * macs / total_macs if total_macs else 0:.0f}% of the MACs saved"
                    + ("; the budget split is what to look at" if part > 0.5 and macs < 0.5 * total_macs else ""))
    if len(x.groups) > 1 and alone > NOISE:
        said.append(f"the groups alone add up to {alone:.4f}, the whole plan {x.error:.4f}: "
                    + ("they compound through the layers" if x.error > 1.5 * alone else
                       "they overlap" if x.error < 0.67 * alone else "about additive"))
    return said


__all__ = ["explain", "Explanation", "GroupError", "model_error"]
