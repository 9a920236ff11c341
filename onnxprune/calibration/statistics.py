"""Streaming per-channel statistics of calibration tensors.

Memory is bounded by the statistics (per position: count, sum, sum of squares,
abs sum, zero count; a Gram matrix X^T X where compensation needs one), never
by the number of samples. Blocks are reduced while they are in cache, from a
channels-first copy in a per-thread scratch buffer.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

GRAM_ROWS = 8192  # rows of one batch that enter a Gram matrix, at most
MAX_GRAM_BYTES = 1 << 30  # one layer's X^T X (about 11,500 channels): wider layers get none
BLOCK = 1 << 16  # float32 elements (256 KiB) reduced at a time: all statistics of a block are taken while it is in cache
GRAM_CHUNK = 1 << 21  # elements (8 MiB) of the channels-first copy one Gram product reads, at most
LONG_ROW = 512  # rows shorter than this are reduced from a channels-first copy

_local = threading.local()


def _scratch(name: str, n: int, dtype) -> np.ndarray:
    """A buffer of this thread, reused by the next tensor and batch (kept by
    calibration's threads while they run, else dropped after each update)."""
    bufs = _local.__dict__.setdefault("bufs", {})
    buf = bufs.get(name)
    if buf is None or buf.size < n or buf.dtype != dtype:
        buf = bufs[name] = np.empty(max(n, 1), dtype)
    return buf[:n]


def keep_scratch() -> None:
    """This thread keeps its scratch buffers from one batch to the next (a
    calibration worker): they are released when it ends (``release_scratch``)."""
    _local.keep = True


def release_scratch() -> None:
    """Drop this thread's buffers."""
    _local.__dict__.pop("bufs", None)


@dataclass
class ChannelStats:
    """Streaming statistics of one tensor axis, per position along that axis."""

    size: int
    gram: bool = False
    count: int = 0
    sum: np.ndarray = None
    sumsq: np.ndarray = None
    abssum: np.ndarray = None
    zeros: np.ndarray = None
    xtx: np.ndarray = None  # sum over the Gram rows of x x^T, when gram=True
    gram_count: int = 0  # rows in xtx (a strided subset of big batches: GRAM_ROWS)
    gram_sum: np.ndarray = None  # their sum (the covariance's own mean)

    def __post_init__(self):
        for name in ("sum", "sumsq", "abssum", "zeros"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(self.size, dtype=np.float64))
        if self.gram and self.xtx is None:
            if self.size * self.size * 8 > MAX_GRAM_BYTES:
                self.gram = False  # too wide for a Gram matrix: its consumers fall back to bias
            else:
                self.xtx = np.zeros((self.size, self.size), dtype=np.float64)
                self.gram_sum = np.zeros(self.size, dtype=np.float64)

    def update(self, x: np.ndarray, axis: int) -> None:
        """Add a batch, viewed as (before, channels, after). Sums are float32
        partial sums (pairwise along one contiguous row, or of at most 255
        rows) accumulated in float64; every statistic of a block (``BLOCK``)
        is taken while it is in cache. Long rows are reduced in place. Short
        rows (``after`` < ``LONG_ROW``), and batches whose rows all enter the
        Gram matrix, are first copied channels-first in chunks: long rows
        reduce faster, and the same copy is the operand of one SYRK
        (X X^T) per chunk, not of one GEMM per leading index."""
        x = np.asarray(x)
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        axis %= max(x.ndim, 1)
        before = int(np.prod(x.shape[:axis], dtype=np.int64))
        x3 = x.reshape(before, self.size, -1)
        before, c, after = x3.shape
        rows = before * after
        self.count += rows
        # A Gram matrix costs rows x channels^2: past GRAM_ROWS rows a batch
        # contributes an evenly strided subset (a covariance estimate needs
        # thousands of rows, not millions of pixels).
        step = -(-rows // GRAM_ROWS) if self.gram else 0
        if after == 1:
            x2 = x3[:, :, 0]
            moments = _row_moments(x2)
            if self.gram:
                part = x2[::step]
                self.xtx += part.T @ part  # one SYRK (numpy sees X^T X)
                self.gram_sum += moments[0] if step == 1 else part.sum(axis=0, dtype=np.float64)
                self.gram_count += part.shape[0]
        elif after < LONG_ROW or step == 1:
            moments = _zero_moments(c)
            for m in _channels_first(x3, GRAM_CHUNK if step == 1 else BLOCK * 4):
                _accumulate(moments, _plane_moments(m[None]))
                if step == 1:
                    self.xtx += m @ m.T
            if step == 1:
                self.gram_sum += moments[0]
                self.gram_count += rows
        else:
            moments = _plane_moments(x3)
        if step > 1 and after > 1:
            sub = gram_subset(x3, step)
            for m in _channels_first(sub, GRAM_CHUNK):
                self.xtx += m @ m.T
                self.gram_sum += m.sum(axis=1)
            self.gram_count += sub.shape[0] * sub.shape[2]
        s, q, a, z = moments
        self.sum += s
        self.sumsq += q
        self.abssum += a
        self.zeros += z
        if not getattr(_local, "keep", False):  # a calibration thread keeps its buffers for the next batch
            release_scratch()

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.count, 1)

    @property
    def mean_abs(self) -> np.ndarray:
        return self.abssum / max(self.count, 1)

    @property
    def var(self) -> np.ndarray:
        return np.maximum(self.sumsq / max(self.count, 1) - self.mean ** 2, 0.0)

    @property
    def rms(self) -> np.ndarray:
        return np.sqrt(self.sumsq / max(self.count, 1))

    @property
    def apoz(self) -> np.ndarray:
        return self.zeros / max(self.count, 1)

    def covariance(self) -> np.ndarray:
        n = max(self.gram_count, 1)
        m = self.gram_sum / n
        return self.xtx / n - np.outer(m, m)


def gram_subset(x3: np.ndarray, step: int) -> np.ndarray:
    """Every ``step``-th row of (before, channels, after), as (before',
    channels, after'): strided along ``after`` when it is that long, else
    along ``before`` (the rows that enter a Gram matrix past GRAM_ROWS)."""
    return x3[:, :, ::step] if x3.shape[2] >= step else x3[::step]


def _block_moments(blk: np.ndarray, axis: int, tt: np.ndarray, bb: np.ndarray):
    """(sum, sum of squares, abs sum, zero count) of one block along ``axis``,
    in float32 (counts exact), using the scratch buffers ``tt`` and ``bb`` of
    the block's shape. A non-negative block (after a Relu, say) skips the abs
    pass, and a positive one the zero count."""
    s = blk.sum(axis=axis)
    np.multiply(blk, blk, out=tt)
    q = tt.sum(axis=axis)
    low = blk.min()
    if low >= 0:
        a = s
    else:
        np.abs(blk, out=tt)
        a = tt.sum(axis=axis)
    if low > 0:
        z = np.zeros(s.shape, np.int64)
    else:
        np.equal(blk, 0, out=bb)  # counted as bytes: exact while at most 255 are summed
        z = bb.view(np.uint8).sum(axis=axis, dtype=np.uint8 if blk.shape[axis] <= 255 else np.int64)
    return s, q, a, z


def _row_moments(x2: np.ndarray):
    """Per-column (sum, sum of squares, abs sum, zero count) of (rows,
    columns), float64: float32 sums of at most 255 rows at a time."""
    rows, c = x2.shape
    r = max(1, min(255, BLOCK // max(c, 1), rows))
    t = _scratch("f32", r * c, np.float32).reshape(r, c)
    zb = _scratch("bool", r * c, np.bool_).reshape(r, c)
    total = [np.zeros(c, np.float64) for _ in range(3)] + [np.zeros(c, np.int64)]
    for i in range(0, rows, r):
        blk = x2[i:i + r]
        k = blk.shape[0]
        for acc, part in zip(total, _block_moments(blk, 0, t[:k], zb[:k])):
            acc += part
    return tuple(total)


def _plane_moments(x3: np.ndarray):
    """Per-channel (sum, sum of squares, abs sum, zero count) of (before,
    channels, after), float64: float32 pairwise sums along each contiguous row
    of ``after`` values, then float64 over the rows."""
    before, c, after = x3.shape
    x2 = x3.reshape(before * c, after)
    n = x2.shape[0]
    r = max(1, min(BLOCK // after, n))
    t = _scratch("f32", r * after, np.float32).reshape(r, after)
    zb = _scratch("bool", r * after, np.bool_).reshape(r, after)
    per_row = [np.empty(n, np.float32) for _ in range(3)] + [np.empty(n, np.int64)]
    for i in range(0, n, r):
        blk = x2[i:i + r]
        k = blk.shape[0]
        for out, part in zip(per_row, _block_moments(blk, 1, t[:k], zb[:k])):
            out[i:i + k] = part
    return tuple(v.reshape(before, c).sum(axis=0, dtype=np.float64) for v in per_row[:3]) + \
        (per_row[3].reshape(before, c).sum(axis=0, dtype=np.int64),)


@dataclass
class Calibration:
    stats: dict = field(default_factory=dict)  # (tensor, axis) -> ChannelStats
    samples: int = 0
    seconds: float = 0.0  # the whole pass
    setup_seconds: float = 0.0  # of which: exposing tensors, creating the session
    random: bool = False
    one_at_a_time: bool = False  # the model only runs with batch 1
    notes: list = field(default_factory=list)
    runs: int = 0  # onnxruntime runs (one per batch, or per sample when one_at_a_time)
    run_seconds: float = 0.0  # of ``seconds``: inside onnxruntime
    wait_seconds: float = 0.0  # of ``seconds``: waiting for statistics (what onnxruntime did not hide)
    stats_seconds: float = 0.0  # taking the statistics, summed over the threads that took them
    overlapped: bool = False  # statistics taken beside onnxruntime's runs

    def get(self, tensor: str, axis: int) -> ChannelStats | None:
        return self.stats.get((tensor, axis))


def _zero_moments(c: int):
    return (np.zeros(c, np.float64), np.zeros(c, np.float64), np.zeros(c, np.float64), np.zeros(c, np.int64))


def _accumulate(total, part) -> None:
    for t, p in zip(total, part):
        t += p


def _channels_first(x3: np.ndarray, chunk: int):
    """(before, channels, after) as contiguous (channels, rows) copies of at
    most ``chunk`` elements (whole leading indices, or column ranges of one),
    in one reused buffer: each is valid until the next is made."""
    n, c, w = x3.shape
    if c * w <= chunk:
        per = max(1, chunk // (c * w))
        pieces = (x3[i:i + per].transpose(1, 0, 2) for i in range(0, n, per))
    else:
        cols = max(1, chunk // c)
        pieces = (x3[i, :, j:j + cols][:, None, :] for i in range(n) for j in range(0, w, cols))
    for piece in pieces:
        m = _scratch("channels_first", piece.size, np.float32).reshape(piece.shape)
        np.copyto(m, piece)
        yield m.reshape(c, -1)
