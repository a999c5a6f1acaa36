"""Serving without the engines: ``reptune export-model``'s checks and plumbing, finding llama.cpp,
and the vLLM steering plugin's per-request / per-row logic.

These run in CI. The engines themselves (llama.cpp, vLLM) are exercised by
``tests/test_llamacpp.py`` and ``tests/test_vllm.py``, which skip without the optional builds.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib
import torch

from reptune.errors import ReptuneError
from reptune.serving import vllm_plugin
from reptune.serving.llamacpp import LlamaServer, check_model_dir, export_model, find_llama_cpp, read_gguf_info
from reptune.serving.vllm_plugin import SteeringState, add_to_block_output, request_multiplier, token_multipliers

ROOT = Path(__file__).resolve().parents[1]

# A stand-in for llama.cpp's convert_hf_to_gguf.py: same arguments, writes a header-only model GGUF
# with the config's block count ($FAKE_BLOCKS overrides it; $FAKE_FAIL makes it fail as the real one does).
FAKE_CONVERTER = textwrap.dedent(
    """
    import argparse, json, os, sys
    import gguf, numpy
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--outfile")
    parser.add_argument("--outtype")
    args = parser.parse_args()
    if os.environ.get("FAKE_FAIL"):
        print("INFO:hf-to-gguf:Loading model", file=sys.stderr)
        print("NotImplementedError: BPE pre-tokenizer was not recognized", file=sys.stderr)
        sys.exit(1)
    config = json.load(open(os.path.join(args.model, "config.json")))
    blocks = int(os.environ.get("FAKE_BLOCKS", config["num_hidden_layers"]))
    writer = gguf.GGUFWriter(args.outfile, "llama")
    writer.add_block_count(blocks)
    writer.add_file_type({"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7}[args.outtype])
    writer.add_tensor("token_embd.weight", numpy.zeros((4, 8), dtype=numpy.float32))
    writer.write_header_to_file(); writer.write_kv_data_to_file(); writer.write_tensors_to_file(); writer.close()
    """
)


@pytest.fixture()
def fake_llama_cpp(tmp_path) -> Path:
    """A llama.cpp directory in the setup script's layout whose converter is :data:`FAKE_CONVERTER`."""
    home = tmp_path / "llama.cpp"
    (home / "src").mkdir(parents=True)
    (home / "src" / "convert_hf_to_gguf.py").write_text(FAKE_CONVERTER, encoding="utf-8")
    return home


@pytest.fixture()
def model_copy(tiny_dir, tmp_path) -> Path:
    """A writable copy of the tiny model directory (config.json, model.safetensors, tokenizer)."""
    return Path(shutil.copytree(tiny_dir, tmp_path / "model"))


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.code == 2, (result.code, result.err[-2000:])
    assert "Traceback" not in result.err
    lines = result.error_lines()
    assert len(lines) == 1, result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --- reptune export-model ------------------------------------------------------------------


def test_export_model_writes_checked_gguf(cli_run, model_copy, fake_llama_cpp, tmp_path):
    output = tmp_path / "out" / "tuned.gguf"
    result = cli_run("export-model", model_copy, "-o", output, "--outtype", "f32", "--llama-cpp", fake_llama_cpp)
    assert result.code == 0, result.err
    info = read_gguf_info(output)
    assert (info.architecture, info.block_count, info.file_type) == ("llama", 4, "all_f32")
    assert "wrote" in result.err and "4 blocks" in result.err
    assert sorted(p.name for p in output.parent.iterdir()) == ["tuned.gguf"]  # no temporary left


def test_export_model_finds_llama_cpp_through_env(cli_run, model_copy, fake_llama_cpp, tmp_path, monkeypatch):
    monkeypatch.setenv("REPTUNE_LLAMA_CPP", str(fake_llama_cpp))
    output = tmp_path / "m.gguf"
    assert cli_run("export-model", model_copy, "-o", output).code == 0
    assert read_gguf_info(output).file_type == "f16"  # the default --outtype


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        (lambda d: shutil.rmtree(d), "model directory not found"),
        (lambda d: (shutil.rmtree(d), d.write_text("x")), "is not a directory"),
        (lambda d: (d / "config.json").unlink(), "holds no config.json"),
        (lambda d: ((d / "config.json").unlink(), (d / "adapter_config.json").write_text("{}")), "is a LoRA adapter"),
        (lambda d: ((d / "config.json").unlink(), (d / "tuned_blocks.safetensors").write_bytes(b"")), "--weights full"),
        (lambda d: (d / "config.json").write_text("{not json"), "config.json"),
        (lambda d: (d / "model.safetensors").unlink(), "holds no weights"),
        (lambda d: (d / "model.safetensors").rename(d / "pytorch_model.bin"), "--allow-pickle"),
        (lambda d: (d / "tokenizer.json").unlink(), "holds no tokenizer"),
        (lambda d: (d / "modeling_custom.py").write_text("print('hi')"), "--trust-remote-code"),
        (
            lambda d: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()), "auto_map": {"AutoModel": "m.M"}})),
            "ships Python code (auto_map)",
        ),
    ],
    ids=["missing", "file", "no-config", "adapter", "blocks", "bad-json", "no-weights", "pickle", "no-tokenizer", "py-file", "auto-map"],
)
def test_export_model_refuses_bad_model_dir(cli_run, model_copy, fake_llama_cpp, tmp_path, setup, fragment):
    setup(model_copy)
    output = tmp_path / "out.gguf"
    assert_one_line_error(cli_run("export-model", model_copy, "-o", output, "--llama-cpp", fake_llama_cpp), fragment)
    assert not output.exists()


