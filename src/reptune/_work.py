"""Counters of the work this process did: task items scored and optimiser steps taken.

The evaluation funnel (:meth:`reptune.evaluation.registry.Task.run`) and the training loop
(:mod:`reptune.tuning.trainer`) add to them; the experiment's stage store takes a
:func:`snapshot` before and after each stage, so the report's "Where the time went" table can say
how many items each kind of stage scored and how many steps it trained.
"""

from __future__ import annotations

from collections import Counter

_COUNTS: Counter[str] = Counter()

ITEMS = "items"
"""Task items scored (a robustness grid counts each cell's items; a resumed item is not counted)."""
STEPS = "steps"
"""Optimiser steps taken (a training resumed from a checkpoint counts only the steps this process ran)."""


def count(kind: str, n: int = 1) -> None:
    """Add ``n`` units of work of ``kind`` (:data:`ITEMS` or :data:`STEPS`) done by this process."""
    _COUNTS[kind] += n


def snapshot() -> dict[str, int]:
    """The counts so far, ``{kind: units}`` (a copy)."""
    return dict(_COUNTS)


def since(before: dict[str, int]) -> dict[str, int]:
    """The work done since ``before`` (a :func:`snapshot`), every kind present (0 when none)."""
    now = snapshot()
    return {kind: now.get(kind, 0) - before.get(kind, 0) for kind in (ITEMS, STEPS)}
