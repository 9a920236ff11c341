"""Fidelity without retraining: which defaults keep accuracy at a MACs budget.

    python benchmarks/fidelity.py [--quick] [--models resnet_mnist ...] [--targets 0.75 0.5]
                                  [--calib-n 128] [--variants 3] [--json OUT] [--no-ratio-check]

For every sample model in models/ the held-out ``<name>_data.npz`` is split:
the first ``--calib-n`` samples are written to a temporary calibration npz, the
remaining ones to a disjoint validation npz. Every prune passes both
(``calib=`` and ``data=``): with ``--data`` given, the pipeline's hold-out rule
(the last quarter of ``--calib`` validates when there is no ``--data``) does
not apply, so calibration reads exactly the calibration file and no
validation sample is ever calibrated on.

For each model, ``--macs-target`` and grid point it prints one row. The grid:
``DEFAULT (no flag)`` (only ``calib``/``data``/``macs_target`` passed: what a user
gets, whatever the library's defaults are at the time; the row shows what they
resolved to), then criterion x compensation x round-to (``auto``: the library's
own rounding, when it has one) [x ``--allocate``], then group-reduction x
normalize for the best few. ``dflt`` in a label means "not passed". Per row:

* the task metric on the validation split: top-1 accuracy for the classifiers,
  global mask IoU (``mask_logits > 0`` vs ``target``) for the U-Net, and the
  drop in points from the original model on the same samples;
* top-1 agreement and centred cosine (per sample, outputs minus their mean)
  between the original and pruned outputs;
* MACs and params ratios (pruned / original, from the prune report);
* latency ratios: the report's (``validate``: batch 1, 30 runs, not
  interleaved) and our own (original and pruned runs interleaved, batch 1
  and batch 32, median), since the report's is noisy on a shared machine;
* wall time of the ``onnxprune.prune`` call (calibration, scoring, rewrite,
  checks and validation) and the calibration seconds (BLAS is limited to one
  thread, see below).

It ends with the best combination per model and target, the best single
default across all models (ranked by goal failures, then mean drop; also the
worst-case drop), the latency-vs-MACs picture, and (unless
``--no-ratio-check``) the README's ``--ratio 0.3`` command run through the CLI.

Goal: with calibration data and no other flag, lose at most 1 point
at 75% of the MACs and 3 points at 50%.
"""
from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import pkgutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

# One BLAS thread: on a shared 2-core machine a multithreaded OpenBLAS makes the
# lsq Gram statistics 3-7x slower and the wall times meaningless (measured).
# Set ONNXPRUNE_BENCH_BLAS_THREADS to override.
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, os.environ.get("ONNXPRUNE_BENCH_BLAS_THREADS", "1"))

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import onnxprune  # noqa: E402

# Import every submodule now: the run then uses one consistent version of the
# package even if the files change while it runs (no lazy import later).
for _m in pkgutil.walk_packages(onnxprune.__path__, "onnxprune."):
    importlib.import_module(_m.name)

from onnxprune.check.validate import run_batched  # noqa: E402
from onnxprune.core.runtime import session  # noqa: E402
from onnxprune.select.importance import ALL_CRITERIA  # noqa: E402
from onnxprune.stages.config import PruneConfig  # noqa: E402

_FIELDS = set(PruneConfig.__dataclass_fields__)

