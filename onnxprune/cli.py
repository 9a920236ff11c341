"""The ``onnxprune`` command: thin click wrappers over the pipeline and the API.

Every error becomes one line ``onnxprune: ...`` on stderr; exit codes are 0
success, 1 a failed quality gate or internal error, 2 bad input or usage
(``errors.py``). Tracebacks only with ``--debug``.
"""
from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import replace

import click
from rich.console import Console

from onnxprune import api, pipeline, stages
from onnxprune.calibration.sources import RANDOM_WARNING
from onnxprune.check.report import (
    print_explain,
    print_groups,
    print_ops,
    print_prune,
    print_sensitivity,
    print_timings,
    print_validation,
)
from onnxprune.check.validate import validate as run_validate
from onnxprune.core.data import parse_batch_axes
from onnxprune.core.errors import OnnxPruneError
from onnxprune.core.model import check_writable, parse_input_shapes
from onnxprune.ops import entries
from onnxprune.pipeline import auto
from onnxprune.search import sensitivity as sweeps
from onnxprune.select.importance import ALL_CRITERIA, DATA_CRITERIA, GRAM_CRITERIA
from onnxprune.stages.config import PruneConfig


class _OneLineUsageError(click.UsageError):
    """A usage error (a missing option, a value out of range) as one
    ``onnxprune:`` line, like every other error, instead of click's usage block."""

    def __init__(self, error: click.ClickException):
        super().__init__(error.format_message(), getattr(error, "ctx", None))

    def show(self, file=None) -> None:
        hint = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"onnxprune: {self.format_message()}{hint}", err=True)


def _one_line(error: click.ClickException) -> click.ClickException:
    if isinstance(error, (_OneLineUsageError, click.exceptions.NoArgsIsHelpError)) \
            or not isinstance(error, click.UsageError):
        return error  # a bare group prints its help, as it should
    return _OneLineUsageError(error)


class _Cli(click.Group):
    """Turns exceptions into one-line errors unless --debug was given."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as e:  # the group's own options
            raise _one_line(e) from None

    def invoke(self, ctx):
        try:
            with warnings.catch_warnings():
                if "--debug" not in sys.argv[1:] and not (ctx.obj or {}).get("debug"):
                    warnings.simplefilter("ignore")
                return super().invoke(ctx)
        except click.UsageError as e:  # a command's options and arguments
            raise _one_line(e) from None
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except OnnxPruneError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"onnxprune: {e}", err=True)
            ctx.exit(e.exit_code)
        except Exception as e:  # noqa: BLE001 - last resort, never a traceback without --debug
            if ctx.obj and ctx.obj.get("debug"):
                raise
            first = str(e).splitlines()[0] if str(e) else ""
            click.echo(f"onnxprune: internal error: {type(e).__name__}: {first} "
                       f"(run with --debug for the traceback)", err=True)
            ctx.exit(1)


def _console(quiet: bool = False) -> Console:
    return Console(quiet=quiet, highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 160)


def write_json(path: str, payload: dict) -> None:
    with stages.writing(path):  # a full disk: one line, exit code 2
        stages.write_json(path, payload)


input_shape_opt = click.option("--input-shape", "input_shape", multiple=True, metavar="NAME:D1,D2,..",
                               help="Fix symbolic input dims, e.g. input:1,3,224,224 (repeatable).")
batch_axis_opt = click.option("--batch-axis", "batch_axis", multiple=True, metavar="NAME:AXIS",
                              help="The axis of an input's data that holds the samples, where it is not 0 "
                                   "(a recurrent state [layers, batch, hidden]: state:1; repeatable).")


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(package_name="onnxprune")
@click.pass_context
def main(ctx, debug):
    """Structural pruning for ONNX models: analyze, prune, validate."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the groups as JSON.")
@click.option("--all", "show_all", is_flag=True, help="Also list groups that own no weights.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Freeze groups with a matching node or tensor name.")
@click.option("--prune", "prune_kinds", multiple=True, type=click.Choice(["heads", "neurons", "hidden"]),
              help="Show as prunable only these kinds (as prune would); hidden: groups only a norm freezes.")
