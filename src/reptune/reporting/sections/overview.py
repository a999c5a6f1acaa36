"""The first sections: the summary, the answer on the first screen, the headline table, the claims
and what moved."""

from __future__ import annotations

from reptune.reporting.document import Bullets, Heading, Plan, Span, Table, fmt, fmt_ci, fmt_p
from reptune.reporting.figures import plot_task
from reptune.reporting.schema import (
    Claim,
    Condition,
    ContextRow,
    DataInfo,
    ExperimentResults,
    Gate,
    Headline,
    Knowledge,
    Mde,
    ModelInfo,
    Timings,
)
from reptune.reporting.sections.common import given


def _model_spans(model: ModelInfo) -> list[Span | str]:
    spans: list[Span | str] = ["Model ", ("c", str(model.model_id or "unknown"))]
    details = []
    if model.revision:
        details.append(f"revision {model.revision}")
    if model.num_layers is not None:
        details.append(f"{fmt(model.num_layers)} layers")
    if model.hidden_size is not None:
        details.append(f"hidden size {fmt(model.hidden_size)}")
    if model.precision:
        details.append(str(model.precision))
    if details:
        spans.append(" (" + ", ".join(details) + ")")
    spans.append(". ")
    return spans


def section_summary(plan: Plan, results: ExperimentResults, conds: dict[str, Condition]) -> None:
    """Title and one paragraph: model, seeds, time, data splits, conditions, what was skipped."""
    plan.add(Heading(1, f"Representation-tuning experiment: {results.name or 'experiment'}"))
    spans = _model_spans(results.model or ModelInfo())
    seeds = results.seeds or []
    if seeds:
        word = "seed" if len(seeds) == 1 else "seeds"
        spans.append(f"{fmt(len(seeds))} {word} ({', '.join(fmt(s) for s in seeds)})")
        spans.append(f": {results.seed_note}. " if results.seed_note else ". ")
    timings = results.timings or Timings()
    if timings.total_s is not None:
        total = float(timings.total_s)
        spans.append(f"Total time {fmt(total, '.1f')} s ({int(total // 60)} min {round(total % 60)} s) over {fmt(len(timings.stages or {}))} stages. ")
    data = results.data or DataInfo()
    if data:
        splits = data.splits or {}
        pairs = data.pairs or {}
        split_text = ", ".join(f"{k} {fmt(v)}" + (f" ({fmt(pairs[k])} twins)" if k in pairs else "") for k, v in splits.items())
        spans += ["Statements ", ("c", str(data.statements or "?"))]
        spans.append(f" ({split_text}). " if split_text else ". ")
    if conds:
        kinds: dict[str, int] = {}
        for cond in conds.values():
            kinds[cond.kind or "other"] = kinds.get(cond.kind or "other", 0) + 1
        spans.append(f"{fmt(len(conds))} conditions (" + ", ".join(f"{k} {fmt(v)}" for k, v in kinds.items()) + ") ")
        spans.append(f"evaluated on {fmt(len(results.task_names()))} tasks. ")
    skipped = results.skipped or []
    if skipped:
        spans.append("Skipped: " + "; ".join(f"{given(s.what, '?')} ({given(s.reason, 'no reason given')})" for s in skipped) + ".")
    else:
        spans.append("Nothing was skipped.")
    plan.para(*spans)


def _verdict_item(claim: Claim) -> list[Span]:
    item: list[Span] = [("b", str(claim.verdict or "not tested")), ("", " — "), ("c", str(claim.id or "?"))]
    if claim.p_value is not None:
        item.append(("", f" (p = {fmt_p(claim.p_value)}" + (f", Holm {fmt_p(claim.p_holm)}" if claim.p_holm is not None else "") + ")"))
    if claim.short_reason and (claim.verdict or "not tested") == "not tested":
        item.append(("", f": {claim.short_reason}"))
    return item


def section_answer(plan: Plan, results: ExperimentResults, conds: dict[str, Condition]) -> None:
    """The first screen: the headline behaviour per condition (figure, CIs), what the model knows,
    whether it can learn the behaviour at all, and the verdicts."""
    plan.add(Heading(2, "The answer"))
    head = results.headline or Headline()
    task = str(head.task or "")
    scores = results.scores or {}
    # the first screen: every condition but the extra counter-steering vectors (their own section shows them)
    entries = {cid: (scores.get(cid) or {}).get(task) for cid, cond in conds.items() if not (cond.steering and cond.steering.vector)}
    ids = [cid for cid, entry in entries.items() if entry]
    if ids:
        metric = str(head.metric or "accuracy")
        plan.figure("answer", f"{task}: {metric} per condition (95% CI; dots = seeds)",
                    lambda path: plot_task(task, metric, ids, {cid: entries[cid] for cid in ids}, conds, path))
    knowledge = results.knowledge or Knowledge()
    if knowledge.n:
        topics = knowledge.by_topic or {}
        weakest = sorted(topics.items(), key=lambda kv: kv[1].get("share", 0))[:2]
        plan.para(("b", "What the untuned model knows:"), f" it gets {fmt(knowledge.known)} of {fmt(knowledge.n)} test items right on ",
                  ("c", str(knowledge.task)), f" ({fmt(knowledge.share)})"
                  + (", weakest on " + ", ".join(f"{t} ({fmt(v.get('share'))} of {fmt(v.get('n'))})" for t, v in weakest) if weakest else "") + ".")
    gate = results.learnability or results.gate or Gate()
    if gate:
        plan.para(("b", "Learnability check " + ("passed:" if gate.passed else "not passed:")), " " + str(gate.reason or ""))
    claims = results.claims or []
    if claims:
        plan.add(Bullets([_verdict_item(claim) for claim in claims]))
        plan.para("Each verdict's evidence, test and minimum detectable effect are under ", ("i", "Claims"), " below.")


