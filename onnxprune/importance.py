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
from .groups import Groups


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


def activation_dim(groups: Groups, use) -> tuple[str, int] | None:
    """The (tensor, axis) a linear consumer reads through this weight slice."""
    a = groups.analysis
    node = groups.view.nodes[use.node]
    want = a.atoms.resolve(use.layout)
    for k, name in enumerate(node.input):
        if not name or k == use.input or groups.view.is_const(name):
            continue
        for (tensor, axis), lay in a.layouts.items():
            if tensor == name and a.atoms.resolve(lay) == want:
                return tensor, axis
    return None


def consumer_uses(groups: Groups, atom: int):
    """The "in" weight uses (linear consumers) that read ``atom``."""
    atoms = groups.analysis.atoms
    return [u for u in groups.analysis.uses if u.role == "in" and atom in atoms.leaves(u.layout)]


def _per_index(groups: Groups, layout, atom: int, values: np.ndarray, how: str = "mean") -> np.ndarray:
    """Per-position values along an axis -> one value per index of ``atom``."""
    atoms = groups.analysis.atoms
    n = atoms.size[atom]
    rows = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    start, parts = 0, []
    for seg in atoms.resolve(layout):
        size = atoms.seg_size(seg)
        if seg.atom == atom:
            block = rows[start:start + size].reshape(seg.outer, n, seg.inner, -1)
            parts.append(np.moveaxis(block, 1, 0).reshape(n, -1))
        start += size
    joined = np.concatenate(parts, axis=1)
    return joined.sum(axis=1) if how == "sum" else joined.mean(axis=1)


def _out_axis(in_axis: int) -> int:
    """Output-neuron axis of a linear weight given its input axis (Conv: 1 -> 0,
    ConvTranspose/Gemm/MatMul (K, N): 0 -> 1)."""
    return 0 if in_axis != 0 else 1


def weight_matrix(value: np.ndarray, in_axis: int) -> np.ndarray:
    """A linear weight as (inputs, outputs, kernel) whatever its layout."""
    w = np.moveaxis(np.asarray(value, dtype=np.float64), [in_axis, _out_axis(in_axis)], [0, 1])
    return w.reshape(w.shape[0], w.shape[1], -1)


def _calibrated_consumers(groups: Groups, atom: int, cal):
    """(use, stats of the input it reads, consumer node) for each linear
    consumer of ``atom`` that calibration measured."""
    for use in consumer_uses(groups, atom):
        dim = activation_dim(groups, use)
        st = cal.get(*dim) if dim else None
        if st is not None:
            yield use, st, groups.view.nodes[use.node]


def _stat_criterion(stat: str):
    """mean_abs / act_l2 / apoz: statistics of the channel at each linear consumer."""
    def crit(groups, group, cal):
        out = []
        for use, st, _ in _calibrated_consumers(groups, group.atom, cal):
            values = {"mean_abs": st.mean_abs, "act_l2": st.rms, "apoz": 1.0 - st.apoz}[stat]
            out.append(_per_index(groups, use.layout, group.atom, values))
        return out
    return crit


def _relief(groups, group, cal):
    """Neural Network Relief: a channel's share of each consumer neuron's mean
    |w x| contribution (bias included), summed over neurons and consumers."""
    out = []
    for use, st, node in _calibrated_consumers(groups, group.atom, cal):
        w = weight_matrix(groups.view.const(node.input[use.input]), use.axis)
        contrib = np.abs(w).sum(axis=2) * st.mean_abs[:, None]  # (inputs, outputs)
        total = contrib.sum(axis=0)
        bias = groups.view.const(node.input[2]) if node.op_type in ("Conv", "ConvTranspose", "Gemm") \
            and len(node.input) > 2 and node.input[2] else None
        if bias is not None and np.asarray(bias).size == total.size:
            total = total + np.abs(np.asarray(bias, dtype=np.float64).reshape(-1))
        share = contrib / np.where(total > 0, total, 1.0)[None, :]
        out.append(_per_index(groups, use.layout, group.atom, share.sum(axis=1), "sum"))
    return out


