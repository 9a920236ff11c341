"""Input data for validation: an .npz with one array per input name (axis 0 =
samples) and an optional ``labels`` array; or random inputs when none is given."""
from __future__ import annotations

import os

import numpy as np
import onnx

from onnxprune.core.errors import OnnxPruneError


def np_type(elem_type: int) -> np.dtype | None:
    """The numpy type of an ONNX element type, from onnx's own table (int16,
    uint64, bfloat16... included); None for strings and unknown types."""
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError):
        return None
    return None if dtype.kind == "O" else dtype


def model_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def input_dims(vi: onnx.ValueInfoProto, fixed: dict | None = None) -> list:
    if fixed and vi.name in fixed:
        return list(fixed[vi.name])
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in vi.type.tensor_type.shape.dim]


class Shared(np.ndarray):
    """An input array every sample shares: passed whole to every run, with no
    sample axis, like a scalar input. A recurrent state of fixed shape beside
    inputs with a batch axis is one (silero-vad's ``state`` [2, 1, 128] beside
    its audio [1, 576]; a CRNN's ``h0`` [4, 1, 64] beside images [N, 3, h, w]):
    its leading dim is layers x directions, not samples (``per_run_inputs``)."""


class Along(np.ndarray):
    """An input array whose samples lie along ``axis`` of the model's own
    layout rather than axis 0: a recurrent state ``[layers, batch, hidden]``
    beside inputs ``[batch, ...]``. It stays in the model's layout (what
    onnxruntime is fed); ``take``, ``concat`` and ``count`` read its axis.
    Which inputs are such is decided where data enters (``sample_axes``)."""

    axis: int = 0

    def __array_finalize__(self, obj) -> None:
        self.axis = getattr(obj, "axis", 0)


def along(arr, axis: int) -> np.ndarray:
    """``arr`` with its samples along ``axis`` (a plain array for axis 0)."""
    arr = np.asarray(arr)
    if not axis:
        return arr
    out = arr.view(Along)
    out.axis = axis
    return out


def sample_axis(value) -> int:
    return value.axis if isinstance(value, Along) else 0


def take(value: np.ndarray, index) -> np.ndarray:
    """Samples ``index`` (a slice or an index array) of one per-sample array."""
    axis = sample_axis(value)
    return value[(slice(None),) * axis + (index,)] if axis else value[index]


def concat(parts: list) -> np.ndarray:
    """Per-sample arrays end to end along their sample axis."""
    axis = sample_axis(parts[0])
    return along(np.concatenate(parts, axis=axis), axis)


def count(value: np.ndarray) -> int:
    """Samples in one per-sample array."""
    return value.shape[sample_axis(value)]


def item_shape(value: np.ndarray) -> tuple:
    """The shape of one sample of a per-sample array."""
    axis = sample_axis(value)
    return value.shape[:axis] + value.shape[axis + 1:]


def per_sample(value) -> bool:
    """Whether a feed has a sample axis (not a scalar, not ``Shared``)."""
    return bool(np.ndim(value)) and not isinstance(value, Shared)


def parse_batch_axes(specs) -> dict[str, int]:
    """``--batch-axis NAME:AXIS`` (repeatable) -> {name: axis}."""
    out = {}
    for spec in specs or ():
        name, sep, axis = str(spec).rpartition(":")
        try:
            out[name] = int(axis)
        except ValueError:
            name = ""
        if not sep or not name:
            raise OnnxPruneError(f"--batch-axis {spec}: expected NAME:AXIS, e.g. state:1")
    return out


