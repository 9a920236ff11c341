"""Edge (weight) pruning on the sample models: accuracy and storage at each
sparsity, with and without the weight update.

    python benchmarks/edges.py [--models resnet_mnist ...] [--sparsity 0.5 0.7 0.9] [--calib-n 128]

Calibrates on the first ``--calib-n`` samples of each model's data and
measures on the rest: points lost (accuracy, or mask IoU for the U-Net),
the weights' compressed size against the original's, and their size as
COO sparse initializers against dense. Rows: magnitude (no data), obs
without the update, obs with a one-shot update (every layer fitted on the
original's inputs), obs with the sequential update (the defaults with
data: each layer fitted to the original's output from the inputs of the
model pruned so far), and 2:4.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import onnxprune  # noqa: E402
from onnxprune.core.runtime import session  # noqa: E402


def metric(out, val):
    if "labels" in val:
        return float(np.mean(out.argmax(1) == val["labels"]))
    p, g = out > 0, val["target"].astype(bool)
    return float((p & g).sum() / max((p | g).sum(), 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet_mnist", "densenet_mnist", "mobilenet_mnist",
                                                    "unet_mnist"])
    ap.add_argument("--sparsity", nargs="+", type=float, default=[0.5, 0.7, 0.9])
    ap.add_argument("--calib-n", type=int, default=128)
    args = ap.parse_args()
    rows = [("magnitude, no data", dict(criterion="l1")),
            ("obs, no update", dict(compensate="none")),
            ("obs + one-shot update", dict(sequential=False)),
            ("obs + update (default)", dict())]
    print(f"{'model':<16} {'how':<26} {'sparsity':>8} {'drop pts':>9} {'compressed':>10} {'sparse/dense':>12}")
    for name in args.models:
        data = dict(np.load(os.path.join(ROOT, "models", f"{name}_data.npz")))
        calib = {"input": data["input"][:args.calib_n]}
        val = {k: v[args.calib_n:] for k, v in data.items()}
        path = os.path.join(ROOT, "models", f"{name}.onnx")
        before = metric(session(path).run(None, {"input": val["input"]})[0], val)
        cases = [(label, dict(ratio=r, **kw), f"{r:.2f}") for r in args.sparsity for label, kw in rows]
        cases.append(("obs + update, 2:4", dict(pattern="2:4"), "2:4"))
        for label, kw, what in cases:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = onnxprune.prune(path, mode="edges", calib=None if kw.get("criterion") == "l1" else calib,
                                      **kw)
            after = metric(session(res.model).run(None, {"input": val["input"]})[0], val)
            e = res.report.edges
            print(f"{name:<16} {label:<26} {what:>8} {100 * (before - after):9.2f} "
                  f"{e['compressed_bytes'] / e['compressed_before']:10.3f} {e['sparse_bytes'] / e['dense_bytes']:12.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
