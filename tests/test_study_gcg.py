"""The gcg study (GCG attacks on untuned and tuned models at one budget) end to end on a tiny model, its statistics and its bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from reptune.errors import ReptuneError
from reptune.evaluation import load_eval_results
from reptune.evaluation.registry import TaskResult
from reptune.pipeline import parse_config, run_experiment
from reptune.pipeline import runner as runner_module
from reptune.pipeline.claims import ClaimSettings
from reptune.pipeline.studies.gcg_analysis import comparisons, gcg_claim, model_row, one_word

pytest.importorskip("nanogcg")

LIMIT = 3
BUDGET = {"steps": 2, "search_width": 4, "suffix_length": 2, "topk": 4}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine lose 10x to it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(tiny_dir: Path, **gcg) -> dict:
    return {
        "name": "gcg", "model": str(tiny_dir), "precision": "fp32", "seeds": [0],
        "data": {"limit": 60}, "vector": {"pairs_limit": 8},
        "sweep": {"multipliers": [-4, 4], "limit": 4, "layers": "vector"},
        "train": {"steps": 1, "eval_every": 1, "batch_size": 2, "span": 2},
        "variants": [{"name": "truth", "preset": "truth", "counter": "none"}, {"name": "honesty", "preset": "honesty", "counter": "none"}],
        "evaluation": {"tasks": ["facts-twin"], "limit": 4, "representation_items": 2, "batch_size": 4},
        "robustness": {"enabled": False}, "projection": {"enabled": False}, "learnability": {"enabled": False},
        "gcg": {"enabled": True, "models": ["untuned", "truth", "honesty"], "limit": LIMIT, **BUDGET, **gcg},
    }


@pytest.fixture(scope="module")
def attacked(tiny_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("gcg-study") / "run"
    run = run_experiment(parse_config(_config(tiny_dir)), run_dir, progress=False)
    return run, run_dir


def _records(run_dir: Path, row: dict) -> list[dict]:
    return load_eval_results(run_dir / row["file"]).tasks["gcg"].records


def test_every_model_is_attacked_at_the_same_budget_and_reported(attacked):
    run, run_dir = attacked
    section = run.results["studies"]["gcg"]
    rows = {(r["level"], r["mode"]): r for r in section["rows"]}
    assert set(rows) == {("untuned", "direct"), ("truth:s0", "direct"), ("truth:s0", "transfer"), ("honesty:s0", "direct"), ("honesty:s0", "transfer")}
    assert section["n"] == LIMIT and section["budget"]["steps"] == BUDGET["steps"]
    for row in rows.values():
        records = _records(run_dir, row)
        assert [r["id"] for r in records] == [str(i) for i in range(LIMIT)]  # the same first test statements everywhere
        assert row["attack_success_rate"]["value"] == pytest.approx(sum(r["success"] for r in records) / LIMIT)
        assert row["mean_loss"]["value"] == pytest.approx(sum(r["loss"] for r in records) / LIMIT)
        if row["mode"] == "direct":
            details = load_eval_results(run_dir / row["file"]).tasks["gcg"].details
            assert details["budget"] == {**BUDGET, "n_replace": 1}
    assert (run_dir / "figures" / "gcg.png").is_file()
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    table = report.split("Study: GCG", 1)[1].split("### Models", 1)[1]
    for row in section["rows"]:  # the report shows results.json's numbers
        line = next(line for line in table.splitlines() if line.startswith(f"| {row['level']} | {row['mode']} |"))
        assert f"| {row['attack_success_rate']['value']:.3f} |" in line
    claim = next(c for c in run.results["claims"] if c["id"] == "resists-gcg")
    assert claim["verdict"] in {"supported", "not supported", "inconclusive", "not tested"}


def test_transfer_applies_the_untuned_suffixes_item_by_item(attacked):
    run, run_dir = attacked
    rows = {(r["level"], r["mode"]): r for r in run.results["studies"]["gcg"]["rows"]}
    found = [r["suffix"] for r in _records(run_dir, rows[("untuned", "direct")])]
    for level in ("truth:s0", "honesty:s0"):
        moved = _records(run_dir, rows[(level, "transfer")])
        assert [r["suffix"] for r in moved] == found and all(r["transferred"] for r in moved)


def test_a_rerun_reuses_every_attack(attacked, tiny_dir):
    run, run_dir = attacked
    assert sorted(n for n in run.stages_run if n.startswith("gcg:")) == sorted(
        ["gcg:untuned", "gcg:truth:s0", "gcg:truth:s0+transfer", "gcg:honesty:s0", "gcg:honesty:s0+transfer"])
    again = run_experiment(parse_config(_config(tiny_dir)), run_dir, progress=False)
    assert not [name for name in again.stages_run if name.startswith(("gcg:", "eval:", "train:"))]
    assert again.results["studies"]["gcg"]["rows"] == run.results["studies"]["gcg"]["rows"]


def test_a_moved_run_keeps_its_attacks(attacked, tiny_dir, tmp_path):
    """The attacks' stage keys hold no absolute path (the data and the suffixes are run-relative)."""
    import shutil

    _, run_dir = attacked
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    again = run_experiment(parse_config(_config(tiny_dir)), moved, progress=False)
    assert not [name for name in again.stages_run if name.startswith("gcg:")]


