"""The automatic pruning loop (the classic node-pruning algorithm): evaluate
importance, rank, remove the least important, check a termination
condition, repeat.

Each step prunes the model the previous step left by ``step`` of its MACs,
with everything a plain prune does (calibration on that model, scoring,
allocation, compensation, sequential refits), then measures the result
against the *original* on held-out data. The loop stops before the fidelity
metric falls by more than ``max_drop`` (the step that would cross it is
rejected and the model before it kept), when a budget is met (MACs,
parameters or measured latency: ``--macs-target`` / ``--params-target`` /
``--latency-target`` with --auto are floors), or when nothing is left to
prune. Every step's latency is measured (one sample, the original and the
step's model timed in alternation, as ``--latency-target`` does). The metric is accuracy when the data has
labels, else top-1 agreement for (samples, classes) outputs, else the mean
centred cosine; its drop is in the metric's own units (0.01 = one point).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from onnxprune import stages
from onnxprune.calibration.sources import hold_out_labelled
from onnxprune.check.similarity import centred_cosines
from onnxprune.check.validate import run_batched, session
from onnxprune.core.data import feeds_and_labels, rows
from onnxprune.core.errors import OnnxPruneError
from onnxprune.pipeline import prune as pipeline_prune
from onnxprune.search.latency import time_ratio


@dataclass
class Step:
    index: int
    macs: float  # fraction of the original's MACs after the step
    params: float  # fraction of the original's parameters
    latency: float  # measured latency, fraction of the original's (one sample)
    metric: str
    value: float
    drop: float
    accepted: bool
    seconds: float


@dataclass
class AutoRun:
    max_drop: float
    step: float
    metric: str = ""
    original: float = 0.0
    steps: list = field(default_factory=list)
    stopped: str = ""  # why the loop ended
    held_out: dict = field(default_factory=dict, repr=False)  # the data every step was measured on (and labels)

    def to_dict(self) -> dict:
        return {"max_drop": self.max_drop, "step": self.step, "metric": self.metric,
                "original": self.original, "stopped": self.stopped,
                "steps": [asdict(s) for s in self.steps]}


def _metric(outs: np.ndarray, ref: np.ndarray, labels) -> tuple[str, float, float]:
    """(name, value, value of the original itself) on held-out outputs."""
    if labels is not None and ref.ndim == 2:
        return "accuracy", float(np.mean(outs.argmax(1) == labels)), float(np.mean(ref.argmax(1) == labels))
    if ref.ndim == 2 and ref.shape[1] > 1:
        return "top-1 agreement", float(np.mean(outs.argmax(1) == ref.argmax(1))), 1.0
    return "centred cosine", float(centred_cosines(ref, outs).mean()), 1.0


def _held_out(source_model, cfg):
    """(calibration config, held-out feeds, labels): --data when given, else
    the last quarter of --calib, held out of calibration."""

    if cfg.calib is None:
        raise OnnxPruneError("--auto needs calibration data (--calib or --data)")
    if cfg.data is not None:
        return (cfg, *feeds_and_labels(cfg.data, source_model, cfg.batch_axes))
    parts = hold_out_labelled(cfg.calib, source_model, cfg.batch_axes)
    if parts is None:
        raise OnnxPruneError("--auto needs held-out data: --data, or --calib data that can be read twice")
    limit, feeds, labels = parts
    samples = limit if cfg.calib_samples is None else min(cfg.calib_samples, limit)
    return replace(cfg, calib_samples=samples), feeds, labels


def _reached(floors: dict, macs: float, params: float, latency: float) -> str | None:
    """The first budget met, as the reason to stop, or None."""
    got = {"MACs": macs, "params": params, "latency": latency}
    for name, floor in floors.items():
        if floor is not None and got[name] <= floor + 1e-3:
            return f"reached the {name} target {floor:g} (x{got[name]:.3f})"
    return None


def auto_prune(source, cfg, max_drop: float, step: float = 0.1, floor: float | None = None,
               progress=None):
    """-> (the last accepted step's PruneResult, AutoRun). ``floor``: stop at
    this fraction of the original's MACs (``--macs-target`` with --auto);
    ``cfg.params_target`` and ``cfg.latency_target`` are floors too."""

    if not 0.0 < step < 1.0:
        raise OnnxPruneError(f"--step must be in (0, 1), got {step}")
    if max_drop < 0:
        raise OnnxPruneError(f"--max-drop must be at least 0, got {max_drop}")
    original = stages.load(source, cfg).model
    base_macs = stages.analyze(stages.load(original, cfg), cfg).macs
    if not base_macs:
        raise OnnxPruneError("--auto steps by MACs, and this model's MACs are unknown: give --data or "
                             "--input-shape")
    step_cfg, feeds, labels = _held_out(original, cfg)
    labels = None if labels is None else np.asarray(labels)
    ref = run_batched(session(original), feeds, None)[0]
    floors = {"MACs": floor, "params": cfg.params_target, "latency": cfg.latency_target}
    for name, value in floors.items():
        if value is not None and not 0.0 < value < 1.0:
            raise OnnxPruneError(f"the {name} target must be in (0, 1), got {value}")
    one = rows(feeds, slice(0, 1))
    base = session(original, cfg.threads)
    run = AutoRun(max_drop, step, held_out=dict(feeds, **({"labels": labels} if labels is not None else {})))
    current, current_frac, params_total = original, 1.0, None
    best = None
    step_cfg = replace(step_cfg, data=None, validate=False, output=None, masked_output=None, report=None,
                       save_plan=None, ratio=0.3, macs_target=None, params_target=None, latency_target=None)
    last = (1.0, 1.0, 1.0)  # MACs, params, latency of the model kept so far
    for k in range(1, 1000):
        reached = _reached(floors, *last)
        if reached:
            run.stopped = reached
            break
        want = current_frac * (1.0 - step)
        if floor is not None:
            want = max(want, floor)
        t0 = time.perf_counter()
        try:
            res = pipeline_prune.run(current, replace(step_cfg, macs_target=min(0.999, want / current_frac)))
        except OnnxPruneError as e:  # the plan cannot go further, or this step's prune failed: say which
            done = str(e).startswith("nothing to prune") or "cannot be met" in str(e)
            run.stopped = f"nothing more to prune: {e}" if done else f"step {k} failed: {e}"
            break
        outs = run_batched(session(res.model), feeds, None)[0]
        name, value, before = _metric(outs, ref, labels)
        run.metric, run.original = name, before
        if params_total is None:
            params_total = res.report.params["before"]
        frac = current_frac * res.report.macs["after"] / res.report.macs["before"]
        latency = time_ratio(base, session(res.model, cfg.threads), one, 15)[0]
        drop = before - value
        accepted = drop <= max_drop
        s = Step(k, frac, res.report.params["after"] / params_total, latency, name, value, drop, accepted,
                 time.perf_counter() - t0)
        run.steps.append(s)
        if progress is not None:
            progress(s)
        if not accepted:
            run.stopped = f"step {k} would lose {drop:.4f} of the {name} (more than --max-drop {max_drop:g})"
            break
        best, current, current_frac = res, res.model, frac
        last = (frac, s.params, latency)
    else:  # pragma: no cover - 1000 steps of 10% cannot leave anything
        run.stopped = "step limit"
    if best is None:
        raise OnnxPruneError(f"--auto kept no step ({run.stopped}): raise --max-drop or lower --step")
    best.report.params["before"] = params_total
    best.report.macs["before"] = base_macs
    met = [(m, f) for m, f in (("macs", floor), ("params", cfg.params_target), ("latency", cfg.latency_target))
           if f is not None]
    best.report.target = {"measure": met[0][0], "fraction": met[0][1]} if met else None
    _against_original(best.report, original, best.model, cfg)
    best.report.auto = run.to_dict()
    best.report.notes.append(f"--auto: {sum(s.accepted for s in run.steps)} steps kept, stopped: {run.stopped}")
    return best, run


def _against_original(report, original, final, cfg) -> None:
    """The report's groups as kept units of the *original*: the last step's
    are relative to the model before it. Group ids are stable under pruning
    (same graph, fewer channels), so they are matched by id."""

    before = stages.analyze(stages.load(original, cfg), cfg).groups
    after = stages.analyze(stages.load(final, cfg), cfg).groups
    if len(before) != len(after):
        return
    report.groups = [{"id": a.id, "channels": a.units, "kept": b.units, "members": a.members,
                      "frozen": a.frozen} for a, b in zip(before, after)]


def plot(run: AutoRun, path: str) -> None:
    """The trajectory: fidelity against MACs and parameters kept (the [plot] extra)."""

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise OnnxPruneError("--plot needs matplotlib: pip install 'onnxprune[plot]'") from None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    xs = [1.0] + [s.macs for s in run.steps]
    ys = [run.original] + [s.value for s in run.steps]
    ax.plot(xs, ys, marker="o", label="MACs kept")
    ax.plot([1.0] + [s.params for s in run.steps], ys, marker="s", alpha=0.6, label="parameters kept")
    ax.plot([1.0] + [s.latency for s in run.steps], ys, marker="^", alpha=0.6, label="latency (measured)")
    rejected = [s for s in run.steps if not s.accepted]
    for s in rejected:
        ax.scatter([s.macs], [s.value], color="red", zorder=3, label="rejected step")
    ax.axhline(run.original - run.max_drop, color="grey", linestyle="--", label=f"original - {run.max_drop:g}")
    ax.set_xlabel("fraction of the original kept")
    ax.set_ylabel(run.metric)
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("onnxprune --auto: one step per point")
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


__all__ = ["auto_prune", "AutoRun", "Step", "plot"]
