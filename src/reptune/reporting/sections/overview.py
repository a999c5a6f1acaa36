"""The first sections: the summary, the answer on the first screen, the headline table, the claims
and what moved."""

from __future__ import annotations

from typing import Any

from reptune.reporting.document import Bullets, Heading, Plan, Span, Table, fmt, fmt_ci, fmt_p
from reptune.reporting.figures import plot_task
from reptune.reporting.sections.common import tasks


def section_summary(plan: Plan, results: dict[str, Any], conds: dict[str, dict[str, Any]]) -> None:
    """Title and one paragraph: model, seeds, time, data splits, conditions, what was skipped."""
    name = results.get("name") or "experiment"
    plan.add(Heading(1, f"Representation-tuning experiment: {name}"))
    model = results.get("model") or {}
    spans: list[Span | str] = ["Model ", ("c", str(model.get("model_id") or "unknown"))]
    details = []
    if model.get("revision"):
        details.append(f"revision {model['revision']}")
    if model.get("num_layers") is not None:
        details.append(f"{fmt(model['num_layers'])} layers")
    if model.get("hidden_size") is not None:
        details.append(f"hidden size {fmt(model['hidden_size'])}")
    if model.get("precision"):
        details.append(str(model["precision"]))
    if details:
        spans.append(" (" + ", ".join(details) + ")")
    spans.append(". ")
    seeds = results.get("seeds") or []
    if seeds:
        word = "seed" if len(seeds) == 1 else "seeds"
        spans.append(f"{fmt(len(seeds))} {word} ({', '.join(fmt(s) for s in seeds)})")
        spans.append(f": {results['seed_note']}. " if results.get("seed_note") else ". ")
    timings = results.get("timings") or {}
    if timings.get("total_s") is not None:
        total = float(timings["total_s"])
        spans.append(f"Total time {fmt(total)} s ({int(total // 60)} min {round(total % 60)} s) over {fmt(len(timings.get('stages') or {}))} stages. ")
    data = results.get("data") or {}
    if data:
        splits = data.get("splits") or {}
        pairs = data.get("pairs") or {}
        split_text = ", ".join(f"{k} {fmt(v)}" + (f" ({fmt(pairs[k])} twins)" if k in pairs else "") for k, v in splits.items())
        spans += ["Statements ", ("c", str(data.get("statements") or "?"))]
        spans.append(f" ({split_text}). " if split_text else ". ")
    if conds:
        kinds: dict[str, int] = {}
        for cond in conds.values():
            kinds[cond.get("kind") or "other"] = kinds.get(cond.get("kind") or "other", 0) + 1
        spans.append(f"{fmt(len(conds))} conditions (" + ", ".join(f"{k} {fmt(v)}" for k, v in kinds.items()) + ") ")
        spans.append(f"evaluated on {fmt(len(tasks(results)))} tasks. ")
    skipped = results.get("skipped") or []
    if skipped:
        spans.append("Skipped: " + "; ".join(f"{s.get('what', '?')} ({s.get('reason', 'no reason given')})" for s in skipped) + ".")
    else:
        spans.append("Nothing was skipped.")
    plan.para(*spans)


def section_answer(plan: Plan, results: dict[str, Any], conds: dict[str, dict[str, Any]]) -> None:
    """The first screen: the headline behaviour per condition (figure, CIs), what the model knows,
    whether it can learn the behaviour at all, and the verdicts."""
    plan.add(Heading(2, "The answer"))
    head = results.get("headline") or {}
    task = str(head.get("task") or "")
    entries = {cid: (results.get("scores") or {}).get(cid, {}).get(task) for cid in conds}
    ids = [cid for cid, entry in entries.items() if entry]
    if ids:
        metric = str(head.get("metric") or "accuracy")
        plan.figure("answer", f"{task}: {metric} per condition (95% CI; dots = seeds)",
                    lambda path: plot_task(task, metric, ids, {cid: entries[cid] for cid in ids}, conds, path))
    knowledge = results.get("knowledge") or {}
    if knowledge.get("n"):
        topics = knowledge.get("by_topic") or {}
        weakest = sorted(topics.items(), key=lambda kv: kv[1].get("share", 0))[:2]
        plan.para(("b", "What the untuned model knows:"), f" it gets {fmt(knowledge.get('known'))} of {fmt(knowledge.get('n'))} test items right on ",
                  ("c", str(knowledge.get("task"))), f" ({fmt(knowledge.get('share'))})"
                  + (", weakest on " + ", ".join(f"{t} ({fmt(v.get('share'))} of {fmt(v.get('n'))})" for t, v in weakest) if weakest else "") + ".")
    gate = results.get("learnability") or results.get("gate") or {}
    if gate:
        plan.para(("b", "Learnability check " + ("passed:" if gate.get("passed") else "not passed:")), " " + str(gate.get("reason") or ""))
    claims = results.get("claims") or []
    if claims:
        plan.add(Bullets([[("b", str(c.get("verdict") or "not tested")), ("", " — "), ("c", str(c.get("id") or "?"))]
                          + ([("", f" (p = {fmt_p(c['p_value'])}" + (f", Holm {fmt_p(c['p_holm'])}" if c.get("p_holm") is not None else "") + ")")]
                             if c.get("p_value") is not None else []) for c in claims]))
        plan.para("Each verdict's evidence, test and minimum detectable effect are under ", ("i", "Claims"), " below.")