MODELS = ["resnet_mnist", "densenet_mnist", "mobilenet_mnist", "unet_mnist"]
# Criteria and options the installed package knows (it gains some: obs, auto rounding, --allocate).
_EXTRA = [c for c in ("obs",) if c in ALL_CRITERIA]
CRITERIA = ["l2", "bn", "fpgm", "act_l2", "mean_abs", "apoz", "relief", "flap"] + _EXTRA
COMPENSATE = ["none", "bias", "lsq"]
AUTO_ROUND = PruneConfig.__dataclass_fields__["round_to"].default is None  # round_to=None: library rounding
ROUND_TO = [1, 8] + (["auto"] if AUTO_ROUND else [])
QUICK_CRITERIA = ["l2", "fpgm", "act_l2", "relief", "flap"] + _EXTRA
REDUCTIONS = ["mean", "sum", "max"]
NORMALIZE = ["mean", "max", "none"]
GOAL = {0.75: 1.0, 0.5: 3.0}  # max drop in points
# A combo: (criterion, compensate, round_to, group_reduction, normalize, allocate, sequential);
# None = not passed (the library's default). DEFAULT passes nothing: "--calib (and --data), no
# other flag".
DEFAULT = (None, None, None, None, None, None, None)
# --ablation: the defaults with one option switched off at a time, and the old plain baseline
ABLATION = [
    DEFAULT,
    (None, None, None, None, None, None, False),  # no sequential reconstruction
    (None, None, None, None, None, "uniform", None),  # uniform allocation (no prices)
    (None, None, None, None, None, "global", None),  # global allocation priced by obs, never by a sweep
    ("act_l2", None, None, None, None, None, None),  # selection by a per-channel score, not obs
    (None, "bias", None, None, None, None, None),  # bias compensation, not lsq (so no refit)
    (None, "none", None, None, None, None, None),  # no compensation
    (None, None, 1, None, None, None, None),  # no rounding
    ("l2", "none", 1, None, None, "uniform", False),  # plain magnitude pruning
]


def log(msg: str = "") -> None:
    print(msg, flush=True)


# -- data and metrics ---------------------------------------------------------------------
def split(name: str, calib_n: int, tmp: str):
    data = dict(np.load(os.path.join(ROOT, "models", f"{name}_data.npz")))
    n = len(data["input"])
    if not 0 < calib_n < n:
        raise SystemExit(f"--calib-n must be in (0, {n})")
    calib = {k: v[:calib_n] for k, v in data.items()}
    val = {k: v[calib_n:] for k, v in data.items()}
    cpath, vpath = os.path.join(tmp, f"{name}_calib.npz"), os.path.join(tmp, f"{name}_val.npz")
    np.savez(cpath, **calib)
    np.savez(vpath, **val)
    return data, val, cpath, vpath


def metric(out: np.ndarray, val: dict) -> tuple[str, float]:
    if "labels" in val:
        return "acc", float(np.mean(out.argmax(1) == val["labels"]))
    pred, tgt = out > 0, val["target"].astype(bool)
    return "iou", float((pred & tgt).sum() / max(1, (pred | tgt).sum()))


def pixel_acc(out: np.ndarray, val: dict) -> float | None:
    return None if "target" not in val else float(np.mean((out > 0) == val["target"].astype(bool)))


def centred_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where((na == 0) & (nb == 0), 1.0, (a * b).sum(axis=1) / (na * nb))
    return float(np.nan_to_num(cos, nan=0.0).mean())


def forward(sess, x: np.ndarray) -> np.ndarray:
    return run_batched(sess, {"input": x}, None)[0]


def interleaved_latency(sa, sb, x: np.ndarray, batch: int, runs: int, rounds: int = 3) -> tuple[float, float]:
    """Median ms per run of two sessions, timed in alternating blocks so that load
    from other processes hits both alike."""
    feed = {"input": x[:batch]}
    for s in (sa, sb):
        for _ in range(3):
            s.run(None, feed)
    ta, tb = [], []
    for _ in range(rounds):
        for s, times in ((sa, ta), (sb, tb)):
            for _ in range(runs):
                t0 = time.perf_counter()
                s.run(None, feed)
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ta), statistics.median(tb)


# -- one prune ------------------------------------------------------------------------------
def options(combo: tuple) -> dict:
    crit, comp, rt, red, norm, alloc, seq = combo
    given = {"criterion": crit, "compensate": comp, "round_to": None if rt == "auto" else rt,
             "group_reduction": red, "normalize": norm, "allocate": alloc, "sequential": seq}
    return {k: v for k, v in given.items() if v is not None and (k in _FIELDS or k == "criterion")}


def cli_equivalent(name, target, combo, cpath, vpath) -> str:
    cmd = f"onnxprune prune models/{name}.onnx -o /tmp/out.onnx --macs-target {target}"
    for k, v in options(combo).items():
        cmd += f" --{'no-' if v is False else ''}{k.replace('_', '-')}" + ("" if isinstance(v, bool) else f" {v}")
    return cmd + f" --calib {cpath} --data {vpath}"


