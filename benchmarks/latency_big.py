"""Latency against MACs on a real-size CNN (speed should follow MACs).

    python benchmarks/latency_big.py [--targets 0.75 0.5] [--round-to default 1 16] [--rounds 3]

Prunes ResNet-50 (a transformers config with random weights, built once into
benchmarks/.cache/ by calib_bench.build_big: dev extra) without data at each
MACs target and rounding, then times the original and the pruned model
alternately (batch 1, one onnxruntime thread, median of the rounds) and
prints the latency ratio next to the MACs ratio. The sample models are too
small for this (per-op overhead dominates their sub-millisecond runs).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import onnxprune  # noqa: E402
from onnxprune.core.runtime import session  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", nargs="+", type=float, default=[0.75, 0.5])
    ap.add_argument("--round-to", nargs="+", default=["default", "1"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    from calib_bench import build_big

    path = build_big("resnet50")
    x = {"pixel_values": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    s0 = session(path, threads=1)
    print(f"{'target':>6} {'round-to':>8} {'MACs':>6} {'latency':>8} {'lat/macs':>8} {'original ms':>11}")
    for t in args.targets:
        for rt in args.round_to:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = onnxprune.prune(path, macs_target=t, round_to=None if rt == "default" else int(rt),
                                    input_shapes={"pixel_values": [1, 3, 224, 224]})
            s1 = session(r.model, threads=1)
            a, b = [], []
            for _ in range(args.rounds):
                for s, acc in ((s0, a), (s1, b)):
                    s.run(None, x)
                    t0 = time.perf_counter()
                    for _ in range(args.runs):
                        s.run(None, x)
                    acc.append((time.perf_counter() - t0) / args.runs)
            m = r.report.macs["after"] / r.report.macs["before"]
            lat = statistics.median(b) / statistics.median(a)
            print(f"{t:6.2f} {rt:>8} {m:6.3f} {lat:8.3f} {lat / m:8.2f} {1000 * statistics.median(a):11.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
