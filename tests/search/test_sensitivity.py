"""Sensitivity sweeps: the damage metrics, one group pruned alone
per job, and the serial sweep, a process pool, a resumed run and merged
shards giving identical rows; the CLI prints the table and draws the plot."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from onnxprune.core.errors import OnnxPruneError
from onnxprune.search.sensitivity import damage, damage_of_outputs, merge, sweep
from tests.helpers.graphs import Graph
from tests.helpers.paths import MODELS

ROOT = MODELS


def test_damage_is_kl_for_classifier_outputs_and_one_minus_cosine_otherwise():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((16, 10))
    assert damage(a, a) == ("kl", pytest.approx(0.0, abs=1e-12))
    kind, v = damage(a, a + rng.standard_normal(a.shape))
    p = np.exp(a) / np.exp(a).sum(1, keepdims=True)
    assert kind == "kl" and v > 0.01
    b = a + 0.5 * rng.standard_normal(a.shape)
    q = np.exp(b) / np.exp(b).sum(1, keepdims=True)
    assert damage(a, b)[1] == pytest.approx(float(np.mean(np.sum(p * np.log(p / q), 1))), rel=1e-6)
    img = rng.standard_normal((4, 3, 5, 5))
    assert damage(img, 2 * img + 1) == ("1-cos", pytest.approx(0.0, abs=1e-12))
    assert damage(img, -img)[1] == pytest.approx(2.0)
    # a model that ends in Softmax: its outputs are the distributions (softmax
    # again would flatten them, and the damage with them)
    assert damage(p, q) == ("kl", pytest.approx(float(np.mean(np.sum(p * np.log(p / q), 1))), rel=1e-6))
    assert damage(p, q)[1] > 10 * damage(np.exp(p) / np.exp(p).sum(1, keepdims=True),
                                         np.exp(q) / np.exp(q).sum(1, keepdims=True))[1]


def test_damage_counts_every_float_output_not_only_the_first():
    """A change that leaves the first head alone and wrecks the second is
    damage; integer outputs (indices) are left out while a float one exists."""
    rng = np.random.default_rng(1)
    heads = [rng.standard_normal((4, 3, 8)), rng.standard_normal((4, 5, 8))]
    idx = np.arange(12).reshape(4, 3)
    hurt = [heads[0], -heads[1]]
    kind, v = damage_of_outputs(heads + [idx], hurt + [idx[::-1]])
    assert kind == "1-cos" and v == pytest.approx(1.0)  # (0 + 2) / 2: the indices do not count
    mixed = damage_of_outputs([rng.standard_normal((4, 10)), heads[0]], [np.zeros((4, 10)), heads[0]])
    assert mixed[0] == "1-cos+kl" and mixed[1] > 0
    assert damage_of_outputs([idx], [idx])[1] == pytest.approx(0.0, abs=1e-12)  # no float output: all count


def _mlp(path):
    g = Graph(seed=11)
    a = g.add("Relu", [g.gemm("x", 6, 12, name="A")])
    b = g.add("Relu", [g.gemm(a, 12, 10, name="B")])
    model = g.build({"x": ["N", 6]}, [g.gemm(b, 10, 4, name="C")])
    import onnx

    onnx.save(model, path)
    rng = np.random.default_rng(12)
    data = {"x": rng.standard_normal((64, 6)).astype(np.float32)}
    np.savez(str(path) + ".npz", **data)
    return str(path), str(path) + ".npz"


def _key(rows):
    return [(r["group"], r["ratio"], r["kept"], round(r["damage"], 12)) for r in rows]


def test_each_job_prunes_one_group_and_damage_grows_with_the_ratio():
    d = np.load(os.path.join(ROOT, "resnet_mnist_data.npz"))
    res = sweep(os.path.join(ROOT, "resnet_mnist.onnx"), calib={"input": d["input"][:96]},
                data={"input": d["input"][96:160], "labels": d["labels"][96:160]}, ratios=[0.25, 0.75])
    table = res.table()
    assert set(table) == {int(k) for k in res.header["groups"]}
    for gid, by in table.items():
        assert by[0.75]["damage"] >= by[0.25]["damage"] - 1e-6, (gid, by)
        assert by[0.75]["kept"] == by[0.75]["units"] - round(0.75 * by[0.75]["units"])
        assert 0 < by[0.75]["macs_saved"] < 1 and "accuracy_drop" in by[0.75]
    # each job removed its own group's units and nothing else
    import onnxprune
    from onnxprune.select.planner import estimate_macs

    groups = onnxprune.analyze(os.path.join(ROOT, "resnet_mnist.onnx"))
    for gid, by in table.items():
        alone = estimate_macs(groups, {gid: np.arange(by[0.75]["kept"])}) / groups.macs
        assert by[0.75]["macs_saved"] == pytest.approx(1.0 - alone)
    # the stem (every later layer reads it) is the most sensitive group
    worst = max(table, key=lambda g: table[g][0.75]["damage"])
    assert "stem" in res.header["groups"][str(worst)]["members"][0]


def test_a_pool_a_resumed_run_and_merged_shards_give_the_serial_rows(tmp_path):
    model, calib = _mlp(tmp_path / "m.onnx")
    serial = sweep(model, calib=calib, ratios=[0.25, 0.5])
    assert len(serial.rows) == 2 * 2  # two prunable groups x two ratios
    pooled = sweep(model, calib=calib, ratios=[0.25, 0.5], jobs=2)
    assert _key(pooled.rows) == _key(serial.rows)
    # resume: a file holding the header and one row (and a torn last line)
    out = tmp_path / "s.jsonl"
    sweep(model, calib=calib, ratios=[0.25, 0.5], out=str(out))
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])
    ran = []
    resumed = sweep(model, calib=calib, ratios=[0.25, 0.5], out=str(out), progress=ran.append)
    assert len(ran) == 3 and _key(resumed.rows) == _key(serial.rows)
    assert len(out.read_text().splitlines()) == 1 + 4
    # shards on "other machines", then merged
    parts = []
    for i in range(3):
        p = tmp_path / f"shard{i}.jsonl"
        sweep(model, calib=calib, ratios=[0.25, 0.5], shard=(i, 3), out=str(p))
        parts.append(str(p))
    merged = merge(parts, str(tmp_path / "all.jsonl"))
    assert _key(merged.rows) == _key(serial.rows)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray head started here, as a user's cluster would be, and
    stopped after: the sweep connects to it by address."""
    pytest.importorskip("ray")
    import shutil
    import subprocess

    ray_bin = shutil.which("ray")
    if ray_bin is None:
        pytest.skip("the ray command is not on PATH")
    port = _free_port()
    # Ray turns token authentication on when ~/.ray/auth_token exists (any earlier local
    # ray.init writes one), and a driver connecting by address may not send it: the test's
    # cluster runs without, head and driver alike, whatever the home folder holds.
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        start = subprocess.run([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=2",
                                "--include-dashboard=false", "--disable-usage-stats"],
                               capture_output=True, text=True, timeout=180)
        assert start.returncode == 0, start.stderr[-2000:]
        try:
            yield f"127.0.0.1:{port}"
        finally:
            subprocess.run([ray_bin, "stop", "--force"], capture_output=True, timeout=120)
    finally:
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved


