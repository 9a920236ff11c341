"""Calibration data as people have it, read as batches of ``{input: array}``.

Sources (``load_data``): an ``.npz`` (one array per input, samples on axis 0
or where ``core.data.sample_axes`` finds them), an ``.npy`` (single-input
models), a folder of ``.npz``/``.npy`` samples, ``module.py:function``
returning an iterable of ``{input: array}`` dicts, any such iterable, or an
object with onnxruntime's ``CalibrationDataReader`` interface
(``get_next()``). No data: random inputs, with a loud warning. ``batches``
re-chunks any of them; ``hold_out`` keeps the last quarter for validation.
"""
from __future__ import annotations

import contextlib
import glob
import importlib.util
import io
import os
import sys
import warnings

import numpy as np
import onnx

from onnxprune.core.data import (
    check_array,
    concat,
    item_shape,
    join,
    load_npz,
    model_inputs,
    per_run_inputs,
    per_sample,
    random_feeds,
    read_npy,
    read_npz,
    rows,
    sample_axes,
    sample_count,
    take,
)
from onnxprune.core.errors import OnnxPruneError

RANDOM_WARNING = ("no calibration data: using random inputs. Data-driven criteria "
                  "(mean_abs, apoz, act_l2, relief, flap) and compensation are then meaningless; "
                  "pass --calib with real inputs")


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


def rereadable(source) -> bool:
    """A file, folder, dict or list: reading it again has no side effect
    (generators, readers and user modules would be consumed)."""
    if isinstance(source, (str, os.PathLike)):
        return ".py:" not in os.fspath(source)
    return isinstance(source, (dict, list, tuple))


def first_sample(source, model: onnx.ModelProto, batch_axes: dict | None = None) -> dict | None:
    """One sample (batch of 1) of a re-readable source, for observing shapes."""
    if not rereadable(source):
        return None
    data, _ = load_data(source, model)
    names = [i.name for i in model_inputs(model)]
    for batch in batches(data, names, model, 1, 1, batch_axes):
        return batch
    return None


def hold_out(source, model: onnx.ModelProto, fraction: float = 0.25, cap: int = 256,
             batch_axes: dict | None = None):
    """Split a re-readable calibration source into calibration and validation:
    -> (calibration sample limit, held-out feeds {input: array}) or None when
    the source cannot be read twice or has fewer than two samples. The
    held-out samples are the last ones, and calibration stops before them."""
    if not rereadable(source):
        return None
    names = [i.name for i in model_inputs(model)]
    total = sum(sample_count(c) for c in batches(load_data(source, model)[0], names, model, 64, None,
                                                  batch_axes))
    if total < 2:
        return None
    k = max(1, min(int(total * fraction), cap))
    # A second pass keeps only the held-out tail: memory stays bounded by it.
    seen, kept = 0, []
    for chunk in batches(load_data(source, model)[0], names, model, 64, None, batch_axes):
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


def batches(samples, names: list[str], model: onnx.ModelProto, batch: int, limit: int | None,
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


def known_count(source, model: onnx.ModelProto) -> int | None:
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


