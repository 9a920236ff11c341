"""Where the tests find the repository's files."""
from __future__ import annotations

import os

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(TESTS)
MODELS = os.path.join(ROOT, "models")
FIXTURES = os.path.join(TESTS, "fixtures")
CORPUS = os.path.join(TESTS, "corpus")
