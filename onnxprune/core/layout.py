"""Channel spaces: atoms, segments and the union-find that couples them.

An *atom* is an index space of some size whose indices must be kept or removed
together wherever the atom appears. A *layout* says how one tensor axis is made
of atoms: a tuple of segments laid end to end, each segment ``(atom, outer,
inner)`` covering ``outer * size(atom) * inner`` positions, with position
``(y * size + a) * inner + s`` belonging to atom index ``a``.

That one shape of map covers every coupling the op rules need:

- identity (Relu, BatchNorm, residual Add): one segment ``(a, 1, 1)``;
- offsets (Concat of branches): several segments end to end;
- block expansion (Flatten ``C,H,W -> C*H*W``: ``(a, 1, H*W)``; depthwise
  multiplier ``m``: ``(a, 1, m)``; channels-last flatten: ``(a, H*W, 1)``).

Two layouts that must be the same index space are *unified*: segment
boundaries are aligned by splitting atoms (an atom becomes a concatenation of
smaller atoms), block sizes are matched by coarsening atoms (an atom of size
``n * r`` becomes ``(b, 1, r)``: pruning then removes whole blocks, as grouped
convolutions and attention heads need), and repeat counts by the same move
on the outer index (``(b, r, 1)``: a space repeated r times over, as Tile and
DepthToSpace make it). Where the two cannot be made the same,
every atom involved is frozen with a reason; nothing is guessed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Segment:
    atom: int
    outer: int = 1
    inner: int = 1


Layout = tuple  # tuple[Segment, ...]


class LayoutError(Exception):
    """A layout that the segment algebra cannot express."""


class Atoms:
    """Union-find over atoms, with substitution (split / coarsen) and freezing."""

    def __init__(self) -> None:
        self.size: list[int] = []
        self.parent: list[int] = []
        self.subst: dict[int, Layout] = {}
        self.reasons: dict[int, list[str]] = {}
        self.min_keep: dict[int, int] = {}

    # -- creation and lookup -------------------------------------------------
    def new(self, size: int, frozen: str | None = None) -> int:
        a = len(self.size)
        self.size.append(int(size))
        self.parent.append(a)
        if frozen:
            self.reasons[a] = [frozen]
        return a

    def plain(self, size: int, frozen: str | None = None) -> Layout:
        return (Segment(self.new(size, frozen)),)

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def seg_size(self, seg: Segment) -> int:
        return seg.outer * self.size[self.find(seg.atom)] * seg.inner

    def layout_size(self, layout: Layout) -> int:
        return sum(self.seg_size(s) for s in layout)

    def resolve(self, layout: Layout) -> Layout:
        """Rewrite a layout in terms of leaf atoms (roots without substitution)."""
        out: list[Segment] = []
        for seg in layout:
            r = self.find(seg.atom)
            if r not in self.subst:
                out.append(Segment(r, seg.outer, seg.inner))
                continue
            sub = self.resolve(self.subst[r])
            if len(sub) == 1:
                b = sub[0]
                out.append(Segment(b.atom, seg.outer * b.outer, b.inner * seg.inner))
            else:  # a split space, repeated ``outer`` times: the pieces, in order, each time
                for _ in range(seg.outer):
                    out.extend(Segment(b.atom, b.outer, b.inner * seg.inner) for b in sub)
        return tuple(out)

    def leaves(self, layout_or_atom) -> set[int]:
        """Leaf atoms reachable from a layout, ignoring how they are arranged."""
        todo = [s.atom for s in layout_or_atom] if isinstance(layout_or_atom, tuple) else [layout_or_atom]
        seen: set[int] = set()
        out: set[int] = set()
        while todo:
            r = self.find(todo.pop())
            if r in seen:
                continue
            seen.add(r)
            if r in self.subst:
                todo.extend(s.atom for s in self.subst[r])
            else:
                out.add(r)
        return out

    # -- freezing ------------------------------------------------------------
    def freeze(self, layout_or_atom, reason: str) -> None:
        for leaf in self.leaves(layout_or_atom):
            reasons = self.reasons.setdefault(leaf, [])
            if reason not in reasons:
                reasons.append(reason)

    def frozen(self, atom: int) -> list[str]:
        return self.reasons.get(self.find(atom), [])

    def require_min_keep(self, layout: Layout, n: int) -> None:
        for leaf in self.leaves(layout):
            self.min_keep[leaf] = max(self.min_keep.get(leaf, 0), n)

    # -- structure changes ---------------------------------------------------
    def _inherit(self, src: int, dst: int) -> None:
        for reason in self.reasons.get(src, []):
            lst = self.reasons.setdefault(dst, [])
            if reason not in lst:
                lst.append(reason)
        if src in self.min_keep:
            self.min_keep[dst] = max(self.min_keep.get(dst, 0), self.min_keep[src])

    def _substitute(self, a: int, layout: Layout) -> None:
        """Replace leaf atom ``a`` by ``layout`` (of the same size)."""
        assert a not in self.subst and self.parent[a] == a
        for leaf in self.leaves(layout):
            self._inherit(a, leaf)
        self.subst[a] = tuple(layout)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            raise LayoutError(f"cannot couple channel spaces of sizes {self.size[ra]} and {self.size[rb]}")
        self.parent[rb] = ra
        self._inherit(rb, ra)
        sa, sb = self.subst.get(ra), self.subst.pop(rb, None)
        if sb is not None:
            if sa is None:
                self.subst[ra] = sb
            else:
                self.unify(sa, sb)

    def _split(self, seg: Segment, first: int) -> None:
        """Split the atom of ``seg`` so that the segment breaks after ``first`` positions."""
        if seg.outer != 1 or first % seg.inner:
            raise LayoutError("channel boundaries do not line up")
        k = first // seg.inner
        n = self.size[seg.atom]
        a1, a2 = self.new(k), self.new(n - k)
        self._substitute(seg.atom, (Segment(a1), Segment(a2)))

    def unify(self, l1: Layout, l2: Layout) -> None:
        """Make two layouts the same index space, or raise LayoutError."""
        if self.layout_size(l1) != self.layout_size(l2):
            raise LayoutError(
                f"channel spaces of sizes {self.layout_size(l1)} and {self.layout_size(l2)} meet")
        while True:
            r1, r2 = list(self.resolve(l1)), list(self.resolve(l2))
            changed = False
            i = j = 0
            off1 = off2 = 0
            while i < len(r1) and j < len(r2):
                s1, s2 = r1[i], r2[j]
                n1, n2 = self.seg_size(s1), self.seg_size(s2)
                if off1 != off2:  # unreachable: offsets advance together
                    raise LayoutError("internal: misaligned segments")
                if n1 > n2:
                    self._split(s1, n2)
                    changed = True
                    break
                if n2 > n1:
                    self._split(s2, n1)
                    changed = True
                    break
                if self._unify_segments(s1, s2):
                    changed = True
                    break
                off1 += n1
                off2 += n2
                i += 1
                j += 1
            if not changed:
                return

    def _unify_segments(self, s1: Segment, s2: Segment) -> bool:
        """Make two equal-size segments the same; True when structure changed."""
        a, b = self.find(s1.atom), self.find(s2.atom)
        if s1.outer == s2.outer and s1.inner == s2.inner:
            if a == b:
                return False
            self.union(a, b)
            return True
        if a == b:
            raise LayoutError("a channel space would be coupled with a coarser view of itself")
        if s1.outer != s2.outer:
            if s1.inner != s2.inner:
                raise LayoutError("channel blocks are interleaved differently")
            # Same inner block: the space repeated fewer times is the other one
            # repeated ``big // small`` times over (Tile, DepthToSpace DCR,
            # channels-last flatten meeting a plain space).
            if s1.outer < s2.outer:
                a, b, small, big = a, b, s1.outer, s2.outer
            else:
                a, b, small, big = b, a, s2.outer, s1.outer
            if big % small:
                raise LayoutError("channel repeats do not divide")
            self._substitute(a, (Segment(b, big // small, 1),))
            return True
        if s1.inner < s2.inner:
            a, b, small, big = a, b, s1.inner, s2.inner
        else:
            a, b, small, big = b, a, s2.inner, s1.inner
        if big % small:
            raise LayoutError("channel block sizes do not divide")
        # atom a (finer blocks) becomes blocks of b
        self._substitute(a, (Segment(b, 1, big // small),))
        return True

    def repeated(self, layout: Layout, times: int) -> Layout | None:
        """The same channel space repeated ``times`` times end to end (Tile,
        SpaceToDepth); None for a concatenation, which cannot repeat as one."""
        resolved = self.resolve(layout)
        if len(resolved) != 1:
            return None
        s = resolved[0]
        return (Segment(s.atom, s.outer * times, s.inner),)

    # -- index expansion -----------------------------------------------------
    def positions(self, layout: Layout, keep: dict[int, np.ndarray]) -> np.ndarray:
        """Positions along an axis that survive, given kept indices per leaf atom."""
        out = []
        base = 0
        for seg in self.resolve(layout):
            n = self.size[seg.atom]
            kept = keep.get(seg.atom)
            if kept is None:
                kept = np.arange(n)
            y = np.arange(seg.outer)[:, None, None]
            a = np.asarray(kept, dtype=np.int64)[None, :, None]
            s = np.arange(seg.inner)[None, None, :]
            out.append((base + (y * n + a) * seg.inner + s).reshape(-1))
            base += seg.outer * n * seg.inner
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def new_size(self, layout: Layout, keep: dict[int, np.ndarray]) -> int:
        total = 0
        for seg in self.resolve(layout):
            kept = keep.get(seg.atom)
            k = self.size[seg.atom] if kept is None else len(kept)
            total += seg.outer * k * seg.inner
        return total

    def per_index(self, layout: Layout) -> dict[int, int]:
        """For each leaf atom, how many positions of this axis one of its indices owns."""
        out: dict[int, int] = {}
        for seg in self.resolve(layout):
            out[seg.atom] = out.get(seg.atom, 0) + seg.outer * seg.inner
        return out
