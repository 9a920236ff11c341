"""Sensitivity sweeps: serial against a process pool and Ray actors, and
against jobs that run the whole pruned model.

    python benchmarks/sweep.py [--model resnet_mnist] [--jobs 2] [--no-ray]

Runs the same sweep (default ratios, ``--samples`` calibration samples of
the model's data, the last quarter held out) serially, on a pool of ``--jobs`` processes
and on a local Ray instance with as many actors, checks that the rows are
identical, and prints each wall time and its ratio to the serial one. The
parallel runs pay a start-up (workers build their own calibration), so the
speed-up grows with the number of jobs. A last serial run makes every job
run its whole pruned model instead of the tail its group changes (the
damage then agrees to float rounding; a model whose output sorts near-equal
scores, a TopK head, can swap two of them: the largest difference is
printed).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from onnxprune.search import sensitivity  # noqa: E402
from onnxprune.search.sensitivity import sweep  # noqa: E402


def key(rows):
    return [(r["group"], r["ratio"], r["kept"], round(r["damage"], 12)) for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet_mnist", help="a sample model's name, or a path to an .onnx")
    ap.add_argument("--data", help="calibration .npz for a --model path")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--samples", type=int, default=192, help="calibration samples (a quarter is held out)")
    args = ap.parse_args()
    ap_model = args.model
    if ap_model.endswith(".onnx"):  # any model, with --data
        model, data = ap_model, args.data
    else:
        model = os.path.join(ROOT, "models", f"{ap_model}.onnx")
        data = os.path.join(ROOT, "models", f"{ap_model}_data.npz")
    runs = [("serial", {}), (f"pool --jobs {args.jobs}", {"jobs": args.jobs})]
    if not args.no_ray:
        runs.append((f"ray local, {args.jobs} actors", {"jobs": args.jobs, "ray": "local"}))
    runs.append(("serial, whole models", {}))
    base = None
    for label, kw in runs:
        if label.endswith("whole models"):
            sensitivity.tail = lambda model, original: None  # every job runs its whole model
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                res = sweep(model, calib=data, calib_samples=args.samples, **kw)
            except Exception as e:  # noqa: BLE001 - Ray missing or failing: say so, go on
                print(f"{label:<24} skipped: {e}")
                continue
        dt = time.perf_counter() - t0
        if base is None:
            base, rows = dt, key(res.rows)
        same = key(res.rows) == rows
        jobs_same = [a[:3] for a in key(res.rows)] == [b[:3] for b in rows]
        gap = max((abs(a[3] - b[3]) for a, b in zip(key(res.rows), rows)), default=0.0)
        verdict = "identical" if same else f"max damage difference {gap:.1e}" if jobs_same else "DIFFER"
        print(f"{label:<24} {len(res.rows):4d} jobs {dt:7.1f} s  x{dt / base:5.2f} of serial  "
              f"rows {verdict}", flush=True)


if __name__ == "__main__":
    main()