@pytest.mark.parametrize(("gcg", "fragment"), [
    ({"steps": 0}, "gcg.steps"),
    ({"search_width": 0}, "gcg.search_width"),
    ({"suffix_length": 0}, "gcg.suffix_length"),
    ({"limit": 0}, "gcg.limit"),
    ({"models": ["untuned", "truth", "honestly"], "candidate": "truth", "baseline": "untuned"}, "gcg.models: no variant named 'honestly'"),
    ({"candidate": "tune-out"}, "candidate 'tune-out' must be one of models"),
    ({"baseline": "honesty"}, "baseline and candidate must be different"),
    ({"models": ["truth", "honesty"]}, "transfer applies the untuned model's suffixes"),
    ({"seed": 3}, "gcg.seed 3 is not one of the experiment's seeds"),
    ({"format": "mc"}, "gcg.format"),
    ({"measure": "distance"}, "gcg.measure"),
])
def test_bad_gcg_config_is_a_one_line_error_naming_the_key(tiny_dir, gcg, fragment):
    with pytest.raises(ReptuneError, match=re.escape(fragment)) as info:
        parse_config(_config(tiny_dir, **gcg))
    assert "\n" not in str(info.value)


def test_a_variant_not_trained_at_the_seed_is_refused(tiny_dir):
    config = _config(tiny_dir, seed=1)
    config["seeds"] = [0, 1]
    config["variants"][1]["seeds"] = [0]
    with pytest.raises(ReptuneError, match=re.escape("gcg.seed: variant 'honesty' is not trained with seed 1")):
        parse_config(config)


def test_limit_beyond_the_test_split_fails_before_model_work(tiny_dir, tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(runner_module, "load_model", no_model)
    with pytest.raises(ReptuneError, match=r"gcg.limit 500 is more than the \d+ statements of the test split") as info:
        run_experiment(parse_config(_config(tiny_dir, limit=500)), tmp_path / "run", progress=False)
    assert "\n" not in str(info.value) and not (tmp_path / "run" / "stages" / "vector").exists()


def test_cli_reports_a_bad_gcg_key_on_one_line(cli_run, tmp_path, tiny_dir):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(_config(tiny_dir, steps=0)), encoding="utf-8")
    result = cli_run("run", path, "-o", tmp_path / "run")
    assert result.code == 2 and len(result.error_lines()) == 1 and "gcg.steps" in result.error_lines()[0]
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- the statistics, on made-up records


def _result(losses: list[float], successes: list[bool], answers: list[str]) -> TaskResult:
    records = [{"id": str(i), "loss": loss, "success": ok, "base_loss": loss + 1.0, "base_success": False, "base_answer": answer, "suffix": "x"}
               for i, (loss, ok, answer) in enumerate(zip(losses, successes, answers))]
    return TaskResult(task="gcg", metrics={}, records=records, primary="attack_success_rate", binary_key="success", continuous_key="loss")


