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
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import OnnxPruneError
from .groups import Groups
from .importance import _out_axis, activation_dim, weight_matrix

MODES = ("none", "bias", "lsq")


@dataclass
class Compensation:
    """Full-size replacement weights and output-bias deltas, by node index."""

    mode: str = "none"
    weights: dict = field(default_factory=dict)  # (node index, slot) -> np.ndarray
    biases: dict = field(default_factory=dict)  # node index -> (out_axis of output, delta)
    skipped: list = field(default_factory=list)  # readable reasons

    def __bool__(self) -> bool:
        return bool(self.weights or self.biases)


def _from_matrix(m: np.ndarray, like: np.ndarray, in_axis: int) -> np.ndarray:
    moved = np.moveaxis(like, [in_axis, _out_axis(in_axis)], [0, 1])
    back = np.moveaxis(m.reshape(moved.shape), [0, 1], [in_axis, _out_axis(in_axis)])
    return back.astype(like.dtype)


def _regress(cov: np.ndarray, kept: np.ndarray, removed: np.ndarray, ridge: float) -> np.ndarray:
    """Coefficients (R, K) of x_removed on x_kept (centred), per removed channel.

    A removed channel the kept ones explain almost perfectly (residual variance
    below 1e-6 of its own) gets the unregularised least-squares fit (truncated
    pseudo-inverse), so linear dependence is reconstructed exactly; every other channel gets the ridge
    ``ridge x mean variance``, which generalises better beyond the
    calibration set (measured on the sample models).
    """
    ckk = cov[np.ix_(kept, kept)]
    crk = cov[np.ix_(removed, kept)]
    scale = np.trace(ckk) / max(len(kept), 1) + 1e-12
    eye = np.eye(len(kept))
    regular = np.linalg.solve(ckk + ridge * scale * eye, crk.T).T
    # Truncated pseudo-inverse: near-null directions (dead or duplicate kept
    # channels) are dropped instead of amplified.
    tight = np.linalg.lstsq(ckk, crk.T, rcond=1e-6)[0].T
    var_r = np.diag(cov)[removed]
    residual = var_r - 2 * np.einsum("rk,rk->r", tight, crk) + np.einsum("rk,kl,rl->r", tight, ckk, tight)
    exact = residual <= 1e-6 * np.maximum(var_r, 1e-30)
    return np.where(exact[:, None], tight, regular)


def _output_axis(node) -> int:
    """Axis of the node's output that holds its neurons (for the bias)."""
    return -1 if node.op_type == "MatMul" else 1


def compensate(groups: Groups, keep: dict, calibration, mode: str = "bias",
               ridge: float = 1e-3) -> Compensation:
    if mode not in MODES:
        raise OnnxPruneError(f"unknown compensation '{mode}' (choose from {', '.join(MODES)})")
    comp = Compensation(mode)
    if mode == "none" or calibration is None:
        return comp
    atoms = groups.analysis.atoms
    view = groups.view
    for use in groups.analysis.uses:
        if use.role != "in" or not (atoms.leaves(use.layout) & set(keep)):
            continue
        node = view.nodes[use.node]
        if node.op_type == "MatMul" and use.input == 0:
            comp.skipped.append(f"{node.name}: weight on the left of MatMul")
            continue
        shared = [node.input[k] for k in range(1, min(3, len(node.input)))
                  if node.input[k] and len(view.readers(view.const_root(node.input[k])
                                                         or node.input[k])) > 1]
        if shared:
            comp.skipped.append(f"{node.name}: '{shared[0]}' is shared with other nodes")
            continue
        dim = activation_dim(groups, use)
        st = calibration.get(*dim) if dim else None
        if st is None or (mode == "lsq" and st.xtx is None):
            comp.skipped.append(f"{node.name}: no calibration statistics for its input")
            continue
        kept = atoms.positions(use.layout, keep)
        size = atoms.layout_size(use.layout)
        removed = np.setdiff1d(np.arange(size), kept)
        if not len(removed) or st.size != size:
            continue
        key = (use.node, use.input)
        value = comp.weights.get(key, view.const(node.input[use.input]))
        w = weight_matrix(value, use.axis)  # (inputs, outputs, kernel)
        w_removed = w[removed]
        if mode == "bias":
            delta = st.mean[removed] @ w_removed.sum(axis=2)
        else:
            cov, mean = st.covariance(), st.mean
            coef = _regress(cov, kept, removed, ridge)
            offset = mean[removed] - coef @ mean[kept]
            flat = w.reshape(w.shape[0], -1)
            flat[kept] += coef.T @ w_removed.reshape(len(removed), -1)
            w = flat.reshape(w.shape)
            delta = offset @ w_removed.sum(axis=2)
            comp.weights[key] = _from_matrix(w, np.asarray(value), use.axis)
        axis, old = comp.biases.get(use.node, (_output_axis(node), 0.0))
        comp.biases[use.node] = (axis, old + delta)
    return comp
