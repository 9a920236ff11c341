"""The stages of a prune, each a plain function from one ``PruneConfig`` and
the earlier stages' results to its own:

    preflight -> load -> analyze -> hold_out -> calibrate -> score -> make_plan
              -> compensate -> refit -> reference -> apply -> check -> make_report -> validation -> save

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
    make_plan,
    make_report,
    reference,
    refit,
    score,
    validation,
)

__all__ = ["PruneConfig", "PruneReport", "PruneResult", "preflight", "load", "sample", "analyze", "hold_out",
           "calibrate", "known_inputs", "score", "make_plan", "compensate", "refit", "apply", "check", "make_report",
           "reference", "validation", "save", "write_json", "writing", "edge_stage", "edge_summary"]
