"""The documentation stays true to the code: docs/ops.md is what the op registry
generates, the README's first screen holds the two setup commands, and every
relative link in README.md, CONTRIBUTING.md and docs/*.md reaches a file."""
from __future__ import annotations

import glob
import importlib.util
import os
import re

import pytest

from tests.helpers.paths import ROOT

ROOT = ROOT
FIRST_SCREEN = 24  # lines
SETUP = ("pip install . && onnxprune prune models/resnet_mnist.onnx ",
         'pip install -e ".[test]" && python -m pytest -q')
# [text](target) and ![alt](target); the target ends at a space (a title) or the parenthesis
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _generator():
    spec = importlib.util.spec_from_file_location("gen_ops_doc", os.path.join(ROOT, "tools", "gen_ops_doc.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _documents() -> list[str]:
    return [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "CONTRIBUTING.md")] + \
        sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def _without_code(text: str) -> str:
    """Markdown outside fenced blocks and inline code: links there are text."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def test_ops_doc_is_what_the_registry_generates():
    generated = _generator().render()
    assert _read(os.path.join(ROOT, "docs", "ops.md")) == generated, \
        "docs/ops.md is stale: run python tools/gen_ops_doc.py"


def test_readme_first_screen_has_the_two_setup_commands():
    first = "\n".join(_read(os.path.join(ROOT, "README.md")).splitlines()[:FIRST_SCREEN])
    for command in SETUP:
        assert command in first, f"README's first {FIRST_SCREEN} lines lack: {command}"


def test_the_link_pattern_reads_links_and_images():
    text = '[a](docs/x.md) ![b](img.png "title") [c](https://example.com) `[d](not/a/link.md)`'
    assert LINK.findall(_without_code(text)) == ["docs/x.md", "img.png", "https://example.com"]


@pytest.mark.parametrize("path", _documents(), ids=lambda p: os.path.relpath(p, ROOT))
def test_every_relative_link_points_to_a_file_that_exists(path):
    assert os.path.exists(path), f"{os.path.relpath(path, ROOT)} is missing"
    broken = []
    for target in LINK.findall(_without_code(_read(path))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor in the same page
        file = target.split("#", 1)[0]
        if not os.path.exists(os.path.normpath(os.path.join(os.path.dirname(path), file))):
            broken.append(target)
    assert not broken, f"{os.path.relpath(path, ROOT)} links to missing files: {broken}"
