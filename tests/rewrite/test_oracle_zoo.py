"""The exactness oracle as a property test over every model we ship:
random keep-sets on random groups, pruned == masked (docs/architecture.md)."""
from __future__ import annotations

import glob
import os

import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.oracle import check_exact
from tests.helpers.paths import ROOT
from tests.helpers.variants import TOLERANCE, VARIANTS

ROOT = ROOT
ZOO = sorted(glob.glob(os.path.join(ROOT, "models", "*.onnx")) +
             glob.glob(os.path.join(ROOT, "tests", "fixtures", "*.onnx")))
_cache: dict = {}


def _model(path: str, variant: str) -> onnx.ModelProto:
    key = (path, variant)
    if key not in _cache:
        _cache[key] = VARIANTS[variant](onnx.load(path))
    return _cache[key]


def test_zoo_is_not_empty():
    assert len(ZOO) >= 8


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("path", ZOO, ids=[os.path.basename(p) for p in ZOO])
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1))
def test_pruned_equals_masked(path, variant, seed):
    groups = check_exact(_model(path, variant), trials=1, seed=seed, **TOLERANCE.get(variant, {}))
    assert groups.prunable, "every zoo model has something to prune"
