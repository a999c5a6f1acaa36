"""From stage outputs to ``results.json``: scores over seeds, paired tests, claims.

Scores: with one seed, a condition's metric is the task's own (value, CI, n). With several,
the value is the mean over seeds, ``per_seed`` lists them, and the interval spans the lowest
to the highest per-seed CI bound (a conservative envelope, not a CI of the mean).

Paired tests: McNemar on per-item correctness, item by item, for each seed (conditions that do
not depend on the seed, untuned and steered, are paired with every seed's tuned model). A tuned
condition whose seed is missing is never replaced by another seed's file: that row is
``status: not tested`` with the reason. Every tested row carries ``p_holm``, its Holm-Bonferroni
adjusted p over the whole table (an exploratory family, separate from the claims' family).

Claims: :mod:`reptune.pipeline.claims` (paired tests on per-item records, Holm-adjusted across
claims, degenerate conditions and missing seeds never support a claim, minimum detectable effects).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from reptune.evaluation.runner import EvalResults, compare_results, load_eval_results
from reptune.evaluation.statistics import holm_adjust, mcnemar_min_p, powerless
from reptune.evaluation.tasks.robustness import same_letter_rate
from reptune.pipeline.claims import CLAIMS, HEADLINE_TASK, SEED_FREE_KINDS, Runs, judge
from reptune.reporting.document import fmt
from reptune.reporting.schema import FORMAT, ExperimentResults

__all__ = ["CLAIMS", "HEADLINE_TASK", "aggregate_scores", "build_results", "findings", "judge_claims", "paired_tests", "seed_free_conditions"]


def _load(run_dir: Any, evals: dict[str, dict[str, Any]]) -> dict[str, dict[str, EvalResults]]:
    return {cond: {seed: load_eval_results(run_dir / out["results"]) for seed, out in by_seed.items()} for cond, by_seed in evals.items()}


def aggregate_scores(loaded: dict[str, dict[str, EvalResults]]) -> dict[str, dict[str, Any]]:
    """``{condition: {task: {"primary", "metrics": {name: {value, ci_low, ci_high, n, per_seed}}}}}``."""
    scores: dict[str, dict[str, Any]] = {}
    for cond, by_seed in loaded.items():
        seeds = sorted(by_seed)
        tasks = [t for t in by_seed[seeds[0]].tasks]
        scores[cond] = {}
        for task in tasks:
            results = [by_seed[s].tasks[task] for s in seeds if task in by_seed[s].tasks]
            metrics: dict[str, Any] = {}
            for name in results[0].metrics:
                if "/" in name:  # per-subject breakdowns stay in the eval files
                    continue
                values = [r.metrics[name] for r in results]
                per_seed = [v.get("value") for v in values]
                if len(values) == 1:
                    metrics[name] = {"value": per_seed[0], "ci_low": values[0].get("ci_low"), "ci_high": values[0].get("ci_high"), "n": values[0].get("n"), "per_seed": per_seed}
                else:
                    finite = [v for v in per_seed if v is not None]
                    lows = [v.get("ci_low") for v in values if v.get("ci_low") is not None]
                    highs = [v.get("ci_high") for v in values if v.get("ci_high") is not None]
                    metrics[name] = {
                        "value": sum(finite) / len(finite) if finite else None, "ci_low": min(lows) if lows else None,
                        "ci_high": max(highs) if highs else None, "n": values[0].get("n"), "per_seed": per_seed,
                    }
            scores[cond][task] = {"primary": results[0].primary, "metrics": metrics}
    return scores


COMPARISON_PAIRS = [
    ("untuned", "steer+"), ("untuned", "steer-"),
    ("steer+", "honesty"), ("steer+", "truth"), ("steer+", "pos"), ("truth", "honesty"),
    ("steer-", "dishonesty"), ("steer-", "lie"), ("steer-", "neg"), ("lie", "dishonesty"),
    ("untuned", "truth"), ("untuned", "lie"), ("untuned", "honesty"), ("untuned", "dishonesty"), ("untuned", "tune-out"),
    ("honesty", "honesty@counter"), ("truth", "truth@counter"), ("tune-out", "tune-out@counter"),
    ("lie", "lie@counter"), ("dishonesty", "dishonesty@counter"),
    ("truth@counter", "honesty@counter"), ("steer-", "honesty@counter"), ("steer-", "tune-out@counter"),
    ("lie@counter", "dishonesty@counter"),
    ("honesty", "honesty@counter-other"), ("truth", "truth@counter-other"), ("truth@counter-other", "honesty@counter-other"),
    ("honesty", "honesty@counter-random1"), ("truth", "truth@counter-random1"), ("truth@counter-random1", "truth@counter-other"),
]


def seed_free_conditions(conditions: Sequence[dict[str, Any]] | None) -> set[str] | None:
    """Ids of the conditions evaluated once for every seed (kinds untuned and steered); ``None``: the default set."""
    if not conditions:
        return None
    return {c["id"] for c in conditions if c.get("kind") in SEED_FREE_KINDS}


def _missing_rows(runs: Runs, a: str, b: str, seed: int) -> list[dict[str, Any]]:
    """``not tested`` rows, one per task the present side has (a seed's file is missing)."""
    reasons = [why for cond in (a, b) for why in [_missing_seed(runs, cond, seed)] if why]
    tasks: list[str] = []
    for cond in (a, b):
        for result in runs.loaded.get(cond, {}).values():
            tasks += [t for t in result.tasks if t not in tasks]
    return [{"task": task, "a": a, "b": b, "seed": seed, "n": None, "metric": None, "a_value": None, "b_value": None, "p_value": None,
             "method": None, "status": "not tested", "reason": "; ".join(reasons)} for task in tasks]


def _missing_seed(runs: Runs, cond: str, seed: int) -> str | None:
    if cond in runs.seed_free or str(seed) in runs.loaded.get(cond, {}):
        return None
    return f"seed {seed} of {cond} is missing (another seed's results are never reused)"


def paired_tests(loaded: dict[str, dict[str, EvalResults]], seeds: list[int], seed_free: Iterable[str] | None = None,
                 first_seed: Iterable[str] = (), alpha: float = 0.05) -> list[dict[str, Any]]:
    """McNemar rows for every pair in ``COMPARISON_PAIRS`` and seed, with Holm-adjusted p over the table.

    ``seed_free``: conditions evaluated once for all seeds (default untuned, steer+, steer-); any
    other condition must have this very seed, else the row is ``not tested``. ``first_seed``:
    conditions the config evaluates on the first seed only (compared on that seed alone). A row
    whose discordant items cannot give p below ``alpha`` (5 or fewer) gets no Holm p and leaves the
    table's family, as a claim's test does (:func:`reptune.pipeline.claims.judge`).
    """
    runs = Runs(loaded, seeds, seed_free)
    first_only = set(first_seed)
    rows = []
    for a, b in COMPARISON_PAIRS:
        if a not in loaded or b not in loaded:
            continue
        for seed in seeds[:1] if first_only & {a, b} else seeds:
            if _missing_seed(runs, a, seed) or _missing_seed(runs, b, seed):
                rows.extend(_missing_rows(runs, a, b, seed))
                continue
            ra = loaded[a].get(str(seed)) or next(iter(loaded[a].values()))  # only seed-free conditions get here without the seed
            rb = loaded[b].get(str(seed)) or next(iter(loaded[b].values()))
            for row in compare_results(ra, rb, seed=seed):
                if "mcnemar" not in row:
                    continue
                rows.append({
                    "task": row["task"], "a": a, "b": b, "seed": seed, "n": row["n"], "metric": row["metric"],
                    "a_value": row["a"], "b_value": row["b"], "p_value": row["mcnemar"]["pvalue"], "method": row["mcnemar"]["method"],
                    "status": "tested", "discordant": row["mcnemar"]["b"] + row["mcnemar"]["c"],
                })
    for row in rows:
        if row["p_value"] is not None and powerless(mcnemar_min_p(row["discordant"]), alpha):
            row["reason"] = f"{row['discordant']} discordant items cannot give p below {alpha:g}: left out of the Holm column"
    tested = [row for row in rows if row["p_value"] is not None and not row.get("reason")]
    for row, adjusted in zip(tested, holm_adjust([row["p_value"] for row in tested])):
        row["p_holm"] = adjusted
    return rows


def _value(scores: dict[str, Any], cond: str, task: str, metric: str | None = None) -> float | None:
    entry = scores.get(cond, {}).get(task)
    if entry is None:
        return None
    metric = metric or entry["primary"]
    return entry["metrics"].get(metric, {}).get("value")


def _p(tests: list[dict[str, Any]], seed_free: bool = False) -> str:
    """The tests' p-values, one per seed; once for a ``seed_free`` comparison (steered vs untuned:
    the same test, repeated for each seed)."""
    tested = [t for t in tests if t.get("p_value") is not None]
    return ", ".join(f"p={t['p_value']:.3g}" for t in (tested[:1] if seed_free else tested)) or "no test"


def judge_claims(scores: dict[str, Any], comparisons: list[dict[str, Any]], thresholds: Any, *,
                 loaded: dict[str, dict[str, EvalResults]] | None = None, seeds: Sequence[int] | None = None,
                 conditions: Sequence[dict[str, Any]] | None = None, gate: dict[str, Any] | None = None,
                 headline_task: str = HEADLINE_TASK, counter_judge: str = "training",
                 extra_specs: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """The paper's claims, decided by :func:`reptune.pipeline.claims.judge` on per-item results.

    ``comparisons`` is kept for the old signature (the claims need the per-item ``loaded`` results;
    without them every claim is ``not tested``). ``gate``: the learnability gate
    ``{passed, reason, truth_move, lie_move}``; when given and not passed every claim is
    ``not tested`` with its reason (its paired tests and power still shown). ``headline_task``:
    e.g. ``facts-twin``.
    """
    if loaded is None and gate is not None and not gate.get("passed"):
        return judge({}, scores, thresholds, gate=gate)
    if loaded is None:
        reason = "the per-item evaluation results were not given to the claims judge"
        return [{"id": cid, "claim": text, "verdict": "not tested", "evidence": reason + ".", "reason": reason, "short_reason": reason, "p_value": None,
                 "p_holm": None, "method": None, "mde": None, "tests": [], "degenerate": []} for cid, text in CLAIMS.items()]
    return judge(loaded, scores, thresholds, seeds=seeds, seed_free=seed_free_conditions(conditions), gate=gate, headline_task=headline_task,
                 counter_judge=counter_judge, extra_specs=extra_specs)


def _letter_share(result: EvalResults | None, task: str) -> float | None:
    """Share of the most common answer letter among parsed answers (1.0 = always the same)."""
    if result is None or task not in result.tasks:
        return None
    return same_letter_rate(result.tasks[task].records)


def findings(loaded: dict[str, dict[str, EvalResults]], scores: dict[str, Any], comparisons: list[dict[str, Any]],
             representation: list[dict[str, Any]], sweep: dict[str, Any], conditions: list[dict[str, Any]], alpha: float,
             *, headline_task: str = HEADLINE_TASK) -> list[str]:
    """Plain statements of what moved and what did not: behaviour beside representation."""
    out: list[str] = []
    task = headline_task
    first = {cond: next(iter(by_seed.values())) for cond, by_seed in loaded.items()}
    share = _letter_share(first.get("untuned"), task)
    base = _value(scores, "untuned", task)
    if share is not None and base is not None:
        out.append(
            f"Untuned, the model answers the same letter on {share:.0%} of the {task} test items (accuracy {fmt(base)}); "
            + ("its prompted answers carry no truth signal, so any change below comes from steering or tuning." if share > 0.9 else "")
        )
    rows = sweep.get("rows") or []
    if rows:
        degenerate = [r["multiplier"] for r in rows if r.get("degenerate")]
        values = [r["value"] for r in rows]
        # rows come in sweep order (the unsteered cell first, then layer by layer), not sorted
        multipliers = ", ".join(f"{m:g}" for m in sorted({float(r["multiplier"]) for r in rows}))
        layers = ", ".join(str(layer) for layer in sorted({r["layer"] for r in rows if r.get("layer") is not None}))
        out.append(
            f"Steering sweep on the validation split (layers {layers}; chosen: layer {sweep.get('layer')}): accuracy "
            f"{min(values):.3f}-{max(values):.3f} over multipliers {multipliers}; "
            + (f"{len(degenerate)} of {len(rows)} cells degenerate." if degenerate else "no cell degenerate.")
        )
    rep = {row["condition"]: row for row in representation}
    base_cos = rep.get("untuned", {}).get("mean_cosine")
    for cond in conditions:
        cid = cond["id"]
        if cid == "untuned" or _value(scores, cid, task) is None:
            continue
        reference = cond["variant"] if cond["kind"] == "counter" else "untuned"
        tests = [t for t in comparisons if t["a"] == reference and t["b"] == cid and t["task"] == task and t.get("p_value") is not None]
        value, ref_value = _value(scores, cid, task), _value(scores, reference, task)
        moved = bool(tests) and all(t["p_value"] < alpha for t in tests)
        letter = _letter_share(first.get(cid), task)
        text = f"{cond['label']}: {task} accuracy {fmt(value)} vs {reference} {fmt(ref_value)}"
        seed_free = cond["kind"] in SEED_FREE_KINDS and reference == "untuned"
        text += f" ({'moved' if moved else 'no significant change'}, McNemar {_p(tests, seed_free)})" if tests else ""
        if letter is not None:
            text += f"; same letter on {letter:.0%}"
        if cid in rep and rep[cid].get("mean_cosine") is not None:
            text += f"; representation: cosine to v at layer {rep[cid]['layer']} {rep[cid]['mean_cosine']:.3f} (untuned {fmt(base_cos)})"
        out.append(text + ".")
    return out


CLAIMS_RULE = (
    "Each claim is decided by a paired test on the same items and seed: McNemar (tuning-beats-steering, generalises-to-truthfulqa), "
    "a sign-flip test on the per-item difference in differences (resists-counter-steering), and non-inferiority (small-capability-cost: "
    "the one-sided upper bound of the MMLU drop within its margin and of the perplexity ratio within its limit). supported: the estimate "
    "goes the claimed way on every seed and every Holm-Bonferroni adjusted p (family: the tested claims x seeds) is below {alpha:g}; "
    "not supported: it goes the other way; inconclusive: otherwise; not tested: a condition, task or seed is missing, a compared "
    "condition is degenerate (the same letter, option text or twin on more than 90% of items), the learnability gate failed, or "
    "the test cannot give p below {alpha:g} at its n (a sign-flip test on 4 items, McNemar with 4 discordant items: p = 0.125 at "
    "best; such tests have no power and leave the Holm family). The minimum detectable effect is given at each claim's n, alpha and power 0.8."
)


def _counter_section(loaded: dict[str, dict[str, EvalResults]], counter_vectors: dict[str, Any], judge_on: str, task: str) -> dict[str, Any]:
    """The counter-vectors stage's record plus every variant's drop under each counter-steering vector."""
    from reptune.pipeline.counter import counter_rows

    vectors = ["training", *counter_vectors.get("vectors", {})]
    return {**counter_vectors, "judge_on": judge_on, "task": task, "rows": counter_rows(loaded, task, vectors)}


def _headline_metric(scores: dict[str, Any], task: str) -> str:
    for by_task in scores.values():
        entry = by_task.get(task)
        if entry:
            return "accuracy" if "accuracy" in entry["metrics"] else str(entry["primary"])
    return "accuracy"


def _model_info(config: Any, run_dir: Path, vector_file: str, precision: str, precision_reason: str | None) -> dict[str, Any]:
    """The model entry: the config's model, overridden by what the vector file's metadata says."""
    from reptune.precision import machine_info

    model = {"model_id": config.model or "embedded SmolLM2-135M-Instruct", "revision": config.revision,
             "precision": precision, "precision_reason": precision_reason, "machine": machine_info()}
    try:
        meta = json.loads((run_dir / vector_file).with_suffix(".json").read_text(encoding="utf-8"))
        model.update({"model_id": meta.get("model_id", model["model_id"]), "revision": meta.get("revision"), "num_layers": meta.get("num_layers"), "hidden_size": meta.get("hidden_size")})
    except (OSError, ValueError):
        pass
    return model


def _headline_rows(scores: dict[str, Any], conditions: list[dict[str, Any]], task: str) -> list[dict[str, Any]]:
    rows = []
    for cond in conditions:
        entry = scores.get(cond["id"], {}).get(task)
        if entry:
            metric = entry["metrics"].get("accuracy") or entry["metrics"][entry["primary"]]
            rows.append({"condition": cond["id"], "label": cond["label"], "value": metric["value"], "ci_low": metric["ci_low"], "ci_high": metric["ci_high"], "n": metric["n"]})
    return rows


def build_results(config: Any, run_dir: Path, *, command: str | None, precision: str, precision_reason: str | None, skipped: list[dict[str, str]],
                  data: dict[str, Any], vector_info: dict[str, Any], sweep: dict[str, Any], conditions: list[dict[str, Any]],
                  evals: dict[str, dict[str, Any]], training: dict[str, Any], robustness: dict[str, Any], projection: dict[str, Any],
                  representation: list[dict[str, Any]], tasks: list[str], headline_task: str = HEADLINE_TASK,
                  gate: dict[str, Any] | None = None, knowledge: dict[str, Any] | None = None,
                  counter_vectors: dict[str, Any] | None = None, studies: dict[str, dict[str, Any]] | None = None) -> ExperimentResults:
    """Assemble ``results.json`` as the :class:`~reptune.reporting.schema.ExperimentResults` it is read as.

    Args:
        config: the run's :class:`~reptune.pipeline.config.ExperimentConfig`; run_dir: its folder
            (the evaluation files and the vector's metadata are read from there).
        command, precision, precision_reason, skipped: how the run was started, the precision it
            ran at and why, and what it skipped (``[{what, reason}]``).
        data, vector_info, sweep, training, robustness, projection: the stages' outputs.
        conditions, evals: the evaluated conditions and ``{condition: {seed: {"results": file}}}``.
        representation: one row per condition (gains the headline behaviour of its condition).
        tasks: the evaluated tasks; headline_task: the task of the headline table and claims
            (``facts-ab``, or e.g. ``facts-twin``).
        gate: the learnability gate (recorded; not passed -> no claim tested); knowledge: what the
            untuned model knows.
        counter_vectors: the counter-vectors stage's output (the other-data vector and the random
            floor; recorded with the counter-steering section).
        studies: ``{name: section}`` of the run's studies (:mod:`reptune.pipeline.studies`); each
            section's ``claims`` (claim specs) join the claims family, the rest is recorded as it is.
    """
    from reptune import __version__

    loaded = _load(run_dir, evals)
    scores = aggregate_scores(loaded)
    first_seed = [c["id"] for c in conditions if c.get("first_seed")]
    comparisons = paired_tests(loaded, config.seeds, seed_free_conditions(conditions), first_seed, alpha=config.claims.alpha)
    studies = dict(studies or {})
    specs = [spec for section in studies.values() for spec in section.pop("claims", [])]
    for row in representation:  # the representation rows gain the headline behaviour of their condition
        for metric in ("accuracy", "lie_rate", "mean_margin"):
            row[metric] = _value(scores, row["condition"], headline_task, metric)
    seed_note = config.seed_note
    if seed_note is None and len(config.seeds) == 1:
        seed_note = "intervals cover item sampling only, not training randomness"
    return ExperimentResults(
        format=FORMAT, name=config.name, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), reptune_version=__version__,
        command=command, model=_model_info(config, run_dir, vector_info["file"], precision, precision_reason),
        config=config.model_dump(mode="json"), config_yaml=config.to_yaml(), seeds=list(config.seeds), seed_note=seed_note,
        data={"statements": config.data.statements, "origin": data["origin"], "splits": data["splits"], "files": data["files"],
              "twins": data.get("twins", False), "pairs": data.get("pairs")},
        tasks=tasks, skipped=list(skipped),
        vector={k: vector_info.get(k) for k in ("file", "layer", "method", "positions", "scan", "scan_png", "rule", "pairs")},
        sweep=sweep, training=training, conditions=conditions, scores=scores,
        eval_files={cond: {seed: out["results"] for seed, out in by_seed.items()} for cond, by_seed in evals.items()},
        comparisons=comparisons, robustness=robustness,
        projection={"layer_note": "cosine between each token's residual stream and the vector's direction at that layer", "by_condition": projection} if projection else {},
        representation=representation,
        claims=judge_claims(scores, comparisons, config.claims, loaded=loaded, seeds=config.seeds, conditions=conditions, gate=gate,
                            headline_task=headline_task, counter_judge=config.counter.judge_on if counter_vectors else "training",
                            extra_specs=specs),
        counter=_counter_section(loaded, counter_vectors, config.counter.judge_on, headline_task) if counter_vectors else None,
        studies=studies or None,
        claims_rule=CLAIMS_RULE.format(alpha=config.claims.alpha),
        **({"gate": gate} if gate is not None else {}),
        findings=findings(loaded, scores, comparisons, representation, sweep, conditions, config.claims.alpha, headline_task=headline_task),
        headline={"task": headline_task, "metric": _headline_metric(scores, headline_task), "rows": _headline_rows(scores, conditions, headline_task)},
        learnability=gate, knowledge=knowledge,
    )
