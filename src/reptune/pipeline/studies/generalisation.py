"""Out-of-distribution generalisation: does what a variant learned carry over to facts it was not trained on?

Three distances from the training data, each read as the **gain** over the untuned model on the
same items (per-item correctness on the headline task, variant minus untuned, paired bootstrap CI):

* **leave-topic-out** (near OOD): each variant is trained again from the base weights on the
  run's *train* split without the held-out topics (``holdout_topics``: a list, or ``auto`` = a
  seeded choice of ``holdout_count`` topics per fold, ``folds`` disjoint groups), evaluated once on
  the whole *test* split and read on the training topics (in-distribution, ``id``) and on the
  held-out ones (``ood``). Twins are split by pair, so both twins of a fact share its topic. The
  representation term's vector is the run's (persona pairs of train statements of every topic).
* **easy-to-hard**: the untuned model scores the *train* split on the headline task (a cached
  stage; margin = log p(right) - log p(wrong)); each variant is trained on the ``easy_fraction``
  of train items with the highest margin and read on the ``hard_fraction`` of *test* items with
  the lowest margin under the untuned model (its own test records, already evaluated by the run),
  and on the other test items (``easy``).
* **TruthfulQA** (far OOD): the main variants' ``tqa-ab`` / ``tqa-mc1`` records, when the run
  evaluated them; otherwise the section says why they are missing.

The gap per variant (in-distribution gain minus OOD gain; easy gain minus hard gain) has a
stratified bootstrap CI (the two item sets are different items). The claim ``generalises-ood``:
``candidate`` beats ``baseline`` on the held-out topics (McNemar per seed on the OOD items, both
trained without those topics). It is the study's only claim, so the Holm family grows by one test
per seed; honesty vs truth on the in-distribution and the hard items are context rows.
"""

from __future__ import annotations

import csv
import gc
import io
import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from reptune._io import write_text_atomic
from reptune.errors import ReptuneError
from reptune.evaluation.registry import TaskResult
from reptune.evaluation.statistics import (
    bootstrap_ci,
    independent_bootstrap_diff,
    mean_mde,
    paired_bootstrap_diff,
    sign_flip_min_p,
    sign_flip_test,
    wilson_interval,
)
from reptune.pipeline.claims import SIGNED, ClaimSettings, claim_spec, degeneracy, mcnemar_seed, new_problems
from reptune.pipeline.studies.base import StudyHost
from reptune.reporting.document import fmt

NAME = "generalisation"
CLAIM_ID = "generalises-ood"
STATEMENT_TASKS = ("facts-twin", "facts-ab", "facts-word")  # headline tasks whose items map to the split CSVs
FAR_TASKS = ("tqa-ab", "tqa-mc1")
_f = partial(fmt, nan="-")  # evidence numbers: 3 decimals, a missing one "-"
MIN_TRAIN_UNITS = 2  # a study training set smaller than this is an error (the trainer keeps one for validation)


def enabled(config: Any) -> bool:
    return bool(config.generalisation.enabled)


def reads(config: Any) -> set[tuple[str, int]]:
    """The main run's (variant, seed) evaluations this study reads (the "main model" column)."""
    study = config.generalisation
    return {(name, seed) for name in study.variants for seed in config.study_seeds(study.seeds)}


def cost(config: Any, unit: dict[str, float]) -> float:
    """Rough cost for the progress ETA: per study seed and variant one training and one test evaluation
    per leave-topic-out fold and one for easy-to-hard, plus the untuned pass over the train split."""
    study = config.generalisation
    runs = (study.folds if study.leave_topic_out else 0) + int(study.easy_to_hard)
    variants = [v for v in config.variants if v.name in study.variants]
    steps = max((study.steps or v.steps or config.train.steps) for v in variants) if variants else 0
    trainings = runs * len(variants) * len(config.study_seeds(study.seeds))
    return trainings * (steps * unit["train_step"] + unit["eval_task"]) + int(study.easy_to_hard) * unit["eval_task"]


# ----------------------------------------------------------------------------- the data (no model)


@dataclass(frozen=True)
class Fold:
    """One leave-topic-out training: the topics held out and those trained on."""

    holdout: tuple[str, ...]
    train_topics: tuple[str, ...]


