"""The sample-efficiency study's section: accuracy against the number of training items, the items each
variant needs to reach the target, and its claim (``results.studies.sample_efficiency``)."""

from __future__ import annotations

from typing import Any

from reptune.reporting.document import Bullets, Heading, Plan, Table, fmt, fmt_ci, fmt_p
from reptune.reporting.figures import plot_sample_efficiency
from reptune.reporting.schema import Claim, ExperimentResults, SampleEfficiency, SampleEfficiencyReach, SampleEfficiencyRow
from reptune.reporting.sections.common import given


def _list(values: list[Any] | None, spec: str = ".3f") -> str:
    return ", ".join(fmt(v, spec) for v in values or []) or "-"


def _steps(row: SampleEfficiencyRow) -> str:
    """Per seed: steps run (best step) of the budget; ``main`` where the main run's training was reused."""
    parts = []
    for i, budget in enumerate(row.budget_steps or []):
        run = (row.steps or [None])[i] if i < len(row.steps or []) else None
        best = (row.best_step or [None])[i] if i < len(row.best_step or []) else None
        reused = (row.reused or [False])[i] if i < len(row.reused or []) else False
        parts.append(f"{fmt(run)} (best {fmt(best)}) of {fmt(budget)}" + (", main run" if reused else ""))
    return "; ".join(parts) or "-"


def _table(rows: list[SampleEfficiencyRow]) -> Table:
    return Table(
        ["n", "variant", "accuracy", "95% CI", "per seed", "steps run (best) of budget, per seed", "batch", "cosine to v", "degenerate"],
        [[str(given(r.size, "?")), str(given(r.variant, "?")), fmt(r.value), fmt_ci(r.ci_low, r.ci_high), _list(r.per_seed), _steps(r),
          _list(r.batch_size), _list(r.cosine), _degenerate(r)] for r in rows],
    )


def _differences(section: SampleEfficiency, base: str, other: str) -> Table:
    rows = []
    for d in section.differences or []:
        per_seed = "; ".join(f"{fmt(p.get('effect'), '+.3f')} {fmt_ci(p.get('ci_low'), p.get('ci_high'))}" for p in d.per_seed or [])
        rows.append([str(given(d.size, "?")), fmt(d.value, "+.3f"), fmt_ci(d.ci_low, d.ci_high), per_seed or "-"])
    return Table(["n", f"{other} minus {base}", "95% CI (envelope)", "per seed [95% paired bootstrap CI]"], rows)


def _reach_item(entry: SampleEfficiencyReach) -> list[tuple[str, str]]:
    name = str(given(entry.variant, "?"))
    seeds = ", ".join(str(s) if s is not None else "never" for s in entry.per_seed or [])
    if entry.size is None:
        return [("b", name), ("", f": {given(entry.note, 'never reaches the target')}" + (f" (per seed: {seeds})" if seeds else "") + ".")]
    return [("b", name), ("", f": reaches it at n = {entry.size}" + (f" (per seed: {seeds})" if seeds else "") + ".")]


def _claim(plan: Plan, section: SampleEfficiency, results: ExperimentResults) -> None:
    """The study's claim as judged with the paper's (one Holm family): verdict, evidence, p, MDE."""
    found = next((c for c in results.claims or [] if c.id == section.claim), None) or Claim()
    if not found:
        plan.para(("b", "Claim:"), " not judged in this results file.")
        return
    plan.para(("b", "Claim"), " ", ("c", str(found.id)), ": ", ("b", str(given(found.verdict, "?"))), f" — {given(found.claim, '')} ",
              ("i", "Evidence:"), f" {given(found.evidence, '')} p = {fmt_p(found.p_value)} (Holm-adjusted {fmt_p(found.p_holm)}). "
              + str((found.mde.text if found.mde else None) or ""))


def _degenerate(row: SampleEfficiencyRow) -> str:
    """The row's degenerate seeds and why, each reason once."""
    by_reason: dict[str, list[str]] = {}
    for seed, why in zip(row.seeds or [], row.degenerate or []):
        if why:
            by_reason.setdefault(str(why), []).append(fmt(seed))
    return "; ".join(f"seed {', '.join(seeds)}: {why}" for why, seeds in by_reason.items())


UNITS = {"twin": "twins (an item is a true/false pair)", "ab": "statements (A/B questions)"}


def section_sample_efficiency(plan: Plan, section: dict[str, Any], results: ExperimentResults) -> None:
    """Study: sample efficiency (figure, table, differences, target, claim, notes)."""
    study = SampleEfficiency.model_validate(section)
    plan.add(Heading(2, "Study: sample efficiency"))
    rows = study.rows or []
    if not rows:
        plan.para("Not run.")
        return
    base, other = (list(study.variants or []) + ["?", "?"])[:2]
    seeds = study.seeds or []
    plan.para(f"{other} against {base}, each trained from the base weights on nested, label-balanced subsets of n training ",
              f"{UNITS.get(str(study.item_kind), 'items')}, {fmt(study.train_items)} in the whole train split, with seed{'s' if len(seeds) > 1 else ''} ",
              f"{_list(seeds, 'd')}, and evaluated on the same {fmt(study.items)} held-out items of ", ("c", str(given(study.task, "?"))),
              f". Budget: {given(study.budget, '?')}. Accuracy is the {given(study.ci_rule, 'mean over seeds')}.")
    plan.figure("sample-efficiency", f"{given(study.task, '?')} accuracy against training items n (log scale; 95% CI band; dots = seeds; "
                "dashed: untuned; dotted: target)", lambda path: plot_sample_efficiency(study, path))
    plan.add(_table(rows))
    plan.add(_differences(study, base, other))
    target = study.target
    if target:
        untuned = study.untuned
        plan.para(("b", "Target:"), f" accuracy {fmt(target.value)} ({given(target.rule, '?')}); untuned {fmt(untuned.value if untuned else None)}.")
        plan.add(Bullets([_reach_item(entry) for entry in study.reach or []]))
        if study.label_ratio is not None:
            plan.para("Both reach the target at the same size." if study.label_ratio == 1 else
                      f"{base} needs {fmt(study.label_ratio, '.3g')} times the training items {other} needs to reach the target "
                      "(descriptive: the smallest size tried whose mean accuracy reaches it).")
    _claim(plan, study, results)
    notes = [[("", str(n))] for n in study.notes or []]
    if study.degenerate:
        what = f" {len(study.degenerate)} trained conditions (marked in the table); below all they block the claim, at all they are shown only."
        notes.append([("b", "Degenerate:"), ("", what)])
    if notes:
        plan.add(Bullets(notes))
