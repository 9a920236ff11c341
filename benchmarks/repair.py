"""What ``--repair`` buys, and what it costs, on the sample models.

    python benchmarks/repair.py [--models resnet_mnist ...] [--target 0.5] [--calib-n 8 192]
                                [--steps 100] [--json OUT]

For each sample model and calibration size, the same prune (``--macs-target``,
the defaults) runs twice, without and with ``--repair STEPS``, calibrated on
the first ``calib-n`` samples of ``models/<name>_data.npz`` and validated on
the last 64 (never calibrated or trained on). Per row: the task metric on the
validation samples (top-1 accuracy, or mask IoU for the U-Net) and its drop
from the original, the mean and worst centred cosine, the calibration error
before and after the repair (the report's, measured in onnxruntime), and the
time: the prune alone, the prune with the repair, and their ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import onnxprune  # noqa: E402
from onnxprune.check.similarity import centred_cosines  # noqa: E402
from onnxprune.core import runtime  # noqa: E402

MODELS = ["resnet_mnist", "densenet_mnist", "mobilenet_mnist", "unet_mnist"]
HELD = 64


def metric(out: np.ndarray, held: dict) -> float:
    if "labels" in held:
        return float(np.mean(out.argmax(1) == held["labels"]))
    pred, target = out > 0, held["target"] > 0.5
    return float((pred & target).sum() / max((pred | target).sum(), 1))


def one(name: str, calib_n: int, target: float, steps: int) -> dict:
    path = os.path.join(ROOT, "models", f"{name}.onnx")
    d = dict(np.load(os.path.join(ROOT, "models", f"{name}_data.npz")))
    calib = {"input": d["input"][:calib_n]}
    held = {k: v[-HELD:] for k, v in d.items()}
    x = {"input": held["input"]}
    original = runtime.session(path).run(None, x)[0]
    row = {"model": name, "calib": calib_n, "target": target, "steps": steps,
           "metric_original": metric(original, held)}
    for label, repair in (("plain", 0), ("repair", steps)):
        start = time.perf_counter()
        result = onnxprune.prune(path, macs_target=target, calib=calib, repair=repair)
        row[f"{label}_s"] = time.perf_counter() - start
        out = runtime.session(result.model).run(None, x)[0]
        cos = centred_cosines(original, out)
        row[f"{label}_metric"] = metric(out, held)
        row[f"{label}_ccos_mean"], row[f"{label}_ccos_min"] = float(cos.mean()), float(cos.min())
        if repair:
            rep = result.report.repair
            row.update(loss_before=rep["loss_before"], loss_after=rep["loss_after"], kept=rep["kept"],
                       repair_s=rep["seconds"])
    row["time_ratio"] = row["repair_s"] / row["plain_s"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--calib-n", type=int, nargs="+", default=[8, 192])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    print(f"{'model':16s} {'calib':>5s} {'metric orig':>11s} {'plain':>7s} {'repair':>7s} {'ccos mean':>17s} "
          f"{'ccos min':>17s} {'calib error':>17s} {'prune s':>8s} {'repair s':>8s} {'ratio':>6s}")
    for name in args.models:
        for n in args.calib_n:
            r = one(name, n, args.target, args.steps)
            rows.append(r)
            print(f"{name:16s} {n:5d} {r['metric_original']:11.4f} {r['plain_metric']:7.4f} {r['repair_metric']:7.4f} "
                  f"{r['plain_ccos_mean']:8.4f}->{r['repair_ccos_mean']:.4f} "
                  f"{r['plain_ccos_min']:8.4f}->{r['repair_ccos_min']:.4f} "
                  f"{r['loss_before']:8.4f}->{r['loss_after']:.4f} {r['plain_s']:8.1f} {r['repair_s']:8.1f} "
                  f"{r['time_ratio']:6.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
