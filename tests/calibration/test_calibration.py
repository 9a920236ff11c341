"""Calibration: every data source gives the same streaming statistics,
the statistics match numpy on all activations at once, bad input is a clear
OnnxPruneError, and memory does not grow with the number of samples.

Model: x -> Conv c1 (3->6) -> Relu 'relu' -> Conv c2 (6->4); statistics are
requested on the Relu output's channel axis, the input of the linear consumer c2.
"""
from __future__ import annotations

import copy
import os
import tracemalloc

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxprune
from onnxprune.calibration.run import calibrate
from onnxprune.calibration.sources import load_data
from onnxprune.calibration.statistics import Calibration, ChannelStats
from onnxprune.core.errors import OnnxPruneError
from onnxprune.select.importance import calibration_requests
from tests.helpers.graphs import Graph
from tests.helpers.oracle import run

N = 10
REQ = {("relu", 1): True}


def conv_relu_conv(batch="N", hw: int = 8, c: int = 6) -> onnx.ModelProto:
    g = Graph(seed=3)
    a = g.conv("x", 3, c, name="c1")
    r = g.add("Relu", [a], name="relu")
    y = g.conv(r, c, 4, name="c2")
    return g.build({"x": [batch, 3, hw, hw]}, [y])


def two_input_model() -> onnx.ModelProto:
    g = Graph(seed=4)
    s = g.add("Add", ["x", "z"], name="sum")
    a = g.conv(s, 3, 6, name="c1")
    r = g.add("Relu", [a], name="relu")
    y = g.conv(r, 6, 4, name="c2")
    return g.build({"x": ["N", 3, 8, 8], "z": ["N", 3, 8, 8]}, [y])


def samples(n: int = N, seed: int = 0, hw: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, hw, hw)).astype(np.float32)


def activations(model: onnx.ModelProto, x: np.ndarray, tensor: str = "relu") -> np.ndarray:
    """The tensor for all samples at once, exposed as an extra graph output."""
    m = copy.deepcopy(model)
    m.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    return run(m, {"x": x})[-1]


def rows_of(act: np.ndarray, axis: int = 1) -> np.ndarray:
    return np.moveaxis(act, axis, -1).reshape(-1, act.shape[axis]).astype(np.float64)


