"""The stages of a prune, each a plain function from one ``PruneConfig`` and
the earlier stages' results to its own:

    preflight -> load -> analyze -> hold_out -> calibrate -> score -> plan
              -> compensate -> refit -> reference -> apply -> check -> report -> validate -> save

``config`` holds the config, ``loading`` the stages before any data,
``steps`` the rest, ``results`` what a prune returns and writes. The
pipeline (``pipeline.run``) strings them together with the searches above
them; each can be called on its own.
"""
from onnxprune.stages.config import PruneConfig
from onnxprune.stages.loading import analyze, load, preflight, sample
from onnxprune.stages.results import PruneReport, PruneResult, save, write_json, writing
from onnxprune.stages.steps import (
                                    apply,
                                    calibrate,
                                    check,
                                    compensate,
                                    edge_stage,
                                    edge_summary,
                                    hold_out,
                                    known_inputs,
                                    plan,
                                    reference,
                                    refit,
                                    report,
                                    score,
                                    validate,
)

__all__ = ["PruneConfig", "PruneReport", "PruneResult", "preflight", "load", "sample", "analyze", "hold_out",
           "calibrate", "known_inputs", "score", "plan", "compensate", "refit", "apply", "check", "report",
           "reference", "validate", "save", "write_json", "writing", "edge_stage", "edge_summary"]
