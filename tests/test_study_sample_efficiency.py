"""The sample-efficiency study: nested label-balanced subsets, reuse of the main run at n = all, the
claim from per-item records, the report, and bad input refused before any model work."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from reptune.data import Statement
from reptune.data.ab import statements_to_ab
from reptune.errors import ReptuneError
from reptune.evaluation.statistics import sign_flip_test
from reptune.pipeline import parse_config, run_experiment
from reptune.pipeline.claims import ClaimSettings, judge
from reptune.pipeline.studies import sample_efficiency as se
from reptune.reporting.document import fmt

SIZES = [4, 8, "all"]


def _config(tiny_dir: Path, **study) -> dict:
    """A tiny twin run (the demo's item kind), the study on seed 1: the main run trained truth with it (n = all is
    reused) but honesty only with seed 0 (n = all is trained under the main stage name and evaluated by the study)."""
    return {
        "name": "se", "model": str(tiny_dir), "precision": "fp32", "seeds": [0, 1],
        "data": {"limit": 80}, "vector": {"pairs_limit": 8, "read_layers": "1-2"},
        "sweep": {"multipliers": [-4, 4], "limit": 4, "layers": "vector"},
        "train": {"layers": "1-2", "steps": 2, "eval_every": 2, "batch_size": 4},
        "variants": [{"name": "truth", "preset": "truth", "counter": "none", "seeds": [1]},
                     {"name": "honesty", "preset": "honesty", "counter": "none", "seeds": [0]}],
        "evaluation": {"tasks": ["facts-twin"], "limit": 10, "representation_items": 4},
        "learnability": {"enabled": False}, "robustness": {"enabled": False}, "projection": {"enabled": False},
        "sample_efficiency": {"enabled": True, "sizes": SIZES, "seeds": [1], "limit": 8, **study},
    }


@pytest.fixture(scope="module")
def finished(tiny_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("se") / "run"
    run = run_experiment(parse_config(_config(tiny_dir)), run_dir, progress=False)
    return run, run.results["studies"]["sample_efficiency"]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------- the subsets


def test_statement_subsets_are_nested_label_balanced_and_letter_balanced():
    statements = [Statement(f"statement {i}", int(i % 3 != 0), ("a", "b")[i % 2]) for i in range(90)]  # 60 true, 30 false
    order = se.nested_order([[s] for s in statements], twins=False, seed=3)
    assert sorted(s.text for [s] in order) == sorted(s.text for s in statements)  # a permutation: every prefix is a subset of the next
    assert order == se.nested_order([[s] for s in statements], twins=False, seed=3) != se.nested_order([[s] for s in statements], twins=False, seed=4)
    for n in range(2, 61, 2):  # as many true as false in every even prefix while both labels last
        assert sum(s.label for [s] in order[:n]) * 2 == n
    for n in (4, 16, 32, 60):  # A/B options alternate by position: half the correct letters are A
        assert sum(item.correct for item in statements_to_ab([s for [s] in order[:n]])) * 2 == n


def test_twin_subsets_are_whole_pairs_and_keep_each_topic_share():
    topics = ["math"] * 20 + ["animals"] * 10 + ["history"] * 10
    units = [[Statement(f"true {i}", 1, topic, str(i)), Statement(f"false {i}", 0, topic, str(i))] for i, topic in enumerate(topics)]
    order = se.nested_order(units, twins=True, seed=0)
    assert sorted(u[0].pair for u in order) == [str(i) for i in sorted(range(40), key=str)]
    for n in (4, 8, 16, 32):
        share = sum(u[0].topic == "math" for u in order[:n]) / n
        assert abs(share - 0.5) <= 1 / n  # every prefix holds each topic's share to +-1 pair


def test_the_run_writes_nested_balanced_subsets(finished):
    run, study = finished
    small = [_rows(run.run_dir / study["subsets"]["1"][str(n)]) for n in (4, 8)]
    assert small[0] == small[1][: len(small[0])]  # the 8 twins start with the 4
    for rows, n in zip(small, (4, 8)):
        pairs: dict[str, list[str]] = {}
        for row in rows:
            pairs.setdefault(row["pair"], []).append(row["label"])
        assert len(pairs) == n and all(sorted(labels) == ["0", "1"] for labels in pairs.values())  # n whole twins
    train = {row["pair"] for row in _rows(run.run_dir / "stages" / "data" / "train.csv")}
    assert {row["pair"] for row in small[1]} <= train


# ----------------------------------------------------------------------------- the run


def test_every_size_variant_and_seed_is_trained_and_evaluated_once(finished):
    run, study = finished
    assert [(r["size"], r["variant"]) for r in study["rows"]] == [(s, v) for s in ("4", "8", "all") for v in ("truth", "honesty")]
    names = set(run.stages_run)
    assert {f"{kind}:se-{n}:{v}:s1" for kind in ("train", "eval") for n in (4, 8) for v in ("truth", "honesty")} <= names
    # n = all is the main run's training and evaluation: never redone...
    assert not {name for name in names if name.startswith(("train:se-all", "eval:se-all:truth"))}
    # ...except honesty's seed 1, which the main run did not train: the main stage name, the study's evaluation
    assert {"train:honesty:s1", "eval:se-all:honesty:s1"} <= names
    row = {(r["size"], r["variant"]): r for r in study["rows"]}
    assert row[("all", "truth")]["reused"] == [True] and row[("all", "honesty")]["reused"] == [False]
    for r in study["rows"]:  # the batch never exceeds the items trained on (n minus the trainer's validation slice)
        assert all(b <= t for b, t in zip(r["batch_size"], r["train_items"]))
        assert all(t + v == r["n"] for t, v in zip(r["train_items"], r["val_items"]))
        assert r["budget_steps"] == [2] and all(s <= 2 for s in r["steps"])
    assert row[("4", "truth")]["batch_size"] == [3]  # 4 twins, one held out for validation


def _correct(run_dir: Path, rel: str, limit: int) -> dict[str, bool]:
    records = json.loads((run_dir / rel).read_text(encoding="utf-8"))["tasks"]["facts-twin"]["records"][:limit]
    return {r["id"]: bool(r["correct"]) for r in records}


def test_accuracies_and_the_claim_come_from_the_per_item_records(finished):
    run, study = finished
    files = {(str(n), v): f"stages/eval-se-{n}-{v}-s1/results.json" for n in (4, 8) for v in ("truth", "honesty")}
    files |= {("all", "truth"): run.results["eval_files"]["truth"]["1"], ("all", "honesty"): "stages/eval-se-all-honesty-s1/results.json"}
    correct = {(n, v, 1): _correct(run.run_dir, rel, 8) for (n, v), rel in files.items()}
    assert study["items"] == 8 and all(list(c) == list(correct[("4", "truth", 1)]) for c in correct.values())  # the same items everywhere
    for row in study["rows"]:
        value = np.mean(list(correct[(row["size"], row["variant"], 1)].values()))
        assert row["per_seed"] == [pytest.approx(value)] and row["value"] == pytest.approx(value)
        assert row["ci_low"] <= value <= row["ci_high"]
    untuned = _correct(run.run_dir, run.results["eval_files"]["untuned"]["0"], 8)
    assert study["untuned"]["value"] == pytest.approx(np.mean(list(untuned.values())))
    claim = next(c for c in run.results["claims"] if c["id"] == "sample-efficient")
    for test in claim["tests"]:
        s = test["seed"]
        diff = np.mean([[correct[(n, "honesty", s)][i] - correct[(n, "truth", s)][i] for i in correct[(n, "truth", s)]] for n in ("4", "8")], axis=0)
        assert test["effect"] == pytest.approx(diff.mean()) and test["p_value"] == pytest.approx(sign_flip_test(diff, seed=s))
        assert test["n"] == 8 and test["mde"] > 0
    assert [t["seed"] for t in claim["tests"]] == [1]
    assert claim["verdict"] in {"supported", "not supported", "inconclusive", "not tested"}
    assert "p_holm" in claim  # judged in the paper's claims family


def test_report_shows_the_study_numbers(finished):
    run, study = finished
    report = (run.run_dir / "report.md").read_text(encoding="utf-8")
    part = report.split("## Study: sample efficiency", 1)[1].split("\n## ", 1)[0]
    assert (run.run_dir / "figures" / "sample-efficiency.png").stat().st_size > 1000
    for row in study["rows"]:
        assert f"| {row['size']} | {row['variant']} | {fmt(row['value'])} | [{fmt(row['ci_low'])}, {fmt(row['ci_high'])}] |" in part
    assert f"accuracy {fmt(study['target']['value'])}" in part and "`sample-efficient`" in part


# ----------------------------------------------------------------------------- the numbers


def _fake(values: dict[tuple[str, str, int], list[float]]) -> dict:
    return {key: np.array(v, dtype=np.float64) for key, v in values.items()}


def test_claim_averages_the_sizes_below_all_and_degenerate_conditions_block_it():
    sizes = [("16", 16), ("32", 32), ("all", 64)]
    ones, zeros = [1.0] * 20, [0.0] * 20
    correct = _fake({("16", "truth", 0): zeros, ("16", "honesty", 0): ones, ("32", "truth", 0): ones, ("32", "honesty", 0): ones,
                     ("all", "truth", 0): ones, ("all", "honesty", 0): zeros})  # all must not count: the low-data regime only
    settings = ClaimSettings()
    spec = se.claim(correct, dict.fromkeys(correct), sizes, "truth", "honesty", [0], settings, "facts-twin")
    [test] = spec["tests"]
    assert test["effect"] == pytest.approx(0.5) and test["p_value"] < 0.001 and test["effect_ok"]
    [claim] = [c for c in judge({}, extra_specs=[spec]) if c["id"] == "sample-efficient"]
    assert claim["verdict"] == "supported"
    degenerate = dict.fromkeys(correct) | {("32", "truth", 0): "the same twin (true) on 100% of 20 items"}
    spec = se.claim(correct, degenerate, sizes, "truth", "honesty", [0], settings, "facts-twin")
    [claim] = [c for c in judge({}, extra_specs=[spec]) if c["id"] == "sample-efficient"]
    assert claim["verdict"] == "not tested" and "truth at n = 32" in claim["reason"]
    only_all = se.claim(correct, dict.fromkeys(correct), [("all", 64)], "truth", "honesty", [0], settings, "facts-twin")
    [claim] = [c for c in judge({}, extra_specs=[only_all]) if c["id"] == "sample-efficient"]
    assert claim["verdict"] == "not tested" and "no size below all" in claim["reason"]


def test_rows_average_seeds_with_the_envelope_of_their_wilson_intervals():
    from reptune.evaluation.statistics import wilson_interval

    correct = _fake({("all", "truth", 0): [1, 1, 1, 0], ("all", "truth", 1): [1, 0, 0, 0]})
    run = {"steps": 3, "best_step": 2, "budget_steps": 3, "batch_size": 2, "train_items": 9, "val_items": 1, "reused": True, "cosine": 0.1}
    [row] = se.accuracy_rows(correct, dict.fromkeys(correct, run), dict.fromkeys(correct), [("all", 10)], ["truth"], [0, 1])
    assert row["per_seed"] == [0.75, 0.25] and row["value"] == 0.5
    assert (row["ci_low"], row["ci_high"]) == (wilson_interval(1, 4)[0], wilson_interval(3, 4)[1])
    diff = se.differences(_fake({("all", "a", 0): [0, 0, 1, 1], ("all", "b", 0): [1, 1, 1, 1]}), [("all", 10)], "a", "b", [0], ClaimSettings())
    assert diff[0]["value"] == 0.5 and diff[0]["per_seed"][0]["ci_low"] <= 0.5 <= diff[0]["per_seed"][0]["ci_high"]


def test_target_and_the_size_each_variant_needs():
    rows = [{"size": s, "n": n, "variant": v, "value": val, "per_seed": [val, val - 0.1]}
            for s, n, v, val in [("16", 16, "truth", 0.6), ("16", 16, "honesty", 0.75), ("64", 64, "truth", 0.78),
                                 ("64", 64, "honesty", 0.7), ("all", 200, "truth", 0.8), ("all", 200, "honesty", 0.7)]]
    target = se.target_of(rows, "truth", "auto", 0.02)
    assert target["value"] == pytest.approx(0.78) and target["reference_size"] == "all"
    truth, honesty = se.reach(rows, target["value"], ["truth", "honesty"])
    assert (truth["size"], truth["per_seed"]) == ("64", ["64", None]) and "note" not in truth
    assert honesty["size"] is None and honesty["note"].startswith("never reaches the target") and honesty["best_size"] == "16"
    assert se.target_of(rows, "truth", 0.7, 0.02) == {"value": 0.7, "rule": "fixed in the config (sample_efficiency.target)"}


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("study", "fragment"), [
    ({"sizes": [0, 16]}, "sample_efficiency.sizes: size 0 is below 2"),
    ({"sizes": [-4, "all"]}, "sample_efficiency.sizes: size -4 is below 2"),
    ({"sizes": [16, 32, 16]}, "sample_efficiency.sizes: sizes repeat: 16"),
    ({"sizes": [16, "most"]}, "a size is a whole number of training items or 'all'"),
    ({"variants": ["truth", "honest"]}, "sample_efficiency.variants: no variant 'honest' in this experiment"),
    ({"variants": ["truth", "truth"]}, "needs two different variants"),
    ({"target": 1.5}, "sample_efficiency.target"),
    ({"seeds": [7]}, "sample_efficiency.seeds must be a non-empty subset"),
])
def test_bad_study_config_is_one_line(tiny_dir, study, fragment):
    with pytest.raises(ReptuneError, match=re.escape(fragment)) as info:
        parse_config(_config(tiny_dir, **study))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("study", "fragment"), [
    ({"sizes": [8, 400]}, "sample_efficiency.sizes: 400 is more than the 24 training twins of the train split"),
    ({"sizes": [8, 24, "all"]}, "sample_efficiency.sizes: 24 is the whole train split"),
    ({"limit": 50}, "sample_efficiency.limit: 50 is above the 10 items the main run evaluates facts-twin on"),
])
def test_sizes_the_data_cannot_give_fail_before_any_model_work(tmp_path, tiny_dir, monkeypatch, study, fragment):
    from reptune.pipeline import runner

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(runner, "load_model", no_model)
    with pytest.raises(ReptuneError, match=re.escape(fragment)) as info:
        run_experiment(parse_config(_config(tiny_dir, **study)), tmp_path / "run", progress=False)
    assert "\n" not in str(info.value)
    assert [p.name for p in (tmp_path / "run" / "stages").iterdir()] == ["data"]


def test_check_counts_statements_for_ab_items(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("statement,label\n" + "".join(f"s{i},{i % 2}\n" for i in range(10)), encoding="utf-8")
    host = SimpleNamespace(config=parse_config({"sample_efficiency": {"enabled": True, "sizes": [12]}}), item_kind="ab",
                           headline="facts-ab", split_path=lambda split: path)
    with pytest.raises(ReptuneError, match=r"12 is more than the 10 training statements"):
        se.check(host)


def test_shipped_study_config_parses():
    from reptune.pipeline import builtin_config, load_config

    config = load_config(builtin_config("study-sample-efficiency"))
    assert config.sample_efficiency.enabled and config.sample_efficiency.variants == ["truth", "honesty"]
    assert "all" in config.sample_efficiency.sizes and max(n for n in config.sample_efficiency.sizes if n != "all") < 221
