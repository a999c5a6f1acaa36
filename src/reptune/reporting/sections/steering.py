"""The steering sections: the sweep that chose the layer and multipliers, fair counter-steering,
the robustness grids (counter-steering) and the per-token projections."""

from __future__ import annotations

from reptune.reporting.document import Bullets, Heading, Plan, Table, fmt, fmt_ci
from reptune.reporting.figures import draw_projection, draw_robustness, plot_counter, plot_sweep
from reptune.reporting.schema import (
    Condition,
    CounterVector,
    CounterVectors,
    ExperimentResults,
    Projection,
    RobustnessGrid,
    Selection,
    Sweep,
    SweepRow,
)
from reptune.reporting.sections.common import given, label, num


def _sweep_table(sweep: Sweep, rows: list[SweepRow]) -> Table:
    """Every sweep cell: value, CI, n, the extra columns present, degenerate (why) and selected."""
    layer, chosen = sweep.choice()
    extra = [k for k in ("mean_nll", "same_answer_rate", "effect") if any(getattr(r, k) is not None for r in rows)]
    return Table(
        ["layer", "multiplier", str(given(sweep.metric, "value")), "95% CI", "n", *extra, "degenerate", "selected"],
        [
            [fmt(r.layer) if r.layer is not None else "-", fmt(r.multiplier), fmt(r.value), fmt_ci(r.ci_low, r.ci_high), fmt(r.n)]
            + [fmt(getattr(r, k)) for k in extra]
            + [str(r.degenerate_reason or ("yes" if r.degenerate else "")),
               "yes" if r.layer == layer and num(r.multiplier) in chosen else ""]
            for r in rows
        ],
    )


def section_sweep(plan: Plan, results: ExperimentResults) -> None:
    """The steering sweep: figure, selection rule, the selected layer and multipliers, every cell."""
    sweep = results.sweep or Sweep()
    rows = sorted(sweep.rows or [], key=lambda r: (num(r.layer) if r.layer is not None else -1, num(r.multiplier)))
    if not plan.section("Steering sweep", rows):
        return
    selected = sweep.selected or Selection()
    layer, _ = sweep.choice()
    plan.para(
        f"{given(sweep.metric, 'value')} on ",
        ("c", str(given(sweep.task, "?"))),
        f" ({given(sweep.split, '?')} split) against the steering multiplier, one line per layer; "
        "crosses = degenerate cells, stars = the selected layer's multipliers.",
    )
    plan.figure("sweep", "steering sweep", lambda path: plot_sweep(sweep, rows, path))
    if sweep.rule:
        plan.para(("b", "Selection rule:"), " " + str(sweep.rule))
    if selected:
        plan.para(("b", "Selected:"), f" layer {fmt(layer)}, m+ x{fmt(selected.positive)} (effect {fmt(selected.effect_positive)}), "
                  f"m- x{fmt(selected.negative)} (effect {fmt(selected.effect_negative)})"
                  + ("." if given(selected.moved, True) else "; steering did not move the behaviour on the validation split."))
    plan.add(_sweep_table(sweep, rows))


def _counter_vector_table(counter: CounterVectors) -> Table:
    rows = [["training", "-", "1.000", fmt(counter.norm), "the vector the honesty variants were tuned towards"]]
    for name, vector in (counter.vectors or {}).items():
        vector = vector or CounterVector()
        rows.append([name, str(vector.file or "-"), fmt(vector.cosine_to_training), fmt(vector.norm),
                     str(vector.data or ("norm-matched Gaussian direction" if name.startswith("random") else "-"))])
    return Table(["vector", "file", "cosine to training vector", "norm at layer", "data"], rows)


def section_counter(plan: Plan, results: ExperimentResults) -> None:
    """Fair counter-steering: the attacking vectors and every variant's drop under each, with paired CIs."""
    counter = results.counter or CounterVectors()
    rows = counter.rows or []
    if not plan.section("Counter-steering: who attacks", rows):
        return
    task = str(given(counter.task, "?"))
    plan.para(
        "Each tuned variant is counter-steered at layer ", fmt(counter.layer), " with its counter multiplier by three kinds of vector: the ",
        ("i", "training"), " vector (the paper's test, which favours the honesty variants: they were tuned towards it), an ",
        ("i", "other"), " vector for the same behaviour from data the training vector did not use, and norm-matched ",
        ("i", "random"), " directions (the floor any push of that size reaches). All are rescaled to the training vector's norm at that layer. ",
        ("c", "resists-counter-steering"), f" is judged on the {given(counter.judge_on, 'training')} vector.",
    )
    plan.figure("counter", f"{task}: drop under counter-steering per attacking vector (95% CI)", lambda path: plot_counter(rows, path, task))
    plan.add(_counter_vector_table(counter))
    plan.add(Table(
        ["variant", "vector", "seed", "n", "unsteered", "counter-steered", "drop", "95% CI (paired bootstrap)"],
        [[str(r.variant), str(r.vector), fmt(r.seed), fmt(r.n), fmt(r.unsteered), fmt(r.countered), fmt(r.drop), fmt_ci(r.ci_low, r.ci_high)] for r in rows],
    ))


def _grid_table(grid: RobustnessGrid) -> Table | None:
    """Layers x multipliers of one robustness grid, degenerate cells marked ``x``."""
    layers, mults, cells = grid.table()
    if not (layers and mults):
        return None
    rows = []
    for layer in layers:
        row = [fmt(layer)]
        for mult in mults:
            cell = cells.get((layer, float(mult)))
            row.append("-" if cell is None else fmt(cell.value) + (" x" if cell.degenerate else ""))
        rows.append(row)
    return Table(["layer \\ multiplier", *[fmt(m) for m in mults]], rows)


def section_robustness(plan: Plan, results: ExperimentResults, conds: dict[str, Condition]) -> None:
    """One heatmap and table per condition with a robustness grid."""
    robustness = results.robustness or {}
    if not plan.section("Robustness", robustness):
        return
    plan.para("Layers × multipliers; ", ("c", "x"), " marks degenerate cells (one answer letter at or above the threshold).")
    for cid, grid in robustness.items():
        grid = grid or RobustnessGrid()
        title = f"{label(conds, cid)}: {given(grid.task, '?')} {given(grid.metric, '')}".strip()
        plan.add(Heading(3, label(conds, cid)))
        plan.para(
            ("c", str(given(grid.task, "?"))),
            f", {given(grid.metric, 'value')}; degenerate threshold {fmt(grid.degenerate_threshold)}.",
        )
        plan.figure(f"robustness-{cid}", title, lambda path, grid=grid, title=title: draw_robustness(grid, path, title))
        table = _grid_table(grid)
        if table is not None:
            plan.add(table)


def section_projection(plan: Plan, results: ExperimentResults, conds: dict[str, Condition]) -> None:
    """Per condition: the layers x tokens cosine heatmaps and the prompts they show."""
    projection = results.projection or Projection()
    by_condition = projection.by_condition or {}
    if not plan.section("Projections", by_condition):
        return
    plan.para("Cosine of each token's hidden state to the honesty vector, layers × tokens.")
    if projection.layer_note:
        plan.para(str(projection.layer_note))
    for cid, items in by_condition.items():
        items = items or []
        plan.add(Heading(3, label(conds, cid)))
        if not items:
            plan.para("No prompts.")
            continue
        title = f"projection: {label(conds, cid)}"
        plan.figure(f"projection-{cid}", title, lambda path, items=items, title=title: draw_projection(items, path, title))
        plan.add(Bullets([[("", f"prompt {i + 1}: "), ("", str(item.get("prompt", "")))] for i, item in enumerate(items)]))
