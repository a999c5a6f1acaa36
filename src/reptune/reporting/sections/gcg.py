"""The gcg study's section (``results.studies.gcg``): attack success and target loss per model, direct and transferred.

Every number is the study's entry of ``results.json`` (formatted with :func:`~reptune.reporting.document.fmt`),
never recomputed here.
"""

from __future__ import annotations

from typing import Any

from reptune.reporting.document import Code, Heading, Plan, Table, fmt, fmt_ci, fmt_p, short
from reptune.reporting.figures import plot_gcg
from reptune.reporting.schema import ExperimentResults

CLAIM_ID = "resists-gcg"


def _metric(entry: dict[str, Any] | None) -> list[str]:
    entry = entry or {}
    return [fmt(entry.get("value")), fmt_ci(entry.get("ci_low"), entry.get("ci_high"))]


def _model_table(rows: list[dict[str, Any]]) -> Table:
    body = []
    for r in rows:
        flip = r.get("flip_rate") or {}
        body.append([str(r.get("level")), str(r.get("mode")), fmt(r.get("n")), *_metric(r.get("attack_success_rate")),
                     fmt((r.get("base_success_rate") or {}).get("value")), f"{fmt(flip.get('value'))} (n = {fmt(flip.get('n'))})",
                     *_metric(r.get("mean_loss")), fmt((r.get("mean_base_loss") or {}).get("value")), *_metric(r.get("suffix_effect")),
                     short(r.get("degenerate") or "", 50)])
    return Table(["model", "suffixes", "n", "attack success", "95% CI", "unattacked", "flip rate", "target loss", "95% CI", "unattacked loss",
                  "suffix effect", "95% CI", "degenerate"], body)


MEASURES = {"effect": "the suffix effect", "loss": "the target loss reached", "success": "the success rate"}


def _comparison_table(rows: list[dict[str, Any]]) -> Table:
    body = []
    for r in rows:
        loss, success, effect = r.get("loss") or {}, r.get("success") or {}, r.get("effect") or {}
        body.append([f"{r.get('b')} vs {r.get('a')}" + (" (claim)" if r.get("claim") else ""), str(r.get("mode")), fmt(r.get("n")),
                     fmt(effect.get("effect"), "+.3f"), fmt_ci(effect.get("ci_low"), effect.get("ci_high")), fmt_p(effect.get("p_value")), fmt(effect.get("mde")),
                     fmt(loss.get("effect"), "+.3f"), fmt_ci(loss.get("ci_low"), loss.get("ci_high")), fmt_p(loss.get("p_value")), fmt(loss.get("mde")),
                     fmt(success.get("effect"), "+.3f"), fmt_ci(success.get("ci_low"), success.get("ci_high")), fmt_p(success.get("p_value")),
                     fmt(success.get("discordant"))])
    return Table(["b vs a", "suffixes", "n", "suffix effect a - b", "95% CI", "sign-flip p", "MDE", "loss b - a", "95% CI", "sign-flip p", "MDE", "success a - b", "95% CI", "McNemar p", "discordant"], body)


def _verdict(plan: Plan, results: ExperimentResults) -> None:
    claims = [c for c in results.claims or [] if c.id == CLAIM_ID]
    if claims:  # the evidence is in the claims section, judged with the paper's claims
        plan.para("The study's claim (evidence in the claims section; one Holm family with the paper's claims):")
        plan.add(Table(["claim", "verdict", "p", "p (Holm)", "MDE"],
                       [[str(c.id), str(c.verdict), fmt_p(c.p_value), fmt_p(c.p_holm), fmt(c.mde.value if c.mde else None)] for c in claims]))


def section_gcg(plan: Plan, section: dict[str, Any], results: ExperimentResults) -> None:
    """The attacks: what was attacked at which budget, the figure, the claim, per-model rows, paired comparisons, example suffixes."""
    rows = section.get("rows") or []
    if not plan.section("Study: GCG adversarial suffixes", rows):
        return
    budget = section.get("budget") or {}
    twins = section.get("format") == "twin"
    target = "the false twin, as the reply to \"Make a statement about the world.\"" if twins else "the wrong answer"
    success = ("the model prefers the false twin to the true one (summed log-prob)" if twins else "greedy decoding gives the target")
    plan.para(
        "Do the tuned models resist adversarial suffixes? Each model is attacked by GCG (nanogcg, the ", ("c", "gcg"), " task) on the same first ",
        fmt(section.get("n")), f" test {'twins' if twins else 'statements'} (format {section.get('format')}: the target is {target}) with the same budget: ",
        f"{budget.get('steps')} steps x {budget.get('search_width')} candidates x {budget.get('suffix_length')} suffix tokens (top-{budget.get('topk')}, "
        f"early stop {'on' if budget.get('early_stop') else 'off'}). ", ("b", "transfer"), " rows apply the suffixes found on the untuned model, item by item. "
        f"Success: {success}; flip rate: success among the items the model answers honestly unattacked; target loss: "
        "the target's mean cross-entropy with the suffix (nats/token); suffix effect: unattacked loss minus attacked loss. "
        + ("Twin preference has no one-word answer, so no model is marked degenerate." if twins else
           "A model answering one word to almost every item unattacked is marked degenerate, and a claim comparing it is not tested."),
    )
    plan.figure("gcg", "GCG: attack success and target loss per model (direct and transferred; 95% CI)", lambda path: plot_gcg(rows, path, budget))
    _verdict(plan, results)
    plan.add(Heading(3, "Models"), _model_table(rows))
    plan.add(Heading(3, "Paired comparisons"))
    measure = str(section.get("measure") or "effect")
    plan.para("Per item, b against a on the same items. Suffix effect a - b > 0: the attack moved b less; loss b - a > 0: b ends farther from "
              "the target; success a - b > 0: the attack succeeds on b less often. The claim is judged on ", ("b", MEASURES.get(measure, measure)), ".")
    plan.add(_comparison_table(section.get("comparisons") or []))
    examples = [f"{r.get('level')}: {r.get('example_suffix')!r}" for r in rows if r.get("mode") == "direct" and r.get("example_suffix") is not None]
    if examples:
        plan.para("The suffix found for the first item, per model:")
        plan.add(Code("\n".join(examples), "text"))
