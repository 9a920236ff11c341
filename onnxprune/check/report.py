"""Human-readable tables (rich) for groups, prune reports and validations."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from onnxprune.analysis.costs import unknown_dims
from onnxprune.analysis.groups import Groups


def _num(n: int | float | None) -> str:
    if n is None:
        return "unknown"
    n = float(n)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _ratio(before, after) -> str:
    return f"{after / before:.3f}" if before and after is not None else "-"


def groups_table(groups: Groups, show_all: bool = False, max_members: int = 4) -> Table:
    t = Table(title="Channel groups", show_lines=False)
    for col, kw in (("id", {"justify": "right"}), ("channels", {"justify": "right"}),
                    ("params", {"justify": "right"}), ("members", {}), ("status", {})):
        t.add_column(col, **kw)
    shown = [g for g in groups.groups if show_all or g.params]
    for g in shown:
        members = ", ".join(g.members[:max_members])
        if len(g.members) > max_members:
            members += f" (+{len(g.members) - max_members})"
        ch = f"{g.units}" if g.width == 1 else f"{g.units} x{g.width}"
        status = ("[green]prunable[/]" + (" [magenta](inexact: --prune hidden)[/]" if g.inexact else "")
                  + (" [magenta](approximate: dynamic quantization)[/]" if g.approximate else "")
                  if g.prunable else f"[yellow]frozen:[/] {g.frozen[0]}")
        if len(g.frozen) > 1:
            status += f" (+{len(g.frozen) - 1} more)"
        t.add_row(str(g.id), ch, _num(g.params), members, status)
    return t


def print_groups(groups: Groups, console: Console, show_all: bool = False, max_ungrouped: int = 5) -> None:
    console.print(groups_table(groups, show_all))
    n_open = len(groups.prunable)
    status = groups.weight_status()
    total = sum(w.params for w in status) or 1
    share = {k: sum(w.params for w in status if w.status == k) / total
             for k in ("prunable", "frozen", "none")}
    console.print(
        f"groups: {len(groups.groups)} ({n_open} prunable, {len(groups.groups) - n_open} frozen)   "
        f"params: {_num(groups.params_total)} total, {_num(groups.params_prunable)} prunable   "
        f"MACs: {_num(groups.macs)}")
    console.print(f"weights: {share['prunable']:.1%} in prunable groups, {share['frozen']:.1%} only in "
                  f"frozen groups, {share['none']:.1%} in no group")
    ungrouped = sorted((w for w in status if w.status == "none" and w.params > 1), key=lambda w: -w.params)
    for w in ungrouped[:max_ungrouped]:
        console.print(f"  no group: {w.tensor} ({_num(w.params)} params): {w.why}")
    if len(ungrouped) > max_ungrouped:
        console.print(f"  ... and {len(ungrouped) - max_ungrouped} more weights in no group (--json lists all)")
    if groups.macs is None:

        need = "; ".join(f"'{n}' has {', '.join(d)}" for n, d in unknown_dims(groups.view).items())
        console.print(f"MACs unknown: {need or 'some shapes are unknown'} (pass --calib/--data, or "
                      f"--input-shape NAME:D1,D2,...)")
    for msg in groups.internal_errors:
        console.print(f"[red]internal error[/] (channels frozen): {msg}")


def print_prune(report, console: Console, costs: bool = True) -> None:
    """How the prune was done; the params/MACs table only when ``costs``
    (validation prints them in its Cost table, once)."""
    how = (f"criterion {report.criterion}, {report.allocate} allocation"
           + (f" (budget of ratio {report.ratio:g})" if report.ratio is not None
              and not report.target else "")
           + f", compensation {report.compensate}"
           + (", sequential" if report.sequential else ""))
    if costs:
        t = Table(title=f"Pruned ({how})")
        for col in ("", "before", "after", "ratio"):
            t.add_column(col, justify="right")
        for key in ("params", "macs"):
            d = getattr(report, key)
            t.add_row(key, _num(d["before"]), _num(d["after"]), _ratio(d["before"], d["after"]))
        console.print(t)
    else:
        console.print(f"pruned: {how}")
    edges = report.edges
    if edges:
        console.print(f"edges: {edges['zeroed']:,} of {edges['elements']:,} weights zeroed (sparsity "
                      f"{edges['sparsity']:.3f}{', pattern ' + edges['pattern'] if edges['pattern'] else ''}); "
                      f"weights {edges['dense_bytes']:,} B dense, {edges['sparse_bytes']:,} B as sparse "
                      f"initializers, {edges['compressed_bytes']:,} B compressed (was "
                      f"{edges['compressed_before']:,} B)")
    for c in getattr(report, "io_changes", None) or []:
        console.print(f"graph {c['kind']} '{c['name']}' changed: axis {c['axis']} {c['before']} -> {c['after']}")
    target = report.target
    if target and target["measure"] == "latency":
        pass  # measured by validation (its Cost table) and in the plan's note
    elif target:
        key = target["measure"]
        d = getattr(report, key)
        got = d["after"] / d["before"] if d["before"] else float("nan")
        console.print(f"{'MACs' if key == 'macs' else 'parameters'}: x{got:.3f} of the original "
                      f"(target {target['fraction']:g})")
    changed = [g for g in report.groups if g["kept"] != g["channels"]]
    if not edges:
        console.print(f"channels removed in {len(changed)} of {len(report.groups)} groups")
    if report.calibration:
        c = report.calibration
        src = "random inputs" if c["random"] else f"{c['samples']} samples"
        console.print(f"calibration: {src}, {c['tensors']} tensors, {c['seconds']:.2f} s")
    seq = report.sequential
    if seq:
        merged = f" (of {seq['levels']} levels)" if seq["stages"] < seq["levels"] else ""
        console.print(f"sequential reconstruction: {seq['stages']} stages{merged}, {seq['refitted']} "
                      f"consumers refitted, {seq['reselected']} groups re-selected, "
                      f"{seq['runs']} onnxruntime runs, {seq['seconds']:.2f} s")
    rep = report.repair
    if rep:
        state = "kept" if rep["kept"] else "not better: pruned weights kept"
        console.print(f"repair: {rep['steps']} steps on {rep['samples']} samples, {rep['tensors']} weights, "
                      f"calibration error {rep['loss_before']:.4g} -> {rep['loss_after']:.4g} ({state}), "
                      f"{rep['seconds']:.1f} s")


def print_validation(v, console: Console) -> None:
    t = Table(title="Validation" + (" (random inputs)" if v.random_inputs else f" ({v.samples} samples)"))
    accuracy = any(o.accuracy_before is not None for o in v.outputs)
    for col in ("output", "centred min", "cosine mean", "cosine min", "max |diff|", "top-1 agree",
                *(("accuracy",) if accuracy else ())):
        t.add_column(col, justify="right")
    for o in v.outputs:  # one row per output: which head of a detector suffers
        top1 = "-" if o.top1_agreement is None else f"{o.top1_agreement:.3f}"
        cos = ["-" if c is None else f"{c:.5f}" for c in (o.centred_min, o.cosine_mean, o.cosine_min)]
        acc = () if not accuracy else ("-" if o.accuracy_before is None
                                       else f"{o.accuracy_before:.4f} -> {o.accuracy_after:.4f}",)
        t.add_row(o.name, *cos, f"{o.max_abs_diff:.4g}", top1, *acc)
    console.print(t)
    c = Table(title="Cost")
    for col in ("", "before", "after", "ratio"):
        c.add_column(col, justify="right")
    for key, fmt in (("params", _num), ("macs", _num), ("size_bytes", _num),
                     ("latency_ms", lambda x: f"{x:.3f}")):
        d = getattr(v, key)
        c.add_row(key, fmt(d["before"]), fmt(d["after"]), _ratio(d["before"], d["after"]))
    if v.accuracy_before is not None:
        c.add_row("accuracy", f"{v.accuracy_before:.4f}", f"{v.accuracy_after:.4f}",
                  _ratio(v.accuracy_before, v.accuracy_after))
    console.print(c)


def print_explain(x: dict, console: Console, rows: int = 10) -> None:
    """``--explain``: the error of the plan, without compensation, and of each
    pruned group alone (worst first), then what that says."""
    t = Table(title=f"Where the error comes from ({x['metric']}, {x['samples']} held-out samples)")
    for col, kw in (("", {}), ("units kept", {"justify": "right"}), ("error", {"justify": "right"}),
                    ("MACs saved", {"justify": "right"}), ("first member", {})):
        t.add_column(col, **kw)
    t.add_row("the pruned model", "", f"{x['error']:.4f}", "", "")
    t.add_row("the plan, uncompensated", "", f"{x['uncompensated']:.4f}", "", "")
    for r in x["groups"][:rows]:
        saved = "-" if r["macs_saved"] is None else f"{100 * r['macs_saved']:.1f}%"
        t.add_row(f"group {r['group']} alone", f"{r['kept']}/{r['units']}", f"{r['error']:.4f}", saved,
                  (r["members"] or ["?"])[0])
    console.print(t)
    if len(x["groups"]) > rows:
        console.print(f"({len(x['groups']) - rows} more groups in the report)")
    for line in x["findings"]:
        console.print(f"- {line}")


def print_timings(stages: list[dict], console: Console) -> None:
    """``-v``: seconds, share of the run and resident memory per stage."""
    total = sum(r["seconds"] for r in stages) or 1.0
    t = Table(title=f"Where the time went ({total:.2f} s)")
    for col in ("stage", "seconds", "share", "peak RSS MiB", "RSS MiB"):
        t.add_column(col, justify="left" if col == "stage" else "right")

    def mib(v):
        return "-" if v is None else f"{v:.0f}"

    for r in stages:
        t.add_row(r["stage"], f"{r['seconds']:.2f}", f"{100 * r['seconds'] / total:.0f}%", mib(r["peak_rss_mb"]),
                  mib(r["rss_mb"]))
    console.print(t)


def print_ops(rows: list[dict], console: Console) -> None:
    t = Table(title="Op rules (ops not listed freeze the channels they touch)")
    for col in ("domain", "op", "opsets", "channels through it"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["domain"], r["op"], r["versions"], r["channels"])
    console.print(t)
    console.print(f"{len(rows)} ops with a rule")


def print_sensitivity(result, console: Console) -> None:
    """One row per group: its damage at each ratio (and the MACs it saves at
    the largest), most sensitive first."""
    table = result.table()
    ratios = sorted({r["ratio"] for r in result.rows})
    metric = result.rows[0]["metric"] if result.rows else "damage"
    labels = any("accuracy_drop" in r for r in result.rows)
    t = Table(title=f"Sensitivity ({metric}{', accuracy drop' if labels else ''}; each group pruned alone, "
                    f"criterion {result.header.get('criterion')}, compensation {result.header.get('compensate')})")
    t.add_column("group", justify="right")
    t.add_column("units", justify="right")
    t.add_column("first member")
    for r in ratios:
        t.add_column(f"{r:g}", justify="right")
    t.add_column(f"MACs saved @{ratios[-1]:g}" if ratios else "MACs saved", justify="right")
    rank = sorted(table, key=lambda g: -max(row["damage"] for row in table[g].values()))
    for gid in rank:
        rows = table[gid]
        info = result.header.get("groups", {}).get(str(gid), {})
        cells = []
        for r in ratios:
            row = rows.get(r)
            if row is None:
                cells.append("-")
            else:
                cell = f"{row['damage']:.2g}"
                if "accuracy_drop" in row:
                    cell += f" ({100 * row['accuracy_drop']:+.1f})"
                cells.append(cell)
        last = rows.get(ratios[-1]) if ratios else None
        saved = f"{last['macs_saved']:.3f}" if last and last.get("macs_saved") is not None else "-"
        t.add_row(str(gid), str(info.get("units", "")), (info.get("members") or ["?"])[0][:40], *cells, saved)
    console.print(t)
