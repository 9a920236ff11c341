"""What real exported models do that self-built ones do not, one
class at a time (symbolic spatial dims, batch fixed inside the graph, ...)."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import onnxprune
from onnxprune.cli import main
from tests.helpers.graphs import Graph


def _detector(fixed_batch: bool = False) -> onnx.ModelProto:
    """images (N, 3, h, w) -> conv stack -> GlobalAveragePool -> head. With
    ``fixed_batch`` the head flattens through a Reshape to a literal [1, 8]
    (batch 1 fixed inside, as some exporters write it)."""
    g = Graph()
    a = g.add("Relu", [g.conv("images", 3, 8, name="c1")])
    b = g.add("Relu", [g.conv(a, 8, 8, name="c2")])
    p = g.add("GlobalAveragePool", [b])
    flat = g.add("Reshape", [p, g.ints("shape", [1, 8] if fixed_batch else [-1, 8])], name="flat")
    y = g.gemm(flat, 8, 5, trans_b=1, bias_shape=(5,), name="head")
    return g.build({"images": ["N", 3, "h", "w"]}, {y: [1 if fixed_batch else "N", 5]})


def _save(model, tmp_path, name="m.onnx"):
    path = os.fspath(tmp_path / name)
    onnx.save(model, path)
    return path


def test_symbolic_spatial_dims_without_data_are_not_guessed(tmp_path):
    path = _save(_detector(), tmp_path)
    r = CliRunner().invoke(main, ["prune", path, "-o", os.fspath(tmp_path / "o.onnx")])
    assert r.exit_code == 2 and "input 'images' has h, w" in r.output
    assert not (tmp_path / "o.onnx").exists()
    assert onnxprune.analyze(path).macs is None


def test_symbolic_spatial_dims_take_their_shape_from_the_data(tmp_path):
    path = _save(_detector(), tmp_path)
    x = np.random.default_rng(0).standard_normal((8, 3, 12, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", images=x)
    out = tmp_path / "o.onnx"
    r = CliRunner().invoke(main, ["prune", path, "-o", os.fspath(out), "--calib",
                                  os.fspath(tmp_path / "calib.npz"), "--macs-target", "0.6",
                                  "--report", os.fspath(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    import json

    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["macs"]["before"] == 12 * 16 * 8 * (27 + 72) + 40  # per sample, at the data's size
    assert rep["macs"]["after"] <= 0.62 * rep["macs"]["before"]
    assert not rep["validation"]["random_inputs"]


def test_a_graph_that_fixes_batch_one_inside_calibrates_one_sample_at_a_time(tmp_path):
    path = _save(_detector(fixed_batch=True), tmp_path)
    x = np.random.default_rng(0).standard_normal((8, 3, 12, 16)).astype(np.float32)
    result = onnxprune.prune(path, calib={"images": x}, criterion="act_l2", compensate="lsq",
                             validate=True, calib_batch=4)
    assert result.report.calibration["samples"] == 6  # two held out for validation
    assert result.validation.samples == 2
    assert result.report.params["after"] < result.report.params["before"]


def _ir3_model():
    """IR version 3 (opset 8): every initializer is also listed as a graph input."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 6, 3, 3)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="c2", pads=[1, 1, 1, 1])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5]),
              helper.make_tensor_value_info("w1", TensorProto.FLOAT, [6, 3, 3, 3]),
              helper.make_tensor_value_info("w2", TensorProto.FLOAT, [4, 6, 3, 3])]
    graph = helper.make_graph(nodes, "ir3", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                                   [1, 4, 5, 5])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)])
    model.ir_version = 3
    return model


def test_old_ir_initializers_listed_as_inputs_are_weights():
    from tests.helpers.graphs import assert_prunable, exact, group_at, input_value, keep_of, pruned

    groups = exact(_ir3_model(), feeds={"x": np.ones((1, 3, 5, 5), np.float32)})
    grp = group_at(groups, "a")
    assert_prunable(grp)
    m = pruned(groups, keep_of(grp, [0, 3]))
    assert input_value(m, "c2", 1).shape == (4, 2, 3, 3)
    w2 = next(i for i in m.graph.input if i.name == "w2")
    assert [d.dim_value for d in w2.type.tensor_type.shape.dim] == [4, 2, 3, 3]
    onnx.checker.check_model(m, full_check=True)


