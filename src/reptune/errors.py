"""User-facing errors.

Every mistake a user can make (bad layer, wrong vector, malformed data, unreachable model)
raises :class:`ReptuneError` with a one-line message. The CLI prints that line and exits
with code 2; the Python API lets it propagate like any other exception.
"""

from __future__ import annotations


class ReptuneError(ValueError):
    """A problem with the user's input, explained in one line."""


class DataError(ReptuneError):
    """A dataset that is missing, empty or malformed (the message names file and line)."""


class ModelError(ReptuneError):
    """A model that cannot be loaded or whose layout is not understood."""


class VectorError(ReptuneError):
    """A steering vector that does not fit the model, or holds NaN/inf."""
