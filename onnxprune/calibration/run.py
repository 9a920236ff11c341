"""One onnxruntime pass over the calibration data, keeping the statistics the
criteria and compensation asked for (``calibrate``).

One session returns the requested tensors beside the model's outputs; a pool
of threads (one BLAS thread each) reduces them, one job beside onnxruntime's
next run and the rest between runs. A model that only runs with batch 1
inside is run one sample at a time, with a note.
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import onnx
from threadpoolctl import threadpool_limits

from onnxprune.calibration.sources import batches, known_count, load_data
from onnxprune.calibration.statistics import (
    GRAM_ROWS,
    Calibration,
    ChannelStats,
    keep_scratch,
    release_scratch,
)
from onnxprune.core.data import model_inputs, per_run_inputs, rows, sample_count
from onnxprune.core.errors import OnnxPruneError
from onnxprune.core.runtime import Fetcher, exposing


# -- the pass ----------------------------------------------------------------
def batch_for(model: onnx.ModelProto, wanted: int) -> int:
    whole = per_run_inputs(model)
    for vi in model_inputs(model):
        if vi.name in whole:
            continue
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return int(dims[0].dim_value)
    return wanted


class _RunFailed(Exception):
    """onnxruntime failed on a batch (as opposed to the statistics failing)."""


def _one_blas_thread():
    """Hold BLAS to one thread meanwhile. The Gram products run beside
    onnxruntime's own threads: more BLAS threads on top of those only
    oversubscribe the cores, and a small product then costs many times its
    single-thread time."""
    return threadpool_limits(limits=1, user_api="blas")


def _progress_bar(total: int | None):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("calibrating"), BarColumn(),
               TextColumn("{task.completed}" + (f"/{total}" if total else "") + " samples"),
               TimeElapsedColumn()]
    if total:
        columns.append(TimeRemainingColumn())
    return Progress(*columns, console=Console(stderr=True), transient=True)


class _StatsPool:
    """Threads that take the statistics, one job per requested tensor and
    batch: at most ``allowed`` jobs run at once. The caller allows one beside
    an onnxruntime run (whose own threads have the cores) and all of them
    while it waits for a batch to finish. Jobs of one batch touch different
    ChannelStats, and a batch is finished before the next is submitted, so
    every statistic sees its batches in order: the results do not depend on
    the threads' timing."""

    def __init__(self, workers: int):
        self.cond = threading.Condition()
        self.queue: list = []
        self.allowed = self.active = self.left = 0
        self.seconds = 0.0  # summed over the threads
        self.error: BaseException | None = None
        self.closed = False
        self.threads = [threading.Thread(target=self._work, name=f"onnxprune-calibration-{i}", daemon=True)
                        for i in range(workers)]
        for t in self.threads:
            t.start()

    def _work(self) -> None:
        keep_scratch()
        try:
            while True:
                with self.cond:
                    while not self.closed and (not self.queue or self.active >= self.allowed):
                        self.cond.wait()
                    if self.closed:
                        return
                    job = self.queue.pop()
                    self.active += 1
                t = time.perf_counter()
                try:
                    job()
                except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
                    with self.cond:
                        self.error = self.error or e
                        self.queue.clear()
                finally:
                    with self.cond:
                        self.seconds += time.perf_counter() - t
                        self.active -= 1
                        self.left -= 1
                        self.cond.notify_all()
        finally:
            release_scratch()

    def submit(self, jobs: list) -> None:
        """Jobs, cheapest first (taken from the end: the costliest first)."""
        with self.cond:
            self.queue.extend(jobs)
            self.left += len(jobs)
            self.cond.notify_all()

    def allow(self, n: int) -> None:
        with self.cond:
            self.allowed = n
            self.cond.notify_all()

    def wait(self) -> None:
        """Until every submitted job is done; a job's error is raised here."""
        with self.cond:
            while self.left > 0 and self.error is None:
                self.cond.wait()
            if self.error is not None:
                raise self.error

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.queue.clear()
            self.cond.notify_all()
        for t in self.threads:
            t.join()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _Pass:
    """One calibration pass in progress: the session's fetcher, the statistics
    pool and the batch whose statistics are still being taken."""

    def __init__(self, cal: Calibration, fetch, want: list, jobs: list, workers: int, beside: int) -> None:
        self.cal, self.fetch, self.want, self.jobs = cal, fetch, want, jobs
        self.workers, self.beside = workers, beside
        self.pool = _StatsPool(workers)
        self.pending = None  # (input signature, outputs) of the batch the pool works on
        self.single_seconds, self.failed_batch = 0.0, 0

    def settle(self) -> None:
        """Let every worker finish the pool's batch (its errors surface here),
        then hand its arrays back for a next run to write into."""
        if self.pending is not None:
            t = time.perf_counter()
            self.pool.allow(self.workers)
            self.pool.wait()
            self.cal.wait_seconds += time.perf_counter() - t
            self.fetch.recycle(*self.pending)
            self.pending = None

    def run(self, feeds) -> None:
        """One onnxruntime run; its tensors' statistics become jobs for the pool."""
        cal = self.cal
        sig = self.fetch.signature(feeds)
        self.pool.allow(self.beside)
        t = time.perf_counter()
        try:
            outputs = self.fetch.run(feeds)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises many types
            raise _RunFailed(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
        finally:
            cal.run_seconds += time.perf_counter() - t
            cal.runs += 1
        self.settle()
        self.pool.allow(self.beside)  # the new batch's jobs start beside the next run, not on every core
        by_name = dict(feeds)
        by_name.update(zip(self.want, outputs))
        batch_jobs = []
        for tensor, axis, gram in self.jobs:
            x = by_name[tensor]
            if x is None or x.ndim <= axis:
                continue
            st = cal.stats.get((tensor, axis))
            if st is None:  # created here, in the requests' order
                st = cal.stats[(tensor, axis)] = ChannelStats(x.shape[axis], gram)
            rows = x.size // max(st.size, 1)
            batch_jobs.append((x.size + (min(rows, GRAM_ROWS) * st.size * st.size if st.gram else 0),
                               len(batch_jobs), _update(st, x, axis)))
        self.pending = (sig, outputs)
        self.pool.submit([job for *_, job in sorted(batch_jobs)])
        if not self.beside:
            self.settle()

    def feed(self, feeds) -> int:
        """A batch; a graph that fixes batch 1 inside (a Reshape to a literal 1)
        is then fed one sample per run, and says so. -> samples fed."""
        cal, n = self.cal, sample_count(feeds)
        if not cal.one_at_a_time:
            try:
                self.run(feeds)
            except _RunFailed as e:
                if cal.samples or n == 1:
                    raise OnnxPruneError(f"calibration run failed: {e}") from None
                cal.one_at_a_time, self.failed_batch = True, n
        if cal.one_at_a_time:
            t = time.perf_counter()
            for i in range(n):
                try:
                    self.run(rows(feeds, slice(i, i + 1)))
                except _RunFailed as e:
                    raise OnnxPruneError(f"calibration run failed: {e}") from None
            self.single_seconds += time.perf_counter() - t
        cal.samples += n
        return n


def _update(st: ChannelStats, x: np.ndarray, axis: int):
    return lambda: st.update(x, axis)


def calibrate(model: onnx.ModelProto, source, requests: dict, *, samples: int | None = None,
              batch: int = 16, progress: bool = False, threads: int | None = None,
              input_shapes: dict | None = None, overlap: bool = True,
              spinning: bool = False, batch_axes: dict | None = None) -> Calibration:
    """One onnxruntime pass; ``requests``: {(tensor, axis): need_gram}.

    One session returns the requested tensors beside the model's outputs
    (model inputs are read from the feeds), written into the arrays of an
    earlier run (``runtime.Fetcher``). The statistics are jobs, one per
    tensor and batch, for a pool of threads (one per core, one BLAS thread
    each: threadpoolctl). With ``overlap`` one job at a time runs beside
    onnxruntime's next run (both release the GIL) and what is left when that
    run ends runs on every core; two batches of the tensors are then alive
    at once. Without it (``overlap=False``, the sequential mode) the jobs run
    on every core between the runs and ``wait_seconds`` is their whole cost.
    The session's idle threads do not spin (``spinning``): they would hold
    the cores the statistics need. ``progress``: a bar on stderr.
    ``batch_axes``: ``--batch-axis``."""
    t0 = time.perf_counter()
    data, is_random = load_data(source, model, input_shapes, batch_axes)
    names = [i.name for i in model_inputs(model)]
    tensors = sorted({t for t, _ in requests} - set(names))
    sess, want = exposing(model, tensors, threads=threads, spinning=spinning)
    cal = Calibration(random=is_random, setup_seconds=time.perf_counter() - t0)
    available = set(want) | set(names)
    jobs = [(tensor, axis, gram) for (tensor, axis), gram in requests.items() if tensor in available]
    cal.overlapped = overlap
    one = _Pass(cal, Fetcher(sess, want), want, jobs, max(1, min(threads or _cores(), len(jobs))),
                beside=1 if overlap else 0)  # jobs running beside onnxruntime
    bar = task = None
    if progress:
        known = known_count(source, model)
        total = samples if known is None else (known if samples is None else min(samples, known))
        bar = _progress_bar(total)
        task = bar.add_task("calibrating", total=total)
        bar.start()
    try:
        with _one_blas_thread():
            for feeds in batches(data, names, model, batch_for(model, batch), samples, batch_axes, cal.notes):
                n = one.feed(feeds)
                if bar is not None:
                    bar.advance(task, n)
            one.settle()
    finally:
        one.pool.close()
        if bar is not None:
            bar.stop()
    cal.stats_seconds = one.pool.seconds
    if cal.samples == 0:
        raise OnnxPruneError("calibration data yielded no samples")
    cal.seconds = time.perf_counter() - t0
    if cal.one_at_a_time:
        # Its own cost: one run per sample, instead of one per batch.
        cal.notes.append(f"the model does not run on batches of {one.failed_batch} (it fixes "
                         f"batch 1 inside); calibrated one sample at a time ({cal.samples} runs, "
                         f"{one.single_seconds:.2f} s)")
    return cal
