"""The op rule registry: (domain, op type, opset range) -> rule.

A rule registers itself with ``@register("Conv")`` (or several op types,
another domain, an opset range) in its own module under ``ops/``; the package
imports every module there, so adding an op is one file and its test. Attribute
defaults come from the operator schemas in ``onnx.defs``, never copied by hand.
"""
from __future__ import annotations

import functools
import importlib
import os
import pkgutil
from dataclasses import dataclass

import onnx

DEFAULT_DOMAINS = ("", "ai.onnx")


def domain_of(node_or_domain) -> str:
    d = node_or_domain if isinstance(node_or_domain, str) else node_or_domain.domain
    return "" if d in DEFAULT_DOMAINS else d


@dataclass(frozen=True)
class Entry:
    domain: str
    op: str
    since: int
    until: int | None
    rule: object

    def covers(self, version: int | None) -> bool:
        if version is None:
            return True
        return self.since <= version and (self.until is None or version <= self.until)

    @property
    def versions(self) -> str:
        return f"{self.since}+" if self.until is None else f"{self.since}-{self.until}"


_TABLE: dict[tuple[str, str], list[Entry]] = {}
# The shape-arithmetic folder's evaluators (``fold.py``), one function per op,
# keyed like the rules: (domain, op type, opset range).
_EVALUATORS: dict[tuple[str, str], list[Entry]] = {}


def _add(table: dict, domain: str, op: str, since: int, until: int | None, obj) -> None:
    """One registration; two for the same op whose opset ranges overlap are refused."""
    entries = table.setdefault((domain, op), [])
    inf = float("inf")
    for e in entries:
        if since <= (e.until or inf) and e.since <= (until or inf):
            raise ValueError(f"two registrations for {domain or 'ai.onnx'}.{op} overlap in opsets")
    entries.append(Entry(domain, op, since, until, obj))


def _find(table: dict, domain: str, op: str, version: int | None):
    _load_all()
    for e in table.get((domain_of(domain), op), ()):
        if e.covers(version):
            return e.rule
    return None


def register(*ops: str, domain: str = "", since: int = 1, until: int | None = None):
    """Class decorator: one instance of the rule serves every listed op type."""

    def deco(cls):
        rule = cls()
        rule.ops = tuple(ops)
        rule.domain = domain_of(domain)
        for op in ops:
            _add(_TABLE, rule.domain, op, since, until, rule)
        return cls

    return deco


def evaluates(*ops: str, domain: str = "", since: int = 1, until: int | None = None):
    """Function decorator: the folder's evaluator of these op types (``fold.py``)."""

    def deco(fn):
        for op in ops:
            _add(_EVALUATORS, domain_of(domain), op, since, until, fn)
        return fn

    return deco


def lookup(domain: str, op: str, version: int | None):
    """The rule for an op at an opset version, or None."""
    return _find(_TABLE, domain, op, version)


def evaluator(domain: str, op: str, version: int | None):
    """The folder's evaluator for an op at an opset version, or None."""
    return _find(_EVALUATORS, domain, op, version)


def entries() -> list[Entry]:
    """Every registration, sorted by domain and op (for ``onnxprune ops``)."""
    _load_all()
    return sorted((e for es in _TABLE.values() for e in es), key=lambda e: (e.domain, e.op, e.since))


def evaluator_entries() -> list[Entry]:
    """Every evaluator registration, sorted by domain and op."""
    _load_all()
    return sorted((e for es in _EVALUATORS.values() for e in es), key=lambda e: (e.domain, e.op, e.since))


@functools.lru_cache(maxsize=None)
def schema_default(domain: str, op: str, version: int, name: str):
    """An attribute's default from the operator schema (None when it has none
    or the schema is unknown, e.g. contrib ops)."""
    try:
        schema = onnx.defs.get_schema(op, version, domain_of(domain))
    except Exception:  # noqa: BLE001 - SchemaError: unknown op or version
        return None
    a = schema.attributes.get(name)
    if a is None or not a.default_value.name:
        return None
    return onnx.helper.get_attribute_value(a.default_value)


def _text(value):
    """String attributes come back from protobuf as bytes: give rules str."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8", "replace") for v in value]
    return value


def node_attr(node: onnx.NodeProto, name: str, version: int | None, default=None):
    """A node's attribute, else the schema default, else ``default`` (strings as str)."""
    for a in node.attribute:
        if a.name == name:
            return _text(onnx.helper.get_attribute_value(a))
    if version:
        value = schema_default(domain_of(node), node.op_type, version, name)
        if value is not None:
            return _text(value)
    return default


_loaded = False


def _load_all() -> None:
    """Import every rule module in this package (each registers itself)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    package = __name__.rpartition(".")[0]  # this folder's package: no import of it needed
    for info in pkgutil.iter_modules([os.path.dirname(__file__)]):
        if info.name not in ("registry", "base", "context", "fold"):
            importlib.import_module(f"{package}.{info.name}")
