"""The ``reptune`` command: happy paths and the user-error contract.

The contract for a mistake in user input: exit code 2, exactly one ``error: ...`` line on
stderr, no traceback, and no output file left behind; ``--debug`` lets the exception through.
Commands run in-process through :func:`reptune.cli.main` (one subprocess case checks the real
console script).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CliRun

from reptune.data import load_pairs_jsonl, pairs_hash
from reptune.directions import extract_vector
from reptune.errors import ReptuneError
from reptune.models import load_model
from reptune.vectors import SteeringVector, VectorMeta, load_vector, read_gguf_control_vector

HIDDEN, LAYERS = 32, 4  # the tiny_dir model
REPTUNE_BIN = Path(sys.executable).with_name("reptune")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    # --debug sets REPTUNE_DEBUG in os.environ; make sure it never leaks between tests
    monkeypatch.setenv("REPTUNE_DEBUG", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("REPTUNE_DATA_DIR", raising=False)


@pytest.fixture()
def run(cli_run):
    return cli_run


def assert_user_error(result: CliRun, *fragments: str) -> str:
    assert result.code == 2, (result.code, result.err[-2000:])
    assert "Traceback" not in result.err and "Traceback" not in result.out
    lines = result.error_lines()
    assert len(lines) == 1, result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


@pytest.fixture()
def pairs_file(tmp_path) -> Path:
    """Ten (prompt, completion) pairs that differ in the completion, labels alternating."""
    facts = ["The sky is blue.", "The grass is green.", "Cats are mammals.", "Two plus two is four.", "Water boils at 100 degrees."]
    records = []
    for index in range(10):
        fact = facts[index % len(facts)]
        prompt = f"Is the statement true or false? {fact} Answer:"
        records.append({"positive": {"prompt": prompt, "completion": " (A) True"}, "negative": {"prompt": prompt, "completion": " (B) False"}, "label": index % 2})
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def base_extract(tiny_dir: Path, data: Path | str, output: Path, *extra: object) -> list[object]:
    return ["extract", "--model", tiny_dir, "--precision", "fp32", "--data", data, "--output", output, *extra]


@pytest.fixture()
def tiny_vector(tiny_dir, tmp_path) -> Path:
    """A valid vector for the tiny_dir model at every layer (made through the API)."""
    gen = torch.Generator().manual_seed(0)
    meta = VectorMeta(model_id=str(tiny_dir), hidden_size=HIDDEN, num_layers=LAYERS, extra={"best_layers": [2]})
    vector = SteeringVector({layer: torch.randn(HIDDEN, generator=gen) for layer in range(LAYERS)}, meta)
    return vector.save(tmp_path / "vectors" / "tiny.safetensors")


# --------------------------------------------------------------------------- happy paths


def test_info(run, tiny_dir):
    result = run("info", "--model", tiny_dir)
    assert result.code == 0, result.err
    assert re.search(r"num_layers\s*│\s*4\b", result.out), result.out
    assert re.search(r"hidden_size\s*│\s*32\b", result.out), result.out
    assert "LlamaForCausalLM" in result.out
    assert "model.layers" in result.out


def test_extract_writes_vector_and_scan(run, tiny_dir, pairs_file, tmp_path):
    output = tmp_path / "out" / "vec.safetensors"
    result = run(*base_extract(tiny_dir, pairs_file, output, "--layers", "1,3", "--method", "mean-diff", "--normalize", "unit"))
    assert result.code == 0, result.err
    assert files_under(tmp_path / "out") == ["vec.json", "vec.safetensors", "vec.scan.json", "vec.scan.md", "vec.scan.png"]
    flat = re.sub(r"\s+", "", result.err)  # rich hard-wraps long paths at 80 columns
    assert f"wrote{output}(2layers,10pairsfrom{pairs_file})" in flat

    vector = load_vector(output)
    assert vector.layers == [1, 3]
    meta = vector.meta
    assert (meta.model_id, meta.hidden_size, meta.num_layers) == (str(tiny_dir), HIDDEN, LAYERS)
    assert (meta.method, meta.normalization, meta.positions, meta.num_pairs) == ("mean-diff", "unit", "last", 10)
    assert meta.dataset_hash == pairs_hash(load_pairs_jsonl(pairs_file))
    for layer in vector.layers:
        assert float(vector[layer].norm()) == pytest.approx(1.0, abs=1e-5)  # --normalize unit

    # the CLI computes exactly what the Python API computes
    handle = load_model(str(tiny_dir))
    expected, _ = extract_vector(handle, load_pairs_jsonl(pairs_file), "1,3", normalize="unit", progress=False)
    for layer in (1, 3):
        torch.testing.assert_close(vector[layer], expected[layer], rtol=1e-5, atol=1e-6)

    scan = json.loads((tmp_path / "out" / "vec.scan.json").read_text())
    assert [row["layer"] for row in scan["layers"]] == [1, 3]
    assert set(scan["best_layers"]) <= {1, 3} and scan["best_layers"][0] == vector.meta.extra["best_layers"][0]
    assert (tmp_path / "out" / "vec.scan.md").read_text().startswith("| layer |")
    assert (tmp_path / "out" / "vec.scan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sidecar = json.loads(output.with_suffix(".json").read_text())
    assert sidecar["layers"] == [1, 3]


def test_steer_one_column_per_multiplier(run, tiny_dir, tiny_vector):
    result = run(
        "steer", "--model", tiny_dir, "--precision", "fp32", "--vector", tiny_vector, "--prompt", "The sky is",
        "--multiplier", "-2", "--multiplier", "0", "--multiplier", "2", "--max-new-tokens", "4",
    )
    assert result.code == 0, result.err
    header = next(line for line in result.out.splitlines() if "prompt" in line)
    columns = [cell.strip() for cell in header.strip().strip("┃│").split("┃")]
    assert columns == ["prompt", "x -2", "x 0", "x 2"], header
    assert "The sky is" in result.out
    assert "layer(s) 2" in result.out  # the vector's recorded best layer is the default


def test_steer_explicit_layers_and_missing_layer(run, tiny_dir, tmp_path):
    meta = VectorMeta(model_id=str(tiny_dir), hidden_size=HIDDEN, num_layers=LAYERS)
    path = SteeringVector({1: torch.ones(HIDDEN)}, meta).save(tmp_path / "one.safetensors")
    ok = run("steer", "--model", tiny_dir, "--precision", "fp32", "-v", path, "--prompt", "Hi", "-x", "1", "-n", "2", "--layers", "1")
    assert ok.code == 0, ok.err
    bad = run("steer", "--model", tiny_dir, "--precision", "fp32", "-v", path, "--prompt", "Hi", "-x", "1", "-n", "2", "--layers", "2")
    assert_user_error(bad, "no layer(s) [2]", "it has 1")


def test_export_gguf(run, tiny_vector, tmp_path):
    output = tmp_path / "gguf" / "control.gguf"
    result = run("export-gguf", tiny_vector, "--output", output)
    assert result.code == 0, result.err
    source = load_vector(tiny_vector)
    back = read_gguf_control_vector(output)
    assert sorted(back) == [1, 2, 3]  # layer 0 has no llama.cpp slot and is left out
    for layer in back:
        assert torch.equal(back[layer], source[layer])

    picked = tmp_path / "gguf" / "picked.gguf"
    assert run("export-gguf", tiny_vector, "-o", picked, "--layers", "2-3", "--model-hint", "qwen2").code == 0
    assert sorted(read_gguf_control_vector(picked)) == [2, 3]


def test_export_gguf_layer_zero_refused(run, tiny_vector, tmp_path):
    output = tmp_path / "zero.gguf"
    assert_user_error(run("export-gguf", tiny_vector, "-o", output, "--layers", "0"), "layer 0")
    assert not output.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["vectors"]


# --------------------------------------------------------------------------- user errors: extract


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--layers", "99"], ["layer 99 is out of range", "4 layers"]),
        (["--layers", "1-x"], ["invalid layer spec '1-x'"]),
        (["--layers", "3-1"], ["runs backwards"]),
        (["--method", "magic"], ["unknown method 'magic'"]),
        (["--normalize", "weird"], ["unknown normalization 'weird'"]),
        (["--positions", "bogus"], ["invalid positions 'bogus'"]),
        (["--positions", "last:x"], ["last:N needs an integer N"]),
        (["--positions", "marker:NOT-IN-TEXT"], ["marker 'NOT-IN-TEXT' not found"]),
        (["--limit", "0"], ["limit must be at least 1"]),
        (["--precision", "fp8"], ["precision must be one of auto, bf16, fp32"]),
    ],
)
def test_extract_bad_options(run, tiny_dir, pairs_file, tmp_path, extra, fragments):
    out_dir = tmp_path / "out"
    result = run(*base_extract(tiny_dir, pairs_file, out_dir / "v.safetensors", *extra))  # a repeated option: the last wins
    assert_user_error(result, *fragments)
    assert files_under(out_dir) == []


def test_extract_positions_last_zero_message(run, tiny_dir, pairs_file, tmp_path):
    result = run(*base_extract(tiny_dir, pairs_file, tmp_path / "v.safetensors", "--positions", "last:0"))
    assert_user_error(result, "at least one token")


def test_extract_malformed_jsonl_names_file_and_line(run, tiny_dir, tmp_path):
    data = tmp_path / "bad.jsonl"
    good = json.dumps({"positive": "a", "negative": "b"})
    data.write_text(f"{good}\n{good}\n{{\"positive\": \"a\", \"negtive\": \"b\"}}\n{good}\n", encoding="utf-8")
    result = run(*base_extract(tiny_dir, data, tmp_path / "out" / "v.safetensors"))
    assert_user_error(result, f"{data}:3:", "missing field(s) negative")
    assert files_under(tmp_path / "out") == []


def test_extract_bad_json_line(run, tiny_dir, tmp_path):
    data = tmp_path / "broken.jsonl"
    data.write_text('{"positive": "a", "negative": "b"}\n{oops\n', encoding="utf-8")
    assert_user_error(run(*base_extract(tiny_dir, data, tmp_path / "v.safetensors")), "broken.jsonl:2:", "invalid JSON")
    assert not (tmp_path / "v.safetensors").exists()


def test_extract_non_utf8_data(run, tiny_dir, tmp_path):
    data = tmp_path / "latin1.csv"
    data.write_bytes(b"statement,label\nCaf\xe9 au lait is French.,1\n")
    assert_user_error(run(*base_extract(tiny_dir, data, tmp_path / "v.safetensors")), "latin1.csv", "UTF-8")
    assert not (tmp_path / "v.safetensors").exists()


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_extract_empty_dataset(run, tiny_dir, tmp_path, content):
    data = tmp_path / "empty.jsonl"
    data.write_text(content)
    assert_user_error(run(*base_extract(tiny_dir, data, tmp_path / "out" / "v.safetensors")), "empty.jsonl", "no contrast pairs")
    assert files_under(tmp_path / "out") == []


@pytest.mark.parametrize("data, fragment", [("missing.jsonl", "dataset file not found"), ("nonsense", "unknown dataset 'nonsense'"), ("facts", "REPTUNE_DATA_DIR")])
def test_extract_unresolvable_data(run, tiny_dir, tmp_path, monkeypatch, data, fragment):
    monkeypatch.chdir(tmp_path)
    assert_user_error(run(*base_extract(tiny_dir, data, tmp_path / "out" / "v.safetensors")), fragment)
    assert files_under(tmp_path / "out") == []


@pytest.mark.parametrize("name", ["vec.pt", "vec", "vec.safetensors.json"])
def test_extract_output_must_be_safetensors(run, tiny_dir, pairs_file, tmp_path, name):
    result = run(*base_extract(tiny_dir, pairs_file, tmp_path / "out" / name))
    assert_user_error(result, "--output must end in .safetensors")
    assert files_under(tmp_path / "out") == []


def test_extract_error_keeps_existing_output(run, tiny_dir, pairs_file, tmp_path, tiny_vector):
    before = tiny_vector.read_bytes()
    assert_user_error(run(*base_extract(tiny_dir, pairs_file, tiny_vector, "--layers", "99")), "out of range")
    assert tiny_vector.read_bytes() == before
    assert sorted(p.name for p in tiny_vector.parent.iterdir()) == ["tiny.json", "tiny.safetensors"]


def test_nonexistent_model_path(run, pairs_file, tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    result = run(*base_extract(missing, pairs_file, tmp_path / "out" / "v.safetensors"))
    assert_user_error(result, "model path not found", str(missing))
    assert files_under(tmp_path / "out") == []


def test_model_directory_without_config(run, pairs_file, tmp_path):
    folder = tmp_path / "notamodel"
    folder.mkdir()
    assert_user_error(run("info", "--model", folder), "no config.json")


def test_hub_id_while_offline_fails_fast(run, pairs_file, tmp_path):
    start = time.monotonic()
    result = run(*base_extract("someorg/some-model-that-does-not-exist", pairs_file, tmp_path / "out" / "v.safetensors"))
    assert time.monotonic() - start < 10
    assert_user_error(result, "someorg/some-model-that-does-not-exist", "offline")
    assert files_under(tmp_path / "out") == []


# --------------------------------------------------------------------------- user errors: vectors


def test_steer_vector_for_other_hidden_size(run, tiny_dir, tmp_path):
    meta = VectorMeta(model_id=str(tiny_dir), hidden_size=64, num_layers=LAYERS)
    path = SteeringVector({1: torch.ones(64)}, meta).save(tmp_path / "wide.safetensors")
    before = files_under(tmp_path)
    result = run("steer", "--model", tiny_dir, "--precision", "fp32", "-v", path, "--prompt", "Hi", "-n", "2")
    assert_user_error(result, "hidden size 64", "has 32")
    assert files_under(tmp_path) == before


def test_steer_vector_for_other_model_id(run, tiny_dir, tmp_path):
    meta = VectorMeta(model_id="some/other-model", hidden_size=HIDDEN, num_layers=LAYERS)
    path = SteeringVector({1: torch.ones(HIDDEN)}, meta).save(tmp_path / "other.safetensors")
    args = ["steer", "--model", tiny_dir, "--precision", "fp32", "-v", path, "--prompt", "Hi", "-x", "1", "-n", "2"]
    assert_user_error(run(*args), "some/other-model", "--allow-model-mismatch")
    assert run(*args, "--allow-model-mismatch").code == 0


def nan_vector_file(tmp_path: Path, tiny_dir: Path) -> Path:
    from dataclasses import asdict

    from safetensors.torch import save_file

    tensor = torch.ones(HIDDEN)
    tensor[5] = float("nan")
    meta = VectorMeta(model_id=str(tiny_dir), hidden_size=HIDDEN, num_layers=LAYERS)
    path = tmp_path / "nan.safetensors"
    save_file({"layer.1": tensor, "layer.2": torch.ones(HIDDEN)}, str(path), metadata={"reptune": json.dumps(asdict(meta))})
    return path


def test_steer_nan_vector(run, tiny_dir, tmp_path):
    path = nan_vector_file(tmp_path, tiny_dir)
    result = run("steer", "--model", tiny_dir, "--precision", "fp32", "-v", path, "--prompt", "Hi", "-n", "2")
    assert_user_error(result, "nan.safetensors", "NaN or inf")


def test_export_gguf_nan_vector(run, tiny_dir, tmp_path):
    path = nan_vector_file(tmp_path, tiny_dir)
    output = tmp_path / "out.gguf"
    assert_user_error(run("export-gguf", path, "-o", output), "NaN or inf")
    assert not output.exists()
    assert files_under(tmp_path) == ["nan.safetensors"]


@pytest.mark.parametrize("content, fragment", [(b"garbage bytes", "not a readable safetensors file"), (None, "vector file not found")])
def test_steer_unreadable_vector(run, tiny_dir, tmp_path, content, fragment):
    path = tmp_path / "v.safetensors"
    if content is not None:
        path.write_bytes(content)
    assert_user_error(run("steer", "--model", tiny_dir, "-v", path, "--prompt", "Hi"), fragment)


# --------------------------------------------------------------------------- usage errors, --debug, real entry point


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["extract", "--data", "honesty"], "output"),  # required --output missing
        (["extract", "-o", "v.safetensors", "--bogus"], "No such option: --bogus"),
        (["extract", "-o", "v.safetensors", "--limit", "many"], "--limit"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_click_usage_error_is_one_line(run, tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    result = run(*args)
    assert_user_error(result, fragment)
    assert files_under(tmp_path) == []


def test_debug_shows_the_exception(run, tiny_dir, pairs_file, tmp_path):
    with pytest.raises(ReptuneError, match="layer 99 is out of range"):
        run("--debug", *base_extract(tiny_dir, pairs_file, tmp_path / "v.safetensors", "--layers", "99"))
    assert not (tmp_path / "v.safetensors").exists()


@pytest.mark.skipif(not REPTUNE_BIN.exists(), reason="console script not installed")
def test_console_script_error_contract(tiny_dir, pairs_file, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("REPTUNE_DEBUG", None)
    proc = subprocess.run(
        [str(REPTUNE_BIN), *map(str, base_extract(tiny_dir, pairs_file, tmp_path / "v.pt"))],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["error: --output must end in .safetensors, got v.pt"]


def test_extract_unwritable_output_is_a_user_error(run, tiny_dir, pairs_file, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("I am a file, not a folder")
    result = run(*base_extract(tiny_dir, pairs_file, blocker / "v.safetensors"))
    assert_user_error(result, "afile")


# --------------------------------------------------------------------- tune


@pytest.fixture()
def statements_file(tmp_path) -> Path:
    path = tmp_path / "statements.csv"
    rows = ["statement,label"] + [f"The sky is {'blue' if i % 2 else 'green'} {i}.,{i % 2}" for i in range(24)]
    path.write_text("\n".join(rows) + "\n")
    return path


def tune_args(tiny_dir, data, output, *extra):
    return ["tune", "--model", tiny_dir, "--data", data, "--layers", "1-2", "--steps", "3", "--batch-size", "4",
            "--precision", "fp32", "-o", output, *extra]


def test_tune_cli_weights_blocks_writes_the_trained_blocks_that_eval_loads(run, tiny_dir, statements_file, tmp_path):
    out = tmp_path / "run"
    result = run(*tune_args(tiny_dir, statements_file, out, "--preset", "truth", "--weights", "blocks"))
    assert result.code == 0, result.err
    assert (out / "tuned_blocks.safetensors").is_file() and not (out / "model.safetensors").exists()
    tuned, base = load_model(str(out)), load_model(str(tiny_dir))
    changed = [name for name, param in tuned.model.named_parameters() if not torch.equal(param, dict(base.model.named_parameters())[name])]
    assert changed and all(".layers.1." in name or ".layers.2." in name for name in changed)
    scored = run("eval", "--model", out, "--tasks", "facts-ab", "--data", statements_file, "--limit", "4", "--precision", "fp32", "-o", tmp_path / "eval.json")
    assert scored.code == 0, scored.err


def test_tune_cli_writes_a_loadable_run(run, tiny_dir, tiny_vector, statements_file, tmp_path):
    out = tmp_path / "run"
    result = run(*tune_args(tiny_dir, statements_file, out, "--preset", "honesty", "--vector", tiny_vector, "--rep-layers", "2"))
    assert result.code == 0, result.err
    for name in ("config.json", "model.safetensors", "tune_config.json", "metrics.json", "loss_curves.png", "README.md"):
        assert (out / name).is_file(), name
    config = json.loads((out / "tune_config.json").read_text())
    assert config["preset"] == "honesty" and config["rep_sign"] == 1 and config["steps"] == 3
    assert load_model(str(out)).num_layers == LAYERS
    again = run(*tune_args(tiny_dir, statements_file, out, "--preset", "truth"))
    assert_user_error(again, "already holds a run", "--resume")


def test_tune_print_config(run):
    result = run("tune", "--preset", "dishonesty", "--lr", "1e-4", "--print-config", "-o", "unused")
    config = json.loads(result.out)
    assert result.code == 0 and config["rep_sign"] == -1 and config["lr"] == 1e-4 and config["token_target"] == "lie"


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--preset", "honest"], "unknown preset 'honest'"),
        (["--preset", "honesty"], "needs --vector"),
        (["--preset", "truth", "--steps", "0"], "steps must be at least 1"),
        (["--preset", "truth", "--retain", "sometimes"], "retain must be one of"),
        (["--preset", "truth", "--param-group", "(=1e-3"], "--param-group"),
        (["--preset", "truth", "--layers", "9"], "out of range"),
    ],
)
def test_tune_bad_options(run, tiny_dir, statements_file, tmp_path, extra, fragment):
    out = tmp_path / "run"
    result = run(*tune_args(tiny_dir, statements_file, out)[:-2], *extra, "-o", out)
    assert_user_error(result, fragment)
    assert files_under(out) == []


def test_tune_vector_mismatch_and_missing_layer(run, tiny_dir, statements_file, tmp_path):
    other = tmp_path / "other.safetensors"
    SteeringVector({2: torch.ones(16)}, VectorMeta(model_id="elsewhere", hidden_size=16, num_layers=LAYERS)).save(other)
    result = run(*tune_args(tiny_dir, statements_file, tmp_path / "a", "--preset", "pos", "--vector", other))
    assert_user_error(result, "hidden size")
    only_three = tmp_path / "three.safetensors"
    SteeringVector({3: torch.ones(HIDDEN)}, VectorMeta(model_id=str(tiny_dir), hidden_size=HIDDEN, num_layers=LAYERS)).save(only_three)
    result = run(*tune_args(tiny_dir, statements_file, tmp_path / "b", "--preset", "pos", "--vector", only_three))
    assert_user_error(result, "none of the trained layers")
    assert files_under(tmp_path / "a") == [] and files_under(tmp_path / "b") == []


def test_tune_data_without_labels(run, tiny_dir, pairs_file, tmp_path):
    result = run(*tune_args(tiny_dir, pairs_file, tmp_path / "run", "--preset", "truth"))
    assert_user_error(result, "needs A/B items")
    assert files_under(tmp_path / "run") == []


def test_eval_help_lists_every_task(run, monkeypatch):
    from reptune.evaluation.registry import available_tasks

    monkeypatch.setenv("COLUMNS", "400")  # rich wraps help at the terminal's width
    result = run("eval", "--help")
    assert result.code == 0
    text = " ".join(result.out.split())
    for name in available_tasks():
        assert name in text, name


def test_eval_title_says_which_tasks_were_steered():
    from reptune.cli import _eval_title

    assert _eval_title("m", None, 1.0, None, ["facts-ab"]) == "m"
    assert _eval_title("m", {"layers": [3]}, 4.0, "3", ["facts-ab"]) == "m steered x4 at 3"
    own = {"not_applied_to": ["robustness"]}
    assert _eval_title("m", own, 1.0, "3", ["robustness"]) == "m (unsteered; robustness use(s) the vector their own way)"
    assert _eval_title("m", own, 1.0, "3", ["facts-ab", "robustness"]) == "m steered x1 at 3, except robustness (the vector used its own way)"


def test_output_into_a_pipe_is_not_cut_at_80_columns(tiny_dir):
    """`reptune ... | less` or `> log`: whole option names and table cells, not "--allow-model-mism…"."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "REPTUNE_DEBUG": "0", "HF_HUB_OFFLINE": "1"}
    env.pop("COLUMNS", None)
    env.pop("TERMINAL_WIDTH", None)
    helped = subprocess.run([sys.executable, "-m", "reptune.cli", "steer", "--help"], capture_output=True, text=True, env=env, check=False, timeout=120)
    assert helped.returncode == 0 and "--allow-model-mismatch" in helped.stdout and "…" not in helped.stdout
    info = subprocess.run([sys.executable, "-m", "reptune.cli", "info", "--model", str(tiny_dir)], capture_output=True, text=True, env=env, check=False, timeout=120)
    assert info.returncode == 0 and "…" not in info.stdout


def test_run_help_names_every_shipped_experiment_and_demo_takes_runs_options(run, monkeypatch):
    from pathlib import Path as _Path

    import reptune.pipeline.config as config_module

    monkeypatch.setenv("COLUMNS", "400")
    text = " ".join(run("run", "--help").out.split())
    for shipped in sorted((_Path(config_module.__file__).parent / "resources").glob("*.yaml")):
        assert shipped.stem in text, shipped.stem
    printed = run("demo", "--print-config", "--set", "train.steps=3")
    assert printed.code == 0 and "steps: 3" in printed.out and "name: demo" in printed.out
