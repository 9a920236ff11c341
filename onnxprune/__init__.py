"""onnxprune: structural pruning for any ONNX model.

Find coupled channel groups, score channels, remove whole channels / neurons,
rewrite every dependent layer exactly, and validate with onnxruntime.
"""
from onnxprune.analysis.groups import Group, Groups
from onnxprune.api import analyze, prune
from onnxprune.check.validate import Validation, validate
from onnxprune.core.errors import InternalError, OnnxPruneError
from onnxprune.stages.config import PruneConfig
from onnxprune.stages.results import PruneReport, PruneResult

__version__ = "0.1.0"

__all__ = ["analyze", "prune", "validate", "Groups", "Group", "PruneConfig", "PruneResult",
           "PruneReport", "Validation", "OnnxPruneError", "InternalError", "__version__"]
