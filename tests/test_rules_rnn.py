"""RNN, GRU, LSTM: input features prune with their producer, the hidden size
prunes across the packed gates, R, the biases, peepholes and the states."""
from __future__ import annotations

import numpy as np
import pytest

from graphs import Graph, assert_prunable, attr, exact, group_at, input_value, keep_of, pruned

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
S, B, F, I, H = 5, 2, 3, 6, 8


def rnn_model(op, direction="forward", layout=0, states=False, peepholes=False, lbr=0):
    g = Graph(opset=14)
    d = 2 if direction == "bidirectional" else 1
    gates = GATES[op]
    xin = "x"
    h_in = g.add("Relu", [g.matmul(xin, F, I, name="pre")])  # features the RNN reads
    inputs = [h_in, g.rand("W", (d, gates * H, I)), g.rand("R", (d, gates * H, H)) ,
              g.rand("Bias", (d, 2 * gates * H))]
    batch_first = layout == 1
    if states:
        shape = (B, d, H) if batch_first else (d, B, H)
        inputs += ["", g.rand("h0", shape)]
        if op == "LSTM":
            inputs += [g.rand("c0", shape)]
    if peepholes:
        inputs += [""] * (7 - len(inputs)) + [g.rand("P", (d, 3 * H))]
    attrs = {"hidden_size": H, "direction": direction}
    if layout:
        attrs["layout"] = 1
    if op == "GRU":
        attrs["linear_before_reset"] = lbr
    n_out = 3 if op == "LSTM" else 2
    outs = g.add(op, inputs, n_out=n_out, name="rnn", **attrs)
    y = outs[0]
    # Y: (S, D, B, H) or (B, S, D, H) -> merge directions into features -> MatMul
    if batch_first:
        flat = g.add("Reshape", [y, g.ints("s1", [B, S, d * H])])
    else:
        flat = g.add("Reshape", [g.add("Transpose", [y], perm=[0, 2, 1, 3]), g.ints("s1", [S, B, d * H])])
    out = g.matmul(flat, d * H, 4, name="post")
    xshape = [B, S, F] if batch_first else [S, B, F]
    return g.build({"x": xshape}, [out])


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_hidden_size_and_input_features_prune_exactly(op, direction):
    groups = exact(rnn_model(op, direction), trials=4)
    feats = group_at(groups, "pre", -1)
    assert_prunable(feats)
    assert "rnn" in feats.members
    y_hidden = next(g for g in groups.prunable if "post" in g.members and "rnn" in g.members)
    m = pruned(groups, {**keep_of(y_hidden, [0, 3, 5]), **keep_of(feats, [1, 2, 4])})
    gates = GATES[op]
    d = 2 if direction == "bidirectional" else 1
    assert attr(m, "rnn", "hidden_size") == 3
    assert input_value(m, "rnn", 1).shape == (d, gates * 3, 3)
    assert input_value(m, "rnn", 2).shape == (d, gates * 3, 3)
    assert input_value(m, "rnn", 3).shape == (d, 2 * gates * 3)
    w0, w1 = input_value(groups.model, "rnn", 2), input_value(m, "rnn", 2)
    rows = [k * H + j for k in range(gates) for j in (0, 3, 5)]
    np.testing.assert_array_equal(w1, w0[:, rows][:, :, [0, 3, 5]])


@pytest.mark.parametrize("op", ["GRU", "LSTM"])
def test_initial_states_and_peepholes_prune_with_the_hidden_size(op):
    model = rnn_model(op, "forward", states=True, peepholes=op == "LSTM")
    groups = exact(model, trials=4)
    y_hidden = next(g for g in groups.prunable if "post" in g.members and "rnn" in g.members)
    m = pruned(groups, keep_of(y_hidden, [1, 2]))
    assert input_value(m, "rnn", 5).shape == (1, B, 2)
    if op == "LSTM":
        assert input_value(m, "rnn", 6).shape == (1, B, 2)
        assert input_value(m, "rnn", 7).shape == (1, 6)


@pytest.mark.parametrize("op", ["GRU", "LSTM"])
def test_batch_first_layout_is_analysed_on_its_own_axes(op):
    # onnxruntime's CPU kernels refuse layout=1, so this checks the analysis and
    # the rewrite (and the checker) without running it.
    import onnx

    import onnxprune

    groups = onnxprune.analyze(rnn_model(op, "forward", layout=1, states=True))
    y_hidden = next(g for g in groups.prunable if "post" in g.members and "rnn" in g.members)
    m = pruned(groups, keep_of(y_hidden, [1, 2]))
    onnx.checker.check_model(m, full_check=True)
    assert input_value(m, "rnn", 5).shape == (B, 1, 2)
    assert attr(m, "rnn", "hidden_size") == 2


def test_gru_linear_before_reset_prunes_exactly():
    exact(rnn_model("GRU", "bidirectional", lbr=1), trials=4)
