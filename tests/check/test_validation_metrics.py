"""Validation metrics on hand-made outputs: cosine, max error, top-1
agreement and accuracy are what their definitions say."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.check.validate import _fidelity


def test_cosine_max_error_and_top1_of_hand_made_outputs():
    a = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]], np.float32)
    b = np.array([[1.0, 0.0], [1.0, 1.0], [4.0, 3.0]], np.float32)
    f = _fidelity("y", a, b)
    cos = np.array([1.0, 1 / np.sqrt(2), 24 / 25])
    assert np.isclose(f.cosine_mean, cos.mean()) and np.isclose(f.cosine_min, cos.min())
    assert np.isclose(f.max_abs_diff, 1.0)
    assert np.isclose(f.top1_agreement, 1 / 3)  # argmax a = 0,1,1; b = 0,0,0


def test_identical_outputs_are_exact_and_zero_vectors_count_as_equal():
    a = np.array([[0.0, 0.0], [2.0, -1.0]], np.float32)
    f = _fidelity("y", a, a.copy())
    assert np.isclose(f.cosine_min, 1.0) and f.max_abs_diff == 0.0 and f.top1_agreement == 1.0


def test_non_classifier_outputs_have_no_top1():
    a = np.ones((3, 1), np.float32)
    assert _fidelity("y", a, a).top1_agreement is None
    assert _fidelity("y", np.ones((3, 4, 5), np.float32), np.ones((3, 4, 5), np.float32)).top1_agreement is None


def _linear(w: np.ndarray) -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(w.astype(np.float32), "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_validate_accuracy_and_agreement_on_models_with_known_answers():
    x = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]  # one-hot inputs: argmax = the input's class
    labels = np.array([0, 1, 2, 1])  # the last label is wrong for both models
    swap = np.eye(3)[[1, 0, 2]]  # the second model swaps classes 0 and 1
    v = onnxprune.validate(_linear(np.eye(3)), _linear(swap), data={"x": x, "labels": labels})
    assert v.samples == 4 and not v.random_inputs
    assert v.accuracy_before == 0.75  # right on samples 0, 1, 2
    assert v.accuracy_after == 0.5  # predicts 1, 0, 2, 1: right on samples 2 and 3
    assert v.top1_agreement == 0.25  # agree on sample 2 only
    assert np.isclose(v.cosine_min, 0.0) and np.isclose(v.max_abs_diff, 1.0)


def test_one_value_per_sample_compares_across_samples_centred():
    """A score per sample: per-sample cosines would all be 1.0 (same sign);
    the samples compared as one centred vector show whether the pruned
    scores still follow the original's."""
    a = np.array([[0.1], [0.2], [0.3], [0.4]], np.float32)
    follows, flat = a * 2 + 0.05, np.full_like(a, 0.25)
    assert np.isclose(_fidelity("s", a, follows).cosine_min, 1.0, atol=1e-6)
    assert _fidelity("s", a, flat).cosine_min == 0.0
    assert np.isclose(_fidelity("s", a, a[::-1].copy()).cosine_min, -1.0, atol=1e-6)
    const = np.full((3, 1), 0.5, np.float32)
    assert _fidelity("s", const, const.copy()).cosine_min == 1.0
    assert _fidelity("s", const, const + 0.2).cosine_min == 0.0


def test_one_value_per_sample_moves_the_sweep_damage_and_the_auto_metric_too():
    """The sensitivity sweep and the automatic loop use the same centred
    cosine (``similarity.centred_cosines``): per sample, one value always
    read 1.0, so a score model's damage was 0 whatever was removed."""
    from onnxprune.pipeline.auto import _metric
    from onnxprune.search.sensitivity import damage

    a = np.array([[0.1], [0.2], [0.3], [0.4]])
    flat = np.full_like(a, 0.25)
    assert damage(a, flat) == ("1-cos", 1.0)
    assert damage(a, a * 2 + 0.05)[1] < 1e-9
    assert _metric(flat, a, None)[1] == 0.0


def test_a_change_where_the_output_is_flat_shows_in_the_centred_cosine_only():
    """A detector-like map: large and flat, with a small peak that moves. The
    plain cosine barely notices; the centred one (values minus their mean)
    sees that the output changed where it varies."""
    a = np.full((2, 64), 10.0, np.float32)
    a[:, 5] += 1.0
    b = a.copy()
    b[:, 5] -= 1.0
    b[:, 40] += 1.0  # the peak moved
    f = _fidelity("map", a, b)
    assert f.cosine_min > 0.99
    assert f.centred_min < 0.0
    same = _fidelity("map", a, a + 3.0)  # a constant offset: nothing moved where it varies
    assert np.isclose(same.centred_min, 1.0) and same.cosine_min < 1.0


