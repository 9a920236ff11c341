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

With re-readable calibration data of at least ``SEQUENTIAL_SAMPLES``
samples, layers are taken in graph order, level by level (SparseGPT's
sequential pass): each level's inputs are measured in the model as pruned
so far beside the original, scores use the pruned model's second moment
P = E[x_p x_p^T], and each output's kept weights are fitted to the
original's output from the pruned inputs,

    v_K = w_K + (P_KK + rI)^-1 (Q_K: w - P_KK w_K),   Q = E[x_p x_o^T],

so a layer makes up for the error every layer before it left. With x_p = x_o
it is the one-shot update above. Earlier errors no longer compound: on the
sample models this is what keeps 70% sparsity usable (benchmarks/edges.py).

Gains are reported honestly: the sparsity and elements zeroed; the model
is written dense (the ONNX checker's type inference rejects a
``sparse_initializer`` read by a dense op, so a sparse file would fail the
full check every output must pass), with the size it would have as COO
``sparse_initializer`` and its zlib-compressed size; dense CPU kernels run
no faster, and the report says so.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field

import numpy as np

from onnxprune.core.errors import OnnxPruneError
from onnxprune.refit import sequential
from onnxprune.refit.sequential import MIN_ROWS

CRITERIA = ("magnitude", "relief", "obs")
MAX_UPDATE_INPUTS = 2048  # wider inputs: no weight update (one solve per output column)
MIN_FAN_IN = 32  # an output reading fewer weights (a depthwise 3x3, a 1-channel stem) stays dense
SEQUENTIAL_SAMPLES = 32  # the sequential pass (below) from this many calibration samples; one-shot below


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
    sequential: object = None  # sequential.SequentialReport of the sequential update, when it ran

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
    return _obs(w, _moments(st))


