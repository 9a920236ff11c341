"""onnxprune: structural pruning for any ONNX model.

Find coupled channel groups, score channels, remove whole channels / neurons,
rewrite every dependent layer exactly, and validate with onnxruntime.
"""
from .api import PruneReport, PruneResult, analyze, prune
from .errors import OnnxPruneError
from .groups import Group, Groups
from .validate import Validation, validate

__version__ = "0.1.0"

__all__ = ["analyze", "prune", "validate", "Groups", "Group", "PruneResult", "PruneReport",
           "Validation", "OnnxPruneError", "__version__"]
