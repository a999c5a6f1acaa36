"""From stage outputs to ``results.json``: scores over seeds, paired tests, claims.

Scores: with one seed, a condition's metric is the task's own (value, CI, n). With several,
the value is the mean over seeds, ``per_seed`` lists them, and the interval spans the lowest
to the highest per-seed CI bound (a conservative envelope, not a CI of the mean).

Paired tests: McNemar on per-item correctness, item by item, for each seed (conditions that do
not depend on the seed, untuned and steered, are paired with every seed's tuned model).

Claims (the Representation Tuning paper's), each judged from this run's numbers at ``alpha``:
``supported`` when the difference goes the claimed way with p < alpha, ``not supported`` when it
does not go that way, ``inconclusive`` when it does but p >= alpha, ``not tested`` when a
needed condition or task was not run. With several seeds every seed must agree.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from reptune.evaluation.robustness import same_letter_rate
from reptune.evaluation.runner import EvalResults, compare_results, load_results

HEADLINE_TASK = "facts-ab"

CLAIMS = {
    "tuning-beats-steering": "Representation tuning moves behaviour more than online steering with the same vector (honesty-tuned vs steered +v on held-out facts).",
    "generalises-to-truthfulqa": "Representation-tuned models generalise better than token-only tuning to TruthfulQA (honesty vs truth on tqa-ab).",
    "resists-counter-steering": "Representation-tuned models resist steering in the opposite direction better than token-only tuned ones (honesty vs truth, both counter-steered, on held-out facts).",
    "small-capability-cost": "Representation tuning costs little general capability (perplexity and MMLU of the honesty-tuned model vs untuned).",
}


def _load(run_dir: Any, evals: dict[str, dict[str, Any]]) -> dict[str, dict[str, EvalResults]]:
    return {cond: {seed: load_results(run_dir / out["results"]) for seed, out in by_seed.items()} for cond, by_seed in evals.items()}


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
    ("steer+", "honesty"), ("steer+", "truth"), ("truth", "honesty"),
    ("steer-", "dishonesty"), ("steer-", "lie"), ("lie", "dishonesty"),
    ("untuned", "truth"), ("untuned", "lie"), ("untuned", "honesty"), ("untuned", "dishonesty"), ("untuned", "tune-out"),
    ("honesty", "honesty@counter"), ("truth", "truth@counter"), ("tune-out", "tune-out@counter"),
    ("lie", "lie@counter"), ("dishonesty", "dishonesty@counter"),
    ("truth@counter", "honesty@counter"), ("steer-", "honesty@counter"), ("steer-", "tune-out@counter"),
    ("lie@counter", "dishonesty@counter"),
]


def paired_tests(loaded: dict[str, dict[str, EvalResults]], seeds: list[int]) -> list[dict[str, Any]]:
    rows = []
    for a, b in COMPARISON_PAIRS:
        if a not in loaded or b not in loaded:
            continue
        for seed in seeds:
            ra = loaded[a].get(str(seed)) or next(iter(loaded[a].values()))
            rb = loaded[b].get(str(seed)) or next(iter(loaded[b].values()))
            for row in compare_results(ra, rb, seed=seed):
                if "mcnemar" not in row:
                    continue
                rows.append({
                    "task": row["task"], "a": a, "b": b, "seed": seed, "n": row["n"], "metric": row["metric"],
                    "a_value": row["a"], "b_value": row["b"], "p_value": row["mcnemar"]["pvalue"], "method": row["mcnemar"]["method"],
                })
    return rows


def _value(scores: dict[str, Any], cond: str, task: str, metric: str | None = None) -> float | None:
    entry = scores.get(cond, {}).get(task)
    if entry is None:
        return None
    metric = metric or entry["primary"]
    return entry["metrics"].get(metric, {}).get("value")


def _tests(comparisons: list[dict[str, Any]], a: str, b: str, task: str) -> list[dict[str, Any]]:
    return [row for row in comparisons if row["a"] == a and row["b"] == b and row["task"] == task]


def _directional(tests: list[dict[str, Any]], alpha: float) -> str:
    """Verdict for 'b is better than a' from per-seed paired tests."""
    if not tests:
        return "not tested"
    if all(t["b_value"] > t["a_value"] and t["p_value"] < alpha for t in tests):
        return "supported"
    if any(t["b_value"] <= t["a_value"] for t in tests):
        return "not supported"
    return "inconclusive"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _p(tests: list[dict[str, Any]]) -> str:
    return ", ".join(f"p={t['p_value']:.3g}" for t in tests) or "no test"


def judge_claims(scores: dict[str, Any], comparisons: list[dict[str, Any]], thresholds: Any) -> list[dict[str, Any]]:
    alpha = thresholds.alpha
    claims = []

    tests = _tests(comparisons, "steer+", "honesty", HEADLINE_TASK)
    verdict = _directional(tests, alpha)
    side = _tests(comparisons, "steer-", "dishonesty", HEADLINE_TASK)
    evidence = (
        f"{HEADLINE_TASK} accuracy: honesty-tuned {_fmt(_value(scores, 'honesty', HEADLINE_TASK))} vs steered +v "
        f"{_fmt(_value(scores, 'steer+', HEADLINE_TASK))} (McNemar {_p(tests)}); lie rate: dishonesty-tuned "
        f"{_fmt(_value(scores, 'dishonesty', HEADLINE_TASK, 'lie_rate'))} vs steered -v {_fmt(_value(scores, 'steer-', HEADLINE_TASK, 'lie_rate'))}"
        + (f" (accuracy McNemar {_p(side)})" if side else "")
        + f"; untuned {_fmt(_value(scores, 'untuned', HEADLINE_TASK))}."
    )
    claims.append({"id": "tuning-beats-steering", "claim": CLAIMS["tuning-beats-steering"], "verdict": verdict, "evidence": evidence})

    tests = _tests(comparisons, "truth", "honesty", "tqa-ab")
    verdict = _directional(tests, alpha)
    extra = "; ".join(
        f"{task} honesty {_fmt(_value(scores, 'honesty', task))} vs truth {_fmt(_value(scores, 'truth', task))}"
        for task in ("tqa-mc1", "tqa-mc2") if _value(scores, "honesty", task) is not None
    )
    evidence = (
        f"tqa-ab accuracy: honesty {_fmt(_value(scores, 'honesty', 'tqa-ab'))} vs truth {_fmt(_value(scores, 'truth', 'tqa-ab'))} "
        f"(McNemar {_p(tests)}); untuned {_fmt(_value(scores, 'untuned', 'tqa-ab'))}" + (f"; {extra}" if extra else "") + "."
        if tests else "TruthfulQA (tqa-ab) was not evaluated, or the honesty/truth variants were not trained."
    )
    claims.append({"id": "generalises-to-truthfulqa", "claim": CLAIMS["generalises-to-truthfulqa"], "verdict": verdict, "evidence": evidence})

    tests = _tests(comparisons, "truth@counter", "honesty@counter", HEADLINE_TASK)
    verdict = _directional(tests, alpha)
    drops = []
    for cond in ("honesty", "truth"):
        before, after = _value(scores, cond, HEADLINE_TASK), _value(scores, f"{cond}@counter", HEADLINE_TASK)
        if before is not None and after is not None:
            drops.append(f"{cond} {_fmt(before)} -> {_fmt(after)}")
    evidence = (
        f"{HEADLINE_TASK} accuracy under counter-steering: honesty {_fmt(_value(scores, 'honesty@counter', HEADLINE_TASK))} vs truth "
        f"{_fmt(_value(scores, 'truth@counter', HEADLINE_TASK))} (McNemar {_p(tests)}); untuned steered -v {_fmt(_value(scores, 'steer-', HEADLINE_TASK))}; "
        f"without -> with counter-steering: {'; '.join(drops) or '-'}."
        if tests else "The honesty and truth variants were not both evaluated under counter-steering."
    )
    claims.append({"id": "resists-counter-steering", "claim": CLAIMS["resists-counter-steering"], "verdict": verdict, "evidence": evidence})

    parts, checks = [], []
    ppl_base, ppl_tuned = _value(scores, "untuned", "perplexity"), _value(scores, "honesty", "perplexity")
    if ppl_base and ppl_tuned:
        ratio = ppl_tuned / ppl_base
        checks.append(ratio <= thresholds.max_perplexity_ratio)
        parts.append(f"WikiText-2 perplexity {_fmt(ppl_base)} -> {_fmt(ppl_tuned)} (ratio {ratio:.3f}, limit {thresholds.max_perplexity_ratio:.2f})")
    mmlu_base, mmlu_tuned = _value(scores, "untuned", "mmlu"), _value(scores, "honesty", "mmlu")
    if mmlu_base is not None and mmlu_tuned is not None:
        checks.append(mmlu_base - mmlu_tuned <= thresholds.max_mmlu_drop)
        parts.append(f"MMLU accuracy {_fmt(mmlu_base)} -> {_fmt(mmlu_tuned)} (drop limit {thresholds.max_mmlu_drop:.3f})")
    kl = _value(scores, "honesty", "kl")
    if kl is not None:
        parts.append(f"KL to the base {_fmt(kl)} nats/token")
    verdict = "not tested" if not checks else ("supported" if all(checks) else "not supported")
    evidence = "; ".join(parts) + "." if parts else "Neither perplexity nor MMLU was evaluated (their data was not found)."
    claims.append({"id": "small-capability-cost", "claim": CLAIMS["small-capability-cost"], "verdict": verdict, "evidence": evidence})
    return claims


def _letter_share(result: EvalResults | None, task: str) -> float | None:
    """Share of the most common answer letter among parsed answers (1.0 = always the same)."""
    if result is None or task not in result.tasks:
        return None
    return same_letter_rate(result.tasks[task].records)


def findings(loaded: dict[str, dict[str, EvalResults]], scores: dict[str, Any], comparisons: list[dict[str, Any]],
             representation: list[dict[str, Any]], sweep: dict[str, Any], conditions: list[dict[str, Any]], alpha: float) -> list[str]:
    """Plain statements of what moved and what did not: behaviour beside representation."""
    out: list[str] = []
    task = HEADLINE_TASK
    first = {cond: next(iter(by_seed.values())) for cond, by_seed in loaded.items()}
    share = _letter_share(first.get("untuned"), task)
    base = _value(scores, "untuned", task)
    if share is not None and base is not None:
        out.append(
            f"Untuned, the model answers the same letter on {share:.0%} of the {task} test items (accuracy {_fmt(base)}); "
            + ("its prompted answers carry no truth signal, so any change below comes from steering or tuning." if share > 0.9 else "")
        )
    rows = sweep.get("rows") or []
    if rows:
        degenerate = [r["multiplier"] for r in rows if r.get("degenerate")]
        values = [r["value"] for r in rows]
        out.append(
            f"Steering sweep at layer {sweep.get('layer')} on the validation split: accuracy {min(values):.3f}-{max(values):.3f} over "
            f"multipliers {rows[0]['multiplier']:g}..{rows[-1]['multiplier']:g}; "
            + (f"{len(degenerate)} of {len(rows)} cells degenerate." if degenerate else "no cell degenerate.")
        )
    rep = {row["condition"]: row for row in representation}
    base_cos = rep.get("untuned", {}).get("mean_cosine")
    for cond in conditions:
        cid = cond["id"]
        if cid == "untuned" or _value(scores, cid, task) is None:
            continue
        reference = cond["variant"] if cond["kind"] == "counter" else "untuned"
        tests = [t for t in comparisons if t["a"] == reference and t["b"] == cid and t["task"] == task]
        value, ref_value = _value(scores, cid, task), _value(scores, reference, task)
        moved = bool(tests) and all(t["p_value"] < alpha for t in tests)
        letter = _letter_share(first.get(cid), task)
        text = f"{cond['label']}: {task} accuracy {_fmt(value)} vs {reference} {_fmt(ref_value)}"
        text += f" ({'moved' if moved else 'no significant change'}, McNemar {_p(tests)})" if tests else ""
        if letter is not None:
            text += f"; same letter on {letter:.0%}"
        if cid in rep and rep[cid].get("mean_cosine") is not None:
            text += f"; representation: cosine to v at layer {rep[cid]['layer']} {rep[cid]['mean_cosine']:.3f} (untuned {_fmt(base_cos)})"
        out.append(text + ".")
    return out


def build_results(exp: Any, *, data: dict[str, Any], vector_info: dict[str, Any], sweep: dict[str, Any], conditions: list[dict[str, Any]],
                  evals: dict[str, dict[str, Any]], training: dict[str, Any], robustness: dict[str, Any], projection: dict[str, Any],
                  representation: list[dict[str, Any]], tasks: list[str]) -> dict[str, Any]:
    """Assemble ``results.json`` (schema ``reptune-experiment/1``, see reporting.experiment)."""
    from reptune import __version__

    config = exp.config
    loaded = _load(exp.run_dir, evals)
    scores = aggregate_scores(loaded)
    comparisons = paired_tests(loaded, config.seeds)
    # the representation rows gain the facts-ab margin of their condition
    for row in representation:
        row["accuracy"] = _value(scores, row["condition"], HEADLINE_TASK, "accuracy")
        row["lie_rate"] = _value(scores, row["condition"], HEADLINE_TASK, "lie_rate")
        row["mean_margin"] = _value(scores, row["condition"], HEADLINE_TASK, "mean_margin")
    model = {"model_id": config.model or "embedded SmolLM2-135M-Instruct", "revision": config.revision, "precision": config.precision}
    try:
        import json

        meta = json.loads((exp.run_dir / vector_info["file"]).with_suffix(".json").read_text(encoding="utf-8"))
        model.update({"model_id": meta.get("model_id", model["model_id"]), "revision": meta.get("revision"), "num_layers": meta.get("num_layers"), "hidden_size": meta.get("hidden_size")})
    except (OSError, ValueError):
        pass
    headline_rows = []
    for cond in conditions:
        entry = scores.get(cond["id"], {}).get(HEADLINE_TASK)
        if entry:
            metric = entry["metrics"]["accuracy"]
            headline_rows.append({"condition": cond["id"], "label": cond["label"], "value": metric["value"], "ci_low": metric["ci_low"], "ci_high": metric["ci_high"], "n": metric["n"]})
    seed_note = config.seed_note
    if seed_note is None and len(config.seeds) == 1:
        seed_note = "intervals cover item sampling only, not training randomness"
    return {
        "format": "reptune-experiment/1",
        "name": config.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "reptune_version": __version__,
        "command": exp.command,
        "model": model,
        "config": config.model_dump(mode="json"),
        "config_yaml": config.to_yaml(),
        "seeds": list(config.seeds),
        "seed_note": seed_note,
        "data": {"statements": config.data.statements, "origin": data["origin"], "splits": data["splits"], "files": data["files"]},
        "tasks": tasks,
        "skipped": list(exp.skipped),
        "vector": {k: vector_info.get(k) for k in ("file", "layer", "method", "positions", "scan", "scan_png", "rule", "pairs")},
        "sweep": sweep,
        "training": training,
        "conditions": conditions,
        "scores": scores,
        "eval_files": {cond: {seed: out["results"] for seed, out in by_seed.items()} for cond, by_seed in evals.items()},
        "comparisons": comparisons,
        "robustness": robustness,
        "projection": {"layer_note": "cosine between each token's residual stream and the vector's direction at that layer", "by_condition": projection} if projection else {},
        "representation": representation,
        "claims": judge_claims(scores, comparisons, config.claims),
        "findings": findings(loaded, scores, comparisons, representation, sweep, conditions, config.claims.alpha),
        "headline": {"task": HEADLINE_TASK, "metric": "accuracy", "rows": headline_rows},
    }