def sample_axes(model: onnx.ModelProto, arrays: dict | None = None, given: dict | None = None,
                fixed: dict | None = None) -> tuple[dict[str, int], list[str]]:
    """Which axis of each input holds the samples, where it is not axis 0 as
    usual: -> ({input: axis}, notes). ``given`` (``--batch-axis``) decides
    for its inputs (axis 0 included: a state then carries samples on its
    leading dim). Otherwise only an input that would be given whole to every
    run (``per_run_inputs``: a leading dim fixed and not the batch) can hold
    samples elsewhere: on a symbolic axis where ``arrays`` has as many
    entries as the other inputs have samples (one such axis, or the one named
    like the other inputs' batch), or, without data, on the one symbolic axis
    named like that batch. Several candidates and nothing to choose: a
    one-line error naming the input and ``--batch-axis``."""
    infos = {vi.name: vi for vi in model_inputs(model)}
    out: dict[str, int] = {}
    for name, axis in (given or {}).items():
        if name not in infos:
            raise OnnxPruneError(f"--batch-axis {name}:{axis}: the model has no input '{name}' "
                                 f"(inputs: {', '.join(infos)})")
        rank = len(input_dims(infos[name], fixed))
        if not -rank <= axis < rank:
            raise OnnxPruneError(f"--batch-axis {name}:{axis}: input '{name}' has {rank} axes")
        out[name] = axis % rank
    for name, arr in (arrays or {}).items():  # data that already says where its samples are keeps it
        if name in infos and name not in out and isinstance(arr, Along):
            out[name] = arr.axis
    whole = per_run_inputs(model, fixed) - set(out)
    batch_names = {input_dims(vi, fixed)[0] for n, vi in infos.items() if n not in whole and n not in out
                   and input_dims(vi, fixed) and isinstance(input_dims(vi, fixed)[0], str)}
    leads = {np.shape(a)[0] for n, a in (arrays or {}).items()
             if n in infos and n not in whole and n not in out and np.ndim(a)}
    samples = leads.pop() if len(leads) == 1 else None
    notes = []
    for name in sorted(whole):
        if isinstance((arrays or {}).get(name), Shared):
            continue  # already given whole to every run
        dims = input_dims(infos[name], fixed)
        symbolic = [k for k, d in enumerate(dims) if k and not (isinstance(d, int) and d > 0)]
        named = [k for k in symbolic if dims[k] in batch_names]
        if arrays is None or name not in arrays:
            if len(named) == 1:
                out[name] = named[0]
            continue
        shape = np.shape(arrays[name])
        hits = [k for k in symbolic if samples is not None and k < len(shape) and shape[k] == samples]
        if len(hits) > 1 and len(set(hits) & set(named)) == 1:
            hits = [k for k in hits if k in named]
        if len(hits) > 1:
            raise OnnxPruneError(f"input '{name}': its data {list(shape)} has {samples} entries on axes "
                                 f"{', '.join(map(str, hits))}, as many as the other inputs have samples; "
                                 f"say which holds the samples with --batch-axis {name}:AXIS")
        if hits:
            out[name] = hits[0]
            notes.append(f"input '{name}' {_show(dims)}: its samples are taken along axis {hits[0]} (where "
                         f"its data has {samples} entries, as the other inputs have samples; "
                         f"--batch-axis {name}:AXIS says otherwise)")
    return out, notes


def per_run_inputs(model: onnx.ModelProto, fixed: dict | None = None) -> set[str]:
    """Inputs whose leading dim is fixed and is not the batch: > 1 where
    another input's leading dim is symbolic, or, when every leading dim is
    fixed, any other than the smallest (the batch). Such an input is given
    whole to every run (``Shared``); the others carry the samples."""
    leads = {}
    for vi in model_inputs(model):
        dims = input_dims(vi, fixed)
        if dims:
            leads[vi.name] = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
    known = {n: d for n, d in leads.items() if d is not None}
    if len(known) == len(leads):
        batch = min(known.values(), default=None)
        return {n for n, d in known.items() if d != batch}
    return {n for n, d in known.items() if d > 1}


def _kind(arr: np.ndarray) -> str:
    """What an array holds, in words (``<U5`` means nothing to most users)."""
    if arr.dtype.kind in "US":
        kind = "strings" if arr.dtype.kind == "U" else "byte strings"
        return kind + (f" (such as {arr.reshape(-1)[0].item()!r})" if arr.size else "")
    return "Python objects" if arr.dtype.kind == "O" else f"{arr.dtype} values"


