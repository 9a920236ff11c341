"""The Python API: onnxprune.analyze / prune / validate, PruneResult.save.

Tiny onnx.helper models from tests/fixtures_cli.py; no torch.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import onnxprune
from onnxprune.cli import main
from tests.helpers import fixtures_cli as F
from tests.helpers.paths import FIXTURES


@pytest.fixture
def model():
    return F.classifier()


@pytest.fixture
def model_path(tmp_path, model):
    return F.save(model, tmp_path)


def group_with(groups, first_member: str):
    return next(g for g in groups.groups if g.prunable and g.members[0] == first_member)


# ---------------------------------------------------------------- analyze

def test_analyze_path_and_model_proto_agree(model, model_path):
    from_path, from_proto = onnxprune.analyze(model_path), onnxprune.analyze(model)
    assert from_path.to_dict() == from_proto.to_dict()
    assert from_path.source_path == model_path and from_proto.source_path is None


def test_analyze_finds_the_two_prunable_groups(model):
    groups = onnxprune.analyze(model)
    assert isinstance(groups, onnxprune.Groups)
    assert {tuple(g.members): g.units for g in groups.prunable} == {
        ("conv1", "bn1", "conv2"): F.C1, ("conv2", "fc"): F.C2}
    frozen = [g for g in groups.groups if not g.prunable]
    assert any("graph input" in r for g in frozen for r in g.frozen)
    assert any("graph output" in r for g in frozen for r in g.frozen)
    assert groups.params_total == F.param_count(model)


def test_analyze_does_not_mutate_the_model_passed_in(model):
    before = model.SerializeToString()
    onnxprune.analyze(model, input_shapes={"input": [2, 3, 8, 8]}, exclude=["bn*"])
    assert model.SerializeToString() == before


def test_prune_does_not_mutate_the_model_passed_in(model):
    before = model.SerializeToString()
    result = onnxprune.prune(model, ratio=0.5, input_shapes={"input": [2, 3, 8, 8]})
    result.masked()
    assert model.SerializeToString() == before
    assert result.model is not model


def test_prune_does_not_modify_the_input_file(model_path, tmp_path):
    before = open(model_path, "rb").read()
    onnxprune.prune(model_path, ratio=0.5).save(tmp_path / "out.onnx")
    assert open(model_path, "rb").read() == before


# ---------------------------------------------------------------- prune

def test_prune_returns_result_with_model_report_and_masked(model):
    result = onnxprune.prune(model, ratio=0.3)
    assert isinstance(result, onnxprune.PruneResult)
    assert isinstance(result.model, onnx.ModelProto)
    onnx.checker.check_model(result.model, full_check=True)
    rep = result.report
    assert isinstance(rep, onnxprune.PruneReport)
    assert rep.params["before"] > rep.params["after"] > 0
    assert rep.macs["before"] > rep.macs["after"] > 0
    assert rep.params["after"] == F.param_count(result.model)
    assert rep.to_dict()["criterion"] == "l2" and rep.to_dict()["ratio"] == 0.3

    masked = result.masked()
    assert isinstance(masked, onnx.ModelProto)
    assert F.param_count(masked) == F.param_count(model)
    x = F.inputs(4)
    (yp,), (ym,) = F.run(result.model, {"input": x}), F.run(masked, {"input": x})
    np.testing.assert_allclose(yp, ym, rtol=1e-4, atol=1e-5)


def test_prune_that_removes_nothing_is_an_error_not_a_success(model):
    # "A no-op is an error, never a success."
    with pytest.raises(onnxprune.OnnxPruneError, match="removes no channel"):
        onnxprune.prune(model, ratio=0.0)
    gid = group_with(onnxprune.analyze(model), "conv1").id
    with pytest.raises(onnxprune.OnnxPruneError, match="removes no channel"):
        onnxprune.prune(model, keep={gid: list(range(F.C1))})


def test_prune_keep_keeps_exactly_those_channels(model):
    gid = group_with(onnxprune.analyze(model), "conv1").id
    result = onnxprune.prune(model, keep={gid: [0, 2]})
    w0, w1 = F.conv_weight(model, "conv1"), F.conv_weight(result.model, "conv1")
    assert w1.shape == (2, 3, 3, 3)
    np.testing.assert_array_equal(w1, w0[[0, 2]])
    # The consumer loses the matching input channels and nothing else.
    c0, c1 = F.conv_weight(model, "conv2"), F.conv_weight(result.model, "conv2")
    assert c1.shape == (F.C2, 2, 3, 3)
    np.testing.assert_array_equal(c1, c0[:, [0, 2]])
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer}
    orig = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    bn = next(n for n in result.model.graph.node if n.op_type == "BatchNormalization")
    for name, name0 in zip(bn.input[1:], ["bn1.scale", "bn1.bias", "bn1.mean", "bn1.var"]):
        np.testing.assert_array_equal(inits[name], orig[name0][[0, 2]])
    kept = {g["id"]: g["kept"] for g in result.report.groups}
    assert kept[gid] == 2
    assert result.report.criterion == "explicit"


def test_prune_keep_of_frozen_group_is_a_user_error(model):
    frozen = next(g for g in onnxprune.analyze(model).groups if not g.prunable)
    with pytest.raises(onnxprune.OnnxPruneError, match="frozen"):
        onnxprune.prune(model, keep={frozen.id: [0]})


def test_prune_bad_ratio_is_a_user_error(model):
    with pytest.raises(onnxprune.OnnxPruneError, match="ratio"):
        onnxprune.prune(model, ratio=1.5)


def test_prune_all_frozen_model_says_nothing_to_prune():
    with pytest.raises(onnxprune.OnnxPruneError, match="nothing to prune"):
        onnxprune.prune(F.single_conv())


# ---------------------------------------------------------------- save

def test_save_keeps_opset_ir_producer_metadata_and_doc_strings(model_path, tmp_path):
    out = tmp_path / "out.onnx"
    onnxprune.prune(model_path, ratio=0.5).save(out)
    saved, original = onnx.load(out), onnx.load(model_path)
    assert [(o.domain, o.version) for o in saved.opset_import] == \
        [(o.domain, o.version) for o in original.opset_import]
    assert saved.ir_version == original.ir_version == F.IR_VERSION
    assert saved.producer_name == F.PRODUCER
    assert saved.producer_version == F.PRODUCER_VERSION
    assert {p.key: p.value for p in saved.metadata_props} == F.METADATA
    assert saved.doc_string == F.MODEL_DOC
    assert saved.graph.doc_string == F.GRAPH_DOC
    assert saved.graph.name == original.graph.name


def test_save_from_model_proto_writes_a_loadable_model(model, tmp_path):
    out = tmp_path / "out.onnx"
    result = onnxprune.prune(model, ratio=0.5)
    result.save(out)
    assert os.listdir(tmp_path) == ["out.onnx"], "no data file or temp file beside it"
    loaded = onnx.load(out)
    assert loaded.SerializeToString() == result.model.SerializeToString()


def test_save_into_missing_folder_is_a_user_error(model, tmp_path):
    result = onnxprune.prune(model, ratio=0.5)
    with pytest.raises(onnxprune.OnnxPruneError, match="does not exist"):
        result.save(tmp_path / "nodir" / "out.onnx")
    assert os.listdir(tmp_path) == []


@pytest.fixture
def wide_model():
    """Wide enough that pruned weights stay above model.save's 1 KiB external-data threshold."""
    return F.classifier(c1=16, c2=32)


