"""Stage 4: one score per channel (unit) of every prunable group.

A criterion scores each *member* of a group separately (one weight slice, one
BatchNorm scale...), giving a vector over the group's units. Two named steps
follow, shared by every criterion: members are normalised so that a large
tensor does not drown a small one, then reduced (mean / sum / max) to one
vector per group. Higher score = more important = kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import OnnxPruneError
from .groups import Group, Groups


@dataclass
class Scores:
    criterion: str
    by_atom: dict = field(default_factory=dict)  # atom -> np.ndarray of shape (channels,)

    def __getitem__(self, atom: int) -> np.ndarray:
        return self.by_atom[atom]


def _member_slices(groups: Groups, atom: int):
    """Yield (use, array of shape (units, rest)) for each weight use touching ``atom``."""
    a = groups.analysis
    atoms = a.atoms
    n = atoms.size[atom]
    for use in a.uses:
        if atom not in atoms.leaves(use.layout):
            continue
        value = groups.view.const(groups.view.nodes[use.node].input[use.input])
        rows = np.moveaxis(np.asarray(value, dtype=np.float64), use.axis, 0)
        rows = rows.reshape(rows.shape[0], -1)
        start = 0
        parts = []
        for seg in atoms.resolve(use.layout):
            size = atoms.seg_size(seg)
            if seg.atom == atom:
                block = rows[start:start + size].reshape(seg.outer, n, seg.inner, -1)
                parts.append(np.moveaxis(block, 1, 0).reshape(n, -1))
            start += size
        if parts:
            yield use, np.concatenate(parts, axis=1)


def _magnitude(p: int):
    def crit(groups, group):
        out = []
        for use, sl in _member_slices(groups, group.atom):
            if p == 1:
                out.append(np.abs(sl).sum(axis=1))
            else:
                out.append(np.sqrt((sl ** 2).sum(axis=1)))
        return out
    return crit


def _bn(groups, group):
    out = []
    for use, sl in _member_slices(groups, group.atom):
        node = groups.view.nodes[use.node]
        if node.op_type == "BatchNormalization" and use.input == 1:
            out.append(np.abs(sl).mean(axis=1))
    return out or _magnitude(2)(groups, group)


CRITERIA = {"l1": _magnitude(1), "l2": _magnitude(2), "bn": _bn}
NORMALISATIONS = ("mean", "max", "none")
REDUCTIONS = ("mean", "sum", "max")


def normalise(vec: np.ndarray, how: str) -> np.ndarray:
    if how == "none":
        return vec
    scale = vec.mean() if how == "mean" else vec.max()
    return vec / scale if scale > 0 else vec


def reduce(vectors: list[np.ndarray], how: str) -> np.ndarray:
    stack = np.stack(vectors)
    return {"mean": stack.mean, "sum": stack.sum, "max": stack.max}[how](axis=0)


def score(groups: Groups, criterion: str = "l2", *, member_norm: str = "mean",
          reduction: str = "mean", seed: int = 0) -> Scores:
    """Scores for every prunable group."""
    if criterion != "random" and criterion not in CRITERIA:
        raise OnnxPruneError(f"unknown criterion '{criterion}' "
                             f"(choose from {', '.join(sorted(CRITERIA) + ['random'])})")
    if reduction not in REDUCTIONS:
        raise OnnxPruneError(f"unknown group reduction '{reduction}'")
    rng = np.random.default_rng(seed)
    scores = Scores(criterion)
    for group in groups.prunable:
        if criterion == "random":
            scores.by_atom[group.atom] = rng.random(group.channels)
            continue
        members = CRITERIA[criterion](groups, group)
        vec = reduce([normalise(m, member_norm) for m in members], reduction) if members \
            else np.ones(group.channels)
        scores.by_atom[group.atom] = vec
    return scores


__all__ = ["Scores", "score", "CRITERIA", "Group"]