def test_ray_actors_give_the_serial_rows(tmp_path, ray_cluster):
    from click.testing import CliRunner

    from onnxprune.cli import main

    model, calib = _mlp(tmp_path / "m.onnx")
    serial = sweep(model, calib=calib, ratios=[0.25, 0.5])
    on_ray = sweep(model, calib=calib, ratios=[0.25, 0.5], ray=ray_cluster, jobs=2)
    assert _key(on_ray.rows) == _key(serial.rows)
    out = tmp_path / "r.jsonl"
    res = CliRunner().invoke(main, ["sensitivity", model, "--calib", calib, "--ratios", "0.25,0.5",
                                    "--ray", ray_cluster, "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()[1:]]
    assert _key(rows) == _key(serial.rows)


def test_ray_workers_need_only_the_shipped_bytes(tmp_path):
    """The actor builds its sweep from the files' bytes: the originals may be
    gone (another machine) and the rows are the same."""
    from onnxprune.search.sensitivity import _pack, _RayWorker

    model, calib = _mlp(tmp_path / "m.onnx")
    serial = sweep(model, calib=calib, ratios=[0.5])
    build = _pack((model, calib, None, None, None, None, None))
    os.remove(model)
    os.remove(calib)
    worker = _RayWorker(build)
    rows = [worker.run(r["group"], 0.5) for r in serial.rows]
    assert _key(rows) == _key(serial.rows)


def test_an_unreachable_ray_address_is_a_clear_error(tmp_path):
    pytest.importorskip("ray")
    model, calib = _mlp(tmp_path / "m.onnx")
    with pytest.raises(OnnxPruneError, match="cannot connect"):
        sweep(model, calib=calib, ratios=[0.5], ray=f"127.0.0.1:{_free_port()}")
    with pytest.raises(OnnxPruneError, match="expected host:port"):
        sweep(model, calib=calib, ratios=[0.5], ray="nowhere")


def test_a_results_file_of_another_sweep_is_refused(tmp_path):
    model, calib = _mlp(tmp_path / "m.onnx")
    out = str(tmp_path / "s.jsonl")
    sweep(model, calib=calib, ratios=[0.5], out=out)
    with pytest.raises(OnnxPruneError, match="another model or other settings"):
        sweep(model, calib=calib, ratios=[0.25], out=out)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"format": "something"}) + "\n")
    with pytest.raises(OnnxPruneError, match="not an onnxprune sensitivity file"):
        sweep(model, calib=calib, ratios=[0.5], out=str(bad))