def section_headline(plan: Plan, results: ExperimentResults) -> None:
    """The headline task's primary metric per condition, with its 95% CI and n."""
    head = results.headline or Headline()
    rows = head.rows or []
    if not plan.section("Headline", rows):
        return
    metric = str(head.metric or "value")
    plan.para(("c", str(head.task or "?")), f", {metric} per condition with its 95% confidence interval and the number of items.")
    plan.add(
        Table(
            ["condition", "label", metric, "95% CI", "n"],
            [[str(r.condition), str(r.label or r.condition), fmt(r.value), fmt_ci(r.ci_low, r.ci_high), fmt(r.n)] for r in rows],
        )
    )


def _claim_stats(claim: Claim) -> list[Span]:
    """``p = raw (Holm-adjusted q)``, the test and the minimum detectable effect of one claim."""
    spans: list[Span] = []
    if claim.p_value is not None:
        text = f" p = {fmt_p(claim.p_value)}"
        if claim.p_holm is not None:
            text += f" (Holm-adjusted {fmt_p(claim.p_holm)})"
        spans.append(("", text + (f", {claim.method}." if claim.method else ".")))
    mde = claim.mde or Mde()
    if mde.text:
        spans.append(("", " " + str(mde.text)))
    return spans


def _claim_item(claim: Claim) -> list[Span]:
    spans: list[Span] = [("b", str(claim.verdict or "not tested")), ("", " — ")]
    if claim.id:
        spans += [("c", str(claim.id)), ("", ": ")]
    spans.append(("", str(claim.claim or "")))
    if claim.evidence:
        spans += [("", " "), ("i", "Evidence:"), ("", " " + str(claim.evidence))]
    return spans + _claim_stats(claim)


def _context_table(context: list[ContextRow]) -> Table:
    """The context rows of ``tuning-beats-steering`` (not part of the decision)."""
    return Table(
        ["a", "b", "what", "task", "seed", "n", "a_value", "b_value", "difference", "p", "MDE", "degenerate"],
        [[str(r.a), str(r.b), str(r.what or "-"), str(r.task or "-"), fmt(r.seed), fmt(r.n),
          fmt(r.a_value), fmt(r.b_value), fmt(r.effect), fmt_p(r.p_value), fmt(r.mde), str(r.degenerate or "-")] for r in context],
    )


CONTEXT_WHAT = {
    "tuning-beats-steering": "where the gain over steering comes from",
    "resists-counter-steering": "the same test with the other counter-steering vectors (the training vector favours the honesty variants; random directions are the floor)",
    "generalises-ood": "the same two variants on the training topics and, trained on the easy items, on the hard ones (the generalisation study)",
}


def section_claims(plan: Plan, results: ExperimentResults) -> None:
    """Every claim with its verdict, evidence, p (raw and Holm-adjusted) and MDE; the decision rule; the context rows."""
    claims = results.claims or []
    if not plan.section("Claims", claims):
        return
    gate = results.gate or Gate()
    if gate and not given(gate.passed, True):
        plan.para(("b", "Learnability gate not passed:"), " " + str(gate.reason or "no reason given"))
    plan.add(Bullets([_claim_item(claim) for claim in claims]))
    if results.claims_rule:
        plan.para(("b", "Decision rule:"), " " + str(results.claims_rule))
    for claim in claims:
        if claim.context:
            plan.para("Context for ", ("c", str(claim.id)), " (not part of the decision): " + CONTEXT_WHAT.get(str(claim.id), "related comparisons") + ".")
            plan.add(_context_table(claim.context))


def section_findings(plan: Plan, results: ExperimentResults) -> None:
    """What moved: the analysis' plain statements, behaviour beside representation (only when there are any)."""
    items = results.findings or []
    if not items:
        return
    plan.add(Heading(2, "What moved"))
    plan.para("Behaviour (held-out facts) beside the representation (cosine of the last-token residual with the vector at its layer).")
    plan.add(Bullets([[("", str(item))] for item in items]))
