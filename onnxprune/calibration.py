"""Stage 3: run calibration data through onnxruntime once and keep streaming
per-channel statistics of the tensors the criteria and compensation need.

Data sources (``load_data``): an ``.npz`` (one array per input, axis 0 =
samples), an ``.npy`` (single-input models), a folder of ``.npz``/``.npy``
samples, ``module.py:function`` returning an iterable of ``{input: array}``
dicts, any such iterable, or an object with onnxruntime's
``CalibrationDataReader`` interface (``get_next()``). No data: random inputs,
with a loud warning.

Memory is bounded by the statistics (per position: count, sum, sum of squares,
abs sum, zero count; a Gram matrix X^T X where compensation needs one), never
by the number of samples.
"""
from __future__ import annotations

import contextlib
import glob
import importlib.util
import io
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
from threadpoolctl import threadpool_limits

from .data import (check_array, concat, item_shape, join, model_inputs, per_run_inputs, per_sample, random_feeds,
                   read_npy, read_npz, rows, sample_axes, sample_count, take)
from .errors import OnnxPruneError

RANDOM_WARNING = ("no calibration data: using random inputs. Data-driven criteria "
                  "(mean_abs, apoz, act_l2, relief, flap) and compensation are then meaningless; "
                  "pass --calib with real inputs")


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


# -- data sources ----------------------------------------------------------
class _FromFile(dict):
    """A sample read from a file: errors about its arrays name the file."""

    def __init__(self, arrays: dict, source: str):
        super().__init__(arrays)
        self.source = source


def _npz_samples(path: str, names: list[str]):
    data = read_npz(path)
    missing = [n for n in names if n not in data]
    if missing:
        raise OnnxPruneError(f"{path}: has no array named {', '.join(missing)} "
                             f"(arrays: {', '.join(data)})")
    yield _FromFile({n: data[n] for n in names}, path)


def _npy_samples(path: str, names: list[str]):
    if len(names) != 1:
        raise OnnxPruneError(f"{path}: a .npy file can only feed a single-input model "
                             f"(inputs: {', '.join(names)}); use .npz")
    yield _FromFile({names[0]: read_npy(path)}, path)


def _folder_samples(path: str, names: list[str]):
    files = sorted(glob.glob(os.path.join(path, "*.npz")) + glob.glob(os.path.join(path, "*.npy")))
    if not files:
        raise OnnxPruneError(f"{path}: folder has no .npz or .npy files")
    for f in files:
        samples = _npz_samples(f, names) if f.endswith(".npz") else _npy_samples(f, names)
        for batch in samples:
            # One sample per file: add the sample axis when the file lacks it.
            yield batch


