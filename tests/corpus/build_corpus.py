"""Build the corpus of broken inputs in this folder (bad input is safe).

    python tests/corpus/build_corpus.py            # rewrite the files here
    python tests/corpus/build_corpus.py OUT_DIR    # or somewhere else

One file per class of bad input, named for it; ``tests/test_corpus.py`` runs
the CLI on each and expects a one-line ``onnxprune:`` error, exit code 2, the
input files unchanged and nothing written. ``model.onnx`` is the one good
model: the data and calibration cases are run against it.

The output is byte-for-byte reproducible (no random generator, no clock:
weights are small rationals, .npz archives carry a fixed timestamp), so the
test can rebuild the corpus and compare it with the committed files.

Classes:

- models: ``missing_external_data.onnx`` (its .bin is absent),
  ``truncated_external_data.onnx`` (+ a .bin cut in half),
  ``external_data_escapes.onnx`` (external data named outside its folder),
  ``empty.onnx``, ``truncated_model.onnx``, ``png_bytes.onnx``,
  ``json_text.onnx``, ``declared_shape_mismatch.onnx`` (fails the checker),
  ``inconsistent_shapes.onnx`` (passes the checker, fails in onnxruntime),
  ``unknown_domain.onnx``, ``opset_mismatch.onnx``, ``cyclic.onnx``,
  ``undefined_tensor.onnx``, ``duplicate_output_names.onnx``, ``no_nodes.onnx``,
  ``no_inputs.onnx`` (its input stored as a weight: nothing depends on data),
  ``custom_op.onnx`` (valid ONNX with an op onnxruntime does not know);
- data for ``model.onnx`` (``--data`` / ``--calib``): ``nan.npz``, ``inf.npz``,
  ``strings.npz``, ``object_array.npz``, ``scalar.npz``,
  ``wrong_input_name.npz``, ``wrong_dtype.npz``, ``wrong_shape.npz``,
  ``zero_samples.npz``, ``empty_file.npz`` (0 bytes), ``no_arrays.npz`` (a
  valid archive with nothing in it), ``pickled.npz`` (a pickle whose loading
  would create a folder ``PICKLE_EXECUTED``: allow_pickle must stay False),
  ``truncated_archive.npz``, ``damaged_array.npz`` (a readable archive whose
  array is cut short), ``npy_named_npz.npz`` (an .npy under an .npz name),
  ``single_array.npy`` (an .npy given as ``--data``), ``bad_labels.npz``
  (string labels),
  ``mixed_folder/`` (one good sample, one of another channel count, one
  string array, and a stray text file);
- calibration modules (``--calib module.py:function``): ``calib_raises.py``,
  ``calib_garbage.py``, ``calib_exits.py``, ``calib_import_fails.py``,
  ``calib_argparse.py`` (parses its own command line at import).
"""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import sys
import zipfile
import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET, IR_VERSION = 17, 8
C_IN, C1, C2, CLASSES, SIDE = 3, 4, 6, 5, 4  # input (N, 3, 4, 4) -> logits (N, 5)
SAMPLES = 4
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


# -- the good model and its pieces ------------------------------------------------------
def _weights(name: str, shape, salt: int) -> onnx.TensorProto:
    """Exact, platform-independent values: multiples of 1/8 in [-1, 1]."""
    n = int(np.prod(shape))
    values = ((np.arange(n) * 37 + salt * 11) % 17 - 8) / 8
    return numpy_helper.from_array(values.reshape(shape).astype(np.float32), name)


def model(c2_in: int = C1, output_dims=("N", CLASSES)) -> onnx.ModelProto:
    """Conv-Relu-Conv-Relu-GlobalAveragePool-Flatten-Gemm, two prunable groups."""
    inits = [
        _weights("conv1.weight", (C1, C_IN, 3, 3), 1), _weights("conv1.bias", (C1,), 2),
        _weights("conv2.weight", (C2, c2_in, 3, 3), 3), _weights("conv2.bias", (C2,), 4),
        _weights("fc.weight", (CLASSES, C2), 5), _weights("fc.bias", (CLASSES,), 6),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["c1"], name="conv1",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "corpus",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", C_IN, SIDE, SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, list(output_dims))],
        initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                          producer_name="onnxprune-corpus")
    m.ir_version = IR_VERSION
    return m


def _node(m: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in m.graph.node if n.name == name)


