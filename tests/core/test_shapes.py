"""Shapes where ONNX inference stops: observed in onnxruntime on one sample
(the user's data, or random inputs when only the batch is symbolic)."""
from __future__ import annotations

import numpy as np
import onnx

import onnxprune
from onnxprune.core.shapes import shapes
from tests.helpers.graphs import Graph, assert_prunable, exact, group_at


def _runtime_pad_model(fixed_batch: bool = False, seq: bool = False):
    """x -> Pad(pads computed at run time through float arithmetic, which ONNX
    data propagation cannot follow) -> Conv -> Relu -> Conv [-> Reshape to a literal 1]."""
    g = Graph()
    s = g.add("Shape", ["x"], start=2, end=3)
    f = g.add("Cast", [s], to=onnx.TensorProto.FLOAT)
    quarter = g.add("Floor", [g.add("Div", [f, g.init("four", np.array([4.0], np.float32))])])
    h = g.add("Cast", [quarter], to=onnx.TensorProto.INT64)
    pads = g.add("Concat", [g.ints("z2", [0, 0]), h, g.ints("z1", [0]), g.ints("z3", [0, 0]), h,
                            g.ints("z4", [0])], axis=0)
    p = g.add("Pad", ["x", pads], name="pad")
    c = g.conv(p, 3, 6, name="c1")
    y = g.conv(g.add("Relu", [c]), 6, 4, name="c2")
    if fixed_batch:
        y = g.add("Reshape", [y, g.ints("flat", [1, 4 * 12 * 8])], name="flat")
        return g.build({"x": ["N", 3, 8, 8]}, {y: [1, 4 * 12 * 8]}), p, c
    width = "W" if seq else 8
    return g.build({"x": ["N", 3, 8, width]}, {y: ["N", 4, 12, width]}), p, c


def test_unknown_dims_are_observed_and_the_batch_stays_symbolic():
    model, pad, conv = _runtime_pad_model()
    info = shapes(model)
    assert info.probed and info.fixed_batch is False
    assert info.dims[pad] == ("N", 3, 12, 8) and info.dims[conv] == ("N", 6, 12, 8)


def test_a_graph_that_fixes_batch_one_inside_is_detected():
    model, pad, _ = _runtime_pad_model(fixed_batch=True)
    info = shapes(model)
    assert info.probed and info.fixed_batch is True
    assert info.dims[pad][1:] == (3, 12, 8)


def test_without_data_a_symbolic_spatial_dim_is_not_guessed():
    model, pad, _ = _runtime_pad_model(seq=True)
    info = shapes(model)
    assert not info.probed and any(isinstance(d, str) and d.startswith("unk") for d in info.dims[pad])
    assert any("--calib/--data" in n for n in info.notes)
    sample = {"x": np.zeros((1, 3, 8, 16), np.float32)}
    info = shapes(model, sample=sample)
    assert info.probed and info.dims[pad] == ("N", 3, 12, 16)  # the data's width


def test_probed_shapes_drive_the_analysis_and_the_macs():
    model, _, _ = _runtime_pad_model()
    groups = exact(model)
    assert_prunable(group_at(groups, "c1"))
    assert groups.macs == 6 * 12 * 8 * 27 + 4 * 12 * 8 * 54  # both convs over the padded 12x8 map
    assert onnxprune.analyze(model).macs == groups.macs


def _seq_model():
    """tokens (N, S) -> Gather(embedding) -> MatMul -> Relu -> MatMul: MACs grow with S."""
    g = Graph()
    e = g.add("Gather", [g.rand("table", (20, 8)), "ids"], name="embed")
    h = g.add("Relu", [g.matmul(e, 8, 16, name="up")])
    y = g.matmul(h, 16, 4, name="down")
    return g.build({"ids": (["N", "S"], onnx.TensorProto.INT64)}, {y: ["N", "S", 4]})


def test_a_symbolic_sequence_without_data_leaves_macs_unknown_and_macs_target_an_error():
    import pytest

    model = _seq_model()
    assert onnxprune.analyze(model).macs is None
    with pytest.raises(onnxprune.OnnxPruneError, match="input 'ids' has the symbolic dim.*S.*--input-shape"):
        onnxprune.prune(model, macs_target=0.5)
    ids = {"ids": np.zeros((1, 5), np.int64)}
    assert onnxprune.analyze(model, data=ids).macs == 5 * (8 * 16 + 16 * 4)
    assert onnxprune.analyze(model, input_shapes={"ids": [1, 7]}).macs == 7 * (8 * 16 + 16 * 4)


def test_an_unreachable_or_meaningless_macs_target_is_an_error():
    import pytest

    ids = {"ids": np.zeros((1, 5), np.int64)}
    # Only the 16 hidden units prune; the embedding output reaches no prunable consumer side.
    with pytest.raises(onnxprune.OnnxPruneError, match="cannot be met.*keeps"):
        onnxprune.prune(_seq_model(), macs_target=0.01, data=ids)
    g = Graph()
    y = g.add("Relu", [g.add("Mul", ["x", g.rand("s", (1, 4))])])
    with pytest.raises(onnxprune.OnnxPruneError):
        onnxprune.prune(g.build({"x": [1, 4]}, [y]), macs_target=0.5)
