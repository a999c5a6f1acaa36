"""Readers of the results file shared by the section builders and the figures.

Every helper reads ``results.json`` as the report gets it and tolerates a missing entry.
"""

from __future__ import annotations

from typing import Any

KIND_ORDER = ("untuned", "steered", "tuned", "counter")


def conditions(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Condition id -> condition, including ids that only appear in ``scores``."""
    out: dict[str, dict[str, Any]] = {}
    for cond in results.get("conditions") or []:
        out[cond["id"]] = cond
    for cid in results.get("scores") or {}:
        out.setdefault(cid, {"id": cid, "label": cid, "kind": "other", "variant": None, "steering": None})
    return out


def _kind_rank(kind: str) -> int:
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


def grouped(conds: dict[str, dict[str, Any]], ids: list[str]) -> list[str]:
    """``ids`` grouped by kind (untuned, steered, tuned, counter, others), stable inside a group."""
    first_kind_seen: dict[str, int] = {}
    for i, cid in enumerate(ids):
        first_kind_seen.setdefault(conds[cid].get("kind") or "other", i)
    return sorted(ids, key=lambda c: (_kind_rank(conds[c].get("kind") or "other"), first_kind_seen[conds[c].get("kind") or "other"]))


def tasks(results: dict[str, Any]) -> list[str]:
    """Every scored task, the headline task first."""
    found: list[str] = []
    head = (results.get("headline") or {}).get("task")
    if head and any(head in (by_task or {}) for by_task in (results.get("scores") or {}).values()):
        found.append(head)
    for by_task in (results.get("scores") or {}).values():
        for task in by_task or {}:
            if task not in found:
                found.append(task)
    return found


def label(conds: dict[str, dict[str, Any]], cid: str) -> str:
    """A condition's label (its id when it has none)."""
    return str((conds.get(cid) or {}).get("label") or cid)


def num(x: Any) -> float:
    """``x`` as a float, None as NaN."""
    return float("nan") if x is None else float(x)


def sweep_selected(sweep: dict[str, Any]) -> tuple[Any, set[float]]:
    """The sweep's selected layer and its selected multipliers (m+ and m-)."""
    selected = sweep.get("selected") or {}
    chosen = {float(selected[k]) for k in ("positive", "negative") if isinstance(selected.get(k), (int, float))}
    return selected.get("layer", sweep.get("layer")), chosen


def grid_cells(grid: dict[str, Any]) -> tuple[list[Any], list[Any], dict[tuple[Any, float], dict[str, Any]]]:
    """A robustness grid as (layers, multipliers, ``{(layer, multiplier): cell}``)."""
    cells = {(c.get("layer"), num(c.get("multiplier"))): c for c in grid.get("cells") or []}
    layers = list(grid.get("layers") or dict.fromkeys(k[0] for k in cells))
    mults = list(grid.get("multipliers") or sorted({k[1] for k in cells}))
    return layers, mults, cells
