"""The experiment pipeline end to end on a tiny model: files, consistency, caching, errors."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml

from reptune.errors import ReptuneError
from reptune.pipeline import StageError, load_config, parse_config, run_experiment, select_multipliers
from reptune.pipeline import runner as runner_module

TEXT = " ".join(f"The river number {i} flows into the sea near the old town, and the boats come back at night." for i in range(40))


def _config(tiny_dir: Path, tmp_path: Path, **changes) -> dict:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    config = {
        "name": "tiny",
        "model": str(tiny_dir),
        "precision": "fp32",
        "data": {"limit": 80},
        "vector": {"pairs_limit": 24},
        "sweep": {"multipliers": [-4, 0, 4], "limit": 12, "layers": "vector"},
        "variants": [{"name": "truth", "preset": "truth"}, {"name": "honesty", "preset": "honesty"}],
        "train": {"layers": "1-2", "steps": 3, "eval_every": 3, "batch_size": 4, "items": "ab"},
        "evaluation": {
            "headline": "facts-ab",
            "tasks": ["facts-ab", "perplexity", "kl", "tqa-ab"],
            "limit": 12,
            "limits": {"perplexity": 3, "kl": 4},
            "options": {
                "perplexity": {"window": 32, "stride": 32, "data": str(corpus)},
                "kl": {"data": str(corpus), "max_tokens": 24},
                "tqa-ab": {"data": str(tmp_path / "missing-tqa")},
            },
            "representation_items": 8,
        },
        "robustness": {"conditions": ["untuned", "honesty"], "multipliers": [-4, 0], "limit": 6},
        "projection": {"conditions": ["untuned", "honesty"], "prompts": ["Is the sky green?"]},
    }
    for dotted, value in changes.items():
        node = config
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return config


@pytest.fixture(scope="module")
def finished(tiny_dir, tmp_path_factory):
    """One complete tiny run, shared by the read-only tests below."""
    tmp = tmp_path_factory.mktemp("pipeline")
    config = parse_config(_config(tiny_dir, tmp))
    run = run_experiment(config, tmp / "run", progress=False)
    return config, run, tmp


def test_every_report_file_exists(finished):
    _, run, _ = finished
    root = run.run_dir
    for name in ("results.json", "report.md", "report.html", "config.yaml"):
        assert (root / name).is_file(), name
    html = (root / "report.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in html and 'src="figures/' not in html
    for image in re.findall(r"\]\((figures/[^)]+\.png)\)", (root / "report.md").read_text(encoding="utf-8")):
        assert (root / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((root / "results.json").read_text(encoding="utf-8"))
    assert results["format"] == "reptune-experiment/1"
    # the resolved config saved with the run reproduces the run's config
    assert parse_config(yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8"))) == finished[0]


def test_results_file_is_the_schema_written_back(finished):
    """results.json is written from the schema the report reads: read back, it writes the same text."""
    from reptune._io import json_safe
    from reptune.reporting.schema import ExperimentResults

    _, run, _ = finished
    text = (run.run_dir / "results.json").read_text(encoding="utf-8")
    again = ExperimentResults.model_validate(json.loads(text)).to_json()
    assert json.dumps(json_safe(again), indent=2, default=str) + "\n" == text
    assert list(again)[:3] == ["format", "name", "created"] and list(again)[-2:] == ["timings", "stages"]


def test_time_table_counts_items_and_steps_per_stage(finished):
    """Every stage records the work it did; the report's time table sums it per kind of stage."""
    _, run, _ = finished
    timings = run.results["timings"]
    counts = timings["counts"]
    assert set(counts) == set(timings["stages"])
    assert counts["train:truth:s0"]["steps"] == 3 and counts["train:honesty:s0"]["items"] == 0
    untuned = counts["eval:untuned"]["items"]
    assert untuned >= 12 and counts["eval:untuned"]["steps"] == 0  # facts-ab's 12 items and the other tasks'
    layers = json.loads((run.run_dir / "stages" / "robustness-untuned" / "stage.json").read_text())["inputs"]["layers"]
    assert counts["robustness:untuned"]["items"] == (len(layers) + 1) * 6  # x-4 at each layer, x0 once (shared), six items each
    report = (run.run_dir / "report.md").read_text(encoding="utf-8")
    table = report[report.index("## Where the time went"):]
    assert "| stage | runs | seconds | per run | items scored | steps trained | reused |" in table
    train_row = next(line for line in table.splitlines() if line.startswith("| train |"))
    assert train_row.split("|")[5:7] == [" - ", " 6 "]  # two trainings of 3 steps, no task items
    assert next(line for line in table.splitlines() if line.startswith("| eval (counter-steered) |"))


