"""Data-driven pruning without retraining: criteria x compensation at MACs budgets.

    python benchmarks/calib_bench.py [--targets 0.75 0.5] [--calib 128]

For each trained sample classifier in models/, the held-out data is split:
the first --calib samples calibrate, the rest evaluate. For every criterion
and compensation (none / bias / lsq) the model is pruned to about 75% and
50% of its MACs (``--macs-target``) and the held-out accuracy is printed next
to the ``l2`` / none baseline. Also: calibration time as a ratio to one plain
onnxruntime pass over the same data, and the peak Python memory of the
calibration pass for 1x and 4x the samples (it must not grow with samples).

Timing mode (goal: calibration at most 1.5x a plain onnxruntime pass):

    python benchmarks/calib_bench.py --timing [--samples 128] [--batch 16] [--reps 5]
                                     [--big resnet50 bert] [--baseline OLD_calibration.py]
                                     [--sequential] [--threads T]

For every sample model (and, with ``--big``, a ResNet-50 / BERT-base built
from a transformers config with random weights, exported once with
torch.onnx into ``benchmarks/.cache/calib/``: dev-only), it times
``calibrate`` with and without Gram matrices (what ``calibration_requests``
asks for) against one plain onnxruntime pass over the same samples, batch
size and session options; runs are interleaved and the medians printed.
``stream`` is the pass without its setup (vs the plain runs alone), ``total``
includes setup (vs the plain session's creation plus its runs).
``ort s`` is the time calibrate spent inside onnxruntime, ``wait s`` waiting
for the statistics (what the runs did not hide), ``stats s`` their time
summed over the threads that took them; ``--sequential`` adds
``overlap=False`` (``seq``: statistics only between runs, ``wait s`` their
whole cost).
``--baseline`` also times another calibration.py (say ``git show
74841a1:onnxprune/calibration.py > /tmp/old.py``, before the calibration speed-up), loaded
as a module of the package, for a before/after table.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
import tracemalloc
import warnings

import numpy as np
import onnx

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import onnxprune  # noqa: E402
from onnxprune.calibration.run import calibrate  # noqa: E402
from onnxprune.check.validate import run_batched, session  # noqa: E402
from onnxprune.core.runtime import session as plain_session  # noqa: E402
from onnxprune.refit.compensate import compensate  # noqa: E402
from onnxprune.rewrite.engine import apply  # noqa: E402
from onnxprune.select.importance import calibration_requests, score  # noqa: E402
from onnxprune.select.planner import plan_macs  # noqa: E402

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


# -- timing mode ---------------------------------------------------------------
CACHE = os.path.join(HERE, ".cache", "calib")
SAMPLE_MODELS = ["resnet_mnist", "mobilenet_mnist", "densenet_mnist", "unet_mnist"]
BIG = ("resnet50", "bert")


def build_big(name: str) -> str:
    """A transformers model from its default config, random weights, exported
    once (TorchScript exporter, symbolic batch) into the cache: dev-only."""
    path = os.path.join(CACHE, f"{name}.onnx")
    if os.path.exists(path):
        return path
    import torch
    import transformers

    os.makedirs(CACHE, exist_ok=True)
    torch.manual_seed(0)
    if name == "resnet50":
        model = transformers.ResNetForImageClassification(transformers.ResNetConfig()).eval()
        args, names, out = (torch.randn(1, 3, 224, 224),), ["pixel_values"], "logits"
    else:
        class Bert(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.m = transformers.BertModel(transformers.BertConfig(), add_pooling_layer=False).eval()

            def forward(self, ids, mask):
                return self.m(input_ids=ids, attention_mask=mask).last_hidden_state

        model = Bert().eval()
        ids = torch.randint(0, 30522, (1, 128))
        args, names, out = (ids, torch.ones_like(ids)), ["input_ids", "attention_mask"], "last_hidden_state"
    axes = {n: {0: "N"} for n in [*names, out]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, path + ".tmp", input_names=names, output_names=[out],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    os.replace(path + ".tmp", path)
    return path


def timing_inputs(name: str, n: int) -> dict:
    rng = np.random.default_rng(0)
    if name == "resnet50":
        return {"pixel_values": rng.standard_normal((n, 3, 224, 224)).astype(np.float32)}
    if name == "bert":
        return {"input_ids": rng.integers(0, 30522, (n, 128)), "attention_mask": np.ones((n, 128), np.int64)}
    return {"input": np.load(os.path.join(os.path.dirname(HERE), "models", f"{name}_data.npz"))["input"][:n]}


def load_baseline(path: str):
    """Another calibration.py, as a module of the package (its relative imports work)."""
    spec = importlib.util.spec_from_file_location("onnxprune._calibration_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def plain_pass(model: onnx.ModelProto, feeds: dict, batch: int, threads) -> tuple[float, float]:
    """(session creation, runs over the data): the session options calibrate's
    session has (its threads, idle threads not spinning)."""
    t0 = time.perf_counter()
    sess = plain_session(model, threads=threads, spinning=False)
    t1 = time.perf_counter()
    n = len(next(iter(feeds.values())))
    for i in range(0, n, batch):
        sess.run(None, {k: v[i:i + batch] for k, v in feeds.items()})
    return t1 - t0, time.perf_counter() - t1


def timing(args) -> None:
    root = os.path.dirname(HERE)
    baseline = load_baseline(args.baseline) if args.baseline else None
    models = [(m, os.path.join(root, "models", f"{m}.onnx"), args.samples) for m in args.models] + \
        [(m, build_big(m), args.big_samples) for m in args.big]
    rows = []
    for name, path, n in models:
        groups = onnxprune.analyze(path)
        feeds = timing_inputs(name, n)
        variants = {"gram": calibration_requests(groups, gram=True),
                    "no gram": calibration_requests(groups, gram=False)}
        impls = {"after": calibrate}
        if args.sequential:
            impls["seq"] = lambda *a, **k: calibrate(*a, overlap=False, **k)
        if baseline is not None:
            impls["before"] = baseline.calibrate
        times: dict = {}
        for rep in range(args.reps):
            setup, run = plain_pass(groups.model, feeds, args.batch, args.threads)
            times.setdefault("plain", []).append((setup, run))
            for impl, fn in impls.items():
                for variant, requests in variants.items():
                    cal = fn(groups.model, feeds, requests, batch=args.batch, threads=args.threads)
                    extra = (getattr(cal, "run_seconds", 0.0), getattr(cal, "stats_seconds", 0.0),
                             getattr(cal, "wait_seconds", 0.0))
                    times.setdefault((impl, variant), []).append((cal.setup_seconds, cal.seconds) + extra)
        med = {k: [statistics.median(c) for c in zip(*v)] for k, v in times.items()}
        p_setup, p_run = med["plain"]
        for (impl, variant), (setup, total, run, stats, wait) in ((k, v) for k, v in med.items() if k != "plain"):
            rows.append((name, n, len(variants[variant]), variant, impl, p_setup + p_run, total,
                         (total - setup) / p_run, total / (p_setup + p_run), run, stats, wait))
        print(f"{name}: plain pass {p_setup:.2f} s session + {p_run:.2f} s runs; "
              f"{len(variants['gram'])} tensors", flush=True)
    print(f"\ncalibration vs one plain onnxruntime pass: batch {args.batch}, threads "
          f"{args.threads or 'onnxruntime default'}, medians of {args.reps} interleaved runs")
    print(f"{'model':<16}{'N':>5} {'stats':<8}{'impl':<7}{'plain s':>8}{'calib s':>9}{'stream':>8}"
          f"{'total':>7}{'ort s':>8}{'stats s':>8}{'wait s':>8}")
    for name, n, _, variant, impl, plain_s, total, stream, ratio, run, stats, wait in rows:
        print(f"{name:<16}{n:>5} {variant:<8}{impl:<7}{plain_s:>8.2f}{total:>9.2f}{stream:>7.2f}x"
              f"{ratio:>6.2f}x{run:>8.2f}{stats:>8.2f}{wait:>8.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", type=float, nargs="+", default=[0.75, 0.5])
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--round-to", type=int, default=1)
    ap.add_argument("--timing", action="store_true", help="time calibration against a plain onnxruntime pass")
    ap.add_argument("--models", nargs="*", default=SAMPLE_MODELS, help="sample models to time")
    ap.add_argument("--big", nargs="*", default=[], choices=BIG, help="also time these (built once, dev-only)")
    ap.add_argument("--samples", type=int, default=128, help="samples per sample model (timing)")
    ap.add_argument("--big-samples", type=int, default=32, help="samples per big model (timing)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: its own)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--baseline", help="another calibration.py to time as 'before'")
    ap.add_argument("--sequential", action="store_true", help="also time calibrate(overlap=False) as 'seq'")
    args = ap.parse_args()
    if args.timing:
        timing(args)
        return
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
