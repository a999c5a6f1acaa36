"""Model loading and layout detection."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from reptune.errors import ModelError
from reptune.models import find_layers_path, load_model, wrap_model

EXPECTED_PATHS = {
    "tiny-llama": "model.layers",
    "tiny-qwen2": "model.layers",
    "tiny-gemma": "model.layers",
    "tiny-phi": "model.layers",
    "tiny-gpt2": "transformer.h",
    "tiny-gpt_neox": "gpt_neox.layers",
}


def test_layout_detected_for_every_architecture(tiny_any):
    assert tiny_any.layers_path == EXPECTED_PATHS[tiny_any.model_id]
    assert tiny_any.num_layers == 4
    assert tiny_any.hidden_size == 32


class _Odd(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Module()
        self.trunk.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
        self.heads = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])


def test_unknown_layout_lists_candidates_and_override():
    model = _Odd()
    with pytest.raises(ModelError) as info:
        find_layers_path(model)
    message = str(info.value)
    assert "trunk.blocks" in message and "heads" in message and "--layers-path" in message
    assert "\n" not in message
    assert find_layers_path(model, "trunk.blocks") == "trunk.blocks"
    with pytest.raises(ModelError, match="not a ModuleList"):
        find_layers_path(model, "trunk.nothing")


def test_load_local_directory(tiny_dir):
    handle = load_model(str(tiny_dir))
    assert handle.source == "local" and handle.model_id == str(tiny_dir)
    assert handle.num_layers == 4 and handle.dtype == torch.float32
    assert not handle.model.training
    assert not any(p.requires_grad for p in handle.model.parameters())
    assert handle.tokenizer.pad_token_id is not None
    described = handle.describe()
    assert described["layers_path"] == "model.layers" and described["hidden_size"] == 32


def test_load_with_dtype_and_autocast(tiny_dir):
    handle = load_model(str(tiny_dir), dtype="bfloat16", autocast="bf16")
    assert handle.dtype == torch.bfloat16
    assert handle.autocast_dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name_or_path": "./no/such/dir"}, "not found"),
        ({"name_or_path": "/tmp/definitely-missing.gguf"}, "GGUF file not found"),
        ({"dtype": "float13"}, "unknown dtype"),
    ],
)
def test_load_errors(tiny_dir, kwargs, match):
    arguments = {"name_or_path": str(tiny_dir), **kwargs}
    with pytest.raises(ModelError, match=match):
        load_model(**arguments)


def test_cuda_requested_without_cuda(tiny_dir):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ModelError, match="CUDA is not available"):
        load_model(str(tiny_dir), device="cuda")


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path))


def test_hub_id_offline_fails_fast_with_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelError) as info:
        load_model("some-org/some-model-that-is-not-cached")
    assert time.monotonic() - start < 30  # no retry loop against an unreachable hub
    assert "unreachable" in str(info.value) and "\n" not in str(info.value)


def test_wrap_model_sets_pad_token(tokenizer):
    from conftest import build_model

    handle = build_model("gpt2")
    tok = handle.tokenizer
    tok.pad_token = None
    wrapped = wrap_model(handle.model, tok)
    assert wrapped.tokenizer.pad_token == tok.eos_token


@pytest.mark.real_model
def test_embedded_model_converted_once_and_trainable(embedded, tmp_path):
    from reptune.models import cache_root, convert_gguf, embedded_gguf_path

    assert embedded.num_layers == 30 and embedded.hidden_size == 576
    assert embedded.model_type == "llama" and embedded.source == "embedded"
    target = convert_gguf(embedded_gguf_path())
    assert (target / "model.safetensors").is_file()
    # the cache key is the content: a reinstalled package (new mtime) reuses the conversion
    assert target.name.startswith("SmolLM2-135M-Instruct") and len(target.name.rsplit("-", 1)[1]) == 16
    before = sorted(p.name for p in (cache_root() / "gguf").iterdir())
    stamp = target.stat().st_mtime_ns
    # a .gguf path resolves to the same converted copy, without converting again
    again = load_model(str(embedded_gguf_path()))
    assert sorted(p.name for p in (cache_root() / "gguf").iterdir()) == before
    assert target.stat().st_mtime_ns == stamp
    assert torch.equal(again.model.model.embed_tokens.weight, embedded.model.model.embed_tokens.weight)
    again.model.save_pretrained(tmp_path / "copy")  # a GGUF-loaded model would refuse this
    assert (tmp_path / "copy" / "config.json").is_file()
    chat = embedded.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|im_start|>assistant\n")


def test_autocast_keeps_the_lm_head_in_fp32():
    from conftest import build_model

    handle = build_model("llama")
    handle.autocast_dtype = torch.bfloat16
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    head = handle.model.get_output_embeddings()
    captured = {}
    hook = handle.model.model.norm.register_forward_hook(lambda _m, _i, out: captured.setdefault("hidden", out))
    with torch.no_grad(), handle.autocast():
        logits = handle.model(input_ids=ids).logits
    hook.remove()
    assert logits.dtype == torch.float32
    # exactly the fp32 head applied to the (autocast) decoder output: no bf16 rounding of logits
    torch.testing.assert_close(logits, captured["hidden"].float() @ head.weight.T, rtol=0, atol=1e-6)
    assert "forward" not in vars(head) or vars(head)["forward"].__name__ == "forward"
    assert not getattr(head, "_reptune_fp32_head", False)
    with torch.no_grad(), handle.autocast(), handle.autocast():  # nesting is harmless
        assert handle.model(input_ids=ids).logits.dtype == torch.float32


def test_gguf_conversion_parses_each_file_once(monkeypatch):
    """transformers reads a GGUF three times in one conversion; inside the block every repeat comes from memory, and the originals come back after."""
    import gguf

    from reptune.models import _gguf_parsed_once

    made = []
    monkeypatch.setattr(gguf, "GGUFReader", lambda path: made.append(path) or object())
    monkeypatch.setattr(gguf, "get_tensor_name_map", lambda arch, n: (arch, n, object()))
    original = gguf.GGUFReader
    with _gguf_parsed_once():
        first, second, other = gguf.GGUFReader("a.gguf"), gguf.GGUFReader("a.gguf"), gguf.GGUFReader("b.gguf")
        assert gguf.get_tensor_name_map("llama", 30) is gguf.get_tensor_name_map("llama", 30)
    assert first is second and other is not first and made == ["a.gguf", "b.gguf"]
    assert gguf.GGUFReader is original
