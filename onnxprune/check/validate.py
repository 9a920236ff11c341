"""Prove the pruned model still computes what it should.

Checks that ONNX accepts it (full checker), that onnxruntime runs it with the
same output names, dtypes and ranks, then compares both models on the same
inputs (cosine, max error, top-1 agreement, accuracy with labels) and measures
params, MACs, size and latency with identical session settings.
"""
from __future__ import annotations

import os
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from onnxprune.analysis.costs import count_macs, count_params
from onnxprune.check.similarity import across_samples, centred_cosines
from onnxprune.core import dialect, runtime
from onnxprune.core.data import (
    feeds_and_labels,
    input_dims,
    model_inputs,
    per_run_inputs,
    random_feeds,
    rows,
    sample_count,
)
from onnxprune.core.errors import InternalError, OnnxPruneError
from onnxprune.core.graph import GraphView, skeleton
from onnxprune.core.model import load
from onnxprune.core.shapes import shapes as shape_info
from onnxprune.core.tensors import is_lazy, stored_bytes
from onnxprune.core.walk import all_graphs
from onnxprune.rewrite.io_change import adapt_feeds, adapt_outputs


@dataclass
class OutputFidelity:
    """How one output moved: the cosine of each sample's values with the
    original's. An integer output (class labels, indices) has no cosine (one
    label per sample would always read 1.0): it has the share of samples
    whose values all stay equal, as ``top1_agreement``. An output of one
    float per sample has one cosine, over the samples, centred
    (``similarity.across_samples``). The centred cosine (each sample's values
    minus their mean) says whether the output moved where it varies: a
    constant offset, or a change where a detector's map is flat, leaves the
    plain cosine near 1 and the centred one low. With labels, a classifier
    output also has its accuracy before and after."""
    name: str
    cosine_mean: float | None
    cosine_min: float | None
    max_abs_diff: float
    top1_agreement: float | None = None
    centred_mean: float | None = None
    centred_min: float | None = None
    accuracy_before: float | None = None
    accuracy_after: float | None = None


@dataclass
class Validation:
    samples: int
    random_inputs: bool
    outputs: list[OutputFidelity]
    params: dict
    macs: dict
    size_bytes: dict
    latency_ms: dict
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    warnings: list[str] = field(default_factory=list)

    def _cosines(self, which: str) -> list[float]:
        """Each output's cosine; an integer output counts by its agreement."""
        return [getattr(o, which) if getattr(o, which) is not None else o.top1_agreement for o in self.outputs]

    @property
    def cosine_min(self) -> float:
        return min(self._cosines("cosine_min"))

    @property
    def cosine_mean(self) -> float:
        return float(np.mean(self._cosines("cosine_mean")))

    @property
    def centred_min(self) -> float:
        """The lowest centred cosine over the outputs (an integer output: its agreement)."""
        return min(o.centred_min if o.centred_min is not None else o.top1_agreement for o in self.outputs)

    @property
    def max_abs_diff(self) -> float:
        return max(o.max_abs_diff for o in self.outputs)

    @property
    def top1_agreement(self) -> float | None:
        return next((o.top1_agreement for o in self.outputs if o.top1_agreement is not None), None)

    def to_dict(self) -> dict:
        return {
            "params": self.params, "macs": self.macs, "size_bytes": self.size_bytes,
            "latency_ms": self.latency_ms,
            "validation": {
                "samples": self.samples, "random_inputs": self.random_inputs,
                "cosine_min": self.cosine_min, "cosine_mean": self.cosine_mean,
                "centred_cosine_min": self.centred_min,
                "max_abs_diff": self.max_abs_diff, "top1_agreement": self.top1_agreement,
                "accuracy_before": self.accuracy_before, "accuracy_after": self.accuracy_after,
                "outputs": [asdict(o) for o in self.outputs],
            },
        }


def session(model: onnx.ModelProto, threads: int = 1):
    return runtime.session(model, threads=threads)


def _batch_size(model: onnx.ModelProto, fixed: dict | None) -> int | None:
    """Samples one run takes: None when the leading dim is symbolic (any batch)."""
    sizes = set()
    shared = per_run_inputs(model, fixed)
    for vi in model_inputs(model):
        if vi.name in shared:
            continue
        d = input_dims(vi, fixed)[:1]
        if d and isinstance(d[0], int) and d[0] > 0:
            sizes.add(d[0])
    return sizes.pop() if len(sizes) == 1 else None