def test_export_model_flags_lift_their_refusals(cli_run, model_copy, fake_llama_cpp, tmp_path):
    (model_copy / "modeling_custom.py").write_text("print('hi')")
    output = tmp_path / "ok.gguf"
    assert cli_run("export-model", model_copy, "-o", output, "--llama-cpp", fake_llama_cpp, "--trust-remote-code").code == 0
    (model_copy / "model.safetensors").rename(model_copy / "pytorch_model.bin")
    check_model_dir(model_copy, allow_pickle=True, trust_remote_code=True)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--outtype", "q4_0"], "unknown --outtype 'q4_0'"),
        (["-o", "model.bin"], "must be a .gguf file"),
    ],
)
def test_export_model_refuses_bad_options(cli_run, model_copy, fake_llama_cpp, tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    full = ["export-model", model_copy, "--llama-cpp", fake_llama_cpp, *(["-o", "x.gguf"] if "-o" not in args else []), *args]
    assert_one_line_error(cli_run(*full), fragment)
    assert not list(tmp_path.glob("*.gguf")) and not (tmp_path / "model.bin").exists()


def test_export_model_refuses_directory_output(cli_run, model_copy, fake_llama_cpp, tmp_path):
    (tmp_path / "dir.gguf").mkdir()
    assert_one_line_error(cli_run("export-model", model_copy, "-o", tmp_path / "dir.gguf", "--llama-cpp", fake_llama_cpp), "is a directory")


def test_export_model_without_llama_cpp_says_how_to_get_it(cli_run, model_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("REPTUNE_LLAMA_CPP", str(tmp_path / "nowhere"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    line = assert_one_line_error(cli_run("export-model", model_copy, "-o", tmp_path / "m.gguf"), "convert_hf_to_gguf.py not found")
    assert "scripts/setup-llamacpp.sh" in line and str(tmp_path / "nowhere") in line
    assert not (tmp_path / "m.gguf").exists()


def test_export_model_converter_failure_is_one_line(cli_run, model_copy, fake_llama_cpp, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL", "1")
    output = tmp_path / "m.gguf"
    output.write_bytes(b"old")
    line = assert_one_line_error(cli_run("export-model", model_copy, "-o", output, "--llama-cpp", fake_llama_cpp), "converter failed")
    assert "BPE pre-tokenizer was not recognized" in line
    assert output.read_bytes() == b"old"  # the previous file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama.cpp", "m.gguf", "model"]


def test_export_model_checks_the_block_count(model_copy, fake_llama_cpp, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_BLOCKS", "3")
    with pytest.raises(ReptuneError, match="3 blocks for a model with 4 layers"):
        export_model(model_copy, tmp_path / "m.gguf", llama_cpp=fake_llama_cpp)
    assert not (tmp_path / "m.gguf").exists()


def test_find_llama_cpp_layouts(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "build" / "bin").mkdir(parents=True)
    (checkout / "convert_hf_to_gguf.py").write_text("")
    server = checkout / "build" / "bin" / "llama-server"
    server.write_text("#!/bin/sh\n")
    with pytest.raises(ReptuneError, match="llama-server not found"):
        find_llama_cpp(checkout, need=("converter", "server"))  # not executable
    server.chmod(0o755)
    found = find_llama_cpp(checkout, need=("converter", "server"))
    assert (found.converter, found.server, found.completion) == (checkout / "convert_hf_to_gguf.py", server, None)


def test_llama_server_refuses_before_starting(tmp_path):
    home = tmp_path / "llama.cpp"
    (home / "bin").mkdir(parents=True)
    binary = home / "bin" / "llama-server"
    binary.write_text("#!/bin/sh\nexit 1\n")
    binary.chmod(0o755)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    with pytest.raises(ReptuneError, match="GGUF model not found"):
        LlamaServer(tmp_path / "missing.gguf", llama_cpp=home)
    odd = tmp_path / "a:b.gguf"
    odd.write_bytes(b"x")
    with pytest.raises(ReptuneError, match="',' or ':'"):
        LlamaServer(model, control_vectors=[(odd, 1.0)], llama_cpp=home)
    with pytest.raises(ReptuneError, match="control vector not found"):
        LlamaServer(model, control_vectors=[(tmp_path / "none.gguf", 1.0)], llama_cpp=home)
    with pytest.raises(ReptuneError, match="exited with code 1"):
        LlamaServer(model, llama_cpp=home).start()


# --- the vLLM plugin's logic ---------------------------------------------------------------


def test_plugin_entry_point_is_declared():
    entry = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["entry-points"]["vllm.general_plugins"]
    assert entry == {"reptune_steering": "reptune.serving.vllm_plugin:register"}
    assert callable(vllm_plugin.register)


def test_plugin_is_inert_without_a_vector(monkeypatch):
    monkeypatch.delenv(vllm_plugin.ENV_VECTOR, raising=False)
    before = set(sys.modules)
    assert vllm_plugin.register() is None
    assert not any(name == "vllm" or name.startswith("vllm.") for name in set(sys.modules) - before)


@pytest.mark.parametrize(("extra", "expected"), [(None, 0.0), ({}, 0.0), ({"other": 1}, 0.0), ({"reptune_multiplier": 4}, 4.0), ({"reptune_multiplier": -2.5}, -2.5)])
def test_request_multiplier(extra, expected):
    assert request_multiplier(extra) == expected


@pytest.mark.parametrize("bad", [True, "4", math.nan, math.inf, None, [1.0]])
def test_request_multiplier_refuses_non_numbers(bad):
    with pytest.raises(ValueError, match="must be a finite number"):
        request_multiplier({"reptune_multiplier": bad})


def test_token_multipliers_follow_the_batch_order():
    rows = token_multipliers([1.0, 0.0, -2.0], [2, 5, 3])
    assert rows.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, -2.0, -2.0, -2.0]
    assert token_multipliers([3.0], [2], total=4).tolist() == [3.0, 3.0, 0.0, 0.0]  # padding rows are never steered
    with pytest.raises(ValueError, match="2 multipliers for 3 requests"):
        token_multipliers([1.0, 2.0], [1, 1, 1])
    with pytest.raises(ValueError, match="do not fit"):
        token_multipliers([1.0], [5], total=4)


def test_add_to_block_output_rows_get_their_own_multiplier():
    torch.manual_seed(0)
    hidden, residual, direction = torch.randn(10, 6), torch.randn(10, 6), torch.randn(6)
    rows = token_multipliers([1.0, 0.0, -2.0], [2, 5, 3])
    # vLLM's (hidden, residual) pair: the block output is their sum; the vector goes on the residual
    new_hidden, new_residual = add_to_block_output((hidden, residual), direction, rows)
    assert new_hidden is hidden
    torch.testing.assert_close(new_hidden + new_residual, hidden + residual + rows[:, None] * direction, rtol=0, atol=1e-6)
    assert torch.equal(new_residual[2:7], residual[2:7])  # the unsteered request is bit-identical
    # a plain tensor output, and a pair whose residual is None
    torch.testing.assert_close(add_to_block_output(hidden, direction, rows), hidden + rows[:, None] * direction)
    steered, none = add_to_block_output((hidden, None), direction, rows)
    assert none is None
    torch.testing.assert_close(steered, hidden + rows[:, None] * direction)
    # warm-up / dummy runs with another row count, and outputs it does not understand, pass through
    short = hidden[:4]
    assert add_to_block_output(short, direction, rows) is short
    odd = ("text", 3)
    assert add_to_block_output(odd, direction, rows) is odd


def test_steering_state_skips_unsteered_steps_and_counts_mixed_batches():
    direction = torch.ones(4)
    state = SteeringState({3: direction})
    hook = state.hook(3)
    output = torch.zeros(5, 4)
    state.set_step([0.0, 0.0], [2, 3])
    assert state.multipliers is None and hook(None, (), output) is None  # plain vLLM: output left as it is
    state.set_step([2.0, 0.0, -1.0], [1, 3, 1])
    steered = hook(None, (), output)
    assert steered[:, 0].tolist() == [2.0, 0.0, 0.0, 0.0, -1.0]
    assert state.stats == {"steps": 2, "steered_steps": 1, "max_distinct_in_step": 3, "max_requests_in_step": 3}


def test_plugin_hook_on_a_torch_block_matches_separate_requests():
    """A flattened continuous batch through a real module: each request's rows equal that request run alone."""
    torch.manual_seed(1)
    block = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Tanh())
    direction = torch.randn(6)
    state = SteeringState({0: direction})
    block.register_forward_hook(state.hook(0))
    requests = [(torch.randn(2, 6), 1.5), (torch.randn(4, 6), 0.0), (torch.randn(3, 6), -3.0)]
    state.set_step([m for _, m in requests], [x.shape[0] for x, _ in requests])
    together = block(torch.cat([x for x, _ in requests]))
    start = 0
    for x, multiplier in requests:
        state.set_step([multiplier], [x.shape[0]])
        alone = block(x)
        torch.testing.assert_close(together[start : start + x.shape[0]], alone, rtol=0, atol=1e-6)
        start += x.shape[0]
