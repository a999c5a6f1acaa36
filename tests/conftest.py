"""Shared fixtures: tiny seeded random models of several layouts and an offline tokenizer.

Nothing here touches the network. The tokenizer is a byte-level BPE trained in memory on a
few sentences (a fast tokenizer, so offsets work); models are built from configs.
"""

from __future__ import annotations

import os
import sys

# before transformers / huggingface_hub / datasets are imported: they read these once
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from reptune.models import ModelHandle, wrap_model

torch.set_num_threads(min(2, torch.get_num_threads()))

CORPUS = [
    "Pretend you are an honest person making statements about the world.",
    "Pretend you are a dishonest person making statements about the world.",
    "The sky is blue. The grass is green. Paris is the capital of France.",
    "Water boils at 100 degrees. Two plus two is four. Cats are mammals.",
    "Is the statement true or false? Answer: (A) True (B) False",
    "Hello world, the quick brown fox jumps over the lazy dog 0123456789.",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
ARCHS = ("llama", "gpt2", "qwen2", "gemma", "gpt_neox", "phi")
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def build_tokenizer(chat: bool = False) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer trained on CORPUS (vocab ~300)."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<eos>", "<bos>", "<|user|>", "<|assistant|>", "<|end|>"]
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_config(arch: str, vocab_size: int, num_layers: int = 4, hidden: int = 32):
    common = {"vocab_size": vocab_size, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}
    if arch == "llama":
        return transformers.LlamaConfig(hidden_size=hidden, intermediate_size=64, num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **common)
    if arch == "qwen2":
        return transformers.Qwen2Config(hidden_size=hidden, intermediate_size=64, num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **common)
    if arch == "gemma":
        return transformers.GemmaConfig(hidden_size=hidden, intermediate_size=64, num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256, **common)
    if arch == "gpt2":
        return transformers.GPT2Config(n_embd=hidden, n_layer=num_layers, n_head=4, n_positions=256, **common)
    if arch == "gpt_neox":
        return transformers.GPTNeoXConfig(hidden_size=hidden, intermediate_size=64, num_hidden_layers=num_layers, num_attention_heads=4, max_position_embeddings=256, **common)
    if arch == "phi":
        return transformers.PhiConfig(hidden_size=hidden, intermediate_size=64, num_hidden_layers=num_layers, num_attention_heads=4, max_position_embeddings=256, **common)
    raise ValueError(arch)


def build_model(arch: str = "llama", *, num_layers: int = 4, hidden: int = 32, seed: int = 0, chat: bool = False) -> ModelHandle:
    """A seeded tiny random causal LM wrapped in a ModelHandle (fp32, eval mode)."""
    tokenizer = build_tokenizer(chat=chat)
    torch.manual_seed(seed)
    config = build_config(arch, len(tokenizer), num_layers, hidden)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    return wrap_model(model, tokenizer, model_id=f"tiny-{arch}")


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture()
def tiny() -> ModelHandle:
    """A tiny Llama-style model (4 layers, hidden 32)."""
    return build_model("llama")


@pytest.fixture(params=ARCHS)
def tiny_any(request) -> ModelHandle:
    """The tiny model in every supported layout."""
    return build_model(request.param)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny Llama with a chat template saved as a local model directory (for CLI tests)."""
    handle = build_model("llama", chat=True)
    path = tmp_path_factory.mktemp("tiny-model")
    handle.model.save_pretrained(path)
    handle.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def embedded():
    """The embedded SmolLM2-135M-Instruct (converted once into the reptune cache)."""
    from reptune.models import load_model

    return load_model(None)


@pytest.fixture()
def shared_data() -> Path:
    root = Path(os.environ.get("REPTUNE_DATA_DIR", SHARED_DATA))
    if not root.is_dir():
        pytest.skip("shared data folder not present (set REPTUNE_DATA_DIR)")
    return root


class CliRun(NamedTuple):
    """What one ``reptune ...`` invocation produced (unpacks as ``code, out, err``)."""

    code: int
    out: str
    err: str

    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error:")]


@pytest.fixture()
def cli_run(monkeypatch, capsys):
    """``cli_run(*args)`` runs ``reptune.cli.main()`` in-process and returns a :class:`CliRun`."""
    from reptune import cli

    monkeypatch.setenv("REPTUNE_DEBUG", "0")

    def invoke(*args: object) -> CliRun:
        monkeypatch.setattr(sys, "argv", ["reptune", *map(str, args)])
        capsys.readouterr()
        code = 0
        try:
            cli.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliRun(code, captured.out, captured.err)

    return invoke


def constant_logits_model(bias: torch.Tensor) -> ModelHandle:
    """A tiny chat Llama whose next-token logits are ``bias`` at every position (lm_head: 0 x h + bias)."""
    handle = build_model("llama", chat=True)
    head = torch.nn.Linear(handle.hidden_size, bias.numel(), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(bias)
    handle.model.lm_head = head
    return handle


# --- serving (tests/test_llamacpp.py, tests/test_vllm.py): built on first use, once per session ---


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The embedded model's converted Hugging Face directory (config.json + model.safetensors + tokenizer)."""
    from reptune.models import convert_gguf, embedded_gguf_path

    return convert_gguf(embedded_gguf_path())


@pytest.fixture(scope="session")
def honesty_vector_file(embedded, tmp_path_factory) -> Path:
    """The embedded model's honesty vector (mean difference, last token, 64 pairs, layers 1-29)."""
    from serving_reference import build_vector

    path = tmp_path_factory.mktemp("serving-vector") / "honesty.safetensors"
    build_vector(embedded, path)
    return path


@pytest.fixture(scope="session")
def tuned_dir(honesty_vector_file, embedded, tmp_path_factory) -> Path:
    """`reptune tune`'s merged output for the embedded model (honesty preset, blocks 12-14, 3 steps)."""
    from serving_reference import build_tuned

    from reptune.vectors import load_vector

    return build_tuned(tmp_path_factory.mktemp("serving-tuned") / "run", load_vector(honesty_vector_file, embedded))
