"""Inputs whose samples are not on axis 0: a recurrent state ``[layers, batch,
hidden]`` beside ``input [batch, features]``. Data for it comes with the
samples on the model's own batch axis; ``sample_axes`` finds that axis (or
``--batch-axis NAME:AXIS`` names it) and every slice, join and batch of the
data follows it."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cli import main
from onnxprune.core import data as data_mod
from onnxprune.core.data import Along, join, load_npz, random_feeds, rows, sample_axes, sample_count
from onnxprune.core.errors import OnnxPruneError

FEATURES, HIDDEN, STATE, LAYERS, N = 8, 12, 4, 2, 12


def state_model(batch: str = "batch", state_dims=None) -> onnx.ModelProto:
    """y = [relu(input @ w1) @ w2, sum over layers of state]: [batch, 2 STATE]
    (a Concat: a state of another batch cannot broadcast into a wrong answer)."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((FEATURES, HIDDEN)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((HIDDEN, STATE)).astype(np.float32), "w2")
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    nodes = [helper.make_node("MatMul", ["input", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["o"], name="fc2"),
             helper.make_node("ReduceSum", ["state", "axes"], ["s"], keepdims=0, name="layers"),
             helper.make_node("Concat", ["o", "s"], ["y"], axis=1, name="join")]
    dims = state_dims or [LAYERS, batch, STATE]
    graph = helper.make_graph(
        nodes, "stateful",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", FEATURES]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2 * STATE])], [w1, w2, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def arrays(n: int = N, state_shape=None) -> dict:
    rng = np.random.default_rng(1)
    return {"input": rng.standard_normal((n, FEATURES)).astype(np.float32),
            "state": rng.standard_normal(state_shape or (LAYERS, n, STATE)).astype(np.float32)}


@pytest.fixture
def files(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(state_model("h"), model)  # its batch dim named unlike the input's: found from the data
    npz = tmp_path / "d.npz"
    np.savez(npz, **arrays())
    return tmp_path, os.fspath(model), os.fspath(npz)


def test_the_state_axis_sized_like_the_samples_holds_them():
    axes, notes = sample_axes(state_model("h"), arrays())
    assert axes == {"state": 1}
    assert len(notes) == 1 and "'state'" in notes[0] and "axis 1" in notes[0] and "--batch-axis" in notes[0]


def test_without_data_the_axis_named_like_the_batch_holds_them():
    assert sample_axes(state_model("N"))[0] == {"state": 1}
    assert sample_axes(state_model("h"))[0] == {}  # nothing says so: given whole, as before
    feeds = random_feeds(state_model("N"), 5)
    assert feeds["state"].shape == (LAYERS, 5, STATE) and sample_count(feeds) == 5


def test_slices_and_joins_follow_the_sample_axis(tmp_path):
    path = tmp_path / "d.npz"
    given = arrays()
    np.savez(path, **given)
    feeds, _ = load_npz(path, state_model("h"))
    assert isinstance(feeds["state"], Along) and sample_count(feeds) == N
    part = rows(feeds, slice(3, 7))
    np.testing.assert_array_equal(part["state"], given["state"][:, 3:7])
    np.testing.assert_array_equal(part["input"], given["input"][3:7])
    back = join([rows(feeds, slice(0, 5)), rows(feeds, slice(5, None))])
    np.testing.assert_array_equal(back["state"], given["state"])
    assert sample_count(back) == N


def test_several_candidate_axes_are_refused_naming_the_flag():
    model = state_model(state_dims=[LAYERS, "a", "b"])
    with pytest.raises(OnnxPruneError, match=r"input 'state'.*--batch-axis state:AXIS"):
        sample_axes(model, arrays(state_shape=(LAYERS, N, N)))
    assert sample_axes(model, arrays(state_shape=(LAYERS, N, N)), {"state": 2})[0] == {"state": 2}


def test_batch_axis_is_checked():
    with pytest.raises(OnnxPruneError, match="no input 'ghost'"):
        sample_axes(state_model(), None, {"ghost": 1})
    with pytest.raises(OnnxPruneError, match="has 3 axes"):
        sample_axes(state_model(), None, {"state": 3})
    with pytest.raises(OnnxPruneError, match="NAME:AXIS"):
        data_mod.parse_batch_axes(["state"])


def _run_each(model_path, feeds) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"input": feeds["input"][i:i + 1],
                                            "state": feeds["state"][:, i:i + 1]})[0] for i in range(N)])


def test_prune_with_such_data_validates_on_the_right_samples(files):
    folder, model, npz = files
    out = os.fspath(folder / "out.onnx")
    report = os.fspath(folder / "r.json")
    result = CliRunner().invoke(main, ["prune", model, "-o", out, "--data", npz, "--ratio", "0.5",
                                       "--report", report])
    assert result.exit_code == 0, result.output
    assert any("'state'" in line and "axis 1" in line for line in result.stderr.splitlines()), result.stderr
    # the pruned model, run sample by sample with its own slice of the state, is what validation compared
    given = arrays()
    ref, got = _run_each(model, given), _run_each(out, given)
    assert got.shape == ref.shape == (N, 2 * STATE)
    v = CliRunner().invoke(main, ["validate", model, model, "--data", npz, "-q"])
    assert v.exit_code == 0, v.output


def test_calibration_data_with_the_state_on_its_batch_axis_prunes(files):
    folder, model, npz = files
    out = os.fspath(folder / "out.onnx")
    result = CliRunner().invoke(main, ["prune", model, "-o", out, "--calib", npz, "--ratio", "0.5"])
    assert result.exit_code == 0, result.output


def test_ambiguous_data_is_one_line_and_batch_axis_settles_it(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(state_model(state_dims=[LAYERS, "a", "b"]), model)
    npz = tmp_path / "d.npz"
    np.savez(npz, **arrays(STATE, state_shape=(LAYERS, STATE, STATE)))  # axes 1 and 2: both 4 entries
    out = os.fspath(tmp_path / "out.onnx")
    result = CliRunner().invoke(main, ["prune", os.fspath(model), "-o", out, "--data", os.fspath(npz)])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--batch-axis state:AXIS" in lines[0], result.stderr
    assert not os.path.exists(out)
    result = CliRunner().invoke(main, ["prune", os.fspath(model), "-o", out, "--data", os.fspath(npz),
                                       "--batch-axis", "state:1", "--ratio", "0.5"])
    assert result.exit_code == 0, result.output
