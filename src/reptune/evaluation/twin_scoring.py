"""Scoring true/false twins with each pair's shared tokens run once.

Twins are minimal edits of each other ("The capital of Uzbekistan is Tashkent." / "... is
Bishkek."), so most of their tokens are shared. Scored as two independent rows, those tokens run
twice. Here every forward of a batch of pairs has three parts:

1. the prompt all rows share, once per call, cached (batch 1; each batch expands a copy);
2. each pair's common tokens after it (right-padded), batch ``B``, appended to the cache;
3. the two differing tails (the cache repeated per row), batch ``2B``.

The result equals :func:`reptune.evaluation.scoring.token_row_logprobs` on the full rows (same
tokens, same positions; padded columns are masked and skipped by explicit position ids), which
a test pins. Where the model's cache or hooks do not allow it (see
:func:`~reptune.evaluation.scoring.prefix_sharing_allowed`) the plain row scorer runs instead.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from reptune.block_replay import blocks_unhooked, capture_block_inputs, replay_block_inputs, replay_matches
from reptune.evaluation.scoring import RowScore, continuation_rows, prefix_sharing_allowed, token_row_logprobs
from reptune.models import ModelHandle
from reptune.tokens import cache_argument, forward_keeping_logits, output_cache


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix, leaving at least one token in each tail."""
    n = 0
    limit = min(len(a), len(b)) - 1
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def _forward(handle: ModelHandle, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
    with handle.autocast():
        inputs = {"input_ids": ids.to(handle.device), "attention_mask": mask.to(handle.device), "position_ids": positions.to(handle.device)}
        out = handle.model(**inputs, **{cache_argument(handle.model): cache}, use_cache=True)
    return torch.log_softmax(out.logits.float(), dim=-1), output_cache(out)


def _prompt_cache(handle: ModelHandle, prefix: Sequence[int]) -> Any:
    """The shared prompt's cache at batch 1, run once per call (its logits are not needed: the
    prompt stops one token before the replies, so every scored token is predicted later)."""
    from transformers.cache_utils import DynamicCache

    ids = torch.tensor([list(prefix)], dtype=torch.long, device=handle.device)
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "position_ids": torch.arange(len(prefix), device=handle.device).unsqueeze(0),
              cache_argument(handle.model): DynamicCache(), "use_cache": True}
    with handle.autocast():
        return output_cache(forward_keeping_logits(handle.model, kwargs, 1)[0])


def _expanded(prompt_cache: Any, batch: int) -> Any:
    """A copy of the batch-1 prompt cache repeated to ``batch`` rows (the batch's stages append to it)."""
    cache = copy.deepcopy(prompt_cache)
    cache.batch_repeat_interleave(batch)
    return cache


def _pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[index, : len(row)] = 1
    return ids, mask


def _score_batch(handle: ModelHandle, rows: list[tuple[list[int], int]], pairs: list[tuple[int, int]], prefix: list[int],
                 prompt_cache: Any) -> dict[int, RowScore]:
    """Score the rows of ``pairs`` (indices of true/false rows) after ``prefix``, whose batch-1 cache is ``prompt_cache``."""
    g = len(prefix)
    pad = handle.tokenizer.pad_token_id
    cache = _expanded(prompt_cache, len(pairs))
    commons = [_common(rows[t][0], rows[f][0]) for t, f in pairs]
    ids_a, mask_a = _pad([rows[t][0][g:c] for (t, _), c in zip(pairs, commons)], pad)
    logp_a, cache = _forward(handle, ids_a, torch.cat([torch.ones(len(pairs), g, dtype=torch.long), mask_a], 1),
                             (g + torch.arange(ids_a.shape[1])).expand(len(pairs), -1), cache)
    cache.batch_repeat_interleave(2)
    tails = [rows[i][0][c:] for (t, f), c in zip(pairs, commons) for i in (t, f)]
    ids_b, mask_b = _pad(tails, pad)
    lengths_a = mask_a.sum(1).repeat_interleave(2)
    mask = torch.cat([torch.ones(len(tails), g, dtype=torch.long), mask_a.repeat_interleave(2, 0), mask_b], 1)
    positions = g + lengths_a.unsqueeze(1) + torch.arange(ids_b.shape[1]).unsqueeze(0)
    logp_b, _ = _forward(handle, ids_b, mask, positions, cache)
    out: dict[int, RowScore] = {}
    for k, ((t, f), c) in enumerate(zip(pairs, commons)):
        for side, row_index in enumerate((t, f)):
            tokens, n_target = rows[row_index]
            total, greedy = 0.0, True
            for pos in range(len(tokens) - n_target, len(tokens)):  # token `pos` is predicted at `pos - 1`
                at = pos - 1  # >= g: the cached prompt ends one token before the replies
                dist = logp_a[k, at - g] if at < c else logp_b[2 * k + side, at - c]
                total += float(dist[tokens[pos]].double())
                greedy = greedy and int(dist.argmax()) == tokens[pos]
            out[row_index] = RowScore(total, n_target, greedy)
    return out