def test_cli_prunes_external_data_model_into_model_and_data_file(wide_model, tmp_path):
    model = wide_model
    src = F.save_external(model, tmp_path, "model.onnx", location="w.data")
    before = {n: (tmp_path / n).read_bytes() for n in ("model.onnx", "w.data")}
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, ["prune", src, "-o", os.fspath(out), "--ratio", "0.5"])
    assert result.exit_code == 0, result.output
    assert set(os.listdir(tmp_path)) == {"model.onnx", "w.data", "out.onnx", "out.onnx.data"}
    assert {n: (tmp_path / n).read_bytes() for n in before} == before, "input files were modified"

    raw = onnx.load(out, load_external_data=False)
    locations = {e.value for t in raw.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"out.onnx.data"}

    pruned = onnx.load(out)
    onnx.checker.check_model(pruned, full_check=True)
    assert F.param_count(pruned) < F.param_count(model)
    x = F.inputs(3)
    (y,) = F.run(pruned, {"input": x})
    assert y.shape == (3, F.CLASSES)
    # The pruned-from-external model equals the pruned-from-memory model.
    (y_mem,) = F.run(onnxprune.prune(model, ratio=0.5).model, {"input": x})
    np.testing.assert_allclose(y, y_mem, rtol=1e-5, atol=1e-6)
    # Moving the pair elsewhere keeps it loadable: the location is relative.
    moved = tmp_path / "moved"
    moved.mkdir()
    os.rename(out, moved / "out.onnx")
    os.rename(tmp_path / "out.onnx.data", moved / "out.onnx.data")
    F.run(onnx.load(moved / "out.onnx"), {"input": x})


