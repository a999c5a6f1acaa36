"""Judging discovered vectors: greedy completions on (held-out) prompts and a few cheap metrics.

Every vector is steered exactly as ``reptune steer`` does it (:class:`reptune.steering.Steering`,
operator ``add``, scope ``all``, multiplier 1 on a vector whose norm is the discovery radius),
and scored against the unsteered completions of the same prompts:

* ``diverge``: fraction of prompts whose greedy completion differs from the unsteered one
  within the first ``diverge_within`` tokens (a cheap "does it do anything" signal);
* ``logit_diff``: mean next-token ``logit(A) - logit(B)`` at the end of each prompt (e.g.
  ``"Sure"`` minus ``"Sorry"``, each the first token of its text), and ``logit_shift``,
  the same minus its unsteered value;
* ``match``: fraction of completions containing any of the given strings (case-insensitive);
* ``judge``: the mean score of a user-supplied judge, e.g. an LLM judge (see :data:`CompletionScorer`; the hook for a judge from :mod:`reptune.evaluation`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from reptune._progress import progress_bar
from reptune.activations import tokenize_examples
from reptune.data.pairs import Example
from reptune.discovery.common import DiscoveryError
from reptune.models import ModelHandle
from reptune.steering import Steering, format_prompts, generate
from reptune.tokens import first_token_id, forward_keeping_logits

CompletionScorer = Callable[[Sequence[str], Sequence[str]], Sequence[float]]
"""What discovery calls a judge: ``judge(prompts, completions) -> one score per completion``
(higher = more of the behaviour looked for, e.g. in [0, 1]). ``prompts`` are the user prompts (no
chat template); discovery reports the mean per vector and can rank by it (``rank_by="judge"``).
Not the evaluation suite's pairwise :class:`reptune.evaluation.judges.Judge` protocol (``compare``
two responses), which :class:`~reptune.evaluation.judges.PairwiseScorer` turns into one of these."""


@dataclass
class VectorScores:
    """Scores of one vector on the evaluation prompts (``None``: metric not asked for)."""

    diverge: float
    completions: list[str] = field(default_factory=list)
    logit_diff: float | None = None
    logit_shift: float | None = None
    match: float | None = None
    judge: float | None = None

    def metrics(self) -> dict[str, float | None]:
        data = asdict(self)
        data.pop("completions")
        return data


@dataclass
class Baseline:
    """The unsteered completions and readout the vectors are compared with."""

    completions: list[str]
    token_ids: list[list[int]]
    logit_diff: float | None = None
    match: float | None = None
    judge: float | None = None


def token_id(tokenizer: Any, text: str) -> int:
    """The first token of ``text`` (no special tokens), for logit readouts."""
    if not text:
        raise DiscoveryError("logit readout tokens must be non-empty strings")
    token = first_token_id(tokenizer, text)
    if token is None:
        raise DiscoveryError(f"logit readout token {text!r} encodes to no token")
    return token


def next_token_logits(handle: ModelHandle, texts: Sequence[str], *, batch_size: int = 8) -> torch.Tensor:
    """Next-token logits ``[len(texts), vocab]`` (float32, CPU) after each formatted text
    (under any steering hooks active on the model)."""
    rows = []
    with torch.inference_mode(), handle.autocast():
        for start in range(0, len(texts), batch_size):
            batch = tokenize_examples(handle.tokenizer, [Example(t) for t in texts[start : start + batch_size]], padding_side="left", device=handle.device)
            kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "position_ids": batch.position_ids, "use_cache": False}
            out, _ = forward_keeping_logits(handle.model, kwargs, 1)
            rows.append(out.logits[:, -1].float().cpu())
    return torch.cat(rows)


def _diverged(steered: list[int], plain: list[int], within: int) -> bool:
    return steered[:within] != plain[:within]


def _match_rate(completions: Sequence[str], needles: Sequence[str]) -> float:
    lowered = [needle.lower() for needle in needles]
    return sum(any(needle in text.lower() for needle in lowered) for text in completions) / max(1, len(completions))


def _judge_mean(judge: CompletionScorer, prompts: Sequence[str], completions: Sequence[str]) -> float:
    scores = [float(score) for score in judge(list(prompts), list(completions))]
    if len(scores) != len(completions):
        raise DiscoveryError(f"the judge returned {len(scores)} scores for {len(completions)} completions")
    return sum(scores) / max(1, len(scores))


def score_vectors(
    handle: ModelHandle,
    vectors: torch.Tensor,
    layer: int,
    prompts: Sequence[str],
    *,
    chat: bool = True,
    max_new_tokens: int = 32,
    diverge_within: int = 8,
    logit_tokens: tuple[str, str] | None = None,
    match: Sequence[str] = (),
    judge: CompletionScorer | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> tuple[Baseline, list[VectorScores]]:
    """Greedy completions and metrics for each row of ``vectors`` ``[k, hidden]`` added at ``layer``.

    Returns:
        ``(baseline, scores)``: the unsteered reference and one :class:`VectorScores` per vector.
    """
    if not prompts:
        raise DiscoveryError("no evaluation prompts to score vectors on")
    if max_new_tokens < 1 or diverge_within < 1:
        raise DiscoveryError("max_new_tokens and diverge_within must be at least 1")
    tokenizer = handle.tokenizer
    readout = None
    if logit_tokens is not None:
        readout = (token_id(tokenizer, logit_tokens[0]), token_id(tokenizer, logit_tokens[1]))
    texts = format_prompts(handle, prompts, chat=chat)

    def run(steering: Steering | None) -> tuple[list[list[int]], list[str], float | None]:
        ids = generate(handle, prompts, max_new_tokens=max_new_tokens, chat=chat, batch_size=batch_size, steering=steering, return_token_ids=True)
        completions = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]
        diff = None
        if readout is not None:
            logits = next_token_logits(handle, texts, batch_size=batch_size)
            diff = float((logits[:, readout[0]] - logits[:, readout[1]]).mean())
        return ids, completions, diff

    plain_ids, plain_text, plain_diff = run(None)
    baseline = Baseline(
        completions=plain_text, token_ids=plain_ids, logit_diff=plain_diff,
        match=_match_rate(plain_text, match) if match else None,
        judge=_judge_mean(judge, prompts, plain_text) if judge is not None else None,
    )
    results: list[VectorScores] = []
    with progress_bar("scoring vectors", total=vectors.shape[0], enabled=progress) as advance:
        for row in vectors:
            with Steering(handle, {layer: row}, multiplier=1.0) as steering:
                ids, completions, diff = run(steering)
            results.append(VectorScores(
                diverge=sum(_diverged(a, b, diverge_within) for a, b in zip(ids, plain_ids)) / len(prompts),
                completions=completions,
                logit_diff=diff,
                logit_shift=None if diff is None or plain_diff is None else diff - plain_diff,
                match=_match_rate(completions, match) if match else None,
                judge=_judge_mean(judge, prompts, completions) if judge is not None else None,
            ))
            advance(1)
    return baseline, results
