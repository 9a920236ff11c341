"""Transformers: what prunes, and what pruning heads or MLP
neurons costs, on the zoo of ``tests/fixtures/transformers`` (random weights,
TorchScript and dynamo exports, and the transformer optimizer's ``*_opt``),
on the BERT, ViT and CNN-with-attention fixtures of ``tests/fixtures``, and
on the digits transformer trained there.

    python benchmarks/transformer_zoo.py [--models gpt2_ts ...] [--ratios 0.25 0.5]

Per model: the share of parameters in weights that head groups slice, that
neuron groups slice, that the hidden size slices (``prune='hidden'``: only
norms freeze it; these overlap: a projection is sliced by its heads and by
the hidden size) and in weights no prunable group slices ("frozen"); then for
heads alone (``prune='heads'``), neurons alone and the hidden size alone at
each ratio, with the defaults (calibration data -> obs, lsq, sequential): whether
the output is valid (full checker, onnxruntime), the exactness oracle on the
same plan without compensation (max |pruned - masked| / max |masked|; not 0
for the hidden size, whose norms see fewer channels: that is the point of
measuring),
MACs and onnxruntime latency (batch 1, timed in alternation with the
original), and the mean centred cosine to the original on held-out inputs
(accuracy for the digits model). Counts are exact (``round_to=1``): 25% of 4
heads is one head. The KV-cache decoder steps run with ``allow_io_change``
(their K/V heads shrink the cache inputs and outputs).
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import warnings

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import onnxprune  # noqa: E402
from onnxprune import stages  # noqa: E402
from onnxprune.core.runtime import session  # noqa: E402
from onnxprune.rewrite.engine import apply  # noqa: E402
from tests.models.test_transformers import feeds  # noqa: E402

ZOO = os.path.join(ROOT, "tests", "fixtures", "transformers")


def data_for(name: str, model) -> tuple[dict, dict, np.ndarray | None]:
    """(calibration feeds, held-out feeds, labels or None)."""
    if name.startswith("digits_tf"):
        d = np.load(os.path.join(ZOO, "digits_data.npz"))
        return {"x": d["x"][:300]}, {"x": d["x"][300:]}, d["labels"][300:]
    if all(len(i.type.tensor_type.shape.dim) > 1 and all(d.dim_value > 0 for d in i.type.tensor_type.shape.dim[1:])
           for i in model.graph.input):  # every dim but the batch is static (the fixtures)
        rng = np.random.default_rng(0)

        def draw(n):
            out = {}
            for i in model.graph.input:
                shape = [n] + [d.dim_value for d in i.type.tensor_type.shape.dim[1:]]
                out[i.name] = (rng.integers(0, 50, shape) if i.type.tensor_type.elem_type == onnx.TensorProto.INT64
                               else rng.standard_normal(shape).astype(np.float32))
            return out
        return draw(96), draw(32), None
    cal = feeds(model, 96, 12)
    val = feeds(model, 32, 12)
    return cal, val, None


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return float(np.mean(np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def _run(model, feeds) -> np.ndarray:
    """Output 0 on every sample (one at a time where the model fixes batch 1)."""
    from onnxprune.check.validate import _batch_size, run_batched

    return run_batched(session(model), feeds, _batch_size(model, None))[0]


def oracle(path, plan_keep, cfg, val) -> float:
    from onnxprune import stages
    from onnxprune.rewrite.io_change import adapt_feeds, changed

    groups = stages.analyze(stages.load(path, cfg), cfg)
    io = changed(groups, plan_keep)
    pruned, masked = apply(groups, plan_keep), apply(groups, plan_keep, masked=True)
    one = {k: v[:4] for k, v in val.items()}
    yp = _run(pruned, adapt_feeds(io, one))
    ym = _run(masked, one)
    return float(np.abs(yp - ym).max() / max(np.abs(ym).max(), 1e-12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+")
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.25, 0.5])
    args = ap.parse_args()
    paths = sorted(glob.glob(os.path.join(ZOO, "*.onnx"))) + [
        os.path.join(ROOT, "tests", "fixtures", f"{n}.onnx")  # BERT, ViT, a CNN with attention
        for n in ("hf_bert_ts", "hf_bert_dyn", "hf_vit_ts", "hf_vit_dyn", "mixed_ts", "mixed_dyn")]
    if args.models:
        paths = [p for p in paths if os.path.basename(p)[:-5] in args.models]
    print(f"{'model':<16} {'heads':>6} {'neurons':>7} {'hidden':>6} {'frozen':>6} | {'pruned':<8} {'ratio':>5} {'valid':>5} "
          f"{'oracle':>8} {'MACs':>6} {'latency':>7} {'fidelity':>9}")
    for path in paths:
        name = os.path.basename(path)[:-5]
        model = onnx.load(path)
        cal, val, labels = data_for(name, model)
        shapes = {k: [None] + list(v.shape[1:]) for k, v in cal.items()}

        acfg = onnxprune.PruneConfig(input_shapes=shapes, allow_io_change="_kv_" in name,
                                     prune=("heads", "neurons", "hidden"))
        groups = stages.analyze(stages.load(path, acfg), acfg)
        total = max(groups.params_total, 1)
        sizes = {}
        for g in groups.groups:
            for t, _ in g.weights:
                shape = groups.view.const_shape(t)
                sizes[t] = int(np.prod(shape)) if shape is not None else 0

        def share(groups_of_kind) -> float:  # parameters in weights a group of this kind slices
            names = {t for g in groups_of_kind for t, _ in g.weights}
            return sum(sizes.get(t, 0) for t in names) / total

        hidden = share([g for g in groups.prunable if g.inexact])
        heads = share([g for g in groups.prunable if g.width > 1 and not g.inexact])
        neurons = share([g for g in groups.prunable if g.width == 1 and not g.inexact])
        frozen = 1.0 - share(groups.prunable)
        ref = _run(model, val)
        head = f"{name:<16} {heads:6.2f} {neurons:7.2f} {hidden:6.2f} {frozen:6.2f} |"
        for kind in ("heads", "neurons", "hidden"):
            if {"heads": heads, "neurons": neurons, "hidden": hidden}[kind] == 0:
                print(f"{head} {kind:<8} {'-':>5} nothing to prune")
                continue
            for r in args.ratios:
                data = dict(cal)
                # the KV cache may shrink (its heads); the hidden size stays the step's interface
                io = {"allow_io_change": True} if "_kv_" in name and kind == "heads" else {}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        res = onnxprune.prune(path, ratio=r, prune=kind, calib=data, round_to=1,
                                              input_shapes=shapes, validate=True, data=dict(val), **io)
                        plain = onnxprune.prune(path, ratio=r, prune=kind, calib=data, round_to=1,
                                                input_shapes=shapes, compensate="none", **io)
                    except onnxprune.OnnxPruneError as e:
                        print(f"{head} {kind:<8} {r:5.2f} error: {e}")
                        continue
                onnx.checker.check_model(res.model, full_check=True)
                from onnxprune.rewrite.io_change import adapt_feeds

                out = _run(res.model, adapt_feeds(res.io, val))
                v = res.validation
                fid = (f"acc {np.mean(ref.argmax(1) == labels):.3f}->{np.mean(out.argmax(1) == labels):.3f}"
                       if labels is not None else f"cos {cosine(ref, out):.4f}")
                err = oracle(path, plain.plan.keep, onnxprune.PruneConfig(input_shapes=shapes, prune=(kind,), **io),
                             val)
                print(f"{head} {kind:<8} {r:5.2f} {'yes':>5} {err:8.1e} {v.macs['after'] / v.macs['before']:6.3f} "
                      f"{v.latency_ms['after'] / v.latency_ms['before']:7.3f} {fid:>9}", flush=True)


if __name__ == "__main__":
    main()