def test_a_constant_chain_thousands_deep_needs_no_recursion():
    g = Graph()
    w = g.rand("w", (6, 3, 3, 3))
    for _ in range(3000):
        w = g.add("Identity", [w])
    b = g.rand("b", (6,))
    for _ in range(1500):
        b = g.add("Add", [b, g.init("z", np.zeros(1, np.float32))])
    a = g.add("Relu", [g.add("Conv", ["x", w, b], name="c1", pads=[1, 1, 1, 1])])
    model = g.build({"x": [1, 3, 4, 4]}, [g.conv(a, 6, 4, name="c2")])
    groups = onnxprune.analyze(model)
    assert groups.prunable
    result = onnxprune.prune(model, ratio=0.5)
    assert result.report.params["after"] < result.report.params["before"]


def test_a_calibration_folder_of_mixed_sizes_is_batched_by_size(tmp_path):
    from onnxprune.calibration.run import calibrate
    from onnxprune.select.importance import calibration_requests

    model = _detector()
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(8, 8), (8, 8), (12, 16), (8, 8)]):
        np.save(folder / f"{i}.npy", rng.standard_normal((3, h, w)).astype(np.float32))
    groups = onnxprune.analyze(model, input_shapes={"images": [1, 3, 8, 8]})
    cal = calibrate(model, os.fspath(folder), calibration_requests(groups), batch=4)
    assert cal.samples == 4


def test_a_calibration_module_that_exits_is_a_clear_error(tmp_path):
    src = tmp_path / "calib.py"
    src.write_text("import sys\ndef data():\n    sys.exit(3)\n")
    path = _save(_detector(), tmp_path)
    r = CliRunner().invoke(main, ["prune", path, "-o", os.fspath(tmp_path / "o.onnx"), "--calib",
                                  f"{src}:data", "--input-shape", "images:1,3,8,8", "--criterion", "act_l2"])
    assert r.exit_code == 2 and "SystemExit" in r.output
    assert not (tmp_path / "o.onnx").exists()


def test_static_dims_that_would_need_terabytes_are_refused_before_allocating(tmp_path):
    path = _save(_detector(), tmp_path)
    r = CliRunner().invoke(main, ["prune", path, "-o", os.fspath(tmp_path / "o.onnx"),
                                  "--input-shape", "images:1,3,400000,400000"])
    assert r.exit_code == 2 and "GiB" in r.output


def test_validate_report_cannot_overwrite_either_model(tmp_path):
    path = _save(_detector(), tmp_path)
    before = open(path, "rb").read()
    r = CliRunner().invoke(main, ["validate", path, path, "--report", path,
                                  "--input-shape", "images:1,3,8,8"])
    assert r.exit_code == 2 and open(path, "rb").read() == before


def _flagged():
    """x (N, 16) -> MLP -> Where(flag, y, -y): ``flag`` is a scalar input
    (optimum's ``use_cache_branch`` is one), one value for every sample."""
    g = Graph()
    h = g.add("Relu", [g.matmul("x", 16, 24, name="up")])
    y = g.matmul(h, 24, 4, name="down")
    z = g.add("Where", ["flag", y, g.add("Neg", [y])], name="sel")
    return g.build({"x": ["N", 16], "flag": ([], onnx.TensorProto.BOOL)}, [z])


