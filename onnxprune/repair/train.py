"""``--repair STEPS``: after the prune, fine-tune the pruned model's kept
weights so that it reproduces the original model's outputs on the
calibration inputs (distillation on unlabelled data: no labels and no
training code from the user), then write them back into the same graph.

The order of checks is what makes it safe:
1. the interpreter must compute what onnxruntime computes for the pruned
   model on every calibration batch (``agree``), else the repair refuses,
   naming the first node where the two differ;
2. training minimises the error relative to how much each output varies
   (``_loss_torch``: the squared error over the output's centred energy, per
   sample and output, so a detector's small heads weigh as much as its big
   ones and a constant offset does not dominate), at the outputs and at
   every layer output the pruned model still computes at the original's
   shape (``_shared_anchors``);
3. the trained weights are written into the graph and the loss is measured
   again in onnxruntime on the file's own tensors; if it is not lower than
   the pruned model's, the pruned weights are put back and the report says so.
The validation samples are never seen here: the pipeline holds them out
before calibration.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch

from onnxprune.calibration.sources import batches as chunks
from onnxprune.calibration.sources import load_data, rereadable
from onnxprune.core import runtime
from onnxprune.core.data import model_inputs, sample_count
from onnxprune.core.errors import OnnxPruneError
from onnxprune.repair.interpret import Interpreter, as_tensor

AGREE = 1e-3  # relative L2 error between the interpreter and onnxruntime that still counts as the same function
# Adam's step for each weight tensor, as a fraction of that tensor's RMS value, decayed to zero over
# the steps (a cosine). Relative, because one absolute rate cannot suit a model whose tensors differ
# in scale by orders of magnitude (a hand-built model's folded norms): 1e-4 absolute wrecked one
# such face model's small tensors in ten steps, where 1e-3 relative cut its error 20x. 3e-4: as good
# on held-out samples of the real models tried, and 1e-3 diverged on a deep U-Net detector.
LEARNING_RATE = 3e-4
CHECKPOINTS = 4  # times the calibration error is measured during training; the best weights so far are kept
ANCHOR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
TEACHER_CACHE = 1 << 30  # bytes of the original's outputs and layer outputs kept between epochs
STEP_VALUES = 1 << 20  # input values a training step takes at most (whole samples, at least one)


@dataclass
class Repair:
    """What ``--repair`` did: losses are the mean relative squared error of the
    pruned model's outputs against the original's on the calibration
    samples, measured in onnxruntime before and after."""

    steps: int
    samples: int
    tensors: int
    params: int
    loss_before: float
    loss_after: float
    kept: bool  # the trained weights were better and are in the model
    seconds: float
    agreement: float  # worst relative error, interpreter vs onnxruntime, on the pruned model
    outputs: list = field(default_factory=list)  # per float output: name, error before, error after
    learning_rate: float = LEARNING_RATE
    notes: list = field(default_factory=list)


def _float_outputs(outs: list) -> list[int]:
    return [i for i, o in enumerate(outs) if np.issubdtype(np.asarray(o).dtype, np.floating)]


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    den = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / den) if den > 0 else float(np.linalg.norm(a - b) > 0)


def _differs(a: np.ndarray, b: np.ndarray) -> float:
    """How far two values of one tensor are apart: relative L2 for floats,
    the share of entries that differ for integers and booleans."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return math.inf
    if np.issubdtype(b.dtype, np.floating):
        return _relative(a, b)
    return float(np.mean(a != b)) if a.size else 0.0