def test_the_cli_prints_the_table_and_draws_the_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from click.testing import CliRunner

    from onnxprune.cli import main

    model, calib = _mlp(tmp_path / "m.onnx")
    png, js = tmp_path / "s.png", tmp_path / "s.json"
    res = CliRunner().invoke(main, ["sensitivity", model, "--calib", calib, "--ratios", "0.25,0.5",
                                    "--plot", str(png), "--json", str(js)])
    assert res.exit_code == 0, res.output
    assert "Sensitivity" in res.output and png.read_bytes()[:4] == b"\x89PNG"
    assert len(json.loads(js.read_text())["rows"]) == 4
    res = CliRunner().invoke(main, ["sensitivity", model, "--calib", calib, "--shard", "3/2"])
    assert res.exit_code == 2 and "--shard" in res.output


def _two_groups():
    """x(8) -> A (8->32) -> Relu -> B (32->32) -> Relu -> C (32->4): two groups of 32."""
    g = Graph(seed=3)
    a = g.add("Relu", [g.gemm("x", 8, 32, name="A")])
    b = g.add("Relu", [g.gemm(a, 32, 32, name="B")])
    return g.build({"x": ["N", 8]}, [g.gemm(b, 32, 4, name="C")])


def _fake_sweep(groups, damages: dict):
    from onnxprune.search.sensitivity import SensitivityResult

    rows = []
    for g in groups.prunable:
        for r in (0.25, 0.5, 0.75):
            kept = g.units - round(r * g.units)
            rows.append({"group": g.id, "ratio": r, "kept": kept, "units": g.units, "metric": "kl",
                         "damage": damages[g.members[0]] * r * r})
    return SensitivityResult({"groups": {}}, rows)