def read_rows(path: Path) -> list[dict[str, str]]:
    """A split CSV (``statement,label,topic[,pair]``) as rows, in file order."""
    with Path(path).open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def units(rows: list[dict[str, str]], by_pair: bool) -> dict[str, list[int]]:
    """Items of a split, in order: ``{id: row indices}``; an id is a pair (twins) or a row index.

    The headline task's record ids are the same: ``facts-twin`` names a twin by its pair, the
    statement tasks (``facts-ab``, ``facts-word``) name a statement by its row in the split.
    """
    out: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        out.setdefault(str(row.get("pair")) if by_pair else str(index), []).append(index)
    return out


def unit_topics(rows: list[dict[str, str]], by_pair: bool) -> dict[str, str]:
    """``{item id: topic}`` ("" when the data names none)."""
    return {uid: next((rows[i].get("topic") or "" for i in idx if rows[i].get("topic")), "") for uid, idx in units(rows, by_pair).items()}


def plan_folds(study: Any, topics: list[str]) -> list[Fold]:
    """The held-out topic groups; a one-line error naming the key when they do not fit ``topics``."""
    known = sorted(set(topics))
    if isinstance(study.holdout_topics, list):
        unknown = [t for t in study.holdout_topics if t not in known]
        if unknown:
            raise ReptuneError(f"generalisation.holdout_topics: unknown topic {unknown[0]!r} (the data's topics: {', '.join(known)})")
        groups = [list(study.holdout_topics)]
    else:
        if study.holdout_count >= len(known):
            raise ReptuneError(f"generalisation.holdout_count {study.holdout_count} would hold out every one of the data's {len(known)} topics; "
                               f"at most {len(known) - 1}")
        if study.folds * study.holdout_count > len(known):
            raise ReptuneError(f"generalisation.folds {study.folds} x holdout_count {study.holdout_count} needs "
                               f"{study.folds * study.holdout_count} distinct topics; the data has {len(known)}")
        order = list(known)
        random.Random(study.holdout_seed).shuffle(order)
        groups = [sorted(order[k * study.holdout_count:(k + 1) * study.holdout_count]) for k in range(study.folds)]
    folds = [Fold(tuple(g), tuple(t for t in known if t not in g)) for g in groups]
    if any(not fold.train_topics for fold in folds):
        raise ReptuneError("generalisation.holdout_topics holds out every topic of the data; leave at least one to train on")
    return folds


def _evaluated(host: StudyHost, rows: list[dict[str, str]]) -> list[str]:
    """The test item ids the study's models are evaluated on (the first ``limit``, as the task loads them)."""
    c = host.config
    limit = c.generalisation.limit or c.evaluation.limits.get(host.headline, c.evaluation.limit)
    ids = list(units(rows, host.headline == "facts-twin"))
    return ids if limit is None else ids[:limit]


def check(host: StudyHost) -> None:
    """The settings against the data, before any model work (the runner calls it after the data stage)."""
    study = host.config.generalisation
    if host.headline not in STATEMENT_TASKS:
        raise ReptuneError(f"generalisation needs a statement headline task ({', '.join(STATEMENT_TASKS)}), got {host.headline!r}")
    twins = host.headline == "facts-twin"
    main_limit = host.config.evaluation.limits.get(host.headline, host.config.evaluation.limit)
    if study.limit is not None and main_limit is not None and study.limit > main_limit:
        raise ReptuneError(f"generalisation.limit {study.limit} exceeds the main run's {host.headline} limit {main_limit}: "
                           "the untuned model's records, the baseline of every gain, cover only those items")
    train, test = read_rows(host.split_path("train")), read_rows(host.split_path("test"))
    evaluated = _evaluated(host, test)
    if study.leave_topic_out:
        _check_topics(host, study, train, test, evaluated, twins)
    if study.easy_to_hard:
        n_train = len(units(train, host.item_kind == "twin"))
        if round(study.easy_fraction * n_train) < MIN_TRAIN_UNITS:
            raise ReptuneError(f"generalisation.easy_fraction {study.easy_fraction:g} leaves the easy split with "
                               f"{round(study.easy_fraction * n_train)} of {n_train} train items; it needs at least {MIN_TRAIN_UNITS}")
        if round(study.hard_fraction * len(evaluated)) < 1:
            raise ReptuneError(f"generalisation.hard_fraction {study.hard_fraction:g} leaves no hard item among the {len(evaluated)} test items")


