"""Benchmark onnxprune on the sample models in models/.

    python benchmarks/bench.py [--ratios 0.3 0.5] [--criterion l2] [--runs 200]

For every model and ratio it prints params / MACs ratios (pruned / original),
the onnxruntime latency ratio (batch 1, one thread, median of --runs, both
models measured in alternation with the same session settings), fidelity on
the model's held-out data (cosine, top-1 agreement, accuracy before/after),
and the time of the prune pass (analyze + score + plan + rewrite + checker)
next to the time of a plain ``onnx.load`` + ``onnx.save`` of the same model.
"""
from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import onnx

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import onnxprune  # noqa: E402
from onnxprune.check.validate import session  # noqa: E402


def load_save_seconds(path: str, repeat: int = 5) -> float:
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeat):
            t0 = time.perf_counter()
            m = onnx.load(path)
            onnx.save(m, os.path.join(tmp, "copy.onnx"))
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def prune_seconds(path: str, ratio: float, criterion: str, round_to: int = 1, repeat: int = 3):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = onnxprune.prune(path, ratio=ratio, criterion=criterion, round_to=round_to)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def paired_latency(a, b, feeds: dict, runs: int) -> tuple[float, float]:
    """Median latency of two sessions measured in alternation (fair under drift)."""
    one = {k: v[:1] for k, v in feeds.items()}
    for _ in range(20):
        a.run(None, one)
        b.run(None, one)
    ta, tb = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        a.run(None, one)
        t1 = time.perf_counter()
        b.run(None, one)
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return statistics.median(ta) * 1e3, statistics.median(tb) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    ap.add_argument("--criterion", default="l2")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--round-to", type=int, default=1, help="keep channel counts multiples of N")
    ap.add_argument("--models", nargs="*", default=None)
    args = ap.parse_args()
    paths = args.models or sorted(glob.glob(os.path.join(os.path.dirname(HERE), "models", "*.onnx")))
    header = (f"{'model':<18} {'ratio':>5} {'params':>7} {'MACs':>7} {'latency':>8} {'cos_min':>8} "
              f"{'top1_agr':>8} {'acc_before':>10} {'acc_after':>9} {'prune_s':>8} {'load+save_s':>11} "
              f"{'pass/io':>7}")
    print(f"criterion={args.criterion}, round_to={args.round_to}; ratios are pruned/original; latency: batch 1, 1 thread, "
          f"median of {args.runs} alternating runs")
    print(header)
    print("-" * len(header))
    for path in paths:
        name = os.path.basename(path)[:-5]
        data_path = path[:-5] + "_data.npz"
        data = dict(np.load(data_path)) if os.path.exists(data_path) else None
        io_s = load_save_seconds(path)
        for ratio in args.ratios:
            pass_s, result = prune_seconds(path, ratio, args.criterion, args.round_to)
            v = onnxprune.validate(path, result.model, data=data, latency_runs=5)
            feeds = {i.name: data[i.name] for i in onnx.load(path).graph.input} if data else None
            if feeds is not None:
                lat_a, lat_b = paired_latency(session(onnx.load(path)), session(result.model), feeds, args.runs)
            else:
                lat_a, lat_b = v.latency_ms["before"], v.latency_ms["after"]
            p, m = v.params, v.macs
            top1 = "-" if v.top1_agreement is None else f"{v.top1_agreement:.3f}"
            accb = "-" if v.accuracy_before is None else f"{v.accuracy_before:.3f}"
            acca = "-" if v.accuracy_after is None else f"{v.accuracy_after:.3f}"
            print(f"{name:<18} {ratio:>5.2f} {p['after'] / p['before']:>7.3f} {m['after'] / m['before']:>7.3f} "
                  f"{lat_b / lat_a:>8.3f} {v.cosine_min:>8.4f} {top1:>8} {accb:>10} {acca:>9} "
                  f"{pass_s:>8.3f} {io_s:>11.4f} {pass_s / io_s:>7.1f}")


if __name__ == "__main__":
    main()
