"""RNN, GRU, LSTM: input features prune with their producer, the hidden size
prunes across the packed gates, R, the biases, peepholes and the states."""
from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.graphs import (
    Graph,
    assert_frozen,
    assert_prunable,
    attr,
    exact,
    group_at,
    input_value,
    keep_of,
    pruned,
    value,
)

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
S, B, F, IN, H = 5, 2, 3, 6, 8


def rnn_model(op, direction="forward", layout=0, states=False, peepholes=False, lbr=0):
    g = Graph(opset=14)
    d = 2 if direction == "bidirectional" else 1
    gates = GATES[op]
    xin = "x"
    h_in = g.add("Relu", [g.matmul(xin, F, IN, name="pre")])  # features the RNN reads
    inputs = [h_in, g.rand("W", (d, gates * H, IN)), g.rand("R", (d, gates * H, H)) ,
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


def _time_major(op, along, states=True, seq_lens=True):
    """A MatMul on the last axis makes a new group that reaches the RNN's X as
    its batch axis (``along="batch"``) or its sequence axis ("seq"); another
    MatMul reads it back from Y."""
    g = Graph(opset=14, seed=3)
    s, b = 4, 5
    gates, d = GATES[op], 1
    if along == "batch":  # x [S, F, B0] -> [S, F, B] -> [S, B, F]
        x = g.add("Transpose", [g.matmul("x", 6, b, name="pre")], perm=[0, 2, 1])
        xshape = [s, F, 6]
    else:  # x [B, F, S0] -> [B, F, S] -> [S, B, F]
        x = g.add("Transpose", [g.matmul("x", 6, s, name="pre")], perm=[2, 0, 1])
        xshape = [b, F, 6]
    inputs = [x, g.rand("W", (d, gates * H, F)), g.rand("R", (d, gates * H, H)), g.rand("Bias", (d, 2 * gates * H))]
    if seq_lens:
        inputs.append(g.init("seq_lens", np.array([4, 2, 3, 1, 4], np.int32)))
    if states:
        inputs += [""] * (5 - len(inputs)) + [g.rand("h0", (d, b, H))]
        if op == "LSTM":
            inputs.append(g.rand("c0", (d, b, H)))
    n_out = 3 if op == "LSTM" else 2
    y = g.add(op, inputs, n_out=n_out, name="rnn", hidden_size=H)[0]
    y = g.add("Squeeze", [y, g.ints("ax", [1])])  # [S, B, H]
    if along == "batch":
        out = g.matmul(g.add("Transpose", [y], perm=[0, 2, 1]), b, 3, name="post")  # [S, H, B] @ (B, 3)
    else:
        out = g.matmul(g.add("Transpose", [y], perm=[1, 2, 0]), s, 3, name="post")  # [B, H, S] @ (S, 3)
    return g.build({"x": xshape}, [out])


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_batch_axis_prunes_the_sequence_lengths_and_initial_states_with_it(op):
    model = _time_major(op, "batch")
    groups = exact(model, trials=4)
    batch = group_at(groups, "pre", -1)
    assert_prunable(batch)
    m = pruned(groups, keep_of(batch, [0, 2, 4]))
    np.testing.assert_array_equal(input_value(m, "rnn", 4), [4, 3, 4])
    assert input_value(m, "rnn", 5).shape == (1, 3, H)
    if op == "LSTM":
        assert input_value(m, "rnn", 6).shape == (1, 3, H)


@pytest.mark.parametrize("op", ["RNN", "LSTM"])
def test_sequence_axis_freezes_because_the_recurrence_runs_along_it(op):
    groups = exact(_time_major(op, "seq", seq_lens=False), trials=4)
    assert_frozen(group_at(groups, "pre", -1), "recurrence")


@pytest.mark.parametrize("op", ["GRU", "LSTM"])
def test_hidden_features_split_downstream_prune_under_every_gate(op):
    # Y's hidden features split in two after the layer (y[..., :3], y[..., 3:]):
    # the hidden space splits under each gate's rows of W, R and the biases.
    g = Graph(opset=14, seed=4)
    gates = GATES[op]
    h_in = g.add("Relu", [g.matmul("x", F, IN, name="pre")])
    outs = g.add(op, [h_in, g.rand("W", (1, gates * H, IN)), g.rand("R", (1, gates * H, H)),
                      g.rand("Bias", (1, 2 * gates * H))] + ([""] * 3 + [g.rand("P", (1, 3 * H))] if op == "LSTM" else []),
                 n_out=2, name="rnn", hidden_size=H)
    y = g.add("Squeeze", [outs[0], g.ints("ax", [1])])  # [S, B, H]
    a, b = g.add("Split", [y, g.ints("sp", [3, H - 3])], n_out=2, axis=2)
    out = g.add("Add", [g.matmul(a, 3, 4, name="post_a"), g.matmul(b, H - 3, 4, name="post_b")])
    groups = exact(g.build({"x": [S, B, F]}, [out]), trials=6)
    first, second = group_at(groups, a, -1), group_at(groups, b, -1)
    assert_prunable(first)
    assert_prunable(second)
    m = pruned(groups, {**keep_of(first, [1]), **keep_of(second, [0, 4])})
    assert attr(m, "rnn", "hidden_size") == 3
    rows = [k * H + j for k in range(gates) for j in (1, 3, 7)]
    np.testing.assert_array_equal(input_value(m, "rnn", 1), input_value(groups.model, "rnn", 1)[:, rows])


def test_encoder_final_state_starts_the_decoder_coupling_hidden_and_batch():
    # Encoder-decoder: the decoder starts from the encoder's Y_h, a run-time
    # initial state, so both hidden sizes are one space, and so are the batches.
    g = Graph(opset=14, seed=5)
    s, b = 4, 5
    x = g.add("Transpose", [g.matmul("x", 6, b, name="pre")], perm=[0, 2, 1])  # [S, B, F], B prunable
    enc = g.add("GRU", [x, g.rand("We", (1, 3 * H, F)), g.rand("Re", (1, 3 * H, H))], n_out=2,
                name="enc", hidden_size=H)
    dec = g.add("GRU", [x, g.rand("Wd", (1, 3 * H, F)), g.rand("Rd", (1, 3 * H, H)), "",
                        g.init("seq_lens", np.array([4, 2, 3, 1, 4], np.int32)), enc[1]],
                n_out=2, name="dec", hidden_size=H)
    y = g.add("Squeeze", [dec[0], g.ints("ax", [1])])  # [S, B, H]
    hid = g.matmul(y, H, 3, name="post_h")
    out = g.matmul(g.add("Transpose", [hid], perm=[0, 2, 1]), b, 2, name="post_b")  # [S, 3, B] @ (B, 2)
    groups = exact(g.build({"x": [s, F, 6]}, [out]), trials=6)
    hidden = group_at(groups, y, -1)
    assert_prunable(hidden)
    assert {"enc", "dec"} <= set(hidden.members)
    batch = group_at(groups, "pre", -1)
    assert_prunable(batch)
    m = pruned(groups, {**keep_of(hidden, [2, 5]), **keep_of(batch, [1, 3])})
    assert attr(m, "enc", "hidden_size") == attr(m, "dec", "hidden_size") == 2
    np.testing.assert_array_equal(input_value(m, "dec", 4), [2, 1])


def test_an_initial_state_expanded_from_one_value_takes_the_hidden_size_of_every_reader():
    """Paddle writes a bidirectional GRU stack's zero initial states as one
    ``Expand(0.0, Concat([layers x directions], [batch], [hidden]))`` sliced
    per layer: every hidden position holds the same value, so the expanded
    axis joins the readers' hidden size (both layers' hidden sizes become
    one space, as they read one tensor) and the literal is rewritten."""
    g = Graph(opset=14, seed=3)
    x = g.add("Relu", [g.matmul("x", F, IN, name="pre")])  # [S, B, IN]
    batch = g.add("Unsqueeze", [g.add("Gather", [g.add("Shape", [x]), g.ints("one", 1)]), g.ints("ax0", [0])])
    shape = g.add("Concat", [g.ints("layers", [4]), batch, g.ints("hidden", [H])], axis=0)
    zeros = g.add("Expand", [g.init("zero", np.array([0.0], np.float32)), shape], name="fill")
    h0 = [g.add("Slice", [zeros, g.ints(f"s{k}", [2 * k]), g.ints(f"e{k}", [2 * k + 2]), g.ints(f"a{k}", [0])])
          for k in range(2)]
    y0 = g.add("GRU", [x, g.rand("W0", (2, 3 * H, IN)), g.rand("R0", (2, 3 * H, H)), g.rand("B0", (2, 6 * H)),
                       "", h0[0]], n_out=2, name="gru0", hidden_size=H, direction="bidirectional")[0]
    mid = g.add("Reshape", [g.add("Transpose", [y0], perm=[0, 2, 1, 3]), g.ints("s1", [S, B, 2 * H])])
    y1 = g.add("GRU", [mid, g.rand("W1", (2, 3 * H, 2 * H)), g.rand("R1", (2, 3 * H, H)),
                       g.rand("B1", (2, 6 * H)), "", h0[1]], n_out=2, name="gru1", hidden_size=H,
               direction="bidirectional")[0]
    flat = g.add("Reshape", [g.add("Transpose", [y1], perm=[0, 2, 1, 3]), g.ints("s2", [S, B, 2 * H])])
    groups = exact(g.build({"x": [S, B, F]}, [g.matmul(flat, 2 * H, 4, name="post")]), trials=5)
    hidden = next(gr for gr in groups.prunable if "gru1" in gr.members and "post" in gr.members)
    assert {"gru0", "gru1"} <= set(hidden.members)
    m = pruned(groups, keep_of(hidden, [1, 4, 6]))
    assert attr(m, "gru0", "hidden_size") == attr(m, "gru1", "hidden_size") == 3
    assert value(m, "hidden").tolist() == [3]


def test_a_recurrent_cell_costs_its_input_and_its_hidden_weights_apart():
    """A GRU's MACs are a sum, one multiply per element of W (input features
    x gates) and of R (hidden x gates) per step: the estimate for a plan that
    halves the hidden size is the pruned model's own count, not the whole
    cell times the kept fraction of every axis it reads."""
    import onnxprune
    from onnxprune.select.planner import estimate_macs

    groups = exact(rnn_model("GRU"), trials=1)
    hidden = next(g for g in groups.prunable if "post" in g.members and "rnn" in g.members)
    keep = keep_of(hidden, [0, 2, 4, 6])
    m = pruned(groups, keep)
    assert estimate_macs(groups, keep) == onnxprune.analyze(m).macs < groups.macs
