"""Quantized models against their float twins: what compensation gives back.

    python benchmarks/quantized.py [--models resnet_mnist ...] [--targets 0.75 0.5] [--calib-n 128]

Each sample classifier in models/ is quantized with onnxruntime's
``quantize_dynamic`` (int8 weights: MatMulInteger / ConvInteger behind a
DynamicQuantizeLinear). The float model and its int8 twin are pruned to each
MACs target with the defaults and calibration data (the first ``--calib-n``
samples of ``<name>_data.npz``; the rest validate, never calibrated on), and
the int8 twin once more with ``compensate="none"``: the integer weights left
as they are, as they were before compensation refitted them. Prints the
held-out accuracy of each, and the original's.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import onnxprune  # noqa: E402

CLASSIFIERS = ("resnet_mnist", "mobilenet_mnist", "densenet_mnist")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(CLASSIFIERS))
    ap.add_argument("--targets", nargs="+", type=float, default=[0.75, 0.5])
    ap.add_argument("--calib-n", type=int, default=128)
    args = ap.parse_args()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    print(f"{'model':18s} {'MACs':>5s} {'float orig':>10s} {'pruned':>7s} {'int8 orig':>10s} {'pruned':>7s} "
          f"{'uncompensated':>13s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            src = os.path.join(ROOT, "models", f"{name}.onnx")
            data = np.load(os.path.join(ROOT, "models", f"{name}_data.npz"))
            x = next(k for k in data.files if k != "labels")
            calib = {x: data[x][:args.calib_n]}
            val = os.path.join(tmp, f"{name}_val.npz")
            np.savez(val, **{x: data[x][args.calib_n:], "labels": data["labels"][args.calib_n:]})
            q8 = os.path.join(tmp, f"{name}_int8.onnx")
            quantize_dynamic(src, q8, weight_type=QuantType.QInt8)
            for target in args.targets:
                accs = []
                for model, extra in ((src, {}), (q8, {}), (q8, {"compensate": "none"})):
                    r = onnxprune.prune(model, macs_target=target, calib=calib, data=val, validate=True, **extra)
                    accs.append((r.validation.accuracy_before, r.validation.accuracy_after))
                (f0, f1), (q0, q1), (_, n1) = accs
                print(f"{name:18s} {target:5.2f} {f0:10.3f} {f1:7.3f} {q0:10.3f} {q1:7.3f} {n1:13.3f}", flush=True)


if __name__ == "__main__":
    main()
