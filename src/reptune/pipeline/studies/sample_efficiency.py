"""Sample efficiency: does representation tuning reach the same accuracy with fewer labels?

Two of the experiment's variants (config ``sample_efficiency.variants``: the token-only baseline
first, ``truth``; the representation-tuned one second, ``honesty`` = token loss + representation
loss, so the difference is what the vector adds) are trained from the base weights on nested
subsets of the train split of n items each (``sizes``), for every study seed, and evaluated on
the same held-out items of the headline task (test split).

* **Items** are training items as the run trains them: twins when ``host.item_kind`` is ``twin``
  (one item = a true/false pair, label-balanced by construction), else statements as A/B
  questions. ``all`` is the whole train split.
* **Nested subsets**: per seed one seeded order of the items, the first n taken for every n, so
  the 32 items contain the 16. Twins are dealt topic by topic in proportion (every prefix holds
  each topic's share to +-1 pair, as the run's own split); statements are dealt in blocks of four,
  true, false, false, true, so every even prefix is exactly label-balanced and, since A/B option
  order alternates by position, every multiple of 4 is also balanced in correct letters.
* **Training**: ``train:se-<n>:<variant>:s<seed>``, on the subset's CSV (written in
  ``stages/se-subsets-s<seed>/``). ``budget: steps`` (default) gives every n the variant's own
  steps (equal updates: only the number of labels differs); ``epochs`` scales the steps with n.
  The trainer's batch never exceeds the items it trains on (n minus its 10% validation slice).
* **n = all** reuses the main run's training and evaluation of that variant and seed (same
  items, same steps); it trains (main stage name) and evaluates only a seed the main run lacks.
* **Claim** ``sample-efficient``, per seed: per held-out item, the representation-minus-baseline
  correctness difference averaged over the sizes below ``all``; its mean with a paired bootstrap
  CI, tested by the paired sign-flip test, with the MDE at the run's n. Degenerate conditions
  (one twin / letter / option on > 90% of items) are reported and block the claim.
* **Target**: the smallest n at which each variant's mean accuracy over seeds reaches ``target``
  (``auto``: the baseline's accuracy at ``all``, else at the largest size, minus ``tolerance``).
"""

from __future__ import annotations

import csv
import gc
import io
import math
import random
from pathlib import Path
from typing import Any

import numpy as np

from reptune._io import write_text_atomic
from reptune.data.pairs import Statement, load_statements_csv
from reptune.errors import ReptuneError
from reptune.evaluation.statistics import bootstrap_ci, mean_mde, sign_flip_min_p, sign_flip_test, wilson_interval
from reptune.pipeline.claims import ClaimSettings, _floored_sd, claim_spec, degeneracy, new_problems
from reptune.pipeline.studies.base import StudyHost

NAME = "sample_efficiency"
CLAIM_ID = "sample-efficient"
CLAIM = ("Representation tuning reaches the same accuracy with fewer labels: trained on the same n labelled items (each size "
         "below the whole train split), {other} is more accurate on held-out items than {base}.")
CI_RULE = ("mean over seeds; the interval spans the lowest to the highest per-seed 95% Wilson interval (a conservative envelope "
           "of item sampling, not a CI of the mean over seeds); dots are the seeds")
METHOD = "paired sign-flip test on the per-item accuracy difference averaged over the sizes below all"


def enabled(config: Any) -> bool:
    return bool(config.sample_efficiency.enabled)


# ----------------------------------------------------------------------------- the items


def train_units(host: StudyHost) -> list[list[Statement]]:
    """The train split as the run trains it: one entry per training item (a twin's two statements, or one statement)."""
    statements = load_statements_csv(host.split_path("train"))
    if host.item_kind != "twin":
        return [[s] for s in statements]
    pairs: dict[str, list[Statement]] = {}
    for statement in statements:
        pairs.setdefault(str(statement.pair), []).append(statement)
    return list(pairs.values())