def test_conditions_tasks_and_skips(finished):
    _, run, _ = finished
    results = run.results
    ids = [c["id"] for c in results["conditions"]]
    assert ids == ["untuned", "steer+", "steer-", "truth", "honesty", "truth@counter", "truth@counter-other", "truth@counter-random1",
                   "honesty@counter", "honesty@counter-other", "honesty@counter-random1"]
    assert results["tasks"] == ["facts-ab", "perplexity", "kl"]  # tqa-ab's data is missing: skipped, not fatal
    skipped = {s["what"]: s["reason"] for s in results["skipped"]}
    assert "tqa-ab" in skipped and "openended" in skipped
    # counter-steered conditions run only the counter tasks; steered conditions carry their multiplier
    assert set(results["scores"]["honesty@counter"]) == {"facts-ab"}
    assert set(results["scores"]["honesty"]) == {"facts-ab", "perplexity", "kl"}
    # KL: the untuned model against itself is 0; a steered one against the unsteered model, and a
    # tuned one against the base weights (not against itself), are not
    kl = {cond: results["scores"][cond]["kl"]["metrics"]["kl"]["value"] for cond in ("untuned", "steer+", "truth", "honesty")}
    assert kl["untuned"] == 0.0 and min(kl["steer+"], kl["truth"], kl["honesty"]) > 0
    sweep = results["sweep"]
    steer_plus = next(c for c in results["conditions"] if c["id"] == "steer+")
    assert steer_plus["steering"]["multiplier"] == sweep["selected"]["positive"] > 0
    assert {c["id"] for c in results["conditions"] if c["kind"] == "counter" and "vector" not in c["steering"]} == {"truth@counter", "honesty@counter"}
    assert [claim["id"] for claim in results["claims"]] == ["tuning-beats-steering", "generalises-to-truthfulqa", "resists-counter-steering", "small-capability-cost"]
    assert next(c for c in results["claims"] if c["id"] == "generalises-to-truthfulqa")["verdict"] == "not tested"
    assert set(results["robustness"]) == {"untuned", "honesty"}
    assert set(results["projection"]["by_condition"]) == {"untuned", "honesty"}
    # the trained layers and the loss layer follow the config and the vector layer
    truth = results["training"]["truth"]["0"]
    assert truth["layers"] == "1-2" and truth["steps"] == 3 and truth["loss_curves"]["step"] == [1, 2, 3]


def _table(markdown: str, heading: str) -> list[list[str]]:
    section = markdown.split(heading, 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    block = []
    for line in rows:
        block.append([cell.strip() for cell in line.strip("|").split("|")])
        if len(block) > 2 and not section.split(line, 1)[1].lstrip("\n").startswith("|"):
            break
    return [row for row in block[2:]]


def test_report_numbers_equal_results_and_eval_files(finished):
    _, run, _ = finished
    root = run.run_dir
    results = json.loads((root / "results.json").read_text(encoding="utf-8"))
    markdown = (root / "report.md").read_text(encoding="utf-8")
    headline = _table(markdown, "## Headline")
    assert len(headline) == len(results["headline"]["rows"])
    for cells, row in zip(headline, results["headline"]["rows"]):
        assert cells[0] == row["condition"]
        assert f"{row['value']:.3f}" in cells and f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]" in cells and str(row["n"]) in cells
    # results.json scores are the eval files' metrics, not re-derived numbers
    for cond, by_seed in results["eval_files"].items():
        evaluation = json.loads((root / by_seed["0"]).read_text(encoding="utf-8"))
        for task, entry in results["scores"][cond].items():
            for metric, value in entry["metrics"].items():
                assert value["value"] == pytest.approx(evaluation["tasks"][task]["metrics"][metric]["value"]), (cond, task, metric)
    # headline accuracy recomputed from the per-item records
    untuned = json.loads((root / results["eval_files"]["untuned"]["0"]).read_text(encoding="utf-8"))["tasks"]["facts-ab"]["records"]
    assert results["headline"]["rows"][0]["value"] == pytest.approx(sum(r["correct"] for r in untuned) / len(untuned))
    # every claim's verdict is printed in the report
    for claim in results["claims"]:
        assert f"**{claim['verdict']}**" in markdown


def test_rerun_reuses_every_stage_and_a_change_reruns_dependents(finished):
    config, run, tmp = finished
    assert run.stages_skipped == [] and len(run.stages_run) >= 12
    again = run_experiment(config, run.run_dir, progress=False)
    assert again.stages_run == [] and sorted(again.stages_skipped) == sorted(run.stages_run)
    assert again.results["headline"] == run.results["headline"]
    changed = parse_config(_config(Path(config.model), tmp, **{"train.steps": 4}))
    third = run_experiment(changed, run.run_dir, progress=False)
    assert {"data", "vector", "sweep", "eval:untuned", "eval:steer+", "eval:steer-"} <= set(third.stages_skipped)
    assert {"train:truth:s0", "train:honesty:s0", "eval:honesty:s0", "eval:honesty@counter:s0"} <= set(third.stages_run)
    assert third.results["training"]["truth"]["0"]["steps"] == 4


def test_weights_replaced_at_the_same_path_change_every_stage_key(tiny_dir, tmp_path):
    """A local model directory is identified by its files too: new weights at the same path give
    a new model key (in every stage's inputs), so a rerun does not reuse the old model's stages."""
    import shutil

    from conftest import build_model

    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    config = parse_config(_config(model, tmp_path))
    first = runner_module.Experiment(config, tmp_path / "run").model_key
    assert first == runner_module.Experiment(config, tmp_path / "run").model_key and first["files"]
    build_model("llama", chat=True, seed=1).model.save_pretrained(model)  # other weights, same path
    assert runner_module.Experiment(config, tmp_path / "run").model_key != first
    embedded = parse_config({**_config(model, tmp_path), "model": None})
    assert "files" not in runner_module.Experiment(embedded, tmp_path / "run").model_key  # a packaged model keeps its key