def test_cli_masked_output_of_external_data_model_also_uses_external_data(wide_model, tmp_path):
    src = F.save_external(wide_model, tmp_path, "model.onnx", location="w.data")
    out, masked = tmp_path / "out.onnx", tmp_path / "masked.onnx"
    result = CliRunner().invoke(main, ["prune", src, "-o", os.fspath(out), "--masked-output",
                                       os.fspath(masked), "--ratio", "0.5"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "masked.onnx.data").exists()
    x = F.inputs(3)
    np.testing.assert_allclose(F.run(onnx.load(masked), {"input": x})[0],
                               F.run(onnx.load(out), {"input": x})[0], rtol=1e-4, atol=1e-5)


def test_api_save_of_external_data_model_keeps_external_data(wide_model, tmp_path):
    src = F.save_external(wide_model, tmp_path, "model.onnx", location="w.data")
    onnxprune.prune(src, ratio=0.5).save(tmp_path / "out.onnx")
    assert (tmp_path / "out.onnx.data").exists()
    F.run(onnx.load(tmp_path / "out.onnx"), {"input": F.inputs(2)})


def test_external_data_model_whose_pruned_tensors_are_all_small_still_saves(model, tmp_path):
    src = F.save_external(model, tmp_path, "model.onnx", location="w.data")
    result = CliRunner().invoke(main, ["prune", src, "-o", os.fspath(tmp_path / "out.onnx"),
                                       "--ratio", "0.5"])
    assert result.exit_code == 0, result.output
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".onnxprune-")]
    (y,) = F.run(onnx.load(tmp_path / "out.onnx"), {"input": F.inputs(2)})
    assert y.shape == (2, F.CLASSES)


def test_prune_never_overwrites_the_input_external_data_file(model, tmp_path):
    src = F.save_external(model, tmp_path, "model.onnx", location="pruned.onnx.data")
    before = (tmp_path / "pruned.onnx.data").read_bytes()
    result = CliRunner().invoke(main, ["prune", src, "-o", os.fspath(tmp_path / "pruned.onnx")])
    # Either refused with a user error or written elsewhere; the input must survive.
    assert "Traceback" not in result.output
    assert (tmp_path / "pruned.onnx.data").read_bytes() == before
    onnx.load(src)


# ---------------------------------------------------------------- validate

