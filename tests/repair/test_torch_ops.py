"""Every rule of the repair interpreter's op table computes what onnxruntime
computes: one single-node model per rule and attribute case, run in both and
compared. A rule that is wrong here would train the wrong function, so the
repair must refuse it (``test_repair.py``), and this suite must fail."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

pytest.importorskip("torch")

from onnxprune.core import runtime  # noqa: E402
from onnxprune.repair.interpret import Interpreter, unsupported  # noqa: E402
from onnxprune.repair.torch_ops import MULTI, RULES  # noqa: E402

R = np.random.default_rng(0)


def f32(*shape):
    return R.standard_normal(shape).astype(np.float32)


def i64(*values):
    return np.array(values, np.int64)


def one_node(op, inputs, attrs=None, opset=17, outputs=1, domain=""):
    """A model of one node; every given input is a graph input (fed)."""
    names = [f"x{i}" if v is not None else "" for i, v in enumerate(inputs)]
    outs = [f"y{i}" for i in range(outputs)]
    node = helper.make_node(op, names, outs, domain=domain, **(attrs or {}))
    g = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for n, v in zip(names, inputs) if v is not None],
        [onnx.ValueInfoProto(name=o) for o in outs])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m, {n: v for n, v in zip(names, inputs) if v is not None}


CASES = [
    ("Conv", [f32(1, 4, 9, 8), f32(6, 2, 3, 3), f32(6)], dict(group=2, pads=[1, 0, 2, 1], strides=[2, 1]), 17),
    ("Conv", [f32(2, 3, 10, 7), f32(4, 3, 3, 2)], dict(auto_pad="SAME_UPPER", strides=[2, 2]), 17),
    ("Conv", [f32(2, 3, 10, 7), f32(4, 3, 3, 4)], dict(auto_pad="SAME_LOWER", strides=[1, 2]), 17),
    ("Conv", [f32(2, 3, 20), f32(5, 3, 4)], dict(pads=[2, 1], dilations=[2]), 17),
    ("ConvTranspose", [f32(1, 4, 5, 6), f32(4, 3, 3, 3), f32(3)],
     dict(strides=[2, 2], pads=[1, 0, 0, 1], output_padding=[1, 1]), 17),
    ("ConvTranspose", [f32(1, 4, 7), f32(4, 2, 4)], dict(strides=[2], group=2), 17),
    ("Gemm", [f32(3, 5), f32(4, 5), f32(4)], dict(transB=1, alpha=0.5, beta=2.0), 17),
    ("Gemm", [f32(5, 3), f32(5, 4)], dict(transA=1), 17),
    ("MatMul", [f32(2, 3, 4, 5), f32(5, 6)], None, 17),
    ("BatchNormalization", [f32(2, 3, 4, 4), f32(3), f32(3), f32(3), np.abs(f32(3)) + 0.5], dict(epsilon=1e-3), 15),
    ("InstanceNormalization", [f32(2, 3, 5, 4), f32(3), f32(3)], None, 17),
    ("LayerNormalization", [f32(2, 5, 8), f32(8), f32(8)], dict(axis=-1), 17),
    ("LayerNormalization", [f32(2, 5, 8), f32(5, 8)], dict(axis=1, epsilon=1e-3), 17),
    ("MaxPool", [f32(1, 2, 9, 9)], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1), 17),
    ("MaxPool", [f32(1, 2, 8, 7)], dict(kernel_shape=[2, 3], pads=[0, 1, 1, 0]), 17),
    ("MaxPool", [f32(1, 2, 16)], dict(kernel_shape=[3], strides=[2], dilations=[2]), 17),
    ("AveragePool", [f32(1, 2, 9, 9)], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), 17),
    ("AveragePool", [f32(1, 2, 9, 9)], dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1), 17),
    ("AveragePool", [f32(1, 2, 9, 8)], dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1), 17),
    ("AveragePool", [f32(1, 2, 9, 8)], dict(kernel_shape=[3, 3], pads=[0, 1, 2, 1], count_include_pad=1), 17),
    ("GlobalAveragePool", [f32(2, 3, 5, 4)], None, 17),
    ("GlobalMaxPool", [f32(2, 3, 5)], None, 17),
    ("Resize", [f32(1, 2, 4, 5), None, np.array([1, 1, 2, 2], np.float32)], dict(mode="nearest",
     coordinate_transformation_mode="asymmetric", nearest_mode="floor"), 13),
    ("Resize", [f32(1, 2, 4, 5), None, None, i64(1, 2, 7, 9)], dict(mode="nearest"), 13),
    ("Resize", [f32(1, 2, 4, 5), None, np.array([1, 1, 2, 1.5], np.float32)], dict(mode="linear"), 13),
    ("Resize", [f32(1, 2, 4, 5), None, None, i64(1, 2, 8, 3)], dict(mode="linear",
     coordinate_transformation_mode="align_corners"), 13),
    ("Resize", [f32(1, 2, 4, 5), None, np.array([1, 1, 2, 2], np.float32)], dict(mode="linear",
     coordinate_transformation_mode="pytorch_half_pixel"), 13),
    ("Resize", [f32(1, 2, 4, 5), None, np.array([1, 1, 3, 2], np.float32)], dict(mode="nearest",
     coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_ceil"), 13),
    ("Upsample", [f32(1, 2, 3, 4), np.array([1, 1, 2, 3], np.float32)], dict(mode="nearest"), 9),
    ("Softmax", [f32(2, 3, 4)], dict(axis=1), 11),
    ("Softmax", [f32(2, 3, 4)], dict(axis=-2), 13),
    ("LogSoftmax", [f32(2, 3, 4)], dict(axis=-1), 13),
    ("ReduceMean", [f32(2, 3, 4)], dict(axes=[1, 2], keepdims=0), 13),
    ("ReduceMean", [f32(2, 3, 4), i64(-1)], None, 18),
    ("ReduceSum", [f32(2, 3, 4), i64(0, 2)], dict(keepdims=1), 13),
    ("ReduceSum", [f32(2, 3, 4)], dict(axes=[1]), 11),
    ("ReduceMax", [f32(2, 3, 4)], dict(axes=[1], keepdims=0), 13),
    ("ReduceMin", [f32(2, 3, 4)], None, 13),
    ("ReduceProd", [f32(2, 3, 4)], dict(axes=[0, 2]), 13),
    ("ReduceL2", [f32(2, 3, 4)], dict(axes=[2]), 13),
    ("ReduceL1", [f32(2, 3, 4)], dict(axes=[0]), 13),
    ("ReduceSumSquare", [f32(2, 3, 4)], dict(axes=[2]), 13),
    ("ReduceLogSumExp", [f32(2, 3, 4)], dict(axes=[1]), 13),
    ("ArgMax", [np.round(f32(3, 5))], dict(axis=1, keepdims=0, select_last_index=1), 13),
    ("ArgMin", [f32(3, 5)], dict(axis=0), 13),
    ("Slice", [f32(5, 6, 7), i64(4, -1), i64(-10, 1), i64(0, 2), i64(-2, -3)], None, 13),
    ("Slice", [f32(5, 6, 7), i64(1, 2), i64(100, 5)], None, 13),
    ("Slice", [f32(5, 6)], dict(starts=[1], ends=[4], axes=[1]), 9),
    ("Gather", [f32(5, 4, 3), i64(0, -1, 2, 2).reshape(2, 2)], dict(axis=1), 13),
    ("Gather", [f32(5, 4), np.array(-2, np.int64)], None, 13),
    ("GatherElements", [f32(3, 4), i64(0, 3, -1, 1, 2, 0).reshape(3, 2)], dict(axis=1), 13),
    ("ScatterElements", [f32(3, 4), i64(0, 3, 2, 1, 1, 0).reshape(3, 2), f32(3, 2)], dict(axis=1), 13),
    ("Shape", [f32(2, 3, 4, 5)], dict(start=1, end=-1), 15),
    ("Shape", [f32(2, 3, 4, 5)], None, 13),
    ("Size", [f32(2, 3)], None, 13),
    ("Reshape", [f32(2, 3, 4), i64(0, -1)], None, 13),
    ("Reshape", [f32(2, 3, 4), i64(4, 0, 2)], dict(allowzero=0), 14),
    ("Flatten", [f32(2, 3, 4, 5)], dict(axis=2), 13),
    ("Flatten", [f32(2, 3, 4)], dict(axis=0), 13),
    ("Squeeze", [f32(2, 1, 4, 1), i64(-1)], None, 13),
    ("Squeeze", [f32(2, 1, 4, 1)], dict(axes=[1]), 11),
    ("Unsqueeze", [f32(2, 4), i64(0, -1)], None, 13),
    ("Unsqueeze", [f32(2, 4)], dict(axes=[1]), 11),
    ("Transpose", [f32(2, 3, 4)], dict(perm=[2, 0, 1]), 13),
    ("Transpose", [f32(2, 3, 4)], None, 13),
    ("Concat", [f32(2, 3), f32(2, 5)], dict(axis=-1), 13),
    ("Expand", [f32(3, 1), i64(2, 1, 4)], None, 13),
    ("Tile", [f32(2, 3), i64(2, 3)], None, 13),
    ("Pad", [f32(2, 3, 4), i64(0, 1, 2, 0, 2, 1), np.array(1.5, np.float32)], dict(mode="constant"), 13),
    ("Pad", [f32(1, 2, 5, 6), i64(0, 0, 1, 2, 0, 0, 2, 1)], dict(mode="reflect"), 13),
    ("Pad", [f32(1, 2, 5, 6), i64(0, 0, 1, 2, 0, 0, 2, 1)], dict(mode="edge"), 13),
    ("Pad", [f32(2, 3, 4), i64(1, 2), None, i64(-1)], None, 18),
    ("Pad", [f32(2, 3)], dict(pads=[0, 1, 1, 0], value=2.0), 9),
    ("Range", [np.array(1, np.int64), np.array(10, np.int64), np.array(3, np.int64)], None, 13),
    ("Range", [np.array(0.5, np.float32), np.array(-2, np.float32), np.array(-0.5, np.float32)], None, 13),
    ("ConstantOfShape", [i64(2, 3)], dict(value=helper.make_tensor("v", TensorProto.FLOAT, [1], [2.5])), 13),
    ("ConstantOfShape", [i64(2, 3)], None, 13),
    ("Where", [R.random((3, 4)) > 0.5, f32(3, 4), f32(1, 4)], None, 13),
    ("TopK", [f32(3, 7), i64(3)], dict(axis=1), 13),
    ("TopK", [f32(6, 3), i64(2)], dict(axis=0, largest=0), 13),
    ("OneHot", [i64(0, 2, -1), np.array(4, np.int64), np.array([0.0, 3.0], np.float32)], dict(axis=0), 13),
    ("Einsum", [f32(2, 3, 4), f32(2, 4, 5)], dict(equation="bij,bjk->bik"), 13),
    ("Cast", [f32(3, 4) * 5], dict(to=TensorProto.INT64), 13),
    ("Cast", [i64(1, 2, 3)], dict(to=TensorProto.FLOAT), 13),
    ("CastLike", [i64(1, 2), f32(1)], None, 15),
    ("Clip", [f32(3, 4), np.array(-0.5, np.float32), np.array(0.7, np.float32)], None, 13),
    ("Clip", [f32(3, 4), None, np.array(0.2, np.float32)], None, 13),
    ("Clip", [f32(3, 4)], dict(min=-0.1, max=0.3), 6),
    ("HardSigmoid", [f32(3, 4)], dict(alpha=0.3, beta=0.4), 13),
    ("HardSwish", [f32(3, 4) * 4], None, 14),
    ("LeakyRelu", [f32(3, 4)], dict(alpha=0.2), 13),
    ("PRelu", [f32(2, 3, 4), f32(3, 1)], None, 13),
    ("Elu", [f32(3, 4)], dict(alpha=0.7), 13),
    ("Selu", [f32(3, 4)], None, 13),
    ("Gelu", [f32(3, 4)], None, 20),
    ("Gelu", [f32(3, 4)], dict(approximate="tanh"), 20),
    ("Erf", [f32(3, 4)], None, 13),
    ("Pow", [np.abs(f32(3, 4)), np.array(1.7, np.float32)], None, 13),
    ("Pow", [f32(3, 4), np.array(2, np.int64)], None, 15),
    ("Mod", [f32(3, 4) * 5, np.array(1.5, np.float32)], dict(fmod=1), 13),
    ("Mod", [i64(-7, 7, 5), i64(3, -3, 3)], None, 13),
    ("Div", [i64(-7, 7, 5), i64(2, 2, -2)], None, 13),
    ("Max", [f32(3, 4), f32(4), f32(3, 1)], None, 13),
    ("Min", [f32(3, 4), f32(4)], None, 13),
    ("Sum", [f32(3, 4), f32(4)], None, 13),
    ("Mean", [f32(3, 4), f32(4)], None, 13),
    ("Sub", [f32(3, 4), f32(4)], None, 13),
    ("Equal", [i64(1, 2, 3), i64(1, 0, 3)], None, 13),
    ("Greater", [f32(3), f32(3)], None, 13),
    ("LessOrEqual", [f32(3), f32(3)], None, 16),
    ("Not", [R.random(4) > 0.5], None, 13),
    ("And", [R.random(4) > 0.5, R.random(4) > 0.5], None, 13),
    ("CumSum", [f32(3, 4), np.array(1, np.int64)], None, 14),
    ("DepthToSpace", [f32(1, 8, 2, 3)], dict(blocksize=2, mode="DCR"), 13),
    ("DepthToSpace", [f32(1, 8, 2, 3)], dict(blocksize=2, mode="CRD"), 13),
    ("SpaceToDepth", [f32(1, 2, 4, 6)], dict(blocksize=2), 13),
    ("Trilu", [f32(4, 5), np.array(1, np.int64)], dict(upper=0), 14),
    ("Round", [np.array([0.5, 1.5, -0.5, 2.4], np.float32)], None, 13),
    # recurrent cells: (seq 5, batch 2, input 3), hidden 4; W, R, B per direction, initial states
    ("GRU", [f32(5, 2, 3), f32(2, 12, 3), f32(2, 12, 4), f32(2, 24), None, f32(2, 2, 4)],
     dict(hidden_size=4, direction="bidirectional", linear_before_reset=1), 14),
    ("GRU", [f32(5, 2, 3), f32(1, 12, 3), f32(1, 12, 4), f32(1, 24)],
     dict(hidden_size=4, direction="reverse"), 14),
    ("LSTM", [f32(5, 2, 3), f32(2, 16, 3), f32(2, 16, 4), f32(2, 32), np.array([5, 5], np.int32), f32(2, 2, 4),
              f32(2, 2, 4), f32(2, 12)], dict(hidden_size=4, direction="bidirectional"), 14),
    ("LSTM", [f32(5, 2, 3), f32(1, 16, 3), f32(1, 16, 4)], dict(hidden_size=4, clip=0.5), 14),
    ("GRU", [f32(5, 2, 3), f32(1, 12, 3), f32(1, 12, 4)], dict(hidden_size=4, clip=0.3), 14),
    ("RNN", [f32(5, 2, 3), f32(1, 4, 3), f32(1, 4, 4), f32(1, 8)], dict(hidden_size=4, activations=["Relu"]), 14),
    ("RNN", [f32(5, 2, 3), f32(2, 4, 3), f32(2, 4, 4)], dict(hidden_size=4, direction="bidirectional", clip=0.2), 14),
] + [(op, [f32(3, 4) if op not in ("Log", "Sqrt") else np.abs(f32(3, 4)) + 0.1], None, 13)
     for op in ("Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Abs", "Neg", "Reciprocal", "Floor", "Ceil",
                "Sign", "Sin", "Cos", "Softplus", "Softsign", "Identity")]


@pytest.mark.parametrize("op, inputs, attrs, opset", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_rule_computes_what_onnxruntime_computes(op, inputs, attrs, opset):
    outputs = {"TopK": 2, "GRU": 2, "RNN": 2, "LSTM": 3}.get(op, 1)
    model, feeds = one_node(op, inputs, attrs, opset, outputs)
    want = runtime.session(model).run(None, feeds)
    got = Interpreter(model).run(feeds)
    for i, w in enumerate(want):
        g = got[f"y{i}"].detach().numpy()
        assert g.shape == w.shape, (op, g.shape, w.shape)
        if np.issubdtype(w.dtype, np.floating):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("sizes", [[2, 3], [3, 3, 1], [7, 1]])
def test_split_by_sizes_and_into_equal_parts(sizes):
    x = f32(7, 4)
    n = len(sizes)
    for model, feeds in (one_node("Split", [x, i64(*sizes)], dict(axis=0), 13, n) if sum(sizes) == 7 else
                         one_node("Split", [f32(sum(sizes), 4), i64(*sizes)], dict(axis=0), 13, n),
                         one_node("Split", [x], dict(axis=0, num_outputs=n), 18, n)):
        want = runtime.session(model).run(None, feeds)
        got = Interpreter(model).run(feeds)
        for i, w in enumerate(want):
            np.testing.assert_allclose(got[f"y{i}"].numpy(), w, rtol=1e-6)


def test_every_rule_in_the_table_has_a_case_here():
    tested = {c[0] for c in CASES} | {"Split", "Dropout", "Xor", "Less", "GreaterOrEqual", "Or", "Mish",
                                      "Add", "Mul", "RMSNormalization", "SimplifiedLayerNormalization"}
    assert set(RULES) | set(MULTI) <= tested, sorted((set(RULES) | set(MULTI)) - tested)


def test_ops_without_a_rule_and_subgraphs_are_named():
    body = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "body", [], [])
    loop = helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=body, name="branch")
    odd = helper.make_node("NonMaxSuppression", ["x"], ["z"], name="nms")
    g = helper.make_graph([loop, odd], "g", [], [])
    said = unsupported(helper.make_model(g))
    assert said == ["If (node 'branch': a subgraph)", "NonMaxSuppression (node 'nms')"]
