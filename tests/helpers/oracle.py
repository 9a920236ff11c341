"""The exactness oracle (docs/architecture.md): pruned == masked for any keep-set.

Used by the property test over the model zoo and by every op-rule test.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

import onnxprune
from onnxprune.analysis.groups import Groups
from onnxprune.core.data import random_feeds
from onnxprune.rewrite.engine import apply
from onnxprune.rewrite.invariants import violations


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    # onnxruntime's QDQ fusions compute in integers where the graph says float
    # (MatMulNBits, QGemm): exactness is a property of the graph as written
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def rounding_noise(model: onnx.ModelProto, feeds: dict) -> list[float]:
    """How far the model's own outputs move when onnxruntime rounds
    differently: the largest difference per output between a run with no
    graph optimizations and one with all (fused Conv+BN, Conv+Add, Gemm
    +activation round in another order). A deep net inside a Loop can
    amplify rounding by 1000x; pruning changes the summation order of every
    layer it shortens (fewer input channels), so pruned and masked differ
    by about as much there, and by 0 where the model rounds the same both
    ways."""
    outs = []
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1
        opts.graph_optimization_level = level
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, feeds))
    return [float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max(initial=0.0))
            if np.issubdtype(np.asarray(a).dtype, np.floating) else 0.0 for a, b in zip(*outs)]


def random_keep(groups: Groups, rng: np.random.Generator, p_group: float = 0.7) -> dict:
    """Random non-empty keep-sets for a random subset of the prunable groups."""
    keep = {}
    for g in groups.prunable:
        if rng.random() > p_group:
            continue
        lo = max(1, g.min_keep)
        k = int(rng.integers(lo, g.units + 1)) if g.units > lo else g.units
        keep[g.id] = np.sort(rng.choice(g.units, k, replace=False))
    return keep


def check_exact(model: onnx.ModelProto | str, keep: dict | None = None, *, feeds: dict | None = None,
                trials: int = 3, seed: int = 0, rtol: float = 1e-4, atol: float = 1e-5,
                input_shapes: dict | None = None) -> Groups:
    """Prune with random (or given) keep-sets and assert pruned == masked.

    Pruned and masked agree to ``rtol``/``atol``, or, in a model whose own
    outputs move by more when onnxruntime rounds differently
    (``rounding_noise``: deep nets inside Loops amplify rounding), to 4x
    that noise; a wrong rewrite misses by the size of the outputs.

    Also asserts the pruned model passes the full checker, keeps output
    names/dtypes/shapes, and that the masked model has the original's shapes.
    ``keep`` maps group id -> kept indices.
    """
    groups = onnxprune.analyze(model, input_shapes=input_shapes)
    rng = np.random.default_rng(seed)
    if feeds is None:
        # Random inputs; a fixed leading dim is used as is (one sample-batch).
        fixed = any(d.HasField("dim_value") for i in groups.model.graph.input
                    for d in i.type.tensor_type.shape.dim[:1])
        feeds = random_feeds(groups.model, 1 if fixed else 2, input_shapes, seed, guess=True)
    original = run(groups.model, feeds)
    noise = None  # measured on the first mismatch only
    for _ in range(trials if keep is None else 1):
        k = random_keep(groups, rng) if keep is None else keep
        pruned = apply(groups, k)
        masked = apply(groups, k, masked=True)
        onnx.checker.check_model(pruned, full_check=True)
        assert not violations(groups.model, pruned), violations(groups.model, pruned)
        yp, ym = run(pruned, feeds), run(masked, feeds)
        assert [o.name for o in pruned.graph.output] == [o.name for o in groups.model.graph.output]
        for i, (a, b, o) in enumerate(zip(yp, ym, original)):
            assert a.shape == b.shape == o.shape and a.dtype == o.dtype
            tol = atol * max(1.0, float(np.abs(b).max(initial=0.0)))
            try:
                np.testing.assert_allclose(a, b, rtol=rtol, atol=tol)
            except AssertionError:  # within the model's own rounding noise is still exact
                if noise is None:
                    noise = rounding_noise(groups.model, feeds)
                if not noise[i]:
                    raise
                np.testing.assert_allclose(a, b, rtol=rtol, atol=max(tol, 4 * noise[i]))
    return groups