def _external(m: onnx.ModelProto, location: str) -> tuple[onnx.ModelProto, bytes]:
    """Every initializer moved to external data at ``location`` -> (model, the
    bytes that file must hold), offsets packed one after another."""
    from onnx.external_data_helper import set_external_data

    data = bytearray()
    for t in m.graph.initializer:
        raw = t.raw_data
        set_external_data(t, location, offset=len(data), length=len(raw))
        data += raw
        t.ClearField("raw_data")
    return m, bytes(data)


# -- samples ----------------------------------------------------------------------------
def inputs(n: int = SAMPLES) -> np.ndarray:
    values = ((np.arange(n * C_IN * SIDE * SIDE) * 29) % 13 - 6) / 4
    return values.reshape(n, C_IN, SIDE, SIDE).astype(np.float32)


def npz_bytes(arrays: dict, allow_pickle: bool = False) -> bytes:
    """np.savez, with a fixed timestamp (reproducible bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_TIME)
            info.external_attr = 0o644 << 16
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=allow_pickle)
    return buf.getvalue()


def damaged_npz(arrays: dict) -> bytes:
    """A readable zip whose members are .npy files cut short (the header
    promises more data than follows)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_TIME)
            info.external_attr = 0o644 << 16
            whole = npy_bytes(arr)
            zf.writestr(info, whole[: len(whole) - arr.nbytes // 2])
    return buf.getvalue()


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=False)
    return buf.getvalue()


class _MakesAFolder:
    """Unpickling this creates ``PICKLE_EXECUTED`` in the current folder: proof
    that a loader ran code from the file."""

    def __reduce__(self):
        return os.makedirs, ("PICKLE_EXECUTED",)


def png_bytes() -> bytes:
    """A valid 1x1 grey PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x80", 9))
            + chunk(b"IEND", b""))


CALIB_RAISES = '''\
"""Calibration functions that raise: at once, or after one good sample."""
import numpy as np


def data():
    raise RuntimeError("the dataset server is down")


def midway():
    yield {"input": np.zeros((1, 3, 4, 4), np.float32)}
    raise KeyError("image_0001.jpg")
'''

CALIB_GARBAGE = '''\
"""Calibration functions that return something other than {input: array} dicts."""


def number():
    return 42


def strings():
    return ["not", "a", "dict"]


def text_arrays():
    return [{"input": "a picture of a cat"}]


def nothing():
    return []
'''

CALIB_EXITS = '''\
"""Calibration functions that call sys.exit: at once, or from inside a generator."""
import sys

import numpy as np


def data():
    sys.exit(3)


def midway():
    yield {"input": np.zeros((1, 3, 4, 4), np.float32)}
    sys.exit("giving up")
'''


CALIB_IMPORT_FAILS = '''\
"""A calibration module that cannot even be imported."""
import numpy as np

raise ImportError("No module named 'torchvision'")


def data():
    yield {"input": np.zeros((1, 3, 4, 4), np.float32)}
'''


CALIB_ARGPARSE = '''\
"""A script that parses its own command line when imported (argparse prints a
usage text and exits with status 2)."""
import argparse

import numpy as np

parser = argparse.ArgumentParser(description="export calibration images")
parser.add_argument("--images", required=True)
args = parser.parse_args()


def data():
    yield {"input": np.zeros((1, 3, 4, 4), np.float32)}
'''


# -- the corpus -------------------------------------------------------------------------
def files() -> dict[str, bytes]:
    """Relative path -> bytes, for every file of the corpus."""
    out: dict[str, bytes] = {}
    good = model()
    onnx.checker.check_model(good, full_check=True)
    out["model.onnx"] = good.SerializeToString()

    # external data
    m, _ = _external(model(), "missing_external_data.bin")
    out["missing_external_data.onnx"] = m.SerializeToString()
    m, data = _external(model(), "truncated_external_data.bin")
    out["truncated_external_data.onnx"] = m.SerializeToString()
    out["truncated_external_data.bin"] = data[: len(data) // 2]
    m, _ = _external(model(), "../external_data_escapes.bin")
    out["external_data_escapes.onnx"] = m.SerializeToString()

    # not a (whole) model
    out["empty.onnx"] = b""
    raw = out["model.onnx"]
    out["truncated_model.onnx"] = raw[: len(raw) // 2]
    out["png_bytes.onnx"] = png_bytes()
    out["json_text.onnx"] = json.dumps({"model": "resnet50", "format": "onnx"}).encode() + b"\n"

    # models the checker or onnxruntime refuses
    out["declared_shape_mismatch.onnx"] = model(output_dims=("N", CLASSES + 2)).SerializeToString()
    out["inconsistent_shapes.onnx"] = model(c2_in=C1 + 1).SerializeToString()
    m = model()
    _node(m, "relu2").domain = "com.example.unknown"
    out["unknown_domain.onnx"] = m.SerializeToString()
    m = model()
    _node(m, "relu2").op_type = "Gelu"  # an opset 20 op in an opset 17 model
    out["opset_mismatch.onnx"] = m.SerializeToString()
    m = model()
    _node(m, "relu1").input[0] = "r2"  # relu1 <- conv2 <- relu1
    out["cyclic.onnx"] = m.SerializeToString()
    m = model()
    _node(m, "relu2").input[0] = "ghost"
    out["undefined_tensor.onnx"] = m.SerializeToString()
    m = model()
    _node(m, "relu2").output[0] = "r1"  # r1 written twice
    _node(m, "gap").input[0] = "r1"
    out["duplicate_output_names.onnx"] = m.SerializeToString()
    m = model()
    del m.graph.node[:]
    del m.graph.initializer[:]
    m.graph.output[0].CopyFrom(helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                             ["N", C_IN, SIDE, SIDE]))
    out["no_nodes.onnx"] = m.SerializeToString()

    m = model()  # the input stored as a weight: nothing depends on data
    m.graph.initializer.append(numpy_helper.from_array(inputs(2), "input"))
    del m.graph.input[:]
    m.graph.output[0].CopyFrom(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, CLASSES]))
    out["no_inputs.onnx"] = m.SerializeToString()
    m = model()  # a custom op: valid ONNX, unknown to onnxruntime
    _node(m, "relu2").domain = "com.example"
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    out["custom_op.onnx"] = m.SerializeToString()

    # data for model.onnx
    x = inputs()
    flat = np.arange(x.size).reshape(x.shape)
    out["nan.npz"] = npz_bytes({"input": np.where(flat == 5, np.nan, x).astype(np.float32)})
    out["inf.npz"] = npz_bytes({"input": np.where(flat == 5, -np.inf, x).astype(np.float32)})
    out["strings.npz"] = npz_bytes({"input": np.array([["a", "b"], ["c", "d"]])})
    obj = np.empty(SAMPLES, dtype=object)
    obj[:] = [[1.0, 2.0]] * SAMPLES
    out["object_array.npz"] = npz_bytes({"input": obj}, allow_pickle=True)
    out["scalar.npz"] = npz_bytes({"input": np.float32(1.0)})
    out["wrong_input_name.npz"] = npz_bytes({"images": x})
    out["wrong_dtype.npz"] = npz_bytes({"input": x.astype(np.complex64)})
    out["wrong_shape.npz"] = npz_bytes({"input": np.zeros((SAMPLES, C_IN, SIDE + 1, SIDE), np.float32)})
    out["zero_samples.npz"] = npz_bytes({"input": np.zeros((0, C_IN, SIDE, SIDE), np.float32)})
    out["empty_file.npz"] = b""
    out["no_arrays.npz"] = npz_bytes({})
    out["pickled.npz"] = pickle.dumps({"input": _MakesAFolder()}, protocol=2)
    good = npz_bytes({"input": x})
    out["truncated_archive.npz"] = good[: len(good) // 2]
    out["damaged_array.npz"] = damaged_npz({"input": x})
    out["npy_named_npz.npz"] = npy_bytes(x)
    out["single_array.npy"] = npy_bytes(x)  # fine for --calib, not for --data (one array per name)
    out["bad_labels.npz"] = npz_bytes({"input": x, "labels": np.array(["cat", "dog", "cat", "cow"])})
    out["mixed_folder/0.npy"] = npy_bytes(x[0])
    out["mixed_folder/1.npy"] = npy_bytes(np.zeros((C_IN + 2, SIDE, SIDE), np.float32))
    out["mixed_folder/2.npz"] = npz_bytes({"input": np.array(["cat.jpg"])})
    out["mixed_folder/README.txt"] = b"samples exported by hand\n"

    # calibration modules
    out["calib_raises.py"] = CALIB_RAISES.encode()
    out["calib_garbage.py"] = CALIB_GARBAGE.encode()
    out["calib_exits.py"] = CALIB_EXITS.encode()
    out["calib_import_fails.py"] = CALIB_IMPORT_FAILS.encode()
    out["calib_argparse.py"] = CALIB_ARGPARSE.encode()
    return out


def build(folder) -> list[str]:
    """Write the corpus into ``folder``; -> the relative paths written."""
    written = []
    for rel, data in files().items():
        path = os.path.join(os.fspath(folder), *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        written.append(rel)
    return written


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    for rel in build(target):
        print(os.path.join(target, rel))