def test_the_progress_estimate_is_the_cost_of_the_stages_that_run(tiny_dir, tmp_path, monkeypatch):
    """The ETA's total (Experiment._estimate) adds up the same stage costs the run advances by:
    base-only tasks, single-seed variants, checks and counter vectors counted as they run."""
    from reptune import _progress

    monkeypatch.setattr(_progress, "interactive", lambda: False)
    seen = {}
    real_init = runner_module._Overall.__init__

    def keep(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        seen["overall"] = self

    monkeypatch.setattr(runner_module._Overall, "__init__", keep)
    config = parse_config({**_config(tiny_dir, tmp_path, **{
        "seeds": [0, 1], "evaluation.tasks": ["facts-ab", "kl"], "evaluation.base_only_tasks": ["kl"], "evaluation.limits": {"kl": 2},
        "variants": [{"name": "truth", "preset": "truth"}, {"name": "honesty", "preset": "honesty", "seeds": [0]}],
        "robustness.enabled": False, "projection.enabled": False}), "counter": {"random": 1}})
    run_experiment(config, tmp_path / "run", progress=True)
    overall = seen["overall"]
    assert overall.own == pytest.approx(overall.total, rel=1e-6)


def test_failed_stage_names_itself_and_earlier_stages_are_reused(tiny_dir, tmp_path, monkeypatch):
    config = parse_config(_config(tiny_dir, tmp_path, **{"variants": [{"name": "truth", "preset": "truth"}], "robustness.enabled": False, "projection.enabled": False}))
    import reptune.tuning

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(reptune.tuning, "tune", broken)
    with pytest.raises(StageError, match=r"stage 'train:truth:s0' failed: disk on fire"):
        run_experiment(config, tmp_path / "run", progress=False)
    monkeypatch.undo()
    done = run_experiment(config, tmp_path / "run", progress=False)
    assert {"data", "vector", "sweep", "eval:untuned"} <= set(done.stages_skipped)
    assert "train:truth:s0" in done.stages_run


def test_interrupted_stage_resumes(tiny_dir, tmp_path, monkeypatch):
    config = parse_config(_config(tiny_dir, tmp_path, **{"variants": [{"name": "truth", "preset": "truth"}], "robustness.enabled": False, "projection.enabled": False}))
    original = runner_module.Experiment._representation
    calls = {"n": 0}

    def interrupt_once(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # inside eval:steer+, after its tasks were scored
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(runner_module.Experiment, "_representation", interrupt_once)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tmp_path / "run", progress=False)
    stage = json.loads((tmp_path / "run" / "stages" / "eval-steer+" / "stage.json").read_text(encoding="utf-8"))
    assert stage["status"] == "running"
    assert (tmp_path / "run" / "stages" / "eval-steer+" / "facts-ab.json").is_file()  # finished task files survive
    done = run_experiment(config, tmp_path / "run", progress=False)
    assert {"data", "vector", "sweep", "eval:untuned"} <= set(done.stages_skipped) and "eval:steer+" in done.stages_run


def test_unknown_key_names_the_key(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: x\ntrain:\n  steps: 3\n  stepz: 4\n", encoding="utf-8")
    with pytest.raises(ReptuneError, match=r"unknown key 'train.stepz'"):
        load_config(path)
    with pytest.raises(ReptuneError, match=r"unknown key 'colour'"):
        parse_config({"colour": "red"})
    with pytest.raises(ReptuneError, match=r"variants.0.preset"):
        parse_config({"variants": [{"name": "a", "preset": "truthy"}]})
    with pytest.raises(ReptuneError, match=r"sweep.multipliers: needs at least one positive and one negative"):
        parse_config({"sweep": {"multipliers": [0, 2]}})


def test_bad_config_files(tmp_path):
    with pytest.raises(ReptuneError, match="experiment file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(ReptuneError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ReptuneError, match="expected a mapping"):
        load_config(listed)


def test_unloadable_model_is_one_clear_error(tmp_path):
    config = parse_config({"model": str(tmp_path / "no-such-model")})
    with pytest.raises(StageError, match=r"stage 'load-model' failed"):
        run_experiment(config, tmp_path / "run", progress=False)


def test_selection_rule_skips_degenerate_cells():
    rows = [
        {"multiplier": -8.0, "value": 0.1, "lie_rate": 0.9, "degenerate": True},
        {"multiplier": -4.0, "value": 0.3, "lie_rate": 0.7, "degenerate": False},
        {"multiplier": -2.0, "value": 0.3, "lie_rate": 0.7, "degenerate": False},
        {"multiplier": 0.0, "value": 0.5, "lie_rate": 0.5, "degenerate": False},
        {"multiplier": 2.0, "value": 0.6, "lie_rate": 0.4, "degenerate": False},
        {"multiplier": 4.0, "value": 0.6, "lie_rate": 0.4, "degenerate": False},
        {"multiplier": 8.0, "value": 0.9, "lie_rate": 0.1, "degenerate": True},
    ]
    selected, rule = select_multipliers(rows, 0.9)
    assert selected == {"positive": 2.0, "negative": -2.0}  # degenerate extremes excluded, ties to smaller |m|
    assert "90%" in rule
    all_bad = [dict(row, degenerate=row["multiplier"] != 0) for row in rows]
    selected, rule = select_multipliers(all_bad, 0.9)
    assert selected == {"positive": 2.0, "negative": -2.0} and "degenerate" in rule


def test_cli_run_print_config_and_unknown_key(tmp_path):
    from typer.testing import CliRunner

    from reptune.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["run", "demo", "--print-config", "--set", "train.steps=7"])
    assert result.exit_code == 0 and "steps: 7" in result.output
    bad = tmp_path / "exp.yaml"
    bad.write_text("evaluation:\n  taskz: [facts-ab]\n", encoding="utf-8")
    result = runner.invoke(app, ["run", str(bad), "-o", str(tmp_path / "run")])
    assert isinstance(result.exception, ReptuneError) and "evaluation.taskz" in str(result.exception)
    result = runner.invoke(app, ["run", "demo", "--print-config", "--set", "train.steps"])
    assert isinstance(result.exception, ReptuneError) and "--set expects KEY=VALUE" in str(result.exception)
    result = runner.invoke(app, ["run", "no-such-experiment"])
    assert isinstance(result.exception, ReptuneError) and "no built-in experiment 'no-such-experiment'" in str(result.exception)
    result = runner.invoke(app, ["report", str(tmp_path / "empty")])
    assert isinstance(result.exception, ReptuneError) and "results.json" in str(result.exception)


def test_cli_demo_runs_the_shipped_experiment(tiny_dir, tmp_path):
    """`reptune demo` is the shipped demo.yaml; here shrunk onto the tiny model."""
    from typer.testing import CliRunner

    from reptune.cli import app

    sets = [
        "data.limit=80", "vector.pairs_limit=16", "sweep.limit=8", "train.steps=2", "train.layers=1-2",
        "evaluation.tasks=[facts-ab]", "evaluation.limit=8", "evaluation.representation_items=4",
        "robustness.limit=4", "robustness.conditions=[untuned]", "projection.conditions=[untuned]",
        "variants=[{name: truth, preset: truth}, {name: honesty, preset: honesty}]",
        "sample_efficiency.sizes=[4, all]", "sample_efficiency.limit=8", "stacking.limit=8", "generalisation.steps=2",
        "gcg.limit=2", "gcg.steps=1", "gcg.search_width=4", "gcg.suffix_length=2", "gcg.topk=8",
    ]
    args = ["demo", "--model", str(tiny_dir), "-o", str(tmp_path / "demo")]
    for item in sets:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((tmp_path / "demo" / "config.yaml").read_text(encoding="utf-8"))
    assert config["name"] == "demo" and config["train"]["lr"] == 3.0e-4 and config["model"] == str(tiny_dir)
    assert (tmp_path / "demo" / "report.html").is_file()
    results = json.loads((tmp_path / "demo" / "results.json").read_text(encoding="utf-8"))
    assert set(results["studies"]) == {"stacking", "sample_efficiency", "generalisation", "gcg"}  # the reduced studies ran


def test_bad_variant_option_fails_before_training(tiny_dir, tmp_path):
    config = parse_config(_config(tiny_dir, tmp_path, variants=[{"name": "truth", "preset": "truth", "options": {"w_rep": -1}}]))
    with pytest.raises(StageError, match=r"stage 'check-config' failed: variant 'truth': loss weights must be non-negative"):
        run_experiment(config, tmp_path / "run", progress=False)
    assert not list((tmp_path / "run" / "stages").glob("train*"))


def test_splits_are_disjoint_balanced_and_letter_balanced():
    from reptune.data import Statement
    from reptune.data.ab import statements_to_ab
    from reptune.pipeline.runner import _split_statements

    skewed = [Statement(f"statement {i}", int(i % 3 == 0)) for i in range(300)]
    splits = _split_statements(skewed, 0.15, 0.25, seed=1)
    texts = [{s.text for s in part} for part in splits.values()]
    assert sum(map(len, texts)) == 300 and not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert sum(s.label for s in splits["test"]) == 25  # stratified: a third true, as in the data
    assert _split_statements(skewed, 0.15, 0.25, seed=1) == splits  # seeded
    balanced = [Statement(f"statement {i}", i % 2) for i in range(400)]
    test = _split_statements(balanced, 0.15, 0.25, seed=3)["test"]
    for n in (4, 48, 100):
        letters = [item.correct for item in statements_to_ab(test[:n])]
        assert sum(letters) * 2 == n  # always answering "A" scores exactly 50%


def test_several_seeds_are_aggregated(tiny_dir, tmp_path):
    changes = {"seeds": [0, 1], "variants": [{"name": "honesty", "preset": "honesty"}], "robustness.enabled": False, "projection.enabled": False,
               "evaluation.tasks": ["facts-ab"]}
    run = run_experiment(parse_config(_config(tiny_dir, tmp_path, **changes)), tmp_path / "run", progress=False)
    results = run.results
    assert {"train:honesty:s0", "train:honesty:s1", "eval:honesty:s0", "eval:honesty:s1"} <= set(run.stages_run)
    tuned = results["scores"]["honesty"]["facts-ab"]["metrics"]["accuracy"]
    per_seed = [json.loads((run.run_dir / results["eval_files"]["honesty"][str(s)]).read_text())["tasks"]["facts-ab"]["metrics"]["accuracy"] for s in (0, 1)]
    assert tuned["per_seed"] == [m["value"] for m in per_seed]
    assert tuned["value"] == pytest.approx(sum(tuned["per_seed"]) / 2)
    assert tuned["ci_low"] == min(m["ci_low"] for m in per_seed) and tuned["ci_high"] == max(m["ci_high"] for m in per_seed)
    assert len(results["scores"]["untuned"]["facts-ab"]["metrics"]["accuracy"]["per_seed"]) == 1  # seed-independent
    assert {row["seed"] for row in results["comparisons"] if row["b"] == "honesty"} == {0, 1}
    assert "per seed" in (run.run_dir / "report.md").read_text(encoding="utf-8").lower() or "0, 1" in (run.run_dir / "report.md").read_text(encoding="utf-8")


def test_judge_adds_openended_and_tuned_models_face_the_base(tiny_dir, tmp_path, monkeypatch):
    from test_judge import SHORT_PROMPTS, FakeServer

    for name in ("REPTUNE_JUDGE_URL", "REPTUNE_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in SHORT_PROMPTS[:3]), encoding="utf-8")
    server = FakeServer()
    try:
        changes = {
            "variants": [{"name": "truth", "preset": "truth"}], "robustness.enabled": False, "projection.enabled": False,
            "evaluation.tasks": ["facts-ab"], "evaluation.limits": {"openended": 3}, "evaluation.counter_tasks": ["facts-ab"],
            "evaluation.options": {"openended": {"data": str(prompts), "max_new_tokens": 4, "judge_cache": str(tmp_path / "judged"), "judge_backoff": 0}},
            "judge": {"url": server.url, "model": "fake-judge"},
        }
        run = run_experiment(parse_config(_config(tiny_dir, tmp_path, **changes)), tmp_path / "run", progress=False)
    finally:
        server.close()
    results = run.results
    assert results["tasks"] == ["facts-ab", "openended"] and "openended" not in {s["what"] for s in results["skipped"]}
    assert set(results["scores"]["truth"]) == {"facts-ab", "openended"} and set(results["scores"]["truth@counter"]) == {"facts-ab"}
    records = json.loads((run.run_dir / results["eval_files"]["truth"]["0"]).read_text(encoding="utf-8"))["tasks"]["openended"]["records"]
    assert all(r["reference"] != "unsteered" for r in records)  # the base weights, not the tuned model itself
    steered = json.loads((run.run_dir / results["eval_files"]["steer+"]["0"]).read_text(encoding="utf-8"))["tasks"]["openended"]["records"]
    assert all(r["reference"] == "unsteered" for r in steered)
    assert server.chat > 0


def test_lora_and_retain_variants(tiny_dir, tmp_path):
    changes = {"variants": [{"name": "honesty-lora", "preset": "honesty", "lora": True, "retain": "kl", "options": {"lora_rank": 2}}],
               "robustness.enabled": False, "projection.enabled": False, "evaluation.tasks": ["facts-ab"]}
    run = run_experiment(parse_config(_config(tiny_dir, tmp_path, **changes)), tmp_path / "run", progress=False)
    info = run.results["training"]["honesty-lora"]["0"]
    assert info["lora"] is True and info["retain"] == "kl"
    assert (run.run_dir / info["dir"] / "adapter").is_dir() and (run.run_dir / info["dir"] / "tuned_blocks.safetensors").is_file()
    assert "retain" in info["loss_curves"] and any(value > 0 for value in info["loss_curves"]["retain"])
    assert {c["id"] for c in run.results["conditions"]} >= {"honesty-lora", "honesty-lora@counter"}


def test_block_replay_changes_no_result_and_records_once_per_item_set(tiny_dir, tmp_path, monkeypatch):
    """Twin scoring and the representation reading of the tuned and steered conditions skip the base
    blocks below the trained range (evaluation.block_replay): the results equal a run that runs every block."""
    from reptune import block_replay

    replays = []
    real_replay = block_replay.replay_block_inputs
    monkeypatch.setattr(block_replay, "replay_block_inputs", lambda *args: replays.append(args[2]) or real_replay(*args))

    def config(replay: bool):
        return parse_config({
            "name": "replay", "model": str(tiny_dir), "precision": "fp32", "seeds": [0],
            "data": {"limit": 60}, "vector": {"pairs_limit": 12}, "sweep": {"multipliers": [-4, 4], "limit": 6, "layers": [3]},
            "train": {"steps": 2, "eval_every": 2, "batch_size": 2, "span": 2},
            "variants": [{"name": "truth", "preset": "truth"}, {"name": "honesty", "preset": "honesty"}],
            "evaluation": {"tasks": ["facts-twin"], "limit": 8, "representation_items": 4, "block_replay": replay},
            "robustness": {"enabled": False}, "projection": {"enabled": False},
        })

    replayed = run_experiment(config(True), tmp_path / "replayed", progress=False)
    plain = run_experiment(config(False), tmp_path / "plain", progress=False)
    assert replayed.results["training"]["truth"]["0"]["layers"] == "2-3"
    recorded = list((tmp_path / "replayed" / "block_inputs").glob("*.safetensors"))
    # the sweep's validation items (from block 3, its layer), the test split, the counter-steered test
    # items, the validation split, the representation prompts (from block 2, the first trained one):
    # one recording each, not one per model
    assert 3 <= len(recorded) <= 6 and not (tmp_path / "plain" / "block_inputs").exists()
    assert replays.count(2) >= 16  # tuned, steered and counter-steered conditions replayed from block 2, twins and representation
    by_condition = {row["condition"]: row for row in plain.results["representation"]}
    assert len(by_condition) >= 5 and {row["condition"] for row in replayed.results["representation"]} == set(by_condition)
    for row in replayed.results["representation"]:
        assert row["mean_cosine"] == pytest.approx(by_condition[row["condition"]]["mean_cosine"], abs=1e-5)
    assert replays.count(3) >= 1 and set(replays) == {2, 3}  # the sweep's steered cells from block 3
    assert set(replayed.results["scores"]) == set(plain.results["scores"]) and len(plain.results["scores"]) > 4
    for condition, by_task in plain.results["scores"].items():
        for task, score in by_task.items():
            for metric, value in score["metrics"].items():
                got = replayed.results["scores"][condition][task]["metrics"][metric]["value"]
                assert got == pytest.approx(value["value"], abs=1e-5), (condition, task, metric)


def test_twin_study_by_default_sweeps_layers_gates_claims_and_records_knowledge(tiny_dir, tmp_path):
    """With twin data the headline is facts-twin, training uses twin items, the sweep is a grid."""
    config = parse_config({
        "name": "twins", "model": str(tiny_dir), "precision": "auto", "seeds": [0, 1],
        "data": {"limit": 80}, "vector": {"pairs_limit": 16},
        "sweep": {"multipliers": [-4, 0, 4], "limit": 6},
        "train": {"steps": 2, "eval_every": 2, "batch_size": 2, "span": 2},
        "variants": [{"name": "truth", "preset": "truth"}, {"name": "lie", "preset": "lie"}, {"name": "honesty", "preset": "honesty"}],
        "evaluation": {"tasks": ["facts-twin"], "limit": 8, "representation_items": 4},
        "robustness": {"enabled": False}, "projection": {"enabled": False},
    })
    run = run_experiment(config, tmp_path / "run", progress=False)
    results = run.results
    assert results["headline"]["task"] == "facts-twin" and results["data"]["twins"]
    pairs = {name: {r["pair"] for r in csv_rows(tmp_path / "run" / "stages" / "data" / f"{name}.csv")} for name in ("train", "val", "test")}
    assert not (pairs["train"] & pairs["test"]) and not (pairs["val"] & pairs["test"])
    sweep = results["sweep"]
    assert len(sweep["layers"]) > 1 and {r["layer"] for r in sweep["rows"] if r["multiplier"] != 0} == set(sweep["layers"])
    layer = sweep["selected"]["layer"]
    truth = results["training"]["truth"]["0"]
    assert truth["layers"] == f"{max(0, layer - 1)}-{layer}"  # the `span` blocks ending at the chosen layer
    assert truth["metrics"]["train_items"] + truth["metrics"]["val_items"] == len(pairs["train"])  # one item per twin
    gate = results["learnability"]
    assert set(gate["truth"]) == set(gate["lie"]) == {"0", "1"}
    # the gate compares the tuned models with the untuned one on the same (whole) validation split
    untuned_val = json.loads((tmp_path / "run" / "stages" / "check-untuned-s0" / "results.json").read_text(encoding="utf-8"))
    assert gate["untuned"] == untuned_val["tasks"]["facts-twin"]["metrics"]["accuracy"]["value"]
    assert untuned_val["tasks"]["facts-twin"]["metrics"]["accuracy"]["n"] == len(pairs["val"])
    if not gate["passed"]:  # two steps on a random model cannot pass it: no claim may be tested
        assert all(claim["verdict"] == "not tested" for claim in results["claims"])
    knowledge = results["knowledge"]
    assert knowledge["n"] == 8 and 0 <= knowledge["known"] <= 8 and knowledge["by_topic"]
    assert results["model"]["precision"] in {"fp32", "bf16"} and "cpu_capability" in results["model"]["machine"]
    assert not (tmp_path / "run" / "stages" / "train-truth-s0" / "checkpoints").exists()  # deleted once the variant finished


def csv_rows(path: Path) -> list[dict]:
    import csv

    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _dry_run(cli_run, tmp_path, experiment: str, num_layers: int) -> dict:
    """`reptune run EXPERIMENT --plan` on a tiny Llama stand-in with ``num_layers`` blocks: the printed plan."""
    import json

    from conftest import build_model

    handle = build_model("llama", num_layers=num_layers, chat=True)
    handle.model.save_pretrained(tmp_path / "m")
    handle.tokenizer.save_pretrained(tmp_path / "m")
    result = cli_run("run", experiment, "--plan", "--set", f"model={tmp_path / 'm'}")
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_gpu_config_dry_run_lists_what_each_term_trains(tmp_path, cli_run):
    """`reptune run gpu-llama2-13b --plan` on a tiny 20-layer Llama stand-in: the paper's routing, per variant."""
    plan = _dry_run(cli_run, tmp_path, "gpu-llama2-13b", 20)
    assert plan["layer"] == 15 and plan["items"] == "ab"
    honesty = plan["variants"]["honesty"]["terms"]
    assert honesty["representation"]["layers"] == "11-17"  # every trained layer, each with its own direction
    assert set(honesty["representation"]["updates"]) == {"self_attn.v_proj.weight", "self_attn.o_proj.weight"}  # paper routing
    assert len(honesty["token"]["updates"]) > 2 and honesty["token"]["weight"] == pytest.approx(0.01)
    assert "representation" not in plan["variants"]["truth"]["terms"]
    assert plan["variants"]["tune-out"]["terms"]["token"]["weight"] == pytest.approx(0.01)  # |cos| plus the truth token loss / 100
    assert not any(tmp_path.glob("runs"))


def test_dry_run_of_an_auto_layer_says_the_layer_stands_in(tmp_path, cli_run):
    plan = _dry_run(cli_run, tmp_path, "demo", 8)
    assert plan["layer"] == 4 and "stands in" in plan["layer_note"] and "auto" in plan["layer_note"]


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"evaluation": {"headline": "facts-twine"}}, "unknown task 'facts-twine'"),
    ({"evaluation": {"counter_limit": 0}}, "counter_limit"),
    ({"seeds": [0, 1], "variants": [{"name": "truth", "preset": "truth", "seeds": [2]}]}, "subset of the experiment's seeds"),
    ({"sweep": {"layers": "everywhere"}}, "sweep.layers"),
    ({"learnability": {"min_move": 2}}, "learnability.min_move"),
    ({"data": {"val_fraction": 0.45, "test_fraction": 0.49}}, "at least 10% for training"),
    ({"precision": "fp8"}, "precision"),
    ({"workers": 3}, "workers"),
    ({"workers": "many"}, "workers"),
    ({"train": {"weights": "half"}}, "train.weights"),
    ({"evaluation": {"block_replay": "sometimes"}}, "evaluation.block_replay"),
])
def test_new_config_keys_refuse_garbage_with_one_line(changes, fragment):
    with pytest.raises(ReptuneError, match=re.escape(fragment)) as info:
        parse_config(changes)
    assert "\n" not in str(info.value)


