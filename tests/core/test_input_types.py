"""Random inputs take each input's own element type (onnx's table, not a
short list that sent int16 or uint64 inputs float32 feeds), and run."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxprune.core import runtime
from onnxprune.core.data import np_type, random_feeds
from onnxprune.core.errors import OnnxPruneError

TYPES = [TensorProto.INT16, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64, TensorProto.INT8,
         TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BOOL]


def cast_model(elem: int) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], "g",
                              [helper.make_tensor_value_info("x", elem, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("elem", TYPES, ids=[TensorProto.DataType.Name(t) for t in TYPES])
def test_random_inputs_have_the_inputs_type_and_run(elem):
    model = cast_model(elem)
    feeds = random_feeds(model, 4)
    assert feeds["x"].dtype == np.dtype(helper.tensor_dtype_to_np_dtype(elem)) and feeds["x"].shape == (4, 3)
    runtime.session(model).run(None, feeds)


def test_a_string_input_gets_no_random_feed():
    assert np_type(TensorProto.STRING) is None
    with pytest.raises(OnnxPruneError, match="'x' holds string values"):
        random_feeds(cast_model(TensorProto.STRING), 2)