def run_one(ctx: dict, target: float, combo: tuple, args) -> dict:
    crit, comp, rt, red, norm, alloc, seq = combo
    name = ctx["name"]
    row = {"model": name, "target": target, "criterion": crit, "compensate": comp, "round_to": rt,
           "group_reduction": red, "normalize": norm, "allocate": alloc, "sequential": seq,
           "default": combo == DEFAULT,
           "label": name_of(combo)}
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = onnxprune.prune(ctx["path"], macs_target=target, calib=ctx["calib"],
                                  data=ctx["val_path"], validate=True, **options(combo))
    except Exception as e:  # noqa: BLE001 - a crash is a result
        row.update(error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                   traceback=traceback.format_exc(limit=6),
                   command=cli_equivalent(name, target, combo, ctx["calib"], ctx["val_path"]),
                   wall_s=time.perf_counter() - t0)
        return row
    row["wall_s"] = time.perf_counter() - t0
    rep, v = res.report, res.validation
    row["calib_s"] = rep.calibration["seconds"] if rep.calibration else 0.0
    row["calib_samples"] = rep.calibration["samples"] if rep.calibration else 0
    row["resolved"] = f"{rep.criterion}/{rep.compensate}" + ("/seq" if getattr(rep, "sequential", None) else "")
    seq_rep = getattr(rep, "sequential", None)
    row["seq_s"] = seq_rep["seconds"] if seq_rep else 0.0
    row["macs_ratio"] = rep.macs["after"] / rep.macs["before"]
    row["params_ratio"] = rep.params["after"] / rep.params["before"]
    row["uniform_ratio"] = rep.ratio
    row["skipped"] = len(rep.compensation_skipped)
    row["lat_report"] = v.latency_ms["after"] / v.latency_ms["before"]
    row["report_acc_after"] = v.accuracy_after
    row["report_cos"] = v.cosine_mean
    sb = session(res.model, threads=1)
    out = forward(sb, ctx["val"]["input"])
    kind, m = metric(out, ctx["val"])
    row.update(metric=kind, value=m, drop=(ctx["orig_value"] - m) * 100,
               ccos=centred_cosine(ctx["orig_out"], out))
    if ctx["orig_out"].ndim == 2:
        row["top1_agree"] = float(np.mean(ctx["orig_out"].argmax(1) == out.argmax(1)))
    px = pixel_acc(out, ctx["val"])
    if px is not None:
        row["pixel_acc"] = px
    if args.latency_runs:
        a1, b1 = interleaved_latency(ctx["sess"], sb, ctx["val"]["input"], 1, args.latency_runs)
        a32, b32 = interleaved_latency(ctx["sess"], sb, ctx["val"]["input"], 32, max(3, args.latency_runs // 8))
        row["lat_b1"], row["lat_b32"] = b1 / a1, b32 / a32
    return row


def fmt_row(r: dict) -> str:
    head = f"{r['model'][:-6]:<9} {r['target']:<4} {r['label']:<30}"
    if "error" in r:
        return f"{head}  CRASH {r['error']}"
    lat = (f"{r.get('lat_report', float('nan')):5.2f} {r.get('lat_b1', float('nan')):5.2f} "
           f"{r.get('lat_b32', float('nan')):5.2f}")
    agree = f"{r['top1_agree']:.3f}" if "top1_agree" in r else "  -  "
    mark = f" *default ({r['resolved']})" if r["default"] else ""
    return (f"{head}  {r['metric']} {r['value']:.4f} {r['drop']:+6.2f}  {agree} {r['ccos']:.4f}  "
            f"{r['macs_ratio']:.3f} {r['params_ratio']:.3f}  {lat}  {r['wall_s']:5.1f} "
            f"{r['calib_s']:4.1f}{mark}")


HEADER = ("model     tgt  criterion/compensate/round-to[/red-norm][/alloc]  metric  value   drop   "
          "agree ccos    macs  params lat_r lat1  lat32  wall  cal")


# -- summaries --------------------------------------------------------------------------------
def key(r: dict) -> tuple:
    return (r["criterion"], r["compensate"], r["round_to"], r["group_reduction"], r["normalize"],
            r.get("allocate"), r.get("sequential"))


def name_of(k: tuple) -> str:
    if tuple(k) == DEFAULT:
        return "DEFAULT (no flag)"
    crit, comp, rt, red, norm, alloc, seq = k
    s = f"{crit or 'dflt'}/{comp or 'dflt'}/rt{rt or 'dflt'}"
    if (red or "mean", norm or "mean") != ("mean", "mean"):
        s += f"/{red or 'mean'}-{norm or 'mean'}"
    if alloc:
        s += f"/{alloc}"
    if seq is not None:
        s += "/seq" if seq else "/no-seq"
    return s


def best_per_cell(rows: list[dict]) -> None:
    log("\n== best combination per model and target (max metric, ties: centred cosine)")
    cells = {}
    for r in rows:
        if "error" not in r:
            cells.setdefault((r["model"], r["target"]), []).append(r)
    for (m, t), rs in cells.items():
        best = max(rs, key=lambda r: (r["value"], r["ccos"]))
        dflt = next((r for r in rs if r["default"]), None)
        d = f"default {dflt['resolved']} {dflt['drop']:+.2f}" if dflt else "default not run"
        goal = GOAL.get(t)
        ok = "" if goal is None else ("  goal met" if best["drop"] <= goal else f"  goal ({goal}) missed")
        log(f"{m:<16} {t:<4} {name_of(key(best)):<30} {best['metric']} {best['value']:.4f} "
            f"drop {best['drop']:+.2f}  macs {best['macs_ratio']:.3f}  lat1 {best.get('lat_b1', float('nan')):.2f}"
            f"  ({d}){ok}")


def best_default(rows: list[dict], limit: int = 12) -> list[dict]:
    cells = sorted({(r["model"], r["target"]) for r in rows})
    by = {}
    for r in rows:
        by.setdefault(key(r), {})[(r["model"], r["target"])] = r
    ranked = []
    for k, got in by.items():
        if set(got) != set(cells):
            continue
        crashed = [c for c, r in got.items() if "error" in r]
        drops = {c: (float("inf") if "error" in r else r["drop"]) for c, r in got.items()}
        fails = sum(1 for (m, t), d in drops.items() if t in GOAL and d > GOAL[t])
        excess = max((d - GOAL.get(t, 0.0)) for (m, t), d in drops.items())
        worst = max(drops.items(), key=lambda kv: kv[1])
        per_t = {t: max(d for (m, tt), d in drops.items() if tt == t) for t in sorted({t for _, t in cells})}
        ranked.append({"combo": name_of(k), "key": list(k), "fails": fails, "crashed": len(crashed),
                       "mean_drop": float(np.mean(list(drops.values()))), "worst_drop": worst[1],
                       "worst_cell": f"{worst[0][0]}@{worst[0][1]}", "worst_excess": excess,
                       "worst_by_target": per_t,
                       "mean_lat_b1": float(np.mean([r.get("lat_b1", np.nan) for r in got.values()
                                                     if "error" not in r]))})
    log(f"\n== best single default over {len(cells)} model/target cells "
        f"(goal: drop <= {', '.join(f'{g} pts at {t}' for t, g in GOAL.items())})")
    log("-- ranked by goal failures, then mean drop")
    ranked.sort(key=lambda d: (d["crashed"], d["fails"], d["mean_drop"]))
    show = ranked[:limit] + [d for d in ranked[limit:] if tuple(d["key"]) == DEFAULT]
    for d in show:
        wt = "  ".join(f"worst@{t} {v:+.2f}" for t, v in d["worst_by_target"].items())
        mark = "  *current default" if tuple(d["key"]) == DEFAULT else ""
        log(f"{d['combo']:<30} fails {d['fails']}  mean {d['mean_drop']:+6.2f}  worst {d['worst_drop']:+6.2f} "
            f"({d['worst_cell']})  {wt}  lat1 {d['mean_lat_b1']:.2f}{mark}")
    log("-- ranked by worst excess over the goal")
    for d in sorted(ranked, key=lambda d: (d["crashed"], d["worst_excess"], d["mean_drop"]))[:5]:
        log(f"{d['combo']:<30} worst excess {d['worst_excess']:+6.2f}  mean {d['mean_drop']:+6.2f}  "
            f"worst {d['worst_drop']:+6.2f} ({d['worst_cell']})")
    return ranked


def pivot(rows: list[dict]) -> None:
    """Points lost per combo (rows) and model x target (columns), with the
    median latency/MACs ratio: the ablation table."""
    cells = sorted({(r["model"], r["target"]) for r in rows}, key=lambda c: (MODELS.index(c[0]), -c[1]))
    combos = list(dict.fromkeys(key(r) for r in rows))
    by = {(key(r), r["model"], r["target"]): r for r in rows}
    log("\n== points lost (validation split) per option switched off; lat/macs: median over the cells")
    log(f"{'':<32}" + "".join(f"{m.split('_')[0][:8]:>9}{t:<4}" for m, t in cells) + "   mean  worst  lat/macs")
    for k in combos:
        got = [by.get((k, m, t)) for m, t in cells]
        drops = [r["drop"] if r and "error" not in r else float("nan") for r in got]
        lat = [r["lat_b1"] / r["macs_ratio"] for r in got if r and "lat_b1" in r]
        log(f"{name_of(k):<32}" + "".join(f"{d:>13.1f}" for d in drops)
            + f"  {np.nanmean(drops):5.1f}  {np.nanmax(drops):5.1f}  "
            + (f"{statistics.median(lat):.2f}" if lat else "  -"))


def latency_summary(rows: list[dict]) -> None:
    log("\n== latency ratio vs MACs ratio (medians over the grid; lat_r: report, lat1/lat32: interleaved)")
    groups = {}
    for r in rows:
        if "error" not in r:
            groups.setdefault((r["model"], r["target"], str(r["round_to"] or "dflt")), []).append(r)
    for (m, t, rt), rs in sorted(groups.items()):
        med = lambda k: statistics.median([r[k] for r in rs if k in r]) if any(k in r for r in rs) else float("nan")  # noqa: E731
        log(f"{m:<16} {t:<4} rt{rt:<2} n={len(rs):<3} macs {med('macs_ratio'):.3f}  params {med('params_ratio'):.3f}  "
            f"lat_r {med('lat_report'):.2f}  lat1 {med('lat_b1'):.2f}  lat32 {med('lat_b32'):.2f}")


def ratio_check(names: list[str], ctxs: dict, tmp: str) -> list[dict]:
    """The README's command (--ratio 0.3, --data the whole npz, no calibration),
    and the same ratio with the calibration split (default compensation: bias)."""
    log("\n== --ratio 0.3 with default flags, through the CLI")
    out = []
    for name in names:
        ctx = ctxs[name]
        full = os.path.join(ROOT, "models", f"{name}_data.npz")
        for label, extra, data in (("README: --data full npz", ["--data", full], None),
                                   ("--calib split --data val", ["--calib", ctx["calib"], "--data", ctx["val_path"]], ctx["val"])):
            onnx_out, rep = os.path.join(tmp, f"{name}_r03.onnx"), os.path.join(tmp, f"{name}_r03.json")
            cmd = [sys.executable, "-m", "onnxprune.cli", "prune", os.path.join(ROOT, "models", f"{name}.onnx"),
                   "-o", onnx_out, "--ratio", "0.3", "--report", rep, "-q", *extra]
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            wall = time.perf_counter() - t0
            row = {"model": name, "case": label, "rc": p.returncode, "wall_s": wall}
            if p.returncode != 0:
                row["error"] = p.stderr.strip()[-400:]
                log(f"{name:<16} {label:<26} FAILED rc={p.returncode}: {row['error']}")
                out.append(row)
                continue
            with open(rep) as f:
                d = json.load(f)
            val = d["validation"]
            ev = dict(np.load(full)) if data is None else data
            cal = d.get("calibration") or {}
            if data is None and cal.get("samples") and not cal.get("random"):
                # --data alone now also calibrates (on its first samples): score the rest only
                ev = {k: v[cal["samples"]:] for k, v in ev.items()}
            import onnx
            sb = session(onnx.load(onnx_out), threads=1)
            sa = session(onnx.load(ctx["path"]), threads=1)
            oa, ob = forward(sa, ev["input"]), forward(sb, ev["input"])
            kind, before = metric(oa, ev)
            _, after = metric(ob, ev)
            row.update(metric=kind, before=before, after=after, drop=(before - after) * 100,
                       report_acc=(val["accuracy_before"], val["accuracy_after"]),
                       macs_ratio=d["macs"]["after"] / d["macs"]["before"],
                       params_ratio=d["params"]["after"] / d["params"]["before"],
                       lat_report=d["latency_ms"]["after"] / d["latency_ms"]["before"],
                       compensate=d["compensate"], ccos=centred_cosine(oa, ob))
            a1, b1 = interleaved_latency(sa, sb, ev["input"], 1, 40)
            row["lat_b1"] = b1 / a1
            row.update(criterion=d["criterion"], eval_samples=len(ev["input"]))
            log(f"{name:<16} {label:<26} {kind} {before:.4f} -> {after:.4f} (drop {row['drop']:+.2f}, "
                f"{len(ev['input'])} samples)  {d['criterion']}/{row['compensate']:<4} ccos {row['ccos']:.3f}  "
                f"macs {row['macs_ratio']:.3f}  "
                f"params {row['params_ratio']:.3f}  lat_r {row['lat_report']:.2f}  lat1 {b1 / a1:.2f}  "
                f"wall {wall:.1f}s")
            out.append(row)
    return out


# -- main ---------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--targets", nargs="+", type=float, default=[0.75, 0.5])
    ap.add_argument("--quick", action="store_true", help=f"reduced grid: {', '.join(QUICK_CRITERIA)} x "
                    f"{', '.join(COMPENSATE)}, round-to 1, no reduction/normalize variants")
    ap.add_argument("--criteria", nargs="+", choices=sorted(set(CRITERIA) | set(ALL_CRITERIA)))
    ap.add_argument("--compensate", nargs="+", choices=COMPENSATE)
    ap.add_argument("--round-to", nargs="+", type=lambda v: v if v == "auto" else int(v),
                    help="1, 8, ... or auto (the library's default rounding, when it has one)")
    ap.add_argument("--allocate", nargs="+", help="budget allocations to try (default: the library's)")
    ap.add_argument("--no-default", action="store_true", help="do not add the no-flag DEFAULT run")
    ap.add_argument("--ablation", action="store_true",
                    help="instead of a grid: the defaults, each option switched off in turn, and plain l2")
    ap.add_argument("--variants", type=int, default=None,
                    help="after the grid, run the best N combos with every group-reduction x normalize "
                         "(default 3, 0 with --quick)")
    ap.add_argument("--calib-n", type=int, default=128, help="first N samples calibrate, the rest validate")
    ap.add_argument("--latency-runs", type=int, default=40, help="interleaved batch-1 runs per round (0: skip)")
    ap.add_argument("--no-ratio-check", action="store_true", help="skip the --ratio 0.3 CLI runs")
    ap.add_argument("--json", metavar="OUT", help="write every row and summary as JSON")
    args = ap.parse_args()

    criteria = args.criteria or (QUICK_CRITERIA if args.quick else CRITERIA)
    comps = args.compensate or COMPENSATE
    rts = args.round_to or ([ROUND_TO[-1]] if args.quick else ROUND_TO)
    if args.allocate and "allocate" not in _FIELDS:
        raise SystemExit("--allocate: this onnxprune has no allocate option")
    allocs = args.allocate or [None]
    variants = args.variants if args.variants is not None else (0 if args.quick else 3)
    grid = ([] if args.no_default else [DEFAULT]) + \
        [(c, m, r, None, None, a, None) for c, m, r, a in itertools.product(criteria, comps, rts, allocs)]
    if args.ablation:
        grid, variants = list(ABLATION), 0

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--short", "onnxprune"], cwd=ROOT, capture_output=True,
                               text=True).stdout.split("\n")
        dirty = [d.strip() for d in dirty if d.strip()]
    except OSError:
        head, dirty = "?", []
    import onnxruntime

    log(f"fidelity benchmark: onnxprune @ {head} ({len(dirty)} modified files under onnxprune/), "
        f"onnxruntime {onnxruntime.__version__}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}")
    log(f"models {args.models}  targets {args.targets}  grid {len(grid)} combos "
        f"({'quick' if args.quick else 'full'})  variants {variants}  calib: first {args.calib_n} samples, "
        f"validation: the rest")
    t_start = time.perf_counter()
    rows, ctxs = [], {}
    with tempfile.TemporaryDirectory(prefix="fidelity-") as tmp:
        log("\n== original models (validation split; full npz for reference)")
        for name in args.models:
            data, val, cpath, vpath = split(name, args.calib_n, tmp)
            import onnx
            path = os.path.join(ROOT, "models", f"{name}.onnx")
            sess = session(onnx.load(path), threads=1)
            out = forward(sess, val["input"])
            kind, v = metric(out, val)
            _, vfull = metric(forward(sess, data["input"]), data)
            ctxs[name] = {"name": name, "path": path, "calib": cpath, "val_path": vpath, "val": val,
                          "sess": sess, "orig_out": out, "orig_value": v, "metric": kind}
            px = pixel_acc(out, val)
            log(f"{name:<16} {kind} {v:.4f} on {len(val['input'])} validation samples "
                f"(1 sample = {100 / len(val['input']):.2f} pts); {vfull:.4f} on all {len(data['input'])}"
                + (f"; pixel acc {px:.4f}" if px is not None else ""))

        log("\n== grid (drop: points lost on the validation split; agree: top-1 agreement; ccos: centred "
            "cosine; macs/params: pruned/original; lat_r: report's latency ratio, lat1/lat32: "
            "interleaved batch 1/32; wall: prune call s; cal: calibration s)")
        log(HEADER)

        def run_grid(combos):
            for name in args.models:
                for target in args.targets:
                    for combo in combos:
                        r = run_one(ctxs[name], target, combo, args)
                        rows.append(r)
                        log(fmt_row(r))

        run_grid(grid)
        if variants:
            ranked = best_default(rows, limit=variants)
            top = [tuple(d["key"]) for d in ranked if tuple(d["key"]) != DEFAULT][:variants]
            extra = [(c, m, r, red, norm, a, q) for (c, m, r, _, _, a, q) in top
                     for red, norm in itertools.product(REDUCTIONS, NORMALIZE) if (red, norm) != ("mean", "mean")]
            log(f"\n== group-reduction x normalize variants of the best {variants}: {len(extra)} combos")
            log(HEADER)
            run_grid(extra)

        crashes = [r for r in rows if "error" in r]
        if args.ablation:
            pivot(rows)
        best_per_cell(rows)
        ranked = best_default(rows)
        latency_summary(rows)
        if crashes:
            log(f"\n== {len(crashes)} crashes")
            seen = set()
            for r in crashes:
                log(f"{r['error']}\n  {r['command']}")
                if r["error"] not in seen:
                    seen.add(r["error"])
                    log("  " + r["traceback"].replace("\n", "\n  "))
        ratio_rows = [] if args.no_ratio_check else ratio_check(args.models, ctxs, tmp)
    total = time.perf_counter() - t_start
    log(f"\n{len(rows)} prunes, {len(crashes)} crashes, {total / 60:.1f} min")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        originals = {n: {"metric": c["metric"], "value": c["orig_value"]} for n, c in ctxs.items()}
        with open(args.json, "w") as f:
            json.dump({"head": head, "dirty": dirty, "args": vars(args), "originals": originals,
                       "rows": rows, "ranking": ranked, "ratio_check": ratio_rows, "minutes": total / 60},
                      f, indent=1, default=float)


if __name__ == "__main__":
    main()
