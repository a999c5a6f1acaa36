"""The stacking study (prompt x steering x weights) end to end on a tiny model, its statistics and its bad input."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from reptune.errors import ReptuneError
from reptune.evaluation import evaluate, get_task, load_eval_results
from reptune.models import load_model
from reptune.pipeline import parse_config, run_experiment
from reptune.pipeline import runner as runner_module
from reptune.pipeline.claims import ClaimSettings
from reptune.pipeline.studies.stacking_analysis import CellData, interaction, paired_effect, reading
from reptune.vectors import load_vector

PROMPT = "Be honest: say only what is true."
MAIN_EQUAL = {"untuned": "untuned", "untuned+steer": "steer+", "truth:s0": "truth", "honesty:s0": "honesty"}


def _config(tiny_dir: Path, **stacking) -> dict:
    return {
        "name": "stack", "model": str(tiny_dir), "precision": "fp32", "seeds": [0],
        "data": {"limit": 80}, "vector": {"pairs_limit": 16},
        "sweep": {"multipliers": [-4, 4], "limit": 6, "layers": "vector"},
        "train": {"steps": 2, "eval_every": 2, "batch_size": 2, "span": 2},
        "variants": [{"name": "truth", "preset": "truth", "counter": "none"}, {"name": "honesty", "preset": "honesty", "counter": "none"}],
        "evaluation": {"tasks": ["facts-twin"], "limit": 10, "representation_items": 4, "batch_size": 4},
        "robustness": {"enabled": False}, "projection": {"enabled": False}, "learnability": {"enabled": False},
        "stacking": {"enabled": True, "system_prompt": PROMPT, "limit": 8, **stacking},
    }


@pytest.fixture(scope="module")
def stacked(tiny_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("stacking") / "run"
    run = run_experiment(parse_config(_config(tiny_dir)), run_dir, progress=False)
    return run, run_dir


def _records(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in load_eval_results(path).tasks["facts-twin"].records}


def test_factorial_cells_equal_the_separately_evaluated_conditions_item_by_item(stacked, tiny_dir):
    """Reused cells are the main conditions' own records; evaluated cells equal a stand-alone evaluation."""
    run, run_dir = stacked
    section = run.results["studies"]["stacking"]
    cells = {c["cell"]: c for c in section["cells"]}
    assert len(cells) == 12 and section["n"] == 8
    ids = list(_records(run_dir / run.results["eval_files"]["untuned"]["0"]))[:8]  # the first 8 test twins
    vector = run_dir / "stages" / "vector" / "honesty.safetensors"
    test_csv = str(run_dir / "stages" / "data" / "test.csv")
    handles = {"untuned": load_model(str(tiny_dir))}
    for name in ("truth", "honesty"):
        handles[f"{name}:s0"] = load_model(str(run_dir / run.results["training"][name]["0"]["dir"]))
    for cid, cell in cells.items():
        mine = _records(run_dir / cell["file"])
        if cid in MAIN_EQUAL:  # read from the main run, not evaluated again
            assert cell["source"] == "main" and cell["condition"] == MAIN_EQUAL[cid]
            expected = _records(run_dir / run.results["eval_files"][MAIN_EQUAL[cid]]["0"])
        else:
            assert cell["source"] == "study" and cell["condition"] == f"stacking:{cid}"
            level = cid.split("+")[0]
            handle = handles[level]
            task = get_task("facts-twin", data=test_csv, **({"system": PROMPT} if cell["prompt"] == "honest" else {}))
            steered = cell["steered"]
            alone = evaluate(handle, [task], vector=load_vector(vector, handle, allow_model_mismatch=True) if steered else None,
                             multiplier=section["multiplier"] if steered else 1.0, layers=[section["layer"]] if steered else None,
                             limit=8, batch_size=4, allow_model_mismatch=True)
            expected = {r["id"]: r for r in alone.tasks["facts-twin"].records}
        for i in ids:
            assert mine[i]["correct"] == expected[i]["correct"], (cid, i)
            assert mine[i]["margin"] == pytest.approx(expected[i]["margin"], abs=1e-5), (cid, i)
        assert cell["accuracy"]["value"] == pytest.approx(np.mean([expected[i]["correct"] for i in ids]))
        assert cell["margin"]["value"] == pytest.approx(np.mean([expected[i]["margin"] for i in ids]), abs=1e-5)


