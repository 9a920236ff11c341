"""One score per channel (unit) of every prunable group.

A criterion scores each *member* of a group separately (one weight slice, one
BatchNorm scale...), giving a vector over the group's units. Two named steps
follow, shared by every criterion: members are normalised so that a large
tensor does not drown a small one, then reduced (mean / sum / max) to one
vector per group. Higher score = more important = kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxprune.analysis.groups import Groups
from onnxprune.core.errors import OnnxPruneError
from onnxprune.select.reconstruct import obs_order


@dataclass
class Scores:
    criterion: str
    by_group: dict = field(default_factory=dict)  # group id -> np.ndarray of shape (units,)
    # Removal order and the marginal cost of each removal (non-decreasing),
    # when the criterion measures them itself (``obs``); otherwise derived
    # from the scores (``removal``).
    orders: dict = field(default_factory=dict)
    costs: dict = field(default_factory=dict)

    def __getitem__(self, gid: int) -> np.ndarray:
        return self.by_group[gid]

    def removal(self, gid: int) -> tuple[np.ndarray, np.ndarray]:
        """(units in removal order, cost of each removal): lowest score first,
        each costing its share of the group's total score, so that groups of
        different sizes and scales compare (``planner.plan_global``)."""
        if gid in self.orders:
            return self.orders[gid], self.costs[gid]
        s = np.asarray(self.by_group[gid], dtype=np.float64)
        s = s - min(0.0, float(s.min()))
        order = np.argsort(s, kind="stable")
        cost = s[order] / max(float(s.sum()), 1e-30)
        return order, np.maximum.accumulate(cost)


def _member_slices(groups: Groups, gid: int):
    """Yield (use, array of shape (units, rest)) for each weight slice of a group."""
    for use in groups.uses(gid):
        yield use, groups.weight_rows(gid, use)


def _magnitude(p: int):
    def crit(groups, group):
        out = []
        for use, sl in _member_slices(groups, group.id):
            if p == 1:
                out.append(np.abs(sl).sum(axis=1, dtype=np.float64))
            else:
                out.append(np.sqrt(np.einsum("ij,ij->i", sl, sl).astype(np.float64)))
        return out
    return crit


def _calibrated_consumers(groups: Groups, gid: int, cal):
    """(use, stats of the input it reads, linear form) for each linear
    consumer of a group that calibration measured."""
    for use in groups.consumers(gid):
        dim = groups.activation(use)
        st = cal.get(*dim) if dim else None
        if st is not None:
            yield use, st, groups.linear(use.node)


def _per_unit(groups: Groups, gid: int, use, values: np.ndarray, how: str = "mean") -> np.ndarray:
    """Per-position values along a slice's axis -> one value per unit of the group."""
    joined = groups.unit_rows(gid, use.layout, values)
    return joined.sum(axis=1) if how == "sum" else joined.mean(axis=1)


def _stat_criterion(stat: str):
    """mean_abs / act_l2 / apoz: statistics of the channel at each linear consumer."""
    def crit(groups, group, cal):
        out = []
        for use, st, _ in _calibrated_consumers(groups, group.id, cal):
            values = {"mean_abs": st.mean_abs, "act_l2": st.rms, "apoz": 1.0 - st.apoz}[stat]
            out.append(_per_unit(groups, group.id, use, values))
        return out
    return crit


def _consumer_matrix(groups: Groups, use, form) -> np.ndarray | None:
    """The consumer's weight as (inputs, outputs, taps), when its rule gives a
    linear form whose input axis is this slice's axis."""
    if form is None or form.weight != use.input:
        return None
    w = groups.weight(use)
    if form.in_axis % w.ndim != use.axis:
        return None
    return form.matrix(w)


def _relief(groups, group, cal):
    """Neural Network Relief: a channel's share of each consumer neuron's mean
    |w x| contribution (bias included), summed over neurons and consumers."""
    out = []
    for use, st, form in _calibrated_consumers(groups, group.id, cal):
        w = _consumer_matrix(groups, use, form)
        if w is None:
            continue
        contrib = np.abs(w).sum(axis=2) * st.mean_abs[:, None]  # (inputs, outputs)
        total = contrib.sum(axis=0)
        node = groups.node(use)
        has_bias = form.bias is not None and len(node.input) > form.bias and node.input[form.bias]
        bias = groups.view.const(node.input[form.bias]) if has_bias else None
        if bias is not None and np.asarray(bias).size == total.size:
            total = total + np.abs(np.asarray(bias, dtype=np.float64).reshape(-1) * form.bias_scale)
        share = contrib / np.where(total > 0, total, 1.0)[None, :]
        out.append(_per_unit(groups, group.id, use, share.sum(axis=1), "sum"))
    return out


def _flap(groups, group, cal):
    """FLAP fluctuation: variance of the input channel x squared norm of the
    consumer's weight column."""
    out = []
    for use, st, form in _calibrated_consumers(groups, group.id, cal):
        w = _consumer_matrix(groups, use, form)
        if w is None:
            continue
        values = st.var * (w ** 2).sum(axis=(1, 2))
        out.append(_per_unit(groups, group.id, use, values, "sum"))
    return out


def _fpgm(groups, group, cal=None):
    """FPGM redundancy: distance of each filter to the others (a proxy for the
    geometric median); filters close to the rest are redundant."""
    out = []
    for use, sl in _member_slices(groups, group.id):
        if use.role != "out" or sl.shape[1] < 2:
            continue
        sl = sl.astype(np.float64)  # distances cancel: keep the precision
        sq = (sl ** 2).sum(axis=1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * sl @ sl.T, 0.0)
        out.append(np.sqrt(d2).sum(axis=1))
    return out or _magnitude(2)(groups, group)