def nested_order(units: list[list[Statement]], twins: bool, seed: int) -> list[list[Statement]]:
    """One seeded order of the training items; the first n of it is the size-n subset, for every n.

    Twins: shuffled within each topic, then dealt in proportion (by a pair's fractional place in
    its topic), so every prefix holds each topic's share to +-1 pair. Statements: each label
    shuffled, dealt in blocks ``true, false, false, true`` (every even prefix has as many true as
    false statements; with A/B options alternating by position every block of four holds two
    correct A and two correct B); once a label runs out, the rest of the other follows.
    """
    rng = random.Random(seed)
    if twins:
        by_topic: dict[str, list[list[Statement]]] = {}
        for unit in units:
            by_topic.setdefault(unit[0].topic or "", []).append(unit)
        ranked: list[tuple[float, str, int, list[Statement]]] = []
        for topic in sorted(by_topic):
            group = by_topic[topic]
            rng.shuffle(group)
            ranked += [((i + 0.5) / len(group), topic, i, unit) for i, unit in enumerate(group)]
        return [unit for *_, unit in sorted(ranked, key=lambda r: r[:3])]
    trues = [u for u in units if u[0].label == 1]
    falses = [u for u in units if u[0].label != 1]
    rng.shuffle(trues)
    rng.shuffle(falses)
    order: list[list[Statement]] = []
    while trues and falses:
        block = [trues.pop(0), falses.pop(0)]
        if trues and falses:
            block += [falses.pop(0), trues.pop(0)]
        order += block
    return order + trues + falses


def write_subset(path: Path, units: list[list[Statement]]) -> None:
    """A ``statement,label,topic[,pair]`` CSV of the items, in order (what the trainer reads)."""
    statements = [s for unit in units for s in unit]
    with_pairs = all(s.pair is not None for s in statements)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["statement", "label", "topic"] + (["pair"] if with_pairs else []))
    for s in statements:
        writer.writerow([s.text, s.label, s.topic or ""] + ([s.pair] if with_pairs else []))
    write_text_atomic(path, buffer.getvalue())


def _what(host: StudyHost) -> str:
    return "twins" if host.item_kind == "twin" else "statements"


def _main_limit(host: StudyHost) -> int | None:
    """Items the main run evaluated the headline task on (None: the whole test split)."""
    ev = host.config.evaluation
    return ev.limits.get(host.headline, ev.limit)


def reads(config: Any) -> set[tuple[str, int]]:
    """The main run's (variant, seed) models and evaluations this study reads (its ``all`` size)."""
    c = config.sample_efficiency
    return {(name, seed) for name in c.variants for seed in (c.seeds or config.seeds)} if "all" in c.sizes else set()


def cost(config: Any, unit: dict[str, float]) -> float:
    """Rough cost for the progress ETA: every size below ``all`` trains and evaluates both variants per seed
    (with ``budget: epochs`` the steps shrink with n, which this upper bound ignores)."""
    c = config.sample_efficiency
    runs = sum(n != "all" for n in c.sizes) * len(c.variants) * len(c.seeds or config.seeds)
    steps = max((v.steps or config.train.steps) for v in config.variants if v.name in c.variants)
    return runs * (steps * unit["train_step"] + unit["eval_task"])


def check(host: StudyHost) -> None:
    """Input errors that need the data: a size above the train split, a limit above the main run's."""
    c = host.config.sample_efficiency
    total = len(train_units(host))
    too_big = [n for n in c.sizes if n != "all" and n > total]
    if too_big:
        raise ReptuneError(f"sample_efficiency.sizes: {too_big[0]} is more than the {total} training {_what(host)} of the train split "
                           f"(use at most {total}, or 'all')")
    if total in c.sizes and "all" in c.sizes:
        raise ReptuneError(f"sample_efficiency.sizes: {total} is the whole train split, the same size as 'all'")
    main = _main_limit(host)
    if c.limit is not None and main is not None and c.limit > main:
        raise ReptuneError(f"sample_efficiency.limit: {c.limit} is above the {main} items the main run evaluates {host.headline} on "
                           "(the untuned line and the size 'all' come from the main run's evaluation)")


def sizes_of(sizes: list[int | str], total: int) -> list[tuple[str, int]]:
    """``[(label, n)]`` in ascending n: ``all`` (or n equal to the whole split) is ``("all", total)``."""
    out = [("all", total) if n == "all" or n == total else (str(n), int(n)) for n in sizes]
    return sorted(dict.fromkeys(out), key=lambda s: s[1])


