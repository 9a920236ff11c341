"""onnxprune: structural pruning for any ONNX model.

Find coupled channel groups, score channels, remove whole channels / neurons,
rewrite every dependent layer exactly, and validate with onnxruntime.
"""
from .api import analyze, prune
from .errors import InternalError, OnnxPruneError
from .groups import Group, Groups
from .pipeline import PruneConfig, PruneReport, PruneResult
from .validate import Validation, validate

__version__ = "0.1.0"

__all__ = ["analyze", "prune", "validate", "Groups", "Group", "PruneConfig", "PruneResult",
           "PruneReport", "Validation", "OnnxPruneError", "InternalError", "__version__"]