def test_a_scalar_input_is_one_value_shared_by_every_sample(tmp_path):
    """A rank-0 input has no sample axis: a 0-d array in the data is its value
    for every sample; calibration batches, the held-out split, validation and
    the sensitivity sweep all pass it whole. Another value in a stream of
    samples starts a new batch; an array with a sample axis is refused."""
    from onnxprune.calibration.sources import batches as batches

    model = _flagged()
    path, data, cal = (str(tmp_path / n) for n in ("m.onnx", "d.npz", "c.npz"))
    onnx.save(model, path)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 16)).astype(np.float32)
    np.savez(data, x=x, flag=np.array(False))
    np.savez(cal, x=x[:40], flag=np.array(False))
    for args in (["--data", data], ["--calib", cal], ["--calib", cal, "--data", data]):
        res = CliRunner().invoke(main, ["prune", path, "-o", str(tmp_path / "p.onnx"), "--ratio", "0.25",
                                        "--round-to", "1", "-q"] + args)
        assert res.exit_code == 0, (args, res.output)
    for args in (["sensitivity", path, "--calib", cal, "-q"],
                 ["prune", path, "-o", str(tmp_path / "a.onnx"), "--auto", "--max-drop", "0.5", "--data", data, "-q"]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, (args, res.output)
    res = onnxprune.prune(path, ratio=0.25, calib={"x": x, "flag": np.array(True)}, round_to=1,
                          data={"x": x[:16], "flag": np.array(True)}, validate=True)
    assert res.validation.samples == 16 and res.validation.outputs[0].cosine_mean > 0.5
    from tests.helpers.oracle import run
    (out,) = run(res.model, {"x": x[:3], "flag": np.array(False)})
    assert out.shape == (3, 4)
    stream = [{"x": x[:5], "flag": np.array(True)}, {"x": x[5:9], "flag": np.array(True)},
              {"x": x[9:12], "flag": np.array(False)}]
    batches = list(batches(stream, ["x", "flag"], model, 64, None))
    assert [(len(b["x"]), bool(b["flag"])) for b in batches] == [(9, True), (3, False)]
    np.savez(data, x=x, flag=np.ones(64, bool))
    res = CliRunner().invoke(main, ["prune", path, "-o", str(tmp_path / "p.onnx"), "--data", data])
    assert res.exit_code == 2 and "expects a scalar" in res.output


def test_paddle_minus_one_dims_stay_in_the_written_interface(tmp_path):
    """Paddle's exporter writes an unknown dim as dim_value -1 (ch_ppocr's
    classifier: x (-1, 3, ?, ?), output (-1, 2)). With --input-shape the
    interface once came out with the shape's 1 there, which the invariants
    refused (exit 1)."""
    model = _detector()
    for vi in (model.graph.input[0], model.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].Clear()
        vi.type.tensor_type.shape.dim[0].dim_value = -1
    path = _save(model, tmp_path)
    out = tmp_path / "o.onnx"
    r = CliRunner().invoke(main, ["prune", path, "-o", os.fspath(out), "--ratio", "0.5",
                                  "--input-shape", "images:1,3,8,8"])
    assert r.exit_code == 0, r.output
    written = onnx.load(os.fspath(out))
    for vi in (written.graph.input[0], written.graph.output[0]):
        assert vi.type.tensor_type.shape.dim[0].dim_value == -1


@pytest.mark.parametrize("computed", [(1, 5, 1), (1, 5)])
def test_a_wrongly_stated_output_shape_stays_as_stated(computed):
    """ddddocr's OCR model states its output (1, seqlen) where it computes
    (seq, 1, classes); onnxruntime only warns. The rules know the computed
    shape (the Reshape rule fills in what inference missed), and the rewrite
    once wrote its 32 over the stated 1: the invariants refused the model.
    The stated interface changes only where the prune changes it."""
    from onnxprune.rewrite.engine import apply

    g = Graph()
    a = g.add("Relu", [g.conv("images", 3, 8, name="c1")])
    flat = g.add("Flatten", [g.add("GlobalAveragePool", [g.add("Relu", [g.conv(a, 8, 8, name="c2")])])])
    y = g.gemm(flat, 8, 5, trans_b=1, bias_shape=(5,), name="head")
    shape = g.add("Concat", [g.add("Shape", [y]), g.ints("one", [1])], axis=0)
    r = g.add("Reshape", [y, shape])
    groups = onnxprune.analyze(g.build({"images": ["N", 3, "h", "w"]}, {r: [4, "k", "j"]}),
                               input_shapes={"images": [1, 3, 8, 8]})
    groups.view.shapes[r] = computed  # what the rules computed, against the statement
    pruned = apply(groups, {grp.id: np.arange(grp.units // 2) for grp in groups.prunable})
    stated = pruned.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in stated] == [4, "k", "j"]


def _sklearn_like(zipmap: bool) -> onnx.ModelProto:
    """What skl2onnx writes for an MLPClassifier: MatMul/Add/Relu layers,
    Softmax, an int64 label (ArgMax) and, by default, the probabilities as a
    sequence of {label: probability} maps (ai.onnx.ml ZipMap)."""
    from onnx import TensorProto as T
    from onnx import helper as h

    g = Graph()
    hidden = g.add("Relu", [g.add("Add", [g.matmul("X", 8, 16, name="l1"), g.rand("b1", (16,))])])
    probs = g.add("Softmax", [g.add("Add", [g.matmul(hidden, 16, 3, name="l2"), g.rand("b2", (3,))])], axis=1)
    label = g.add("ArgMax", [probs], axis=1, keepdims=0, name="label")
    model = g.build({"X": ["N", 8]}, {label: ["N"], **({} if zipmap else {probs: ["N", 3]})})
    if zipmap:
        model.graph.node.append(h.make_node("ZipMap", [probs], ["output_probability"], domain="ai.onnx.ml",
                                            classlabels_int64s=[0, 1, 2], name="zipmap"))
        vi = onnx.ValueInfoProto(name="output_probability")
        vi.type.sequence_type.elem_type.map_type.key_type = T.INT64
        vi.type.sequence_type.elem_type.map_type.value_type.tensor_type.elem_type = T.FLOAT
        model.graph.output.append(vi)
    model.graph.output[0].type.tensor_type.elem_type = T.INT64
    if zipmap:
        model.opset_import.append(h.make_opsetid("ai.onnx.ml", 1))
    return model


@pytest.mark.parametrize("zipmap", [False, True])
def test_a_scikit_learn_classifier_prunes_and_its_labels_compare_by_agreement(tmp_path, zipmap):
    """ZipMap's maps once stopped the shape probe ('list' has no shape) so
    nothing was analysed, and then validation ('float() ... dict'). Maps
    compare as a (samples, labels) array; the int64 label output compares by
    agreement, not by a cosine that one label per sample would always make 1."""
    import json

    path = _save(_sklearn_like(zipmap), tmp_path)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", X=rng.standard_normal((64, 8)).astype(np.float32),
             labels=rng.integers(0, 3, 64))
    r = CliRunner().invoke(main, ["prune", path, "-o", os.fspath(tmp_path / "o.onnx"), "--ratio", "0.5",
                                  "--data", os.fspath(tmp_path / "d.npz"), "--report", os.fspath(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "r.json").read_text())
    outs = {o["name"]: o for o in rep["validation"]["outputs"]}
    assert rep["params"]["after"] < rep["params"]["before"]
    assert outs["label"]["cosine_min"] is None and 0 <= outs["label"]["top1_agreement"] <= 1
    probs = outs["output_probability" if zipmap else next(n for n in outs if n != "label")]
    assert 0 < probs["cosine_min"] <= 1 + 1e-9
    assert rep["validation"]["cosine_min"] == min(probs["cosine_min"], outs["label"]["top1_agreement"])


def test_a_model_with_a_scalar_output_validates_one_value_per_run(tmp_path):
    """plcmos (a speech quality model) returns one score with no sample axis:
    joining the runs' outputs once failed ('zero-dimensional arrays cannot be
    concatenated') and was reported as the original model failing."""
    g = Graph()
    a = g.add("Relu", [g.conv("images", 3, 8, name="c1")])
    b = g.add("Relu", [g.conv(a, 8, 8, name="c2")])
    score = g.add("ReduceMean", [g.conv(b, 8, 1, name="c3")], keepdims=0)
    path = _save(g.build({"images": [1, 3, 8, 8]}, {score: []}), tmp_path)
    r = CliRunner().invoke(main, ["prune", path, "-o", os.fspath(tmp_path / "o.onnx"), "--ratio", "0.5"])
    assert r.exit_code == 0, r.output


def _with_state(batch):
    """images (batch, 3, 8, 8) -> convs -> features, plus a recurrent-style
    state [2, 1, 8] (layers x batch x hidden, as silero-vad's and CRNNs' h0)
    summed over its layers and added to the features -> head."""
    g = Graph()
    a = g.add("Relu", [g.conv("images", 3, 8, name="c1")])
    feat = g.add("Flatten", [g.add("GlobalAveragePool", [g.add("Relu", [g.conv(a, 8, 8, name="c2")])])])
    h = g.add("ReduceSum", ["state", g.ints("layers", [0])], keepdims=0)
    y = g.gemm(g.add("Add", [feat, h]), 8, 5, trans_b=1, bias_shape=(5,), name="head")
    return g.build({"images": [batch, 3, 8, 8], "state": [2, 1, 8]}, {y: [batch, 5]})


@pytest.mark.parametrize("batch", [1, "N"])
def test_a_state_input_whose_leading_dim_is_not_the_batch_is_given_whole_to_every_run(tmp_path, batch):
    """silero-vad (audio [1, 576], state [2, 1, 128]) and CRNNs with h0
    [4, 1, 64]: random inputs stacked samples on the state's leading dim, and
    the original model 'failed' ('invalid dimensions for input: state')."""
    from onnxprune.core.data import Shared, per_run_inputs, random_feeds

    model = _with_state(batch)
    assert per_run_inputs(model) == {"state"}
    feeds = random_feeds(model, 4)
    assert isinstance(feeds["state"], Shared) and feeds["state"].shape == (2, 1, 8)
    path = _save(model, tmp_path)
    r = CliRunner().invoke(main, ["prune", path, "-o", os.fspath(tmp_path / "o.onnx"), "--ratio", "0.5"])
    assert r.exit_code == 0, r.output
    rng = np.random.default_rng(0)
    images = rng.standard_normal((40, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", images=images, state=np.zeros((2, 1, 8), np.float32))
    r = CliRunner().invoke(main, ["prune", path, "-o", os.fspath(tmp_path / "o2.onnx"), "--ratio", "0.5",
                                  "--data", os.fspath(tmp_path / "d.npz")])
    assert r.exit_code == 0, r.output
    np.savez(tmp_path / "bad.npz", images=images, state=np.zeros((40, 1, 8), np.float32))
    r = CliRunner().invoke(main, ["prune", path, "-o", os.fspath(tmp_path / "o3.onnx"), "--ratio", "0.5",
                                  "--data", os.fspath(tmp_path / "bad.npz")])
    assert r.exit_code == 2 and "one for every run" in r.output
    assert not (tmp_path / "o3.onnx").exists()


def test_nothing_to_prune_with_no_group_names_the_largest_weight_and_its_reader():
    """A dynamically quantized detector (ConvInteger throughout) has no
    group at all: the error once read 'all 0 channel groups are frozen'."""
    from onnxprune import stages
    from onnxprune.core.errors import OnnxPruneError

    g = Graph()
    g.extra_opsets["example.custom"] = 1
    y = g.add("Mystery", ["x", g.rand("big_w", (8, 8))], domain="example.custom", name="mystery")
    model = g.build({"x": ["N", 8]}, {y: ["N", 8]})
    groups = onnxprune.analyze(model)
    assert not groups.groups
    with pytest.raises(OnnxPruneError, match=r"no weight is in a channel group \(the largest weight, 'big_w', "
                                             r"is read by 1 Mystery \(an op with no rule\)"):
        stages.make_plan(groups, None, stages.PruneConfig(ratio=0.3))