def test_interactions_are_differences_of_differences_of_the_cells(stacked):
    run, run_dir = stacked
    section = run.results["studies"]["stacking"]
    cells = {c["cell"]: c for c in section["cells"]}
    ids = list(_records(run_dir / cells["untuned"]["file"]))[:8]

    def correct(cid: str) -> np.ndarray:
        records = _records(run_dir / cells[cid]["file"])
        return np.array([float(records[i]["correct"]) for i in ids])

    rows = {(r["factor"], r["at"]): r for r in section["interactions"]}
    prompt = rows[("prompt", "weights untuned")]
    expected = (correct("untuned+prompt+steer") - correct("untuned+prompt")) - (correct("untuned+steer") - correct("untuned"))
    assert prompt["effect"] == pytest.approx(expected.mean()) and prompt["ci_low"] <= prompt["effect"] <= prompt["ci_high"]
    truth = rows[("weights truth:s0", "prompt none")]
    expected = (correct("truth:s0+steer") - correct("truth:s0")) - (correct("untuned+steer") - correct("untuned"))
    assert truth["effect"] == pytest.approx(expected.mean())
    assert len(section["interactions"]) == 3 + 4  # prompt x steering per weights level; weights x steering per variant and prompt
    effects = {(e["weights"], e["prompt"]): e for e in section["steering_effects"]}
    assert effects[("untuned", "honest")]["effect"] == pytest.approx((correct("untuned+prompt+steer") - correct("untuned+prompt")).mean())
    # the two claims join the run's Holm family, with one test each (one seed)
    claims = {c["id"]: c for c in run.results["claims"]}
    for cid in ("vector-adds-to-prompting", "vector-adds-to-tuning"):
        assert claims[cid]["verdict"] in {"supported", "not supported", "inconclusive", "not tested"} and len(claims[cid]["tests"]) == 1
    assert claims["vector-adds-to-tuning"]["tests"][0]["effect"] == pytest.approx(effects[("truth:s0", "none")]["effect"])


def test_only_the_new_cells_ran_and_a_rerun_reuses_them(stacked, tiny_dir):
    run, run_dir = stacked
    study = sorted(name for name in run.stages_run if name.startswith("stacking:"))
    assert study == sorted(f"stacking:{c}" for c in ("prompts", "untuned+prompt", "untuned+prompt+steer", *(f"{v}:s0{s}" for v in ("truth", "honesty")
                                                       for s in ("+steer", "+prompt", "+prompt+steer"))))
    assert (run_dir / "figures" / "stacking.png").is_file()
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    cells_table = report.split("### Cells", 1)[1]
    for cell in run.results["studies"]["stacking"]["cells"]:  # the report shows results.json's numbers
        row = next(line for line in cells_table.splitlines() if line.startswith(f"| {cell['cell']} |"))
        assert f"| {cell['accuracy']['value']:.3f} |" in row
    again = run_experiment(parse_config(_config(tiny_dir)), run_dir, progress=False)
    assert not [name for name in again.stages_run if name.startswith(("stacking:", "eval:", "train:"))]
    assert again.results["studies"]["stacking"]["prompts"] == run.results["studies"]["stacking"]["prompts"]
    assert PROMPT in run.results["studies"]["stacking"]["prompts"]["honest"] and PROMPT not in run.results["studies"]["stacking"]["prompts"]["none"]


def _cell(correct: list[int], margin: list[float] | None = None) -> CellData:
    return CellData(np.array(correct, dtype=np.float64), None if margin is None else np.array(margin, dtype=np.float64), [], None)


