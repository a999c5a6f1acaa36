"""Reliability and security: reptune never destroys a user's files nor runs code they did not allow.

One test (or a few) per defect of issue #15, each failing on the code before its fix. The CLI
contract for a refused input: exit code 2, one ``error:`` line, no traceback, nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import CliRun

from reptune._io import RUN_MARKER
from reptune.errors import ReptuneError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.setenv("REPTUNE_DEBUG", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("REPTUNE_DATA_DIR", raising=False)


def assert_user_error(result: CliRun, *fragments: str) -> str:
    assert result.code == 2, (result.code, result.err[-2000:])
    assert "Traceback" not in result.err and "Traceback" not in result.out
    lines = result.error_lines()
    assert len(lines) == 1, result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()} if path.exists() else {}


def write_experiment(path: Path, tiny_dir: Path, **changes) -> Path:
    config = {"name": "tiny", "model": str(tiny_dir), "precision": "fp32", **changes}
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def user_folder(root: Path) -> Path:
    victim = root / "victim"
    (victim / "important").mkdir(parents=True)
    (victim / "important" / "thesis.txt").write_text("x\n", encoding="utf-8")
    return victim


# ----------------------------------------------------------------------------- 1. --fresh
def test_fresh_refuses_a_folder_without_run_marker(cli_run, tiny_dir, tmp_path):
    victim = user_folder(tmp_path)
    before = tree(victim)
    exp = write_experiment(tmp_path / "exp.yaml", tiny_dir)
    assert_user_error(cli_run("run", exp, "--fresh", "-o", victim), str(victim), "reptune")
    assert tree(victim) == before


def test_fresh_with_a_bad_config_deletes_nothing(cli_run, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / RUN_MARKER).write_text(json.dumps({"format": "reptune-output/1", "kind": "experiment"}), encoding="utf-8")
    (run_dir / "results.json").write_text("{}", encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {stepz: 3}\n", encoding="utf-8")
    before = tree(run_dir)
    assert_user_error(cli_run("run", bad, "--fresh", "-o", run_dir), "train.stepz")
    assert tree(run_dir) == before


def test_fresh_keeps_the_users_files_and_the_folder_stays_usable(tmp_path):
    from reptune._io import check_output_dir
    from reptune.pipeline.runner import clean_run

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / RUN_MARKER).write_text(json.dumps({"format": "reptune-output/1", "kind": "experiment"}), encoding="utf-8")
    (run_dir / "results.json").write_text("{}", encoding="utf-8")
    (run_dir / "my_notes.txt").write_text("mine\n", encoding="utf-8")
    clean_run(run_dir)
    # the run's files go, the user's stay, and the run that --fresh starts next may write here (it was refused)
    assert sorted(p.name for p in run_dir.iterdir()) == [RUN_MARKER, "my_notes.txt"]
    check_output_dir(run_dir, "experiment")


def test_clean_run_deletes_only_what_a_run_wrote(tmp_path):
    from reptune.pipeline.runner import clean_run

    run_dir = tmp_path / "run"
    (run_dir / "stages" / "data").mkdir(parents=True)
    (run_dir / "stages" / "data" / "stage.json").write_text("{}", encoding="utf-8")
    (run_dir / "config.yaml").write_text("name: x\n", encoding="utf-8")
    (run_dir / "results.json").write_text("{}", encoding="utf-8")
    (run_dir / ".results.json.abc.tmp").write_text("half", encoding="utf-8")
    (run_dir / "notes.txt").write_text("mine\n", encoding="utf-8")  # the user's, beside a legacy run
    clean_run(run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == [RUN_MARKER, "notes.txt"]  # still a run folder: the fresh run may use it
    with pytest.raises(ReptuneError, match="refusing to delete"):
        clean_run(user_folder(tmp_path))
    assert (tmp_path / "victim" / "important" / "thesis.txt").is_file()


def test_run_refuses_to_write_into_a_users_folder(tiny_dir, tmp_path):
    from reptune.pipeline import parse_config, run_experiment

    victim = user_folder(tmp_path)
    before = tree(victim)
    with pytest.raises(ReptuneError, match="not empty and holds no reptune experiment"):
        run_experiment(parse_config({"model": str(tiny_dir)}), victim, progress=False)
    assert tree(victim) == before


# ----------------------------------------------------------------------------- 2. experiment name
@pytest.mark.parametrize("name", ["../../escape_run", "/tmp/abs", "..", ".hidden", "a/b", "white space", ""])
def test_experiment_name_must_be_a_safe_slug(cli_run, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"name": name}), encoding="utf-8")
    assert_user_error(cli_run("run", exp, "--fresh"), "name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]


def test_experiment_name_slug_accepted():
    from reptune.pipeline import parse_config

    assert parse_config({"name": "qwen-honesty_v2.1"}).name == "qwen-honesty_v2.1"


# ----------------------------------------------------------------------------- 3. tune -o
@pytest.fixture()
def statements_file(tmp_path) -> Path:
    path = tmp_path / "statements.csv"
    rows = ["statement,label"] + [f"The sky is {'blue' if i % 2 else 'green'} {i}.,{i % 2}" for i in range(24)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def tune_args(tiny_dir, data, output, *extra):
    return ["tune", "--preset", "truth", "--model", tiny_dir, "--data", data, "--layers", "1-2", "--steps", "2",
            "--batch-size", "4", "--eval-every", "2", "--precision", "fp32", "-o", output, *extra]


def test_tune_refuses_a_users_nonempty_folder(cli_run, tiny_dir, statements_file, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("my notes\n", encoding="utf-8")
    (out / "config.json").write_text('{"mine": true}\n', encoding="utf-8")
    before = tree(out)
    assert_user_error(cli_run(*tune_args(tiny_dir, statements_file, out)), str(out), "--overwrite")
    assert tree(out) == before
    result = cli_run(*tune_args(tiny_dir, statements_file, out, "--overwrite"))
    assert result.code == 0, result.err
    assert (out / "model.safetensors").is_file() and (out / RUN_MARKER).is_file()


def test_tune_reruns_into_its_own_folder(cli_run, tiny_dir, statements_file, tmp_path):
    out = tmp_path / "run"
    assert cli_run(*tune_args(tiny_dir, statements_file, out)).code == 0
    result = cli_run(*tune_args(tiny_dir, statements_file, out, "--resume"))
    assert result.code == 0, result.err


# ----------------------------------------------------------------------------- 4. trust_remote_code
@pytest.fixture()
def remote_code_dir(tiny_dir, tmp_path) -> tuple[Path, Path]:
    """A copy of the tiny model whose config points at custom code that leaves a marker file when run."""
    import shutil

    model_dir = tmp_path / "evil-model"
    shutil.copytree(tiny_dir, model_dir)
    marker = tmp_path / "code-ran.txt"
    (model_dir / "evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class EvilConfig(LlamaConfig):\n    model_type = 'llama'\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n",
        encoding="utf-8",
    )
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (model_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return model_dir, marker


@pytest.mark.parametrize("how", ["file", "set"])
def test_experiment_file_cannot_turn_on_remote_code(cli_run, remote_code_dir, tmp_path, how):
    model_dir, marker = remote_code_dir
    if how == "file":
        exp = write_experiment(tmp_path / "exp.yaml", model_dir, trust_remote_code=True)
        args = ["run", exp, "-o", tmp_path / "run"]
    else:
        exp = write_experiment(tmp_path / "exp.yaml", model_dir)
        args = ["run", exp, "-o", tmp_path / "run", "--set", "trust_remote_code=true"]
    assert_user_error(cli_run(*args), "trust_remote_code", "--trust-remote-code")
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_remote_code_needs_the_flag(cli_run, remote_code_dir, monkeypatch):
    model_dir, marker = remote_code_dir
    result = cli_run("info", "--model", model_dir)  # transformers falls back to its own Llama code
    assert result.code == 0, result.err
    assert not marker.exists()
    from reptune import models

    seen = {}

    def fake_load(name, **kwargs):
        seen.update(kwargs)
        raise ReptuneError("stop here")

    monkeypatch.setattr(models, "load_model", fake_load)
    assert_user_error(cli_run("info", "--model", model_dir, "--trust-remote-code"), "stop here")
    assert seen["trust_remote_code"] is True


def test_resolved_config_with_remote_code_off_still_loads(tmp_path):
    from reptune.pipeline import parse_config
    from reptune.pipeline.runner import Experiment

    config = parse_config({"trust_remote_code": False})  # config.yaml of an older run says so
    assert "trust_remote_code" not in config.model_dump()
    assert Experiment(config, tmp_path / "r", trust_remote_code=True).load_options["trust_remote_code"] is True
    assert Experiment(config, tmp_path / "r").load_options["trust_remote_code"] is False


# ----------------------------------------------------------------------------- 5. Ctrl-C
def _interrupt(*_args, **_kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("command, fragment", [("tune", "--resume"), ("eval", "no item had finished"), ("info", "nothing was saved")])
def test_ctrl_c_exits_130_and_says_what_was_kept(cli_run, tiny_dir, statements_file, tmp_path, monkeypatch, command, fragment):
    from reptune import models

    monkeypatch.setattr(models, "load_model", _interrupt)
    args = {
        "tune": tune_args(tiny_dir, statements_file, tmp_path / "run"),
        "eval": ["eval", "--model", tiny_dir, "--tasks", "facts-ab", "-o", tmp_path / "r.json"],
        "info": ["info", "--model", tiny_dir],
    }[command]
    result = cli_run(*args)
    assert result.code == 130, result.err
    lines = [line for line in result.err.splitlines() if line.strip() and not line.startswith("[reptune ")]  # progress lines of a log
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and fragment in lines[0], result.err
    assert "Traceback" not in result.err


def test_an_interrupted_eval_counts_what_it_kept(tmp_path):
    from reptune.cli import _eval_interrupted

    output = tmp_path / "r.json"
    assert "no item had finished" in _eval_interrupted(output, True)
    partial = tmp_path / "r.json.partial"
    partial.mkdir()
    # as the runner writes them: a fingerprint line, then one line per finished item (the last one cut here)
    (partial / "facts-ab.jsonl").write_text('{"fingerprint": "f"}\n{"id": 1}\n{"id": 2}\n{"id": 3, "cut', encoding="utf-8")
    (partial / "tqa-ab.jsonl").write_text('{"fingerprint": "g"}\n{"id": 1}\n', encoding="utf-8")
    assert _eval_interrupted(output, True) == f"3 finished item(s) are kept in {partial}/; run the same command to resume"
    assert _eval_interrupted(output, False).startswith("--no-resume: 3 finished item(s)")


def test_explicit_exit_code_is_kept(cli_run, monkeypatch):
    import typer

    from reptune import cli

    def exit_three(*_args, **_kwargs):
        raise typer.Exit(3)

    monkeypatch.setattr(cli, "_load", exit_three)
    assert cli_run("info").code == 3


# ----------------------------------------------------------------------------- 6. tune --resume
def test_resume_refuses_other_data_or_vector(tmp_path):
    from conftest import build_model

    from reptune.tuning import TuneConfig, tune
    from reptune.tuning.items import TrainItem
    from reptune.vectors import SteeringVector, VectorMeta

    def items(word: str) -> list[TrainItem]:
        return [TrainItem(prompt=f"Is {word} {i} true? Answer:", correct=i % 2, label=i % 2) for i in range(12)]

    def vector(seed: int) -> SteeringVector:
        import torch

        torch.manual_seed(seed)
        return SteeringVector({2: torch.randn(32)}, VectorMeta("tiny-llama", 32, 4))

    config = TuneConfig.from_preset("honesty", layers="1-2", steps=4, batch_size=4, checkpoint_every=2, eval_every=2, autocast=None)
    out = tmp_path / "run"
    tune(build_model(), config, items("sky"), out, vector=vector(0), progress=False, save_model=False)
    longer = TuneConfig.from_preset("honesty", layers="1-2", steps=6, batch_size=4, checkpoint_every=2, eval_every=2, autocast=None)
    with pytest.raises(ReptuneError, match="different training data"):
        tune(build_model(), longer, items("grass"), out, vector=vector(0), resume=True, progress=False, save_model=False)
    with pytest.raises(ReptuneError, match="different vector"):
        tune(build_model(), longer, items("sky"), out, vector=vector(1), resume=True, progress=False, save_model=False)
    result = tune(build_model(), longer, items("sky"), out, vector=vector(0), resume=True, progress=False, save_model=False)
    assert result.metrics["steps_run"] == 6


# ----------------------------------------------------------------------------- 7. unknown tasks
@pytest.mark.parametrize("changes, fragment", [
    ({"evaluation": {"tasks": ["facts-ab", "tqa-abc"]}}, "unknown task 'tqa-abc'"),
    ({"evaluation": {"counter_tasks": ["fact-ab"]}}, "unknown task 'fact-ab'"),
    ({"evaluation": {"options": {"perplexity": {"windw": 3}}}}, "no option 'windw'"),
    ({"sweep": {"task": "facts"}}, "unknown task 'facts'"),
    ({"robustness": {"task": "mmlux"}}, "unknown task 'mmlux'"),
])
def test_unknown_tasks_fail_config_validation(cli_run, tiny_dir, tmp_path, changes, fragment):
    exp = write_experiment(tmp_path / "exp.yaml", tiny_dir, **changes)
    line = assert_user_error(cli_run("run", exp, "-o", tmp_path / "run"), fragment)
    if "unknown task" in fragment:
        assert "facts-ab" in line and "tqa-mc1" in line  # the known ones are listed
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- 8. one-line errors
def _vector_with_meta(path: Path, **changes) -> Path:
    import torch
    from safetensors.torch import save_file

    meta = {"model_id": "x", "hidden_size": 32, "num_layers": 4, "site": "block_output", **changes}
    save_file({"layer.1": torch.ones(32)}, str(path), metadata={"reptune": json.dumps(meta)})
    return path


@pytest.fixture()
def bad_inputs(tmp_path) -> dict[str, Path]:
    big = tmp_path / "big.csv"
    big.write_text("statement,label\n" + "x" * 140_000 + ",1\n", encoding="utf-8")
    deep = "[" * 100_000 + "]" * 100_000 + "\n"
    (tmp_path / "deep.jsonl").write_text(deep, encoding="utf-8")
    (tmp_path / "deep.json").write_text(deep, encoding="utf-8")
    return {"big": big, "deep_jsonl": tmp_path / "deep.jsonl", "deep_json": tmp_path / "deep.json"}


@pytest.mark.parametrize("case", ["extract-big-csv", "eval-big-csv", "extract-deep-jsonl", "extract-deep-json", "discover-deep-json"])
def test_bad_data_files_are_one_line_errors(cli_run, tiny_dir, tmp_path, bad_inputs, case):
    command, kind = case.split("-", 1)
    data = {"big-csv": bad_inputs["big"], "deep-jsonl": bad_inputs["deep_jsonl"], "deep-json": bad_inputs["deep_json"]}[kind]
    out = tmp_path / "out"
    args = {
        "extract": ["extract", "--model", tiny_dir, "--data", data, "-o", out / "v.safetensors"],
        "eval": ["eval", "--model", tiny_dir, "--tasks", "facts-ab", "--data", data, "-o", out / "r.json"],
        "discover": ["discover", "--model", tiny_dir, "--prompts", data, "-o", out / "d.safetensors"],
    }[command]
    assert_user_error(cli_run(*args), str(data))
    assert not out.exists()


@pytest.mark.parametrize("changes, fragment", [
    ({"num_layers": "4"}, "'num_layers' must be an integer"),
    ({"hidden_size": "32"}, "'hidden_size' must be an integer"),
    ({"hidden_size": True}, "'hidden_size' must be an integer"),
    ({"extra": "best"}, "'extra' must be an object"),
    ({"model_id": 7}, "'model_id' must be a string"),
    ({"extra": {"best_layers": "12"}}, "extra.best_layers"),
    ({"num_layers": 0}, "at least 1"),
])
def test_wrong_typed_vector_metadata(cli_run, tiny_dir, tmp_path, changes, fragment):
    vector = _vector_with_meta(tmp_path / "v.safetensors", **changes)
    assert_user_error(cli_run("steer", "--model", tiny_dir, "--vector", vector, "--prompt", "hi"), fragment)
    assert_user_error(cli_run("export-gguf", vector, "-o", tmp_path / "v.gguf"), fragment)
    assert not (tmp_path / "v.gguf").exists()


def test_deeply_nested_vector_metadata(cli_run, tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "v.safetensors"
    save_file({"layer.1": torch.ones(32)}, str(path), metadata={"reptune": "[" * 50_000 + "]" * 50_000})
    assert_user_error(cli_run("export-gguf", path, "-o", tmp_path / "v.gguf"), "metadata")


def _results_file(run_dir: Path, **entries) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps({"format": "reptune-experiment/1", "name": "x", **entries}), encoding="utf-8")
    return run_dir


@pytest.mark.parametrize("entries", [
    {"claims": "all supported"},
    {"claims": ["supported"]},
    {"headline": {"rows": "many"}},
    {"scores": {"untuned": "high"}},
    {"seeds": 3},
])
def test_report_on_hand_edited_results(cli_run, tmp_path, entries):
    run_dir = _results_file(tmp_path / "run", **entries)
    assert_user_error(cli_run("report", run_dir), "results.json")
    assert not (run_dir / "report.md").exists() and not (run_dir / "report.html").exists()


# ----------------------------------------------------------------------------- 9. outputs checked first
@pytest.fixture()
def no_model_load(monkeypatch):
    """Make any model load fail loudly: the checks under test must come before it."""
    from reptune import models

    def refuse(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the output paths were checked")

    monkeypatch.setattr(models, "load_model", refuse)


@pytest.mark.parametrize("case", ["extract-main", "extract-json", "extract-scan", "eval-main", "eval-figure", "eval-partial", "discover-report", "tune-file"])
def test_output_paths_checked_before_the_model_loads(cli_run, tiny_dir, statements_file, tmp_path, no_model_load, case):
    vec, res = tmp_path / "v.safetensors", tmp_path / "r.json"
    blocker = {
        "extract-main": vec, "extract-json": tmp_path / "v.json", "extract-scan": tmp_path / "v.scan.md",
        "eval-main": res, "eval-figure": tmp_path / "r.robustness.png", "eval-partial": tmp_path / "r.json.partial",
        "discover-report": tmp_path / "d.discovery.md", "tune-file": tmp_path / "run",
    }[case]
    if case == "eval-partial":
        blocker.mkdir()
        (blocker / "thesis.txt").write_text("mine", encoding="utf-8")
    elif case == "tune-file":
        blocker.write_text("a file", encoding="utf-8")
    else:
        blocker.mkdir()
    command = case.split("-")[0]
    args = {
        "extract": ["extract", "--model", tiny_dir, "-o", vec],
        "eval": ["eval", "--model", tiny_dir, "--tasks", "facts-ab", "-o", res],
        "discover": ["discover", "--model", tiny_dir, "--prompt", "hi", "-o", tmp_path / "d.safetensors"],
        "tune": tune_args(tiny_dir, statements_file, tmp_path / "run"),
    }[command]
    line = assert_user_error(cli_run(*args), str(blocker))
    assert ".tmp" not in line


def test_atomic_write_onto_a_directory_names_it(tmp_path):
    from reptune._io import write_text_atomic

    (tmp_path / "x.json").mkdir()
    with pytest.raises(ReptuneError, match=r"x\.json: it is a directory"):
        write_text_atomic(tmp_path / "x.json", "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


# ----------------------------------------------------------------------------- 10. completion record last
def test_kill_during_weight_save_leaves_no_completion_record(tmp_path):
    from conftest import build_model

    from reptune.tuning import TuneConfig, tune
    from reptune.tuning.items import TrainItem

    items = [TrainItem(prompt=f"Is sky {i} true? Answer:", correct=i % 2, label=i % 2) for i in range(12)]
    config = TuneConfig.from_preset("truth", layers="1-2", steps=2, batch_size=4, eval_every=2, autocast=None)
    out = tmp_path / "run"
    handle = build_model()

    def killed_save(directory, *args, **kwargs):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "model.safetensors").write_bytes(b"half a model")
        raise KeyboardInterrupt

    handle.model.save_pretrained = killed_save
    with pytest.raises(KeyboardInterrupt):
        tune(handle, config, items, out, progress=False)
    assert not (out / "metrics.json").exists() and (out / ".model.tmp").is_dir()
    (out / "checkpoints" / ".step-9.tmp").mkdir()
    result = tune(build_model(), config, items, out, resume=True, progress=False)
    assert json.loads((out / "metrics.json").read_text())["stopped"] == result.metrics["stopped"]
    assert not (out / ".model.tmp").exists() and not (out / "checkpoints" / ".step-9.tmp").exists()
    assert (out / "model.safetensors").stat().st_size > 1000


# ----------------------------------------------------------------------------- 11. numeric options
@pytest.mark.parametrize("extra, fragment", [
    (["--w-rep", "nan"], "w_rep must be a finite number"),
    (["--lr", "inf"], "lr must be a finite number"),
    (["--lr", "5"], "learning rates must be in (0, 1]"),
    (["--w-tok", "-inf"], "w_tok must be a finite number"),
    (["--param-group", "mlp=nan"], "param_groups[0].lr must be a finite number"),
])
def test_tune_numbers_finite_and_in_range(cli_run, tiny_dir, statements_file, tmp_path, no_model_load, extra, fragment):
    assert_user_error(cli_run(*tune_args(tiny_dir, statements_file, tmp_path / "run", *extra)), fragment)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command, extra, fragment", [
    ("eval", ["--multiplier", "nan"], "--multiplier must be a finite number"),
    ("steer", ["-x", "inf"], "--multiplier must be a finite number"),
    ("steer", ["-x", "1", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    ("extract", ["--limit", "0"], "--limit must be at least 1"),
    ("discover", ["--lr", "nan"], "--lr must be a finite number > 0"),
    ("discover", ["--q", "0"], "--q must be a finite number > 0"),
    ("discover", ["--num", "0"], "--num must be at least 1"),
])
def test_cli_numbers_finite_and_in_range(cli_run, tiny_dir, tmp_path, no_model_load, command, extra, fragment):
    vector = _vector_with_meta(tmp_path / "v.safetensors", num_layers=4, hidden_size=32, model_id=str(tiny_dir))
    args = {
        "eval": ["eval", "--model", tiny_dir, "--tasks", "facts-ab", "-o", tmp_path / "out" / "r.json"],
        "steer": ["steer", "--model", tiny_dir, "--vector", vector, "--prompt", "hi"],
        "extract": ["extract", "--model", tiny_dir, "-o", tmp_path / "out" / "v.safetensors"],
        "discover": ["discover", "--model", tiny_dir, "--prompt", "hi", "-o", tmp_path / "out" / "d.safetensors"],
    }[command]
    assert_user_error(cli_run(*args, *extra), fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, value", [("train.lr", ".inf"), ("sweep.multipliers", "[-2, .nan, 2]"), ("claims.alpha", ".nan")])
def test_experiment_numbers_finite(cli_run, tiny_dir, tmp_path, key, value):
    exp = write_experiment(tmp_path / "exp.yaml", tiny_dir)
    assert_user_error(cli_run("run", exp, "-o", tmp_path / "run", "--set", f"{key}={value}"), key.split(".")[0])
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- 12. umask
@pytest.fixture()
def umask_027():
    import os

    from reptune import _io

    old = os.umask(0o027)
    _io._UMASK = None
    yield
    os.umask(old)
    _io._UMASK = None


def test_written_files_respect_the_umask(cli_run, tiny_dir, tmp_path, umask_027):
    import stat

    from reptune._io import write_json_atomic

    write_json_atomic(tmp_path / "a.json", {"x": 1})
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"positive": f"The sky is blue {i}.", "negative": f"The sky is green {i}."}) + "\n" for i in range(8)))
    vec = tmp_path / "out" / "v.safetensors"
    result = cli_run("extract", "--model", tiny_dir, "--precision", "fp32", "--data", pairs, "-o", vec)
    assert result.code == 0, result.err
    for path in (vec, vec.with_suffix(".json"), tmp_path / "out" / "v.scan.md"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path


def test_tuned_weights_and_checkpoints_respect_the_umask(cli_run, tiny_dir, statements_file, tmp_path, umask_027):
    import stat

    run = tmp_path / "run"  # safetensors writes its files 0600: the weights and every checkpoint file were private
    result = cli_run(*tune_args(tiny_dir, statements_file, run, "--checkpoint-every", "1"))
    assert result.code == 0, result.err
    written = [run, *run.rglob("*")]
    assert {"model.safetensors", "trainable.safetensors", "optimizer.safetensors"} <= {p.name for p in written}
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == (0o750 if path.is_dir() else 0o640), path


# ----------------------------------------------------------------------------- 13. pickled weights
@pytest.fixture()
def pickled_model_dir(tiny_dir, tmp_path) -> Path:
    """The tiny model with its weights as a pickled pytorch_model.bin instead of safetensors."""
    import shutil

    import torch
    from safetensors.torch import load_file

    model_dir = tmp_path / "pickled-model"
    shutil.copytree(tiny_dir, model_dir)
    state = load_file(str(model_dir / "model.safetensors"))
    (model_dir / "model.safetensors").unlink()
    torch.save(state, model_dir / "pytorch_model.bin")
    return model_dir


def test_pickled_weights_are_refused_unless_allowed(cli_run, pickled_model_dir, monkeypatch):
    import torch

    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a) or real_load(*a, **k))
    assert_user_error(cli_run("info", "--model", pickled_model_dir), "pickled weights", "--allow-pickle")
    assert not calls  # torch.load never ran
    result = cli_run("info", "--model", pickled_model_dir, "--allow-pickle")
    assert result.code == 0, result.err


def test_safetensors_preferred_over_a_pickle_beside_them(tiny_dir, tmp_path, monkeypatch):
    import shutil

    import torch

    from reptune.models import load_model

    model_dir = tmp_path / "both"
    shutil.copytree(tiny_dir, model_dir)
    (model_dir / "pytorch_model.bin").write_bytes(b"not even a pickle")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    assert load_model(str(model_dir)).num_layers == 4


# ----------------------------------------------------------------------------- 14. data before model
@pytest.fixture()
def broken_csv(tmp_path) -> Path:
    path = tmp_path / "broken.csv"
    path.write_text("statement,label\nThe sky is blue.,maybe\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("command", ["extract", "tune", "tune-retain", "eval", "eval-tqa", "eval-robustness"])
def test_data_errors_come_before_the_model_loads(cli_run, tiny_dir, statements_file, broken_csv, tmp_path, no_model_load, command):
    out = tmp_path / "out"
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"positive": "a"}\n', encoding="utf-8")
    tqa = tmp_path / "TruthfulQA.csv"
    tqa.write_text("Question,Best\nq,a\n", encoding="utf-8")
    args, fragment = {
        "extract": (["extract", "--model", tiny_dir, "--data", broken_csv, "-o", out / "v.safetensors"], "label must be"),
        "tune": (tune_args(tiny_dir, broken_csv, out), "label must be"),
        "tune-retain": (tune_args(tiny_dir, statements_file, out, "--retain", "kl", "--retain-data", bad_jsonl), "negative"),
        "eval": (["eval", "--model", tiny_dir, "--tasks", "facts-ab", "--data", broken_csv, "-o", out / "r.json"], "label must be"),
        "eval-tqa": (["eval", "--model", tiny_dir, "--tasks", "tqa-ab", "--data", tqa, "-o", out / "r.json"], "TruthfulQA columns"),
        "eval-robustness": (["eval", "--model", tiny_dir, "--tasks", "robustness", "--data", broken_csv, "-o", out / "r.json"], "label must be"),
    }[command]
    assert_user_error(cli_run(*args), fragment)
    assert not out.exists()


# ----------------------------------------------------------------------------- 15. --resume with nothing to resume
@pytest.mark.parametrize("state", ["missing", "empty"])
def test_resume_without_a_checkpoint_is_refused(cli_run, tiny_dir, statements_file, tmp_path, no_model_load, state):
    out = tmp_path / "run"
    if state == "empty":
        out.mkdir()
    assert_user_error(cli_run(*tune_args(tiny_dir, statements_file, out, "--resume")), "--resume", "nothing to continue")
    assert (out.exists() and not any(out.iterdir())) if state == "empty" else not out.exists()


# ----------------------------------------------------------------------------- 16. third-party warnings
def test_eval_prints_no_library_warnings(tiny_dir, tmp_path):
    """The real console, in a fresh process: transformers' deprecation lines must not reach stderr."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "REPTUNE_DEBUG": "0", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    env.pop("TRANSFORMERS_VERBOSITY", None)
    args = [sys.executable, "-m", "reptune.cli", "eval", "--model", str(tiny_dir), "--precision", "fp32", "--tasks", "facts-ab",
            "--limit", "4", "-o", str(tmp_path / "r.json")]
    result = subprocess.run(args, check=False, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "deprecated" not in result.stderr and "Warning" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()  # no terminal: a log line says the model loads, then the result
    assert len(lines) == 2 and lines[0].endswith(f"loading {tiny_dir} (fp32) ...") and lines[1] == f"wrote {tmp_path / 'r.json'}", lines


def test_library_warnings_silenced_unless_debug(cli_run, monkeypatch):
    import warnings

    from transformers.utils import logging as hf_logging

    from reptune import models

    seen = {}

    def warn_then_fail(*_args, **_kwargs):
        seen["verbosity"] = hf_logging.get_verbosity()
        warnings.warn_explicit("`past_key_values` is deprecated", FutureWarning, "module.py", 1, module="torch.nn.modules.module")
        warnings.warn_explicit("a tip", UserWarning, "x.py", 1, module="transformers.generation")
        raise ReptuneError("cannot load model 'x': broken")

    monkeypatch.setattr(models, "load_model", warn_then_fail)
    for debug, expected in ((False, 0), (True, 2)):
        monkeypatch.setenv("REPTUNE_DEBUG", "1" if debug else "0")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if debug:
                with pytest.raises(ReptuneError):
                    cli_run("info", "--model", "x")
            else:
                assert_user_error(cli_run("info", "--model", "x"), "broken")
        assert len(caught) == expected, [str(w.message) for w in caught]
        assert (seen["verbosity"] == hf_logging.ERROR) is not debug
