"""Every planted bug in ``tools/plant_bugs.py`` must still plant: its snippet
occurs exactly once in its module and the replacement differs. A snippet the
code no longer holds is reported as a "bad snippet" and never run, so the
behaviour it pinned goes unguarded without anyone noticing (13 had gone stale
before this test). plant_bugs leaves this file out of its mutants' copies,
where it would fail for every one of them."""
from __future__ import annotations

import importlib.util
import os

import pytest

from tests.helpers.paths import ROOT

ROOT = ROOT


def _mutants() -> dict:
    spec = importlib.util.spec_from_file_location("plant_bugs", os.path.join(ROOT, "tools", "plant_bugs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MUTANTS


MUTANTS = _mutants()


def test_there_are_mutants():
    assert len(MUTANTS) >= 100


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_each_mutant_snippet_occurs_once_in_its_module(name):
    path, old, new = MUTANTS[name]
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        text = f.read()
    assert old != new
    assert text.count(old) == 1, f"{name}: its snippet occurs {text.count(old)} times in {path}"
