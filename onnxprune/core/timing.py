"""Where a prune's time and memory go: seconds and resident memory per stage.

The report's ``timings`` lists the stages in the order they ran (load,
analyze, calibrate, score, price, plan, compensate, refit, reference,
apply, check, report, validate, save, and repair or explain when asked),
each with its wall seconds, the process's peak resident memory at the end
of the stage and its resident memory then. The peak only grows: the stage
where it jumps is the one that needed the memory. Resident memory is read
from the operating system (``resource``'s peak, ``/proc/self/statm`` for
the current figure); where it cannot be read it is None, never a guess.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

try:
    import resource
except ImportError:  # Windows: no getrusage
    resource = None  # type: ignore[assignment]

_MIB = 1024 * 1024


def peak_rss_mb() -> float | None:
    """The process's peak resident memory so far, in MiB."""
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / _MIB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def rss_mb() -> float | None:
    """The process's resident memory now, in MiB (Linux only)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / _MIB


@dataclass
class Stage:
    stage: str
    seconds: float
    peak_rss_mb: float | None  # the process's peak at the end of the stage
    rss_mb: float | None  # resident at the end of the stage


@dataclass
class Timings:
    stages: list = field(default_factory=list)

    @contextmanager
    def stage(self, name: str):
        """Time the block as stage ``name``."""
        t0 = time.perf_counter()
        yield
        self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float) -> None:
        self.stages.append(Stage(name, round(seconds, 4), _rounded(peak_rss_mb()), _rounded(rss_mb())))

    @property
    def total(self) -> float:
        return round(sum(s.seconds for s in self.stages), 4)

    def slowest(self) -> Stage | None:
        return max(self.stages, key=lambda s: s.seconds, default=None)

    def to_list(self) -> list[dict]:
        return [asdict(s) for s in self.stages]


def _rounded(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


__all__ = ["Timings", "Stage", "peak_rss_mb", "rss_mb"]