def _section(runs: dict, settings: ClaimSettings) -> dict:
    rows = [model_row(m, None if m == "untuned" else 0, mode, run["result"], "f", settings) for m, modes in runs.items() for mode, run in modes.items()]
    return {"baseline": "truth", "candidate": "honesty", "format": "word", "n": 12, "budget": {"steps": 1, "search_width": 1, "suffix_length": 1},
            "rows": rows, "comparisons": comparisons(runs, "truth", "honesty", settings)}


def test_claim_is_judged_on_the_per_item_loss_and_not_tested_when_a_model_answers_one_word():
    settings = ClaimSettings(n_resamples=300)
    varied = ["True", "False"] * 6
    truth = _result([0.5] * 12, [True] * 8 + [False] * 4, varied)
    honesty = _result([1.5 + 0.1 * i for i in range(12)], [False] * 12, varied)
    runs = {"untuned": {"direct": {"result": truth}}, "truth": {"direct": {"result": truth}}, "honesty": {"direct": {"result": honesty}}}
    claim = gcg_claim(_section(runs, settings), 0, "loss")
    (test,) = claim["tests"]
    assert test["effect"] == pytest.approx(1.0 + 0.1 * 5.5) and test["effect_ok"] and test["p_value"] < 0.01
    assert test["success"]["effect"] == pytest.approx(8 / 12) and test["success"]["discordant"] == 8
    assert not any(claim["problems"].values())
    by_success = gcg_claim(_section(runs, settings), 0, "success")["tests"][0]  # measure: success judges by McNemar
    assert by_success["effect"] == pytest.approx(8 / 12) and by_success["method"].startswith("McNemar")
    one = _result([1.5] * 12, [False] * 12, ["False"] * 12)
    runs["honesty"] = {"direct": {"result": one}}
    claim = gcg_claim(_section(runs, settings), 0)
    assert claim["problems"]["degenerate"] and "answers 'False' unattacked on 100% of 12 items" in claim["problems"]["degenerate"][0]
    assert one_word(truth.records, 0.9) is None


def _moved(base: list[float], loss: list[float]) -> TaskResult:
    records = [{"id": str(i), "loss": after, "success": False, "base_loss": before, "base_success": False, "base_answer": None, "suffix": "x"}
               for i, (before, after) in enumerate(zip(base, loss))]
    return TaskResult(task="gcg", metrics={}, records=records, primary="attack_success_rate", binary_key="success", continuous_key="loss")


def test_by_default_resisting_is_moving_less_not_starting_farther_away():
    settings = ClaimSettings(n_resamples=300)
    base = [3.0 + 0.25 * i for i in range(12)]  # binary fractions: the differences below are exact
    truth = _moved(base, [b - 0.5 for b in base])
    # honesty starts 1 nat/token farther from the target and the attack pulls it up as far: it ends higher, but does not resist
    honesty = _moved([b + 1.0 for b in base], [b + 0.5 for b in base])
    runs = {"untuned": {"direct": {"result": truth}}, "truth": {"direct": {"result": truth}}, "honesty": {"direct": {"result": honesty}}}
    by_loss = gcg_claim(_section(runs, settings), 0, "loss")["tests"][0]
    assert by_loss["effect"] == pytest.approx(1.0) and by_loss["effect_ok"] and by_loss["p_value"] < 0.001
    (test,) = gcg_claim(_section(runs, settings), 0)["tests"]  # the default: the suffix effect
    assert test["effect"] == pytest.approx(0.0, abs=1e-12) and not test["effect_ok"] and test["p_value"] == 1.0
    assert test["method"] == "paired sign-flip test on the per-item suffix effect" and test["min_p"] == 1.0  # no item differs
    # honesty moved 0.25 less on every item: it resists, a - b = +0.25; 12 items all one way, p = 2 / 4096
    runs["honesty"] = {"direct": {"result": _moved(base, [b - 0.25 for b in base])}}
    claim = gcg_claim(_section(runs, settings), 0)
    (test,) = claim["tests"]
    assert test["effect"] == pytest.approx(0.25) and test["effect_ok"] and test["p_value"] == pytest.approx(2 / 4096)
    assert test["min_p"] == pytest.approx(2 / 4096) and test["suffix_effect"]["a_value"] == pytest.approx(0.5)
    assert "suffix effect honesty 0.250 vs truth 0.500" in claim["evidence"] and "moves it less" in claim["claim"]
    assert test["mde"] is None  # every item moved 0.25 less: no spread to size an effect from
    # on 4 items no effect is detectable: the comparison has no MDE (the report's table shows "-")
    few = {m: {"direct": {"result": _moved(base[:4], [b - shift for b in base[:4]])}} for m, shift in (("untuned", 0.5), ("truth", 0.5), ("honesty", 0.25))}
    row = next(r for r in comparisons(few, "truth", "honesty", settings) if r["mode"] == "direct")
    assert row["effect"]["min_p"] == 0.125 and row["effect"]["mde"] is None and row["loss"]["mde"] is None and row["success"]["mde"] is None