def test_tune_items_garbage_is_a_one_line_error_before_the_model(cli_run, tmp_path):
    result = cli_run("tune", "--preset", "truth", "--data", "honesty", "--items", "triplets", "-o", tmp_path / "out")
    assert result.code == 2 and result.error_lines() == ["error: --items must be one of ab, twin, got 'triplets'"]
    result = cli_run("tune", "--preset", "truth", "--data", "honesty", "--weights", "half", "-o", tmp_path / "out")
    assert result.code == 2 and result.error_lines() == ["error: --weights must be full or blocks, got 'half'"]
    assert "Traceback" not in result.err and not (tmp_path / "out").exists()


def test_counter_vectors_are_norm_matched_and_used(finished):
    """Fair counter-steering: the other-data vector and the random floor, at the steering layer, with the training vector's norm."""
    from reptune.vectors import load_vector

    _, run, _ = finished
    results = run.results
    counter = results["counter"]
    layer = results["sweep"]["selected"]["layer"]
    training = load_vector(run.run_dir / results["vector"]["file"])
    norm = float(training.directions[layer].norm())
    assert counter["layer"] == layer and counter["norm"] == pytest.approx(norm)
    for name in ("other", "random1"):
        vector = load_vector(run.run_dir / counter["dir"] / counter["vectors"][name]["file"])
        assert sorted(vector.directions) == [layer] and float(vector.directions[layer].norm()) == pytest.approx(norm, rel=1e-5)
    # the other vector is its own direction (other data), the random one unrelated
    assert abs(counter["vectors"]["other"]["cosine_to_training"]) < 0.9999 and abs(counter["vectors"]["random1"]["cosine_to_training"]) < 0.5
    # each counter condition steers with its own vector at the same multiplier
    conds = {c["id"]: c for c in results["conditions"]}
    assert conds["honesty@counter-other"]["steering"] == {**conds["honesty@counter"]["steering"], "vector": "other"}
    claim = next(c for c in results["claims"] if c["id"] == "resists-counter-steering")
    assert claim["judged_on"] == "other" and "honesty@counter-other" in results["scores"]
    assert {(r["variant"], r["vector"]) for r in counter["rows"]} == {(v, w) for v in ("truth", "honesty") for w in ("training", "other", "random1")}


