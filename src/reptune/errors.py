"""User-facing errors.

Every mistake a user can make (bad layer, wrong vector, malformed data, unreachable model)
raises :class:`ReptuneError` with a one-line message. The CLI prints that line and exits
with code 2; the Python API lets it propagate like any other exception.
"""

from __future__ import annotations

import math


class ReptuneError(ValueError):
    """A problem with the user's input, explained in one line."""


class DataError(ReptuneError):
    """A dataset that is missing, empty or malformed (the message names file and line)."""


class ModelError(ReptuneError):
    """A model that cannot be loaded or whose layout is not understood."""


class VectorError(ReptuneError):
    """A steering vector that does not fit the model, or holds NaN/inf."""


def check_range(
    name: str,
    value: float | None,
    low: float | None = None,
    *,
    above: bool = False,
    high: float | None = None,
    error: type[ReptuneError] = ReptuneError,
) -> None:
    """Refuse a NaN/inf or out-of-range number: ``low <= value`` (``low < value`` with ``above``), ``value <= high``.

    ``None`` passes (an option left unset). ``name`` is what the message calls the value (a CLI
    flag such as ``--lr``, or a field name); ``error`` is the class raised.
    """
    if value is None:
        return
    bound = "" if low is None else f" {'>' if above else '>='} {low:g}"
    bound += "" if high is None else (" and" if bound else "") + f" <= {high:g}"
    bad = (
        not math.isfinite(value)
        or (low is not None and (value <= low if above else value < low))
        or (high is not None and value > high)
    )
    if bad:
        if isinstance(value, float):
            raise error(f"{name} must be a finite number{bound}, got {value:g}")
        raise error(
            f"{name} must be at least {low:g}, got {value}"
            if not above and high is None
            else f"{name} must be{bound}, got {value}"
        )