def check_array(arr, vi: onnx.ValueInfoProto, where: str, fixed: dict | None = None,
                per_run: bool = False, axis: int = 0) -> np.ndarray:
    """One input array as data for ``vi``: numbers (cast to the input's dtype),
    finite, the input's rank with a sample axis (``axis``, 0 unless
    ``sample_axes`` says otherwise: ``Along``), and its static dims (a
    ``per_run`` input: exactly its shape, no sample axis, ``Shared``).
    Anything else is a clear error naming ``where`` and the input."""
    arr = np.asarray(arr)
    name = vi.name
    if arr.dtype.kind not in "biuf":
        raise OnnxPruneError(f"{where}: array '{name}' holds {_kind(arr)}, not real numbers")
    dims = input_dims(vi, fixed)
    want = np_type(vi.type.tensor_type.elem_type)
    if want is not None and arr.dtype != want:
        arr = arr.astype(want)
    if per_run:
        if arr.ndim != len(dims) or any(isinstance(d, int) and d > 0 and h != d for h, d in zip(arr.shape, dims)):
            raise OnnxPruneError(f"{where}: array '{name}' has shape {list(arr.shape)}; the model expects "
                                 f"{_show(dims)}, one for every run (its leading dim is not the samples; "
                                 f"--batch-axis {name}:AXIS names the axis that is)")
        _finite(arr, where, name)
        return arr.view(Shared)
    if not dims:  # a scalar input (a flag, a step): one value shared by every sample
        if arr.ndim:
            raise OnnxPruneError(f"{where}: array '{name}' has shape {list(arr.shape)}; the model "
                                 f"expects a scalar (one value for every sample)")
        return arr
    which = f"axis {axis} = samples"
    if arr.ndim != len(dims) or arr.ndim == 0:
        what = "a scalar" if arr.ndim == 0 else f"shape {list(arr.shape)}"
        raise OnnxPruneError(f"{where}: array '{name}' is {what}; the model expects {_show(dims)} ({which})")
    if arr.shape[axis] == 0:
        raise OnnxPruneError(f"{where}: array '{name}' has no samples")
    for k, (have, need) in enumerate(zip(arr.shape, dims)):
        if k != axis and isinstance(need, int) and need > 0 and have != need:
            raise OnnxPruneError(f"{where}: array '{name}' has shape {list(arr.shape)}; the model "
                                 f"expects {_show(dims)} ({which})")
    _finite(arr, where, name)
    return along(arr, axis)


def _finite(arr: np.ndarray, where: str, name: str) -> None:
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = "NaN" if np.isnan(arr).any() else "inf"
        raise OnnxPruneError(f"{where}: array '{name}' holds {bad} values")


def sample_count(feeds: dict) -> int:
    """Samples in a feed dict: the length of its per-sample arrays (a scalar
    input's value is shared by every sample and has no sample axis)."""
    return next((count(v) for v in feeds.values() if per_sample(v)), 1)


def rows(feeds: dict, index) -> dict:
    """Samples ``index`` (a slice or index array) of every per-sample array;
    scalar inputs pass whole."""
    return {k: take(v, index) if per_sample(v) else v for k, v in feeds.items()}


def join(parts: list) -> dict:
    """Feed dicts end to end along the sample axis (scalars from the first)."""
    first = parts[0]
    return {k: concat([p[k] for p in parts]) if per_sample(v) else v for k, v in first.items()}


def _show(dims) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in dims) + "]"


_NPZ, _NPY = b"PK", b"\x93NUMPY"


def _head(path: str, what: str) -> bytes:
    """The first bytes of a data file, after the checks every data file gets."""
    if not os.path.exists(path):
        raise OnnxPruneError(f"{path}: no such file")
    if os.path.isdir(path):
        raise OnnxPruneError(f"{path}: is a folder, not {what}")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise OnnxPruneError(f"{path}: cannot read it ({e.strerror or type(e).__name__})") from None
    if not head:
        raise OnnxPruneError(f"{path}: is an empty file, not {what}")
    if head[:1] == b"\x80":  # a pickle: never loaded, it could run code
        raise OnnxPruneError(f"{path}: holds pickled Python objects, which onnxprune never loads "
                             f"(unpickling can run code); save plain arrays with numpy.savez")
    return head


