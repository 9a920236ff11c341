"""Edge (weight) pruning: zero single weights of every linear layer, not
whole channels (``prune --mode edges``).

Which weights go, per layer: the lowest-scoring ``ratio`` of its elements
(unstructured), or the lowest ``M - N`` of every ``M`` consecutive input
features of each output (``pattern N:M``, the layout sparse tensor cores
run). Scores: ``magnitude`` |w|; ``relief`` |w| x the input feature's mean
|activation| (a connection's share of its neuron's input activity, as in
"Neural Network Relief"); ``obs`` w^2 / [G^-1]_ii, the second-order
saliency of Optimal Brain Surgeon from the calibration Gram matrix G.

With a Gram matrix (``--compensate lsq``), the weights each output keeps
are refitted to make up for the ones it lost ("change the values of the
non-pruned weights", as OBS and SparseGPT do): w_K += (G_KK + rI)^-1 G_KS w_S,
the least-squares optimum on the calibration inputs.

Gains are reported honestly: the sparsity and elements zeroed; the model
is written dense (the ONNX checker's type inference rejects a
``sparse_initializer`` read by a dense op, so a sparse file would fail the
full check every output must pass), with the size it would have as COO
``sparse_initializer`` and its zlib-compressed size; dense CPU kernels run
no faster, and the report says so.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from .errors import OnnxPruneError

CRITERIA = ("magnitude", "relief", "obs")
MAX_UPDATE_INPUTS = 2048  # wider inputs: no weight update (one solve per output column)
MIN_FAN_IN = 32  # an output reading fewer weights (a depthwise 3x3, a 1-channel stem) stays dense


@dataclass
class EdgeLayer:
    node: str
    weight: str
    elements: int
    zeroed: int
    updated: bool = False


@dataclass
class EdgeReport:
    criterion: str
    ratio: float | None
    pattern: str | None
    layers: list = field(default_factory=list)
    zeroed: int = 0
    elements: int = 0
    dense_bytes: int = 0
    sparse_bytes: int = 0  # as COO sparse_initializers (values + int64 indices)
    compressed_bytes: int = 0  # the weights zlib-compressed (level 6)
    compressed_before: int = 0
    notes: list = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        return self.zeroed / self.elements if self.elements else 0.0


def parse_pattern(text: str | None):
    if text is None:
        return None
    try:
        n, m = (int(v) for v in text.split(":"))
    except ValueError:
        raise OnnxPruneError(f"--pattern takes N:M, like 2:4, not '{text}'") from None
    if not 0 < n < m:
        raise OnnxPruneError(f"--pattern {text}: need 0 < N < M")
    return n, m


def _targets(groups) -> list:
    """(node index, form, initializer name) of each stored float weight read
    as a linear layer's weight, once per weight."""
    view = groups.view
    seen, out = set(), []
    for i, node in enumerate(view.nodes):
        form = groups.linear(i)
        if form is None or form.weight >= len(node.input):
            continue
        name = node.input[form.weight]
        if name in seen or name not in view.initializers or view.const_root(name) != name:
            continue
        t = view.initializers[name]
        if t.data_type not in (1, 10, 11, 16):  # float, float16, double, bfloat16
            continue
        seen.add(name)
        out.append((i, form, name))
    return out


def _scores(w: np.ndarray, criterion: str, st) -> np.ndarray:
    """Per element of W (inputs, outputs x taps); higher is kept."""
    if criterion == "magnitude" or st is None:
        return np.abs(w)
    if criterion == "relief":
        return np.abs(w) * st.mean_abs[:, None]
    cov = st.covariance() + np.outer(st.mean, st.mean)  # second moment: the layer sees x, not x - mean
    ridge = 1e-6 * np.trace(cov) / len(cov) + 1e-12  # only to invert: a dead input must score ~0
    inv = np.linalg.inv(cov + ridge * np.eye(len(cov)))
    return w ** 2 / np.maximum(np.diag(inv), 1e-30)[:, None]


def _mask(score: np.ndarray, ratio: float | None, pattern) -> np.ndarray:
    """True = zeroed. Unstructured: the lowest ``ratio`` of the layer; N:M:
    the lowest M-N of every M consecutive inputs of each column (a tail
    shorter than M keeps its N largest too)."""
    mask = np.zeros(score.shape, dtype=bool)
    if pattern is None:
        k = int(round(ratio * score.size))
        if k:
            flat = np.argsort(score, axis=None, kind="stable")[:k]
            mask.flat[flat] = True
        return mask
    n, m = pattern
    rows = score.shape[0]
    for start in range(0, rows, m):
        block = score[start:start + m]
        if len(block) <= n:
            continue
        order = np.argsort(block, axis=0, kind="stable")  # lowest first, per column
        drop = order[:len(block) - n]
        np.put_along_axis(mask[start:start + m], drop, True, axis=0)
    return mask


