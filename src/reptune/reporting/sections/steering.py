"""The steering sections: the sweep that chose the layer and multipliers, the robustness grids
(counter-steering) and the per-token projections."""

from __future__ import annotations

from typing import Any

from reptune.reporting.document import Bullets, Heading, Plan, Table, fmt, fmt_ci
from reptune.reporting.figures import draw_projection, draw_robustness, plot_sweep
from reptune.reporting.sections.common import grid_cells, label, num, sweep_selected


def _sweep_table(sweep: dict[str, Any], rows: list[dict[str, Any]]) -> Table:
    """Every sweep cell: value, CI, n, the extra columns present, degenerate (why) and selected."""
    layer, chosen = sweep_selected(sweep)
    extra = [k for k in ("mean_nll", "same_answer_rate", "effect") if any(r.get(k) is not None for r in rows)]
    return Table(
        ["layer", "multiplier", str(sweep.get("metric", "value")), "95% CI", "n", *extra, "degenerate", "selected"],
        [
            [fmt(r.get("layer")) if r.get("layer") is not None else "-", fmt(r.get("multiplier")), fmt(r.get("value")), fmt_ci(r.get("ci_low"), r.get("ci_high")), fmt(r.get("n"))]
            + [fmt(r.get(k)) for k in extra]
            + [str(r.get("degenerate_reason") or ("yes" if r.get("degenerate") else "")),
               "yes" if r.get("layer") == layer and num(r.get("multiplier")) in chosen else ""]
            for r in rows
        ],
    )


def section_sweep(plan: Plan, results: dict[str, Any]) -> None:
    """The steering sweep: figure, selection rule, the selected layer and multipliers, every cell."""
    plan.add(Heading(2, "Steering sweep"))
    sweep = results.get("sweep") or {}
    rows = sorted(sweep.get("rows") or [], key=lambda r: (num(r.get("layer")) if r.get("layer") is not None else -1, num(r.get("multiplier"))))
    if not rows:
        plan.para("Not run.")
        return
    selected = sweep.get("selected") or {}
    layer, _ = sweep_selected(sweep)
    plan.para(
        f"{sweep.get('metric', 'value')} on ",
        ("c", str(sweep.get("task", "?"))),
        f" ({sweep.get('split', '?')} split) against the steering multiplier, one line per layer; "
        "crosses = degenerate cells, stars = the selected layer's multipliers.",
    )
    plan.figure("sweep", "steering sweep", lambda path: plot_sweep(sweep, rows, path))
    if sweep.get("rule"):
        plan.para(("b", "Selection rule:"), " " + str(sweep["rule"]))
    if selected:
        plan.para(("b", "Selected:"), f" layer {fmt(layer)}, m+ x{fmt(selected.get('positive'))} (effect {fmt(selected.get('effect_positive'))}), "
                  f"m- x{fmt(selected.get('negative'))} (effect {fmt(selected.get('effect_negative'))})"
                  + ("." if selected.get("moved", True) else "; steering did not move the behaviour on the validation split."))
    plan.add(_sweep_table(sweep, rows))


def _grid_table(grid: dict[str, Any]) -> Table | None:
    """Layers x multipliers of one robustness grid, degenerate cells marked ``x``."""
    layers, mults, cells = grid_cells(grid)
    if not (layers and mults):
        return None
    rows = []
    for layer in layers:
        row = [fmt(layer)]
        for mult in mults:
            cell = cells.get((layer, float(mult)))
            row.append("-" if cell is None else fmt(cell.get("value")) + (" x" if cell.get("degenerate") else ""))
        rows.append(row)
    return Table(["layer \\ multiplier", *[fmt(m) for m in mults]], rows)


def section_robustness(plan: Plan, results: dict[str, Any], conds: dict[str, dict[str, Any]]) -> None:
    """One heatmap and table per condition with a robustness grid."""
    plan.add(Heading(2, "Robustness"))
    robustness = results.get("robustness") or {}
    if not robustness:
        plan.para("Not run.")
        return
    plan.para("Layers × multipliers; ", ("c", "x"), " marks degenerate cells (one answer letter at or above the threshold).")
    for cid, grid in robustness.items():
        grid = grid or {}
        title = f"{label(conds, cid)}: {grid.get('task', '?')} {grid.get('metric', '')}".strip()
        plan.add(Heading(3, label(conds, cid)))
        plan.para(
            ("c", str(grid.get("task", "?"))),
            f", {grid.get('metric', 'value')}; degenerate threshold {fmt(grid.get('degenerate_threshold'))}.",
        )
        plan.figure(f"robustness-{cid}", title, lambda path, grid=grid, title=title: draw_robustness(grid, path, title))
        table = _grid_table(grid)
        if table is not None:
            plan.add(table)


def section_projection(plan: Plan, results: dict[str, Any], conds: dict[str, dict[str, Any]]) -> None:
    """Per condition: the layers x tokens cosine heatmaps and the prompts they show."""
    plan.add(Heading(2, "Projections"))
    projection = results.get("projection") or {}
    by_condition = projection.get("by_condition") or {}
    if not by_condition:
        plan.para("Not run.")
        return
    plan.para("Cosine of each token's hidden state to the honesty vector, layers × tokens.")
    if projection.get("layer_note"):
        plan.para(str(projection["layer_note"]))
    for cid, items in by_condition.items():
        items = items or []
        plan.add(Heading(3, label(conds, cid)))
        if not items:
            plan.para("No prompts.")
            continue
        title = f"projection: {label(conds, cid)}"
        plan.figure(f"projection-{cid}", title, lambda path, items=items, title=title: draw_projection(items, path, title))
        plan.add(Bullets([[("", f"prompt {i + 1}: "), ("", str(item.get("prompt", "")))] for i, item in enumerate(items)]))