def _obs(w: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """OBS saliency w^2 / [G^-1]_ii of each weight, from the input's second moment."""
    ridge = 1e-6 * np.trace(cov) / len(cov) + 1e-12  # only to invert: a dead input must score ~0
    inv = np.linalg.inv(cov + ridge * np.eye(len(cov)))
    return w ** 2 / np.maximum(np.diag(inv), 1e-30)[:, None]


def ratio_for_params(groups, target: float) -> float:
    """The per-layer ratio that leaves at most ``target`` of the model's
    parameters nonzero (``--params-target`` in edge mode): only weights of
    layers that are sparsified count; an unreachable target is an error that
    names the reachable figure."""
    from onnx import numpy_helper

    if not 0.0 < target < 1.0:
        raise OnnxPruneError(f"--params-target must be in (0, 1), got {target}")
    sizes = []
    for index, form, name in _targets(groups):
        shape3 = form.matrix(numpy_helper.to_array(groups.view.initializers[name])).shape
        if shape3[0] * shape3[2] >= MIN_FAN_IN:
            sizes.append(int(np.prod(shape3)))
    total, need = groups.params_total, (1.0 - target) * groups.params_total
    if not sizes or need > 0.99 * sum(sizes):
        best = 1.0 - 0.99 * sum(sizes) / max(total, 1)
        raise OnnxPruneError(f"--params-target {target:g} cannot be met in edge mode: {sum(sizes):,} of "
                             f"{total:,} parameters are in layers that can be sparsified; at most 99% of "
                             f"those go, leaving x{best:.3f}")
    ratio = need / sum(sizes)
    while sum(int(round(ratio * n)) for n in sizes) < need:  # per-layer rounding must not fall short
        ratio = min(0.99, ratio + 1.0 / max(sizes))
    return ratio


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


def _moments(st) -> np.ndarray:
    """E[x x^T] of a layer's input (the layer sees x, not x - mean)."""
    return st.covariance() + np.outer(st.mean, st.mean)


def _update(w: np.ndarray, mask: np.ndarray, p: np.ndarray, q: np.ndarray | None = None) -> np.ndarray:
    """Refit each column's kept inputs: least squares from the inputs the
    layer sees (second moment ``p``) to the output it should give (``q``, the
    cross moment with the original's inputs; ``p`` itself when they are the
    same, which makes up for the zeroed weights only)."""
    q = p if q is None else q
    ridge = 1e-3 * np.trace(p) / len(p) + 1e-12
    target = q @ w  # E[x_p y_o] per column
    out = np.where(mask, 0.0, w)
    for j in range(w.shape[1]):
        k = np.flatnonzero(~mask[:, j])
        if not len(k) or (q is p and len(k) == len(w)):
            continue
        pkk = p[np.ix_(k, k)]
        out[k, j] = w[k, j] + np.linalg.solve(pkk + ridge * np.eye(len(k)), target[k, j] - pkk @ w[k, j])
    return out


@dataclass
class _Layer:
    node: int  # index in the view
    form: object
    name: str  # the weight initializer
    key: tuple | None  # (tensor, axis) of its input features, as calibration keys them
    gram: object | None  # its one-shot calibration statistics (ChannelStats), if any


def prune_edges(groups, calibration, *, ratio: float | None, pattern=None, criterion: str = "magnitude",
                update: bool = False, cfg=None) -> EdgeReport:
    """Zero weights in ``groups.model`` in place; -> the report. ``cfg`` (the
    prune's, for its calibration source) enables the sequential update."""
    from onnx import ModelProto


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
    dense, layers = [], []
    for index, form, name in targets:
        value = _array(view.initializers[name])
        shape3 = form.matrix(value).shape  # (inputs, outputs, taps)
        if shape3[0] * shape3[2] < MIN_FAN_IN:
            dense.append(view.nodes[index].name)
            _account(rep, value, None)
            continue
        key = act.get((index, form.x))
        st = calibration.get(*key) if calibration is not None and key is not None else None
        if st is not None and st.size != shape3[0]:
            st = None
        layers.append(_Layer(index, form, name, key, st))
    # the sequential update: layers whose inputs can be measured, taken level by level
    seq = sequential.SequentialReport()
    staged: set = set()
    batch = None
    fit = [x for x in layers if x.gram is not None and x.gram.xtx is not None
           and x.gram.size <= MAX_UPDATE_INPUTS and view.scope.get(id(view.nodes[x.node])) is None]
    if update and cfg is not None and fit and sequential.usable(cfg, calibration, seq, SEQUENTIAL_SAMPLES):
        stages, batch = sequential.plan_stages(groups, layers, calibration, cfg, seq)
        chosen = {id(x) for st in stages for x in st}
        staged = {id(x) for x in fit if id(x) in chosen}
    original = None
    if staged:
        original = ModelProto()
        original.CopyFrom(groups.model)
    levels = sequential.levels_of(groups, {x.node for x in layers})
    by_level: dict[int, list] = {}
    for x in layers:
        by_level.setdefault(levels[x.node], []).append(x)
    t0 = time.perf_counter()
    for lv in sorted(by_level):
        mine = [x for x in by_level[lv] if id(x) in staged]
        cross = {}
        if mine:
            cross, runs = sequential.measure_stage(original, groups.model, sorted({x.key for x in mine}),
                                                   cfg, batch)
            seq.runs += runs
            seq.stages += 1
        for x in by_level[lv]:
            cs = cross.get(x.key) if id(x) in staged else None
            if _sparsify(rep, view, x, ratio, pattern, criterion, update, cs):
                seq.refitted += 1
    if staged:
        seq.seconds = time.perf_counter() - t0
        rep.sequential = seq
    rep.notes.extend(seq.notes)
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


def _array(t) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(t)


def _sparsify(rep: EdgeReport, view, x: _Layer, ratio, pattern, criterion: str, update: bool, cs) -> bool:
    """Zero one layer's weights in place (and refit the rest when asked): on
    the pruned model's moments ``cs`` (sequential.CrossStats) when measured,
    else on the one-shot calibration statistics. -> whether ``cs`` refitted it."""
    from onnx import numpy_helper


    t = view.initializers[x.name]
    value = numpy_helper.to_array(t)
    w = x.form.matrix(value)
    flat = w.reshape(w.shape[0], -1)
    p = q = None
    measured = cs is not None and cs.count >= MIN_ROWS * len(flat)
    if measured:
        p, q = cs.pp / cs.count, cs.po / cs.count  # E[x_p x_p^T], E[x_p x_o^T]
    elif x.gram is not None and x.gram.xtx is not None:
        p = _moments(x.gram)
    if criterion == "obs" and p is not None:
        score = _obs(flat, p)
    else:  # obs needs a Gram matrix: magnitude without one
        score = _scores(flat, "magnitude" if criterion == "obs" else criterion, x.gram)
    mask = _mask(score, ratio, pattern)
    done = update and p is not None and len(flat) <= MAX_UPDATE_INPUTS
    new = _update(flat.astype(np.float64), mask, p, q) if done else np.where(mask, 0.0, flat)
    new_value = x.form.from_matrix(new.reshape(w.shape), value)
    t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(new_value), x.name))
    zeroed = int(np.count_nonzero(new_value == 0))
    rep.layers.append(EdgeLayer(view.nodes[x.node].name, x.name, int(value.size), zeroed, bool(done)))
    _account(rep, value, new_value)
    return bool(done and measured)


def _account(rep: EdgeReport, before: np.ndarray, after: np.ndarray | None) -> None:
    """Add one layer's sizes (``after`` None: left dense and untouched)."""
    packed = len(zlib.compress(np.ascontiguousarray(before).tobytes(), 6))
    rep.elements += int(before.size)
    rep.dense_bytes += before.nbytes
    rep.compressed_before += packed
    if after is None:
        rep.sparse_bytes += before.nbytes
        rep.compressed_bytes += packed
        return
    rep.zeroed += int(np.count_nonzero(after == 0))
    rep.sparse_bytes += int(np.count_nonzero(after)) * (after.dtype.itemsize + 8) + 8 * after.ndim
    rep.compressed_bytes += len(zlib.compress(np.ascontiguousarray(after).tobytes(), 6))


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


__all__ = ["prune_edges", "EdgeReport", "CRITERIA", "parse_pattern", "requests", "ratio_for_params"]