def _subsets_stage(host: StudyHost, seed: int, sizes: list[tuple[str, int]]) -> dict[str, str]:
    """``{size label: CSV file relative to the run}`` for every size below ``all`` (one cached stage per seed)."""
    small = [n for label, n in sizes if label != "all"]
    inputs = {"data": host.stage_key("data"), "items": host.item_kind, "seed": seed, "sizes": small}

    def work(folder: Path) -> dict[str, Any]:
        order = nested_order(train_units(host), host.item_kind == "twin", seed)
        files = {}
        for n in small:
            write_subset(folder / f"n{n}.csv", order[:n])
            files[str(n)] = f"stages/{folder.name}/n{n}.csv"
        return {"files": files}

    return host.stage(f"se-subsets:s{seed}", inputs, work, 1.0)["files"]


# ----------------------------------------------------------------------------- training and evaluation


def _variant(host: StudyHost, name: str) -> Any:
    return next(v for v in host.config.variants if v.name == name)


def fit_items(labels: list[int], val_fraction: float, seed: int) -> int:
    """How many of these items the trainer trains on after taking its validation slice (its own rule)."""
    from reptune.tuning.items import TrainItem, split_items

    train, _val = split_items([TrainItem(prompt="", label=label) for label in labels], val_fraction, seed)
    return len(train)


def _subset_labels(host: StudyHost, path: Path) -> list[int]:
    """The balancing labels of a subset's training items (all 1 for twins: each holds its true and false statement)."""
    statements = load_statements_csv(path)
    if host.item_kind == "twin":
        return [1] * len({s.pair for s in statements})
    return [s.label for s in statements]


def _release(trained: dict[str, Any]) -> None:
    handle = trained.pop("handle", None)
    if handle is not None:
        handle.model = None
    gc.collect()


def _train_subset(host: StudyHost, name: str, seed: int, label: str, n: int, total: int, csv_rel: str) -> tuple[dict[str, Any], str, dict[str, Any], dict[str, Any]]:
    """Train ``name`` on the size-n subset: ``(training output, its stage name, trained holder, budget)``."""
    c = host.config.sample_efficiency
    variant = _variant(host, name)
    main = host.tune_config(variant, seed)
    steps = main.steps if c.budget == "steps" else max(1, math.ceil(main.steps * n / total))
    path = host.run_dir / csv_rel
    batch = min(main.batch_size, fit_items(_subset_labels(host, path), main.val_fraction, seed))
    if batch < main.batch_size:  # a batch larger than the items would repeat items within it
        variant = variant.model_copy(update={"options": {**variant.options, "batch_size": batch}})
    stage = f"train:se-{label}:{name}:s{seed}"
    trained: dict[str, Any] = {}
    out = host.train_variant(variant, seed, trained, stage=stage, train_csv=path, steps=steps)
    return out, stage, trained, {"steps": steps, "batch_size": batch}


def _condition(host: StudyHost, name: str, seed: int, label: str, n: int, total: int, csv_rel: str | None, limit: int | None) -> dict[str, Any]:
    """Train and evaluate one (size, variant, seed), or reuse the main run's at ``all``; what the analysis reads."""
    main_eval = host.evals.get(name, {}).get(str(seed))
    main_training = host.training.get(name, {}).get(str(seed))
    if label == "all" and main_eval is not None and main_training is not None:  # the main run's: never redone
        tc = host.tune_config(_variant(host, name), seed)
        return _record(main_training, main_eval, {"steps": tc.steps, "batch_size": tc.batch_size}, reused=True)
    if label == "all":  # a seed the main run did not train this variant with: the main run's stage name and inputs
        tc = host.tune_config(_variant(host, name), seed)
        trained: dict[str, Any] = {}
        training, stage = host.train_variant(_variant(host, name), seed, trained), f"train:{name}:s{seed}"
        budget = {"steps": tc.steps, "batch_size": tc.batch_size}
    else:
        assert csv_rel is not None
        training, stage, trained, budget = _train_subset(host, name, seed, label, n, total, csv_rel)
    cond = {"id": f"se-{label}:{name}", "label": f"{name} (n = {label})", "kind": "tuned", "variant": name, "steering": None,
            "stage": f"eval:se-{label}:{name}:s{seed}", "tasks": [host.headline], "limit": limit}
    try:
        evaluated = host.evaluate_condition(cond, (seed, host.stage_key(stage)), [host.headline], host.tuned_loader(training, trained))
    finally:
        _release(trained)
    return _record(training, evaluated, budget, reused=False)


