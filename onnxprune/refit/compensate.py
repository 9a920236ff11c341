"""Compensation without retraining: fold what the removed channels carried
into the consumers that read them (beside ``rewrite.py``, which applies it).

- ``bias``: each removed channel is replaced by its calibration mean; its
  contribution ``W[:, r] * mean_r`` moves into the consumer's bias. Exact when
  the channel is constant (away from zero-padded borders of a conv).
- ``lsq``: each removed channel is regressed on the kept channels of the same
  consumer input, ``x_r ~ A x_K + b`` (ridge, from the calibration Gram
  matrix); the consumer's kept columns absorb ``A^T W_r`` and its bias
  ``b W_r``. Exact when the removed channel is a linear combination of kept
  ones; never worse than ``bias`` on the calibration data, since ``A = 0``
  is the bias solution.
- Integer weights (``LinearForm.integer``: MatMulInteger, ConvInteger) are
  refitted in units of the weight's scale and rounded back; their bias goes
  on the float output after the scale (``LinearForm.dequantized``), or,
  where the graph has none, the regression goes through the origin
  (uncentred moments) and adds no bias.

Consumers are whatever the node's rule calls linear (``Rule.linear``); this
module names no op.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxprune.analysis.groups import Groups
from onnxprune.core.errors import OnnxPruneError

MODES = ("none", "bias", "lsq")


@dataclass
class Compensation:
    """Full-size replacement weights and output-bias deltas, by node index."""

    mode: str = "none"
    weights: dict = field(default_factory=dict)  # (node index, slot) -> np.ndarray
    biases: dict = field(default_factory=dict)  # node index -> np.ndarray (one value per neuron)
    skipped: list = field(default_factory=list)  # readable reasons
    notes: list = field(default_factory=list)  # where its statistics came from, when not from data

    integer: set = field(default_factory=set)  # node indices of integer-weight readers given a bias

    def __bool__(self) -> bool:
        return bool(self.weights or self.biases)

    def integer_biases(self) -> int:
        """Float values the biases of integer layers add (each a new tensor
        after the layer's scale: a quantized model stores few floats)."""
        return sum(int(np.size(b)) for i, b in self.biases.items() if i in self.integer)


def _regress(cov: np.ndarray, kept: np.ndarray, removed: np.ndarray, ridge: float) -> np.ndarray:
    """Coefficients (R, K) of x_removed on x_kept (centred), per removed channel.

    A removed channel the kept ones explain almost perfectly (residual variance
    below 1e-6 of its own) gets the unregularised least-squares fit (truncated
    pseudo-inverse), so linear dependence is reconstructed exactly; every other
    channel gets the ridge ``ridge x mean variance``, which generalises better
    beyond the calibration set (measured on the sample models).
    """
    ckk = cov[np.ix_(kept, kept)]
    crk = cov[np.ix_(removed, kept)]
    scale = np.trace(ckk) / max(len(kept), 1) + 1e-12
    # One eigendecomposition serves both fits: the ridge solve, and the
    # truncated pseudo-inverse, where near-null directions (dead or duplicate
    # kept channels) are dropped instead of amplified.
    lam, vec = np.linalg.eigh(ckk)
    proj = crk @ vec  # (R, K) in the eigenbasis
    regular = (proj / (lam + ridge * scale)) @ vec.T
    keep = lam > 1e-6 * max(float(lam.max()), 1e-30)
    tight = (proj[:, keep] / lam[keep]) @ vec[:, keep].T
    var_r = np.diag(cov)[removed]
    residual = var_r - 2 * np.einsum("rk,rk->r", tight, crk) + np.einsum("rk,kl,rl->r", tight, ckk, tight)
    exact = residual <= 1e-6 * np.maximum(var_r, 1e-30)
    return np.where(exact[:, None], tight, regular)


def shared_weight(groups: Groups, node, form) -> str | None:
    """A weight or bias this node shares with other readers: compensating it
    for one reader would change (or copy) it for all."""
    view = groups.view
    for slot in (form.weight, form.bias):
        if slot is None or slot >= len(node.input) or not node.input[slot]:
            continue
        name = node.input[slot]
        if len(view.readers(view.const_root(name) or name)) > 1:
            return name
    return None


def _zero_point(groups: Groups, index: int, form):
    name = form.zero_point_input(groups.view.nodes[index])
    return groups.view.const(name) if name else None


def held(groups: Groups, comp: Compensation, index: int, slot: int, form) -> np.ndarray | None:
    """The weight compensation holds for a reader, as it computes (an
    integer weight minus its zero point); None when it holds none."""
    value = comp.weights.get((index, slot))
    if value is None or not form.integer:
        return value
    return form.effective(value, _zero_point(groups, index, form))


def to_stored(groups: Groups, index: int, form, w: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A refitted W ((inputs, outputs, taps), as it computes) back in the
    layout and type of ``like``, the weight it replaces; an integer weight
    rounded back to its integers, zero point added."""
    if not form.integer:
        return form.from_matrix(w, np.asarray(like))
    stored = groups.view.const(groups.view.nodes[index].input[form.weight])
    return form.quantized(form.from_matrix(w, np.asarray(like, dtype=np.float64)),
                          _zero_point(groups, index, form), stored)


def compensate(groups: Groups, keep: dict, calibration, mode: str = "bias",
               ridge: float = 1e-3) -> Compensation:
    """Compensation for a plan (group id -> kept units)."""
    if mode not in MODES:
        raise OnnxPruneError(f"unknown compensation '{mode}' (choose from {', '.join(MODES)})")
    comp = Compensation(mode)
    if mode == "none" or calibration is None:
        return comp
    for tied in _tied(groups, list(_readers(groups, keep, calibration, comp, mode)), comp):
        _fit(groups, keep, tied, comp, mode, ridge)
    return comp


@dataclass
class _Reader:
    """A dense consumer compensation can rewrite, with its input's statistics."""

    use: object
    node: object
    form: object
    stats: object
    root: str  # the stored weight


def _readers(groups: Groups, keep: dict, calibration, comp: Compensation, mode: str):
    for use, node, form in groups.linear_readers(keep):
        if form is None:
            comp.skipped.append(f"{node.name}: its rule gives no linear form for this input")
            continue
        if not form.dense:
            continue  # channel-wise (grouped) consumers need no compensation
        if form.integer and not form.dequantized and mode != "lsq":
            comp.skipped.append(f"{node.name}: its weight is stored as integers with no float output to add "
                                f"the removed channels' means to (lsq refits the integers)")
            continue
        stored = groups.view.const_root(node.input[form.weight])
        if stored is None:
            comp.skipped.append(f"{node.name}: its weight is computed from stored constants "
                                f"(Cast, DequantizeLinear...), which compensation cannot rewrite")
            continue
        dim = groups.activation(use)
        st = calibration.get(*dim) if dim else None
        if st is None:
            comp.skipped.append(f"{node.name}: no calibration statistics for its input")
            continue
        yield _Reader(use, node, form, st, stored)


def _tied(groups: Groups, readers: list, comp: Compensation):
    """Readers in lists that must get one compensated weight: a weight (or
    bias) several nodes share, as in a layer applied more than once, is
    refitted once for all its readers, from their pooled statistics. Shared
    with anything compensation does not rewrite here, it is left alone."""
    view = groups.view
    by_root: dict[str, list] = {}
    for r in readers:
        by_root.setdefault(r.root, []).append(r)
    for root, tied in by_root.items():
        mine = {(r.use.node, r.form.weight) for r in tied}
        nodes = {r.use.node for r in tied}
        outside = {(i, k) for i, k, _ in view.readers(root)} - mine
        for r in tied:
            slot = r.form.bias
            if slot is not None and slot < len(r.node.input) and r.node.input[slot]:
                name = r.node.input[slot]
                outside |= {(i, k) for i, k, _ in view.readers(view.const_root(name) or name)
                            if i not in nodes}
        if outside:
            for r in tied:
                comp.skipped.append(f"{r.node.name}: '{root}' is shared with other nodes")
            continue
        yield tied


def _bias_root(groups: Groups, r: _Reader):
    """The stored bias a reader adds to, or the reader itself where it has none."""
    slot = r.form.bias
    if slot is None or slot >= len(r.node.input) or not r.node.input[slot]:
        return ("node", r.use.node)
    name = r.node.input[slot]
    return groups.view.const_root(name) or name


def _fit(groups: Groups, keep: dict, tied: list, comp: Compensation, mode: str, ridge: float) -> None:
    """One refit of the weight ``tied`` readers share: the removed channels
    regressed on the kept ones over all readers' rows (each reader's
    covariance about its own mean, weighted by its rows), each reader's
    offset into its own output bias, or the mean offset where the bias is
    shared too."""
    first = tied[0]
    use, form = first.use, first.form
    kept = groups.positions(use.layout, keep)
    size = groups.analysis.atoms.layout_size(use.layout)
    removed = np.setdiff1d(np.arange(size), kept)
    if not len(removed) or any(r.stats.size != size for r in tied):
        return
    how = mode
    origin = form.integer and not form.dequantized  # no bias anywhere: the refit goes through the origin
    if mode == "lsq" and any(r.stats.xtx is None for r in tied):
        how = "bias"
        for r in tied:
            comp.skipped.append(f"{r.node.name}: no Gram matrix for its input ({r.stats.size} channels; "
                                f"wider than calibration keeps one for): "
                                f"{'nothing compensated' if origin else 'bias compensation only'}")
        if origin:
            return
    value = held(groups, comp, use.node, use.input, form)
    value = groups.weight(use) if value is None else value
    w = form.matrix(value)  # (inputs, outputs, taps)
    w_removed = w[removed]
    if how == "bias":
        offsets = [r.stats.mean[removed] for r in tied]
    else:
        rows = np.array([max(r.stats.gram_count, 1) for r in tied], dtype=np.float64)
        if origin:  # no bias to take the offset: the fit through the origin (uncentred moments)
            cov = sum(r.stats.xtx for r in tied) / rows.sum()
        else:
            cov = sum(n * r.stats.covariance() for n, r in zip(rows, tied)) / rows.sum()
        coef = _regress(cov, kept, removed, ridge)
        offsets = [r.stats.mean[removed] - coef @ r.stats.mean[kept] for r in tied]
        flat = w.reshape(w.shape[0], -1)
        flat[kept] += coef.T @ w_removed.reshape(len(removed), -1)
        w = flat.reshape(w.shape)
        new = to_stored(groups, use.node, form, w, value)
        for r in tied:
            comp.weights[(r.use.node, r.use.input)] = new
    if origin:
        return  # no bias input, and an Add on its integer output would not be scaled
    if len({_bias_root(groups, r) for r in tied}) < len(tied):  # one bias for several readers
        counts = np.array([max(r.stats.count, 1) for r in tied], dtype=np.float64)
        offsets = [sum(c * o for c, o in zip(counts, offsets)) / counts.sum()] * len(tied)
    summed = w_removed.sum(axis=2)
    for r, offset in zip(tied, offsets):
        comp.biases[r.use.node] = comp.biases.get(r.use.node, 0.0) + offset @ summed
        if form.integer:
            comp.integer.add(r.use.node)
