"""Errors the user can act on. The CLI prints them as one line, no traceback."""


class OnnxPruneError(Exception):
    """A problem with the user's input or request (exit code 1)."""


class InternalError(OnnxPruneError):
    """A bug in onnxprune, caught before it could write a wrong model."""