def test_sensitivity_allocation_spends_the_budget_where_the_sweep_measured_least_damage():
    import onnxprune
    from onnxprune.search.sensitivity import removal_costs
    from onnxprune.select.importance import score
    from onnxprune.select.planner import estimate_macs, plan_budget

    groups = onnxprune.analyze(_two_groups(), input_shapes={"x": [1, 8]})
    s = score(groups, "l2")
    by_member = {g.members[0]: g.id for g in groups.prunable}
    sweep = _fake_sweep(groups, {m: (100.0 if m == "A" else 0.01) for m in by_member})
    priced = removal_costs(sweep, groups, s)
    for g in groups.prunable:  # non-decreasing prices along the criterion's order
        c = priced.costs[g.id]
        assert np.all(c[1:] >= c[:-1])
        np.testing.assert_array_equal(priced.orders[g.id], np.argsort(s[g.id], kind="stable")[:g.units - 1])
    plan = plan_budget(groups, priced, ratio=None, macs_target=0.6, allocate="sensitivity", round_to=1)
    assert estimate_macs(groups, plan.keep) <= 0.6 * groups.macs
    kept = {m: plan.kept[gid][0] for m, gid in by_member.items()}
    assert kept["A"] > kept["B"], kept  # the group the sweep found sensitive keeps more
    flipped = removal_costs(_fake_sweep(groups, {m: (0.01 if m == "A" else 100.0) for m in by_member}),
                            groups, s)
    plan = plan_budget(groups, flipped, ratio=None, macs_target=0.6, allocate="sensitivity", round_to=1)
    assert plan.kept[by_member["A"]][0] < plan.kept[by_member["B"]][0]


def test_a_saved_sweep_drives_the_prune_and_one_of_another_model_is_refused(tmp_path):
    import onnxprune

    model, calib = _mlp(tmp_path / "m.onnx")
    out = str(tmp_path / "s.jsonl")
    sweep(model, calib=calib, ratios=[0.25, 0.5], out=out)
    r = onnxprune.prune(model, macs_target=0.7, calib=calib, allocate="sensitivity", sensitivity=out)
    assert r.report.macs["after"] <= 0.7 * r.report.macs["before"] * 1.01
    other = tmp_path / "other.onnx"
    import onnx

    onnx.save(_two_groups(), other)
    with pytest.raises(OnnxPruneError, match="units, the sweep says|no row for group"):
        onnxprune.prune(str(other), macs_target=0.7, allocate="sensitivity", sensitivity=out,
                        input_shapes={"x": [1, 8]})
    with pytest.raises(OnnxPruneError, match="needs a sweep"):
        onnxprune.prune(str(other), macs_target=0.7, allocate="sensitivity", input_shapes={"x": [1, 8]})


def test_the_default_allocation_follows_the_data_and_the_sweeps_cost(monkeypatch):
    import onnxprune
    from onnxprune.pipeline import prune as pipeline

    path = os.path.join(ROOT, "resnet_mnist.onnx")
    d = np.load(os.path.join(ROOT, "resnet_mnist_data.npz"))
    assert onnxprune.prune(path, macs_target=0.6).report.allocate == "uniform"  # no data
    few = onnxprune.prune(path, macs_target=0.6, calib={"input": d["input"][:3]})
    assert few.report.allocate == "uniform" and any("too few" in n for n in few.report.notes)
    many = onnxprune.prune(path, macs_target=0.6, calib={"input": d["input"][:8]})
    assert many.report.allocate == "sensitivity"
    monkeypatch.setattr(pipeline, "SWEEP_WORK", 1.0)
    costly = onnxprune.prune(path, macs_target=0.6, calib={"input": d["input"][:96]})
    assert costly.report.allocate == "global" and any("would run" in n for n in costly.report.notes)
    asked = onnxprune.prune(path, macs_target=0.6, calib={"input": d["input"][:96]}, allocate="uniform")
    assert asked.report.allocate == "uniform"


