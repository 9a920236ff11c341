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

import glob
import importlib.util
import os
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx

from .data import check_array, model_inputs, random_feeds, read_npy, read_npz
from .errors import OnnxPruneError

RANDOM_WARNING = ("no calibration data: using random inputs. Data-driven criteria "
                  "(mean_abs, apoz, act_l2, relief, flap) and compensation are then meaningless; "
                  "pass --calib with real inputs")


GRAM_ROWS = 8192  # rows of one batch that enter a Gram matrix, at most
MAX_GRAM_BYTES = 1 << 30  # one layer's X^T X (about 11,500 channels): wider layers get none


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
        """Add a batch. Reductions run on the tensor as laid out (viewed as
        (before, channels, after): no transposed copy), in float32 BLAS,
        accumulated in float64."""
        x = np.asarray(x)
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        axis %= max(x.ndim, 1)
        before = int(np.prod(x.shape[:axis], dtype=np.int64))
        x3 = x.reshape(before, self.size, -1)
        self.count += before * x3.shape[2]
        self.sum += x3.sum(axis=(0, 2), dtype=np.float64)
        self.abssum += np.abs(x3).sum(axis=(0, 2), dtype=np.float64)
        self.zeros += np.count_nonzero(x3 == 0, axis=(0, 2))
        if self.gram:
            # A Gram matrix costs rows x channels^2: past GRAM_ROWS rows a batch
            # contributes an evenly strided subset (a covariance estimate needs
            # thousands of rows, not millions of pixels).
            rows = x3.shape[0] * x3.shape[2]
            step = -(-rows // GRAM_ROWS)
            if x3.shape[2] == 1:
                part = x3[::step, :, 0]
                g = part.T @ part
                self.gram_sum += part.sum(axis=0, dtype=np.float64)
                self.gram_count += part.shape[0]
            else:
                sub = x3[:, :, ::step] if x3.shape[2] >= step else x3[::step]
                g = np.zeros((self.size, self.size), dtype=np.float32)
                for part in sub:  # one GEMM per leading index: no transposed copy
                    g += part @ part.T
                self.gram_sum += sub.sum(axis=(0, 2), dtype=np.float64)
                self.gram_count += sub.shape[0] * sub.shape[2]
            self.xtx += g
        # squares accumulated in float64: variances are differences of these
        self.sumsq += np.einsum("icj,icj->c", x3, x3, dtype=np.float64)

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


@dataclass
class Calibration:
    stats: dict = field(default_factory=dict)  # (tensor, axis) -> ChannelStats
    samples: int = 0
    seconds: float = 0.0  # the whole pass
    setup_seconds: float = 0.0  # of which: exposing tensors, creating the session
    random: bool = False
    one_at_a_time: bool = False  # the model only runs with batch 1
    notes: list = field(default_factory=list)

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


def _callable_samples(spec: str):
    path, _, func = spec.rpartition(":")
    if not os.path.exists(path):
        raise OnnxPruneError(f"--calib {spec}: no such file {path}")
    try:
        name = f"onnxprune_calib_{abs(hash(os.path.abspath(path)))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
        try:
            module_spec.loader.exec_module(module)
        finally:
            sys.path.pop(0)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - user code may raise anything, or exit
        raise OnnxPruneError(f"--calib {spec}: importing {path} failed: {type(e).__name__}: {e}") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise OnnxPruneError(f"--calib {spec}: {path} has no function '{func}'")
    try:
        result = fn()
    except (Exception, SystemExit) as e:  # noqa: BLE001 - user code may raise anything, or exit
        raise OnnxPruneError(f"--calib {spec}: {func}() raised {type(e).__name__}: {e}") from None
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


def load_data(source, model: onnx.ModelProto, input_shapes: dict | None = None):
    """Any supported source -> (iterable of {input: array with sample axis}, is_random)."""
    names = [i.name for i in model_inputs(model)]
    if source is None:
        warnings.warn(RANDOM_WARNING, stacklevel=3)
        return [random_feeds(model, 8, input_shapes)], True
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


def first_sample(source, model: onnx.ModelProto) -> dict | None:
    """One sample (batch of 1) of a re-readable source, for observing shapes."""
    if not _rereadable(source):
        return None
    data, _ = load_data(source, model)
    names = [i.name for i in model_inputs(model)]
    for batch in _batches(data, names, model, 1, 1):
        return batch
    return None


def hold_out(source, model: onnx.ModelProto, fraction: float = 0.25, cap: int = 256):
    """Split a re-readable calibration source into calibration and validation:
    -> (calibration sample limit, held-out feeds {input: array}) or None when
    the source cannot be read twice or has fewer than two samples. The
    held-out samples are the last ones, and calibration stops before them."""
    if not _rereadable(source):
        return None
    names = [i.name for i in model_inputs(model)]
    total = sum(len(next(iter(c.values()))) for c in _batches(load_data(source, model)[0], names, model, 64, None))
    if total < 2:
        return None
    k = max(1, min(int(total * fraction), cap))
    # A second pass keeps only the held-out tail: memory stays bounded by it.
    seen, kept = 0, {n: [] for n in names}
    for chunk in _batches(load_data(source, model)[0], names, model, 64, None):
        n = len(next(iter(chunk.values())))
        if seen + n > total - k:
            start = max(0, total - k - seen)
            for name in names:
                kept[name].append(chunk[name][start:])
        seen += n
    try:
        return total - k, {n: np.concatenate(v) for n, v in kept.items()}
    except ValueError:  # held-out samples of different sizes cannot form one validation set
        return None


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
            raise OnnxPruneError(f"calibration data source raised {type(e).__name__}: {e}") from None
        yield item


def _batches(samples, names: list[str], model: onnx.ModelProto, batch: int, limit: int | None):
    """Re-chunk any stream of feed dicts into batches of ``batch`` samples."""
    fixed = {}
    for vi in model_inputs(model):
        dims = vi.type.tensor_type.shape.dim
        if dims:
            fixed[vi.name] = len(dims)
    infos = {vi.name: vi for vi in model_inputs(model)}
    pending: dict[str, list] = {n: [] for n in names}
    have = seen = 0
    for item in _guarded(samples):
        if not isinstance(item, dict):
            raise OnnxPruneError(f"calibration data must yield dicts of arrays, got {type(item).__name__}")
        missing = [n for n in names if n not in item]
        if missing:
            raise OnnxPruneError(f"calibration sample has no input {', '.join(missing)}")
        arrays = {}
        for n in names:
            a = np.asarray(item[n])
            if n in fixed and a.ndim == fixed[n] - 1:
                a = a[None]  # a single sample without the sample axis
            # As --data does: numbers, finite, the input's dims; float64 feeds float32.
            arrays[n] = check_array(a, infos[n], getattr(item, "source", "calibration data"))
        count = len(next(iter(arrays.values())))
        if limit is not None:
            count = min(count, limit - seen)
        if have and any(arrays[n].shape[1:] != pending[n][0].shape[1:] for n in names):
            # Samples of another size (a folder of images of different sizes):
            # they cannot share a batch, so what is pending goes on its own.
            yield {n: np.concatenate(pending[n]) for n in names}
            pending, have = {n: [] for n in names}, 0
        for n in names:
            pending[n].append(arrays[n][:count])
        have += count
        seen += count
        while have >= batch:
            joined = {n: np.concatenate(pending[n]) for n in names}
            yield {n: v[:batch] for n, v in joined.items()}
            pending = {n: [v[batch:]] for n, v in joined.items()}
            have -= batch
        if limit is not None and seen >= limit:
            break
    if have:
        yield {n: np.concatenate(pending[n]) for n in names}


# -- the pass ----------------------------------------------------------------
def _batch_size(model: onnx.ModelProto, wanted: int) -> int:
    for vi in model_inputs(model):
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return int(dims[0].dim_value)
    return wanted


def calibrate(model: onnx.ModelProto, source, requests: dict, *, samples: int | None = None,
              batch: int = 16, progress: bool = False, threads: int | None = None,
              input_shapes: dict | None = None) -> Calibration:
    """One onnxruntime pass; ``requests``: {(tensor, axis): need_gram}."""
    from .runtime import exposing

    t0 = time.perf_counter()
    data, is_random = load_data(source, model, input_shapes)
    tensors = sorted({t for t, _ in requests})
    sess, want = exposing(model, tensors, threads=threads)
    names = [i.name for i in model_inputs(model)]
    cal = Calibration(random=is_random, setup_seconds=time.perf_counter() - t0)
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        task = bar.add_task("calibrating", total=samples)
        bar.start()
    def run(feeds):
        by_name = dict(zip(want, sess.run(want, feeds)))
        for (tensor, axis), gram in requests.items():
            x = by_name.get(tensor)
            if x is None or x.ndim <= axis:
                continue
            st = cal.stats.get((tensor, axis))
            if st is None:
                st = cal.stats[(tensor, axis)] = ChannelStats(x.shape[axis], gram)
            st.update(x, axis)

    try:
        for feeds in _batches(data, names, model, _batch_size(model, batch), samples):
            n = len(next(iter(feeds.values())))
            singles = [feeds] if not cal.one_at_a_time else \
                [{k: v[i:i + 1] for k, v in feeds.items()} for i in range(n)]
            for part in singles:
                try:
                    run(part)
                except Exception as e:  # noqa: BLE001 - onnxruntime raises many types
                    if cal.one_at_a_time or cal.samples or n == 1:
                        raise OnnxPruneError(f"calibration run failed: {str(e).splitlines()[0]}") from None
                    # A graph that fixes batch 1 inside (a Reshape to a literal 1):
                    # fall back to one sample per run, and say so.
                    cal.one_at_a_time = True
                    cal.notes.append(f"the model does not run on batches of {n} (it fixes batch 1 "
                                     f"inside); calibrated one sample at a time")
                    for i in range(n):
                        try:
                            run({k: v[i:i + 1] for k, v in feeds.items()})
                        except Exception as e2:  # noqa: BLE001
                            raise OnnxPruneError(f"calibration run failed: "
                                                 f"{str(e2).splitlines()[0]}") from None
            cal.samples += n
            if bar is not None:
                bar.advance(task, n)
    finally:
        if bar is not None:
            bar.stop()
    if cal.samples == 0:
        raise OnnxPruneError("calibration data yielded no samples")
    cal.seconds = time.perf_counter() - t0
    return cal