def calibration_batches(source, model: onnx.ModelProto, limit: int | None,
                        batch_axes: dict | None = None, one_at_a_time: bool = False) -> list[dict]:
    """The calibration samples (the held-out ones already excluded by
    ``limit``) in batches of at most ``STEP_VALUES`` input values: a step
    on a detector's large images takes one sample, a step on a small
    classifier takes them all (a model with a declared batch dim takes that;
    ``one_at_a_time``: the model only runs with batch 1, as analysis found)."""
    if source is None or not rereadable(source):
        raise OnnxPruneError("--repair fits the pruned model to the original on the calibration data: give "
                             "--calib as a file or folder (it is read again after the prune)")
    names = [i.name for i in model_inputs(model)]
    first = next(iter(chunks(load_data(source, model)[0], names, model, 1, 1, batch_axes)), None)
    if first is None:
        raise OnnxPruneError("--repair: the calibration data has no samples")
    per_sample = max(1, sum(int(np.asarray(v).size) for v in first.values()))
    size = 1 if one_at_a_time else max(1, min(64, STEP_VALUES // per_sample))
    for vi in model_inputs(model):
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            size = min(size, dims[0].dim_value)  # a declared batch: runs take that many samples
    out = list(chunks(load_data(source, model)[0], names, model, size, limit, batch_axes))
    if not out or not sum(sample_count(b) for b in out):
        raise OnnxPruneError("--repair: the calibration data has no samples")
    return out


def _energy(t: np.ndarray) -> np.ndarray:
    """Per sample: the squared norm of the output about its own mean (how much
    it varies), floored so a flat output does not divide by zero."""
    flat = np.asarray(t, np.float64).reshape(len(t), -1) if t.ndim else np.asarray(t, np.float64).reshape(1, -1)
    e = ((flat - flat.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    floor = 1e-6 * max(float((flat ** 2).sum(axis=1).mean()), 1e-30)
    return np.maximum(e, floor)


def _per_output(outs: list, target: list, which: list[int]) -> np.ndarray:
    """Each float output's mean relative squared error on one batch."""
    found = []
    for i in which:
        a, b = np.asarray(outs[i], np.float64), np.asarray(target[i], np.float64)
        n = len(b) if b.ndim else 1
        err = ((a - b).reshape(n, -1) ** 2).sum(axis=1)
        found.append(float((err / _energy(b)).mean()))
    return np.asarray(found)


def _loss_numpy(outs: list, target: list, which: list[int]) -> float:
    return float(_per_output(outs, target, which).mean()) if which else 0.0


def _ort_errors(model: onnx.ModelProto, batches: list[dict], goal: list, threads: int) -> tuple[np.ndarray, list]:
    """Per float output, the error over the batches, measured in onnxruntime on
    the model's own tensors; and the outputs."""
    sess = runtime.session(model, threads=threads)
    outs = [sess.run(None, feeds) for feeds in batches]
    which = _float_outputs(goal[0])
    return np.mean([_per_output(o, t, which) for o, t in zip(outs, goal)], axis=0), outs


def _better(errors: np.ndarray, than: np.ndarray) -> bool:
    """Lower on average and no output worse: a repair must not trade one
    head of a detector for another."""
    return bool(errors.mean() < than.mean() and np.all(errors <= than * (1 + 1e-6) + 1e-12))


def agree(interp: Interpreter, model: onnx.ModelProto, batches: list[dict], ort_outs: list) -> float:
    """The worst difference between the interpreter and onnxruntime over the
    batches; refuses (naming the first node that differs) above ``AGREE``."""
    worst = 0.0
    with torch.no_grad():
        for feeds, ref in zip(batches, ort_outs):
            got = interp.run(feeds)
            for name, r in zip(interp.outputs, ref):
                worst = max(worst, _differs(got[name].numpy(), r))
            if worst > AGREE:
                raise OnnxPruneError(_where_it_differs(interp, model, feeds, worst))
    return worst


def _where_it_differs(interp: Interpreter, model: onnx.ModelProto, feeds: dict, worst: float) -> str:
    """The first node (in graph order) whose output the interpreter computes
    differently from onnxruntime, for the refusal."""
    names = [o for node, _, _ in interp.nodes for o in node.output if o]
    sess, exposed = runtime.exposing(model, names, optimize=False)
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    got = interp.run(feeds, expose=set(exposed))
    for node, _, _ in interp.nodes:
        for o in node.output:
            if o in ref and o in got:
                d = _differs(got[o].detach().numpy(), ref[o])
                if d > AGREE:
                    return (f"--repair: the interpreter computes node '{node.name}' ({node.op_type}) differently "
                            f"from onnxruntime (relative error {d:.2g}); nothing was trained: prune without "
                            f"--repair")
    return (f"--repair: the interpreter's outputs differ from onnxruntime's (relative error {worst:.2g}); "
            f"nothing was trained: prune without --repair")


def _loss_torch(got: dict, names: list[str], goal: list, which: list[int], energy: list) -> torch.Tensor:
    total = 0.0
    for i, e in zip(which, energy):
        y = got[names[i]]
        t = goal[i]
        n = t.shape[0] if t.dim() else 1
        err = ((y - t) ** 2).reshape(n, -1).sum(dim=1)
        total = total + (err / e).mean()
    return total / max(len(which), 1)


class Teacher:
    """The original model in onnxruntime, opened before the prune rewrites it
    in place: it gives the target of every training step, recomputed per
    step so that memory holds one batch's targets, not every batch's. It
    also returns the layers' outputs (``anchors``: every Conv,
    ConvTranspose, Gemm and MatMul output of the main graph), which the
    repair matches where the pruned model's tensor of the same name has the
    same shape (``repair``'s ``anchored``)."""

    def __init__(self, model: onnx.ModelProto, threads: int = 1, anchors: bool = True):
        names = [n.output[0] for n in model.graph.node
                 if anchors and n.op_type in ANCHOR_OPS and n.output and n.output[0]]
        outputs = [o.name for o in model.graph.output]
        self.sess, self.anchors = runtime.exposing(model, names, threads=threads)
        self.anchors = [a for a in self.anchors if a not in outputs]
        self.count = len(outputs)

        self.cache: dict[int, list] = {}
        self.cached = 0

    def __call__(self, feeds: dict) -> list[np.ndarray]:
        return self._run(feeds)[: self.count]

    def with_anchors(self, feeds: dict) -> tuple[list[np.ndarray], dict]:
        got = self._run(feeds)
        return got[: self.count], dict(zip(self.anchors, got[self.count:]))

    def _run(self, feeds: dict) -> list[np.ndarray]:
        """A batch's targets, kept for the next epoch while they fit
        ``TEACHER_CACHE`` bytes (a small model's are computed once; a large
        detector's again each step, in bounded memory)."""
        key = id(feeds)
        if key in self.cache:
            return self.cache[key][1]
        got = self.sess.run(None, feeds)
        size = sum(int(np.asarray(g).nbytes) for g in got)
        if self.cached + size <= TEACHER_CACHE:
            self.cache[key] = (feeds, got)  # the feeds too: their id stays theirs while cached
            self.cached += size
        return got


class _Adam:
    """Adam in which each tensor's step is ``rate`` times that tensor's RMS
    value (``LEARNING_RATE``), decayed to zero over ``steps`` by a cosine;
    one fused update for all tensors (torch's Adam needs a parameter group
    per tensor for per-tensor rates, and then updates them one by one,
    which cost more than a small model's forward and backward pass)."""

    def __init__(self, params: list, rate: float, steps: int, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.steps, self.betas, self.eps = params, max(steps, 1), betas, eps
        self.rates = [rate * max(float(p.detach().pow(2).mean().sqrt()), 1e-8) for p in params]
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        b1, b2 = self.betas
        decay = 0.5 * (1 + math.cos(math.pi * self.t / self.steps))
        self.t += 1
        grads = [self.params[i].grad for i in live]
        m, v = [self.m[i] for i in live], [self.v[i] for i in live]
        torch._foreach_mul_(m, b1)
        torch._foreach_add_(m, grads, alpha=1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - b2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, math.sqrt(1 - b2 ** self.t))
        torch._foreach_add_(denom, self.eps)
        update = torch._foreach_div(m, denom)
        torch._foreach_mul_(update, [-decay * self.rates[i] / (1 - b1 ** self.t) for i in live])
        torch._foreach_add_([self.params[i] for i in live], update)


def _interpreter_errors(interp: Interpreter, batches: list[dict], goal: list, which: list[int]) -> np.ndarray:
    """``_ort_errors`` through the interpreter, for the checkpoints (the
    final choice is measured in onnxruntime again)."""
    with torch.no_grad():
        found = []
        for feeds, target in zip(batches, goal):
            got = interp.run(feeds)
            found.append(_per_output([got[n].numpy() for n in interp.outputs], target, which))
    return np.mean(found, axis=0)


def _tensors(values: list) -> list:
    return [as_tensor(np.asarray(t, np.float32)) if np.issubdtype(np.asarray(t).dtype, np.floating) else None
            for t in values]


def _energies(values: list, which) -> list:
    return [torch.from_numpy(_energy(np.asarray(values[i]))).to(torch.float32) for i in which]


def _shared_anchors(interp: Interpreter, teacher: Teacher, feeds: dict) -> list[str]:
    """The teacher's anchors the pruned model still computes at the same
    shape (a layer whose output channels were kept): matching them gives
    every step a target at each such layer, not only at the outputs."""
    if not teacher.anchors:
        return []
    _, inner = teacher.with_anchors(feeds)
    with torch.no_grad():
        got = interp.run(feeds, expose=set(inner))
    return [a for a in teacher.anchors if a in got and tuple(got[a].shape) == np.shape(inner[a])
            and np.issubdtype(np.asarray(inner[a]).dtype, np.floating)]


def repair(model: onnx.ModelProto, batches: list[dict], teacher, steps: int, threads: int = 1,
           learning_rate: float = LEARNING_RATE, seed: int = 0, anchored: bool = True) -> Repair:
    """Fine-tune ``model`` (the pruned model, changed in place) towards
    ``teacher`` (the original, ``Teacher``) for ``steps`` Adam steps, one
    batch a step, at the outputs and (``anchored``) at the layer outputs
    both models compute at the same shape; keep the result only if
    onnxruntime measures a lower loss at the outputs. Measured on real
    models calibrated on 6 samples, matching the layers as well raised the
    held-out fidelity on each model tried over the outputs alone, and
    training on blends of the samples (mixup) lowered it."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    interp = Interpreter(model)
    goal = [teacher(b) for b in batches]
    before, ort_outs = _ort_errors(model, batches, goal, threads)
    agreement = agree(interp, model, batches, ort_outs)
    samples = sum(sample_count(b) for b in batches)
    params = list(interp.params.values())
    notes = []
    if not params:
        raise OnnxPruneError("--repair: no weight of this model can be trained (none is a float tensor read "
                             "only as a weight); prune without --repair")
    saved = {t.name: onnx.TensorProto() for t in model.graph.initializer if t.name in interp.params}
    for t in model.graph.initializer:
        if t.name in saved:
            saved[t.name].CopyFrom(t)
    saved_constants = {name: onnx.TensorProto() for name, node in interp.constant_nodes.items()
                       if name in interp.params and node.attribute[0].name == "value"}
    for name, t in saved_constants.items():
        t.CopyFrom(interp.constant_nodes[name].attribute[0].t)
    which = _float_outputs(goal[0])
    opt = _Adam(params, learning_rate, steps)
    anchors = _shared_anchors(interp, teacher, batches[0]) if anchored else []
    checks = {max(1, round(steps * (c + 1) / CHECKPOINTS)) for c in range(CHECKPOINTS)}
    best, best_errors = None, before
    for k in range(steps):
        j = k % len(batches)
        feeds = batches[j]
        target, inner = teacher.with_anchors(feeds) if anchors else (teacher(feeds), {})
        opt.zero_grad()
        got = interp.run(feeds, expose=set(anchors))
        loss = _loss_torch(got, interp.outputs, _tensors(target), which, _energies(target, which))
        if anchors:
            loss = loss + _loss_torch(got, anchors, _tensors([inner[a] for a in anchors]), range(len(anchors)),
                                      _energies([inner[a] for a in anchors], range(len(anchors))))
        if not torch.isfinite(loss):
            notes.append(f"--repair stopped at step {k}: the loss is not finite")
            break
        loss.backward()
        opt.step()
        if k + 1 in checks:
            errors = _interpreter_errors(interp, batches, goal, which)
            if _better(errors, best_errors):
                best, best_errors = [p.detach().clone() for p in params], errors
    if best is not None:
        with torch.no_grad():
            for p, b in zip(params, best):
                p.copy_(b)
        interp.write_back(model)
        after, _ = _ort_errors(model, batches, goal, threads)
    else:
        after = best_errors
    kept = best is not None and _better(after, before)
    if not kept:
        for t in model.graph.initializer:
            if t.name in saved:
                t.CopyFrom(saved[t.name])
        for name, t in saved_constants.items():
            interp.constant_nodes[name].attribute[0].t.CopyFrom(t)
        notes.append(f"--repair did not lower the error of every output on the calibration samples (mean "
                     f"{before.mean():.4g} -> {after.mean():.4g}, worst output {before.max():.4g} -> "
                     f"{after.max():.4g}): the pruned weights are kept")
    before_mean, after_mean = float(before.mean()), float(after.mean())
    return Repair(steps=steps, samples=samples, tensors=len(params), params=int(sum(p.numel() for p in params)),
                  loss_before=before_mean, loss_after=after_mean if kept else before_mean, kept=kept,
                  seconds=time.perf_counter() - start, agreement=agreement, learning_rate=learning_rate,
                  outputs=[{"name": interp.outputs[i], "before": float(b), "after": float(a if kept else b)}
                           for i, b, a in zip(which, before, after)],
                  notes=notes)


__all__ = ["Repair", "Teacher", "repair", "agree", "calibration_batches", "AGREE", "LEARNING_RATE"]
