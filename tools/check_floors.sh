#!/usr/bin/env bash
# Install the lowest versions pyproject.toml declares in a fresh venv and run the suite there.
#   bash tools/check_floors.sh [VENV]     (default /tmp/onnxprune-floors)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-/tmp/onnxprune-floors}
python -m venv "$venv"
floors=$(python - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(" ".join(re.sub(r">=", "==", d) for d in deps))
PY
)
"$venv/bin/pip" install --quiet $floors pytest hypothesis
"$venv/bin/pip" install --quiet --no-deps -e .
# the corpus byte-for-byte test depends on numpy's .npy header of the day; the transformer
# tests need the [dev] extras
"$venv/bin/python" -m pytest -q -p no:cacheprovider --ignore=tests/models/test_optimum.py \
    --ignore=tests/models/test_transformers.py \
    --deselect tests/faces/test_corpus.py::test_the_script_reproduces_the_committed_corpus
