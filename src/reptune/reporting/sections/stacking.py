"""The stacking study's section (``results.studies.stacking``): prompt x steering x weights on the same items.

Every number is the study's entry of ``results.json`` (formatted with :func:`~reptune.reporting.document.fmt`),
never recomputed here.
"""

from __future__ import annotations

from typing import Any

from reptune.reporting.document import Code, Heading, Plan, Table, fmt, fmt_ci, fmt_p, short
from reptune.reporting.figures import plot_stacking
from reptune.reporting.schema import ExperimentResults

CLAIM_IDS = ("vector-adds-to-prompting", "vector-adds-to-tuning")


def _get(entry: dict[str, Any] | None, key: str) -> Any:
    return (entry or {}).get(key)


def _steering(row: dict[str, Any]) -> str:
    return "yes" if row.get("steered") else "no"


def _cell_table(cells: list[dict[str, Any]]) -> Table:
    rows = []
    for c in cells:
        acc, margin = c.get("accuracy") or {}, c.get("margin") or {}
        rows.append([str(c.get("cell")), str(c.get("prompt")), _steering(c), fmt(c.get("n")), fmt(acc.get("value")), fmt_ci(acc.get("ci_low"), acc.get("ci_high")),
                     fmt(margin.get("value")), fmt_ci(margin.get("ci_low"), margin.get("ci_high")), fmt(c.get("mean_nll")),
                     f"{c.get('source')}: {c.get('condition')}", short(c.get("degenerate") or "", 50)])
    return Table(["cell", "prompt", "steered", "n", "accuracy", "95% CI", "mean margin", "95% CI", "NLL/token", "read from", "degenerate"], rows)


def _margin_cells(entry: dict[str, Any] | None) -> list[str]:
    if not entry:
        return ["-", "-", "-"]
    return [fmt(entry.get("effect")), fmt_ci(entry.get("ci_low"), entry.get("ci_high")), fmt_p(entry.get("p_value"))]


def _effects_table(rows: list[dict[str, Any]]) -> Table:
    return Table(
        ["weights", "prompt", "n", "unsteered", "steered", "difference", "95% CI", "McNemar p", "MDE", "margin difference", "95% CI", "sign-flip p"],
        [[str(r.get("weights")), str(r.get("prompt")), fmt(r.get("n")), fmt(r.get("a_value")), fmt(r.get("b_value")), fmt(r.get("effect")),
          fmt_ci(r.get("ci_low"), r.get("ci_high")), fmt_p(r.get("p_value")), fmt(r.get("mde")), *_margin_cells(r.get("margin"))] for r in rows],
    )


def _interaction_table(rows: list[dict[str, Any]]) -> Table:
    return Table(
        ["factor x steering", "at", "n", "interaction", "95% CI", "sign-flip p", "MDE", "reading", "on the margin", "95% CI", "sign-flip p", "reading"],
        [[str(r.get("factor")), str(r.get("at")), fmt(r.get("n")), fmt(r.get("effect")), fmt_ci(r.get("ci_low"), r.get("ci_high")), fmt_p(r.get("p_value")),
          fmt(r.get("mde")), str(r.get("reading")), *_margin_cells(r.get("margin")), str(_get(r.get("margin"), "reading") or "-")] for r in rows],
    )


def _main_table(rows: list[dict[str, Any]]) -> Table:
    return Table(
        ["factor", "contrast", "seed", "n", "mean effect", "95% CI", "sign-flip p", "on the margin", "95% CI", "sign-flip p"],
        [[str(r.get("factor")), str(r.get("contrast")), fmt(r.get("seed")), fmt(r.get("n")), fmt(r.get("effect")), fmt_ci(r.get("ci_low"), r.get("ci_high")),
          fmt_p(r.get("p_value")), *_margin_cells(r.get("margin"))] for r in rows],
    )


def _verdicts(plan: Plan, results: ExperimentResults) -> None:
    claims = [c for c in results.claims or [] if c.id in CLAIM_IDS]
    if claims:  # the evidence is in the claims section, judged with the paper's claims
        plan.para("The study's claims (evidence in the claims section; one Holm family with the paper's claims):")
        plan.add(Table(["claim", "verdict", "p", "p (Holm)", "MDE"],
                       [[str(c.id), str(c.verdict), fmt_p(c.p_value), fmt_p(c.p_holm), fmt(c.mde.value if c.mde else None)] for c in claims]))


def section_stacking(plan: Plan, section: dict[str, Any], results: ExperimentResults) -> None:
    """The factorial: what each factor level is, the interaction plot, the cells, the steering effects, the interactions."""
    cells = section.get("cells") or []
    if not plan.section("Study: stacking (prompt x steering x weights)", cells):
        return
    task = str(section.get("task") or "?")
    plan.para(
        "Does the vector add to prompting, and to fine-tuning? Every cell is scored on the same ", fmt(section.get("n")), " test items of ", ("c", task),
        " (paired): prompt (none / an honest system prompt) x steering (0 / x", fmt(section.get("multiplier"), "g"), f" at layer {fmt(section.get('layer'))}, "
        f"{section.get('multiplier_source')}) x weights (untuned / ", ", ".join(str(v) for v in section.get("variants") or []),
        f" at seed{'s' if len(section.get('seeds') or []) > 1 else ''} ", ", ".join(str(s) for s in section.get("seeds") or []),
        "). Cells without a prompt that equal a main condition are read from its evaluation file (", ("c", "read from: main"),
        "); the others were evaluated for this study. An interaction is the per-item difference of differences ",
        ("c", "(F+S - F) - (S - none)"), ": below 0 steering adds less once the factor is on (sub-additive).",
    )
    prompts = section.get("prompts") or {}
    if prompts:
        plan.para(("b", "What the prompts are."), " The first item's prompt without a system prompt (the chat template's own default, if it has one) "
                  "and with the honest one:")
        plan.add(*(Code(str(prompts[k]), "text") for k in ("none", "honest") if k in prompts))
    plan.figure("stacking", f"{task}: unsteered vs steered per weights level and prompt (95% CI)",
                lambda path: plot_stacking(cells, path, task, section.get("multiplier"), section.get("continuous")))
    _verdicts(plan, results)
    plan.add(Heading(3, "Cells"), _cell_table(cells))
    plan.add(Heading(3, "Steering effect under each prompt and weights level"), _effects_table(section.get("steering_effects") or []))
    plan.add(Heading(3, "Interactions with steering"), _interaction_table(section.get("interactions") or []))
    plan.add(Heading(3, "Main effects (averaged over the other factors)"), _main_table(section.get("main_effects") or []))