def _check_topics(host: StudyHost, study: Any, train: list[dict[str, str]], test: list[dict[str, str]], evaluated: list[str], twins: bool) -> None:
    if any(not row.get("topic") for row in train + test):
        raise ReptuneError("generalisation.leave_topic_out needs a topic for every statement (a 'topic' column); "
                           "set generalisation.leave_topic_out: false for data without topics")
    folds = plan_folds(study, [row["topic"] for row in train + test])
    topic_of, train_topics = unit_topics(test, twins), list(unit_topics(train, host.item_kind == "twin").values())
    for fold in folds:
        trained = sum(t in fold.train_topics for t in train_topics)
        ood = sum(1 for uid in evaluated if topic_of[uid] in fold.holdout)
        if trained < MIN_TRAIN_UNITS:
            raise ReptuneError(f"generalisation: holding out {', '.join(fold.holdout)} leaves {trained} train items; it needs at least {MIN_TRAIN_UNITS}")
        if not ood or ood == len(evaluated):
            where = "none" if not ood else "all"
            raise ReptuneError(f"generalisation: {where} of the {len(evaluated)} evaluated test items are in the held-out topics "
                               f"{', '.join(fold.holdout)}; both sides need items")


def write_subset(path: Path, rows: list[dict[str, str]], keep: list[int]) -> None:
    """The rows ``keep`` (indices, written in file order) as a statements CSV with the split's columns."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for index in sorted(keep):
        writer.writerow(rows[index])
    write_text_atomic(path, buffer.getvalue())


def easiest(rows: list[dict[str, str]], margins: dict[str, float], twins_headline: bool, twin_items: bool, fraction: float) -> tuple[list[int], float]:
    """Row indices of the ``fraction`` of training items with the highest untuned margin, and the lowest margin kept.

    A row's margin is its headline item's (its pair's for ``facts-twin``); an item's is the mean
    over its rows (a twin item has two rows with one margin). Ties keep the file order.
    """
    row_margin = {i: margins[str(row.get("pair")) if twins_headline else str(i)] for i, row in enumerate(rows)}
    items = units(rows, twin_items)
    score = {uid: float(np.mean([row_margin[i] for i in idx])) for uid, idx in items.items()}
    ranked = sorted(items, key=lambda uid: -score[uid])  # sorted() is stable: ties keep the file order
    kept = ranked[: round(fraction * len(items))]
    return [i for uid in kept for i in items[uid]], min(score[uid] for uid in kept)


# ----------------------------------------------------------------------------- the models (cached stages)


def _result(host: StudyHost, results_file: str, task: str) -> TaskResult | None:
    from reptune.evaluation import load_eval_results

    return load_eval_results(host.run_dir / results_file).tasks.get(task)


def _main_result(host: StudyHost, cond: str, seed: int, task: str) -> TaskResult | None:
    """A condition the main run evaluated (read, never evaluated again) on ``task``, or None."""
    by_seed = host.evals.get(cond) or {}
    out = by_seed.get(str(seed)) or (next(iter(by_seed.values())) if cond == "untuned" and by_seed else None)
    return None if out is None else _result(host, out["results"], task)


def correct(result: TaskResult, ids: Any = None) -> dict[str, float]:
    """``{item id: 1.0 / 0.0}``: right or wrong (the task's binary key), for ``ids`` (default: every item)."""
    key = result.binary_key or "correct"
    return {str(r["id"]): float(bool(r[key])) for r in result.records if ids is None or str(r["id"]) in ids}


def margins(result: TaskResult) -> dict[str, float]:
    """``{item id: margin}`` (nats, right minus wrong) of a headline result."""
    return {str(r["id"]): float(r["margin"]) for r in result.records}


def _release(trained: dict[str, Any]) -> None:
    handle = trained.pop("handle", None)
    if handle is not None:
        handle.model = None
    gc.collect()


def _train_and_evaluate(host: StudyHost, variant: Any, seed: int, tag: str, train_csv: Path) -> TaskResult:
    """Train ``variant`` on ``train_csv`` (stage ``generalisation:train:<tag>:<variant>:s<seed>``) and
    evaluate it on the test split's headline task (``generalisation:eval:...``); its records."""
    study = host.config.generalisation
    trained: dict[str, Any] = {}
    stage = f"{NAME}:train:{tag}:{variant.name}:s{seed}"
    training = host.train_variant(variant, seed, trained, stage=stage, train_csv=train_csv, steps=study.steps)
    cond: dict[str, Any] = {"id": f"{variant.name}@{tag}", "label": f"{variant.name} ({tag})", "kind": "tuned", "variant": variant.name,
                            "steering": None, "stage": f"{NAME}:eval:{tag}:{variant.name}:s{seed}", "tasks": [host.headline]}
    if study.limit is not None:
        cond["limit"] = study.limit
    try:
        out = host.evaluate_condition(cond, (seed, host.stage_key(stage)), [host.headline], host.tuned_loader(training, trained))
    finally:
        _release(trained)
    result = _result(host, out["results"], host.headline)
    assert result is not None
    return result


def _fold_files(host: StudyHost, folds: list[Fold], train: list[dict[str, str]]) -> dict[str, Path]:
    """The train split without each fold's held-out topics (stage ``generalisation:split``): ``{tag: CSV}``."""
    def work(folder: Path) -> dict[str, Any]:
        files = {}
        for k, fold in enumerate(folds):
            keep = [i for i, row in enumerate(train) if row.get("topic") in fold.train_topics]
            write_subset(folder / f"lto{k}.csv", train, keep)
            files[f"lto{k}"] = f"stages/{folder.name}/lto{k}.csv"
        return {"files": files}

    out = host.stage(f"{NAME}:split", {"data": host.stage_key("data"), "folds": [list(f.holdout) for f in folds]}, work, 1.0)
    return {tag: host.run_dir / rel for tag, rel in out["files"].items()}


def _leave_topic_out(host: StudyHost, variants: list[Any], seeds: list[int]) -> tuple[list[Fold], dict[str, dict[str, dict[int, TaskResult]]]]:
    """Train and evaluate every variant x seed per fold: ``(folds, {tag: {variant: {seed: records}}})``."""
    train, test = read_rows(host.split_path("train")), read_rows(host.split_path("test"))
    folds = plan_folds(host.config.generalisation, [row["topic"] for row in train + test])
    files = _fold_files(host, folds, train)
    models: dict[str, dict[str, dict[int, TaskResult]]] = {}
    for tag, variant, seed in host.walk([(tag, variant, seed) for tag in files for variant in variants for seed in seeds]):
        models.setdefault(tag, {}).setdefault(variant.name, {})[seed] = _train_and_evaluate(host, variant, seed, tag, files[tag])
    models = {tag: {v.name: dict(sorted(models[tag][v.name].items())) for v in variants} for tag in files}  # the walk's order undone
    return folds, models


def _train_margins(host: StudyHost) -> dict[str, float]:
    """The untuned model on the *train* split's headline task (stage ``generalisation:train-margins``)."""
    cond = {"id": "untuned@train", "label": "untuned on the train split", "kind": "untuned", "steering": None,
            "stage": f"{NAME}:train-margins", "tasks": [host.headline], "split": "train", "limit": None}
    try:
        out = host.evaluate_condition(cond, None, [host.headline], host.base)
    finally:
        host.release_base()
    result = _result(host, out["results"], host.headline)
    assert result is not None
    return margins(result)


def _easy_file(host: StudyHost) -> tuple[Path, dict[str, Any]]:
    """The easiest train items by the untuned model's own margins (stage ``generalisation:easy``)."""
    study = host.config.generalisation
    scores = _train_margins(host)
    train = read_rows(host.split_path("train"))

    def work(folder: Path) -> dict[str, Any]:
        keep, cut = easiest(train, scores, host.headline == "facts-twin", host.item_kind == "twin", study.easy_fraction)
        write_subset(folder / "easy.csv", train, keep)
        n_items = len(units(train, host.item_kind == "twin"))
        return {"file": f"stages/{folder.name}/easy.csv", "train_items": n_items, "easy_items": round(study.easy_fraction * n_items),
                "easy_rows": len(keep), "margin_cut": cut}

    inputs = {"margins": host.stage_key(f"{NAME}:train-margins"), "fraction": study.easy_fraction, "items": host.item_kind}
    out = host.stage(f"{NAME}:easy", inputs, work, 1.0)
    return host.run_dir / out["file"], out


def _easy_to_hard(host: StudyHost, variants: list[Any], seeds: list[int]) -> tuple[dict[str, Any], dict[str, dict[int, TaskResult]]]:
    """Train every variant x seed on the easy items: ``(what was kept, {variant: {seed: records}})``."""
    path, info = _easy_file(host)
    models = {variant.name: {seed: _train_and_evaluate(host, variant, seed, "easy", path) for seed in seeds} for variant in variants}
    return info, models


def hard_items(untuned: dict[str, float], evaluated: list[str], fraction: float) -> tuple[list[str], float]:
    """The ``fraction`` of ``evaluated`` test items with the lowest untuned margin (``{id: margin}``), and
    the highest margin among them."""
    ids = [uid for uid in evaluated if uid in untuned]
    ranked = sorted(ids, key=lambda uid: untuned[uid])  # stable: ties keep the file order
    hard = ranked[: max(1, round(fraction * len(ids)))]
    return hard, max(untuned[uid] for uid in hard)


# ----------------------------------------------------------------------------- the numbers


Values = dict[str, float]  # {item id: correctness}: 0/1, or a mean over the folds that read the item


def mean_over(maps: list[Values]) -> Values:
    """Per item, the mean over the maps that have it (an in-distribution item is read by every fold that trained on its topic)."""
    merged: dict[str, list[float]] = {}
    for values in maps:
        for uid, value in values.items():
            merged.setdefault(uid, []).append(value)
    return {uid: float(np.mean(v)) for uid, v in merged.items()}


def _binary(values: np.ndarray) -> bool:
    return bool(np.isin(values, (0.0, 1.0)).all())


def _estimate(values: np.ndarray, seed: int) -> tuple[float, float, float]:
    """Accuracy with its 95% CI: Wilson for 0/1 items, the percentile bootstrap for per-item means."""
    if _binary(values):
        low, high = wilson_interval(int(values.sum()), values.size)
    else:
        low, high = bootstrap_ci(values, seed=seed)
    return float(values.mean()), low, high


def set_row(variant: str, seed: int, name: str, model: str, tuned: Values, untuned: Values, reference: Values | None) -> dict[str, Any]:
    """One variant's accuracy on one item set beside the untuned model's on the same items.

    ``gain`` = mean(variant - untuned) per item with its paired bootstrap CI; ``reference``: the main
    run's model of the same variant and seed (trained on the whole train split) on the same items.
    """
    ids = [uid for uid in tuned if uid in untuned]
    v, u = (np.array([m[uid] for uid in ids]) for m in (tuned, untuned))
    row: dict[str, Any] = {"variant": variant, "seed": seed, "set": name, "model": model, "n": len(ids)}
    if not ids:
        return row
    value, low, high = _estimate(v, seed)
    gain, gain_low, gain_high = paired_bootstrap_diff(u, v, seed=seed)
    row.update({"untuned": float(u.mean()), "value": value, "ci_low": low, "ci_high": high, "gain": gain, "gain_low": gain_low, "gain_high": gain_high})
    shared = [uid for uid in ids if reference is not None and uid in reference]
    if shared:
        ref = np.array([reference[uid] for uid in shared])  # type: ignore[index]
        row.update({"reference": float(ref.mean()), "reference_gain": float(ref.mean() - np.mean([untuned[uid] for uid in shared])),
                    "reference_n": len(shared)})
    return row


def gap_row(variant: str, seed: int, kind: str, near: tuple[Values, Values], far: tuple[Values, Values]) -> dict[str, Any]:
    """Gain on the near items minus gain on the far items (different items: a stratified bootstrap CI).

    ``near`` / ``far``: ``(tuned, untuned)`` values; kind ``topic`` (in-distribution vs held-out
    topics) or ``difficulty`` (easy vs hard test items).
    """
    gains = [[tuned[uid] - untuned[uid] for uid in tuned if uid in untuned] for tuned, untuned in (near, far)]
    gap, low, high = independent_bootstrap_diff(gains[0], gains[1], seed=seed)
    return {"variant": variant, "seed": seed, "kind": kind, "near_gain": float(np.mean(gains[0])) if gains[0] else None,
            "far_gain": float(np.mean(gains[1])) if gains[1] else None, "gap": gap, "ci_low": low, "ci_high": high,
            "near_n": len(gains[0]), "far_n": len(gains[1])}


def compare(a: Values, b: Values, seed: int, settings: ClaimSettings) -> dict[str, Any]:
    """'b beats a' on the items both have: McNemar for 0/1 items, else the paired sign-flip test of the mean difference."""
    ids = [uid for uid in a if uid in b]
    x, y = (np.array([m[uid] for uid in ids]) for m in (a, b))
    if _binary(x) and _binary(y):
        as_result = lambda values: TaskResult(task="", metrics={}, records=[{"id": uid, "correct": bool(v)} for uid, v in zip(ids, values)],
                                              primary="accuracy", binary_key="correct")
        return mcnemar_seed(as_result(x), as_result(y), seed, settings)
    diff = y - x
    sd = max(float(diff.std(ddof=1)) if diff.size > 1 else 0.0, float(np.sqrt(1.0 / max(diff.size, 1))))
    effect = float(diff.mean()) if diff.size else float("nan")
    return {"seed": seed, "n": len(ids), "a_value": float(x.mean()) if ids else None, "b_value": float(y.mean()) if ids else None,
            "effect": effect, "effect_ok": effect > 0, "p_value": sign_flip_test(diff, seed=settings.seed + seed), "min_p": sign_flip_min_p(diff),
            "method": "paired sign-flip test on per-item mean correctness", "mde": mean_mde(sd, len(ids), alpha=settings.alpha, power=settings.power)}


# ----------------------------------------------------------------------------- the study


@dataclass
class _Read:
    """What the parts of the study hand to the claim and the section."""

    rows: list[dict[str, Any]]
    gaps: list[dict[str, Any]]
    context: list[dict[str, Any]]
    ood: dict[str, dict[int, Values]]  # {variant: {seed: held-out-topic values}}
    ood_records: dict[str, dict[int, list[dict[str, Any]]]]


def _context_row(study: Any, task: str, what: str, test: dict[str, Any]) -> dict[str, Any]:
    keep = ("seed", "n", "a_value", "b_value", "effect", "p_value", "mde")
    return {"a": study.baseline, "b": study.candidate, "task": task, "what": what, **{k: test.get(k) for k in keep}}


def _topic_part(host: StudyHost, variants: list[Any], seeds: list[int], untuned: Values, read: _Read, settings: ClaimSettings) -> dict[str, Any]:
    """Leave-topic-out: train, evaluate, and read every variant x seed on the training and the held-out topics."""
    study = host.config.generalisation
    folds, models = _leave_topic_out(host, variants, seeds)
    test, train = read_rows(host.split_path("test")), read_rows(host.split_path("train"))
    topic_of = unit_topics(test, host.headline == "facts-twin")
    id_values: dict[str, dict[int, Values]] = {}
    for variant in variants:
        for seed in seeds:
            main = _main_result(host, variant.name, seed, host.headline)
            reference = correct(main) if main is not None else None
            results = [models[f"lto{k}"][variant.name][seed] for k in range(len(folds))]
            ood = {uid: v for fold, result in zip(folds, results) for uid, v in correct(result).items() if topic_of[uid] in fold.holdout}
            ind = mean_over([{uid: v for uid, v in correct(result).items() if topic_of[uid] not in fold.holdout} for fold, result in zip(folds, results)])
            read.ood.setdefault(variant.name, {})[seed] = ood
            read.ood_records.setdefault(variant.name, {})[seed] = [r for fold, result in zip(folds, results) for r in result.records
                                                                   if topic_of[str(r["id"])] in fold.holdout]
            id_values.setdefault(variant.name, {})[seed] = ind
            read.rows += [set_row(variant.name, seed, "id", "leave-topic-out", ind, untuned, reference),
                          set_row(variant.name, seed, "ood", "leave-topic-out", ood, untuned, reference)]
            read.gaps.append(gap_row(variant.name, seed, "topic", (ind, untuned), (ood, untuned)))
    for seed in seeds:
        test_id = compare(id_values[study.baseline][seed], id_values[study.candidate][seed], seed, settings)
        read.context.append(_context_row(study, host.headline, "training topics (in-distribution; leave-topic-out models)", test_id))
    train_topics = unit_topics(train, host.item_kind == "twin")
    return {"auto": study.holdout_topics == "auto", "holdout_seed": study.holdout_seed, "topics": sorted(set(topic_of.values()) | set(train_topics.values())),
            "folds": [{"tag": f"lto{k}", "holdout": list(fold.holdout), "train_topics": list(fold.train_topics),
                       "train_items": sum(t in fold.train_topics for t in train_topics.values()),
                       "ood_items": sum(topic_of[uid] in fold.holdout for uid in read.ood[study.baseline][seeds[0]])} for k, fold in enumerate(folds)],
            "ood_items": len(read.ood[study.baseline][seeds[0]]), "id_items": len(id_values[study.baseline][seeds[0]])}


def _difficulty_part(host: StudyHost, variants: list[Any], seeds: list[int], untuned_result: TaskResult, read: _Read,
                     settings: ClaimSettings) -> dict[str, Any]:
    """Easy-to-hard: train on the easiest train items, read on the hardest (and the other) test items."""
    study = host.config.generalisation
    info, models = _easy_to_hard(host, variants, seeds)
    untuned = correct(untuned_result)
    evaluated = [uid for uid in _evaluated(host, read_rows(host.split_path("test"))) if uid in untuned]
    hard, cut = hard_items(margins(untuned_result), evaluated, study.hard_fraction)
    hard_set = set(hard)
    hard_values: dict[str, dict[int, Values]] = {}
    for variant in variants:
        for seed in seeds:
            main = _main_result(host, variant.name, seed, host.headline)
            reference = correct(main) if main is not None else None
            values = correct(models[variant.name][seed], set(evaluated))
            easy = {uid: v for uid, v in values.items() if uid not in hard_set}
            hard_values.setdefault(variant.name, {})[seed] = {uid: v for uid, v in values.items() if uid in hard_set}
            read.rows += [set_row(variant.name, seed, "easy", "easy-to-hard", easy, untuned, reference),
                          set_row(variant.name, seed, "hard", "easy-to-hard", hard_values[variant.name][seed], untuned, reference)]
            read.gaps.append(gap_row(variant.name, seed, "difficulty", (easy, untuned), (hard_values[variant.name][seed], untuned)))
    for seed in seeds:
        test_hard = compare(hard_values[study.baseline][seed], hard_values[study.candidate][seed], seed, settings)
        read.context.append(_context_row(study, host.headline, "hard test items (easy-to-hard models)", test_hard))
    return {**info, "easy_fraction": study.easy_fraction, "hard_fraction": study.hard_fraction, "test_items": len(evaluated),
            "hard_items": len(hard), "hard_margin_cut": cut, "untuned_hard": float(np.mean([untuned[uid] for uid in hard]))}


def _far_part(host: StudyHost, variants: list[Any], seeds: list[int], read: _Read) -> dict[str, Any]:
    """TruthfulQA as the far target: the main run's records of each variant (never evaluated again)."""
    info: dict[str, Any] = {"tasks": [], "skipped": []}
    for task in FAR_TASKS:
        if task not in host.tasks:
            why = "not in evaluation.tasks" if task not in host.config.evaluation.tasks else "its data was not found, so the run skipped it"
            info["skipped"].append({"task": task, "reason": why})
            continue
        untuned = _main_result(host, "untuned", seeds[0], task)
        if untuned is None:
            info["skipped"].append({"task": task, "reason": "the untuned model was not evaluated on it"})
            continue
        info["tasks"].append(task)
        for variant in variants:
            for seed in seeds:
                result = _main_result(host, variant.name, seed, task)
                if result is None:
                    info["skipped"].append({"task": task, "reason": f"{variant.name} has no seed-{seed} evaluation in the main run"})
                    continue
                read.rows.append(set_row(variant.name, seed, task, "main", correct(result), correct(untuned), None))
    return info


def _claim(host: StudyHost, seeds: list[int], read: _Read, topics: dict[str, Any] | None, settings: ClaimSettings) -> dict[str, Any]:
    """``generalises-ood``: the candidate beats the baseline on the held-out topics (McNemar per seed)."""
    study = host.config.generalisation
    a, b = study.baseline, study.candidate
    claim = (f"Representation-tuned models generalise better than token-only tuning to topics held out of training "
             f"({b} vs {a} on the held-out topics' test items, both trained without those topics).")
    problems = new_problems()
    tests: list[dict[str, Any]] = []
    if topics is None:
        problems["other"].append("generalisation.leave_topic_out is off")
    for seed in seeds if topics is not None else []:
        for name in (a, b):
            reason = degeneracy(read.ood_records[name][seed], settings.degenerate_share)
            if reason:
                problems["degenerate"].append(f"{name} trained without the held-out topics (seed {seed}): {reason}")
        tests.append(compare(read.ood[a][seed], read.ood[b][seed], seed, settings))
    held = "; ".join(", ".join(fold["holdout"]) for fold in (topics or {}).get("folds", []))
    gains = {(r["variant"], r["seed"]): r for r in read.rows if r["set"] == "ood"}
    evidence = "; ".join((f"seed {t['seed']}: " if len(tests) > 1 else "") + (
        f"{host.headline} accuracy on the {t['n']} test items of the held-out topics ({held}): {b} {_f(t['b_value'])} vs {a} {_f(t['a_value'])} "
        f"(difference {_f(t['effect'], SIGNED)}, {t.get('discordant', '-')} discordant); gain over the untuned model "
        f"({_f(gains[(b, t['seed'])].get('untuned'))}): {b} {_f(gains[(b, t['seed'])].get('gain'), SIGNED)}, {a} {_f(gains[(a, t['seed'])].get('gain'), SIGNED)}")
        for t in tests) + "."
    mde = ("a difference of {mde:.3f} in accuracy on the held-out topics (share of their items; McNemar, Connor's approximation with "
           "the observed discordance rate) at n = {n}")
    return claim_spec(CLAIM_ID, claim, tests, problems, evidence, mde, context=read.context)


def run(host: StudyHost) -> dict[str, Any]:
    """The study's section of ``results.json`` (see the module docstring); its claim under ``claims``."""
    study = host.config.generalisation
    seeds = host.config.study_seeds(study.seeds)
    by_name = {variant.name: variant for variant in host.config.variants}
    variants = [by_name[name] for name in study.variants]
    settings = ClaimSettings.from_thresholds(host.config.claims)
    untuned_result = _main_result(host, "untuned", seeds[0], host.headline)
    if untuned_result is None:
        raise ReptuneError(f"generalisation: the untuned model has no {host.headline} records on the test split")
    untuned = correct(untuned_result)
    read = _Read(rows=[], gaps=[], context=[], ood={}, ood_records={})
    topics = _topic_part(host, variants, seeds, untuned, read, settings) if study.leave_topic_out else None
    difficulty = _difficulty_part(host, variants, seeds, untuned_result, read, settings) if study.easy_to_hard else None
    far = _far_part(host, variants, seeds, read)
    return {
        "task": host.headline, "split": "test", "variants": list(study.variants), "baseline": study.baseline, "candidate": study.candidate,
        "seeds": seeds, "steps": {v.name: study.steps or v.steps or host.config.train.steps for v in variants},
        "leave_topic_out": topics, "easy_to_hard": difficulty, "far": far, "rows": read.rows, "gaps": read.gaps,
        "claims": [_claim(host, seeds, read, topics, settings)],
    }
