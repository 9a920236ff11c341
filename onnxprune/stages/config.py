"""Everything a prune is asked to do, in one ``PruneConfig`` (the CLI's flags,
the API's keywords), and the defaults that depend on the data.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from onnxprune.core.errors import OnnxPruneError
from onnxprune.refit.compensate import MODES

AUTO_ROUND = (8, 16)  # the default rounding: multiples of 8, in groups of 16 units or more


@dataclass
class PruneConfig:
    """Everything a prune is asked to do (the CLI's flags, the API's keywords)."""

    # what to remove
    mode: str = "channels"  # or "edges": single weights (``edges.py``)
    pattern: str | None = None  # N:M weight sparsity, like "2:4" (mode="edges", or after the channels)
    edge_ratio: float | None = None  # with mode="channels": then zero this fraction of each layer's weights
    ratio: float = 0.3
    macs_target: float | None = None
    params_target: float | None = None  # keep about this fraction of the parameters
    latency_target: float | None = None  # run in at most this fraction of the time (measured, ``latency.py``)
    sensitivity: str | None = None  # a sweep (``onnxprune sensitivity --out/--json``) for allocate="sensitivity"
    criterion: str | None = None  # None: "obs" with calibration data, else "l2" (``resolved``)
    group_reduction: str = "mean"
    normalize: str = "mean"
    min_channels: int = 1
    round_to: int | None = None  # None: multiples of 8 in groups of 16+ units (AUTO_ROUND); 1: exact
    allocate: str | None = None  # how a budget is spread over groups (planner.ALLOCATIONS); None: "uniform"
    max_group_ratio: float = 0.9  # with allocate="global": no group loses more than this
    calibrate_from_data: bool = True  # --data without --calib: calibrate on its first part
    exclude: tuple = ()
    allow_io_change: bool = False  # a state carried from an input to an output (a KV cache) may shrink
    prune: tuple = ()  # only these kinds of groups: "heads" (multi-position units), "neurons"; () = all
    keep: dict | None = None  # explicit plan: group id -> kept units
    plan: str | None = None  # a saved plan file to replay
    seed: int = 0
    # data
    calib: object = None
    calib_samples: int | None = None
    calib_batch: int = 16
    compensate: str | None = None  # None: "lsq" with calibration data, else "none"
    sequential: bool | None = None  # refit consumers stage by stage on the pruned model's inputs (``sequential.py``)
    explain: bool = False  # measure where the error comes from, on the validation samples (``search.explain``)
    repair: int = 0  # fine-tune the kept weights towards the original's outputs for this many steps (``repair``)
    input_shapes: dict | None = None
    batch_axes: dict | None = None  # input -> the axis holding its samples (--batch-axis), where not axis 0
    # checks
    strict: bool | None = None  # None: the ONNXPRUNE_STRICT environment variable
    check: bool = True
    validate: bool = False
    data: object = None
    samples: int = 8
    threads: int = 1
    progress: bool = False
    # outputs (written together, all or nothing)
    output: str | None = None
    masked_output: str | None = None
    report: str | None = None
    save_plan: str | None = None

    def rounding(self) -> dict:
        """How kept counts are rounded: ``--round-to N`` rounds every group of
        N units or more; by default, multiples of 8 in groups of 16 units or
        more (onnxruntime's blocked NCHWc conv kernels want channel counts
        that are multiples of 8 on AVX2: exact counts ran up to 2x slower
        than the unpruned model, rounded ones never slower, in
        benchmarks/fidelity.py --ablation; a group of 8 to 15 units rounded
        could only keep 8, so it stays exact). The planner rounds each group
        up or down so that the budget still holds (``planner.round_to_budget``)."""
        if self.round_to is None:
            return {"round_to": AUTO_ROUND[0], "round_from": AUTO_ROUND[1]}
        return {"round_to": self.round_to, "round_from": None}

    def resolved(self) -> PruneConfig:
        """The defaults that depend on the data, filled in. With calibration
        data: the ``obs`` criterion (channels chosen by the error left after
        least-squares compensation), ``lsq`` compensation refitted
        sequentially; without: ``l2`` and none (measured in
        benchmarks/fidelity.py)."""

        data = self.calib is not None
        criterion = self.criterion or ("obs" if data else "l2")
        # With data, global allocation (obs prices); ``run`` upgrades it to
        # sensitivity (prices measured by a sweep) where the sweep is
        # affordable (``choose_allocation``). Both met every goal on the
        # samples where uniform missed two (benchmarks/fidelity.py --allocate).
        allocate = self.allocate or ("global" if data else "uniform")
        # Sequential reconstruction refits the lsq compensation stage by stage
        # (benchmarks/fidelity.py: it kept more accuracy on every sample model).
        sequential = self.sequential if self.sequential is not None else data
        return replace(self, criterion=criterion, compensate=self.resolved_compensation(), allocate=allocate,
                       sequential=sequential)

    def resolved_compensation(self) -> str:
        mode = self.compensate
        if mode is None:
            mode = "lsq" if self.calib is not None else "none"
        if mode not in MODES:
            raise OnnxPruneError(f"unknown compensation '{mode}' (choose from {', '.join(MODES)})")
        return mode

    @classmethod
    def from_kwargs(cls, **kwargs) -> PruneConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown prune option(s): {', '.join(unknown)}")
        return cls(**kwargs)