def test_interaction_and_effect_arithmetic():
    s = ClaimSettings(n_resamples=500)
    base, steer = _cell([0, 0, 1, 1, 0, 1], [0.0, 0.0, 1.0, 1.0, 0.0, 1.0]), _cell([1, 1, 1, 1, 0, 1], [1.0, 1.0, 1.0, 1.0, 0.5, 1.0])
    factor, both = _cell([1, 1, 1, 1, 0, 1], [2.0] * 6), _cell([1, 1, 1, 1, 0, 1], [2.5] * 6)
    out = interaction(base, steer, factor, both, s, 0)
    assert out["effect"] == pytest.approx(-2 / 6)  # steering gains 2 items alone, none on top of the factor
    assert out["margin"]["effect"] == pytest.approx(0.5 - np.mean([1.0, 1.0, 0.0, 0.0, 0.5, 0.0]))
    effect = paired_effect(base, steer, s, 0)
    assert effect["effect"] == pytest.approx(2 / 6) and effect["discordant"] == 2 and effect["effect_ok"]
    assert reading({"ci_low": -0.3, "ci_high": -0.01}) == "sub-additive" and reading({"ci_low": 0.01, "ci_high": 0.2}) == "super-additive"
    assert reading({"ci_low": -0.1, "ci_high": 0.1}) == "additive within the CI"


@pytest.mark.parametrize(("stacking", "fragment"), [
    ({"system_prompt": "  "}, "stacking.system_prompt: the honest system prompt must not be empty"),
    ({"variants": ["truth", "tuth"]}, "stacking.variants: unknown variant 'tuth'"),
    ({"multiplier": 0}, "stacking.multiplier: must be auto"),
    ({"multiplier": -4}, "stacking.multiplier: must be auto"),
    ({"claim_variant": "lie"}, "claim_variant 'lie' is not one of variants"),
    ({"seeds": [1]}, "stacking.seeds: variant 'truth' is not trained with seed 1"),
    ({"variants": []}, "non-empty list"),
    ({"limit": 0}, "stacking.limit"),
])
def test_bad_stacking_config_is_a_one_line_error(tiny_dir, stacking, fragment):
    with pytest.raises(ReptuneError, match=re.escape(fragment)) as info:
        parse_config(_config(tiny_dir, **stacking))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"stacking": {"limit": 11}}, "stacking.limit 11 is more than the 10 test items"),
    ({"evaluation": {"headline": "tqa-ab"}}, "the headline task tqa-ab takes no system prompt"),
])
def test_data_dependent_bad_input_fails_before_model_work(tiny_dir, tmp_path, monkeypatch, changes, fragment):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(runner_module, "load_model", no_model)
    config = _config(tiny_dir)
    for section, values in changes.items():
        config[section].update(values)
    with pytest.raises(ReptuneError, match=re.escape(fragment)) as info:
        run_experiment(parse_config(config), tmp_path / "run", progress=False)
    assert "\n" not in str(info.value) and not (tmp_path / "run" / "stages" / "vector").exists()


def test_cli_reports_a_bad_stacking_key_on_one_line(cli_run, tmp_path, tiny_dir):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(_config(tiny_dir, system_prompt="")), encoding="utf-8")
    result = cli_run("run", path, "-o", tmp_path / "run")
    assert result.code == 2 and len(result.error_lines()) == 1 and "stacking.system_prompt" in result.error_lines()[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["facts-twin", "facts-word", "facts-ab"])
def test_system_option_is_in_every_prompt_and_absent_by_default(tiny_dir, name):
    from reptune.data.pairs import render_chat

    handle = load_model(str(tiny_dir))
    with_system = get_task(name, system=PROMPT).load_items(handle, 6)[0]
    plain = get_task(name).load_items(handle, 6)[0]
    assert all(f"<|system|>{PROMPT}<|end|>" in item["prompt"] for item in with_system)
    assert not any("<|system|>" in item["prompt"] for item in plain)
    assert [item["prompt"].replace(f"<|system|>{PROMPT}<|end|>", "") for item in with_system] == [item["prompt"] for item in plain]
    if name == "facts-twin":  # the default is exactly the main run's prompt: the user turn alone
        assert plain[0]["prompt"] == render_chat(handle.tokenizer, "Make a statement about the world.")


def test_a_system_prompt_never_reuses_records_cached_without_it():
    from types import SimpleNamespace

    handle = SimpleNamespace(model_id="m", revision="r")
    for name in ("facts-twin", "facts-word", "facts-ab"):  # the default's fingerprint is pinned in test_task_registry
        assert get_task(name, system=PROMPT).fingerprint(handle, "d") != get_task(name).fingerprint(handle, "d")


