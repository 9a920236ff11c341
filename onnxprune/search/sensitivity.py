"""Sensitivity analysis: how much each prunable group, pruned alone, changes
the model's output, at each ratio.

A sweep is a set of independent jobs, one per (group, ratio): the group's
lowest-scoring units are removed (the configured criterion), its consumers
compensated (the configured compensation, from one calibration shared by
every job), the model rewritten and run on held-out data. The damage is, per float
output, the mean KL divergence of the softmax for classifier-like outputs
((samples, classes) floats), else 1 - centred cosine per sample, averaged
over the outputs; with labels, the first output's accuracy too. Only the
part of the graph a job changes runs (``runtime.tail``), on the original's
tensors before it, computed once per group for all its ratios. Nothing in a job depends on another or on where it runs, so
the serial sweep, a process pool (``jobs``), a Ray cluster (``ray``) and
shards run on other machines (``shard``, then ``merge``) give identical rows.

Results stream to a JSONL file, one row per job after a header that names
the model and the settings; a re-run with the same file resumes, skipping the
jobs it holds, and refuses a file written for another model or settings.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from onnxprune import stages
from onnxprune.analysis.costs import node_macs
from onnxprune.calibration.sources import batches as batches
from onnxprune.calibration.sources import hold_out_labelled, load_data
from onnxprune.check.similarity import centred_cosines
from onnxprune.check.validate import by_sample, joined, output_sample_axes, run_batched
from onnxprune.core.data import feeds_and_labels, join, model_inputs, rows, sample_count
from onnxprune.core.errors import OnnxPruneError
from onnxprune.core.runtime import session, tail, upto
from onnxprune.core.walk import node_reads
from onnxprune.refit.compensate import compensate
from onnxprune.rewrite.engine import apply
from onnxprune.select.importance import Scores
from onnxprune.select.planner import estimate_macs, estimate_params, n_keep

FORMAT = "onnxprune-sensitivity/1"
DEFAULT_RATIOS = (0.1, 0.25, 0.5, 0.75)
TAIL_CHUNK = 32  # held-out samples a job's tail takes in one run
TAIL_SHARE = 0.5  # of the MACs before a group, from which its jobs run only their tail
TAIL_BYTES = 1 << 29  # of the original's tensors a tail reads, kept between jobs


@dataclass
class Sweep:
    """Everything a job needs, built once (and once per worker process)."""

    groups: object
    scores: object
    calibration: object
    compensate: str
    feeds: dict
    labels: np.ndarray | None
    reference: list  # the original's outputs on ``feeds``
    threads: int | None = None  # onnxruntime's threads per run (None: every core; one per pool worker)
    split: bool = True  # run only the tail a job changes (False where whole runs are faster, or cannot be cut)
    before: tuple | None = field(default=None, repr=False)  # (tensors, their values): the last tail's input
    shares: dict = field(default_factory=dict)  # group id -> share of the MACs before it (``before_shares``)
    sample_axes: list | None = None  # per output, the axis of its samples (``output_sample_axes``)


@dataclass
class SensitivityResult:
    header: dict
    rows: list = field(default_factory=list)  # one dict per (group, ratio)

    def table(self) -> dict:
        """group id -> {ratio: row}."""
        out: dict = {}
        for r in self.rows:
            out.setdefault(r["group"], {})[r["ratio"]] = r
        return out


# -- metrics -------------------------------------------------------------------------------------
def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _distributions(x: np.ndarray) -> bool:
    """Rows that already are probabilities (a model that ends in Softmax):
    non-negative, each summing to 1."""
    return bool(np.all(x >= 0) and np.allclose(x.sum(axis=1), 1.0, atol=1e-3))


def damage(a: np.ndarray, b: np.ndarray) -> tuple[str, float]:
    """("kl", mean KL(p_a || p_b)) for (samples, classes) floats, p the
    softmax of logits, or the rows themselves where the model already
    outputs probabilities (a softmax of probabilities is nearly uniform: it
    priced a real classifier's layers at 1/100 of their damage); else
    ("1-cos", mean of 1 - centred cosine per sample)."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a64.ndim == 2 and a64.shape[1] > 1:
        if _distributions(a64):
            p = a64 / a64.sum(axis=1, keepdims=True)
            q = np.maximum(b64, 0) / np.maximum(np.maximum(b64, 0).sum(axis=1, keepdims=True), 1e-30)
        else:
            p, q = _softmax(a64), _softmax(b64)
        kl = np.sum(p * (np.log(np.maximum(p, 1e-30)) - np.log(np.maximum(q, 1e-30))), axis=1)
        return "kl", float(np.mean(kl))
    return "1-cos", float(np.mean(1.0 - centred_cosines(a64, b64)))


def damage_of_outputs(reference: list, outs: list, axes: list | None = None) -> tuple[str, float]:
    """``damage`` averaged over the model's float outputs (over all of them
    when none is float, as a detector's indices), sample by sample along
    each output's sample axis (``axes``). Measured on the first output
    alone, a sweep let a real layout detector keep its first head at 0.998
    centred cosine while five of its other seven fell below 0.9 (the worst
    to 0.36); averaged, every head stayed above 0.98."""
    reference, outs = by_sample(reference, axes), by_sample(outs, axes)
    pairs = [(a, b) for a, b in zip(reference, outs) if np.asarray(a).dtype.kind == "f"] \
        or list(zip(reference, outs))
    found = [damage(a, b) for a, b in pairs]
    return "+".join(sorted({k for k, _ in found})), float(np.mean([v for _, v in found]))


def before_shares(groups) -> dict:
    """Group id -> the share of the model's MACs in the layers before the
    group's first weight: what a job of that group need not rerun."""
    view = groups.view
    macs = [node_macs(view, n) or 0 for n in view.nodes]
    reads = [node_reads(n) for n in view.nodes]
    total = float(sum(macs)) or 1.0
    out = {}
    for g in groups.prunable:
        weights = {u.node for u in groups.uses(g.id)}
        changed: set = set()
        after = 0.0
        for i in range(min(weights, default=0), len(view.nodes)):
            if i in weights or reads[i] & changed:
                changed.update(view.nodes[i].output)
                after += macs[i]
        out[g.id] = 1.0 - after / total
    return out


def work(groups, ratios, held: int) -> float:
    """Multiply-accumulates a sweep runs, times the held-out samples: per
    prunable group, the whole model once per ratio, or, where the layers
    before the group hold ``TAIL_SHARE`` of the MACs or more, those layers
    once (the original's tensors its jobs' tails read) and the rest once
    per ratio."""
    total = float(sum(node_macs(groups.view, n) or 0 for n in groups.view.nodes))
    out = 0.0
    for share in before_shares(groups).values():
        out += total * (share + len(ratios) * (1 - share) if share >= TAIL_SHARE else len(ratios))
    return out * held


# -- one job -------------------------------------------------------------------------------------
def run_job(sweep: Sweep, gid: int, ratio: float) -> dict:
    """Prune group ``gid`` alone at ``ratio`` and measure the damage."""

    groups = sweep.groups
    g = groups.group(gid)
    k = n_keep(g.units, ratio, max(1, g.min_keep), 1)
    order = np.argsort(-np.asarray(sweep.scores[gid]), kind="stable")
    keep = {gid: np.sort(order[:k])}
    comp = compensate(groups, keep, sweep.calibration, sweep.compensate) \
        if sweep.calibration is not None else None
    outs = _outputs(sweep, apply(groups, keep, compensation=comp, hints=False),
                    sweep.split and sweep.shares.get(gid, 0.0) >= TAIL_SHARE)
    kind, value = damage_of_outputs(sweep.reference, outs, sweep.sample_axes)
    row = {"group": gid, "ratio": ratio, "kept": k, "units": g.units, "metric": kind, "damage": value,
           "macs_saved": (1.0 - estimate_macs(groups, keep) / groups.macs) if groups.macs else None,
           "params_saved": 1.0 - estimate_params(groups, keep) / max(groups.params_total, 1)}
    if sweep.labels is not None and sweep.reference[0].ndim == 2:
        before = float(np.mean(sweep.reference[0].argmax(1) == sweep.labels))
        after = float(np.mean(outs[0].argmax(1) == sweep.labels))
        row.update(accuracy=after, accuracy_drop=before - after)
    return row


def _outputs(sweep: Sweep, model, split: bool) -> list:
    """The pruned ``model``'s outputs on the held-out feeds. A job changes
    the graph from its group's layers on: only that tail runs, on the
    original's tensors before it, computed once for every ratio of the
    group (``runtime.tail``), where the layers before it hold ``TAIL_SHARE``
    of the MACs (else the tail's own session and copies cost about what it
    saves: measured on a VGG text detector, whose jobs all ran tails, 5%
    slower than whole runs); ``TAIL_CHUNK`` samples a run, as the tail's
    inputs need not hold the samples on their first axis. Where those
    tensors pass ``TAIL_BYTES``, or the original cannot run cut (a graph
    that fixes batch 1 inside), the whole model runs."""
    part = tail(model, sweep.groups.model) if split else None
    chunks = _before(sweep, part.given) if part is not None else None
    got = None
    if chunks is not None:
        sub = part.build([values for _, values in chunks])
        inputs = [vi.name for vi in sub.graph.input if vi.name in sweep.feeds]
        try:
            sess = session(sub, sweep.threads)
            got = joined([sess.run(None, {**{k: feeds[k] for k in inputs}, **values}) for feeds, values in chunks],
                         [sweep.sample_axes[k] for k in part.outputs] if sweep.sample_axes else None)
        except Exception:  # noqa: BLE001 - a tail onnxruntime cannot take alone: the whole model runs
            got = None
    if got is None:
        return run_batched(session(model, sweep.threads), sweep.feeds, None)
    outs = list(sweep.reference)
    for k, value in zip(part.outputs, got):
        outs[k] = value
    return outs


def _before(sweep: Sweep, given: list) -> list | None:
    """The original's ``given`` tensors, per chunk of the held-out feeds:
    [(feeds, values)], kept for the next job (the same group at another
    ratio); None when too big or the original cannot run cut."""
    key = tuple(given)
    if sweep.before is None or sweep.before[0] != key:
        chunks: list | None = []
        try:
            sess = session(upto(sweep.groups.model, given), sweep.threads)
            size = 0
            for start in range(0, sample_count(sweep.feeds), TAIL_CHUNK):
                feeds = rows(sweep.feeds, slice(start, start + TAIL_CHUNK))
                values = dict(zip(given, sess.run(given, feeds)))
                size += sum(np.asarray(v).nbytes for v in values.values())
                if size > TAIL_BYTES:
                    chunks = None
                    break
                chunks.append((feeds, values))
        except Exception:  # noqa: BLE001 - a graph that fixes batch 1 inside: whole runs from now on
            sweep.split = False
            return None
        sweep.before = (key, chunks)
    return sweep.before[1]


_WORKER: Sweep | None = None


def _init_worker(build: tuple) -> None:
    global _WORKER
    _WORKER = prepare(*build)
    _WORKER.threads = 1  # one process per core


def _pool_job(job: tuple) -> dict:
    return run_job(_WORKER, *job)


# -- Ray -----------------------------------------------------------------------------------------
class _RayWorker:
    """One Ray actor: builds the sweep once from the shipped inputs, then
    runs jobs. Files travel as bytes (written to the actor's own temporary
    folder), so the cluster's machines need onnxprune but not our files."""

    def __init__(self, build: tuple):

        self._tmp = tempfile.TemporaryDirectory(prefix="onnxprune-ray-")
        self.sweep = prepare(*_unpack(build, self._tmp.name))
        self.sweep.threads = 1  # one actor per CPU

    def run(self, gid: int, ratio: float) -> dict:
        return run_job(self.sweep, gid, ratio)


def _pack(build: tuple) -> tuple:
    """Replace each path to a plain file (model, .npz/.npy data) by its bytes.
    A model with external data, a folder or a ``module.py:fn`` stays a path:
    the workers must see it at the same place (a shared file system)."""
    def ship(value, kind: str):
        if not isinstance(value, (str, os.PathLike)) or not os.path.isfile(value):
            return value
        if kind == "model" and _has_external_data(os.fspath(value)):
            return value
        with open(value, "rb") as f:
            return ("__file__", os.path.basename(os.fspath(value)), f.read())

    model, calib, data, *rest = build
    return (ship(model, "model"), ship(calib, "data"), ship(data, "data"), *rest)


def _unpack(build: tuple, folder: str) -> tuple:
    out = []
    for i, value in enumerate(build):
        if isinstance(value, tuple) and len(value) == 3 and value[0] == "__file__":
            path = os.path.join(folder, f"{i}-{value[1]}")
            with open(path, "wb") as f:
                f.write(value[2])
            value = path
        out.append(value)
    return tuple(out)


def _has_external_data(path: str) -> bool:
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - prepare reports a bad model with its own message
        return False
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a ``host:port`` nobody answers: Ray itself retries for
    minutes, logging to stderr."""

    if address in ("local", "auto") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except ValueError:
        raise OnnxPruneError(f"--ray {address}: expected host:port, ray://host:port, auto or local") from None
    except OSError as e:
        raise OnnxPruneError(f"--ray {address}: cannot connect: {e.strerror or e}") from None


def _ray_rows(address: str, build: tuple, todo: list, jobs: int):
    """Run ``todo`` on Ray actors, yielding rows in job order. ``address``
    is a cluster's (``host:port``, ``ray://...``, ``auto``) or ``local``
    (start a Ray instance for this sweep). An already connected driver (the
    API inside a Ray program) is used as it is."""
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise OnnxPruneError("--ray needs Ray: pip install 'onnxprune[ray]'") from None
    own = not ray.is_initialized()
    if own:
        _reachable(address)
        try:
            ray.init(address=None if address == "local" else address, include_dashboard=False,
                     log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise OnnxPruneError(f"--ray {address}: cannot connect: {e}") from None
    actors = []
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        n = max(1, min(jobs if jobs > 1 else cpus, len(todo)))
        payload = ray.put(_pack(build))
        worker = ray.remote(num_cpus=1)(_RayWorker)
        actors = [worker.remote(payload) for _ in range(n)]
        yield from ActorPool(actors).map(lambda a, job: a.run.remote(*job), todo)
    finally:
        for a in actors:
            ray.kill(a)
        if own:
            ray.shutdown()


# -- the sweep -----------------------------------------------------------------------------------
def prepare(model, calib, data, criterion: str | None, compensate: str | None, input_shapes,
            calib_samples: int | None = None, prune: tuple = (), batch_axes: dict | None = None) -> Sweep:
    """Load, analyse, calibrate and score once: what every job shares. With
    no ``data``, the last quarter of ``calib`` is held out for measuring."""

    cfg = stages.PruneConfig(calib=calib, data=data, criterion=criterion, compensate=compensate,
                               input_shapes=input_shapes, calib_samples=calib_samples, sequential=False,
                               prune=tuple(prune), batch_axes=batch_axes)
    groups = stages.analyze(stages.load(model, cfg), cfg)
    if data is not None:
        feeds, labels = feeds_and_labels(data, groups.model, batch_axes)
    else:
        if calib_samples is not None:
            # only the first calib_samples may be used (the rest may be a
            # prune's validation samples): the held-out part comes from them
            calib = _first(calib, groups.model, calib_samples, batch_axes)
            calib_samples = None
        parts = hold_out_labelled(calib, groups.model, batch_axes)
        if parts is None:
            raise OnnxPruneError("sensitivity needs held-out data: give --data, or --calib data that "
                                 "can be read twice with at least 2 samples")
        limit, feeds, labels = parts
        cfg.calib_samples = limit
    cfg = cfg.resolved()
    calibration = stages.calibrate(groups, cfg)
    scores = stages.score(groups, calibration, cfg)
    t0 = time.perf_counter()
    sess = session(groups.model)
    t1 = time.perf_counter()
    reference = run_batched(sess, feeds, None)
    # A tail saves running the layers before it, and costs one more session
    # per group: where building a session takes longer than a run (a small
    # model of many nodes), whole runs are faster. Either way the rows agree.
    split = time.perf_counter() - t1 > t1 - t0
    return Sweep(groups, scores, calibration, cfg.resolved_compensation(), feeds,
                 None if labels is None else np.asarray(labels), reference, split=split,
                 shares=before_shares(groups), sample_axes=output_sample_axes(sess))


def _first(source, model, n: int, batch_axes: dict | None = None) -> dict:
    """The first ``n`` samples of a calibration source, as one dict."""

    names = [i.name for i in model_inputs(model)]
    return join(list(batches(load_data(source, model)[0], names, model, 64, n, batch_axes)))


def _fingerprint(model, settings: dict) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    if isinstance(model, (str, os.PathLike)):
        with open(model, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    else:
        h.update(model.SerializeToString())
    return h.hexdigest()[:16]


def _read_jsonl(path: str) -> tuple[dict | None, list]:
    if not os.path.exists(path):
        return None, []
    header, rows = None, []
    with open(path) as f:
        for n, line in enumerate(f):
            line = line.strip()
            if not line:
                continue
            try:
                item = json.loads(line)
            except ValueError:
                if n and not f.read().strip():
                    break  # a last line cut short by an interrupted run: redone
                raise OnnxPruneError(f"{path}: line {n + 1} is not JSON") from None
            if n == 0:
                header = item
            else:
                rows.append(item)
    if header is None or header.get("format") != FORMAT:
        raise OnnxPruneError(f"{path}: not an onnxprune sensitivity file")
    return header, rows


def sweep(model, *, calib, data=None, ratios=DEFAULT_RATIOS, criterion: str | None = None,
          compensate: str | None = None, input_shapes: dict | None = None, jobs: int = 1,
          shard: tuple[int, int] = (0, 1), out: str | None = None, calib_samples: int | None = None,
          ray: str | None = None, progress=None, prune: tuple = (),
          batch_axes: dict | None = None) -> SensitivityResult:
    """Every (prunable group, ratio) job of this shard, run serially, on a
    pool of ``jobs`` processes or on Ray actors (``ray``: a cluster address or
    ``local``; ``jobs`` actors, or one per CPU of the cluster); rows stream
    to ``out`` (JSONL) and a re-run resumes from it."""
    ratios = sorted({float(r) for r in ratios})
    if not ratios or any(not 0.0 < r < 1.0 for r in ratios):
        raise OnnxPruneError("--ratios must be fractions in (0, 1)")
    index, count = shard
    if not 0 <= index < count:
        raise OnnxPruneError(f"--shard {index}/{count}: need 0 <= i < N")
    settings = {"ratios": ratios, "criterion": criterion, "compensate": compensate,
                "calib": os.fspath(calib) if isinstance(calib, (str, os.PathLike)) else "in memory",
                "data": os.fspath(data) if isinstance(data, (str, os.PathLike)) else data is not None,
                "calib_samples": calib_samples, **({"prune": sorted(prune)} if prune else {})}
    build = (model, calib, data, criterion, compensate, input_shapes, calib_samples, tuple(prune), batch_axes)
    local = prepare(*build)
    header = {"format": FORMAT, "model": os.path.basename(os.fspath(model))
              if isinstance(model, (str, os.PathLike)) else "in memory",
              "fingerprint": _fingerprint(model, settings), "settings": settings,
              "criterion": local.scores.criterion, "compensate": local.compensate,
              "groups": {str(g.id): {"units": g.units, "members": g.members[:4]}
                         for g in local.groups.prunable}}
    all_jobs = [(g.id, r) for g in local.groups.prunable for r in ratios]
    mine = [j for i, j in enumerate(all_jobs) if i % count == index]
    result = SensitivityResult(header)
    done = set()
    if out:
        old_header, rows = _read_jsonl(out)
        if old_header is not None:
            if old_header.get("fingerprint") != header["fingerprint"]:
                raise OnnxPruneError(f"{out}: written for another model or other settings; "
                                     f"choose another file")
            result.rows = [r for r in rows if (r["group"], r["ratio"]) in set(mine)]
            done = {(r["group"], r["ratio"]) for r in result.rows}
        with open(out, "w") as f:  # rewritten whole: a torn last line is dropped
            f.write(json.dumps(header) + "\n")
            for r in result.rows:
                f.write(json.dumps(r) + "\n")
    todo = [j for j in mine if j not in done]
    writer = open(out, "a") if out else None
    try:
        def keep_row(row: dict) -> None:
            result.rows.append(row)
            if writer is not None:
                writer.write(json.dumps(row) + "\n")
                writer.flush()
            if progress is not None:
                progress(row)

        if ray and todo:
            for row in _ray_rows(ray, build, todo, jobs):
                keep_row(row)
        elif jobs > 1 and len(todo) > 1:

            ctx = mp.get_context("spawn")  # no forked onnxruntime threads
            with ctx.Pool(min(jobs, len(todo)), initializer=_init_worker, initargs=(build,)) as pool:
                for row in pool.imap(_pool_job, todo):
                    keep_row(row)
        else:
            for gid, r in todo:
                keep_row(run_job(local, gid, r))
    finally:
        if writer is not None:
            writer.close()
    order = {j: i for i, j in enumerate(all_jobs)}
    result.rows.sort(key=lambda r: order.get((r["group"], r["ratio"]), len(order)))
    return result


def load(path: str) -> SensitivityResult:
    """A sweep written with ``out`` (JSONL) or ``--json``."""
    if os.fspath(path).endswith(".jsonl"):
        header, rows = _read_jsonl(path)
        if header is None:
            raise OnnxPruneError(f"{path}: no such file")
        return SensitivityResult(header, rows)
    try:
        with open(path) as f:
            data = json.load(f)
        return SensitivityResult(data["header"], data["rows"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise OnnxPruneError(f"{path}: not a sensitivity result ({e})") from None


def removal_costs(result: SensitivityResult, groups, scores):
    """``scores`` with each group's removal order (its criterion's) priced by
    the sweep: the k-th removal costs the rise of the measured damage curve
    (piecewise linear through zero and each ratio swept; removals past the
    last ratio swept are priced infinite), so ``planner.plan_global`` spends a budget where the
    measured loss is least (``--allocate sensitivity``)."""

    table = result.table()
    out = Scores(scores.criterion, by_group=dict(scores.by_group))
    for g in groups.prunable:
        rows = table.get(g.id)
        if not rows:
            raise OnnxPruneError(f"the sensitivity sweep has no row for group {g.id}: a sweep of "
                                 f"another model or of other groups (--exclude)?")
        if any(r["units"] != g.units for r in rows.values()):
            raise OnnxPruneError(f"group {g.id} has {g.units} units, the sweep says "
                                 f"{next(iter(rows.values()))['units']}: a sweep of another model?")
        xs = [0.0] + [(r["units"] - r["kept"]) / r["units"] for r in rows.values()]
        ys = [0.0] + [max(0.0, float(r["damage"])) for r in rows.values()]
        order = np.argsort(xs)
        xs, ys = np.asarray(xs)[order], np.maximum.accumulate(np.asarray(ys)[order])
        k = np.arange(g.units + 1) / g.units
        curve = np.interp(k, xs, ys)
        cost = np.maximum.accumulate(np.maximum(np.diff(curve), 0.0))
        # Past the largest ratio swept nothing was measured: those removals
        # come last, only when the budget cannot be met otherwise (a low
        # curve extended by its slope sent groups to the 0.9 cap).
        cost[k[1:] > xs[-1] + 1e-9] = np.inf
        out.orders[g.id] = np.argsort(np.asarray(scores[g.id], dtype=np.float64), kind="stable")[:g.units - 1]
        out.costs[g.id] = cost[:g.units - 1]
    return out


def merge(paths: list, out: str) -> SensitivityResult:
    """Shards of one sweep (same fingerprint) into one file, rows in job order."""
    header, rows = None, {}
    for p in paths:
        h, rs = _read_jsonl(p)
        if h is None:
            raise OnnxPruneError(f"{p}: no such file")
        if header is not None and h.get("fingerprint") != header.get("fingerprint"):
            raise OnnxPruneError(f"{p}: a shard of another sweep (model or settings differ)")
        header = header or h
        for r in rs:
            rows[(r["group"], r["ratio"])] = r
    result = SensitivityResult(header, [rows[k] for k in sorted(rows)])
    with open(out, "w") as f:
        f.write(json.dumps(header) + "\n")
        for r in result.rows:
            f.write(json.dumps(r) + "\n")
    return result


def plot(result: SensitivityResult, path: str) -> None:
    """Damage against ratio, one line per group (matplotlib: the [plot] extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise OnnxPruneError("--plot needs matplotlib: pip install 'onnxprune[plot]'") from None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for gid, by_ratio in sorted(result.table().items()):
        rs = sorted(by_ratio)
        ys = [by_ratio[r]["damage"] for r in rs]
        label = f"{gid}: {result.header['groups'].get(str(gid), {}).get('members', ['?'])[0]}"
        axes[0].plot(rs, ys, marker="o", label=label)
        xs = [by_ratio[r]["macs_saved"] or 0.0 for r in rs]
        axes[1].plot(xs, ys, marker="o")
    metric = result.rows[0]["metric"] if result.rows else "damage"
    for ax, xl in zip(axes, ("ratio of the group's units removed", "fraction of the model's MACs saved")):
        ax.set_xlabel(xl)
        ax.set_ylabel(metric)
        ax.set_yscale("symlog", linthresh=1e-4)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6, loc="lower right")
    fig.suptitle(f"sensitivity of {result.header.get('model')}: each group pruned alone")
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


__all__ = ["sweep", "merge", "plot", "damage", "run_job", "prepare", "work", "before_shares", "SensitivityResult",
           "DEFAULT_RATIOS"]
