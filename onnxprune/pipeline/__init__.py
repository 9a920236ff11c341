"""The prune as a whole: ``run`` strings the stages together (``stages``) and
asks the searches above them (``search``) for sensitivity prices and latency
plans; ``auto`` runs it step by step (``--auto``, ``--steps``)."""
from onnxprune.pipeline.prune import run, run_edges

__all__ = ["run", "run_edges"]
