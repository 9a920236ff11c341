"""Long fuzz run: random graphs from the op table, random plans, the exactness
oracle (pruned == masked), the full checker and the invariants.

    python benchmarks/fuzz.py [--examples 2000] [--max-blocks 12] [--blocks exporter|control]

Prints how many graphs were tried, how many groups were prunable or frozen,
how many graphs held each block kind (and each variant drawn inside the
blocks: weight sources, RNN directions and read-outs...), and the first
failure (with its hypothesis reproduction) if there is one. ``--blocks
exporter`` draws only the exporter blocks (RNNs, quantized and chained
weights, Gemm / 3-D MatMul); ``--blocks control`` only the control blocks
(networks inside If branches and Loop bodies), each If model checked on
feeds that take each branch.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("ONNXPRUNE_STRICT", "1")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.helpers.fuzz_graphs import BLOCKS, CONTROL_BLOCKS, EXPORTER_BLOCKS, as_written, feed_sets, random_model  # noqa: E402
from tests.helpers.graphs import exact  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--max-blocks", type=int, default=10)
    ap.add_argument("--blocks", choices=("all", "exporter", "control"), default="all")
    args = ap.parse_args()
    blocks = {"all": BLOCKS, "exporter": EXPORTER_BLOCKS, "control": CONTROL_BLOCKS}[args.blocks]
    stats = {"graphs": 0, "prunable": 0, "frozen": 0, "nodes": 0}
    kinds: collections.Counter = collections.Counter()  # graphs holding each block / variant
    t0 = time.perf_counter()

    @settings(max_examples=args.examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def prop(data):
        tags: list[str] = []
        model = random_model(data.draw, st, args.max_blocks, blocks=blocks, tags=tags)
        kinds.update(set(tags))
        seed = data.draw(st.integers(0, 2**16))
        with as_written():
            for feeds in feed_sets(model):  # the same plans on inputs that take each branch
                groups = exact(model, trials=2, seed=seed, feeds=feeds)
        stats["graphs"] += 1
        stats["nodes"] += len(model.graph.node)
        stats["prunable"] += len(groups.prunable)
        stats["frozen"] += len(groups.groups) - len(groups.prunable)
        if stats["graphs"] % 100 == 0:
            print(f"  {stats['graphs']} graphs ({time.perf_counter() - t0:.0f} s)", flush=True)

    failed = None
    try:
        prop()
    except Exception as e:  # noqa: BLE001 - report the failure, not a traceback wall
        failed = e
    print(f"{stats['graphs']} graphs tried ({stats['nodes']} nodes), {stats['prunable']} prunable and "
          f"{stats['frozen']} frozen groups, {time.perf_counter() - t0:.0f} s; "
          + ("no invalid output" if failed is None else f"FAILED: {type(failed).__name__}: {failed}"))
    for note in getattr(failed, "__notes__", []):  # hypothesis' reproduction: the draws
        print(note)
    for title, pick in (("blocks", lambda k: ":" not in k), ("weight sources", lambda k: k.startswith("src:")),
                        ("variants", lambda k: ":" in k and not k.startswith("src:"))):
        items = sorted((k, n) for k, n in kinds.items() if pick(k))
        print(f"graphs with {title}: " + ", ".join(f"{k} {n}" for k, n in items))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
