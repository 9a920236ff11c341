"""Prune pass vs plain load + save: time and peak memory, as ratios.

    python benchmarks/io_ratio.py [--bert-mb 100] [--no-bert] [--ratio 0.3]

For each sample model in models/ and, when torch and transformers are
installed (the dev extra), a BERT of about ``--bert-mb`` MB built from a
config with random weights (cached under benchmarks/.cache/, never
committed), it runs two fresh processes under ``/usr/bin/time -v``:

- ``onnxprune prune MODEL -o OUT --ratio R --no-validate`` (load, analyze,
  score, plan, rewrite, invariants, full checker, save checked from disk);
- ``python -c "onnx.load(MODEL); onnx.save(...)"``;

and prints wall time and peak RSS of each and their ratios (goals: at most
2x the time and 1.5x the memory). "process" is the whole command
(interpreter start and imports included: onnxprune also imports
onnxruntime, to open the written model); "pass" is the same work timed inside
the process after the imports. ``net x`` subtracts the peak RSS of a process
that only imports the same modules, so that the interpreter and
onnxruntime's own footprint do not hide the model's.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CACHE = os.path.join(HERE, ".cache")


def timed(cmd: list[str]) -> tuple[float, float, float | None]:
    """(wall seconds, peak RSS in MB, the seconds the command printed last) of
    a command, from GNU time."""
    r = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", r.stderr)
    h = float(wall.group(1) or 0)
    seconds = h * 3600 + float(wall.group(2)) * 60 + float(wall.group(3))
    rss = float(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1)) / 1024
    inner = r.stdout.strip().splitlines()[-1:] if r.stdout.strip() else []
    return seconds, rss, float(inner[0]) if inner else None


PRUNE = """
import sys, time
import onnx, onnxruntime, numpy, rich, click
from onnxprune import pipeline
from onnxprune.pipeline import PruneConfig
t0 = time.perf_counter()
pipeline.run(sys.argv[1], PruneConfig(ratio=float(sys.argv[3]), output=sys.argv[2]))
print(time.perf_counter() - t0)
"""
IO = """
import sys, time
import onnx
t0 = time.perf_counter()
onnx.save(onnx.load(sys.argv[1]), sys.argv[2])
print(time.perf_counter() - t0)
"""


def build_bert(mb: int) -> str | None:
    """A BERT encoder of about ``mb`` MB (float32), exported with the TorchScript exporter."""
    path = os.path.join(CACHE, f"bert_{mb}mb.onnx")
    if os.path.exists(path):
        return path
    try:
        import torch
        from transformers import BertConfig, BertModel
    except ImportError:
        return None
    os.makedirs(CACHE, exist_ok=True)
    hidden, inter = 512, 2048
    per_layer = 4 * hidden * hidden + 2 * hidden * inter
    vocab = 8000
    layers = max(1, int((mb * 1e6 / 4 - vocab * hidden) / per_layer))
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=8, intermediate_size=inter, max_position_embeddings=128)
    torch.manual_seed(0)
    bert = BertModel(cfg).eval()

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids):
            return self.bert(input_ids=input_ids).last_hidden_state

    model = Encoder().eval()
    ids = torch.randint(0, vocab, (1, 32))
    with torch.no_grad():
        torch.onnx.export(model, (ids,), path, input_names=["input_ids"], opset_version=17,
                          dynamo=False, dynamic_axes={"input_ids": {0: "batch", 1: "seq"}})
    import onnx

    onnx.save(onnx.load(path), path)  # one file, weights embedded
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--bert-mb", type=int, default=100)
    ap.add_argument("--no-bert", action="store_true")
    args = ap.parse_args()
    models = sorted(glob.glob(os.path.join(ROOT, "models", "*.onnx")))
    if not args.no_bert:
        bert = build_bert(args.bert_mb)
        if bert:
            models.append(bert)
        else:
            print("(no torch/transformers: BERT skipped; pip install -e '.[dev]')")
    py = sys.executable
    imports = "import onnx, onnxruntime, numpy, rich, click; import onnxprune.cli"
    _, base_rss, _ = timed([py, "-c", imports])
    _, base_io, _ = timed([py, "-c", "import onnx"])
    print(f"{'model':<22} {'MB':>6} | {'process s':>9} {'io s':>6} {'x':>5} | {'pass s':>7} {'io s':>6} "
          f"{'x':>5} | {'peak MB':>7} {'io MB':>6} {'x':>5} {'net x':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for path in models:
            size = os.path.getsize(path) / 1e6
            out = os.path.join(tmp, "out.onnx")
            tp, mp, _ = timed([py, "-m", "onnxprune.cli", "prune", path, "-o", out, "--ratio",
                               str(args.ratio), "--no-validate", "-q"])
            ti, mi, _ = timed([py, "-c", f"import onnx; m = onnx.load({path!r}); "
                                         f"onnx.save(m, {os.path.join(tmp, 'copy.onnx')!r})"])
            _, _, inner_p = timed([py, "-c", PRUNE, path, out, str(args.ratio)])
            _, _, inner_i = timed([py, "-c", IO, path, os.path.join(tmp, "copy.onnx")])
            net = (mp - base_rss) / max(mi - base_io, 1e-6)
            name = os.path.basename(path)[:-5]
            print(f"{name:<22} {size:>6.1f} | {tp:>9.2f} {ti:>6.2f} {tp / ti:>5.1f} | {inner_p:>7.3f} "
                  f"{inner_i:>6.3f} {inner_p / inner_i:>5.1f} | {mp:>7.0f} {mi:>6.0f} {mp / mi:>5.2f} "
                  f"{net:>6.2f}", flush=True)
    print(f"(process baselines: imports for prune {base_rss:.0f} MB, 'import onnx' {base_io:.0f} MB)")


if __name__ == "__main__":
    main()