@click.option("--allow-io-change", is_flag=True, help="As for prune: a KV cache may shrink.")
@click.option("--strict", is_flag=True, help="Fail on an internal error in an op rule.")
@input_shape_opt
def analyze(model, as_json, show_all, exclude, prune_kinds, allow_io_change, strict, input_shape):
    """List the channel groups of MODEL, what each couples, and why some are frozen."""
    groups = api.analyze(model, input_shapes=parse_input_shapes(input_shape), exclude=exclude,
                         strict=True if strict else None, prune=prune_kinds, allow_io_change=allow_io_change)
    if as_json:
        click.echo(json.dumps(groups.to_dict(), indent=2))
    else:
        print_groups(groups, _console(), show_all)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Pruned model path.")
@click.option("--ratio", type=click.FloatRange(0, 1, max_open=True), default=0.3, show_default=True,
              help="Fraction of channels removed per group.")
@click.option("--criterion", type=click.Choice(ALL_CRITERIA),
              help="[default: obs with --calib or --data, else l2] "
                   "Weight criteria: l1, l2, bn, fpgm, random. Data criteria (need --calib): "
                   "mean_abs, apoz, act_l2, relief, flap, and obs (the error left after least-"
                   "squares compensation, chosen greedily).")
@click.option("--calib", metavar="DATA", help="Calibration data: .npz, .npy, a folder of them, or module.py:function.")
@click.option("--calib-samples", type=click.IntRange(min=1), help="Use at most N calibration samples.")
@click.option("--calib-batch", type=click.IntRange(min=1), default=16, show_default=True, help="Samples per onnxruntime run.")
@click.option("--compensate", type=click.Choice(["none", "bias", "lsq"]),
              help="Fold removed channels into their consumers [default: lsq with --calib or --data, "
                   "else none].")
@click.option("--sequential/--no-sequential", default=None,
              help="Refit the compensation stage by stage in graph order, each layer on the inputs "
                   "the pruned layers before it give [default: on with --calib or --data and lsq].")
@click.option("--group-reduction", type=click.Choice(["mean", "sum", "max"]), default="mean", show_default=True,
              help="How member scores of a group combine.")
@click.option("--normalize", "member_norm", type=click.Choice(["mean", "max", "none"]), default="mean",
              show_default=True, help="Per-member score normalisation before the reduction.")
@click.option("--macs-target", type=click.FloatRange(0, 1, min_open=True),
              help="Keep about this fraction of the MACs (finds the ratio; overrides --ratio).")
@click.option("--params-target", type=click.FloatRange(0, 1, min_open=True),
              help="Keep about this fraction of the parameters (instead of --ratio or --macs-target).")
@click.option("--latency-target", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Run in at most this fraction of the original's time, measured with onnxruntime on "
                   "this machine (candidate plans are timed).")
@click.option("--mode", type=click.Choice(["channels", "edges"]), default="channels", show_default=True,
              help="channels: remove whole channels; edges: zero single weights (--ratio of each layer, "
                   "or --pattern).")
@click.option("--pattern", metavar="N:M", help="Keep N of every M consecutive inputs of each weight (2:4): with "
              "--mode edges, or after the channels.")
@click.option("--edge-ratio", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="After the channels, also zero this fraction of every layer's remaining weights.")
@click.option("--auto", "auto_loop", is_flag=True,
              help="Prune in steps (re-calibrating and compensating each time) until the next step would "
                   "lose more than --max-drop on held-out data (or --macs-target is reached).")
@click.option("--max-drop", type=click.FloatRange(min=0), default=0.01, show_default=True,
              help="With --auto: the most the metric may fall (accuracy with labels, else top-1 "
                   "agreement, else centred cosine; 0.01 = one point).")
@click.option("--step", "auto_step", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1,
              show_default=True, help="With --auto: the fraction of the MACs each step removes.")
@click.option("--steps", "n_steps", type=click.IntRange(min=2),
              help="Reach --macs-target in N steps, each a whole prune (re-calibrated and compensated) of "
                   "the previous step's model (iterative pruning; the --auto loop without a drop limit).")
@click.option("--plot-trajectory", "trajectory_path", type=click.Path(dir_okay=False),
              help="With --auto: plot the metric against what each step kept (PNG; [plot] extra).")