def test_the_studies_say_which_main_models_they_read():
    """A stage worker runs the studies before a chain the main process holds only when no study
    reads that chain's model: in the demo they read truth and honesty at seed 0, never lie."""
    from reptune.pipeline import builtin_config, load_config
    from reptune.pipeline.studies import STUDIES, study_reads

    demo = load_config(builtin_config("demo"))
    assert study_reads(demo) == {("truth", 0), ("honesty", 0)}
    assert study_reads(load_config(builtin_config("demo"), {f"{name}.enabled": "false" for name in STUDIES})) == set()
    stacking = load_config(builtin_config("study-stacking"))
    assert ("honesty", 0) in study_reads(stacking) and ("lie", 0) not in study_reads(stacking)


def test_the_demo_runs_a_reduced_version_of_every_study():
    """Issue 12: the demo answers each question the field asks, smaller than the shipped study configs."""
    from reptune.pipeline import builtin_config, load_config
    from reptune.pipeline.studies import STUDIES, enabled_studies

    demo = load_config(builtin_config("demo"))
    assert demo.counter.other and demo.counter.random >= 1  # fair counter-steering: other-data vector + random floor
    assert set(enabled_studies(demo)) == set(STUDIES)
    for name in enabled_studies(demo):
        full = load_config(builtin_config(f"study-{name.replace('_', '-')}"))
        assert name in enabled_studies(full)
        assert getattr(demo, name) != getattr(full, name)  # reduced, not the full study


