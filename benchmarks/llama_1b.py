"""A Llama-style decoder of about 1B parameters (external data): prune pass
against plain ``onnx.load`` + ``onnx.save``, time and peak memory.

    python benchmarks/llama_1b.py [--layers 20] [--ratio 0.25] [--prune heads,neurons]

Builds (once, into ``benchmarks/.cache/``, gitignored) a ``LlamaForCausalLM``
from a TinyLlama-like config with random weights: hidden 2048, 32 query heads
and 4 K/V heads (grouped-query attention, RoPE), MLP 5632 (SiLU-gated),
vocabulary 32000; ``--layers 20`` gives 1.01e9 parameters (4 GB float32),
exported by the TorchScript exporter at opset 17 with every weight as
external data. Needs torch and transformers (the dev extra); building takes a
few minutes and about 14 GB of memory.

Then, each in a fresh process under ``/usr/bin/time -v``:

- ``onnxprune prune llama.onnx -o out.onnx --ratio R --prune heads --prune neurons --input-shape
  input_ids:1,16 --input-shape attention_mask:1,16 --no-validate`` (no data: ``l2`` scores, no compensation;
  the input shape lets the shape probe run, so the analysis is the one users
  get with data);
- ``onnx.load`` (external data read) then ``onnx.save`` with external data,

and prints groups found, wall time, peak RSS and the ratios (goals: at
most 2x the time, 1.5x the memory).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.append(HERE)

from io_ratio import timed  # noqa: E402

CACHE = os.path.join(HERE, ".cache")


def build(layers: int) -> str:
    path = os.path.join(CACHE, f"llama_{layers}l", "llama.onnx")
    if os.path.exists(path):
        return path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    os.makedirs(os.path.dirname(path), exist_ok=True)
    cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
                      num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                      use_cache=False, attn_implementation="eager", tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.no_grad():
        model = LlamaForCausalLM(cfg).eval()
        print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e9:.3f}e9", flush=True)

        class Logits(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, input_ids, attention_mask):
                return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

        ids, mask = torch.randint(0, 32000, (1, 16)), torch.ones(1, 16, dtype=torch.int64)
        seq = {0: "batch", 1: "seq"}
        torch.onnx.export(Logits().eval(), (ids, mask), path, input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={"input_ids": seq, "attention_mask": seq, "logits": seq})
    import onnx

    m = onnx.load(path)  # one data file next to the model, whatever the exporter wrote
    for f in os.listdir(os.path.dirname(path)):
        if f != "llama.onnx":
            os.remove(os.path.join(os.path.dirname(path), f))
    onnx.save(m, path, save_as_external_data=True, all_tensors_to_one_file=True, location="llama.onnx.data")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--prune", default="heads,neurons")
    args = ap.parse_args()
    path = build(args.layers)
    size = sum(os.path.getsize(os.path.join(os.path.dirname(path), f)) for f in os.listdir(os.path.dirname(path)))
    py = sys.executable
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        out, rep = os.path.join(tmp, "out.onnx"), os.path.join(tmp, "report.json")
        tp, mp, _ = timed([py, "-m", "onnxprune.cli", "prune", path, "-o", out, "--ratio", str(args.ratio),
                           *[a for k in args.prune.split(",") for a in ("--prune", k)], "--input-shape", "input_ids:1,16", "--input-shape",
                           "attention_mask:1,16", "--no-validate", "-q",
                           "--report", rep])
        report = json.load(open(rep))
        out_size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp) if f.startswith("out"))
        copy = os.path.join(tmp, "copy.onnx")
        ti, mi, _ = timed([py, "-c", f"import onnx; m = onnx.load({path!r}); onnx.save(m, {copy!r}, "
                                     "save_as_external_data=True, location='copy.onnx.data')"])
    groups = report.get("groups", [])
    changed = [g for g in groups if g.get("kept") != g.get("channels")]
    params = report.get("params", {})
    print(f"model {size / 1e9:.2f} GB, {params.get('before', 0) / 1e9:.3f}e9 parameters -> "
          f"{out_size / 1e9:.2f} GB, {params.get('after', 0) / 1e9:.3f}e9; groups pruned {len(changed)} "
          f"of {len(groups)}")
    print(f"{'':<10} {'wall s':>8} {'peak GB':>8}")
    print(f"{'prune':<10} {tp:>8.1f} {mp / 1024:>8.2f}")
    print(f"{'load+save':<10} {ti:>8.1f} {mi / 1024:>8.2f}")
    print(f"{'ratio':<10} {tp / ti:>8.2f} {mp / mi:>8.2f}")


if __name__ == "__main__":
    main()