def _flap(groups, group, cal):
    """FLAP fluctuation: variance of the input channel x squared norm of the
    consumer's weight column."""
    out = []
    for use, st, node in _calibrated_consumers(groups, group.atom, cal):
        w = weight_matrix(groups.view.const(node.input[use.input]), use.axis)
        values = st.var * (w ** 2).sum(axis=(1, 2))
        out.append(_per_index(groups, use.layout, group.atom, values, "sum"))
    return out


def _fpgm(groups, group, cal=None):
    """FPGM redundancy: distance of each filter to the others (a proxy for the
    geometric median); filters close to the rest are redundant."""
    out = []
    for use, sl in _member_slices(groups, group.atom):
        if use.role != "out" or sl.shape[1] < 2:
            continue
        sq = (sl ** 2).sum(axis=1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * sl @ sl.T, 0.0)
        out.append(np.sqrt(d2).sum(axis=1))
    return out or _magnitude(2)(groups, group)


def _bn(groups, group):
    out = []
    for use, sl in _member_slices(groups, group.atom):
        node = groups.view.nodes[use.node]
        if node.op_type == "BatchNormalization" and use.input == 1:
            out.append(np.abs(sl).mean(axis=1))
    return out or _magnitude(2)(groups, group)


# Weight criteria take (groups, group); data criteria also take the Calibration.
CRITERIA = {"l1": _magnitude(1), "l2": _magnitude(2), "bn": _bn, "fpgm": _fpgm}
DATA_CRITERIA = {"mean_abs": _stat_criterion("mean_abs"), "act_l2": _stat_criterion("act_l2"),
                 "apoz": _stat_criterion("apoz"), "relief": _relief, "flap": _flap}
ALL_CRITERIA = sorted(CRITERIA) + sorted(DATA_CRITERIA) + ["random"]
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


def score(groups: Groups, criterion: str = "l2", *, calibration=None, member_norm: str = "mean",
          reduction: str = "mean", seed: int = 0) -> Scores:
    """Scores for every prunable group.

    A data criterion whose group has no calibrated consumer (its channels only
    reach depthwise convs and the graph output, say) falls back to ``l2``.
    """
    if criterion not in ALL_CRITERIA:
        raise OnnxPruneError(f"unknown criterion '{criterion}' (choose from {', '.join(ALL_CRITERIA)})")
    if criterion in DATA_CRITERIA and calibration is None:
        raise OnnxPruneError(f"criterion '{criterion}' needs calibration data")
    if reduction not in REDUCTIONS:
        raise OnnxPruneError(f"unknown group reduction '{reduction}' (choose from {', '.join(REDUCTIONS)})")
    if member_norm not in NORMALISATIONS:
        raise OnnxPruneError(f"unknown normalisation '{member_norm}' (choose from {', '.join(NORMALISATIONS)})")
    rng = np.random.default_rng(seed)
    scores = Scores(criterion)
    for group in groups.prunable:
        if criterion == "random":
            scores.by_atom[group.atom] = rng.random(group.channels)
            continue
        if criterion in DATA_CRITERIA:
            members = DATA_CRITERIA[criterion](groups, group, calibration) or \
                CRITERIA["l2"](groups, group)
        else:
            members = CRITERIA[criterion](groups, group)
        vec = reduce([normalise(m, member_norm) for m in members], reduction) if members \
            else np.ones(group.channels)
        scores.by_atom[group.atom] = vec
    return scores


def calibration_requests(groups: Groups, gram: bool = False) -> dict:
    """{(tensor, axis): need_gram} for every linear consumer of a prunable group."""
    requests: dict = {}
    open_atoms = {g.atom for g in groups.prunable}
    atoms = groups.analysis.atoms
    for use in groups.analysis.uses:
        if use.role != "in" or not (atoms.leaves(use.layout) & open_atoms):
            continue
        dim = activation_dim(groups, use)
        if dim is not None:
            requests[dim] = requests.get(dim, False) or gram
    return requests


__all__ = ["Scores", "score", "CRITERIA", "DATA_CRITERIA", "ALL_CRITERIA", "calibration_requests"]
