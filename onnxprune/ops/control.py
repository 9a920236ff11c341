"""Control flow: If, Loop, Scan.

The graph view lays a subgraph's nodes out just before the node that owns it
(``GraphView._flatten``), so the network inside a branch or a loop body is
analysed by the ordinary rules. What these rules decide is the boundary: an
If's output *is* the output of whichever branch ran, so its channels are the
branches' channels, one group across both branches (pruned consistently:
the same channels go from each). A loop's carried values and scan slices
pass through every iteration, so they freeze; groups wholly inside the body
still prune.
"""
from __future__ import annotations

from onnxprune.core.walk import subgraphs
from onnxprune.ops.base import Rule
from onnxprune.ops.registry import register


@register("If")
class If(Rule):
    """Outputs share their channels with both branches' outputs; networks inside the branches prune."""

    couples_subgraph_outputs = True
    subgraph_cost = "max"

    def analyze(self, node, ctx):
        view = ctx.view
        if node.name in view.opaque:
            why = f"its branches are not analysed ({view.opaque[node.name]})"
            ctx.freeze_node(why)
            for y in node.output:  # its outputs' channels come from unanalysed branches
                for ax in range(view.rank(y) or 0):
                    size = view.static(y, ax)
                    if y and size and ctx.get(y, ax) is None:
                        ctx.a.layouts.setdefault(y, {})[ax] = ctx.atoms.plain(size, f"{ctx.where()}: {why}")
            return
        branches = subgraphs(node)
        for k, y in enumerate(node.output):
            if not y:
                continue
            sources = [b.output[k].name for b in branches if k < len(b.output)]
            rank = view.rank(y)
            if len(sources) != len(branches) or rank is None \
                    or any(view.rank(s) != rank for s in sources):
                for s in sources:
                    ctx.freeze_tensor(s, f"branch output '{s}' and If output '{y}' differ in rank "
                                         f"or shape is unknown")
                continue
            for ax in range(rank):
                lays = [ctx.get(s, ax) for s in sources]
                if all(lay is None for lay in lays):
                    continue
                lays = [lay if lay is not None else ctx.require(s, ax) for s, lay in zip(sources, lays)]
                if any(lay is None for lay in lays):
                    for lay in lays:
                        ctx.freeze(lay, f"axis {ax} of a branch output has no known size")
                    continue
                if all(ctx.unify(lays[0], lay) for lay in lays[1:]):
                    ctx.set(y, ax, lays[0])


@register("Loop", "Scan")
class Loop(Rule):
    """Carried values and scan inputs/outputs freeze; groups wholly inside the body prune (MACs leave the body out)."""

    def analyze(self, node, ctx):
        if any(ctx.axes(n) for n in node.input if n and not ctx.view.is_const(n)):
            ctx.freeze_node("passes through every iteration of the body")