def section_headline(plan: Plan, results: dict[str, Any]) -> None:
    """The headline task's primary metric per condition, with its 95% CI and n."""
    plan.add(Heading(2, "Headline"))
    head = results.get("headline") or {}
    rows = head.get("rows") or []
    if not rows:
        plan.para("Not run.")
        return
    metric = str(head.get("metric") or "value")
    plan.para(("c", str(head.get("task") or "?")), f", {metric} per condition with its 95% confidence interval and the number of items.")
    plan.add(
        Table(
            ["condition", "label", metric, "95% CI", "n"],
            [[str(r.get("condition")), str(r.get("label") or r.get("condition")), fmt(r.get("value")), fmt_ci(r.get("ci_low"), r.get("ci_high")), fmt(r.get("n"))] for r in rows],
        )
    )


def _claim_stats(claim: dict[str, Any]) -> list[Span]:
    """``p = raw (Holm-adjusted q)``, the test and the minimum detectable effect of one claim."""
    spans: list[Span] = []
    if claim.get("p_value") is not None:
        text = f" p = {fmt_p(claim['p_value'])}"
        if claim.get("p_holm") is not None:
            text += f" (Holm-adjusted {fmt_p(claim['p_holm'])})"
        spans.append(("", text + (f", {claim['method']}." if claim.get("method") else ".")))
    mde = claim.get("mde") or {}
    if mde.get("text"):
        spans.append(("", " " + str(mde["text"])))
    return spans


def _context_table(context: list[dict[str, Any]]) -> Table:
    """The context rows of ``tuning-beats-steering`` (not part of the decision)."""
    return Table(
        ["a", "b", "what", "task", "seed", "n", "a_value", "b_value", "difference", "p", "MDE", "degenerate"],
        [[str(r.get("a")), str(r.get("b")), str(r.get("what") or "-"), str(r.get("task") or "-"), fmt(r.get("seed")), fmt(r.get("n")),
          fmt(r.get("a_value")), fmt(r.get("b_value")), fmt(r.get("effect")), fmt_p(r.get("p_value")), fmt(r.get("mde")),
          str(r.get("degenerate") or "-")] for r in context],
    )


def section_claims(plan: Plan, results: dict[str, Any]) -> None:
    """Every claim with its verdict, evidence, p (raw and Holm-adjusted) and MDE; the decision rule; the context rows."""
    plan.add(Heading(2, "Claims"))
    claims = results.get("claims") or []
    if not claims:
        plan.para("Not run.")
        return
    gate = results.get("gate") or {}
    if gate and not gate.get("passed", True):
        plan.para(("b", "Learnability gate not passed:"), " " + str(gate.get("reason") or "no reason given"))
    items = []
    context: list[dict[str, Any]] = []
    for claim in claims:
        spans: list[Span] = [("b", str(claim.get("verdict") or "not tested")), ("", " — ")]
        if claim.get("id"):
            spans += [("c", str(claim["id"])), ("", ": ")]
        spans.append(("", str(claim.get("claim") or "")))
        if claim.get("evidence"):
            spans += [("", " "), ("i", "Evidence:"), ("", " " + str(claim["evidence"]))]
        spans += _claim_stats(claim)
        items.append(spans)
        context += [dict(row, claim=claim.get("id")) for row in claim.get("context") or []]
    plan.add(Bullets(items))
    if results.get("claims_rule"):
        plan.para(("b", "Decision rule:"), " " + str(results["claims_rule"]))
    if context:
        plan.para("Context for ", ("c", "tuning-beats-steering"), " (not part of the decision): where the gain over steering comes from.")
        plan.add(_context_table(context))


def section_findings(plan: Plan, results: dict[str, Any]) -> None:
    """What moved: the analysis' plain statements, behaviour beside representation (only when there are any)."""
    items = results.get("findings") or []
    if not items:
        return
    plan.add(Heading(2, "What moved"))
    plan.para("Behaviour (held-out facts) beside the representation (cosine of the last-token residual with the vector at its layer).")
    plan.add(Bullets([[("", str(item))] for item in items]))
