"""The oracle itself: its allowance for a model's own rounding noise must not
hide a wrong rewrite."""
import numpy as np
import onnx
import pytest

from tests.helpers import oracle
from tests.helpers.graphs import Graph, exact


def _conv_bn(seed=0):
    g = Graph(seed=seed)
    a = g.conv("x", 3, 6, name="c1")
    n = g.add("BatchNormalization", [a, g.rand("s", (6,)), g.rand("b", (6,)), g.rand("m", (6,)),
                                     g.init("v", np.full(6, 0.7, np.float32))])
    y = g.conv(g.add("Relu", [n]), 6, 4, name="c2")
    return g.build({"x": [1, 3, 6, 6]}, [y])


def test_rounding_noise_is_what_fusions_move_and_zero_without_them():
    model = _conv_bn()
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 6, 6)).astype(np.float32)}
    noise = oracle.rounding_noise(model, feeds)
    y = oracle.run(model, feeds)[0]
    assert 0 < noise[0] < 1e-4 * np.abs(y).max()  # Conv+BN folded: other rounding, same values
    g = Graph()
    plain = g.build({"x": [1, 3, 6, 6]}, [g.add("Relu", [g.add("Neg", ["x"])])])
    assert oracle.rounding_noise(plain, feeds) == [0.0]


def _bias_off(apply, delta):
    """``apply`` whose pruned models have c2's bias moved by ``delta`` (a bug)."""
    def wrong(groups, keep, masked=False, **kw):
        m = apply(groups, keep, masked=masked, **kw)
        if not masked:
            for t in m.graph.initializer:
                if t.name == "c2_B":
                    t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) + delta, t.name))
        return m
    return wrong


@pytest.mark.parametrize("delta", [1e-3, 0.05])
def test_a_wrong_rewrite_fails_although_the_model_rounds_differently(monkeypatch, delta):
    model = _conv_bn()
    exact(model, trials=3)  # right as it is
    monkeypatch.setattr(oracle, "apply", _bias_off(oracle.apply, delta))
    with pytest.raises(AssertionError):
        exact(model, trials=3)