def _record(training: dict[str, Any], evaluated: dict[str, Any], budget: dict[str, Any], *, reused: bool) -> dict[str, Any]:
    metrics = training.get("metrics") or {}
    return {"results": evaluated["results"], "cosine": (evaluated.get("representation") or {}).get("mean_cosine"),
            "steps": training.get("steps"), "best_step": training.get("best_step"), "budget_steps": budget["steps"],
            "batch_size": budget["batch_size"], "train_items": metrics.get("train_items"), "val_items": metrics.get("val_items"),
            "reused": reused, "training_dir": training.get("dir")}


# ----------------------------------------------------------------------------- per-item correctness

Key = tuple[str, str, int]  # (size label, variant, seed)


def _records(host: StudyHost, rel: str, limit: int | None) -> tuple[list[dict[str, Any]], str]:
    """The headline task's records of an evaluation file (its first ``limit``: items run in task order) and the correctness key."""
    from reptune.evaluation import load_eval_results

    result = load_eval_results(host.run_dir / rel).tasks[host.headline]
    records = result.records if limit is None else result.records[:limit]
    return records, result.binary_key or "correct"


def correctness(host: StudyHost, files: dict[Any, str], limit: int | None) -> tuple[list[str], dict[Any, np.ndarray], dict[Any, str | None]]:
    """Per-item 0/1 correctness of every evaluation, on the items all of them share (in the first file's order).

    Returns ``(item ids, {key: float64 [items]}, {key: why it is degenerate, or None}``.
    """
    loaded = {key: _records(host, rel, limit) for key, rel in files.items()}
    common = set.intersection(*({r["id"] for r in records} for records, _ in loaded.values()))
    first = next(iter(loaded.values()))[0]
    ids = [r["id"] for r in first if r["id"] in common]
    share = ClaimSettings.from_thresholds(host.config.claims).degenerate_share
    correct, degenerate = {}, {}
    for key, (records, flag) in loaded.items():
        by_id = {r["id"]: r for r in records}
        correct[key] = np.array([float(bool(by_id[i][flag])) for i in ids], dtype=np.float64)
        degenerate[key] = degeneracy([by_id[i] for i in ids], share)
    return ids, correct, degenerate


# ----------------------------------------------------------------------------- the numbers


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan


def accuracy_rows(correct: dict[Key, np.ndarray], runs: dict[Key, dict[str, Any]], degenerate: dict[Key, str | None],
                  sizes: list[tuple[str, int]], variants: list[str], seeds: list[int]) -> list[dict[str, Any]]:
    """One row per (size, variant): accuracy (mean over seeds), the per-seed Wilson CIs' envelope, per-seed values and training."""
    rows = []
    for label, n in sizes:
        for name in variants:
            keys = [(label, name, seed) for seed in seeds]
            values = [float(correct[k].mean()) for k in keys]
            cis = [wilson_interval(int(correct[k].sum()), len(correct[k])) for k in keys]
            rows.append({
                "size": label, "n": n, "variant": name, "value": _mean(values), "ci_low": min(lo for lo, _ in cis),
                "ci_high": max(hi for _, hi in cis), "items": len(correct[keys[0]]), "seeds": list(seeds), "per_seed": values,
                "seed_ci": [[lo, hi] for lo, hi in cis], "steps": [runs[k]["steps"] for k in keys], "best_step": [runs[k]["best_step"] for k in keys],
                "budget_steps": [runs[k]["budget_steps"] for k in keys], "batch_size": [runs[k]["batch_size"] for k in keys],
                "train_items": [runs[k]["train_items"] for k in keys], "val_items": [runs[k]["val_items"] for k in keys],
                "reused": [runs[k]["reused"] for k in keys], "cosine": [runs[k]["cosine"] for k in keys],
                "degenerate": [degenerate[k] for k in keys],
            })
    return rows


def differences(correct: dict[Key, np.ndarray], sizes: list[tuple[str, int]], base: str, other: str, seeds: list[int],
                settings: ClaimSettings) -> list[dict[str, Any]]:
    """Per size: ``other`` minus ``base`` accuracy on the same items, per seed with a paired bootstrap CI; mean over seeds."""
    out = []
    for label, n in sizes:
        per_seed = []
        for seed in seeds:
            diff = correct[(label, other, seed)] - correct[(label, base, seed)]
            low, high = bootstrap_ci(diff, n_resamples=settings.n_resamples, seed=settings.seed + seed)
            per_seed.append({"seed": seed, "effect": float(diff.mean()), "ci_low": low, "ci_high": high})
        out.append({"size": label, "n": n, "value": _mean([p["effect"] for p in per_seed]), "ci_low": min(p["ci_low"] for p in per_seed),
                    "ci_high": max(p["ci_high"] for p in per_seed), "per_seed": per_seed})
    return out