def _two_heads(w_a: np.ndarray, w_b: np.ndarray) -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("MatMul", ["x", "wa"], ["head_a"]),
                           helper.make_node("MatMul", ["x", "wb"], ["head_b"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("head_a", TensorProto.FLOAT, ["N", 3]),
                           helper.make_tensor_value_info("head_b", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(w_a.astype(np.float32), "wa"),
                           numpy_helper.from_array(w_b.astype(np.float32), "wb")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_each_output_has_its_own_fidelity_and_accuracy():
    """Two classifier heads: only the second is damaged; the report says which,
    with the accuracy of each head against the labels."""
    eye = np.eye(3)
    original, damaged = _two_heads(eye, eye), _two_heads(eye, eye[[1, 2, 0]])
    x = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]] + 0.01
    v = onnxprune.validate(original, damaged, data={"x": x, "labels": np.array([0, 1, 2, 0, 1, 2])})
    a, b = v.outputs
    assert (a.name, b.name) == ("head_a", "head_b")
    assert a.accuracy_before == a.accuracy_after == 1.0 and np.isclose(a.centred_min, 1.0)
    assert b.accuracy_before == 1.0 and b.accuracy_after == 0.0 and b.centred_min < 0.5
    assert v.accuracy_before == 1.0 and v.accuracy_after == 1.0  # the summary: the first classifier head
    assert np.isclose(v.centred_min, b.centred_min)
    out = v.to_dict()["validation"]
    assert [o["name"] for o in out["outputs"]] == ["head_a", "head_b"] and out["outputs"][1]["accuracy_after"] == 0.0


def _time_major(w: np.ndarray) -> onnx.ModelProto:
    """(N, 3) -> (2, N, 3): two 'time steps' y and y * y, the batch on axis 1
    as a CTC recogniser's (T, batch, classes) logits."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Mul", ["y", "y"], ["y2"]),
             helper.make_node("Unsqueeze", ["y", "zero"], ["a"]), helper.make_node("Unsqueeze", ["y2", "zero"], ["b"]),
             helper.make_node("Concat", ["a", "b"], ["out"], axis=0)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, "N", 3])],
                          [numpy_helper.from_array(w.astype(np.float32), "w"),
                           numpy_helper.from_array(np.array([0], np.int64), "zero")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_an_output_with_its_samples_on_axis_1_is_compared_sample_by_sample():
    """A time-major output's samples are on the axis named like the inputs'
    batch: 40 samples (two runs of 32 and 8, joined along that axis) are 40
    rows of the comparison, each over its own (time, classes) values."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3)).astype(np.float32)
    x[0] = [0.0, 0.0, 1.0]  # a sample the class swap does not change
    swap = np.eye(3)[[1, 0, 2]]
    w = np.diag([1.0, 2.0, 3.0])
    v = onnxprune.validate(_time_major(w), _time_major(w @ swap), data={"x": x})
    assert v.samples == 40
    a = np.stack([x @ w, (x @ w) ** 2])
    b = np.stack([x @ w @ swap, (x @ w @ swap) ** 2])
    per = [np.corrcoef(a[:, i].ravel(), b[:, i].ravel())[0, 1] for i in range(40)]
    assert np.isclose(v.outputs[0].centred_min, min(per), atol=1e-5)
    assert np.isclose(v.outputs[0].centred_mean, np.mean(per), atol=1e-5)
    assert np.isclose(max(per), 1.0)  # sample 0, untouched


def test_the_sweep_damage_of_a_time_major_output_is_per_sample():
    """The sweep prices a removal by the same per-sample comparison: one
    sample changed of two is half the damage, whichever axis holds them."""
    from onnxprune.search.sensitivity import damage_of_outputs

    a = np.random.default_rng(1).standard_normal((5, 2, 4))  # (time, samples, classes)
    b = a.copy()
    b[:, 1] = -b[:, 1]  # the second sample's values flipped: its centred cosine is -1
    assert np.isclose(damage_of_outputs([a], [b], [1])[1], 1.0)  # (0 + 2) / 2