def output_sample_axes(sess) -> list[int]:
    """Which axis of each output holds the samples: the one axis named like
    the inputs' batch dim (a CTC recogniser's time-major ``(T, batch,
    classes)``), else axis 0. Outputs are joined along it and compared per
    sample along it (``by_sample``)."""
    batch = {i.shape[0] for i in sess.get_inputs() if i.shape and isinstance(i.shape[0], str)}
    out = []
    for o in sess.get_outputs():
        named = [k for k, d in enumerate(o.shape or ()) if isinstance(d, str) and d in batch]
        out.append(named[0] if len(named) == 1 else 0)
    return out


def by_sample(outputs: list, axes: list | None) -> list[np.ndarray]:
    """Outputs with their sample axis first (``output_sample_axes``)."""
    if not axes:
        return list(outputs)
    return [np.moveaxis(o, ax, 0) if ax and np.ndim(o) > ax else o for o, ax in zip(outputs, axes)]


def run_batched(sess, feeds: dict, batch: int | None, chunk: int = 32) -> list[np.ndarray]:
    """Run every sample, ``batch`` (the model's fixed leading dim) or ``chunk``
    at a time; a model that only runs with batch 1 inside is run one by one.
    Each output is joined along its own sample axis (``output_sample_axes``)."""
    axes = output_sample_axes(sess)
    n = sample_count(feeds)
    step = batch or chunk
    outs: list[list[np.ndarray]] = []
    for start in range(0, n - (n % step if batch else 0), step):
        part = rows(feeds, slice(start, start + step))
        try:
            res = sess.run(None, part)
        except Exception:  # noqa: BLE001 - a graph that fixes batch 1 inside
            if batch or sample_count(part) == 1:
                raise
            singles = [sess.run(None, rows(part, slice(i, i + 1))) for i in range(sample_count(part))]
            res = joined(singles, axes)
        outs.append(res)
    if not outs:
        raise OnnxPruneError(f"need at least {step} samples for a model with fixed batch {step}")
    return joined(outs, axes)


def joined(runs: list, axes: list | None = None) -> list[np.ndarray]:
    """The outputs of runs over consecutive chunks of samples, as numbers
    (``numeric``), each joined along its sample axis (``axes``, else 0); an
    output with no sample axis (one score per run) stacks: one value per run."""
    def axis(i, o):
        return axes[i] if axes and i < len(axes) and np.ndim(o) > axes[i] else 0

    return [numeric(np.concatenate([np.reshape(o[i], (1,)) if np.ndim(o[i]) == 0 else o[i] for o in runs],
                                   axis=axis(i, runs[0][i])))
            for i in range(len(runs[0]))]


def numeric(out: np.ndarray) -> np.ndarray:
    """An output as numbers: a sequence of maps (scikit-learn's ZipMap, one
    {label: probability} per sample) becomes a (samples, labels) array in the
    maps' key order, so it compares like any probability output."""
    if out.dtype == object and out.ndim == 1 and len(out) and all(isinstance(m, dict) for m in out):
        keys = list(out[0])
        if all(list(m) == keys for m in out):
            return np.array([[m[k] for k in keys] for m in out], dtype=np.float64)
    return out


def _fidelity(name: str, a: np.ndarray, b: np.ndarray) -> OutputFidelity:
    if a.size == 0 and b.size == 0:  # an empty output (a cache branch's placeholder): nothing differs
        return OutputFidelity(name, 1.0, 1.0, 0.0, None)
    a64 = a.reshape(len(a), -1).astype(np.float64) if a.ndim else a.reshape(1, 1).astype(np.float64)
    b64 = b.reshape(len(b), -1).astype(np.float64) if b.ndim else b.reshape(1, 1).astype(np.float64)
    diff = float(np.abs(a64 - b64).max()) if a64.size else 0.0
    if all(np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_ for x in (a, b)):
        return OutputFidelity(name, None, None, diff, float(np.mean(np.all(a64 == b64, axis=1))))
    if a64.shape[1] == 1 and len(a64) > 1:
        c = across_samples(a64[:, 0], b64[:, 0])
        return OutputFidelity(name, c, c, diff, None, c, c)
    na, nb = np.linalg.norm(a64, axis=1), np.linalg.norm(b64, axis=1)
    dot = (a64 * b64).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where((na == 0) & (nb == 0), 1.0, dot / (na * nb))
    cos = np.nan_to_num(cos, nan=0.0)
    top1 = None
    if a.ndim == 2 and a.shape[1] > 1 and np.issubdtype(a.dtype, np.floating):
        top1 = float(np.mean(a.argmax(1) == b.argmax(1)))
    centred = centred_cosines(a64, b64)
    return OutputFidelity(name, float(cos.mean()), float(cos.min()), diff, top1,
                          float(centred.mean()), float(centred.min()))