def test_a_sweep_limited_to_the_calibration_part_never_measures_on_the_rest(monkeypatch):
    """In a prune that holds out the last quarter for validation, the sweep
    measures on the tail of the calibration part, never on those samples."""
    from onnxprune.calibration import sources as calibration
    from onnxprune.search import sensitivity

    seen = {}
    orig = calibration.hold_out

    def spy(source, model, *a, **k):
        out = orig(source, model, *a, **k)
        seen["held"] = out[1]["input"] if out else None
        return out

    monkeypatch.setattr(calibration, "hold_out", spy)
    d = np.load(os.path.join(ROOT, "resnet_mnist_data.npz"))
    sensitivity.prepare(os.path.join(ROOT, "resnet_mnist.onnx"), os.path.join(ROOT, "resnet_mnist_data.npz"),
                        None, None, None, None, calib_samples=192)
    held = seen["held"]
    assert len(held) == 48  # a quarter of the 192 calibration samples
    np.testing.assert_array_equal(held, d["input"][144:192])


def test_a_job_runs_only_the_layers_its_group_changes_and_measures_what_the_whole_model_does(monkeypatch):
    """Each job's tail runs on the original's tensors before it, computed
    once per group (in chunks of samples); the damage is the whole pruned
    model's, to float rounding."""
    from onnxprune.search import sensitivity

    d = np.load(os.path.join(ROOT, "resnet_mnist_data.npz"))
    monkeypatch.setattr(sensitivity, "TAIL_CHUNK", 5)  # 12 held-out samples: three chunks
    monkeypatch.setattr(sensitivity, "TAIL_SHARE", 0.0)  # every group's tail, however early
    prep = sensitivity.prepare(os.path.join(ROOT, "resnet_mnist.onnx"), {"input": d["input"][:48]},
                               None, None, None, None)
    prep.split = True  # as where a run takes longer than building a session (not so on this small model)
    made = []
    real, real_run = sensitivity.upto, sensitivity.run_batched
    monkeypatch.setattr(sensitivity, "upto", lambda m, names: made.append(tuple(names)) or real(m, names))
    jobs = [(g.id, r) for g in prep.groups.prunable for r in (0.25, 0.5)]
    whole_runs = []
    monkeypatch.setattr(sensitivity, "run_batched", lambda *a: whole_runs.append(1) or real_run(*a))
    split = [sensitivity.run_job(prep, *job)["damage"] for job in jobs]
    assert len(whole_runs) == 2  # the stem's group: it changes the first layer, nothing to share
    assert prep.split and len(made) == len(set(made)) >= len(prep.groups.prunable) - 1  # once per group
    assert len(prep.before[1]) == 3
    prep.split = False
    whole = [sensitivity.run_job(prep, *job)["damage"] for job in jobs]
    np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-7)
    assert max(whole) > 0.01


def test_the_sweeps_work_counts_each_groups_tail_once_per_ratio_and_the_rest_once(monkeypatch):
    import onnxprune
    from onnxprune.analysis.costs import node_macs
    from onnxprune.search import sensitivity
    from onnxprune.search.sensitivity import work

    g = Graph(seed=2)
    a = g.add("Relu", [g.conv("x", 3, 6, name="c1")])
    b = g.add("Relu", [g.conv(a, 6, 8, name="c2")])
    groups = onnxprune.analyze(g.build({"x": [1, 3, 6, 6]}, [g.conv(b, 8, 4, name="c3")]))
    m = {n.name: node_macs(groups.view, n) or 0 for n in groups.view.nodes}
    total = sum(m.values())
    assert len(groups.prunable) == 2  # c1's outputs (read by c2), c2's (read by c3)
    monkeypatch.setattr(sensitivity, "TAIL_SHARE", 0.0)
    assert work(groups, (0.25, 0.5, 0.75), 2) == pytest.approx(2 * (3 * total + m["c1"] + 3 * (m["c2"] + m["c3"])))
    monkeypatch.setattr(sensitivity, "TAIL_SHARE", 1.0)  # no tail: every job runs the whole model
    assert work(groups, (0.25, 0.5, 0.75), 2) == pytest.approx(2 * 2 * 3 * total)