def _update(w: np.ndarray, mask: np.ndarray, st) -> np.ndarray:
    """Refit each column's kept inputs for its zeroed ones (least squares on
    the calibration second moment)."""
    g = st.covariance() + np.outer(st.mean, st.mean)
    ridge = 1e-3 * np.trace(g) / len(g) + 1e-12
    out = np.where(mask, 0.0, w)
    for j in range(w.shape[1]):
        s = np.flatnonzero(mask[:, j])
        if not len(s):
            continue
        k = np.flatnonzero(~mask[:, j])
        if not len(k):
            continue
        gkk = g[np.ix_(k, k)] + ridge * np.eye(len(k))
        out[k, j] += np.linalg.solve(gkk, g[np.ix_(k, s)] @ w[s, j])
    return out


def prune_edges(groups, calibration, *, ratio: float | None, pattern=None, criterion: str = "magnitude",
                update: bool = False) -> EdgeReport:
    """Zero weights in ``groups.model`` in place; -> the report."""
    from onnx import numpy_helper

    if criterion not in CRITERIA:
        raise OnnxPruneError(f"unknown edge criterion '{criterion}' (choose from {', '.join(CRITERIA)})")
    if pattern is None and (ratio is None or not 0.0 < ratio < 1.0):
        raise OnnxPruneError("--mode edges needs --ratio in (0, 1) or --pattern N:M")
    rep = EdgeReport(criterion, None if pattern else ratio, f"{pattern[0]}:{pattern[1]}" if pattern else None)
    targets = _targets(groups)
    if not targets:
        raise OnnxPruneError("no linear layer with a stored float weight: nothing to sparsify")
    view = groups.view
    act = _activations(groups)
    dense = []
    for index, form, name in targets:
        t = view.initializers[name]
        value = numpy_helper.to_array(t)
        w = form.matrix(value)
        shape3 = w.shape
        if shape3[0] * shape3[2] < MIN_FAN_IN:
            dense.append(view.nodes[index].name)
            rep.elements += int(value.size)
            rep.dense_bytes += value.nbytes
            rep.sparse_bytes += value.nbytes
            packed = len(zlib.compress(np.ascontiguousarray(value).tobytes(), 6))
            rep.compressed_bytes += packed
            rep.compressed_before += packed
            continue
        flat = w.reshape(shape3[0], -1)
        st = None
        if calibration is not None and (index, form.x) in act:
            st = calibration.get(*act[(index, form.x)])
            if st is not None and st.size != shape3[0]:
                st = None
        gram = st if st is not None and st.xtx is not None else None
        how = "magnitude" if criterion == "obs" and gram is None else criterion  # obs needs the Gram matrix
        mask = _mask(_scores(flat, how, st), ratio, pattern)
        done = False
        if update and gram is not None and shape3[0] <= MAX_UPDATE_INPUTS:
            new = _update(flat.astype(np.float64), mask, gram)
            done = True
        else:
            new = np.where(mask, 0.0, flat)
        new_value = form.from_matrix(new.reshape(shape3), value)
        t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(new_value), name))
        zeroed = int(np.count_nonzero(new_value == 0))
        rep.layers.append(EdgeLayer(view.nodes[index].name, name, int(value.size), zeroed, done))
        rep.zeroed += zeroed
        rep.elements += int(value.size)
        item = new_value.dtype.itemsize
        rep.dense_bytes += new_value.nbytes
        rep.sparse_bytes += int(np.count_nonzero(new_value)) * (item + 8) + 8 * new_value.ndim
        rep.compressed_bytes += len(zlib.compress(new_value.tobytes(), 6))
        rep.compressed_before += len(zlib.compress(np.ascontiguousarray(value).tobytes(), 6))
    if dense:
        rep.notes.append(f"{len(dense)} layer(s) whose outputs read fewer than {MIN_FAN_IN} weights stay "
                         f"dense (no weights left to make up for a zeroed one): "
                         f"{', '.join(dense[:4])}{' ...' if len(dense) > 4 else ''}")
    if update and not any(layer.updated for layer in rep.layers):
        rep.notes.append("no weight was updated: the update needs calibration Gram matrices "
                         "(--calib, --compensate lsq)")
    rep.notes.append("written dense: dense CPU kernels run no faster on zeros, so latency is unchanged; "
                     "the gain is in storage (sparse and compressed sizes in the report)")
    return rep


def _activations(groups) -> dict:
    """(node index, x slot) -> (tensor, axis) of each linear layer's input
    features, as calibration keys them."""
    out = {}
    view = groups.view
    for i, node in enumerate(view.nodes):
        form = groups.linear(i)
        if form is None or form.x >= len(node.input) or not node.input[form.x]:
            continue
        rank = view.rank(node.input[form.x])
        if rank is None:
            continue
        out[(i, form.x)] = (node.input[form.x], form.x_axis % rank)
    return out


def requests(groups, gram: bool) -> dict:
    """{(tensor, axis): need_gram} for every edge target's input."""
    act = _activations(groups)
    out = {}
    for index, form, _ in _targets(groups):
        key = act.get((index, form.x))
        if key is not None:
            out[key] = out.get(key, False) or gram
    return out


__all__ = ["prune_edges", "EdgeReport", "CRITERIA", "parse_pattern", "requests"]