def read_npz(path) -> dict[str, np.ndarray]:
    """Every array of an .npz archive. Never unpickles (allow_pickle=False):
    object arrays and pickles are refused, like anything that is not an .npz."""
    path = os.fspath(path)
    head = _head(path, "an .npz archive")
    if head.startswith(_NPY):
        raise OnnxPruneError(f"{path}: is a single .npy array, not an .npz archive of arrays named "
                             f"after the model's inputs (numpy.savez(path, input_name=array))")
    if not head.startswith(_NPZ):
        raise OnnxPruneError(f"{path}: not an .npz archive")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as e:  # noqa: BLE001 - ValueError, OSError, EOFError, zipfile.BadZipFile...
        raise OnnxPruneError(f"{path}: not a readable .npz file "
                             f"({_first_line(e)})") from None


def read_npy(path) -> np.ndarray:
    """The array of an .npy file (never unpickled)."""
    path = os.fspath(path)
    head = _head(path, "an .npy array")
    if not head.startswith(_NPY):
        raise OnnxPruneError(f"{path}: not an .npy array" +
                             (" (an .npz archive: name it .npz)" if head.startswith(_NPZ) else ""))
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - ValueError, OSError, EOFError
        raise OnnxPruneError(f"{path}: not a readable .npy file ({_first_line(e)})") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def feeds_and_labels(data, model: onnx.ModelProto, batch_axes: dict | None = None, notes: list | None = None):
    """Validation data -> (feeds {input: array[N, ...]}, labels or None):
    an .npz path, or a dict of arrays (one per input, samples on axis 0 or
    where ``sample_axes`` finds them, optional 'labels'). ``batch_axes``:
    ``--batch-axis``; ``notes`` receives what was decided about sample axes."""
    if isinstance(data, (str, os.PathLike)):
        return load_npz(data, model, batch_axes, notes)
    if not isinstance(data, dict):
        raise OnnxPruneError(f"validation data must be an .npz path or a dict of arrays (one per input, "
                             f"axis 0 = samples), not {type(data).__name__}")
    names = [i.name for i in model_inputs(model)]
    missing = [n for n in names if n not in data]
    if missing:
        raise OnnxPruneError(f"data has no array for input(s) {', '.join(missing)}")
    labels = data.get("labels")
    axes, said = sample_axes(model, {k: data[k] for k in names}, batch_axes)
    if notes is not None:
        notes.extend(said)
    whole = per_run_inputs(model) - set(axes)
    feeds = {k: np.asarray(data[k]).view(Shared) if k in whole else along(data[k], axes.get(k, 0)) for k in names}
    return feeds, None if labels is None else np.asarray(labels)


def load_npz(path, model: onnx.ModelProto, batch_axes: dict | None = None, notes: list | None = None):
    """-> (feeds {name: array[N, ...]}, labels or None)."""
    path = os.fspath(path)
    arrays = read_npz(path)
    feeds = {}
    infos = model_inputs(model)
    for vi in infos:
        if vi.name not in arrays:
            raise OnnxPruneError(f"{path}: has no array named '{vi.name}' "
                                 f"(arrays: {', '.join(sorted(arrays))})")
    axes, said = sample_axes(model, {vi.name: arrays[vi.name] for vi in infos}, batch_axes)
    if notes is not None:
        notes.extend(said)
    shared = per_run_inputs(model) - set(axes)
    for vi in infos:
        feeds[vi.name] = check_array(arrays[vi.name], vi, path, per_run=vi.name in shared,
                                     axis=axes.get(vi.name, 0))
    counts = {count(a) for a in feeds.values() if per_sample(a)}
    if len(counts) > 1:
        raise OnnxPruneError(f"{path}: inputs have different sample counts {sorted(counts)}")
    labels = arrays.get("labels")
    if labels is not None and counts:
        n = counts.pop()
        whole = labels.dtype.kind in "iu" or (
            labels.dtype.kind == "f" and bool(np.isfinite(labels).all() and (labels % 1 == 0).all()))
        if labels.ndim != 1 or not whole:
            raise OnnxPruneError(f"{path}: 'labels' must be one integer class index per sample "
                                 f"(shape [{n}]), got {labels.dtype} of shape {list(labels.shape)}")
        if len(labels) != n:
            raise OnnxPruneError(f"{path}: 'labels' has {len(labels)} entries for {n} samples")
    return feeds, labels