def test_no_studies_turns_every_study_off_and_set_turns_one_back_on():
    from typer.testing import CliRunner

    from reptune.cli import app
    from reptune.pipeline.studies import STUDIES

    plain = yaml.safe_load(CliRunner().invoke(app, ["run", "demo", "--print-config"]).output)
    off = yaml.safe_load(CliRunner().invoke(app, ["run", "demo", "--no-studies", "--print-config"]).output)
    back = yaml.safe_load(CliRunner().invoke(app, ["run", "demo", "--no-studies", "--set", "gcg.enabled=true", "--print-config"]).output)
    assert all(plain[name]["enabled"] for name in STUDIES) and not any(off[name]["enabled"] for name in STUDIES)
    assert back["gcg"]["enabled"] and not back["stacking"]["enabled"]
    drop = set(STUDIES)
    assert {k: v for k, v in off.items() if k not in drop} == {k: v for k, v in plain.items() if k not in drop}  # the main job unchanged


def test_a_stage_worker_shares_the_stages_and_changes_no_result(tiny_dir, tmp_path, monkeypatch):
    """workers: 2 starts a second process that walks the plan from the other end: every stage runs
    once (in one process or the other), and the results equal a one-process run's."""
    changes = {"seeds": [0, 1], "robustness.enabled": False, "projection.enabled": False, "evaluation.tasks": ["facts-ab", "kl"],
               "evaluation.limit": 8, "evaluation.limits": {"kl": 2}}
    alone = run_experiment(parse_config(_config(tiny_dir, tmp_path, **changes)), tmp_path / "alone", progress=False)
    evaluate_base = runner_module.Experiment._evaluate_base

    def after_the_worker_claims_a_training(self):  # a tiny model's stages take milliseconds: let the worker start first
        deadline = time.monotonic() + 120
        while not list((tmp_path / "pair" / "stages").glob("train-*.lock")) and time.monotonic() < deadline:
            time.sleep(0.05)
        return evaluate_base(self)

    monkeypatch.setattr(runner_module.Experiment, "_evaluate_base", after_the_worker_claims_a_training)
    pair = run_experiment(parse_config(_config(tiny_dir, tmp_path, workers=2, **changes)), tmp_path / "pair", progress=False)
    by_worker = pair.results["stages"]["by_worker"]
    assert by_worker and set(by_worker) < set(pair.stages_run)  # both processes ran stages
    assert any(name.startswith("train:") for name in by_worker)
    assert sorted(pair.stages_run) == sorted(alone.stages_run) and len(set(pair.stages_run)) == len(pair.stages_run)  # each once
    assert pair.results["timings"]["workers"] == 2 and pair.results["timings"]["worker_exit"] == 0
    assert not list((tmp_path / "pair" / "stages").glob("*.lock"))
    pids = {json.loads(path.read_text())["pid"] for path in (tmp_path / "pair" / "stages").glob("*/stage.json")}
    assert len(pids) == 2  # each stage records the process that ran it
    assert [row["condition"] for row in pair.results["representation"]] == [row["condition"] for row in alone.results["representation"]]
    for condition, by_task in alone.results["scores"].items():
        for task, score in by_task.items():
            for metric, value in score["metrics"].items():
                assert pair.results["scores"][condition][task]["metrics"][metric]["value"] == pytest.approx(value["value"], abs=1e-4), (condition, task, metric)
    assert "Two processes ran the stages" in (tmp_path / "pair" / "report.md").read_text(encoding="utf-8")


