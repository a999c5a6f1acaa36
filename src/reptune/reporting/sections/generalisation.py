"""The OOD generalisation study's section (``results.studies.generalisation``): what was held out, the
gains per item set with the figure, the in-distribution vs OOD gaps, and the claim's verdict."""

from __future__ import annotations

from typing import Any

from reptune.reporting.document import Plan, Table, fmt, fmt_ci, fmt_p
from reptune.reporting.figures import plot_generalisation
from reptune.reporting.schema import Claim, ExperimentResults, GeneralisationStudy
from reptune.reporting.sections.common import given

SET_LABELS = {
    "id": "training topics (in-distribution)", "ood": "held-out topics (OOD)", "easy": "easy test items", "hard": "hard test items",
    "tqa-ab": "TruthfulQA A/B (far)", "tqa-mc1": "TruthfulQA MC1 (far)",
}
MODEL_LABELS = {"leave-topic-out": "trained without the held-out topics", "easy-to-hard": "trained on the easy train items",
                "main": "the main run's model"}
GAP_LABELS = {"topic": "in-distribution minus held-out topics", "difficulty": "easy minus hard test items"}
SIGNED = "+.3f"


def _setup(plan: Plan, study: GeneralisationStudy) -> None:
    """What each part trained on and read, from the section's own records."""
    topics = study.leave_topic_out or {}
    if topics:
        folds = "; ".join(f"{', '.join(f.get('holdout') or [])} ({fmt(f.get('ood_items'))} test items; trained on "
                          f"{fmt(f.get('train_items'))} train items of the other topics)" for f in topics.get("folds") or [])
        how = f"a seeded choice (holdout_seed {fmt(topics.get('holdout_seed'))})" if topics.get("auto") else "named in the config"
        plan.para(("b", "Leave-topic-out:"), f" held out {folds}, {how}; each variant trained again from the base weights without them, "
                  f"read on {fmt(topics.get('id_items'))} test items of the training topics and {fmt(topics.get('ood_items'))} of the held-out ones.")
    easy = study.easy_to_hard or {}
    if easy:
        plan.para(("b", "Easy-to-hard:"), f" trained on the {fmt(easy.get('easy_items'))} of {fmt(easy.get('train_items'))} train items the untuned "
                  f"model is surest of (easy_fraction {fmt(easy.get('easy_fraction'), 'g')}, margin >= {fmt(easy.get('margin_cut'))} nats), read on the "
                  f"{fmt(easy.get('hard_items'))} of {fmt(easy.get('test_items'))} test items it is least sure of (hard_fraction "
                  f"{fmt(easy.get('hard_fraction'), 'g')}, margin <= {fmt(easy.get('hard_margin_cut'))}; untuned accuracy there "
                  f"{fmt(easy.get('untuned_hard'))}) and on the others.")
    far = study.far or {}
    skipped = "; ".join(f"{s.get('task')}: {s.get('reason')}" for s in far.get("skipped") or [])
    plan.para(("b", "Far target (TruthfulQA):"), " " + (f"the main run's {', '.join(far.get('tasks'))} records" if far.get("tasks") else "none")
              + (f"; skipped: {skipped}." if skipped else "."))


def _rows_table(study: GeneralisationStudy) -> Table:
    return Table(
        ["variant", "seed", "items", "model", "n", "untuned", "accuracy", "95% CI", "gain", "gain 95% CI (paired bootstrap)",
         "main model", "main model gain"],
        [[str(r.variant), fmt(r.seed), SET_LABELS.get(str(r.set), str(r.set)), MODEL_LABELS.get(str(r.model), str(r.model)), fmt(r.n),
          fmt(r.untuned), fmt(r.value), fmt_ci(r.ci_low, r.ci_high), fmt(r.gain, SIGNED) if r.gain is not None else "-",
          fmt_ci(r.gain_low, r.gain_high), fmt(r.reference), fmt(r.reference_gain, SIGNED) if r.reference_gain is not None else "-"]
         for r in study.rows or []],
    )


def _gaps_table(study: GeneralisationStudy) -> Table:
    return Table(
        ["variant", "seed", "gap", "near gain", "far gain", "gap (near - far)", "95% CI (stratified bootstrap)", "n near / far"],
        [[str(g.variant), fmt(g.seed), GAP_LABELS.get(str(g.kind), str(g.kind)), fmt(g.near_gain), fmt(g.far_gain), fmt(g.gap),
          fmt_ci(g.ci_low, g.ci_high), f"{fmt(g.near_n)} / {fmt(g.far_n)}"] for g in study.gaps or []],
    )


def section_generalisation(plan: Plan, section: dict[str, Any], results: ExperimentResults) -> None:
    """Out-of-distribution generalisation: setup, figure, per-set table, gaps, and the claim's verdict."""
    study = GeneralisationStudy.model_validate(section)
    rows = study.rows or []
    if not plan.section("Study: out-of-distribution generalisation", rows):
        return
    task = str(given(study.task, "?"))
    plan.para(
        "How much of what each variant learned carries over to facts it was not trained on: the gain over the untuned model "
        f"(per-item {task} correctness, variant minus untuned, on the same {given(study.split, 'test')} items) on the training topics, on "
        "topics held out of training, on the test items the untuned model is least sure of after training on the ones it is surest of, and "
        "on TruthfulQA. The main model column is the same variant and seed trained on the whole train split (every topic and item).",
    )
    _setup(plan, study)
    plan.figure("generalisation", f"{task}: gain over the untuned model per item set (95% CI; diamonds: the main model)",
                lambda path: plot_generalisation(rows, path, task, SET_LABELS))
    plan.add(_rows_table(study))
    if study.gaps:
        plan.para("The gap: the gain on the near items minus the gain on the far ones (different items, so each set is resampled on its own).")
        plan.add(_gaps_table(study))
    claim = next((c for c in results.claims or [] if c.id == "generalises-ood"), None) or Claim()
    if claim:
        plan.para(("b", "Claim"), " ", ("c", "generalises-ood"), f" ({given(study.candidate, '?')} vs {given(study.baseline, '?')} on the held-out "
                  f"topics): {given(claim.verdict, 'not tested')}, p = {fmt_p(claim.p_value)} (Holm-adjusted {fmt_p(claim.p_holm)}); "
                  "the evidence, the minimum detectable effect and the context rows are in the Claims section.")
