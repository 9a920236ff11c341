"""Models with external data are read lazily (tensors.py): weights stay in
their files, mapped per tensor when read, and the output's data file is
written tensor by tensor. These tests run that path on small models; the
thresholds that make a tensor lazy or mapped are lowered where a test must
force the path a multi-GB model takes (benchmarks/big_model.py measures it)."""
from __future__ import annotations

import copy
import json
import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.check.validate import full_check
from onnxprune.cli import main
from onnxprune.core import runtime, tensors
from onnxprune.core.model import load

SIZES = (64, 512, 512, 10)  # w1 is 512 x 512 float32: 1 MiB, so it is aligned when written


def mlp(seed: int = 0) -> onnx.ModelProto:
    """MatMul + Add (+ Relu) layers; two prunable hidden sizes."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    last = len(SIZES) - 2
    for i, (a, b) in enumerate(zip(SIZES, SIZES[1:])):
        inits.append(numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"w{i}"))
        inits.append(numpy_helper.from_array(rng.standard_normal(b).astype(np.float32), f"b{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"matmul{i}"))
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], ["y" if i == last else f"a{i}"], name=f"add{i}"))
        if i != last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", SIZES[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", SIZES[-1]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def save_external(model: onnx.ModelProto, folder, name: str = "mlp.onnx", location: str = "mlp.data") -> str:
    path = os.path.join(os.fspath(folder), name)
    onnx.save_model(copy.deepcopy(model), path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return path


def feeds(n: int = 5) -> dict:
    return {"x": np.random.default_rng(7).standard_normal((n, SIZES[0])).astype(np.float32)}


def run(model) -> np.ndarray:
    """Through the package's own session: it knows where lazy weights are."""
    return runtime.session(model).run(None, feeds())[0]


def test_large_external_weights_stay_in_their_file_after_load(tmp_path):
    src = save_external(mlp(), tmp_path)
    model = load(src).model
    inits = {t.name: t for t in model.graph.initializer}
    for name in ("w0", "w1", "w2"):
        assert inits[name].data_location == TensorProto.EXTERNAL
        assert not inits[name].HasField("raw_data")
        assert tensors.is_lazy(inits[name])
    # 2 KiB biases are metadata-sized: read in at load, as before.
    assert inits["b0"].data_location == TensorProto.DEFAULT and inits["b0"].HasField("raw_data")
    expected = {t.name: numpy_helper.to_array(t) for t in mlp().graph.initializer}
    for name, t in inits.items():
        np.testing.assert_array_equal(tensors.to_array(t), expected[name])


def test_a_large_lazy_value_is_a_read_only_map_of_its_file(tmp_path):
    w1 = next(t for t in load(save_external(mlp(), tmp_path)).model.graph.initializer if t.name == "w1")
    value = tensors.to_array(w1)
    assert isinstance(value.base, np.memmap)
    assert not value.flags.writeable


