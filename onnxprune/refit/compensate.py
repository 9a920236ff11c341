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

    def __bool__(self) -> bool:
        return bool(self.weights or self.biases)


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


def compensate(groups: Groups, keep: dict, calibration, mode: str = "bias",
               ridge: float = 1e-3) -> Compensation:
    """Compensation for a plan (group id -> kept units)."""
    if mode not in MODES:
        raise OnnxPruneError(f"unknown compensation '{mode}' (choose from {', '.join(MODES)})")
    comp = Compensation(mode)
    if mode == "none" or calibration is None:
        return comp
    atoms = groups.analysis.atoms
    for use, node, form in groups.linear_readers(keep):
        if form is None:
            comp.skipped.append(f"{node.name}: its rule gives no linear form for this input")
            continue
        if not form.dense:
            continue  # channel-wise (grouped) consumers need no compensation
        if not form.refit:
            comp.skipped.append(f"{node.name}: its weight is stored as integers, which compensation does "
                                f"not rewrite")
            continue
        stored = groups.view.const_root(node.input[form.weight])
        if stored is None:
            comp.skipped.append(f"{node.name}: its weight is computed from stored constants "
                                f"(Cast, DequantizeLinear...), which compensation cannot rewrite")
            continue
        shared = shared_weight(groups, node, form)
        if shared:
            comp.skipped.append(f"{node.name}: '{shared}' is shared with other nodes")
            continue
        dim = groups.activation(use)
        st = calibration.get(*dim) if dim else None
        if st is None:
            comp.skipped.append(f"{node.name}: no calibration statistics for its input")
            continue
        how = mode
        if mode == "lsq" and st.xtx is None:
            how = "bias"
            comp.skipped.append(f"{node.name}: no Gram matrix for its input ({st.size} channels; "
                                f"wider than calibration keeps one for): bias compensation only")
        kept = groups.positions(use.layout, keep)
        size = atoms.layout_size(use.layout)
        removed = np.setdiff1d(np.arange(size), kept)
        if not len(removed) or st.size != size:
            continue
        wkey = (use.node, use.input)
        value = comp.weights.get(wkey, groups.weight(use))
        w = form.matrix(value)  # (inputs, outputs, taps)
        w_removed = w[removed]
        if how == "bias":
            delta = st.mean[removed] @ w_removed.sum(axis=2)
        else:
            cov, mean = st.covariance(), st.mean
            coef = _regress(cov, kept, removed, ridge)
            offset = mean[removed] - coef @ mean[kept]
            flat = w.reshape(w.shape[0], -1)
            flat[kept] += coef.T @ w_removed.reshape(len(removed), -1)
            w = flat.reshape(w.shape)
            delta = offset @ w_removed.sum(axis=2)
            comp.weights[wkey] = form.from_matrix(w, np.asarray(value))
        comp.biases[use.node] = comp.biases.get(use.node, 0.0) + delta
    return comp
