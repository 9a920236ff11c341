"""Plant bugs in the core modules one at a time and check the test suite catches each.

    python tools/plant_bugs.py [--jobs 2] [--only NAME ...] [--tests FILE ...] [--list]

Each mutant replaces one snippet of one module (the snippet must occur exactly
once) in a throwaway copy of the repository, then runs the suite there
(``pytest -x -q``, strict mode on as in CI). A mutant is *killed* when the
suite fails (or hangs past the timeout), and *survives* when it passes: a
survivor is a behaviour no test pins down. The list starts with the bugs an
earlier suite let survive (hard-coded top-1, relief without its bias term,
no MACs-target search, no orphan removal, Conv MACs without the kernel) and
one or more plausible slips per core module. Prints one line per mutant and a summary.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name: (module path, original snippet, planted snippet)
MUTANTS = {
    # -- the five an earlier suite let survive ------------------------------------------
    "top1_hardcoded": ("onnxprune/check/validate.py", "top1 = float(np.mean(a.argmax(1) == b.argmax(1)))",
                       "top1 = 1.0"),
    "relief_no_bias": ("onnxprune/select/importance.py",
                       "total = total + np.abs(np.asarray(bias, dtype=np.float64).reshape(-1) * form.bias_scale)",
                       "total = total"),
    "macs_search_off": ("onnxprune/select/planner.py", "        if frac > target:\n            lo = mid",
                        "        if False:\n            lo = mid"),
    "no_orphan_removal": ("onnxprune/rewrite/engine.py", "        _drop_orphans(g, read_before)\n", "        pass\n"),
    "conv_macs_no_kernel": ("onnxprune/ops/conv.py", "return numel(out) * numel(w[1:])",
                            "return numel(out) * w[1]"),
    # -- layout algebra ----------------------------------------------------------------------
    "positions_transposed": ("onnxprune/core/layout.py", "out.append((base + (y * n + a) * seg.inner + s).reshape(-1))",
                             "out.append((base + (a * seg.outer + y) * seg.inner + s).reshape(-1))"),
    "new_size_ignores_keep": ("onnxprune/core/layout.py", "k = self.size[seg.atom] if kept is None else len(kept)",
                              "k = self.size[seg.atom]"),
    "coarsen_wrong_block": ("onnxprune/core/layout.py", "self._substitute(a, (Segment(b, 1, big // small),))",
                            "self._substitute(a, (Segment(b, big // small, 1),))"),
    # -- rules -------------------------------------------------------------------------------
    "broadcast_param_not_sliced": ("onnxprune/ops/elementwise.py",
                                   '                ctx.weight(k, a, base, "scale" if k in scale_slots else "param")\n',
                                   "                pass\n"),
    "grouped_conv_group_kept": ("onnxprune/ops/conv.py",
                                'set_attr(node, "group", rw.size(lin) // rw.state(index)["per_group"])', "pass"),
    "gemm_transb_ignored": ("onnxprune/ops/linear.py", "k_axis, n_axis = (1, 0) if tb else (0, 1)",
                            "k_axis, n_axis = (0, 1)"),
    "split_sizes_kept": ("onnxprune/ops/shape.py",
                         "sizes = np.array([rw.size(lay) if lay is not None else 0 for lay in lays], dtype=np.int64)",
                         "sizes = np.array([rw.full_size(lay) if lay is not None else 0 for lay in lays], dtype=np.int64)"),
    "slice_bounds_kept": ("onnxprune/ops/shape.py", "starts[k], ends[k] = s, s + rw.size(kept)",
                          "starts[k], ends[k] = starts[k], ends[k]"),
    "concat_reversed": ("onnxprune/ops/shape.py", "        ctx.set(y, axis, tuple(segments))",
                        "        ctx.set(y, axis, tuple(reversed(segments)))"),
    "reshape_shape_kept": ("onnxprune/ops/reshape.py", "                shape[ax] = new[ax]", "                pass"),
    "resize_sizes_kept": ("onnxprune/ops/pool.py", "            sizes[k] = new[ax % rank]", "            pass"),
    "reduce_channel_not_frozen": ("onnxprune/ops/reduce.py",
                                  'ctx.freeze(lay, f"reduced over axis {ax} (a channel axis)")', "pass"),
    "softmax_channel_not_frozen": ("onnxprune/ops/reduce.py",
                                   'ctx.freeze(lay, f"{node.op_type} normalises over axis {ax}")', "pass"),
    "pool_spatial_passes": ("onnxprune/ops/pool.py", "            if ax >= 2:\n                ctx.freeze(lay, \"pooled",
                            "            if ax >= 9:\n                ctx.freeze(lay, \"pooled"),
    "layernorm_axis_not_frozen": ("onnxprune/ops/norm.py", '                else:\n                    ctx.freeze(lay, why)\n        ctx.passthrough(x, node.output[0])', '                else:\n                    pass\n        ctx.passthrough(x, node.output[0])'),
    # -- groups ------------------------------------------------------------------------------
    "outputs_not_frozen": ("onnxprune/analysis/build.py", 'atoms.freeze(lay, f"reaches graph output \'{name}\'{hint}")', 'pass'),
    "shared_weights_not_coupled": ("onnxprune/analysis/build.py",
                                   "                    analysis.atoms.unify(on_axis[0].layout, u.layout)", "                    pass"),
    "const_root_stops_at_identity": ("onnxprune/core/graph.py", 'node.op_type not in ("Constant", "Identity"):',
                                     'node.op_type not in ("Constant",):'),
    # -- scoring and planning ----------------------------------------------------------------------
    "normalise_off": ("onnxprune/select/importance.py", 'scale = vec.mean() if how == "mean" else vec.max()',
                      "scale = 1.0"),
    "reduce_mean_is_sum": ("onnxprune/select/importance.py", 'return {"mean": stack.mean,', 'return {"mean": stack.sum,'),
    "fpgm_max": ("onnxprune/select/importance.py", "out.append(np.sqrt(d2).sum(axis=1))", "out.append(np.sqrt(d2).max(axis=1))"),
    "flap_mean_not_var": ("onnxprune/select/importance.py", "values = st.var * (w ** 2).sum(axis=(1, 2))",
                          "values = st.mean * (w ** 2).sum(axis=(1, 2))"),
    "apoz_inverted": ("onnxprune/select/importance.py", '"apoz": 1.0 - st.apoz}', '"apoz": st.apoz}'),
    "round_to_ignored": ("onnxprune/select/planner.py", '    return round_to > 1 and channels >= max(round_to, round_from or 0)', '    return False'),
    "min_channels_ignored": ("onnxprune/select/planner.py", "keep = max(keep, min(min_channels, channels))", "keep = max(keep, 1)"),
    "estimate_ignores_inputs": ("onnxprune/analysis/groups.py",
                                "terms.append((macs, outs + [lay for lays in by_weight.values() for lay in lays]))",
                                "terms.append((macs, outs))"),
    "recurrent_macs_as_one_product": ("onnxprune/analysis/groups.py",
                                      "if len(by_weight) < 2 or not all(sizes.values()):",
                                      "if True:"),
    "expand_fill_literal_not_rewritten": ("onnxprune/ops/expand.py",
                                          "literals[to] = ctx.literal(node.input[1], k, ctx.fresh(y, to, n))",
                                          "ctx.literal(node.input[1], k, ctx.fresh(y, to, n))"),
    # -- calibration and compensation ----------------------------------------------------------
    "zeros_count_negatives": ("onnxprune/calibration/statistics.py", '        np.equal(blk, 0, out=bb)  # counted as bytes', '        np.less_equal(blk, 0, out=bb)  # counted as bytes'),
    "variance_wrong": ("onnxprune/calibration/statistics.py", "self.sumsq / max(self.count, 1) - self.mean ** 2",
                       "self.sumsq / max(self.count, 1) - self.mean"),
    "bias_comp_zero": ("onnxprune/refit/compensate.py", "offsets = [r.stats.mean[removed] for r in tied]",
                       "offsets = [0 * r.stats.mean[removed] for r in tied]"),
    "rounding_in_whole_units": ("onnxprune/select/planner.py",
                                "return round_to // math.gcd(round_to, max(int(width), 1))", "return round_to"),
    "damage_of_first_output_only": ("onnxprune/search/sensitivity.py",
                                    "found = [damage(a, b) for a, b in pairs]", "found = [damage(*pairs[0])]"),
    "refit_without_shrinkage": ("onnxprune/refit/sequential.py",
                                "ridge = RIDGE + SHRINK * len(kept) / max(cs.count, 1)", "ridge = RIDGE"),
    "refit_pulled_to_uncompensated": ("onnxprune/refit/sequential.py",
                                      "prior = None if t.reselected else held(groups, comp, t.node, t.use.input, t.form)",
                                      "prior = None"),
    "repair_keeps_worse_weights": ("onnxprune/repair/train.py",
                                   "    return bool(errors.mean() < than.mean() and np.all(", "    return bool(True or np.all("),
    "repair_trusts_the_interpreter": ("onnxprune/repair/train.py", "            if worst > AGREE:", "            if False:"),
    "repair_resize_half_pixel_as_asymmetric": ("onnxprune/repair/torch_ops.py",
                                               "    if mode == \"half_pixel\":\n        return (i + 0.5) / scale - 0.5",
                                               "    if mode == \"half_pixel\":\n        return i / scale"),
    "repair_trains_divisors": ("onnxprune/repair/interpret.py", '"Add": {0, 1}, "Sub": {0, 1}, "Mul": {0, 1},',
                               '"Add": {0, 1}, "Sub": {0, 1}, "Mul": {0, 1}, "Div": {0, 1},'),
    "repair_lr_absolute": ("onnxprune/repair/train.py",
                           "self.rates = [rate * max(float(p.detach().pow(2).mean().sqrt()), 1e-8) for p in params]",
                           "self.rates = [rate for p in params]"),
    "tied_first_reader_only": ("onnxprune/refit/compensate.py",
                               "cov = sum(n * r.stats.covariance() for n, r in zip(rows, tied)) / rows.sum()",
                               "cov = tied[0].stats.covariance()"),
    "pad_counts_not_rewritten": ("onnxprune/ops/pool.py", "            pads[k + n] = rw.size(after) if after else 0\n",
                                 "            pass\n"),
    "damage_softmax_of_probabilities": ("onnxprune/search/sensitivity.py", "        if _distributions(a64):\n",
                                        "        if False:\n"),
    "integer_bias_not_scaled": ("onnxprune/rewrite/engine.py",
                                "delta = np.asarray(delta, dtype=np.float64) * np.asarray(form.scale, dtype=np.float64)",
                                "delta = np.asarray(delta, dtype=np.float64)"),
    "integer_bias_first_scale_only": ("onnxprune/rewrite/engine.py",
                                      "delta = np.asarray(delta, dtype=np.float64) * np.asarray(form.scale, dtype=np.float64)",
                                      "delta = np.asarray(delta, dtype=np.float64) * form.scale[0]"),
    "float_biases_unbounded_total": ("onnxprune/rewrite/invariants.py",
                                     "if float_biases and total_after > total_before + 8 * slack:",
                                     "if False:"),
    "bias_add_node_name_reused": ("onnxprune/rewrite/engine.py", 'name=rw.unique_name(f"{node.name}_bias_add"))',
                                  'name=f"{node.name}_bias_add")'),
    "integer_refit_centred": ("onnxprune/refit/compensate.py",
                              "cov = sum(r.stats.xtx for r in tied) / rows.sum()",
                              "cov = sum(n * r.stats.covariance() for n, r in zip(rows, tied)) / rows.sum()"),
    "integer_refit_no_zero_point": ("onnxprune/ops/base.py",
                                    "w = w + self.along_outputs(np.asarray(zp, np.float64), w.ndim)", "w = w"),
    "dim_product_drops_factor": ("onnxprune/ops/evaluate_math.py",
                                 "Dim(got, d.src, d.factors + k.sources)",
                                 "Dim(got, d.src, d.factors)"),
    "dim_product_of_two_channels_follows": ("onnxprune/ops/shape.py",
                                            "size and len(channels) == 1 and int(e) % size == 0",
                                            "size and int(e) % size == 0"),
    "lsq_sign_flipped": ("onnxprune/refit/compensate.py", "flat[kept] += coef.T @ w_removed.reshape(len(removed), -1)",
                         "flat[kept] -= coef.T @ w_removed.reshape(len(removed), -1)"),
    "lsq_never_exact": ("onnxprune/refit/compensate.py", "exact = residual <= 1e-6 * np.maximum(var_r, 1e-30)",
                        "exact = residual < 0"),
    # -- rewrite, checks and files ------------------------------------------------------------
    "mask_not_zeroed": ("onnxprune/rewrite/engine.py", "            value[tuple(idx)] = fill\n", "            pass\n"),
    "bias_delta_not_sliced": ("onnxprune/rewrite/engine.py", "            delta = delta[rw.a.atoms.positions(lay, rw.keep)]",
                              "            delta = delta[: rw.size(lay)]"),
    "invariant_params_off": ("onnxprune/rewrite/invariants.py", '    if after.params > before.params + slack:', '    if False:'),
    "save_not_verified": ("onnxprune/core/model.py", "        if verify is not None:\n            verify(tmp)",
                          "        pass"),
    "small_ints_external": ("onnxprune/core/model.py", '        return not (integer and size < SMALL_TENSOR)', '        return True'),
    "accuracy_after_from_before": ("onnxprune/check/validate.py",
                                   "o.accuracy_after = float(np.mean(_predicted(yb[i]) == labels[:n]))",
                                   "o.accuracy_after = float(np.mean(_predicted(ya[i]) == labels[:n]))"),
    "explain_total_uncompensated": ("onnxprune/search/explain.py", "error=_error_of(groups, plan.keep, comp, ref)",
                                    "error=_error_of(groups, plan.keep, None, ref)"),
    "explain_alone_is_the_whole_plan": ("onnxprune/search/explain.py", "        keep = {gid: idx}\n", "        keep = plan.keep\n"),
    "centred_cosine_is_plain": ("onnxprune/check/validate.py", "    centred = centred_cosines(a64, b64)",
                                "    centred = cos"),
    "user_error_exit_0": ("onnxprune/cli.py", "            ctx.exit(e.exit_code)", "            ctx.exit(0)"),
    "toposort_off": ("onnxprune/core/model.py", "    if all(all(j < i for j in deps) for i, deps in enumerate(needs)):\n        return",
                     "    return"),
    "count_params_skips_constants": ("onnxprune/analysis/costs.py", '            if node.op_type == "Constant":', "            if False:"),
    "probe_batch_made_static": ("onnxprune/core/shapes.py", '                elif d == 1:\n                    new.append(batch_name)', '                elif d == 1:\n                    new.append(d)'),
    "noop_prune_allowed": ("onnxprune/stages/steps.py", "    if result.removed == 0:", "    if False:"),
    # -- weights where stored, new rules, data and shapes -----------------------------------
    "trace_transpose_axis_ignored": ("onnxprune/ops/shape.py", "        return follow(node.input[0], int(perm[axis]))",
                                     "        return follow(node.input[0], axis)"),
    "dq_zero_point_ignored": ("onnxprune/ops/quant.py",
                              "            return np.full(value.shape, zp.reshape(-1)[0], dtype=value.dtype)",
                              "            return np.zeros(value.shape, dtype=value.dtype)"),
    "every_unary_keeps_zero": ("onnxprune/ops/elementwise.py", "        return node.op_type in ZERO_KEEPING", "        return True"),
    "dq_scale_not_sliced": ("onnxprune/ops/quant.py", "            if s is None or int(np.prod(s)) <= 1 or per_axis != axis:",
                            "            if True:"),
    "repeat_as_block": ("onnxprune/core/layout.py", "return (Segment(s.atom, s.outer * times, s.inner),)",
                        "return (Segment(s.atom, s.outer, s.inner * times),)"),
    "rnn_gates_as_blocks": ("onnxprune/ops/rnn.py", "per_gate = (Segment(h),) * gates",
                            "per_gate = (Segment(h, 1, gates),)"),
    "rnn_gates_one_repeated_segment": ("onnxprune/ops/rnn.py", "per_gate = (Segment(h),) * gates",
                                       "per_gate = (Segment(h, gates, 1),)"),
    "rnn_batch_states_not_sliced": ("onnxprune/ops/rnn.py",
                                    "        if batch is not None:\n            for slot, axis in batch_of:",
                                    "        if False:\n            for slot, axis in batch_of:"),
    "rnn_sequence_not_frozen": ("onnxprune/ops/rnn.py",
                                '                ctx.freeze(lay, "the recurrence runs along the sequence axis: '
                                'removing a step "\n                                "changes every later step")\n',
                                "                pass\n"),
    "einsum_summed_not_linear": ("onnxprune/ops/einsum.py", 'ctx.weight(kw, aw, lin, "in")',
                                 'ctx.weight(kw, aw, lin, "param")'),
    "expand_target_kept": ("onnxprune/ops/expand.py", "            shape[k] = new[to]", "            pass"),
    "depth_to_space_crd_as_dcr": ("onnxprune/ops/depth.py", 'crd = str(ctx.attr("mode", "DCR")).upper() == "CRD"',
                                  "crd = False"),
    "nan_data_allowed": ("onnxprune/core/data.py", 'if arr.dtype.kind == "f" and not np.isfinite(arr).all():',
                         "if False:"),
    "holdout_reuses_calibration": ("onnxprune/calibration/sources.py", '        return total - k, join(kept)', '        return total, join(kept)'),
    "batch_one_fallback_off": ("onnxprune/calibration/run.py",
                               '                if cal.samples or n == 1:\n                    raise OnnxPruneError(f"calibration run failed: {e}") from None\n                cal.one_at_a_time',
                               '                if True:\n                    raise OnnxPruneError(f"calibration run failed: {e}") from None\n                cal.one_at_a_time'),
    "input_check_off": ("onnxprune/stages/loading.py",
                        "    check_input(loaded.model, f\"{loaded.path or 'the input model'}: input model\")",
                        "    pass"),
    "old_ir_inputs_not_weights": ("onnxprune/core/graph.py", "old_ir = 0 < model.ir_version < 4", "old_ir = False"),
    "unknown_macs_counted_as_zero": ("onnxprune/analysis/costs.py", '            if m is None:\n                return None\n            total, counted', '            if m is None:\n                continue\n            total, counted'),
    "literal_not_rewritten": ("onnxprune/ops/reshape.py", "        rw.rewrite_literals(index, y)\n", ""),
    "literal_wrong_part": ("onnxprune/ops/fold.py", "                local = index - offset", "                local = index"),
    "uniform_copies_refused": ("onnxprune/analysis/build.py",
                               "        if len(readers) > 1 and _uniform(view, source):\n            continue",
                               "        if False:\n            continue"),
    # -- subgraphs, reconstruction, allocation ---------------------------------------------
    "if_branches_not_coupled": ("onnxprune/ops/control.py",
                                "                if all(ctx.unify(lays[0], lay) for lay in lays[1:]):",
                                "                if True:"),
    "subgraph_outputs_not_frozen": ("onnxprune/analysis/build.py",
                                    "        if not rule_for(owner, view).couples_subgraph_outputs:",
                                    "        if False:"),
    "branch_nodes_inserted_outer_first": ("onnxprune/rewrite/engine.py",
                                          "    for g in reversed(list(all_graphs(model.graph))):\n        if not any(",
                                          "    for g in list(all_graphs(model.graph)):\n        if not any("),
    "if_macs_sum_of_branches": ("onnxprune/analysis/costs.py", "best = max(branches, key=lambda b: b[0], default=(0, []))",
                                "best = (sum(b[0] for b in branches), [i for b in branches for i in b[1]])"),
    "obs_no_refit": ("onnxprune/select/reconstruct.py", "        self.m += a @ self.m[np.ix_(b, b)] @ a.T - am - am.T\n",
                     ""),
    "obs_cost_ignores_inverse": ("onnxprune/select/reconstruct.py",
                                 "return self.m[j, j] / np.maximum(self.p[j, j], 1e-30) / self.energy",
                                 "return self.m[j, j] / self.energy"),
    "global_threshold_ignores_macs": ("onnxprune/select/planner.py",
                                      "prices[g.id] = np.asarray(cost[:cap], dtype=np.float64) / per_unit",
                                      "prices[g.id] = np.asarray(cost[:cap], dtype=np.float64)"),
    "global_cap_ignored": ("onnxprune/select/planner.py",
                           "prices[g.id] = np.asarray(cost[:cap], dtype=np.float64) / per_unit",
                           "prices[g.id] = np.asarray(cost, dtype=np.float64) / per_unit; caps[g.id] = len(cost)"),
    "constant_of_shape_literal_kept": ("onnxprune/ops/generate.py",
                                       "            rw.rewrite_literals(index, node.output[0])\n",
                                       "            pass\n"),
    "data_split_reuses_validation": ("onnxprune/stages/steps.py", '            calib, held = rows(feeds, slice(0, total - k)), rows(feeds, slice(total - k, None))', '            calib, held = feeds, rows(feeds, slice(total - k, None))'),
    # -- sequential reconstruction and rounding --------------------------------------------
    "seq_target_is_pruned_input": ("onnxprune/refit/sequential.py", "    rhs = cpo[kept] @ w - ckk @ base",
                                   "    rhs = cpp[kept] @ w - ckk @ base"),
    "seq_bias_from_pruned_mean": ("onnxprune/refit/sequential.py",
                                  "return v, (cs.mean_o @ w - cs.mean_p[kept] @ v)",
                                  "return v, (cs.mean_p @ w - cs.mean_p[kept] @ v)"),
    "seq_cross_not_centred": ("onnxprune/refit/sequential.py",
                              "return self.po / n - np.outer(self.mean_p, self.mean_o)",
                              "return self.po / n"),
    "seq_levels_flat": ("onnxprune/refit/sequential.py", "            out[i] = lv\n            lv += 1\n",
                        "            out[i] = lv\n"),
    "seq_off_by_default": ("onnxprune/stages/config.py",
                           "sequential = self.sequential if self.sequential is not None else data",
                           "sequential = bool(self.sequential)"),
    "seq_no_refit_written": ("onnxprune/refit/sequential.py", "        rep.refitted += 1\n", "        rep.refitted += 1\n        return\n"),
    "seq_reselects_unfitted_groups": ("onnxprune/refit/sequential.py",
                                      "or not all(_fits(t, cross) for t in reads):",
                                      "or False:"),
    "sens_kl_reversed": ("onnxprune/search/sensitivity.py",
                         "kl = np.sum(p * (np.log(np.maximum(p, 1e-30)) - np.log(np.maximum(q, 1e-30))), axis=1)",
                         "kl = np.sum(q * (np.log(np.maximum(q, 1e-30)) - np.log(np.maximum(p, 1e-30))), axis=1)"),
    "sens_all_groups_pruned": ("onnxprune/search/sensitivity.py", "    keep = {gid: np.sort(order[:k])}",
                               "    keep = {h.id: np.sort(np.argsort(-np.asarray(sweep.scores[h.id]))[:n_keep(h.units, ratio, 1, 1)]) for h in groups.prunable}"),
    "sens_resume_reruns_all": ("onnxprune/search/sensitivity.py", "    todo = [j for j in mine if j not in done]",
                               "    todo = list(mine)"),
    "sens_costs_ignore_sweep": ("onnxprune/search/sensitivity.py",
                                "        ys = [0.0] + [max(0.0, float(r[\"damage\"])) for r in rows.values()]",
                                "        ys = [0.0] + [float(r[\"ratio\"]) for r in rows.values()]"),
    "params_estimate_ignores_inputs": ("onnxprune/select/planner.py", "                entry[2].setdefault(use.axis, use.layout)",
                                       "                entry[2].setdefault(use.axis, use.layout) if use.role != \"in\" else None"),
    "auto_overshoots": ("onnxprune/pipeline/auto.py", "        accepted = drop <= max_drop\n", "        accepted = True\n"),
    "auto_keeps_the_rejected_step": ("onnxprune/pipeline/auto.py",
                                     "        if not accepted:\n            run.stopped",
                                     "        if not accepted:\n            best = res\n            run.stopped"),
    "edges_update_wrong_sign": ("onnxprune/refit/edges.py",
                                "        out[k, j] = w[k, j] + np.linalg.solve(",
                                "        out[k, j] = w[k, j] - np.linalg.solve("),
    "edges_sequential_ignores_the_original": ("onnxprune/refit/edges.py",
                                              "p, q = cs.pp / cs.count, cs.po / cs.count",
                                              "p, q = cs.pp / cs.count, cs.pp / cs.count"),
    "edges_sequential_measures_once": ("onnxprune/refit/edges.py",
                                       "        if mine:\n            cross, runs",
                                       "        if mine and not seq.stages:\n            cross, runs"),
    "edges_nm_keeps_m_minus_n": ("onnxprune/refit/edges.py", "        drop = order[:len(block) - n]", "        drop = order[:n]"),
    "edges_obs_is_magnitude": ("onnxprune/refit/edges.py",
                               "    return w ** 2 / np.maximum(np.diag(inv), 1e-30)[:, None]",
                               "    return np.abs(w)"),
    "literal_shared_missing_ignored": ("onnxprune/analysis/build.py", "        missing = needed - {c[0] for c in claims}",
                                       "        missing = set()"),
    "literal_shared_not_unified": ("onnxprune/analysis/build.py", "                    atoms.unify(lays[0], lay)",
                                   "                    pass"),
    "dim_mul_by_int_drops_dim": ("onnxprune/ops/evaluate_math.py", "out.entries[idx] = Dim(got, d.src, d.factors)\n",
                                 "out.entries[idx] = int(got)\n"),
    "dim_always_follows": ("onnxprune/ops/fold.py", "    return src == mult(out_layout)", "    return True"),
    "shape_mul_read_ignored": ("onnxprune/ops/shape.py", "                    read |= here - carried(out)",
                               "                    read |= set()"),
    "io_feeds_not_sliced": ("onnxprune/rewrite/io_change.py", "            out[c.name] = np.take(out[c.name], c.kept, axis=c.axis)",
                            "            pass"),
    "hidden_always_lifted": ("onnxprune/analysis/groups.py",
                             '            if "hidden" in kinds and g.frozen and all(INEXACT in r for r in g.frozen):',
                             '            if g.frozen and all(INEXACT in r for r in g.frozen):'),
    "attention_num_heads_kept": ("onnxprune/ops/attention.py", '        set_attr(node, "num_heads", int(n))',
                                 '        pass'),
    "price_ties_all_at_once": ("onnxprune/select/planner.py", "    prices = _ranked(prices)\n", "\n"),
    "batch_merge_any_reader": ("onnxprune/ops/base.py",
                               "        layout. Default: no (the channels then freeze).\"\"\"\n        return False",
                               "        layout. Default: no (the channels then freeze).\"\"\"\n        return True"),
    "batch_merge_wrong_period": ("onnxprune/ops/reshape.py",
                                 "            mapped = map_block(ctx.atoms, ints, [_prod(ints)], in_axes[1:].index(a), lay)",
                                 "            mapped = {0: lay}"),
    "computed_slice_unchecked": ("onnxprune/ops/shape.py",
                                 "        bad = np.flatnonzero((lo != i * counts) | (hi != j * counts))",
                                 "        bad = np.flatnonzero(lo != lo)"),
    "computed_slice_pieces_not_tied": ("onnxprune/ops/shape.py",
                                       "        if ctx.unify(lay, (Segment(base, r, 1),)):",
                                       "        if True:"),
    "slice_bound_source_not_frozen": ("onnxprune/ops/shape.py",
                                      "                    ctx.freeze(lay, f\"its size sets the bound of a slice along",
                                      "                    print(lay, f\"its size sets the bound of a slice along"),
    "mmi_zero_point_not_sliced": ("onnxprune/ops/quant.py",
                                  "        ctx.weight(3, np.ndim(zp) - 1, out, \"param\")  # one per output neuron",
                                  "        pass"),
    "dialect_not_declared": ("onnxprune/core/dialect.py", "            defs.register_schema(_schema(op))",
                             "            pass"),
    "scalar_input_sliced": ("onnxprune/core/data.py",
                            "    return {k: take(v, index) if per_sample(v) else v for k, v in feeds.items()}",
                            "    return {k: take(v, index) for k, v in feeds.items()}"),
    "expanded_constant_ignores_target": ("onnxprune/ops/context.py",
                                         "        if src < 0 or shape[src] != size or (k >= 0 and target[k] != 1):",
                                         "        if src < 0 or shape[src] != size:"),
    "expanded_constant_not_sliced": ("onnxprune/ops/context.py",
                                     "        self.a.uses.append(WeightUse(self.view.index_of[id(p)], 0, src, lay, \"param\"))",
                                     "        pass"),
    "uniform_copies_not_allowed": ("onnxprune/rewrite/invariants.py",
                                   "size > before.bytes.get(dtype, 0) + 8 * slack + copies.get(dtype, 0) + grown:",
                                   "size > before.bytes.get(dtype, 0) + 8 * slack + grown:"),
    "uniform_copies_allowed_when_growing": ("onnxprune/rewrite/invariants.py",
                                            "        copies = {}  # the model grew: no allowance",
                                            "        pass"),
    "mmi_activations_frozen": ("onnxprune/ops/quant.py",
                               "            super().analyze(node, ctx)\n            return",
                               "            ctx.freeze_node(\"two activations\")\n            return"),
    "unshadow_forgets_enclosing_renames": ("onnxprune/core/walk.py",
                                           "                visit(sub, active)  # what the node's subgraphs capture",
                                           "                visit(sub, {})  # what the node's subgraphs capture"),
    "unshadow_outputs_not_renamed": ("onnxprune/core/walk.py",
                                     "            if vi.name in active:\n                vi.name = active[vi.name]",
                                     "            if False:\n                vi.name = active[vi.name]"),
    "exposing_subgraph_tensors": ("onnxprune/core/runtime.py", "        if t in present or t not in main:",
                                  "        if t in present:"),
    "mask_fill_zero_point_ignored": ("onnxprune/rewrite/engine.py", "    return zp if np.any(zp != 0) else None",
                                     "    return None"),
    "scores_ignore_zero_point": ("onnxprune/analysis/groups.py",
                                 "            return form.effective(value, self.view.const(zp))",
                                 "            return form.effective(value, None)"),
    "dim_source_other_readers": ("onnxprune/ops/fold.py", "            [r for r, _ in view.consumers.get(data, [])] != [node]:",
                                 "            False:"),
    "dim_literal_not_cut": ("onnxprune/ops/context.py",
                            "np.take(self.current(reader, slot), np.arange(new[ax]), axis=flat[1])",
                            "np.array(self.current(reader, slot))"),
    "gather_literal_wrong_entry": ("onnxprune/ops/fold.py", "            return at, 0, int(pick) % vector.size",
                                   "            return at, 0, index"),
    "gather_literal_negative_pick": ("onnxprune/ops/fold.py",
                                     "        return literal_source(view, node.input[0], int(pick) % vector.size,",
                                     "        return literal_source(view, node.input[0], int(pick),"),
    "per_run_batch_is_largest": ("onnxprune/core/data.py", "        batch = min(known.values(), default=None)",
                                 "        batch = max(known.values(), default=None)"),
    "shared_inputs_sliced": ("onnxprune/core/data.py",
                             "    return {k: take(v, index) if per_sample(v) else v for k, v in feeds.items()}",
                             "    return {k: take(v, index) if np.ndim(v) else v for k, v in feeds.items()}"),
    # -- the folder's evaluators against the reference evaluator --------------------------------
    "max_reads_two_inputs": ("onnxprune/ops/evaluate_math.py", "functools.reduce(np.maximum, xs)",
                             "np.maximum(xs[0], xs[1])"),
    "mod_ignores_fmod": ("onnxprune/ops/evaluate_math.py", "        return np.fmod(x, y) if fmod else np.mod(x, y)",
                         "        return np.mod(x, y)"),
    "cast_ignores_target": ("onnxprune/ops/evaluate_math.py", "    out = as_entry(v.astype(dst))", "    out = as_entry(v)"),
    "integer_div_floors": ("onnxprune/ops/evaluate_math.py",
                           "        return q + ((np.remainder(x, y) != 0) & ((x < 0) ^ (y < 0))).astype(q.dtype)",
                           "        return q"),
    "slice_backwards_end_clamped_to_0": ("onnxprune/ops/evaluate_shapes.py",
                                         "min(max(en, -1), n - 1)", "min(max(en, 0), n - 1)"),
    "gather_axis_ignored": ("onnxprune/ops/evaluate_shapes.py",
                            "    picked = np.take(x.entries, np.where(idx < 0, idx + n, idx).reshape(-1), axis=axis)",
                            "    picked = np.take(x.entries, np.where(idx < 0, idx + n, idx).reshape(-1), axis=0)"),
    # -- inputs: symlinks, sample axes ---------------------------------------------------------------
    "external_data_symlink_followed": ("onnxprune/core/tensors.py",
                                       "        path = os.path.realpath(os.path.join(root, location))",
                                       "        path = os.path.normpath(os.path.join(root, location))"),
    "take_ignores_sample_axis": ("onnxprune/core/data.py",
                                 "    return value[(slice(None),) * axis + (index,)] if axis else value[index]",
                                 "    return value[index]"),
    "sample_axis_not_found": ("onnxprune/core/data.py", "        if hits:\n            out[name] = hits[0]",
                              "        if False:\n            out[name] = hits[0]"),
    "scalar_output_not_stacked": ("onnxprune/check/validate.py", "np.reshape(o[i], (1,)) if np.ndim(o[i]) == 0 else o[i]",
                                  "o[i]"),
    "one_value_outputs_per_sample_cosine": ("onnxprune/check/validate.py", "    if a64.shape[1] == 1 and len(a64) > 1:",
                                            "    if False:"),
    "one_value_damage_per_sample": ("onnxprune/check/similarity.py", "    if a.shape[1] == 1 and len(a) > 1:",
                                    "    if False:"),
    "interface_dims_rewritten_unchanged": ("onnxprune/rewrite/engine.py", "                    (old is None or old[ax] != new[ax]):",
                                           "                    True:"),
    "conv_integer_x_zp_as_bias": ("onnxprune/ops/quant.py", "    bias_input = None\n", "    bias_input = 2\n"),
    "scores_read_quantized_activations": ("onnxprune/analysis/build.py",
                                          "                    name = p.input[0]  # the float values it quantizes",
                                          "                    pass  # the float values it quantizes"),
    "round_budget_ignored": ("onnxprune/select/planner.py", '        if estimate(groups, plan_with(mid).keep) <= budget:', '        if True:'),
    "round_no_step_back_up": ("onnxprune/select/planner.py", '        if estimate(groups, trial.keep) <= budget:', '        if False:'),
}


def run_one(name: str, timeout: int, tests: list | None = None) -> tuple[str, str, float]:
    path, old, new = MUTANTS[name]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        repo = os.path.join(tmp, "repo")
        # test_mutant_snippets.py checks the snippets are in place: in a mutant's copy it would kill every mutant
        shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(".git", "__pycache__", ".hypothesis",
                                                                   ".pytest_cache", ".cache", "*.egg-info",
                                                                   "test_mutant_snippets.py"))
        target = os.path.join(repo, path)
        with open(target) as f:
            text = f.read()
        if text.count(old) != 1:
            return name, f"BAD SNIPPET ({text.count(old)} matches)", 0.0
        with open(target, "w") as f:
            f.write(text.replace(old, new))
        env = dict(os.environ, PYTHONPATH=repo, ONNXPRUNE_STRICT="1", PYTHONDONTWRITEBYTECODE="1")
        try:
            r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                *(tests or [])],
                               cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
            verdict = "killed" if r.returncode else "SURVIVED"
        except subprocess.TimeoutExpired:
            verdict = "killed (timeout)"
    return name, verdict, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--tests", nargs="*", help="run only these test files (a kill there is a kill by the "
                                               "suite; a survivor must be rerun on the whole suite)")
    args = ap.parse_args()
    names = [n for n in MUTANTS if not args.only or n in args.only]
    if args.list:
        print("\n".join(f"{n}: {MUTANTS[n][0]}" for n in names))
        return 0
    results = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for name, verdict, seconds in pool.map(lambda n: run_one(n, args.timeout, args.tests), names):
            results.append((name, verdict))
            print(f"{name:32s} {verdict:18s} {seconds:6.0f} s", flush=True)
    survived = [n for n, v in results if v == "SURVIVED"]
    bad = [n for n, v in results if v.startswith("BAD")]
    print(f"{len(results)} mutants: {len(results) - len(survived) - len(bad)} killed, "
          f"{len(survived)} survived{', ' + str(len(bad)) + ' bad snippets' if bad else ''}")
    if survived:
        print("survivors: " + ", ".join(survived))
    return 1 if survived or bad else 0


if __name__ == "__main__":
    sys.exit(main())