def assert_stats_match(st: ChannelStats, act: np.ndarray, axis: int = 1) -> None:
    rows = rows_of(act, axis)
    tol = dict(rtol=1e-6, atol=1e-9)
    assert st.count == rows.shape[0]
    np.testing.assert_allclose(st.mean, rows.mean(0), **tol)
    np.testing.assert_allclose(st.mean_abs, np.abs(rows).mean(0), **tol)
    np.testing.assert_allclose(st.var, rows.var(0), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(st.apoz, (rows == 0).mean(0), **tol)
    np.testing.assert_allclose(st.rms, np.sqrt((rows ** 2).mean(0)), **tol)
    assert st.xtx is not None
    np.testing.assert_allclose(st.xtx, rows.T @ rows, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(st.covariance(), np.cov(rows, rowvar=False, bias=True),
                               rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def model():
    return conv_relu_conv()


@pytest.fixture(scope="module")
def x():
    return samples()


@pytest.fixture(scope="module")
def reference(model, x):
    return activations(model, x)


# ------------------------------------------------------------------ data sources

def _write_folder(path, x, kind: str) -> str:
    os.makedirs(path)
    if kind == "npz_no_axis":
        for i, s in enumerate(x):
            np.savez(os.path.join(path, f"s{i:03d}.npz"), x=s)
    elif kind == "npy_no_axis":
        for i, s in enumerate(x):
            np.save(os.path.join(path, f"s{i:03d}.npy"), s)
    elif kind == "npy_with_axis":
        for i, s in enumerate(x):
            np.save(os.path.join(path, f"s{i:03d}.npy"), s[None])
    elif kind == "npz_chunks":  # files of several samples each (with the sample axis)
        for i in range(0, len(x), 3):
            np.savez(os.path.join(path, f"s{i:03d}.npz"), x=x[i:i + 3])
    return os.fspath(path)


class Reader:
    """onnxruntime's CalibrationDataReader interface: get_next() until None."""

    def __init__(self, x):
        self.items = iter([{"x": s[None]} for s in x])

    def get_next(self):
        return next(self.items, None)


MODULE = """
import os
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

def samples():
    x = np.load(os.path.join(HERE, "data.npz"))["x"]
    for s in x:
        yield {"x": s}  # one sample, no sample axis

def as_list():
    x = np.load(os.path.join(HERE, "data.npz"))["x"]
    return [{"x": x[i:i + 2]} for i in range(0, len(x), 2)]
"""


def make_source(kind: str, tmp_path, x):
    if kind == "npz":
        path = tmp_path / "calib.npz"
        np.savez(path, x=x)
        return os.fspath(path)
    if kind == "npz_pathlike":
        path = tmp_path / "calib.npz"
        np.savez(path, x=x)
        return path
    if kind == "npy":
        path = tmp_path / "calib.npy"
        np.save(path, x)
        return os.fspath(path)
    if kind.startswith("folder_"):
        return _write_folder(tmp_path / "calib", x, kind[len("folder_"):])
    if kind in ("module_generator", "module_list"):
        np.savez(tmp_path / "data.npz", x=x)
        (tmp_path / "calibmod.py").write_text(MODULE)
        fn = "samples" if kind == "module_generator" else "as_list"
        return f"{tmp_path / 'calibmod.py'}:{fn}"
    if kind == "list_no_axis":
        return [{"x": s} for s in x]
    if kind == "list_batches":
        return [{"x": x[i:i + 4]} for i in range(0, len(x), 4)]
    if kind == "generator":
        return ({"x": x[i:i + 1]} for i in range(len(x)))
    if kind == "dict":
        return {"x": x}
    if kind == "reader":
        return Reader(x)
    raise AssertionError(kind)


SOURCES = ["npz", "npz_pathlike", "npy", "folder_npz_no_axis", "folder_npy_no_axis",
           "folder_npy_with_axis", "folder_npz_chunks", "module_generator", "module_list",
           "list_no_axis", "list_batches", "generator", "dict", "reader"]


@pytest.mark.parametrize("kind", SOURCES)
def test_every_data_source_gives_the_statistics_of_all_samples(kind, tmp_path, model, x, reference):
    cal = calibrate(model, make_source(kind, tmp_path, x), REQ, batch=4)
    assert isinstance(cal, Calibration)
    assert cal.samples == N and not cal.random
    assert_stats_match(cal.get("relu", 1), reference)


@pytest.mark.parametrize("kind", SOURCES)
def test_load_data_yields_feed_dicts_and_is_not_random(kind, tmp_path, model, x):
    data, is_random = load_data(make_source(kind, tmp_path, x), model)
    assert is_random is False
    items = list(data)
    assert items and all(isinstance(i, dict) and "x" in i for i in items)
    total = sum(1 if np.asarray(i["x"]).ndim == 3 else len(i["x"]) for i in items)
    assert total == N


def test_all_sources_agree_with_each_other(tmp_path, model, x):
    results = []
    for k, kind in enumerate(SOURCES):
        folder = tmp_path / f"src{k}"
        folder.mkdir()
        results.append(calibrate(model, make_source(kind, folder, x), REQ, batch=3).get("relu", 1))
    first = results[0]
    for st in results[1:]:
        assert st.count == first.count
        for name in ("sum", "sumsq", "abssum", "zeros", "xtx"):
            np.testing.assert_allclose(getattr(st, name), getattr(first, name), rtol=1e-7, atol=1e-7)


# ------------------------------------------------------------------ streaming statistics

@pytest.mark.parametrize("batch", [1, 3, 16])
def test_streaming_stats_match_numpy_on_all_activations(batch, model, x, reference):
    cal = calibrate(model, {"x": x}, REQ, batch=batch)
    assert cal.samples == N
    assert set(cal.stats) == {("relu", 1)}
    st = cal.get("relu", 1)
    assert st.size == 6 and st.gram
    assert st.count == N * 8 * 8
    assert_stats_match(st, reference)
    # The Relu output has exact zeros: apoz is a real fraction, not 0 or 1 everywhere.
    assert 0 < st.apoz.mean() < 1


def test_stats_do_not_depend_on_batch_size(model, x):
    a = calibrate(model, {"x": x}, REQ, batch=1).get("relu", 1)
    b = calibrate(model, {"x": x}, REQ, batch=7).get("relu", 1)
    for name in ("sum", "sumsq", "abssum", "zeros", "xtx"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-6, atol=1e-6)


def test_gram_is_only_kept_when_requested(model, x):
    st = calibrate(model, {"x": x}, {("relu", 1): False}).get("relu", 1)
    assert st.xtx is None and not st.gram
    np.testing.assert_allclose(st.mean, rows_of(activations(model, x)).mean(0), rtol=1e-6)


def test_stats_on_a_non_channel_axis(model, x, reference):
    cal = calibrate(model, {"x": x}, {("relu", 3): True})
    assert_stats_match(cal.get("relu", 3), reference, axis=3)


@pytest.mark.parametrize("limit,batch", [(7, 3), (1, 16), (4, 4), (9, 2)])
def test_calib_samples_limits_the_sample_count(limit, batch, model, x):
    cal = calibrate(model, {"x": x}, REQ, samples=limit, batch=batch)
    assert cal.samples == limit
    assert_stats_match(cal.get("relu", 1), activations(model, x[:limit]))


def test_calib_samples_limits_a_stream_of_single_samples(model, x):
    cal = calibrate(model, ({"x": s} for s in x), REQ, samples=5, batch=2)
    assert cal.samples == 5
    assert_stats_match(cal.get("relu", 1), activations(model, x[:5]))


def test_calib_samples_above_the_data_uses_all_of_it(model, x, reference):
    cal = calibrate(model, {"x": x}, REQ, samples=1000)
    assert cal.samples == N
    assert_stats_match(cal.get("relu", 1), reference)


@pytest.mark.parametrize("kind", ["npz", "folder_npz_no_axis", "list_no_axis"])
def test_model_with_fixed_batch_of_one_is_fed_one_sample_per_run(kind, tmp_path, x):
    model = conv_relu_conv(batch=1)
    cal = calibrate(model, make_source(kind, tmp_path, x), REQ, batch=16)
    assert cal.samples == N
    per_sample = np.concatenate([activations(model, s[None]) for s in x])
    assert_stats_match(cal.get("relu", 1), per_sample)


def test_requests_from_groups_cover_the_consumer_input(model, x):
    groups = onnxprune.analyze(model)
    requests = calibration_requests(groups, gram=True)
    assert requests == {("relu", 1): True}
    assert calibration_requests(groups) == {("relu", 1): False}


def test_float64_data_in_npz_is_cast_like_validation_data(tmp_path, model, x, reference):
    """--data casts an .npz to the input dtype (data.load_npz); --calib should too."""
    path = tmp_path / "calib.npz"
    np.savez(path, x=x.astype(np.float64))
    cal = calibrate(model, os.fspath(path), REQ)
    assert_stats_match(cal.get("relu", 1), reference)


# ------------------------------------------------------------------ no data

def test_no_data_warns_and_marks_calibration_random(model):
    with pytest.warns(UserWarning, match="random"):
        cal = calibrate(model, None, REQ)
    assert cal.random is True
    assert cal.samples > 0
    assert cal.get("relu", 1).count > 0


def test_load_data_without_source_warns_and_says_random(model):
    with pytest.warns(UserWarning, match="random inputs"):
        data, is_random = load_data(None, model)
    assert is_random is True
    assert all(isinstance(d, dict) and "x" in d for d in data)


# ------------------------------------------------------------------ bad input

def _error(model, source, **kw) -> str:
    with pytest.raises(OnnxPruneError) as info:
        calibrate(model, source, REQ, **kw)
    return str(info.value)


def test_missing_file_is_a_clear_error(tmp_path, model):
    msg = _error(model, os.fspath(tmp_path / "missing.npz"))
    assert "missing.npz" in msg


def test_missing_folder_is_a_clear_error(tmp_path, model):
    msg = _error(model, os.fspath(tmp_path / "nope") + os.sep)
    assert "nope" in msg


def test_empty_folder_is_a_clear_error(tmp_path, model):
    (tmp_path / "empty").mkdir()
    msg = _error(model, os.fspath(tmp_path / "empty"))
    assert "no .npz or .npy" in msg


def test_npz_without_the_input_name_is_a_clear_error(tmp_path, model, x):
    path = tmp_path / "calib.npz"
    np.savez(path, input=x, other=x)
    msg = _error(model, os.fspath(path))
    assert "calib.npz" in msg and "no array named x" in msg
    assert "input" in msg and "other" in msg  # lists the arrays it does have


def test_npy_for_a_two_input_model_is_a_clear_error(tmp_path, x):
    path = tmp_path / "calib.npy"
    np.save(path, x)
    msg = _error(two_input_model(), os.fspath(path))
    assert "single-input" in msg and ".npz" in msg


def test_two_input_model_calibrates_from_npz(tmp_path, x):
    model = two_input_model()
    path = tmp_path / "calib.npz"
    np.savez(path, x=x, z=x * 0.5)
    cal = calibrate(model, os.fspath(path), REQ, batch=3)
    assert cal.samples == N


def test_dict_missing_an_input_is_a_clear_error(x):
    msg = _error(two_input_model(), [{"x": x}])
    assert "z" in msg


def test_missing_function_in_module_is_a_clear_error(tmp_path, model):
    (tmp_path / "calibmod.py").write_text(MODULE)
    msg = _error(model, f"{tmp_path / 'calibmod.py'}:missing_function")
    assert "missing_function" in msg


def test_missing_module_file_is_a_clear_error(tmp_path, model):
    msg = _error(model, f"{tmp_path / 'nomod.py'}:samples")
    assert "nomod.py" in msg


def test_module_that_raises_on_import_is_a_clear_error(tmp_path, model):
    (tmp_path / "broken.py").write_text("raise RuntimeError('cannot open the dataset')\n")
    msg = _error(model, f"{tmp_path / 'broken.py'}:samples")
    assert "broken.py" in msg and "RuntimeError" in msg and "cannot open the dataset" in msg


def test_module_with_syntax_error_is_a_clear_error(tmp_path, model):
    (tmp_path / "typo.py").write_text("def samples(:\n    pass\n")
    msg = _error(model, f"{tmp_path / 'typo.py'}:samples")
    assert "typo.py" in msg and "SyntaxError" in msg


@pytest.mark.parametrize("items", [[1, 2, 3], ["x"], [np.zeros((1, 3, 8, 8), np.float32)]],
                         ids=["ints", "strings", "arrays"])
def test_data_yielding_non_dicts_is_a_clear_error(items, model):
    msg = _error(model, items)
    assert "dict" in msg


def test_unsupported_source_type_is_a_clear_error(model):
    msg = _error(model, 42)
    assert "int" in msg


def test_empty_data_is_a_clear_error(model):
    assert "no samples" in _error(model, [])


def test_wrong_input_shape_is_a_clear_error(model):
    msg = _error(model, {"x": np.zeros((2, 3, 9, 9), np.float32)})
    assert "array 'x' has shape [2, 3, 9, 9]" in msg and "expects [N, 3, 8, 8]" in msg


USER_FUNCTIONS = """
def returns_none():
    return None

def raises_when_called():
    raise ValueError("no dataset configured")

def fails_midway():
    import numpy as np
    yield {"x": np.zeros((3, 8, 8), np.float32)}
    raise KeyError("shard 2 missing")
"""


def test_function_returning_a_non_iterable_is_a_clear_error(tmp_path, model):
    (tmp_path / "userfns.py").write_text(USER_FUNCTIONS)
    msg = _error(model, f"{tmp_path / 'userfns.py'}:returns_none")
    assert "returns_none" in msg


def test_function_that_raises_when_called_is_a_clear_error(tmp_path, model):
    (tmp_path / "userfns.py").write_text(USER_FUNCTIONS)
    msg = _error(model, f"{tmp_path / 'userfns.py'}:raises_when_called")
    assert "raises_when_called" in msg and "no dataset configured" in msg


def test_data_that_fails_midway_is_a_clear_error(tmp_path, model):
    (tmp_path / "userfns.py").write_text(USER_FUNCTIONS)
    msg = _error(model, f"{tmp_path / 'userfns.py'}:fails_midway")
    assert "shard 2 missing" in msg


# ------------------------------------------------------------------ memory

def _peak_bytes(model, n: int) -> int:
    def stream():
        rng = np.random.default_rng(n)
        for _ in range(n):  # generated on the fly: the source itself holds one sample
            yield {"x": rng.standard_normal((3, 16, 16)).astype(np.float32)}

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        cal = calibrate(model, stream(), {("relu", 1): True}, batch=16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert cal.samples == n
    return peak


def test_peak_memory_does_not_grow_with_the_number_of_samples():
    model = conv_relu_conv(hw=16, c=8)
    _peak_bytes(model, 16)  # warm up onnxruntime / imports outside the measurement
    small, large = _peak_bytes(model, 50), _peak_bytes(model, 500)
    # 500 samples of Relu activations alone are 500*8*16*16*4 B = 4 MB (8 MB as float64).
    all_activations = 500 * 8 * 16 * 16 * 8
    assert large < 2 * small, (small, large)
    assert large < all_activations / 2, (small, large)


def test_stats_count_exact_zeros_only_and_match_numpy_on_signed_values():
    from onnxprune.calibration.statistics import ChannelStats

    x = np.array([[[0.0, -1.0], [2.0, 0.0]], [[-3.0, 0.0], [0.0, 4.0]]], np.float32)  # (2, 2, 2)
    st = ChannelStats(2, gram=True)
    st.update(x, axis=1)
    rows = np.moveaxis(x, 1, -1).reshape(-1, 2).astype(np.float64)
    assert st.count == 4
    np.testing.assert_array_equal(st.zeros, (rows == 0).sum(axis=0))
    np.testing.assert_allclose(st.apoz, (rows == 0).mean(axis=0))
    np.testing.assert_allclose(st.mean, rows.mean(axis=0))
    np.testing.assert_allclose(st.mean_abs, np.abs(rows).mean(axis=0))
    np.testing.assert_allclose(st.var, rows.var(axis=0))
    np.testing.assert_allclose(st.rms, np.sqrt((rows ** 2).mean(axis=0)))
    np.testing.assert_allclose(st.covariance(), np.cov(rows.T, bias=True))


def test_a_big_batch_enters_the_gram_matrix_as_a_strided_subset_with_its_own_mean():
    """Past GRAM_ROWS rows per batch the Gram matrix takes every k-th position:
    its covariance stays close to the full one (at a fraction of the cost),
    and small batches are still exact."""
    from onnxprune.calibration.statistics import GRAM_ROWS, ChannelStats

    rng = np.random.default_rng(0)
    mix = rng.standard_normal((6, 6))
    x = np.einsum("nchw,cd->ndhw", rng.standard_normal((4, 6, 96, 96)), mix).astype(np.float32) + 2.0
    st = ChannelStats(6, gram=True)
    st.update(x, 1)
    assert st.gram_count <= GRAM_ROWS + 4 * 96 and st.count == 4 * 96 * 96
    rows = np.moveaxis(x, 1, -1).reshape(-1, 6).astype(np.float64)
    full = np.cov(rows.T, bias=True)
    np.testing.assert_allclose(st.covariance(), full, rtol=0.1, atol=0.1 * np.abs(full).max())
    small = ChannelStats(6, gram=True)
    small.update(x[:1, :, :8, :8], 1)
    sub = np.moveaxis(x[:1, :, :8, :8], 1, -1).reshape(-1, 6).astype(np.float64)
    np.testing.assert_allclose(small.covariance(), np.cov(sub.T, bias=True), rtol=1e-4, atol=1e-5)


def test_gram_matrices_are_granted_narrowest_first_within_the_budget(monkeypatch):
    """A model with wide layers gets Gram matrices only while they fit: the
    widest consumers go without (and fall back to bias compensation)."""
    from onnxprune.select import importance
    from tests.helpers.graphs import Graph

    g = Graph(seed=0)
    a = g.add("Relu", [g.gemm("x", 8, 16, name="A")])
    b = g.add("Relu", [g.gemm(a, 16, 64, name="B")])
    y = g.gemm(b, 64, 2, name="C")
    groups = onnxprune.analyze(g.build({"x": ["N", 8]}, [y]))
    full = importance.calibration_requests(groups, gram=True)
    assert all(full.values()) and len(full) == 2
    monkeypatch.setattr(importance, "GRAM_BUDGET", 8 * 16 * 16 + 100)
    capped = importance.calibration_requests(groups, gram=True)
    assert sorted(capped.values()) == [False, True]
    assert capped[next(d for d in capped if groups.view.static(d[0], d[1]) == 16)] is True


# ------------------------------------------------------------------ speed paths

def _reference_stats(x: np.ndarray, axis: int):
    """float64 statistics of all rows, and the Gram matrix of the strided
    subset ChannelStats documents (every step-th position past GRAM_ROWS)."""
    from onnxprune.calibration.statistics import GRAM_ROWS

    rows = rows_of(x, axis)
    x3 = x.reshape(int(np.prod(x.shape[:axis])), x.shape[axis], -1).astype(np.float64)
    step = -(-rows.shape[0] // GRAM_ROWS)
    sub = x3 if x3.shape[2] == 1 and step == 1 else \
        (x3[::step] if x3.shape[2] == 1 else (x3[:, :, ::step] if x3.shape[2] >= step else x3[::step]))
    g = np.moveaxis(sub, 1, -1).reshape(-1, x.shape[axis])
    return rows, g


LAYOUTS = [((16, 72, 7, 7), 1), ((4, 16, 28, 28), 1), ((2, 8, 40, 40), 1), ((4, 6, 96, 96), 1),
           ((3, 5, 7), 2), ((40, 12), 1), ((9000, 5), 1), ((2, 3, 700), 1), ((1, 3, 8, 8), 3)]


@pytest.mark.parametrize("shape,axis", LAYOUTS, ids=[f"{s}-{a}" for s, a in LAYOUTS])
@pytest.mark.parametrize("kind", ["relu", "signed", "sparse"])
@pytest.mark.parametrize("small_blocks", [False, True], ids=["blocks", "tiny_blocks"])
def test_channel_stats_match_float64_on_every_layout_and_path(shape, axis, kind, small_blocks, monkeypatch):
    """Plane rows, channels-first copies (short rows, whole-batch Gram),
    row blocks of 2-D tensors, strided Gram subsets, column-chunked copies
    (tiny GRAM_CHUNK) and row-at-a-time blocks (tiny BLOCK): all the same
    statistics as float64 numpy, exact zero counts included."""
    from onnxprune.calibration import statistics as calibration

    if small_blocks:
        monkeypatch.setattr(calibration, "BLOCK", 50)
        monkeypatch.setattr(calibration, "GRAM_CHUNK", 64)
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) + 0.5).astype(np.float32)
    if kind == "relu":
        x = np.maximum(x, 0)
    elif kind == "sparse":
        x[rng.random(shape) < 0.6] = 0
    st = ChannelStats(shape[axis], gram=True)
    second = x[::-1].copy()  # a second batch: accumulation
    st.update(x, axis)
    st.update(second, axis)
    (rows, g), (rows2, g2) = _reference_stats(x, axis), _reference_stats(second, axis)
    rows, g = np.concatenate([rows, rows2]), np.concatenate([g, g2])
    assert st.count == rows.shape[0] and st.gram_count == g.shape[0]
    np.testing.assert_array_equal(st.zeros, (rows == 0).sum(0))
    tol = dict(rtol=2e-6, atol=1e-9 * rows.shape[0])
    np.testing.assert_allclose(st.sum, rows.sum(0), rtol=2e-6, atol=1e-6 * np.abs(rows).sum(0).max())
    np.testing.assert_allclose(st.sumsq, (rows ** 2).sum(0), **tol)
    np.testing.assert_allclose(st.abssum, np.abs(rows).sum(0), **tol)
    np.testing.assert_allclose(st.xtx, g.T @ g, rtol=2e-5, atol=1e-5 * np.abs(g).max() ** 2 * len(g) ** 0.5)
    np.testing.assert_allclose(st.gram_sum, g.sum(0), rtol=2e-6, atol=1e-6 * np.abs(g).sum(0).max())


def test_overlapped_and_sequential_calibration_give_identical_statistics(model, x, reference):
    a = calibrate(model, {"x": x}, REQ, batch=3, overlap=True)
    b = calibrate(model, {"x": x}, REQ, batch=3, overlap=False)
    assert not b.overlapped
    for name in ("sum", "sumsq", "abssum", "zeros", "xtx", "gram_sum"):
        np.testing.assert_array_equal(getattr(a.get("relu", 1), name), getattr(b.get("relu", 1), name))
    assert_stats_match(a.get("relu", 1), reference)


def test_calibration_reports_where_its_time_went(model, x):
    for overlap in (True, False):
        cal = calibrate(model, {"x": x}, REQ, batch=4, overlap=overlap)
        assert cal.runs == 3  # 10 samples in batches of 4
        assert cal.run_seconds > 0 and cal.stats_seconds > 0 and cal.wait_seconds > 0
        assert cal.seconds >= cal.setup_seconds + cal.run_seconds + cal.wait_seconds
        assert cal.overlapped == overlap


def test_one_sample_at_a_time_says_what_it_cost(x):
    """A symbolic batch that the graph fixes to 1 inside (a Reshape to a literal 1)."""
    g = Graph(seed=3)
    r = g.add("Relu", [g.conv("x", 3, 6, name="c1")], name="relu")
    flat = g.add("Reshape", [r, g.ints("one", [1, 6, 8, 8])])
    model = g.build({"x": ["N", 3, 8, 8]}, [g.conv(flat, 6, 4, name="c2")])
    cal = calibrate(model, {"x": x}, REQ, batch=16)
    assert_stats_match(cal.get("relu", 1), np.concatenate([activations(model, s[None]) for s in x]))
    assert cal.one_at_a_time and cal.runs == N + 1  # the failed batch, then one run per sample
    note = next(n for n in cal.notes if "one sample at a time" in n)
    assert f"({N} runs, " in note and note.endswith(" s)")


def test_an_error_in_the_statistics_is_raised_not_taken_for_a_batch_failure(model, x, monkeypatch):
    """Statistics run on a worker thread: their errors surface as themselves,
    never as the 'model does not run on batches' fallback."""
    def broken(self, x, axis):
        raise ValueError("statistics broke")

    monkeypatch.setattr(ChannelStats, "update", broken)
    for overlap in (True, False):
        with pytest.raises(ValueError, match="statistics broke"):
            calibrate(model, {"x": x}, REQ, batch=4, overlap=overlap)


def test_blas_thread_limit_is_restored_after_calibration(model, x):
    import threadpoolctl

    before = [i["num_threads"] for i in threadpoolctl.threadpool_info()]
    calibrate(model, {"x": x}, REQ, batch=4)
    assert [i["num_threads"] for i in threadpoolctl.threadpool_info()] == before


def test_a_model_input_is_read_from_the_feeds(model, x):
    cal = calibrate(model, {"x": x}, {("x", 1): True, ("relu", 1): False}, batch=4)
    st = cal.get("x", 1)
    rows = rows_of(x)
    np.testing.assert_allclose(st.mean, rows.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(st.xtx, rows.T @ rows, rtol=1e-5, atol=1e-5)


def test_batches_of_one_array_are_views_not_copies(model, x):
    from onnxprune.calibration.sources import batches as batches

    chunks = list(batches([{"x": x}], ["x"], model, 4, None))
    assert [len(c["x"]) for c in chunks] == [4, 4, 2]
    assert all(np.shares_memory(c["x"], x) for c in chunks)


def test_progress_bar_goes_to_stderr_and_knows_the_total(model, x, capsys):
    from onnxprune.calibration.sources import known_count as known_count

    cal = calibrate(model, {"x": x}, REQ, batch=4, progress=True)
    assert cal.samples == N
    assert capsys.readouterr().out == ""
    assert known_count({"x": x}, model) == N
    assert known_count({"x": x[0]}, model) == 1  # one sample without its axis
    assert known_count([{"x": x[:3]}, {"x": x[3:]}], model) == N
    assert known_count("calib.npz", model) is None


def test_fetcher_writes_into_handed_back_arrays_and_falls_back_when_it_cannot(model, x):
    """Runs with the input shapes of a handed-back run write into its arrays
    (no allocation per run); other shapes run plainly; the results are the
    model's either way."""
    from onnxprune.core.runtime import Fetcher, exposing

    sess, want = exposing(model, ["relu"], threads=1)
    fetch = Fetcher(sess, want)
    first = fetch.run({"x": x[:4]})
    fetch.recycle(fetch.signature({"x": x[:4]}), first)
    second = fetch.run({"x": x[4:8]})
    assert second[0] is first[0]  # the same array, rewritten
    np.testing.assert_allclose(second[0], activations(model, x[4:8]), rtol=1e-6, atol=1e-6)
    fetch.recycle(fetch.signature({"x": x[4:8]}), second)
    other = fetch.run({"x": x[8:]})  # 2 samples: no spare arrays of that shape
    assert other[0] is not first[0] and other[0].shape[0] == 2
    np.testing.assert_allclose(other[0], activations(model, x[8:]), rtol=1e-6, atol=1e-6)


def test_fetcher_falls_back_to_plain_runs_when_output_shapes_depend_on_the_data():
    from onnxprune.core.runtime import Fetcher, session

    g = Graph(seed=0)
    nz = g.add("Cast", [g.add("NonZero", [g.add("Relu", ["x"], name="r")], name="nz")], to=TensorProto.FLOAT)
    m = g.build({"x": [4]}, [nz])
    fetch = Fetcher(session(m, threads=1), [nz])
    a = np.array([1, 0, 0, 0], np.float32)
    b = np.array([1, 2, 0, 3], np.float32)
    fetch.recycle(fetch.signature({"x": a}), fetch.run({"x": a}))
    out = fetch.run({"x": b})  # the spare array has one column; this result has three
    np.testing.assert_array_equal(out[0], [[0, 1, 3]])
    assert fetch.bound is False
