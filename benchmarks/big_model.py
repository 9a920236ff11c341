"""Does a model past protobuf's 2 GB limit prune in bounded memory?

    python benchmarks/big_model.py [--hidden 8192] [--layers 12] [--ratio 0.25]
                                   [--runs default,data,no-validate] [--keep]

Builds (into ``benchmarks/.cache/``, gitignored, never committed) an MLP
stored as external data: ``--layers`` MatMul + Add (bias) + Relu layers of
width ``--hidden`` (float32, symbolic batch), so ``layers - 1`` hidden sizes
can be pruned. The defaults make 12 layers of 8192 x 8192: 3.0 GiB of weights.
The data file is written tensor by tensor (4 KiB aligned, as onnx does), so
building it needs one layer in memory, not the model.

Each run is ``onnxprune prune big.onnx -o out.onnx --ratio R --report r.json``
in a subprocess under ``/usr/bin/time -v``: ``default`` validates on random
inputs, ``data`` validates on an ``.npz`` given with ``--data`` (``l2``, no
compensation), ``no-validate`` skips validation. ``data-calib`` (not run
unless named) is ``--data`` with the CLI's defaults for data: it also
calibrates on it (``obs`` criterion and ``lsq`` compensation, whose Gram
matrices alone are 512 MiB per 8192-wide layer). Printed per run: channel groups found and
prunable (goal: ``layers - 1``), model size, peak RSS of the process, the
ratio peak / size (goal: at most 1.5), wall time and the output's size. The
generated and written files are removed at the end unless ``--keep``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, ".cache", "big_model")
ALIGN = 4096


def _external(name: str, dims, location: str, offset: int, length: int) -> onnx.TensorProto:
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(dims))
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def build(folder: str, hidden: int, layers: int, seed: int = 0) -> str:
    """Write ``big.onnx`` and ``big.onnx.data``; return the model's path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "big.onnx")
    location = "big.onnx.data"
    rng = np.random.default_rng(seed)
    inits, nodes, x = [], [], "x"
    with open(os.path.join(folder, location), "wb") as f:
        def put(name, value):
            pad = (-f.tell()) % ALIGN
            f.write(b"\0" * pad)
            offset = f.tell()
            f.write(value.tobytes())
            inits.append(_external(name, value.shape, location, offset, value.nbytes))

        for i in range(layers):
            w = rng.standard_normal((hidden, hidden), dtype=np.float32)
            w *= np.float32(1.0 / np.sqrt(hidden))
            put(f"w{i}", w)
            del w
            put(f"b{i}", (rng.standard_normal(hidden, dtype=np.float32) * np.float32(0.1)))
            last = i == layers - 1
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"matmul{i}"))
            nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], ["y" if last else f"a{i}"],
                                          name=f"add{i}"))
            if not last:
                nodes.append(helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}"))
                x = f"r{i}"
    graph = helper.make_graph(nodes, "big_mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", hidden])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", hidden])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="onnxprune-benchmark")
    model.ir_version = 8
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return path


def _size(path: str) -> int:
    """Bytes of a model file and the external-data files beside it."""
    folder, name = os.path.split(path)
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)
               if f == name or f.startswith(name + "."))


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def run(model: str, run_name: str, ratio: float, hidden: int, extra: list[str]) -> dict:
    folder = os.path.dirname(model)
    out = os.path.join(folder, f"out-{run_name}.onnx")
    report = os.path.join(folder, f"report-{run_name}.json")
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "onnxprune.cli", "prune", model, "-o", out,
           "--ratio", str(ratio), "--report", report, "-q", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    result = {"run": run_name, "exit": proc.returncode, "wall_s": wall,
              "peak_rss": int(peak.group(1)) * 1024 if peak else None, "model_size": _size(model),
              "output_size": _size(out) if os.path.exists(out) else None}
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("onnxprune")]
        result["error"] = lines[-1] if lines else proc.stderr.strip().splitlines()[:1]
    if os.path.exists(report):
        with open(report) as f:
            rep = json.load(f)
        groups = rep["groups"]
        result["groups"] = len(groups)
        result["prunable"] = sum(1 for g in groups if not g["frozen"])
        result["pruned"] = sum(1 for g in groups if g["kept"] < g["channels"])
        if "validation" in rep:
            result["cosine_min"] = rep["validation"]["cosine_min"]
    for path in (out, out + ".data", report):
        if os.path.exists(path):
            os.remove(path)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=8192)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--ratio", type=float, default=0.25)
    p.add_argument("--runs", default="no-validate,default,data",
                   help="comma-separated: default, data, no-validate, data-calib")
    p.add_argument("--keep", action="store_true", help="keep the generated model in benchmarks/.cache/")
    args = p.parse_args(argv)
    folder = os.path.join(CACHE, f"h{args.hidden}-l{args.layers}")
    model = os.path.join(folder, "big.onnx")
    t0 = time.perf_counter()
    if not os.path.exists(model):
        build(folder, args.hidden, args.layers)
        print(f"built {model} in {time.perf_counter() - t0:.0f} s")
    size = _size(model)
    print(f"model: {args.layers} MatMul layers of {args.hidden} (float32), {_gib(size)} on disk, "
          f"{args.layers - 1} prunable hidden sizes expected", flush=True)
    status = 0
    try:
        for name in args.runs.split(","):
            extra = {"default": [], "no-validate": ["--no-validate"]}.get(name)
            if name in ("data", "data-calib"):
                data = os.path.join(folder, "data.npz")
                np.savez(data, x=np.random.default_rng(1).standard_normal((8, args.hidden)).astype(np.float32))
                extra = ["--data", data] + (["--criterion", "l2", "--compensate", "none"] if name == "data" else [])
            if extra is None:
                raise SystemExit(f"unknown run '{name}'")
            r = run(model, name, args.ratio, args.hidden, extra)
            ratio = r["peak_rss"] / size if r["peak_rss"] else float("nan")
            print(f"[{name}] exit {r['exit']}  groups {r.get('groups', '?')} "
                  f"(prunable {r.get('prunable', '?')}, pruned {r.get('pruned', '?')})  "
                  f"model {_gib(size)}  peak RSS {_gib(r['peak_rss'] or 0)}  peak/size {ratio:.2f} "
                  f"(goal <= 1.5)  wall {r['wall_s']:.0f} s  output "
                  f"{_gib(r['output_size']) if r['output_size'] else '-'}"
                  + (f"  cosine_min {r['cosine_min']:.4f}" if "cosine_min" in r else ""), flush=True)
            if "error" in r:
                print(f"    {r['error']}")
            if r["exit"] != 0 or ratio > 1.5 or r.get("prunable") != args.layers - 1:
                status = 1
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