@torch.inference_mode()
def twin_logprobs(
    handle: ModelHandle, prompt: str, twins: Sequence[tuple[str, str]], *, batch_size: int = 16, advance: Callable[[int], None] | None = None,
) -> list[tuple[RowScore, RowScore]]:
    """Summed log-prob of each twin as the reply to ``prompt``: ``[(true, false), ...]``.

    Args:
        twins: ``(true statement, false statement)`` per fact.
        batch_size: pairs per forward (the tails run at twice that).
    """
    pairs_text = [(prompt, text) for twin in twins for text in twin]
    rows = continuation_rows(handle.tokenizer, pairs_text)
    starts = [len(tokens) - n for tokens, n in rows]
    if not rows or not prefix_sharing_allowed(handle) or len({tuple(r[0][: min(starts)]) for r in rows}) != 1:
        scores = token_row_logprobs(handle, rows, batch_size=batch_size, advance=(lambda n: advance(n // 2)) if advance else (lambda _n: None))
        return [(scores[2 * i], scores[2 * i + 1]) for i in range(len(twins))]
    # the shared prompt stops one token early: that token's logits predict each reply's first token
    prefix = rows[0][0][: min(starts) - 1]
    results: dict[int, RowScore] = {}
    # pairs of similar shape share a batch, so little of either stage is padding
    def shape(i: int) -> tuple[int, int]:
        common = _common(rows[2 * i][0], rows[2 * i + 1][0])
        return common, max(len(rows[2 * i][0]), len(rows[2 * i + 1][0])) - common

    order = sorted(range(len(twins)), key=shape)
    with _frozen_blocks(handle, {"prompt": prompt, "twins": [list(twin) for twin in twins], "batch_size": batch_size}):
        prompt_cache = _prompt_cache(handle, prefix)  # once per call: every batch starts from a copy
        for start in range(0, len(order), batch_size):
            batch = [(2 * i, 2 * i + 1) for i in order[start : start + batch_size]]
            results.update(_score_batch(handle, rows, batch, prefix, prompt_cache))
            if advance:
                advance(len(batch))
    return [(results[2 * i], results[2 * i + 1]) for i in range(len(twins))]


@contextlib.contextmanager
def _frozen_blocks(handle: ModelHandle, call: dict[str, Any]) -> Iterator[None]:
    """Where ``handle.block_inputs`` is set: replay this call's recorded block inputs (skipping the
    blocks below), or record them for the next model; else nothing."""
    store = handle.block_inputs
    if store is None:
        yield
        return
    if not blocks_unhooked(handle.layers, store.start):
        yield
        store.counts["plain"] += 1
        return
    key = store.key(call)
    recorded = store.load(key)
    if recorded is None:
        with capture_block_inputs(handle.layers, store.start) as captured:
            yield
        store.save(key, captured)
        store.counts["recorded"] += 1
    elif replay_matches(handle.model, handle.layers, store.start, handle.autocast):
        with replay_block_inputs(handle.model, handle.layers, store.start, recorded):
            yield
        store.counts["replayed"] += 1
    else:
        yield
        store.counts["plain"] += 1