@click.option("--min-channels", type=click.IntRange(min=1), default=1, show_default=True, help="Channels every group keeps at least.")
@click.option("--round-to", type=click.IntRange(min=1),
              help="Keep channel counts multiples of N, rounded up or down so that the budget holds; a "
                   "unit spanning several channels (a head) rounds to fewer units "
                   "[default: 8 in groups of 16 units or more; 1 turns rounding off].")
@click.option("--allocate", type=click.Choice(["uniform", "global", "sensitivity"]),
              help="uniform: every group loses the same fraction; global: the same MACs budget, "
                   "taken where removal costs least; sensitivity: taken where a sweep measured the "
                   "least damage [default: uniform].")
@click.option("--sensitivity", "sensitivity_path", type=click.Path(dir_okay=False, exists=True),
              help="A sweep from 'onnxprune sensitivity --out/--json' for --allocate sensitivity "
                   "(default: one is run on --calib).")
@click.option("--max-group-ratio", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.9,
              show_default=True, help="With --allocate global: the most any one group may lose.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Freeze groups with a matching node or tensor name (repeatable).")
@click.option("--allow-io-change", is_flag=True,
              help="Let a state carried from a graph input to a graph output (a KV cache) shrink; the "
                   "report lists every changed input and output.")
@click.option("--prune", "prune_kinds", multiple=True, type=click.Choice(["heads", "neurons", "hidden"]),
              help="Prune only these groups (repeatable): heads (units spanning several positions: attention "
                   "heads, grouped-conv blocks), neurons (single channels), hidden (channels only a norm "
                   "freezes: a transformer's hidden size; not exact, the validation shows the error) "
                   "[default: heads and neurons].")
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False), help="Replay a plan saved with --save-plan (skips scoring).")
@click.option("--save-plan", type=click.Path(dir_okay=False), help="Write the plan (kept units per group id) as JSON.")
@click.option("--masked-output", type=click.Path(dir_okay=False), help="Also write the full-size masked model.")
@click.option("--data", type=click.Path(dir_okay=False), help="Validation inputs (.npz, one array per input; optional 'labels').")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the report as JSON.")
@click.option("--no-validate", is_flag=True, help="Skip the onnxruntime comparison after pruning.")
@click.option("--explain", is_flag=True,
              help="Also measure where the error comes from on the validation samples: the plan without "
                   "compensation, and each pruned group alone (one onnxruntime run per group).")
@click.option("--repair", "repair_steps", type=click.IntRange(min=0), default=0, metavar="STEPS",
              help="After the prune, fine-tune the kept weights for STEPS steps so the pruned model reproduces "
                   "the original's outputs on the calibration data (no labels), through a differentiable copy "
                   "of the graph checked against onnxruntime first. Needs --calib and the [repair] extra (torch).")
