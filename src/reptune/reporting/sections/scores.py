"""The evaluation sections: results per task, representation-level evidence, paired tests."""

from __future__ import annotations

from reptune.reporting.document import Bullets, Heading, Plan, Table, fmt, fmt_ci, fmt_p
from reptune.reporting.figures import plot_task
from reptune.reporting.schema import Comparison, Condition, ExperimentResults, Metric, TaskScore
from reptune.reporting.sections.common import given, grouped, label


def _primary(entries: dict[str, TaskScore]) -> tuple[str, list[str]]:
    """The task's primary metric (the first one named, else the first one found) and its other metrics."""
    primary = next((e.primary for e in entries.values() if e.primary), None)
    if primary is None:
        primary = next((m for e in entries.values() for m in (e.metrics or {})), "value")
    others: list[str] = []
    for entry in entries.values():
        for metric in entry.metrics or {}:
            if metric != primary and metric not in others:
                others.append(metric)
    return primary, others


def _task(plan: Plan, task: str, ids: list[str], entries: dict[str, TaskScore], conds: dict[str, Condition]) -> None:
    """One task: its bar chart and its table (primary metric, CI, n, per seed, the other metrics)."""
    primary, others = _primary(entries)
    multi_seed = any(len(((e.metrics or {}).get(primary) or Metric()).per_seed or []) > 1 for e in entries.values())
    plan.add(Heading(3, task))
    plan.para(
        "Primary metric ",
        ("c", primary),
        "; bars grouped by condition kind, error bars are 95% confidence intervals"
        + (", dots are single seeds." if multi_seed else "."),
    )
    plan.figure(
        f"task-{task}",
        f"{task}: {primary} per condition (95% CI)",
        lambda path: plot_task(task, primary, ids, entries, conds, path),
    )
    header = ["condition", "label", "kind", primary, "95% CI", "n"] + (["per seed"] if multi_seed else []) + others
    rows = []
    for cid in ids:
        metrics = entries[cid].metrics or {}
        m = metrics.get(primary) or Metric()
        row = [cid, label(conds, cid), str(conds[cid].kind or "other"), fmt(m.value), fmt_ci(m.ci_low, m.ci_high), fmt(m.n)]
        if multi_seed:
            row.append(", ".join(fmt(v) for v in m.per_seed or []) or "-")
        row += [fmt((metrics.get(o) or Metric()).value) for o in others]
        rows.append(row)
    plan.add(Table(header, rows))


def section_tasks(plan: Plan, results: ExperimentResults, conds: dict[str, Condition]) -> None:
    """Results per task (headline task first), then what was skipped and why."""
    scores = results.scores or {}
    found = results.task_names()
    plan.section("Results per task", found)  # "Not run." when nothing was scored; what was skipped follows either way
    for task in found:
        ids = grouped(conds, [cid for cid in conds if task in (scores.get(cid) or {})])
        _task(plan, task, ids, {cid: scores[cid][task] or TaskScore() for cid in ids}, conds)
    skipped = results.skipped or []
    if skipped:
        plan.add(Heading(3, "Skipped"))
        plan.add(Bullets([[("c", str(given(s.what, "?"))), ("", ": " + str(given(s.reason, "no reason given")))] for s in skipped]))


def section_representation(plan: Plan, results: ExperimentResults, conds: dict[str, Condition]) -> None:
    """One row per condition: every representation-level number the run recorded."""
    rows = results.representation or []
    if not plan.section("Representation-level evidence", rows):
        return
    keys = ["condition"] + [k for k in dict.fromkeys(k for r in rows for k in r) if k != "condition"]
    plan.add(Table(keys, [[str(r.get(k)) if k == "condition" else fmt(r.get(k)) for k in keys] for r in rows]))


def _method(row: Comparison) -> str:
    """The test, and why a row is not tested or has no Holm p."""
    if not row.method:
        return "not tested: " + str(row.reason) if row.reason else "-"
    return str(row.method) + (f"; {row.reason}" if row.reason else "")


def section_paired(plan: Plan, results: ExperimentResults) -> None:
    """The McNemar table: every compared pair of conditions per task and seed, raw and Holm-adjusted p."""
    rows = results.comparisons or []
    if not plan.section("Paired tests", rows):
        return
    plan.para(
        "McNemar tests on per-item outcomes of two conditions (same items, same seed); Holm = Holm-Bonferroni adjusted p over this "
        "table (exploratory; the claims have their own family), without the rows whose discordant items cannot give p below alpha "
        "(5 or fewer). A row whose seed is missing is not tested (no other seed stands in)."
    )
    header = ["task", "a", "b", "seed", "n", "metric", "a_value", "b_value", "p", "Holm", "method"]
    plan.add(
        Table(
            header,
            [
                [str(r.task), str(r.a), str(r.b), fmt(r.seed), fmt(r.n), str(r.metric or "-"),
                 fmt(r.a_value), fmt(r.b_value), fmt_p(r.p_value), fmt_p(r.p_holm),
                 _method(r)]
                for r in rows
            ],
        )
    )