def test_validate_with_data_dict_returns_fidelity_and_accuracy(model):
    result = onnxprune.prune(model, ratio=0.3)
    x = F.inputs(12)
    y = np.random.default_rng(7).integers(0, F.CLASSES, 12)
    v = onnxprune.validate(model, result.model, data={"input": x, "labels": y}, latency_runs=3)
    assert isinstance(v, onnxprune.Validation)
    assert v.samples == 12 and v.random_inputs is False and v.warnings == []
    assert -1.0 <= v.cosine_min <= v.cosine_mean <= 1.0 + 1e-9
    assert v.max_abs_diff >= 0.0
    assert 0.0 <= v.top1_agreement <= 1.0
    (logits,) = F.run(model, {"input": x})
    assert v.accuracy_before == pytest.approx(float(np.mean(logits.argmax(1) == y)))
    (logits_p,) = F.run(result.model, {"input": x})
    assert v.accuracy_after == pytest.approx(float(np.mean(logits_p.argmax(1) == y)))
    assert v.params["before"] > v.params["after"]
    assert {"before", "after"} <= v.latency_ms.keys()
    d = v.to_dict()
    assert {"cosine_min", "cosine_mean", "max_abs_diff", "top1_agreement",
            "accuracy_before", "accuracy_after"} <= d["validation"].keys()


def test_validate_identical_models_is_exact(model):
    v = onnxprune.validate(model, model, data={"input": F.inputs(4)}, latency_runs=2)
    assert v.cosine_min == pytest.approx(1.0) and v.max_abs_diff == 0.0 and v.top1_agreement == 1.0
    assert v.accuracy_before is None and v.accuracy_after is None


def test_validate_accepts_paths_and_npz(model_path, tmp_path):
    out = tmp_path / "out.onnx"
    onnxprune.prune(model_path, ratio=0.5).save(out)
    v = onnxprune.validate(model_path, out, data=F.save_data(tmp_path), latency_runs=2)
    assert v.samples == 16 and v.accuracy_before is not None and v.accuracy_after is not None


def test_validate_without_data_warns_about_random_inputs(model):
    pruned = onnxprune.prune(model, ratio=0.5).model
    with pytest.warns(UserWarning, match="random inputs"):
        v = onnxprune.validate(model, pruned, latency_runs=2)
    assert v.random_inputs is True and any("random inputs" in w for w in v.warnings)


def test_validate_does_not_mutate_models_passed_in(model):
    pruned = onnxprune.prune(model, ratio=0.5).model
    a, b = model.SerializeToString(), pruned.SerializeToString()
    onnxprune.validate(model, pruned, data={"input": F.inputs(2)}, latency_runs=2)
    assert model.SerializeToString() == a and pruned.SerializeToString() == b


def test_validate_models_with_different_outputs_is_a_user_error(model):
    with pytest.raises(onnxprune.OnnxPruneError, match="different outputs"):
        onnxprune.validate(model, F.single_conv(), data={"input": F.inputs(2)})


def test_unsorted_graph_is_accepted_and_written_sorted():
    """onnxruntime runs graphs whose nodes are out of order; we sort them."""
    import onnx as _onnx

    from tests.helpers.oracle import check_exact
    from tests.helpers.variants import constant_nodes

    model = constant_nodes(_onnx.load(os.path.join(FIXTURES, "mixed_ts.onnx")))
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes[::-1])  # fully reversed: every edge points backwards
    groups = check_exact(model, trials=2)
    assert groups.prunable
    result = onnxprune.prune(model, ratio=0.5)
    _onnx.checker.check_model(result.model, full_check=True)


def test_validation_data_of_an_unsupported_type_is_a_user_error():
    import pytest

    from tests.helpers.graphs import Graph

    g = Graph(seed=1)
    y = g.conv(g.add("Relu", [g.conv("x", 3, 8, name="a")]), 8, 2, name="b")
    model = g.build({"x": [1, 3, 4, 4]}, [y])
    with pytest.raises(onnxprune.OnnxPruneError, match="npz path or a dict"):
        onnxprune.prune(model, ratio=0.5, validate=True, data=[{"x": 0}])
