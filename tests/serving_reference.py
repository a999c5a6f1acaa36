"""What the serving engines are compared with: reptune's own greedy generation and transformers'
log-probs, on the embedded SmolLM2-135M-Instruct (shared by test_llamacpp.py, test_vllm.py and
benchmarks/bench_serving.py).

The engines get the chat-formatted prompt text (or its token ids) and return token ids and, per
generated token, their top-k log-probs over the whole vocabulary. reptune's greedy tokens come from
``reptune.generate`` / ``steered_generate``; the reference log-probs come from one transformers
forward pass over the prompt plus *the engine's own* generated tokens, so every position is
comparable, also after the two greedy paths part.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

import reptune
from reptune.steering import Steering, format_prompts

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Is the Earth flat?",
    "What is the capital of France?",
    "Tell me one fact about the Moon.",
    "Can pigs fly?",
    "Describe yourself in one sentence.",
    "Is it safe to drink sea water?",
]


def chat_texts(handle, prompts: Sequence[str] = PROMPTS) -> list[str]:
    """The chat-formatted prompt text reptune generates from (what the engines are sent)."""
    return format_prompts(handle, list(prompts))


def prompt_ids(handle, texts: Sequence[str]) -> list[list[int]]:
    """transformers' token ids of each prompt text (no special tokens added: the template has them)."""
    return [handle.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]


def strip_eos(ids: Sequence[int], handle) -> list[int]:
    eos = handle.tokenizer.eos_token_id
    out = list(ids)
    return out[: out.index(eos)] if eos in out else out


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@torch.inference_mode()
def reference_logprobs(handle, prompt: Sequence[int], generated: Sequence[int], steering: Steering | None = None) -> torch.Tensor:
    """``[len(generated), vocab]`` fp32 log-probs of each generated position, given the engine's own tokens."""
    ids = torch.tensor([list(prompt) + list(generated)], device=handle.device)
    if steering is not None:
        steering.reset()
    logits = handle.model(input_ids=ids).logits[0, len(prompt) - 1 : len(prompt) - 1 + len(generated)].float()
    return torch.log_softmax(logits, dim=-1)


@dataclass
class Parity:
    """How an engine's output compares with reptune / transformers on a set of prompts."""

    prompts: int
    identical: int  # prompts whose whole greedy completion equals reptune's
    first_token_equal: int
    matched_tokens: int  # tokens in the common prefixes
    compared_tokens: int  # tokens reptune generated (the denominator of the prefix share)
    max_logprob_diff: float  # over every generated position and every top-k id the engine reported
    mean_logprob_diff: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "prompts": self.prompts, "identical_completions": self.identical, "first_token_equal": self.first_token_equal,
            "prefix_token_share": round(self.matched_tokens / max(self.compared_tokens, 1), 4),
            "max_abs_logprob_diff": self.max_logprob_diff, "mean_abs_logprob_diff": self.mean_logprob_diff,
        }


def parity(handle, prompts: Sequence[Sequence[int]], reptune_tokens: Sequence[Sequence[int]], engine_tokens: Sequence[Sequence[int]],
           engine_tops: Sequence[Sequence[dict[int, float]]] | None, steering: Steering | None = None) -> Parity:
    """Greedy-token agreement and the log-prob gap (engine top-k vs transformers, same prefixes)."""
    identical = first = matched = compared = 0
    diffs: list[float] = []
    for index, (prompt, ours, theirs) in enumerate(zip(prompts, reptune_tokens, engine_tokens)):
        theirs = strip_eos(theirs, handle)
        identical += list(ours) == list(theirs)
        first += bool(ours and theirs and ours[0] == theirs[0])
        matched += common_prefix(ours, theirs)
        compared += len(ours)
        if engine_tops:
            tops = engine_tops[index][: len(theirs)]
            if tops:
                reference = reference_logprobs(handle, prompt, theirs[: len(tops)], steering)
                for position, top in enumerate(tops):
                    for token, logprob in top.items():
                        diffs.append(abs(float(reference[position, int(token)]) - logprob))  # JSON keys are strings
    return Parity(
        len(prompts), identical, first, matched, compared, round(max(diffs), 6) if diffs else float("nan"),
        round(sum(diffs) / len(diffs), 6) if diffs else float("nan"),
    )


def build_tuned(output: Path, vector: reptune.SteeringVector) -> Path:
    """A short representation-tuning run on the embedded model: ``reptune tune``'s merged output in ``output``."""
    from reptune.tuning import TuneConfig, load_tune_items, tune

    handle = reptune.load_model(None)
    items, origin = load_tune_items("honesty", handle.tokenizer, limit=48)
    config = TuneConfig.from_preset("honesty", layers="12-14", steps=3, lr=1e-3, batch_size=4)
    tune(handle, config, items, output, vector=vector, data_origin=origin, progress=False)
    return output


def build_vector(handle, output: Path) -> reptune.SteeringVector:
    """The honesty vector of the embedded model (mean difference, last token, 64 pairs), saved to ``output``."""
    pairs, origin = reptune.load_contrast_pairs("honesty", handle.tokenizer, limit=64)
    vector, _ = reptune.extract_vector(handle, pairs, "1-29", method="mean-diff", positions="last", dataset=origin, scan=False, progress=False)
    vector.save(output)
    return vector


def optional_path(env: str, default: Path) -> Path:
    return Path(os.environ[env]) if os.environ.get(env) else default