def _user_call(fn, *args, what: str):
    """Call the user's code with what it prints held back: a module that
    parses its own command line at import (argparse) prints a usage text and
    exits, which becomes one line naming the exit status and the first line
    it printed. What it prints on success goes to stderr as it would have."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            result = fn(*args)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - user code may raise anything, or exit
        printed = next((line.strip() for line in out.getvalue().splitlines() if line.strip()), "")
        said = f" (it printed: {printed})" if printed else ""
        if isinstance(e, SystemExit):
            raise OnnxPruneError(f"{what} exited (SystemExit: {e.code}){said}") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise OnnxPruneError(f"{what} raised {type(e).__name__}: {first}{said}") from None
    if out.getvalue():
        sys.stderr.write(out.getvalue())
    return result


def _callable_samples(spec: str):
    path, _, func = spec.rpartition(":")
    if not os.path.exists(path):
        raise OnnxPruneError(f"--calib {spec}: no such file {path}")
    name = f"onnxprune_calib_{abs(hash(os.path.abspath(path)))}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        _user_call(module_spec.loader.exec_module, module, what=f"--calib {spec}: importing {path}")
    finally:
        sys.path.pop(0)
    fn = getattr(module, func, None)
    if not callable(fn):
        raise OnnxPruneError(f"--calib {spec}: {path} has no function '{func}'")
    result = _user_call(fn, what=f"--calib {spec}: {func}()")
    try:
        return iter(result)
    except TypeError:
        raise OnnxPruneError(f"--calib {spec}: {func}() returned {type(result).__name__}, "
                             f"not an iterable of {{input: array}} dicts") from None


def _reader_samples(reader):
    while True:
        item = reader.get_next()
        if item is None:
            return
        yield item


def load_data(source, model: onnx.ModelProto, input_shapes: dict | None = None, batch_axes: dict | None = None):
    """Any supported source -> (iterable of {input: array with sample axis}, is_random)."""
    names = [i.name for i in model_inputs(model)]
    if source is None:
        warnings.warn(RANDOM_WARNING, stacklevel=3)
        return [random_feeds(model, 8, input_shapes, batch_axes=batch_axes)], True
    if isinstance(source, (str, os.PathLike)):
        spec = os.fspath(source)
        if os.path.isdir(spec):
            return _folder_samples(spec, names), False
        if spec.endswith(".npz") and os.path.exists(spec):
            return _npz_samples(spec, names), False
        if spec.endswith(".npy") and os.path.exists(spec):
            return _npy_samples(spec, names), False
        if ".py:" in spec:
            return _callable_samples(spec), False
        raise OnnxPruneError(f"--calib {spec}: expected an existing .npz, .npy, folder, "
                             f"or module.py:function")
    if isinstance(source, dict):
        return [source], False
    if hasattr(source, "get_next"):
        return _reader_samples(source), False
    try:
        return iter(source), False
    except TypeError:
        raise OnnxPruneError(f"calibration data of type {type(source).__name__} is not "
                             f"supported") from None


def _rereadable(source) -> bool:
    """A file, folder, dict or list: reading it again has no side effect
    (generators, readers and user modules would be consumed)."""
    if isinstance(source, (str, os.PathLike)):
        return ".py:" not in os.fspath(source)
    return isinstance(source, (dict, list, tuple))


def first_sample(source, model: onnx.ModelProto, batch_axes: dict | None = None) -> dict | None:
    """One sample (batch of 1) of a re-readable source, for observing shapes."""
    if not _rereadable(source):
        return None
    data, _ = load_data(source, model)
    names = [i.name for i in model_inputs(model)]
    for batch in _batches(data, names, model, 1, 1, batch_axes):
        return batch
    return None


def hold_out(source, model: onnx.ModelProto, fraction: float = 0.25, cap: int = 256,
             batch_axes: dict | None = None):
    """Split a re-readable calibration source into calibration and validation:
    -> (calibration sample limit, held-out feeds {input: array}) or None when
    the source cannot be read twice or has fewer than two samples. The
    held-out samples are the last ones, and calibration stops before them."""
    if not _rereadable(source):
        return None
    names = [i.name for i in model_inputs(model)]
    total = sum(sample_count(c) for c in _batches(load_data(source, model)[0], names, model, 64, None,
                                                  batch_axes))
    if total < 2:
        return None
    k = max(1, min(int(total * fraction), cap))
    # A second pass keeps only the held-out tail: memory stays bounded by it.
    seen, kept = 0, []
    for chunk in _batches(load_data(source, model)[0], names, model, 64, None, batch_axes):
        n = sample_count(chunk)
        if seen + n > total - k:
            kept.append(rows(chunk, slice(max(0, total - k - seen), None)))
        seen += n
    if any(not np.array_equal(v, kept[0][n]) for part in kept for n, v in part.items() if not per_sample(v)):
        return None  # held-out samples with different scalar inputs cannot run as one set
    try:
        return total - k, join(kept)
    except ValueError:  # held-out samples of different sizes cannot form one validation set
        return None


def hold_out_labelled(source, model: onnx.ModelProto, batch_axes: dict | None = None):
    """``hold_out``, with the held-out samples' labels when the source is an
    .npz that has a 'labels' array: -> (limit, feeds, labels or None) or None."""
    parts = hold_out(source, model, batch_axes=batch_axes)
    if parts is None:
        return None
    limit, feeds = parts
    labels = None
    if isinstance(source, (str, os.PathLike)) and os.fspath(source).endswith(".npz"):
        from .data import load_npz

        _, all_labels = load_npz(source, model, batch_axes)
        if all_labels is not None:
            labels = all_labels[len(all_labels) - sample_count(feeds):]
    return limit, feeds, labels


def _guarded(samples):
    """Iterate user data; an exception raised by user code becomes a user error."""
    it = iter(samples)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except OnnxPruneError:
            raise
        except (Exception, SystemExit) as e:  # noqa: BLE001 - user generators may raise anything, or exit
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise OnnxPruneError(f"calibration data source raised {type(e).__name__}: {first}") from None
        yield item


def _batches(samples, names: list[str], model: onnx.ModelProto, batch: int, limit: int | None,
             batch_axes: dict | None = None, notes: list | None = None):
    """Re-chunk any stream of feed dicts into batches of ``batch`` samples.
    Which axis of each input holds the samples is decided on the first item
    (``sample_axes``; ``batch_axes`` is ``--batch-axis``, ``notes`` receives
    what was decided)."""
    ranks = {}
    for vi in model_inputs(model):
        dims = vi.type.tensor_type.shape.dim
        if dims:
            ranks[vi.name] = len(dims)
    infos = {vi.name: vi for vi in model_inputs(model)}
    axes = whole = None
    pending: dict[str, list] = {n: [] for n in names}
    shared: dict = {}
    have = seen = 0
    for item in _guarded(samples):
        if not isinstance(item, dict):
            raise OnnxPruneError(f"calibration data must yield dicts of arrays, got {type(item).__name__}")
        missing = [n for n in names if n not in item]
        if missing:
            raise OnnxPruneError(f"calibration sample has no input {', '.join(missing)}")
        if axes is None:
            axes, said = sample_axes(model, _with_sample_axis(item, names, ranks), batch_axes)
            whole = per_run_inputs(model) - set(axes)  # given at their own shape, to every run
            if notes is not None:
                notes.extend(said)
        arrays = {}
        for n in names:
            a = np.asarray(item[n])
            if n in ranks and a.ndim == ranks[n] - 1 and n not in whole:
                a = np.expand_dims(a, axes.get(n, 0))  # a single sample without the sample axis
            # As --data does: numbers, finite, the input's dims; float64 feeds float32.
            arrays[n] = check_array(a, infos[n], getattr(item, "source", "calibration data"),
                                    per_run=n in whole, axis=axes.get(n, 0))
        # A scalar or Shared input (no sample axis) holds one value for every sample in the item.
        scalars = {n: a for n, a in arrays.items() if not per_sample(a)}
        batched = [n for n in names if n not in scalars]
        number = sample_count(arrays) if batched else 1
        if limit is not None:
            number = min(number, limit - seen)
        if have and (any(item_shape(arrays[n]) != item_shape(pending[n][0]) for n in batched)
                     or any(not np.array_equal(a, shared[n]) for n, a in scalars.items())):
            # Samples of another size (a folder of images of different sizes), or
            # another value of a scalar input: they cannot share a batch, so what
            # is pending goes on its own.
            yield dict(shared, **{n: concat(pending[n]) for n in batched})
            pending, have = {n: [] for n in names}, 0
        shared = scalars
        if not batched:  # nothing per sample: each item is one run
            yield dict(scalars)
            seen += 1
            if limit is not None and seen >= limit:
                break
            continue
        for n in batched:
            pending[n].append(take(arrays[n], slice(0, number)))
        have += number
        seen += number
        while have >= batch:
            # One array (a whole .npz or dict) is sliced, not copied again for every batch.
            joined = {n: p[0] if len(p) == 1 else concat(p) for n, p in pending.items() if p}
            yield dict(shared, **{n: take(v, slice(0, batch)) for n, v in joined.items()})
            pending = {n: [take(v, slice(batch, None))] for n, v in joined.items()}
            have -= batch
        if limit is not None and seen >= limit:
            break
    if have:
        yield dict(shared, **{n: p[0] if len(p) == 1 else concat(p) for n, p in pending.items() if p})


def _with_sample_axis(item: dict, names: list[str], ranks: dict) -> dict:
    """An item's arrays as ``sample_axes`` reads them: one sample given
    without its sample axis counts as one (a leading axis of 1)."""
    out = {}
    for n in names:
        a = np.asarray(item[n])
        out[n] = a[None] if n in ranks and a.ndim == ranks[n] - 1 else a
    return out


# -- the pass ----------------------------------------------------------------
def _batch_size(model: onnx.ModelProto, wanted: int) -> int:
    whole = per_run_inputs(model)
    for vi in model_inputs(model):
        if vi.name in whole:
            continue
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return int(dims[0].dim_value)
    return wanted


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


class _RunFailed(Exception):
    """onnxruntime failed on a batch (as opposed to the statistics failing)."""


def _one_blas_thread():
    """Hold BLAS to one thread meanwhile. The Gram products run beside
    onnxruntime's own threads: more BLAS threads on top of those only
    oversubscribe the cores, and a small product then costs many times its
    single-thread time."""
    return threadpool_limits(limits=1, user_api="blas")


def _known_count(source, model: onnx.ModelProto) -> int | None:
    """Samples in an in-memory source (for the progress bar), else None."""
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim) for vi in model_inputs(model)}

    def count(item) -> int | None:
        if not isinstance(item, dict) or not item:
            return None
        name, value = next(iter(item.items()))
        shape = np.shape(value)
        return shape[0] if shape and len(shape) == ranks.get(name, -1) else 1

    if isinstance(source, dict):
        return count(source)
    if isinstance(source, (list, tuple)):
        counts = [count(i) for i in source]
        return None if any(c is None for c in counts) else sum(counts)
    return None


def _progress_bar(total: int | None):
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

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
        _local.keep = True
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
    The session's idle threads do not spin
    (``spinning``): they would hold the cores the statistics need.
    ``progress``: a bar on stderr. ``batch_axes``: ``--batch-axis``."""
    from .runtime import Fetcher, exposing

    t0 = time.perf_counter()
    data, is_random = load_data(source, model, input_shapes, batch_axes)
    names = [i.name for i in model_inputs(model)]
    tensors = sorted({t for t, _ in requests} - set(names))
    sess, want = exposing(model, tensors, threads=threads, spinning=spinning)
    cal = Calibration(random=is_random, setup_seconds=time.perf_counter() - t0)
    available = set(want) | set(names)
    jobs = [(tensor, axis, gram) for (tensor, axis), gram in requests.items() if tensor in available]
    fetch = Fetcher(sess, want)
    workers = max(1, min(threads or _cores(), len(jobs)))
    beside = 1 if overlap else 0  # jobs running beside onnxruntime
    cal.overlapped = bool(beside)
    pool = _StatsPool(workers)
    pending = None  # (input signature, outputs) of the batch the pool works on

    def update(st: ChannelStats, x: np.ndarray, axis: int):
        return lambda: st.update(x, axis)

    def settle() -> None:
        """Let every worker finish the pool's batch (its errors surface here),
        then hand its arrays back for a next run to write into."""
        nonlocal pending
        if pending is not None:
            t = time.perf_counter()
            pool.allow(workers)
            pool.wait()
            cal.wait_seconds += time.perf_counter() - t
            fetch.recycle(*pending)
            pending = None

    def run(feeds) -> None:
        nonlocal pending
        sig = fetch.signature(feeds)
        pool.allow(beside)
        t = time.perf_counter()
        try:
            outputs = fetch.run(feeds)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises many types
            raise _RunFailed(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
        finally:
            cal.run_seconds += time.perf_counter() - t
            cal.runs += 1
        settle()
        pool.allow(beside)  # the new batch's jobs start beside the next run, not on every core
        by_name = dict(feeds)
        by_name.update(zip(want, outputs))
        batch_jobs = []
        for tensor, axis, gram in jobs:
            x = by_name[tensor]
            if x is None or x.ndim <= axis:
                continue
            st = cal.stats.get((tensor, axis))
            if st is None:  # created here, in the requests' order
                st = cal.stats[(tensor, axis)] = ChannelStats(x.shape[axis], gram)
            rows = x.size // max(st.size, 1)
            batch_jobs.append((x.size + (min(rows, GRAM_ROWS) * st.size * st.size if st.gram else 0),
                               len(batch_jobs), update(st, x, axis)))
        pending = (sig, outputs)
        pool.submit([job for *_, job in sorted(batch_jobs)])
        if not beside:
            settle()

    bar = None
    if progress:
        known = _known_count(source, model)
        total = samples if known is None else (known if samples is None else min(samples, known))
        bar = _progress_bar(total)
        task = bar.add_task("calibrating", total=total)
        bar.start()
    single_seconds, failed_batch = 0.0, 0
    try:
        with _one_blas_thread():
            for feeds in _batches(data, names, model, _batch_size(model, batch), samples, batch_axes, cal.notes):
                n = sample_count(feeds)
                if not cal.one_at_a_time:
                    try:
                        run(feeds)
                    except _RunFailed as e:
                        if cal.samples or n == 1:
                            raise OnnxPruneError(f"calibration run failed: {e}") from None
                        # A graph that fixes batch 1 inside (a Reshape to a literal 1):
                        # fall back to one sample per run, and say so.
                        cal.one_at_a_time, failed_batch = True, n
                if cal.one_at_a_time:
                    t = time.perf_counter()
                    for i in range(n):
                        try:
                            run(rows(feeds, slice(i, i + 1)))
                        except _RunFailed as e:
                            raise OnnxPruneError(f"calibration run failed: {e}") from None
                    single_seconds += time.perf_counter() - t
                cal.samples += n
                if bar is not None:
                    bar.advance(task, n)
            settle()
    finally:
        pool.close()
        if bar is not None:
            bar.stop()
    cal.stats_seconds = pool.seconds
    if cal.samples == 0:
        raise OnnxPruneError("calibration data yielded no samples")
    cal.seconds = time.perf_counter() - t0
    if cal.one_at_a_time:
        # Its own cost: one run per sample, instead of one per batch.
        cal.notes.append(f"the model does not run on batches of {failed_batch} (it fixes "
                         f"batch 1 inside); calibrated one sample at a time ({cal.samples} runs, "
                         f"{single_seconds:.2f} s)")
    return cal
