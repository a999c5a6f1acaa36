"""The OOD generalisation study (``pipeline/studies/generalisation.py``) on a tiny model, its pieces and its bad input."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from reptune.errors import ReptuneError
from reptune.pipeline import parse_config, run_experiment
from reptune.pipeline import runner as runner_module
from reptune.pipeline.claims import ClaimSettings
from reptune.pipeline.studies import generalisation as study_module

HOLDOUT = ["math", "animals"]
TOPICS = ["animals", "arithmetic", "body", "culture", "everyday", "geography", "history", "math", "science", "units"]  # in the first 60 facts


def _config(tiny_dir: Path, **study) -> dict:
    """A twin run with the study on: 60 facts (24 test, 27 train twins), two variants, a couple of steps each."""
    return {
        "name": "ood", "model": str(tiny_dir), "precision": "fp32", "seeds": [0],
        "data": {"limit": 120, "test_fraction": 0.4},
        "vector": {"pairs_limit": 16}, "sweep": {"multipliers": [-4, 4], "limit": 6, "layers": "vector"},
        "train": {"steps": 2, "eval_every": 2, "batch_size": 4, "span": 2},
        "variants": [{"name": "truth", "preset": "truth", "counter": "none"}, {"name": "honesty", "preset": "honesty", "counter": "none"}],
        "evaluation": {"tasks": ["facts-twin"], "representation_items": 4},
        "learnability": {"enabled": False}, "robustness": {"enabled": False}, "projection": {"enabled": False},
        "generalisation": {"enabled": True, "holdout_topics": HOLDOUT, **study},
    }


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _eval_records(run_dir: Path, stage: str) -> list[dict]:
    return json.loads((run_dir / "stages" / stage / "results.json").read_text(encoding="utf-8"))["tasks"]["facts-twin"]["records"]


@pytest.fixture(scope="module")
def finished(tiny_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ood")
    run = run_experiment(parse_config(_config(tiny_dir)), tmp / "run", progress=False)
    return run


def test_leave_topic_out_trains_without_the_held_out_topics_and_reads_them_apart(finished):
    run_dir, section = finished.run_dir, finished.results["studies"]["generalisation"]
    trained_on = {row["topic"] for row in _rows(run_dir / "stages" / "generalisation-split" / "lto0.csv")}
    train_split = {row["topic"] for row in _rows(run_dir / "stages" / "data" / "train.csv")}
    assert trained_on == train_split - set(HOLDOUT) and not trained_on & set(HOLDOUT)  # the splits share no topic
    fold = section["leave_topic_out"]["folds"][0]
    assert set(fold["holdout"]) == set(HOLDOUT) and not set(fold["train_topics"]) & set(HOLDOUT)
    records = _eval_records(run_dir, "generalisation-eval-lto0-honesty-s0")
    ood = [r for r in records if r["topic"] in HOLDOUT]
    rows = {(r["variant"], r["set"]): r for r in section["rows"]}
    assert rows[("honesty", "ood")]["n"] == len(ood) == fold["ood_items"] > 0
    assert rows[("honesty", "id")]["n"] == len(records) - len(ood) > 0
    assert rows[("honesty", "ood")]["value"] == pytest.approx(np.mean([r["correct"] for r in ood]))
    # the untuned baseline is the main run's own test evaluation, paired on the same items
    untuned = {r["id"]: r["correct"] for r in _eval_records(run_dir, "eval-untuned")}
    assert rows[("honesty", "ood")]["untuned"] == pytest.approx(np.mean([untuned[r["id"]] for r in ood]))
    assert rows[("honesty", "ood")]["gain"] == pytest.approx(rows[("honesty", "ood")]["value"] - rows[("honesty", "ood")]["untuned"])
    gap = next(g for g in section["gaps"] if g["variant"] == "honesty" and g["kind"] == "topic")
    assert gap["gap"] == pytest.approx(rows[("honesty", "id")]["gain"] - rows[("honesty", "ood")]["gain"])


def test_easy_to_hard_trains_on_the_surest_items_and_reads_the_least_sure(finished):
    run_dir, section = finished.run_dir, finished.results["studies"]["generalisation"]
    margins = {r["id"]: r["margin"] for r in _eval_records(run_dir, "generalisation-train-margins")}
    kept = {row["pair"] for row in _rows(run_dir / "stages" / "generalisation-easy" / "easy.csv")}
    dropped = set(margins) - kept
    assert len(kept) == round(0.5 * len(margins)) and min(margins[p] for p in kept) >= max(margins[p] for p in dropped)
    e2h = section["easy_to_hard"]
    untuned = {r["id"]: r["margin"] for r in _eval_records(run_dir, "eval-untuned")}
    hard = sorted(untuned, key=untuned.get)[: round(0.5 * len(untuned))]
    assert e2h["hard_items"] == len(hard) and e2h["hard_margin_cut"] == pytest.approx(max(untuned[p] for p in hard))
    rows = {(r["variant"], r["set"]): r for r in section["rows"]}
    assert rows[("truth", "hard")]["n"] + rows[("truth", "easy")]["n"] == len(untuned)


def test_claim_reuse_far_column_and_report(finished):
    results, run_dir = finished.results, finished.run_dir
    claim = next(c for c in results["claims"] if c["id"] == "generalises-ood")
    section = results["studies"]["generalisation"]
    assert "claims" not in section  # the claim joined the run's claims (one Holm family)
    assert claim["tests"][0]["n"] == section["leave_topic_out"]["ood_items"]
    if claim["tests"][0]["min_p"] > 0.05:  # too few items differ between the two tiny models for any p below alpha
        assert claim["verdict"] == "not tested" and claim["mde"]["power"] == 0.0 and "smallest p its test can give" in claim["reason"]
    else:
        assert claim["mde"]["value"] > 0
    assert {row["what"].split(" (")[0] for row in claim["context"]} == {"training topics", "hard test items"}
    assert section["far"]["tasks"] == [] and {s["task"] for s in section["far"]["skipped"]} == {"tqa-ab", "tqa-mc1"}
    # the study trains from the base weights on its own subsets; the main evaluations are read, not redone
    assert not [s for s in finished.stages_run if s.startswith("generalisation:eval") and not re.search(r":(lto0|easy):", s)]
    assert sum(s.startswith("eval:untuned") for s in finished.stages_run) == 1
    markdown = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "## Study: out-of-distribution generalisation" in markdown and "figures/generalisation.png" in markdown
    assert (run_dir / "figures" / "generalisation.png").read_bytes()[:4] == b"\x89PNG"
    honesty_ood = next(r for r in section["rows"] if r["variant"] == "honesty" and r["set"] == "ood")
    assert f"{honesty_ood['value']:.3f}" in markdown and f"{honesty_ood['gain']:+.3f}" in markdown


def test_rerun_reuses_every_study_stage(finished):
    config = parse_config(_config(Path(finished.results["config"]["model"])))
    again = run_experiment(config, finished.run_dir, progress=False)
    assert not [s for s in again.stages_run if s.startswith("generalisation")]
    assert again.results["studies"] == finished.results["studies"]


# ----------------------------------------------------------------------------- bad input: one line, before any model work


@pytest.mark.parametrize(("study", "fragment"), [
    ({"holdout_topics": ["math", "sports"]}, "generalisation.holdout_topics: unknown topic 'sports' (the data's topics: animals, arithmetic"),
    ({"holdout_topics": TOPICS}, "holds out every topic of the data; leave at least one to train on"),
    ({"holdout_topics": "auto", "holdout_count": 10}, "generalisation.holdout_count 10 would hold out every one of the data's 10 topics; at most 9"),
    ({"holdout_topics": "auto", "folds": 4}, "generalisation.folds 4 x holdout_count 3 needs 12 distinct topics; the data has 10"),
    ({"easy_fraction": 0.02}, "generalisation.easy_fraction 0.02 leaves the easy split with 1 of 27 train items"),
    ({"hard_fraction": 0.01}, "generalisation.hard_fraction 0.01 leaves no hard item among the 24 test items"),
    ({"limit": 300}, "generalisation.limit 300 exceeds the main run's facts-twin limit 200"),
])
def test_data_errors_are_one_line_before_any_model_work(tiny_dir, tmp_path, monkeypatch, study, fragment):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(runner_module, "load_model", no_model)
    with pytest.raises(ReptuneError, match=re.escape(fragment)) as info:
        run_experiment(parse_config(_config(tiny_dir, **study)), tmp_path / "run", progress=False)
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in (tmp_path / "run" / "stages").iterdir()) == ["data"]


@pytest.mark.parametrize(("study", "fragment"), [
    ({"easy_fraction": 1.5}, "generalisation.easy_fraction: Input should be less than 1"),
    ({"hard_fraction": 0}, "generalisation.hard_fraction: Input should be greater than 0"),
    ({"baseline": "lie"}, "baseline 'lie' must be one of variants ['truth', 'honesty']"),
    ({"variants": ["truth", "honesty", "tune-out"]}, "generalisation.variants: no variant named 'tune-out'"),
    ({"folds": 2}, "folds > 1 needs holdout_topics: auto"),
    ({"seeds": [5]}, "generalisation.seeds must be a subset of the experiment's seeds [0]"),
    ({"leave_topic_out": False, "easy_to_hard": False}, "nothing to do"),
])
def test_config_errors_name_the_key(tiny_dir, study, fragment):
    with pytest.raises(ReptuneError, match=re.escape(fragment)) as info:
        parse_config(_config(tiny_dir, **study))
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- the pieces


def test_auto_folds_are_seeded_disjoint_and_never_train_on_what_they_hold_out():
    topics = [f"t{i}" for i in range(10)]
    study = SimpleNamespace(holdout_topics="auto", holdout_count=3, folds=3, holdout_seed=7)
    folds = study_module.plan_folds(study, topics * 2)
    assert folds == study_module.plan_folds(study, topics)  # seeded
    held = [set(f.holdout) for f in folds]
    assert all(len(h) == 3 for h in held) and not (held[0] & held[1] or held[0] & held[2] or held[1] & held[2])
    assert all(set(f.train_topics) == set(topics) - set(f.holdout) for f in folds)
    assert study_module.plan_folds(SimpleNamespace(**{**vars(study), "holdout_seed": 8}), topics) != folds


def test_easiest_keeps_whole_twins_by_margin_and_hard_items_the_lowest():
    rows = [{"pair": p, "topic": "x"} for p in ("a", "b", "c", "d") for _ in range(2)]
    keep, cut = study_module.easiest(rows, {"a": 0.5, "b": 3.0, "c": -1.0, "d": 2.0}, True, True, 0.5)
    assert sorted({rows[i]["pair"] for i in keep}) == ["b", "d"] and len(keep) == 4 and cut == 2.0
    hard, top = study_module.hard_items({"1": 0.2, "2": -3.0, "3": 1.0, "4": -0.1}, ["1", "2", "3", "4"], 0.5)
    assert hard == ["2", "4"] and top == -0.1


def test_compare_is_mcnemar_on_binary_items_and_a_sign_flip_on_fold_means():
    settings = ClaimSettings()
    a = {str(i): float(i % 2) for i in range(40)}
    b = {str(i): 1.0 for i in range(40)}
    binary = study_module.compare(a, b, 0, settings)
    assert binary["method"].startswith("McNemar") and binary["discordant"] == 20 and binary["effect"] == pytest.approx(0.5)
    means = study_module.compare({k: v / 2 for k, v in a.items()}, b, 0, settings)
    assert means["method"].startswith("paired sign-flip") and means["effect"] == pytest.approx(0.75) and means["p_value"] < 0.01


def test_independent_bootstrap_diff_covers_the_difference():
    from reptune.evaluation.statistics import independent_bootstrap_diff

    rng = np.random.default_rng(0)
    diff, low, high = independent_bootstrap_diff(rng.normal(0.3, 1, 400), rng.normal(0.0, 1, 300), seed=1)
    assert low < diff < high and low < 0.3 < high and high - low < 0.4
    one = independent_bootstrap_diff([1.0], [0.0, 1.0])
    assert one[0] == 0.5 and np.isnan(one[1]) and np.isnan(one[2])  # too few items for an interval


def test_folds_pool_in_distribution_items_as_per_item_means():
    """With two folds an in-distribution item is read by each fold that trained on its topic: its value is their mean."""
    pooled = study_module.mean_over([{"a": 1.0, "b": 0.0}, {"a": 0.0, "c": 1.0}])
    assert pooled == {"a": 0.5, "b": 0.0, "c": 1.0}
    row = study_module.set_row("honesty", 0, "id", "leave-topic-out", pooled, {"a": 0.0, "b": 0.0, "c": 1.0}, None)
    assert row["n"] == 3 and row["value"] == pytest.approx(0.5) and row["gain"] == pytest.approx(0.5 / 3)
    assert row["ci_low"] <= row["value"] <= row["ci_high"]  # a bootstrap interval (the values are not 0/1)


def test_the_eta_counts_one_training_and_evaluation_per_fold_and_easy_to_hard(tiny_dir):
    from reptune.pipeline.studies import estimate_studies

    unit = {"train_step": 1.0, "eval_task": 10.0}
    config = parse_config(_config(tiny_dir, holdout_topics="auto", folds=2, holdout_count=1))
    steps = max(v.steps or config.train.steps for v in config.variants if v.name in config.generalisation.variants)
    runs = (2 + 1) * len(config.generalisation.variants)  # two folds and easy-to-hard, per variant, one seed
    assert estimate_studies(config, unit) == runs * (steps + 10.0) + 10.0  # + the untuned pass over the train split
    off = parse_config(_config(tiny_dir, enabled=False))
    assert estimate_studies(off, unit) == 0.0
