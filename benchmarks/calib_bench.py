"""Data-driven pruning without retraining: criteria x compensation at MACs budgets.

    python benchmarks/calib_bench.py [--targets 0.75 0.5] [--calib 128]

For each trained sample classifier in models/, the held-out data is split:
the first --calib samples calibrate, the rest evaluate. For every criterion
and compensation (none / bias / lsq) the model is pruned to about 75% and
50% of its MACs (``--macs-target``) and the held-out accuracy is printed next
to the ``l2`` / none baseline. Also: calibration time as a ratio to one plain
onnxruntime pass over the same data, and the peak Python memory of the
calibration pass for 1x and 4x the samples (it must not grow with samples).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc

import numpy as np
import onnx

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import onnxprune  # noqa: E402
from onnxprune.calibration import calibrate  # noqa: E402
from onnxprune.compensate import compensate  # noqa: E402
from onnxprune.importance import calibration_requests, score  # noqa: E402
from onnxprune.planner import plan_macs  # noqa: E402
from onnxprune.rewrite import apply  # noqa: E402
from onnxprune.validate import run_batched, session  # noqa: E402

MODELS = ["resnet_mnist", "mobilenet_mnist", "densenet_mnist"]
CRITERIA = ["l2", "fpgm", "mean_abs", "act_l2", "apoz", "relief", "flap"]
MODES = ["none", "bias", "lsq"]


def accuracy(model: onnx.ModelProto, x: np.ndarray, labels: np.ndarray) -> float:
    out = run_batched(session(model), {"input": x}, None)[0]
    return float(np.mean(out.argmax(1) == labels))


def plain_pass_seconds(model: onnx.ModelProto, x: np.ndarray, batch: int) -> tuple[float, float]:
    """(session creation, run over the data) of a plain onnxruntime pass."""
    t0 = time.perf_counter()
    sess = session(model, threads=0)
    t1 = time.perf_counter()
    for i in range(0, len(x), batch):
        sess.run(None, {"input": x[i:i + batch]})
    return t1 - t0, time.perf_counter() - t1


def peak_mib(groups, x: np.ndarray, requests: dict) -> float:
    tracemalloc.start()
    calibrate(groups.model, {"input": x}, requests, batch=16)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", type=float, nargs="+", default=[0.75, 0.5])
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--round-to", type=int, default=1)
    args = ap.parse_args()
    root = os.path.dirname(HERE)
    for name in MODELS:
        path = os.path.join(root, "models", f"{name}.onnx")
        data = np.load(os.path.join(root, "models", f"{name}_data.npz"))
        x, y = data["input"], data["labels"]
        xc, xe, ye = x[:args.calib], x[args.calib:], y[args.calib:]
        groups = onnxprune.analyze(path)
        requests = calibration_requests(groups, gram=True)
        t0 = time.perf_counter()
        cal = calibrate(groups.model, {"input": xc}, requests, batch=16)
        cal_s = time.perf_counter() - t0
        plain_setup, plain_s = plain_pass_seconds(groups.model, xc, 16)
        stream_ratio = (cal.seconds - cal.setup_seconds) / plain_s
        small = peak_mib(groups, xc[:32], requests)
        big = peak_mib(groups, np.concatenate([xc] * 1)[:128], requests)
        base = accuracy(groups.model, xe, ye)
        print(f"\n{name}: accuracy {base:.3f} on {len(xe)} held-out samples; calibration on {len(xc)} "
              f"samples: {cal_s:.2f} s = {cal_s / (plain_setup + plain_s):.1f}x one plain onnxruntime "
              f"pass with its session ({plain_setup + plain_s:.2f} s); streaming part alone "
              f"{stream_ratio:.1f}x; peak memory {small:.1f} MiB (32 samples) vs {big:.1f} MiB (128)")
        for target in args.targets:
            rows = {}
            for crit in CRITERIA:
                sc = score(groups, crit, calibration=cal)
                plan = plan_macs(groups, sc, target, round_to=args.round_to)
                rows[crit] = []
                for mode in MODES:
                    comp = compensate(groups, plan.keep, cal, mode)
                    rows[crit].append(accuracy(apply(groups, plan.keep, compensation=comp), xe, ye))
            ref = rows["l2"][0]
            print(f"  MACs x{target:.2f} (ratio {plan.ratio:.2f})   none    bias    lsq    | l2/none = {ref:.3f}")
            for crit in CRITERIA:
                cells = "  ".join(f"{a:.3f}" for a in rows[crit])
                print(f"    {crit:<9} {cells}")
            best = max((a, c, m) for c in CRITERIA for a, m in zip(rows[c], MODES))
            print(f"    best: {best[1]}/{best[2]} {best[0]:.3f} (l2/none {ref:.3f}, +{best[0] - ref:.3f})")


if __name__ == "__main__":
    main()