def test_twin_scorer_still_shares_the_prompt_with_a_system_prompt(tiny_dir, monkeypatch):
    from reptune.evaluation.scoring import continuation_logprobs
    from reptune.evaluation.tasks import facts

    handle = load_model(str(tiny_dir))
    shared = []
    real = facts.twin_logprobs
    monkeypatch.setattr(facts, "twin_logprobs", lambda h, prompt, pairs, **kw: shared.append(prompt) or real(h, prompt, pairs, **kw))
    task = get_task("facts-twin", system=PROMPT)
    result = task.run(handle, limit=6, batch_size=4)
    assert len(shared) == 1 and PROMPT in shared[0]  # one shared prompt (system prompt included), run once per pair
    items = task.load_items(handle, 6)[0]
    whole = continuation_logprobs(handle, [(item["prompt"], item[side]) for item in items for side in ("true", "false")], batch_size=4)
    for k, record in enumerate(result.records):
        assert record["margin"] == pytest.approx(whole[2 * k].logprob - whole[2 * k + 1].logprob, abs=1e-4)


@pytest.mark.real_model
def test_chatml_none_is_the_templates_default_system_prompt_and_honest_replaces_it():
    """SmolLM2's ChatML inserts its own system prompt when none is given: 'none' means that one."""
    from transformers import AutoTokenizer

    from reptune.data.pairs import render_chat
    from reptune.models import convert_gguf, embedded_gguf_path

    tokenizer = AutoTokenizer.from_pretrained(str(convert_gguf(embedded_gguf_path())))
    none = render_chat(tokenizer, "Make a statement about the world.")
    honest = render_chat(tokenizer, "Make a statement about the world.", system=PROMPT)
    assert none.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert honest.startswith(f"<|im_start|>system\n{PROMPT}<|im_end|>") and "SmolLM" not in honest


def test_the_eta_counts_the_cells_evaluated_anew(tiny_dir):
    from reptune.pipeline.studies import estimate_studies

    unit = {"eval_task": 12.0, "train_step": 1.3}
    assert estimate_studies(parse_config(_config(tiny_dir)), unit) == (2 + 3 * 2) * 12.0
    assert estimate_studies(parse_config(_config(tiny_dir, enabled=False)), unit) == 0.0


def test_shipped_study_config_is_the_demo_plus_the_study():
    from reptune.pipeline import builtin_config, load_config

    study, demo = load_config(builtin_config("study-stacking")), load_config(builtin_config("demo"))
    assert study.stacking.enabled and demo.stacking.enabled and demo.stacking.limit is not None  # the demo's is reduced
    assert study.stacking.limit is None and study.stacking.variants == ["truth", "honesty"]
    assert not study.sample_efficiency.enabled and not study.generalisation.enabled  # only its own study
    drop = {"name", "stacking", "sample_efficiency", "generalisation", "gcg"}
    assert study.model_dump(exclude=drop) == demo.model_dump(exclude=drop)  # the same main stages as the demo's


def test_with_a_stage_worker_every_stage_runs_once_and_the_study_is_the_same(tiny_dir, tmp_path):
    """workers: 2 with a study: the worker may take the study while the main process trains the
    models no study reads; every stage still runs once and the cells equal a one-process run's."""
    alone = run_experiment(parse_config({**_config(tiny_dir), "seeds": [0, 1]}), tmp_path / "alone", progress=False)
    pair = run_experiment(parse_config({**_config(tiny_dir), "seeds": [0, 1], "workers": 2}), tmp_path / "pair", progress=False)
    assert sorted(pair.stages_run) == sorted(alone.stages_run) and len(set(pair.stages_run)) == len(pair.stages_run)
    assert pair.results["timings"]["worker_exit"] == 0 and not list((tmp_path / "pair" / "stages").glob("*.lock"))
    cells = {c["cell"]: c["accuracy"]["value"] for c in alone.results["studies"]["stacking"]["cells"]}
    assert {c["cell"]: c["accuracy"]["value"] for c in pair.results["studies"]["stacking"]["cells"]} == pytest.approx(cells, abs=1e-6)