@click.option("--strict", is_flag=True, help="Fail on an internal error in an op rule instead of freezing its channels.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="onnxruntime threads for latency.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("-v", "--verbose", is_flag=True, help="Also print seconds and resident memory per stage.")
@input_shape_opt
@batch_axis_opt
def prune(model, output, ratio, criterion, calib, calib_samples, calib_batch, compensate, sequential,
          group_reduction, member_norm, macs_target, params_target, latency_target, min_channels, round_to, allocate,
          sensitivity_path, max_group_ratio, mode, pattern, edge_ratio, auto_loop, max_drop, auto_step, n_steps,
          trajectory_path,
          exclude, allow_io_change, prune_kinds, plan_path,
          save_plan, masked_output, data, report_path, no_validate, explain, repair_steps, strict, seed, threads, quiet, verbose,
          input_shape, batch_axis):
    """Prune MODEL and write the result to OUTPUT."""
    for path in (output, masked_output, report_path, save_plan):
        if path and api.same_file(model, path):
            raise OnnxPruneError(f"{path}: output path is the input model; choose another path")
    console = _console(quiet)
    if calib is None and data is None and (criterion in DATA_CRITERIA or criterion in GRAM_CRITERIA):
        click.echo(f"onnxprune: warning: {RANDOM_WARNING}", err=True)
    cfg = PruneConfig(
        ratio=ratio, criterion=criterion, min_channels=min_channels, round_to=round_to,
        mode=mode, pattern=pattern, edge_ratio=edge_ratio, allocate=allocate, sensitivity=sensitivity_path, max_group_ratio=max_group_ratio,
        exclude=tuple(exclude), prune=tuple(prune_kinds), allow_io_change=allow_io_change,
        input_shapes=parse_input_shapes(input_shape), batch_axes=parse_batch_axes(batch_axis) or None,
        seed=seed, calib=calib,
        calib_samples=calib_samples, calib_batch=calib_batch, compensate=compensate,
        sequential=sequential, group_reduction=group_reduction, normalize=member_norm, macs_target=macs_target,
        params_target=params_target, latency_target=latency_target,
        plan=plan_path, strict=True if strict else None, validate=not no_validate, data=data,
        threads=threads, progress=not quiet and sys.stderr.isatty(), output=output,
        masked_output=masked_output, report=report_path, save_plan=save_plan, explain=explain,
        repair=repair_steps)
    if n_steps:
        if auto_loop or cfg.macs_target is None:
            raise OnnxPruneError("--steps N needs --macs-target (and is not --auto: that stops on --max-drop)")
        step = 1.0 - cfg.macs_target ** (1.0 / n_steps)
        result = _auto(model, cfg, float("inf"), step, trajectory_path, console)
    elif auto_loop:
        result = _auto(model, cfg, max_drop, auto_step, trajectory_path, console)
    else:
        result = pipeline.run(model, cfg)
    print_prune(result.report, console, costs=result.validation is None)
    for msg in result.report.notes:
        click.echo(f"onnxprune: note: {msg}", err=True)
    if result.validation is not None:
        print_validation(result.validation, console)
        for msg in result.validation.warnings:
            click.echo(f"onnxprune: warning: {msg}", err=True)
    if result.report.explain is not None:
        print_explain(result.report.explain, console)
    if verbose and result.report.timings is not None:
        print_timings(result.report.timings.to_list(), console)
    for msg in result.report.internal_errors:
        click.echo(f"onnxprune: warning: internal error in a rule (its channels were frozen): {msg}",
                   err=True)
    console.print(f"wrote {output}")


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--calib", metavar="DATA", required=True, help="Calibration data (as for prune).")
@click.option("--data", type=click.Path(dir_okay=False),
              help="Held-out inputs to measure on (.npz; optional 'labels'); default: the last quarter of --calib.")
@click.option("--ratios", default="0.1,0.25,0.5,0.75", show_default=True, help="Comma-separated ratios per group.")
@click.option("--criterion", type=click.Choice(ALL_CRITERIA), help="As for prune [default: obs].")
@click.option("--compensate", type=click.Choice(["none", "bias", "lsq"]), help="As for prune [default: lsq].")
@click.option("--calib-samples", type=click.IntRange(min=1), help="Use at most N calibration samples.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes running the jobs (one onnxruntime thread each).")
@click.option("--shard", metavar="I/N", default="0/1", show_default=True,
              help="Run only this shard of the jobs (merge the shards' --out files with 'onnxprune merge').")
@click.option("--ray", "ray_address", metavar="ADDRESS",
              help="Run the jobs on a Ray cluster (host:port, ray://..., auto) or 'local' (a Ray started for "
                   "this sweep); --jobs actors, default one per CPU. Needs the [ray] extra.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False),
              help="Stream rows to this JSONL file; a re-run with the same file resumes.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the result as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Plot damage against ratio and MACs saved (PNG; needs the [plot] extra).")
@click.option("-q", "--quiet", is_flag=True)
@input_shape_opt
def sensitivity(model, calib, data, ratios, criterion, compensate, calib_samples, jobs, shard, ray_address,
                out_path, json_path, plot_path, quiet, input_shape):
    """Prune each group of MODEL alone at each ratio and measure the output change."""

    try:
        rs = [float(r) for r in ratios.split(",") if r.strip()]
        i, n = (int(v) for v in shard.split("/"))
    except ValueError:
        raise OnnxPruneError("--ratios takes numbers like 0.1,0.5 and --shard takes I/N, like 0/4") from None
    for path in (out_path, json_path, plot_path):
        if path and any(os.path.exists(p) and os.path.samefile(path, p)
                        for p in (model, calib, data) if p and os.path.exists(path)):
            raise OnnxPruneError(f"{path}: output path is an input; choose another path")
    console = _console(quiet)
    result = sweeps.sweep(model, calib=calib, data=data, ratios=rs, criterion=criterion, compensate=compensate,
                   input_shapes=parse_input_shapes(input_shape), jobs=jobs, shard=(i, n), out=out_path,
                   calib_samples=calib_samples, ray=ray_address)
    print_sensitivity(result, console)
    if json_path:
        write_json(json_path, {"header": result.header, "rows": result.rows})
    if plot_path:
        sweeps.plot(result, plot_path)
        console.print(f"wrote {plot_path}")


@main.command()
@click.argument("shards", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Merged JSONL file.")
def merge(shards, output):
    """Merge the --out files of a sensitivity sweep's shards."""

    if any(os.path.exists(output) and os.path.samefile(output, s) for s in shards):
        raise OnnxPruneError(f"{output}: output path is one of the shards; choose another path")
    result = sweeps.merge(list(shards), output)
    click.echo(f"merged {len(result.rows)} rows from {len(shards)} files into {output}")


def _auto(model, cfg, max_drop, step, trajectory_path, console):
    """``prune --auto``: the loop, then validation against the original and
    the outputs, all or nothing."""


    if cfg.masked_output or cfg.save_plan or cfg.plan or cfg.allow_io_change:
        raise OnnxPruneError("--auto works with budgets as floors (--macs-target, --params-target, "
                             "--latency-target): not with --masked-output, --save-plan, --plan or "
                             "--allow-io-change")
    stages.preflight(model, cfg)
    if cfg.calib is None and cfg.data is not None:
        cfg = replace(cfg, calib=cfg.data, data=None)  # --data alone: its last quarter is held out
    floor = cfg.macs_target

    def show(s):
        console.print(f"step {s.index}: MACs x{s.macs:.3f}, params x{s.params:.3f}, latency x{s.latency:.2f}, "
                      f"{s.metric} {s.value:.4f} "
                      f"(drop {s.drop:+.4f}) {'kept' if s.accepted else 'rejected'} [{s.seconds:.1f} s]")

    result, run = auto.auto_prune(model, replace(cfg, output=None, report=None), max_drop, step, floor, show)
    if cfg.validate:  # on the samples every step was measured on
        result.validation = run_validate(model, result.model, data=run.held_out, threads=cfg.threads)
    if trajectory_path:
        auto.plot(run, trajectory_path)
    result.written = stages.save(result, cfg)
    return result


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def ops(as_json):
    """List the op rules: domain, op, opset versions, and what channels do through it."""
    rows = [{"domain": e.domain or "ai.onnx", "op": e.op, "versions": e.versions,
             "rule": type(e.rule).__name__, "channels": e.rule.describe()} for e in entries()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        print_ops(rows, _console())


@main.command()
@click.argument("original", type=click.Path(dir_okay=False))
@click.argument("pruned", type=click.Path(dir_okay=False))
@click.option("--data", type=click.Path(dir_okay=False), help="Inputs (.npz, one array per input; optional 'labels').")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the report as JSON.")
@click.option("--samples", type=click.IntRange(min=1), default=8, show_default=True, help="Random samples when no --data.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="onnxruntime threads for latency.")
@click.option("-q", "--quiet", is_flag=True)
@input_shape_opt
@batch_axis_opt
def validate(original, pruned, data, report_path, samples, threads, quiet, input_shape, batch_axis):
    """Compare PRUNED against ORIGINAL on the same inputs."""
    if report_path:  # before any work: never over an input
        protect = {os.path.realpath(p) for p in (original, pruned, data) if p and os.path.exists(p)}
        check_writable(report_path, protect)
    v = run_validate(original, pruned, data, input_shapes=parse_input_shapes(input_shape),
                     samples=samples, threads=threads, batch_axes=parse_batch_axes(batch_axis) or None)
    print_validation(v, _console(quiet))
    for msg in v.warnings:
        click.echo(f"onnxprune: warning: {msg}", err=True)
    if report_path:
        write_json(report_path, v.to_dict())


if __name__ == "__main__":  # pragma: no cover
    main()