MAX_RANDOM_BYTES = 2 << 30  # refused before allocating above this


def _random_values(vi: onnx.ValueInfoProto, shape: list, rng) -> np.ndarray:
    want = np_type(vi.type.tensor_type.elem_type)
    if want is None:
        kind = onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type).lower() \
            if vi.type.tensor_type.elem_type in onnx.TensorProto.DataType.values() else "an unknown type"
        raise OnnxPruneError(f"input '{vi.name}' holds {kind} values, for which random inputs cannot be "
                             f"made; give --data (or --calib)")
    need = int(np.prod(shape, dtype=np.float64)) * want.itemsize
    if need > MAX_RANDOM_BYTES:
        raise OnnxPruneError(f"random inputs for '{vi.name}' of shape {shape} would take "
                             f"{need / 2**30:.1f} GiB; give --data or a smaller --input-shape")
    if want == np.bool_:
        return rng.random(shape) > 0.5
    if want.kind in "iu":
        return rng.integers(0, 2, size=shape).astype(want)
    return rng.standard_normal(shape).astype(want)  # floats of every width, bfloat16 and float8 included


def _random_along(vi: onnx.ValueInfoProto, samples: int, axis: int, fixed: dict | None, rng) -> np.ndarray:
    """Random values for an input whose samples lie along ``axis``."""
    dims = input_dims(vi, fixed)
    unknown = [str(d) for k, d in enumerate(dims) if k != axis and not (isinstance(d, int) and d > 0)]
    if unknown:
        raise OnnxPruneError(f"random inputs need every dim but the samples: input '{vi.name}' has "
                             f"{', '.join(unknown)}; give --data (or --calib) or --input-shape "
                             f"{vi.name}:D1,D2,...")
    shape = [samples if k == axis else d for k, d in enumerate(dims)]
    return along(_random_values(vi, shape, rng), axis)


def random_feeds(model: onnx.ModelProto, samples: int, fixed: dict | None = None, seed: int = 0,
                 guess: bool = False, batch_axes: dict | None = None):
    """Random inputs with a sample axis (leading, or where ``sample_axes``
    puts it). Every other dim must be known: static in the model or given in
    ``fixed`` (``--input-shape``, or the dims of the user's data). An unknown
    one is an error naming the input, unless ``guess`` (tests only) sets it
    to 1."""
    rng = np.random.default_rng(seed)
    feeds = {}
    axes, _ = sample_axes(model, None, batch_axes, fixed)
    shared = per_run_inputs(model, fixed) - set(axes)
    for vi in model_inputs(model):
        if axes.get(vi.name):
            feeds[vi.name] = _random_along(vi, samples, axes[vi.name], fixed, rng)
            continue
        dims = input_dims(vi, fixed)
        own = input_dims(vi)
        dims = [d if d is not None else (own[k] if k < len(own) else None) for k, d in enumerate(dims)]
        if not dims:
            raise OnnxPruneError(f"input '{vi.name}' is a scalar; give --data")
        unknown = [str(d) for d in dims[1:] if not (isinstance(d, int) and d > 0)]
        if unknown and not guess:
            raise OnnxPruneError(f"random inputs need every dim but the batch: input '{vi.name}' has "
                                 f"{', '.join(unknown)}; give --data (or --calib) or --input-shape "
                                 f"{vi.name}:D1,D2,...")
        shape = [samples] + [d if isinstance(d, int) and d > 0 else 1 for d in dims[1:]]
        if vi.name in shared:  # one for every run (a recurrent state): its own shape, no sample axis
            shape[0] = dims[0]
        elif isinstance(dims[0], int) and dims[0] > 0 and not (fixed and vi.name in fixed and fixed[vi.name][0]):
            shape[0] = samples * dims[0]
        feeds[vi.name] = _random_values(vi, shape, rng)
        if vi.name in shared:
            feeds[vi.name] = feeds[vi.name].view(Shared)
    return feeds
