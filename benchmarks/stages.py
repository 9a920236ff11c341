"""Where a prune with the data defaults spends its time and memory, per model.

    python benchmarks/stages.py [MODEL.onnx:DATA.npz ...] [--dir FOLDER] [--macs-target 0.75]

For each model (default: the sample models in ``models/`` with their data;
``--dir`` takes every ``FOLDER/models/NAME.onnx`` with a
``FOLDER/data/NAME.npz``) it runs ``onnxprune prune --calib DATA
--macs-target T`` in its own process (so its peak memory is its own) and
prints:

- prune: the command's wall seconds, and that over one plain onnxruntime
  pass of the original over the same calibration data (``x pass``);
- the slowest stage (from the report's ``timings``) and its share;
- the peak resident memory over the model's file size.

The plain pass runs every sample once, the batch the model takes, with
onnxruntime's default threads: the least any data-driven prune must cost.
It runs in a process of its own too: on Linux a child's peak resident
memory starts from its parent's at the fork, so this script stays small.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import onnxruntime as ort  # noqa: E402

from onnxprune.calibration.sources import batches, load_data  # noqa: E402
from onnxprune.core import model as modelio  # noqa: E402
from onnxprune.core.data import model_inputs  # noqa: E402


def pairs(args) -> list[tuple[str, str]]:
    if args.pairs:
        return [tuple(p.split(":", 1)) for p in args.pairs]
    folder = args.dir
    if folder:
        found = sorted(glob.glob(os.path.join(folder, "models", "*.onnx")))
        return [(m, os.path.join(folder, "data", os.path.basename(m)[:-5] + ".npz")) for m in found
                if os.path.exists(os.path.join(folder, "data", os.path.basename(m)[:-5] + ".npz"))]
    found = sorted(glob.glob(os.path.join(ROOT, "models", "*.onnx")))
    return [(m, m[:-5] + "_data.npz") for m in found if os.path.exists(m[:-5] + "_data.npz")]


def plain_pass(model_path: str, data: str) -> float:
    """Seconds of one onnxruntime pass over the calibration samples."""
    model = modelio.load(model_path).model
    names = [i.name for i in model_inputs(model)]
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    chunks = list(batches(load_data(data, model)[0], names, model, 16, None))
    t0 = time.perf_counter()
    for feeds in chunks:
        try:
            sess.run(None, feeds)
        except Exception:  # noqa: BLE001 - a graph that fixes batch 1: one sample a run
            n = len(next(iter(feeds.values())))
            for i in range(n):
                sess.run(None, {k: v[i:i + 1] for k, v in feeds.items()})
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pairs", nargs="*", metavar="MODEL.onnx:DATA.npz")
    ap.add_argument("--dir", help="a folder with models/NAME.onnx and data/NAME.npz")
    ap.add_argument("--macs-target", type=float, default=0.75)
    ap.add_argument("--plain-pass", nargs=2, metavar=("MODEL", "DATA"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain_pass:
        print(plain_pass(*args.plain_pass))
        return
    print(f"{'model':28s} {'prune s':>8s} {'pass s':>7s} {'x pass':>7s}  {'slowest stage':22s} "
          f"{'peak MiB':>8s} {'x size':>7s}")
    with tempfile.TemporaryDirectory() as tmp:
        for model, data in pairs(args):
            name = os.path.basename(model)[:-5]
            out, rep = os.path.join(tmp, f"{name}.onnx"), os.path.join(tmp, f"{name}.json")
            cmd = [sys.executable, "-m", "onnxprune.cli", "prune", model, "-o", out, "--report", rep, "-q",
                   "--calib", data, "--macs-target", str(args.macs_target)]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            wall = time.perf_counter() - t0
            if r.returncode:
                print(f"{name:28s} failed: {(r.stderr.strip().splitlines() or ['?'])[-1][:100]}")
                continue
            stages = json.load(open(rep))["timings"]["stages"]
            slow = max(stages, key=lambda s: s["seconds"])
            total = sum(s["seconds"] for s in stages) or 1.0
            peak = max((s["peak_rss_mb"] or 0.0) for s in stages)
            size = sum(os.path.getsize(f) for f in modelio.load(model).files) / 2**20
            once = float(subprocess.run([sys.executable, __file__, "--plain-pass", model, data], capture_output=True,
                                        text=True, check=True).stdout.split()[-1])
            where = "{} {:.0f}%".format(slow["stage"], 100 * slow["seconds"] / total)
            print(f"{name:28s} {wall:8.1f} {once:7.2f} {wall / max(once, 1e-9):7.0f}  {where:22s} "
                  f"{peak:8.0f} {peak / size:7.1f}")


if __name__ == "__main__":
    main()