OBS_MAX_CHANNELS = 4096  # wider consumers: the greedy's cubic cost is not worth it; scores decide
OBS_MAX_WORK = 2e10  # consumers x channels^3 of one group's greedy (~20 s): past it, scores decide


def _obs_consumers(groups: Groups, group, cal) -> list:
    """(weight (positions, outputs, taps), covariance, unit blocks) of each
    dense consumer with a measured Gram matrix (``reconstruct.obs_order``);
    none when the greedy would cost more than ``OBS_MAX_WORK``."""
    found = []
    for use, st, form in _calibrated_consumers(groups, group.id, cal):
        if st.xtx is None or form is None or not form.dense or st.size > OBS_MAX_CHANNELS:
            continue
        w = _consumer_matrix(groups, use, form)
        if w is not None and w.shape[0] == st.size:
            found.append((use, st, w))
    if sum(float(st.size) ** 3 for _, st, _ in found) > OBS_MAX_WORK:
        return []  # a wide group read by many layers (a transformer's hidden size): too costly
    return [(w, st.covariance(), groups.unit_rows(group.id, use.layout, np.arange(st.size, dtype=np.float64)[:, None])
             .astype(np.int64)) for use, st, w in found]


def _bn(groups, group):
    """|gamma| of the normalisation (or per-channel scale) slices of the group."""
    out = [np.abs(sl).mean(axis=1) for use, sl in _member_slices(groups, group.id) if use.role == "scale"]
    return out or _magnitude(2)(groups, group)


# Weight criteria take (groups, group); data criteria also take the Calibration.
CRITERIA = {"l1": _magnitude(1), "l2": _magnitude(2), "bn": _bn, "fpgm": _fpgm}
DATA_CRITERIA = {"mean_abs": _stat_criterion("mean_abs"), "act_l2": _stat_criterion("act_l2"),
                 "apoz": _stat_criterion("apoz"), "relief": _relief, "flap": _flap}
# Criteria that need the Gram matrix of each consumer's input (calibrated like --compensate lsq).
GRAM_CRITERIA = ("obs",)
ALL_CRITERIA = sorted(CRITERIA) + sorted(DATA_CRITERIA) + list(GRAM_CRITERIA) + ["random"]
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
    if (criterion in DATA_CRITERIA or criterion in GRAM_CRITERIA) and calibration is None:
        raise OnnxPruneError(f"criterion '{criterion}' needs calibration data")
    if reduction not in REDUCTIONS:
        raise OnnxPruneError(f"unknown group reduction '{reduction}' (choose from {', '.join(REDUCTIONS)})")
    if member_norm not in NORMALISATIONS:
        raise OnnxPruneError(f"unknown normalisation '{member_norm}' (choose from {', '.join(NORMALISATIONS)})")
    rng = np.random.default_rng(seed)
    scores = Scores(criterion)
    for group in groups.prunable:
        if criterion == "random":
            scores.by_group[group.id] = rng.random(group.units)
            continue
        if criterion == "obs":
            consumers = _obs_consumers(groups, group, calibration)
            if consumers:

                order, costs = obs_order(consumers, group.units)
                full = np.concatenate([order, np.setdiff1d(np.arange(group.units), order)])
                rank = np.empty(group.units)
                rank[full] = np.arange(group.units)  # removed first = lowest score
                scores.by_group[group.id] = rank
                scores.orders[group.id], scores.costs[group.id] = order, costs
                continue
            members = CRITERIA["l2"](groups, group)  # no measured dense consumer: weights decide
        elif criterion in DATA_CRITERIA:
            members = DATA_CRITERIA[criterion](groups, group, calibration) or \
                CRITERIA["l2"](groups, group)
        else:
            members = CRITERIA[criterion](groups, group)
        vec = reduce([normalise(m, member_norm) for m in members], reduction) if members \
            else np.ones(group.units)
        scores.by_group[group.id] = vec
    return scores


GRAM_BUDGET = 1 << 30  # bytes of Gram matrices one calibration holds, all layers together


def calibration_requests(groups: Groups, gram: bool = False) -> dict:
    """{(tensor, axis): need_gram} for every linear consumer of a prunable group
    (the Gram matrix for ``--compensate lsq`` and the ``obs`` criterion).

    Gram matrices are granted narrowest first while their float64 bytes fit
    ``GRAM_BUDGET``: a model with many wide layers (a 3 GB MLP of 8192-wide
    layers would need 5.5 GB of them) calibrates in bounded memory, and its
    widest consumers fall back to bias compensation and weight scores."""
    requests: dict = {}
    sizes: dict = {}
    for g in groups.prunable:
        for use in groups.consumers(g.id):
            dim = groups.activation(use)
            if dim is not None:
                requests[dim] = requests.get(dim, False) or gram
                sizes[dim] = groups.analysis.atoms.layout_size(use.layout)
    spent = 0
    for dim in sorted((d for d, want in requests.items() if want), key=lambda d: (sizes[d], d)):
        need = 8 * sizes[dim] ** 2
        if spent + need > GRAM_BUDGET:
            requests[dim] = False
        else:
            spent += need
    return requests


__all__ = ["Scores", "score", "CRITERIA", "DATA_CRITERIA", "GRAM_CRITERIA", "ALL_CRITERIA", "calibration_requests"]