def test_run_experiment_takes_a_config_or_an_experiment_file(tmp_path):
    from reptune.errors import ReptuneError
    from reptune.pipeline import run_experiment

    with pytest.raises(ReptuneError, match="experiment file"):  # a path is read (here: a missing one, one line)
        run_experiment(tmp_path / "missing.yaml", tmp_path / "run", progress=False)
    with pytest.raises(ReptuneError, match="ExperimentConfig or an experiment file's path, got dict"):
        run_experiment({"name": "x"}, tmp_path / "run", progress=False)


@pytest.mark.parametrize("key, value, message", [
    ("train.steps", "abc", "--set train.steps: Input should be a valid integer"),
    ("sweep.layers", "14,15", "--set sweep.layers: Input should be a valid list (got '14,15'); write a list as [a, b]"),
    ("trainn.steps", "3", "--set trainn.steps: unknown key 'trainn'"),
])
def test_a_bad_set_names_the_flag_not_the_shipped_file(key, value, message):
    from reptune.errors import ReptuneError
    from reptune.pipeline import builtin_config, load_config

    with pytest.raises(ReptuneError) as error:
        load_config(builtin_config("demo"), {key: value})
    assert str(error.value).startswith(message) and "demo.yaml" not in str(error.value)


def test_the_sweep_finding_names_every_layer_and_multiplier_in_order():
    from reptune.pipeline.analysis import findings

    rows = [{"layer": None, "multiplier": 0.0, "value": 0.7}] + [
        {"layer": layer, "multiplier": m, "value": 0.5 + 0.01 * m, "degenerate": m == 8.0} for layer in (14, 9) for m in (-8.0, 4.0, 8.0)]
    line = findings({}, {}, [], [], {"layer": 14, "rows": rows}, [], 0.05)[0]
    assert line == ("Steering sweep on the validation split (layers 9, 14; chosen: layer 14): accuracy 0.420-0.700 over "
                    "multipliers -8, 0, 4, 8; 2 of 7 cells degenerate.")


def test_set_seeds_drops_the_files_seed_note():
    from reptune.pipeline import builtin_config, load_config

    assert "three seeds" in load_config(builtin_config("demo")).seed_note
    assert load_config(builtin_config("demo"), {"seeds": "[0]"}).seed_note is None  # it would say "three seeds" for one
    assert load_config(builtin_config("demo"), {"seeds": "[0]", "seed_note": "one seed, a smoke run"}).seed_note == "one seed, a smoke run"
