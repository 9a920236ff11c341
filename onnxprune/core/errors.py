"""Errors the user can act on. The CLI prints them as one line, no traceback,
and exits with the error's code:

- 0: success;
- 1: a failed quality gate or an internal error (``InternalError``): a bug
  caught before it could write a wrong model;
- 2: bad input or usage (``OnnxPruneError``): a missing or broken file, bad
  data, an option out of range, a model with nothing to prune.
"""

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class OnnxPruneError(Exception):
    """A problem with the user's input or request (exit code 2)."""

    exit_code = EXIT_BAD_INPUT


class InternalError(OnnxPruneError):
    """A bug in onnxprune, caught before it could write a wrong model (exit code 1)."""

    exit_code = EXIT_FAILED


class QualityError(OnnxPruneError):
    """The result failed a check the user asked for (exit code 1)."""

    exit_code = EXIT_FAILED
