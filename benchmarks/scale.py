"""Does the prune pass grow linearly with the graph? Time per node over
generated conv chains.

    python benchmarks/scale.py [--nodes 400 1600 3200 12800] [--stages]

Each chain is Conv -> Relu repeated (two nodes per layer, 8 channels, 4x4
maps), built with onnx.helper. For each size it times ``onnxprune.prune``
(analyze + score + plan + rewrite + invariants + full checker; no
validation, nothing written) and prints the time per node and its ratio to
the smallest chain's. Linear growth keeps the ratio near 1 (goal: at most 2
at 12,800 nodes). ``--stages`` also prints the seconds of each stage.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


from onnxprune import stages  # noqa: E402
from onnxprune.stages.config import PruneConfig  # noqa: E402


def conv_chain(nodes: int, channels: int = 8, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    layers = max(1, nodes // 2)
    inits, graph_nodes, x = [], [], "x"
    for i in range(layers):
        w = numpy_helper.from_array((rng.standard_normal((channels, channels, 3, 3)) * 0.2)
                                    .astype(np.float32), f"w{i}")
        b = numpy_helper.from_array(np.zeros(channels, np.float32), f"b{i}")
        inits += [w, b]
        graph_nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}",
                                            pads=[1, 1, 1, 1]))
        graph_nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        x = f"r{i}"
    graph = helper.make_graph(graph_nodes, "chain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 4, 4])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, channels, 4, 4])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def timed_stages(model: onnx.ModelProto, cfg: PruneConfig) -> dict[str, float]:
    out: dict[str, float] = {}

    def t(name, fn, *args):
        t0 = time.perf_counter()
        value = fn(*args)
        out[name] = out.get(name, 0.0) + time.perf_counter() - t0
        return value

    loaded = t("load", stages.load, model, cfg)
    groups = t("analyze", stages.analyze, loaded, cfg)
    scores = t("score", stages.score, groups, None, cfg)
    plan = t("plan", stages.plan, groups, scores, cfg)
    pruned = t("apply", stages.apply, groups, plan, None)
    t("check", stages.check, groups, pruned, cfg)
    t("report", stages.make_report, groups, plan, pruned, None, None, cfg)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[400, 1600, 3200, 12800])
    ap.add_argument("--stages", action="store_true")
    args = ap.parse_args()
    cfg = PruneConfig(ratio=0.25, check=True)
    base = None
    print(f"{'nodes':>7} {'seconds':>9} {'ms/node':>9} {'ratio':>7}" + ("   stages (s)" if args.stages else ""))
    for n in args.nodes:
        model = conv_chain(n)
        stages = timed_stages(model, cfg)
        total = sum(stages.values())
        per = total / n * 1e3
        base = base or per
        extra = "   " + " ".join(f"{k}={v:.2f}" for k, v in stages.items()) if args.stages else ""
        print(f"{n:>7} {total:>9.2f} {per:>9.3f} {per / base:>7.2f}{extra}", flush=True)


if __name__ == "__main__":
    main()
