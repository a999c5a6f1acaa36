"""Small readers of the results shared by the section builders and the figures.

The results come as :class:`~reptune.reporting.schema.ExperimentResults`; these helpers read its
records and tolerate a missing entry.
"""

from __future__ import annotations

from typing import Any

from reptune.reporting.schema import Condition

KIND_ORDER = ("untuned", "steered", "tuned", "counter")


def _kind_rank(kind: str) -> int:
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


def grouped(conds: dict[str, Condition], ids: list[str]) -> list[str]:
    """``ids`` grouped by kind (untuned, steered, tuned, counter, others), stable inside a group."""
    first_kind_seen: dict[str, int] = {}
    for i, cid in enumerate(ids):
        first_kind_seen.setdefault(conds[cid].kind or "other", i)
    return sorted(ids, key=lambda c: (_kind_rank(conds[c].kind or "other"), first_kind_seen[conds[c].kind or "other"]))


def label(conds: dict[str, Condition], cid: str) -> str:
    """A condition's label (its id when it has none)."""
    cond = conds.get(cid)
    return str((cond.label if cond is not None else None) or cid)


def num(x: Any) -> float:
    """``x`` as a float, None as NaN."""
    return float("nan") if x is None else float(x)


def given(value: Any, default: Any) -> Any:
    """``value``, or ``default`` when the results leave it out (or null)."""
    return default if value is None else value