def low_data_test(diff: np.ndarray, seed: int, settings: ClaimSettings) -> dict[str, Any]:
    """One seed's test of ``sample-efficient``: ``diff`` = per item, other minus base correctness averaged over the small sizes."""
    n = len(diff)
    low, high = bootstrap_ci(diff, n_resamples=settings.n_resamples, seed=settings.seed + seed)
    effect = float(diff.mean()) if n else math.nan
    return {"seed": seed, "n": n, "effect": effect, "effect_ok": effect > 0, "ci_low": low, "ci_high": high,
            "p_value": sign_flip_test(diff, seed=settings.seed + seed) if n else math.nan, "method": METHOD, "min_p": sign_flip_min_p(diff),
            "mde": mean_mde(_floored_sd(diff), n, alpha=settings.alpha, power=settings.power)}


def _signed(x: float | None) -> str:
    from reptune.reporting.document import fmt

    return fmt(x, "+.3f", nan="-")


def claim(correct: dict[Key, np.ndarray], degenerate: dict[Key, str | None], sizes: list[tuple[str, int]], base: str, other: str,
          seeds: list[int], settings: ClaimSettings, task: str) -> dict[str, Any]:
    """The ``sample-efficient`` claim spec (:func:`reptune.pipeline.claims.claim_spec`): one paired test per seed."""
    problems = new_problems()
    small = [label for label, _ in sizes if label != "all"]
    if not small:
        problems["other"].append("no size below all, so the low-data regime was not trained")
    for (label, name, seed), why in degenerate.items():
        if why and label in small and name in (base, other):
            problems["degenerate"].append(f"{name} at n = {label} (seed {seed}) on {task}: {why}")
    tests = []
    for seed in seeds if small else []:
        diff = np.mean([correct[(label, other, seed)] - correct[(label, base, seed)] for label in small], axis=0)
        tests.append(low_data_test(diff, seed, settings))
    prefix = "seed {seed}: " if len(tests) > 1 else ""
    evidence = f"{task} accuracy, {other} minus {base}, per held-out item averaged over n = {', '.join(small)}: " + "; ".join(
        prefix.format(seed=t["seed"]) + f"{_signed(t['effect'])} [95% CI {_signed(t['ci_low'])}, {_signed(t['ci_high'])}] over {t['n']} items"
        for t in tests) + "."
    mde = ("a mean per-item accuracy difference of {mde:.3f} (averaged over the sizes below all; one-sample normal approximation "
           "with the observed SD of the per-item values) at n = {n}")
    return claim_spec(CLAIM_ID, CLAIM.format(other=other, base=base), tests, problems, evidence, mde)


def target_of(rows: list[dict[str, Any]], base: str, target: float | str, tolerance: float) -> dict[str, Any]:
    """The accuracy each variant must reach: the configured number, or the baseline's at ``all`` (else its largest size) minus ``tolerance``."""
    if target != "auto":
        return {"value": float(target), "rule": "fixed in the config (sample_efficiency.target)"}
    ref = [r for r in rows if r["variant"] == base][-1]  # rows ascend in n: the largest size, 'all' when present
    return {"value": ref["value"] - tolerance, "reference": ref["value"], "reference_size": ref["size"], "tolerance": tolerance,
            "rule": f"auto: {base}'s mean accuracy at n = {ref['size']} minus the tolerance {tolerance:g}"}


def reach(rows: list[dict[str, Any]], target: float, variants: list[str]) -> list[dict[str, Any]]:
    """Per variant, the smallest size whose mean accuracy over seeds reaches ``target`` (and per seed); ``None`` when none does."""
    out = []
    for name in variants:
        mine = [r for r in rows if r["variant"] == name]
        hit = next((r for r in mine if r["value"] >= target), None)
        per_seed = [next((r["size"] for r in mine if r["per_seed"][i] >= target), None) for i in range(len(mine[0]["per_seed"]))]
        best = max(mine, key=lambda r: r["value"])
        entry = {"variant": name, "size": hit["size"] if hit else None, "n": hit["n"] if hit else None, "per_seed": per_seed,
                 "best": best["value"], "best_size": best["size"]}
        if hit is None:
            entry["note"] = f"never reaches the target at the sizes tried (best {best['value']:.3f} at n = {best['size']})"
        out.append(entry)
    return out