def _predicted(y: np.ndarray) -> np.ndarray:
    """Class per sample: the argmax of (samples, classes) scores, or an
    integer label output as it is (scikit-learn's ``label``)."""
    return y.argmax(1) if y.ndim == 2 and np.issubdtype(y.dtype, np.floating) else y.reshape(len(y), -1)[:, 0]


def latency_ms(sess, feeds: dict, runs: int, budget_s: float = 3.0) -> float:
    """Median latency of one sample: after warm-up, ``runs`` runs or as many as
    fit in ``budget_s`` seconds (at least five), so a large model does not
    spend minutes here."""
    one = rows(feeds, slice(0, 1))
    start = time.perf_counter()
    for _ in range(max(2, runs // 5)):
        sess.run(None, one)
        if time.perf_counter() - start > budget_s / 3:
            break
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs and (len(times) < 5 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        sess.run(None, one)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


def _interface(m: onnx.ModelProto) -> tuple:
    """(outputs' names, dtypes and ranks; inputs' names)."""
    return ([(o.name, o.type.tensor_type.elem_type, len(o.type.tensor_type.shape.dim))
             for o in m.graph.output], [i.name for i in model_inputs(m)])


def _same_interface(original: tuple, pruned: tuple) -> None:
    if original[0] != pruned[0]:
        raise OnnxPruneError("the two models have different outputs (names, dtypes or ranks)")
    if original[1] != pruned[1]:
        raise OnnxPruneError("the two models have different inputs")


def check_interface(original: onnx.ModelProto, pruned: onnx.ModelProto) -> None:
    _same_interface(_interface(original), _interface(pruned))


def full_check(model: onnx.ModelProto, what: str = "the pruned model", error=InternalError,
               hints: bool = True) -> None:
    """The full checker on a model in memory: graph, types and strict shape
    inference on its skeleton (no copy of the weights), then every stored
    weight's byte count against its dims and dtype."""

    try:
        onnx.checker.check_model(skeleton(model, value_info=hints), full_check=True)
    except Exception as e:  # noqa: BLE001 - checker raises ValidationError or InferenceError
        raise error(f"{what} fails onnx.checker: {_one_line(e)}") from None
    for g in all_graphs(model.graph):
        for t in g.initializer:
            if not t.HasField("raw_data") or t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
                continue
            n = int(np.prod(t.dims, dtype=np.int64)) if len(t.dims) else 1
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
            bits = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4}.get(t.data_type, itemsize * 8)
            if len(t.raw_data) != (n * bits + 7) // 8:
                raise error(f"{what} fails onnx.checker: initializer '{t.name}' holds "
                            f"{len(t.raw_data)} bytes for dims {list(t.dims)}")


def _one_line(e: Exception, limit: int = 300) -> str:
    """The checker's message on one line (it spreads a node over several)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_input(model: onnx.ModelProto, label: str = "input model") -> None:
    """A broken input is reported as such, before any work (exit code 2).
    Stale value_info hints are not held against it: they are hints, and the
    rewrite drops the ones that no longer hold. onnxruntime's own ops in the
    ONNX domain are declared first (``dialect``): onnxruntime runs them."""

    dialect.declare(model)
    full_check(model, what=label, error=OnnxPruneError, hints=False)


def check_written(path: str, original=None) -> str | None:
    """The model as written: the full checker on the path (external data
    included) and an onnxruntime session opened from the path. When the
    session fails and the ``original`` (a path or a ModelProto) does not load
    in onnxruntime either (a custom op), nothing a session could say about
    the prune is left to check: -> a note saying so; otherwise None."""
    try:
        onnx.checker.check_model(path, full_check=True)
    except Exception as e:  # noqa: BLE001 - checker raises ValidationError or InferenceError
        raise InternalError(f"the written model fails onnx.checker: {str(e).splitlines()[0]}") from None
    try:
        # Loading is the check (types, shapes, kernels); optimising the graph is not.
        runtime.session(path, threads=1, optimize=False)
    except OnnxPruneError as e:
        refusal = _load_refusal(original) if original is not None else None
        if refusal is None:
            raise InternalError(str(e).replace("the model", "the written model", 1)) from None
        return (f"the written model was not loaded in onnxruntime, because the input model does not load "
                f"either ({refusal}); it passed onnx.checker (full) and the pruner's invariants")
    return None


def _load_refusal(model) -> str | None:
    """Why onnxruntime does not load ``model``; None when it does."""
    try:
        runtime.session(model, threads=1, optimize=False)
    except OnnxPruneError as e:
        return runtime.load_failure(model, e)
    return None


def validate(original: str | os.PathLike | onnx.ModelProto, pruned: str | os.PathLike | onnx.ModelProto,
             data: str | os.PathLike | dict | None = None, *, input_shapes: dict | None = None,
             samples: int = 8, latency_runs: int = 30, threads: int = 1,
             seed: int = 0, batch_axes: dict | None = None) -> Validation:
    """Compare two models (paths or ModelProtos) on the same inputs.

    A model given as a path is the user's file: one the checker refuses, or
    a pruned one that fails in onnxruntime, is bad input (exit code 2). A
    pruned ModelProto is the pipeline's own result: its failure is a bug."""
    a, b = load(original).model, load(pruned).model
    user_pruned = isinstance(pruned, (str, os.PathLike))
    if isinstance(original, (str, os.PathLike)):
        check_input(a, f"{os.fspath(original)}: original model")
    if user_pruned:
        check_input(b, f"{os.fspath(pruned)}: pruned model")
    check_interface(a, b)
    ref = reference(a, data, input_shapes=input_shapes, samples=samples, latency_runs=latency_runs,
                    threads=threads, seed=seed, batch_axes=batch_axes)
    del a
    return compare(ref, b, label=os.fspath(pruned) if user_pruned else None)


@dataclass
class Reference:
    """The original model's half of a validation: the inputs, its outputs,
    latency and costs, kept without the model. Taking it first lets the
    pipeline rewrite the original in place (no copy of the weights), and no
    two onnxruntime sessions are ever alive at once: a model of several GB is
    never in memory twice."""
    feeds: dict
    labels: np.ndarray | None
    batch: int | None
    names: list
    outputs: list
    latency_ms: float
    params: int
    macs: int | None
    size_bytes: int
    interface: tuple
    random_inputs: bool
    notes: list
    input_shapes: dict | None
    latency_runs: int
    threads: int
    sample_axes: list | None = None  # per output, the axis of its samples (``output_sample_axes``)


def reference(a: onnx.ModelProto, data=None, *, input_shapes: dict | None = None, samples: int = 8,
              latency_runs: int = 30, threads: int = 1, seed: int = 0,
              batch_axes: dict | None = None) -> Reference:
    """Run the original model (loaded, not copied) on the validation inputs
    (``batch_axes``: ``--batch-axis``)."""
    notes: list[str] = []
    labels = None
    if data is None:
        feeds = random_feeds(a, samples, input_shapes, seed, batch_axes=batch_axes)
        msg = "no --data given: comparing on random inputs (fidelity on real data may differ)"
        warnings.warn(msg, stacklevel=3)
        notes.append(msg)
    else:
        feeds, labels = feeds_and_labels(data, a, batch_axes, notes)
    batch = _batch_size(a, input_shapes)
    # The original first: if it fails on these inputs, the input (model or
    # data) is at fault, not the prune.
    try:
        sa = session(a, threads)
    except OnnxPruneError as e:
        raise OnnxPruneError(f"the original model does not load in onnxruntime, so nothing can be validated: "
                             f"{runtime.load_failure(a, e)}; --no-validate prunes it without the checks "
                             f"that need onnxruntime") from None
    try:
        ya = run_batched(sa, feeds, batch)
    except OnnxPruneError as e:
        raise OnnxPruneError(f"the original model fails in onnxruntime on these inputs: {e}") from None
    except Exception as e:  # noqa: BLE001 - onnxruntime run errors
        raise OnnxPruneError(f"the original model fails in onnxruntime on these inputs: "
                             f"{str(e).splitlines()[0]}") from None
    names = [o.name for o in sa.get_outputs()]
    axes = output_sample_axes(sa)
    lat_a = latency_ms(sa, rows(feeds, slice(0, batch or 1)), latency_runs)
    del sa  # before the pruned model's session
    first = rows(feeds, slice(0, 1))
    va = GraphView(a, shape_info(a, input_shapes, first).dims)
    return Reference(feeds=feeds, labels=labels, batch=batch, names=names, outputs=ya, latency_ms=lat_a,
                     params=count_params(a), macs=count_macs(va), size_bytes=_model_bytes(a),
                     interface=_interface(a), random_inputs=data is None, notes=notes,
                     input_shapes=input_shapes, latency_runs=latency_runs, threads=threads, sample_axes=axes)


def compare(ref: Reference, b: onnx.ModelProto, label: str | None = None, io: list | None = None) -> Validation:
    """Run the pruned model on the reference's inputs and compare. ``label``:
    the pruned model is the user's file of that name (its failure is bad
    input, not a bug). ``io``: inputs and outputs the prune changed
    (``io_change.Changed``): the pruned model gets the kept slices of those
    inputs, and its outputs are compared with the kept slices of the
    original's."""

    _same_interface(ref.interface, _interface(b))
    feeds, batch = adapt_feeds(io or [], ref.feeds), ref.batch
    try:
        sb = session(b, ref.threads)
        yb = run_batched(sb, feeds, batch)
    except Exception as e:  # noqa: BLE001 - onnxruntime run errors
        if label is not None:
            raise OnnxPruneError(f"{label}: the pruned model fails in onnxruntime where "
                                 f"the original runs: {str(e).splitlines()[0]}") from None
        raise InternalError(f"the pruned model fails in onnxruntime where the original runs: "
                            f"{str(e).splitlines()[0]}") from None
    ya = adapt_outputs(io or [], ref.names, ref.outputs)
    for name, oa, ob in zip(ref.names, ya, yb):
        if oa.shape != ob.shape or oa.dtype != ob.dtype:
            raise OnnxPruneError(f"output '{name}': shape/dtype {oa.shape}/{oa.dtype} became "
                                 f"{ob.shape}/{ob.dtype}")
    ya, yb = by_sample(ya, ref.sample_axes), by_sample(yb, ref.sample_axes)  # compared sample by sample
    outputs = [_fidelity(name, oa, ob) for name, oa, ob in zip(ref.names, ya, yb)]
    acc_a = acc_b = None
    labels = ref.labels
    if labels is not None:
        for i, o in enumerate(outputs):  # every classifier output: which head lost accuracy
            if o.top1_agreement is not None and len(ya[i]) <= len(labels):
                n = len(ya[i])
                o.accuracy_before = float(np.mean(_predicted(ya[i]) == labels[:n]))
                o.accuracy_after = float(np.mean(_predicted(yb[i]) == labels[:n]))
        first = next((o for o in outputs if o.accuracy_before is not None), None)
        if first is not None:
            acc_a, acc_b = first.accuracy_before, first.accuracy_after
    lat_b = latency_ms(sb, rows(feeds, slice(0, batch or 1)), ref.latency_runs)
    del sb
    first = rows(feeds, slice(0, 1))
    vb = GraphView(b, shape_info(b, ref.input_shapes, first).dims)
    return Validation(
        samples=len(ya[0]) if ya and ya[0].ndim else 0, random_inputs=ref.random_inputs,
        outputs=outputs,
        params={"before": ref.params, "after": count_params(b)},
        macs={"before": ref.macs, "after": count_macs(vb)},
        size_bytes={"before": ref.size_bytes, "after": _model_bytes(b)},
        latency_ms={"before": ref.latency_ms, "after": lat_b},
        accuracy_before=acc_a, accuracy_after=acc_b, warnings=list(ref.notes))


def _model_bytes(model: onnx.ModelProto) -> int:
    """The proto's size plus the external data it still reads from files."""

    return model.ByteSize() + sum(stored_bytes(t) for g in all_graphs(model.graph)
                                  for t in g.initializer if is_lazy(t))
