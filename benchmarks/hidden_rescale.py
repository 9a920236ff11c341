"""Does rescaling the norms compensate a hidden-size prune?

    python benchmarks/hidden_rescale.py [--ratios 0.25 0.5]

The digits transformer (``tests/fixtures/transformers/digits_tf_ts.onnx``,
trained on scikit-learn's digits) loses its hidden channels with
``prune="hidden"``; its LayerNorms then normalise over the kept channels
only. The candidate compensation multiplies each norm's scale by
``s = E[sigma_kept / sigma_all]``, the mean over calibration tokens of the
standard deviation over the kept channels against that over all channels,
measured on the original model's norm inputs (so the kept part keeps its
original magnitude). Printed: held-out accuracy without and with the rescale,
after a prune with no compensation and with the defaults (lsq and sequential
refits), and each norm's ``s``.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import onnxprune  # noqa: E402
from onnxprune.core.runtime import exposing, session  # noqa: E402

ZOO = os.path.join(ROOT, "tests", "fixtures", "transformers")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5])
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    d = np.load(os.path.join(ZOO, "digits_data.npz"))
    cal, val, labels = d["x"][:300], d["x"][300:], d["labels"][300:]
    path = os.path.join(ZOO, "digits_tf_ts.onnx")
    original = onnx.load(path)
    norms = [n for n in original.graph.node if n.op_type == "LayerNormalization"]
    sess, _ = exposing(original, [n.input[0] for n in norms])
    inputs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": cal})))

    def accuracy(model) -> float:
        (y,) = session(model).run(None, {"x": val})
        return float((y.argmax(-1) == labels).mean())

    print(f"original accuracy {accuracy(original):.3f}")
    print(f"{'ratio':>5} {'compensation':>12} {'plain':>6} {'rescaled':>8}  s per norm")
    for ratio in args.ratios:
        for comp in ("none", "lsq"):
            res = onnxprune.prune(path, ratio=ratio, prune="hidden", calib={"x": cal}, compensate=comp,
                                  round_to=1)
            hidden = next(g for g in res.groups.groups if g.inexact)
            keep = np.sort(res.plan.keep[hidden.id])
            rescaled = onnx.ModelProto()
            rescaled.CopyFrom(res.model)
            weights = {t.name: t for t in rescaled.graph.initializer}
            scales = []
            for before, after in zip(norms, [n for n in rescaled.graph.node if n.op_type == "LayerNormalization"]):
                x = inputs[before.input[0]]
                x = x.reshape(-1, x.shape[-1]).astype(np.float64)
                s = float(np.mean(x[:, keep].std(-1) / x.std(-1)))
                scales.append(s)
                t = weights[after.input[1]]
                t.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(t) * s).astype(np.float32), t.name))
            print(f"{ratio:>5} {comp:>12} {accuracy(res.model):>6.3f} {accuracy(rescaled):>8.3f}  "
                  + " ".join(f"{s:.3f}" for s in scales))


if __name__ == "__main__":
    main()
