"""A channel space repeated along an outer axis (Tile, a channels-last
Flatten) and split later by another reader (Split, Slice): the layout
resolves to the pieces, repeated, and prunes exactly (the analysis once
raised "a split channel space is repeated along an outer axis", outside any
rule, so analyze() itself failed)."""
from __future__ import annotations

from tests.helpers.graphs import Graph, exact


def tile_then_split():
    g = Graph(seed=0)
    a = g.add("Relu", [g.conv("x", 3, 4, k=1, name="c1")])
    t = g.add("Tile", [a, g.ints("reps", [1, 2, 1, 1])])
    y1 = g.conv(t, 8, 2, k=1, name="c2")
    p, q = g.add("Split", [a, g.ints("sp", [1, 3])], n_out=2, axis=1)
    y2 = g.conv(p, 1, 2, k=1, name="c3")
    y3 = g.conv(q, 3, 2, k=1, name="c4")
    return g.build({"x": [1, 3, 4, 4]}, [g.add("Add", [g.add("Add", [y1, y2]), y3])])


def nhwc_flatten_then_slice():
    g = Graph(seed=0)
    a = g.add("Relu", [g.conv("x", 3, 4, k=1, name="c1")])
    f = g.add("Flatten", [g.add("Transpose", [a], perm=[0, 2, 3, 1])], axis=1)
    y1 = g.matmul(f, 4 * 4 * 4, 2, name="fc")
    s = g.add("Slice", [a, g.ints("st", [0]), g.ints("en", [2]), g.ints("ax", [1])])
    y2 = g.add("Flatten", [g.add("GlobalAveragePool", [g.conv(s, 2, 2, k=1, name="c2")])], axis=1)
    return g.build({"x": [1, 3, 4, 4]}, [g.add("Add", [y1, y2])])


def test_a_tiled_space_split_later_prunes_exactly():
    groups = exact(tile_then_split(), trials=4)
    assert groups.prunable


def test_a_channels_last_flatten_of_a_space_sliced_later_prunes_exactly():
    groups = exact(nhwc_flatten_then_slice(), trials=4)
    assert groups.prunable
