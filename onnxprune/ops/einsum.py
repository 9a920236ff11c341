"""Einsum, read letter by letter.

Each letter of the equation is an index shared by the operand axes that carry
it. A letter kept in the output passes channels through: from the activation
operands that carry it (unified), or, when only constant operands carry it, as
a new space of output features (a Dense layer written as ``bsk,kn->bsn``). A
letter summed away is a linear input where one activation meets constants
(their slices are "in"), and freezes where two activations meet (attention's
``bhqd,bhkd->bhqk``), as a MatMul of two activations does. The equation never
changes.
"""
from __future__ import annotations

import string

from onnxprune.ops.base import LinearForm, Rule, numel
from onnxprune.ops.registry import domain_of, node_attr, register


def parse(equation: str, ranks: list[int]) -> tuple[list[list[str]], list[str]] | None:
    """Letters per input axis and per output axis, with ``...`` expanded to
    fresh letters (right-aligned, as numpy broadcasts); None if malformed."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        return None
    used = set(eq) - set(".,->")
    spare = [c for c in string.ascii_letters if c not in used]
    n_ell = 0
    for term, rank in zip(terms, ranks):
        if "..." in term:
            n_ell = max(n_ell, rank - (len(term) - 3))
    if n_ell > len(spare):
        return None
    ell = spare[:n_ell]
    ins = []
    for term, rank in zip(terms, ranks):
        if "..." in term:
            k = rank - (len(term) - 3)
            if k < 0:
                return None
            term = term.replace("...", "".join(ell[n_ell - k:]))
        if len(term) != rank:
            return None
        ins.append(list(term))
    if arrow:
        out = list(rhs.replace("...", "".join(ell)))
    else:  # implicit output: the broadcast dims, then letters seen once, sorted
        counts = {}
        for term in ins:
            for c in term:
                counts[c] = counts.get(c, 0) + 1
        out = ell + sorted(c for c, n in counts.items() if n == 1 and c not in ell)
    return ins, out


@register("Einsum")
class Einsum(Rule):
    """Kept letters pass channels (or start new output features); summed letters are linear inputs, or freeze between two activations."""

    def _parsed(self, node, view):
        ranks = [view.rank(n) for n in node.input]
        if any(r is None for r in ranks):
            return None

        eq = node_attr(node, "equation", view.opsets.get(domain_of(node)))
        return None if eq is None else parse(eq, ranks)

    def analyze(self, node, ctx):
        parsed = self._parsed(node, ctx.view)
        y = node.output[0]
        if parsed is None or ctx.view.rank(y) is None:
            ctx.freeze_node("equation or shapes not understood")
            return
        ins, out = parsed
        consts = [ctx.view.is_const(n) for n in node.input]
        letters = {c for term in ins for c in term}
        for letter in sorted(letters):
            where = [(k, term.index(letter)) for k, term in enumerate(ins) if letter in term]
            acts = [(k, a) for k, a in where if not consts[k]
                    and not (ctx.view.static(node.input[k], a) == 1 and len(where) > 1)]
            weights = [(k, a) for k, a in where if consts[k]]
            if letter in out:
                oa = out.index(letter)
                if acts:
                    lays = [ctx.require(node.input[k], a) for k, a in acts]
                    if any(lay is None for lay in lays):
                        continue
                    for lay in lays[1:]:
                        ctx.unify(lays[0], lay)
                    ctx.set(y, oa, lays[0])
                    for k, a in weights:
                        if ctx.const_shape(k)[a] > 1:
                            ctx.weight(k, a, lays[0], "param")
                elif weights:
                    lout = ctx.fresh(y, oa)
                    for k, a in weights:
                        ctx.weight(k, a, lout, "out")
            else:
                if len(acts) > 1:
                    for k, a in acts:
                        ctx.freeze(ctx.get(node.input[k], a),
                                   f"summed over letter '{letter}' between two activations")
                elif acts and weights:
                    k, a = acts[0]
                    lin = ctx.require(node.input[k], a)
                    for kw, aw in weights:
                        ctx.weight(kw, aw, lin, "in")
                elif acts:
                    k, a = acts[0]
                    ctx.freeze(ctx.get(node.input[k], a), f"summed over letter '{letter}' (a channel axis)")

    def macs(self, node, view):
        parsed = self._parsed(node, view)
        if parsed is None:
            return None
        ins, _ = parsed
        size = {}
        for name, term in zip(node.input, ins):
            dims = view.sizes(name) if not view.is_const(name) else list(view.const_shape(name))
            if dims is None:
                return None
            for c, d in zip(term, dims):
                size[c] = max(size.get(c, 1), d)
        return numel(size.values())

    def linear(self, node, view):
        parsed = self._parsed(node, view)
        if parsed is None or len(node.input) != 2:
            return None
        (t0, t1), out = parsed
        consts = [view.is_const(n) for n in node.input]
        if consts[0] == consts[1]:
            return None
        w, x = (0, 1) if consts[0] else (1, 0)
        tw, tx = (t0, t1) if w == 0 else (t1, t0)
        summed = [c for c in tw if c in tx and c not in out]
        fresh = [c for c in tw if c in out and c not in tx]
        if len(tw) != 2 or len(summed) != 1 or len(fresh) != 1:
            return None
        k, n = summed[0], fresh[0]
        return LinearForm(weight=w, in_axis=tw.index(k), out_axis=tw.index(n), x=x,
                          x_axis=tx.index(k) - len(tx), y_axis=out.index(n) - len(out))