def test_the_claim_is_not_tested_in_the_run_when_its_models_answer_one_word(attacked):
    run, _ = attacked
    section = run.results["studies"]["gcg"]
    claim = next(c for c in run.results["claims"] if c["id"] == "resists-gcg")
    degenerate = [r for r in section["rows"] if r["model"] in ("truth", "honesty") and r["mode"] == "direct" and r["degenerate"]]
    if degenerate:
        assert claim["verdict"] == "not tested"
    else:
        assert claim["verdict"] != "not tested"


def test_the_eta_counts_every_attack(tiny_dir):
    from reptune.pipeline.studies import estimate_studies

    unit = {"eval_task": 12.0, "train_step": 1.3}
    cost = estimate_studies(parse_config(_config(tiny_dir)), unit)
    assert cost == pytest.approx(0.2 * (3 * LIMIT * BUDGET["steps"] * (BUDGET["search_width"] + 3) + 2 * LIMIT * 2))
    assert estimate_studies(parse_config(_config(tiny_dir, enabled=False)), unit) == 0.0


def test_shipped_study_config_is_the_demo_plus_the_study():
    from reptune.pipeline import builtin_config, load_config

    study, demo = load_config(builtin_config("study-gcg")), load_config(builtin_config("demo"))
    assert study.gcg.enabled and demo.gcg.enabled and demo.gcg.limit < study.gcg.limit  # the demo's is reduced
    assert not study.stacking.enabled and not study.sample_efficiency.enabled and not study.generalisation.enabled
    drop = {"name", "stacking", "sample_efficiency", "generalisation", "gcg"}
    assert study.model_dump(exclude=drop) == demo.model_dump(exclude=drop)  # the same main stages as the demo's


def test_twin_format_attacks_twin_preference_and_is_never_degenerate(tiny_dir, tmp_path):
    """gcg.format twin: every model is attacked on the same first test twins, success is preferring
    the false twin, and no model is marked degenerate (twin preference has no one-word answer)."""
    run_dir = tmp_path / "run"
    run = run_experiment(parse_config(_config(tiny_dir, format="twin", transfer=False)), run_dir, progress=False)
    section = run.results["studies"]["gcg"]
    assert section["format"] == "twin" and section["n"] == LIMIT
    ids = None
    for row in section["rows"]:
        records = _records(run_dir, row)
        assert all(r["success"] == (r["margin"] < 0) and "base_answer" not in r for r in records)
        ids = ids or [r["id"] for r in records]
        assert [r["id"] for r in records] == ids and len(ids) == LIMIT
        assert not row["degenerate"]
    claim = next(c for c in run.results["claims"] if c["id"] == "resists-gcg")
    assert "degenerate" not in (claim.get("evidence") or "")
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "the target is the false twin" in report
    with pytest.raises(ReptuneError, match=r"gcg.limit 500 is more than the \d+ twins of the test split"):
        run_experiment(parse_config(_config(tiny_dir, format="twin", limit=500)), tmp_path / "other", progress=False)