def _notes(host: StudyHost, untuned: float | None, target: float, limit: int | None) -> list[str]:
    c, v = host.config.sample_efficiency, host.config.vector
    budget = ("every size trains for the variant's own steps (equal updates, only the labels differ; the trainer keeps its best "
              "validation weights)" if c.budget == "steps" else "steps scale with n (the main run's passes over the data, at least one step)")
    vector = (f"the vector is the run's own, from {v.file}" if v.file else
              f"the vector is the run's own, extracted once from up to {v.pairs_limit} persona pairs of train statements "
              + ("without their truth labels (paired personas)" if v.variant == "paired" else "using their truth labels (unpaired personas)"))
    notes = [f"Budget: {budget}.", f"Representation: {vector}; it is not re-extracted per n.",
             f"Evaluation: the same {limit if limit is not None else 'all'} test items for every size, variant and seed (paired)."]
    if untuned is not None and untuned >= target:
        notes.append(f"The untuned model ({untuned:.3f}) already reaches the target {target:.3f}: reaching it says nothing about learning.")
    return notes


# ----------------------------------------------------------------------------- the study


def _untuned(host: StudyHost, ids: list[str], limit: int | None) -> dict[str, Any] | None:
    """The untuned model's accuracy on the study's items (the main run's evaluation, seed-free)."""
    out = next(iter(host.evals.get("untuned", {}).values()), None)
    if out is None:
        return None
    records, flag = _records(host, out["results"], limit)
    by_id = {r["id"]: r for r in records}
    hits = [bool(by_id[i][flag]) for i in ids if i in by_id]
    low, high = wilson_interval(sum(hits), len(hits))
    return {"value": sum(hits) / len(hits) if hits else None, "ci_low": low, "ci_high": high, "n": len(hits)}


def run(host: StudyHost) -> dict[str, Any]:
    """Train and evaluate every (size, variant, seed), then the table, the target, the claim (see the module docstring)."""
    c = host.config.sample_efficiency
    check(host)
    seeds = list(c.seeds or host.config.seeds)
    base, other = c.variants
    total = len(train_units(host))
    sizes = sizes_of(list(c.sizes), total)
    limit = c.limit if c.limit is not None else _main_limit(host)
    runs: dict[Key, dict[str, Any]] = {}
    subsets: dict[str, dict[str, str]] = {}
    for seed in seeds:
        subsets[str(seed)] = _subsets_stage(host, seed, sizes)
    for seed, (label, n), name in host.walk([(seed, size, name) for seed in seeds for size in sizes for name in (base, other)]):
        runs[(label, name, seed)] = _condition(host, name, seed, label, n, total, subsets[str(seed)].get(label), limit)
    ids, correct, degenerate = correctness(host, {key: run["results"] for key, run in runs.items()}, limit)
    settings = ClaimSettings.from_thresholds(host.config.claims)
    rows = accuracy_rows(correct, runs, degenerate, sizes, [base, other], seeds)
    target = target_of(rows, base, c.target, c.tolerance)
    untuned = _untuned(host, ids, limit)
    reached = reach(rows, target["value"], [base, other])
    ns = {r["variant"]: r["n"] for r in reached}
    return {
        "task": host.headline, "split": "test", "items": len(ids), "item_kind": host.item_kind, "train_items": total,
        "variants": [base, other], "seeds": seeds, "sizes": [{"size": label, "n": n} for label, n in sizes], "budget": c.budget,
        "rows": rows, "untuned": untuned, "target": target, "reach": reached,
        "label_ratio": ns[base] / ns[other] if ns[base] and ns[other] else None,
        "differences": differences(correct, sizes, base, other, seeds, settings), "ci_rule": CI_RULE,
        "degenerate": [f"{name} at n = {label} (seed {seed}): {why}" for (label, name, seed), why in degenerate.items() if why],
        "notes": _notes(host, (untuned or {}).get("value"), target["value"], limit), "subsets": subsets,
        "claim": CLAIM_ID, "claims": [claim(correct, degenerate, sizes, base, other, seeds, settings, host.headline)],
    }