def test_lazy_model_prunes_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(tensors, "MAP_BYTES", 0)  # every lazy value read through a map
    src = save_external(mlp(), tmp_path)
    groups = onnxprune.analyze(src)
    assert len(groups.prunable) == 2
    rng = np.random.default_rng(3)
    keep = {g.id: np.sort(rng.choice(g.units, g.units // 3, replace=False)) for g in groups.prunable}
    result = onnxprune.prune(src, keep=keep)
    full_check(result.model)
    y = run(result.model)
    np.testing.assert_allclose(y, run(result.masked()), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y, run(onnxprune.prune(mlp(), keep=keep).model), rtol=1e-6, atol=1e-6)
    result.save(tmp_path / "out.onnx")
    onnx.checker.check_model(os.fspath(tmp_path / "out.onnx"), full_check=True)
    np.testing.assert_allclose(run(os.fspath(tmp_path / "out.onnx")), y, rtol=1e-6, atol=1e-6)


def test_unchanged_weights_stay_lazy_and_save_inline_when_asked(tmp_path):
    src = save_external(mlp(), tmp_path)
    first = onnxprune.analyze(src).prunable[0]
    result = onnxprune.prune(src, keep={first.id: list(range(0, first.channels, 2))})
    lazy = {t.name for t in result.model.graph.initializer if tensors.is_lazy(t)}
    assert lazy == {"w2"}, "only the weights the plan slices are read into memory"
    y = run(result.model)  # in-memory and lazy weights in one session
    result.save(tmp_path / "inline.onnx", external_data=False)
    assert not (tmp_path / "inline.onnx.data").exists()
    np.testing.assert_allclose(run(onnx.load(tmp_path / "inline.onnx")), y, rtol=1e-6, atol=1e-6)


def test_big_model_path_on_a_small_model(tmp_path, monkeypatch):
    """What a multi-GB model does, forced: every external tensor lazy and
    mapped; the original is never deep-copied; validation (the CLI default)
    runs the original before the in-place rewrite and the pruned model from
    the files as written; the data file is written aligned, tensor by tensor."""
    monkeypatch.setattr(tensors, "EAGER_BYTES", 0)
    monkeypatch.setattr(tensors, "MAP_BYTES", 0)
    src = save_external(mlp(), tmp_path)
    before = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}
    compared = []
    from onnxprune.stages import results, steps

    real_compare = results.run_compare

    def spy(ref, model, **kw):
        compared.append(tensors.has_lazy(model))
        return real_compare(ref, model, **kw)

    real_deepcopy = copy.deepcopy

    def no_model_copies(x, memo=None):
        assert not isinstance(x, onnx.ModelProto), "a whole model was deep-copied"
        return real_deepcopy(x, memo)

    for module in (results, steps):  # validation of a model in memory, or as written
        monkeypatch.setattr(module, "run_compare", spy)
    monkeypatch.setattr(copy, "deepcopy", no_model_copies)
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = CliRunner().invoke(main, ["prune", src, "-o", os.fspath(out), "--ratio", "0.5",
                                       "--report", os.fspath(report)])
    monkeypatch.setattr(copy, "deepcopy", real_deepcopy)
    assert result.exit_code == 0, result.output
    assert compared == [True], "validated once, from the written files"
    assert json.loads(report.read_text())["validation"]["cosine_min"] > 0
    assert sorted(os.listdir(tmp_path)) == sorted([*before, "out.onnx", "out.onnx.data", "report.json"])
    assert {n: (tmp_path / n).read_bytes() for n in before} == before, "the input was modified"
    raw = onnx.load(out, load_external_data=False)
    for t in raw.graph.initializer:
        info = {e.key: e.value for e in t.external_data}
        assert info.get("location", "out.onnx.data") == "out.onnx.data"
        if int(info.get("length", 0)) >= tensors.ALIGN_FROM:
            assert int(info["offset"]) % tensors.ALIGN == 0
    expected = onnxprune.prune(mlp(), ratio=0.5).model
    np.testing.assert_allclose(run(os.fspath(out)), run(expected), rtol=1e-6, atol=1e-6)
    assert CliRunner().invoke(main, ["validate", src, os.fspath(out), "-q"]).exit_code == 0


def test_truncated_external_data_is_a_clean_error(tmp_path):
    src = save_external(mlp(), tmp_path)
    data = tmp_path / "mlp.data"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    result = CliRunner().invoke(main, ["prune", src, "-o", os.fspath(tmp_path / "out.onnx")])
    assert result.exit_code == 2
    assert "truncated" in result.output and "Traceback" not in result.output
    assert sorted(os.listdir(tmp_path)) == ["mlp.data", "mlp.onnx"]


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    (tmp_path / "sub").mkdir()
    save_external(mlp(), tmp_path, "mlp.onnx", "mlp.data")
    model = onnx.load(tmp_path / "mlp.onnx", load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../mlp.data"
    onnx.save(model, tmp_path / "sub" / "escape.onnx")
    with pytest.raises(onnxprune.OnnxPruneError, match="not inside the model's folder"):
        load(tmp_path / "sub" / "escape.onnx")


def _snapshot(folder) -> dict:
    """Every path under a folder with its bytes (links as their targets)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = os.path.join(root, name)
            out[os.path.relpath(p, folder)] = os.readlink(p) if os.path.islink(p) else \
                (None if os.path.isdir(p) else open(p, "rb").read())
    return out


@pytest.mark.parametrize("how", ["file", "folder"])
def test_a_symlink_out_of_the_model_folder_is_refused(tmp_path, how):
    """A location that stays inside the folder by name but whose real path
    leaves it (a link to a file elsewhere, or a linked folder on the way) is
    refused: its bytes would otherwise become weights of the written model."""
    outside, model_dir = tmp_path / "outside", tmp_path / "model"
    outside.mkdir()
    model_dir.mkdir()
    save_external(mlp(), outside, "real.onnx", "mlp.data")  # the bytes a link would reach
    if how == "file":
        os.symlink(outside / "mlp.data", model_dir / "mlp.data")
    else:
        os.symlink(outside, model_dir / "weights")
    onnx_model = onnx.load(outside / "real.onnx", load_external_data=False)
    for t in onnx_model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "mlp.data" if how == "file" else "weights/mlp.data"
    src = model_dir / "mlp.onnx"
    onnx.save(onnx_model, src)
    before = _snapshot(tmp_path)
    out = model_dir / "out.onnx"
    result = CliRunner().invoke(main, ["prune", os.fspath(src), "-o", os.fspath(out), "--ratio", "0.5"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "not inside the model's folder" in lines[0], result.output
    assert _snapshot(tmp_path) == before  # the input untouched, nothing written
