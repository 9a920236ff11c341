"""The op rules. Each module registers its rules with ``registry.register``;
``analysis`` and every later stage ask ``rule_for(node, view)`` and never name
an op themselves. Adding an op = one module here and its test."""
from __future__ import annotations

from onnxprune.ops.base import ROLES, UNSUPPORTED, Analysis, LinearForm, Rule, WeightUse, rule_for
from onnxprune.ops.context import Context, Rewriter
from onnxprune.ops.registry import entries, lookup, node_attr, register, schema_default

__all__ = ["Analysis", "Context", "LinearForm", "Rewriter", "Rule", "WeightUse", "ROLES",
           "UNSUPPORTED", "rule_for", "register", "lookup", "entries", "node_attr",
           "schema_default"]
