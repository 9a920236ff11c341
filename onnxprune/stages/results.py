"""What a prune returns and writes: ``PruneReport`` (what was done, in numbers
and notes), ``PruneResult`` (the model, the report, the plan), and ``save``,
which writes every requested output or none of them, each checked as written.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import onnx

from onnxprune.analysis.groups import Groups
from onnxprune.check.validate import Reference, Validation, check_written
from onnxprune.check.validate import compare as run_compare
from onnxprune.core import model as modelio
from onnxprune.core.errors import OnnxPruneError
from onnxprune.core.timing import Timings
from onnxprune.refit.compensate import Compensation
from onnxprune.rewrite import invariants
from onnxprune.rewrite.engine import apply as run_apply
from onnxprune.select.planner import Plan
from onnxprune.stages.config import PruneConfig
from onnxprune.stages.loading import analyze, load


@dataclass
class PruneReport:
    criterion: str
    ratio: float | None
    params: dict
    macs: dict
    groups: list = field(default_factory=list)  # per group: id, channels, kept, members, frozen
    compensate: str = "none"
    calibration: dict | None = None  # samples, seconds, random, tensors
    compensation_skipped: list = field(default_factory=list)
    internal_errors: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # what the user should know about how it was done
    allocate: str = "uniform"  # how the budget was spread over the groups
    sequential: dict | None = None  # stages, refitted consumers, re-selected groups, seconds, runs
    target: dict | None = None  # the budget asked for: {"measure": "macs"|"params", "fraction": F}
    auto: dict | None = None  # the --auto trajectory (``auto.AutoRun.to_dict``)
    edges: dict | None = None  # with --mode edges: sparsity, layers, sizes (``edges.EdgeReport``)
    io_changes: list = field(default_factory=list)  # with --allow-io-change: inputs/outputs that shrank
    explain: dict | None = None  # with --explain: where the error comes from (``search.explain``)
    repair: dict | None = None  # with --repair: steps, losses before/after, seconds (``repair.train.Repair``)
    timings: Timings | None = None  # seconds and resident memory per stage (``core.timing``)

    def to_dict(self) -> dict:
        out = asdict(replace(self, timings=None))
        if self.timings is not None:
            out["timings"] = {"stages": self.timings.to_list(), "total_s": self.timings.total}
        return out


@dataclass
class PruneResult:
    model: onnx.ModelProto
    report: PruneReport
    groups: Groups = field(repr=False)
    plan: Plan = field(repr=False)
    compensation: Compensation | None = field(default=None, repr=False)
    validation: Validation | None = None
    config: PruneConfig = field(default_factory=PruneConfig, repr=False)
    io: list = field(default_factory=list, repr=False)  # io_change.Changed: inputs/outputs that shrank
    written: list = field(default_factory=list)
    source: object = field(default=None, repr=False)  # the path or ModelProto pruned
    summary: object = field(default=None, repr=False)  # invariants.summarize of the original

    def masked(self) -> onnx.ModelProto:
        """The full-size model with removed channels zeroed in every linear consumer
        (and the same compensation): what the pruned model computes exactly.

        The prune rewrote its copy of the model in place, so the source is
        analysed again: group ids are stable, so the same plan applies."""
        groups = self.groups
        if groups.consumed:
            groups = analyze(load(self.source, self.config), self.config)
        return run_apply(groups, self.plan.keep, masked=True, compensation=self.compensation)

    def save(self, path, external_data: bool | None = None) -> list[str]:
        """Write atomically, checked as written; never over the input model or its data."""
        if external_data is None:
            external_data = self.groups.external_data
        with writing(path):
            return modelio.save(self.model, path, external_data=external_data,
                                protect=set(self.groups.source_files),
                                verify=_checked(self), stored_external=self.groups.external)

    def to_dict(self) -> dict:
        out = self.report.to_dict()
        if self.validation is not None:
            out.update(self.validation.to_dict())
        return out


def _checked(result: PruneResult):
    """A ``verify`` for ``model.save``: the checks of a model as written. A
    session check skipped because the input itself does not load in
    onnxruntime (a custom op) is said in the report's notes."""
    def verify(path: str) -> None:
        note = check_written(path, original=result.source)
        if note and note not in result.report.notes:
            result.report.notes.append(note)
    return verify


def _validated(result: PruneResult, ref: Reference):
    """A ``verify`` for ``model.save`` that also validates the model from the
    files as written: onnxruntime maps its weights from disk rather than
    holding a second copy of them next to the one in memory."""
    def verify(path: str) -> None:
        check_written(path)
        result.validation = run_compare(ref, modelio.load(path).model, io=result.io)
    return verify


@contextmanager
def writing(path):
    """A failed write (a full disk, no permission, a read-only folder) is the
    environment's fault, not the input's or a bug: one line naming the file
    and the reason (exit code 2). The writer has already removed its partial
    files."""
    try:
        yield
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise OnnxPruneError(f"cannot write {os.fspath(path)}: {reason}") from e


def save(result: PruneResult, cfg: PruneConfig, ref: Reference | None = None) -> list[str]:
    """Write every requested output, or none of them: a later failure removes
    what was already written. Models are checked as written, from disk; with
    a validation ``ref``, the output is also validated from disk before it is
    moved into place."""
    written: list[str] = []
    protect = set(result.groups.source_files)
    start = time.perf_counter()
    try:
        if cfg.output:
            verify = _checked(result) if ref is None else _validated(result, ref)
            with writing(cfg.output):
                written += modelio.save(result.model, cfg.output,
                                        external_data=result.groups.external_data, protect=protect,
                                        verify=verify, stored_external=result.groups.external)
        if cfg.masked_output:
            masked = result.masked()
            added = sum(int(np.size(b)) for b in result.compensation.biases.values()) \
                if result.compensation is not None else 0
            invariants.check(result.summary, masked, slack=added)
            with writing(cfg.masked_output):
                written += modelio.save(masked, cfg.masked_output,
                                        external_data=result.groups.external_data, protect=protect,
                                        verify=_checked(result), stored_external=result.groups.external)
        if cfg.save_plan:
            with writing(cfg.save_plan):
                write_json(cfg.save_plan, result.plan.to_dict(result.groups))
            written.append(os.path.abspath(cfg.save_plan))
        if result.report.timings is not None:
            result.report.timings.add("save", time.perf_counter() - start)  # all but the report itself
        if cfg.report:
            with writing(cfg.report):
                write_json(cfg.report, result.to_dict())
            written.append(os.path.abspath(cfg.report))
    except BaseException:
        for path in written:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        raise
    return written


def write_json(path, payload: dict) -> None:
    """Atomically: a temporary file beside ``path``, then a rename. The JSON is
    built first, so an unserialisable value never leaves a half-written file."""
    text = json.dumps(payload, indent=2, default=_json_default)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _json_default(x):
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


