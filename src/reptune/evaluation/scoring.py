"""Batched log-probability scoring: the only place evaluation runs the model.

Three primitives, each one forward pass per batch, padding-aware (left padding with position
ids counted over real tokens, so a row scores the same alone or in any batch):

* :func:`next_token_logprobs` — log-probs of a few candidate tokens (answer letters) right
  after each prompt; A/B questions, CAA and MMLU (one row per question scores all options).
* :func:`token_row_logprobs` — summed log-prob of the last ``n_target`` tokens of each row of
  token ids given the tokens before them; the engine of the two below.
* :func:`continuation_logprobs` — summed log-prob of each (prompt, continuation) row (TruthfulQA
  MC answers), batched across rows of different questions.
* :func:`sliding_windows` — WikiText-style windows whose targets cover every token but the first
  exactly once.

Rows are sorted by length before batching (less padding) and results come back in input
order. Log-softmax is taken over the full vocabulary in fp32 and sums are accumulated in fp64.
Only the logits that are needed are computed (``logits_to_keep``), so the LM head does not run
over long prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from reptune.errors import ReptuneError
from reptune.models import ModelHandle


def _noop(_n: int = 1) -> None:
    return None


def prompt_token_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` with the tokenizer's special tokens (BOS) unless it already starts with BOS."""
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and text.startswith(bos))
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        if row:
            ids[index, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
            mask[index, width - len(row) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def _last_logits(handle: ModelHandle, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, keep: int) -> torch.Tensor:
    """Logits of the last ``keep`` positions, ``[batch, keep, vocab]`` in fp32."""
    kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "use_cache": False}
    with handle.autocast():
        try:
            logits = handle.model(**kwargs, logits_to_keep=keep).logits
        except TypeError:  # an older model class without logits_to_keep
            logits = handle.model(**kwargs).logits
    return logits[:, -keep:].float()


def _order_by_length(lengths: Sequence[int]) -> list[int]:
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


@torch.inference_mode()
def next_token_logprobs(
    handle: ModelHandle,
    prompts: Sequence[str],
    candidates: Sequence[int] | Sequence[Sequence[int]],
    *,
    batch_size: int = 16,
    advance: Callable[[int], None] = _noop,
) -> np.ndarray:
    """Log-probabilities of candidate next tokens after each prompt.

    Args:
        prompts: full prompt texts (chat template already applied where wanted).
        candidates: token ids shared by all prompts (``[k]``), or one list per prompt
            (``[n][k]``, same ``k``).
        advance: progress callback, called with the number of prompts done.

    Returns:
        ``[n, k]`` float64 log-probs (normalised over the whole vocabulary).
    """
    if batch_size < 1:
        raise ReptuneError(f"batch_size must be at least 1, got {batch_size}")
    if not prompts:
        return np.zeros((0, len(candidates)), dtype=np.float64)
    per_row = bool(candidates) and isinstance(candidates[0], (list, tuple))
    table = torch.tensor([list(c) for c in candidates] if per_row else [list(candidates)] * len(prompts), dtype=torch.long)
    if table.shape[0] != len(prompts):
        raise ReptuneError(f"{table.shape[0]} candidate lists for {len(prompts)} prompts")
    tokenized = [prompt_token_ids(handle.tokenizer, prompt) for prompt in prompts]
    out = np.zeros((len(prompts), table.shape[1]), dtype=np.float64)
    order = _order_by_length([len(row) for row in tokenized])
    pad = handle.tokenizer.pad_token_id
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, mask, positions = _left_pad([tokenized[i] for i in chunk], pad, handle.device)
        logprobs = torch.log_softmax(_last_logits(handle, ids, mask, positions, 1)[:, -1], dim=-1)
        picked = logprobs.gather(1, table[chunk].to(logprobs.device)).double().cpu().numpy()
        out[chunk] = picked
        advance(len(chunk))
    return out


@dataclass(frozen=True)
class RowScore:
    """Summed log-prob of a row's target tokens, their count, and whether each was the argmax."""

    logprob: float
    n_tokens: int
    greedy: bool


@torch.inference_mode()
def token_row_logprobs(
    handle: ModelHandle,
    rows: Sequence[tuple[Sequence[int], int]],
    *,
    batch_size: int = 16,
    advance: Callable[[int], None] = _noop,
) -> list[RowScore]:
    """Score rows of token ids: the summed log-prob of each row's last ``n_target`` tokens.

    Args:
        rows: ``(token_ids, n_target)`` with ``1 <= n_target < len(token_ids)``.
    """
    if batch_size < 1:
        raise ReptuneError(f"batch_size must be at least 1, got {batch_size}")
    for ids, n_target in rows:
        if not 1 <= n_target < len(ids):
            raise ReptuneError(f"a scored row needs 1 <= targets < tokens, got {n_target} of {len(ids)}")
    results: list[RowScore | None] = [None] * len(rows)
    order = _order_by_length([len(ids) for ids, _ in rows])
    pad = handle.tokenizer.pad_token_id
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, mask, positions = _left_pad([rows[i][0] for i in chunk], pad, handle.device)
        targets = [rows[i][1] for i in chunk]
        keep = max(targets) + 1
        logits = _last_logits(handle, ids, mask, positions, keep)  # [b, keep, vocab]
        for row, (index, n_target) in enumerate(zip(chunk, targets)):
            # position p predicts token p+1: the last n_target tokens are predicted by logits
            # at the n_target positions before the last one
            predicting = logits[row, keep - 1 - n_target : keep - 1]
            wanted = ids[row, ids.shape[1] - n_target :]
            logprobs = torch.log_softmax(predicting, dim=-1)
            token_lp = logprobs.gather(1, wanted.unsqueeze(1)).squeeze(1).double()
            greedy = bool((predicting.argmax(-1) == wanted).all())
            results[index] = RowScore(float(token_lp.sum()), n_target, greedy)
        advance(len(chunk))
    return [score for score in results if score is not None]


def continuation_rows(tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """Token rows for (prompt, continuation) pairs: prompt ids (with BOS) + continuation ids.

    The continuation is tokenised on its own (no special tokens), as lm-evaluation-harness does,
    so every choice of a question is scored on the same prompt tokens.
    """
    rows = []
    cache: dict[str, list[int]] = {}
    for prompt, continuation in pairs:
        if prompt not in cache:
            cache[prompt] = prompt_token_ids(tokenizer, prompt)
        cont = list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
        if not cont:
            raise ReptuneError(f"empty continuation after prompt {prompt[-40:]!r}")
        rows.append((cache[prompt] + cont, len(cont)))
    return rows


def continuation_logprobs(
    handle: ModelHandle,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 16,
    advance: Callable[[int], None] = _noop,
) -> list[RowScore]:
    """Summed log-prob of each continuation given its prompt, batched across all rows."""
    return token_row_logprobs(handle, continuation_rows(handle.tokenizer, pairs), batch_size=batch_size, advance=advance)


def sliding_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows ``(begin, end, n_target)`` over ``n_tokens`` tokens.

    Each window feeds ``tokens[begin:end]`` and scores its last ``n_target`` tokens: every token
    but the first is scored exactly once, with up to ``window - 1`` tokens of context (the
    Hugging Face perplexity recipe). ``stride <= window``.
    """
    if window < 2:
        raise ReptuneError(f"window must be at least 2 tokens, got {window}")
    if not 1 <= stride <= window:
        raise ReptuneError(f"stride must be between 1 and the window ({window}), got {stride}")
    if n_tokens < 2:
        raise ReptuneError("the text has fewer than 2 tokens")
    windows = []
    scored_until = 1  # token 0 has no context and is never scored
    begin = 0
    while scored_until < n_tokens:
        begin = min(begin, scored_until - 1)  # stride == window: keep one token of context
        end = min(begin + window, n_tokens)
        windows.append((begin, end, end - scored_until))
        scored_until = end
        begin += stride
    return windows
