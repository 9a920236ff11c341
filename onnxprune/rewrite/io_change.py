"""Pruning that changes the model's inputs and outputs (``--allow-io-change``).

A decoder with a KV cache takes ``past_key_values`` as inputs and returns
``present`` ones: pruning K/V heads changes those shapes. By default groups
that reach a graph input or output freeze; with the flag, a group may change
them when it is a *state* carried from an input to an output (every channel
space it touches at the interface is read from a graph input and written to a
graph output: a cache), never a plain input or output (a vocabulary, image
channels). The report lists every changed input and output, and validation
feeds the pruned model the kept slices of those inputs and compares the
kept slices of those outputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Changed:
    name: str
    kind: str  # "input" or "output"
    axis: int
    before: int
    after: int
    kept: np.ndarray  # positions along ``axis`` that the pruned model keeps

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "axis": self.axis, "before": self.before,
                "after": self.after}


def changed(groups, keep: dict) -> list[Changed]:
    """Every graph input and output whose size the plan changes."""
    view = groups.view
    out = []
    for kind, names in (("input", view.graph_inputs), ("output", view.graph_outputs)):
        for name in names:
            for axis, lay in sorted(groups.analysis.layouts.get(name, {}).items()):
                kept = groups.positions(lay, keep)
                full = groups.analysis.atoms.layout_size(lay)
                if len(kept) != full:
                    out.append(Changed(name, kind, axis, full, len(kept), kept))
    return out


def adapt_feeds(changes: list[Changed], feeds: dict) -> dict:
    """The pruned model's inputs: the kept slices of the changed ones."""
    out = dict(feeds)
    for c in changes:
        if c.kind == "input" and c.name in out:
            out[c.name] = np.take(out[c.name], c.kept, axis=c.axis)
    return out


def adapt_outputs(changes: list[Changed], names: list, outputs: list) -> list:
    """The original's outputs cut to what the pruned model returns."""
    by = {c.name: c for c in changes if c.kind == "output"}
    return [np.take(o, by[n].kept, axis=by[n].axis) if n in by else o for n, o in zip(names, outputs)]


__all__ = ["Changed", "changed", "adapt_feeds", "adapt_outputs"]
