"""Scoring true/false twins with each pair's shared tokens run once.

Twins are minimal edits of each other ("The capital of Uzbekistan is Tashkent." / "... is
Bishkek."), so most of their tokens are shared. Scored as two independent rows, those tokens run
twice. Here every forward of a batch of pairs has three parts:

1. the prompt all rows share, once per call, cached (batch 1; each batch expands a copy);
2. each pair's common tokens after it (right-padded), batch ``B``, appended to the cache;
3. the two differing tails (the cache repeated per row), batch ``2B``, without their last token
   (its logits would predict past the reply; a tail of one token needs no forward at all).

Pairs are batched by tail length first (tails vary more and run at twice the batch), then by
common length: on the demo's 316 test twins that runs 16% fewer token positions than batching
by common length.

The result equals :func:`reptune.evaluation.scoring.token_row_logprobs` on the full rows (same
tokens, same positions; padded columns are masked and skipped by explicit position ids), which
a test pins. Where the model's cache or hooks do not allow it (see
:func:`~reptune.evaluation.scoring.prefix_sharing_allowed`) the plain row scorer runs instead.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch

from reptune.block_replay import frozen_blocks
from reptune.evaluation.scoring import RowScore, continuation_rows, prefix_sharing_allowed, token_row_logprobs
from reptune.models import ModelHandle
from reptune.prefix_cache import freeze_prefix_cache, packed_attention_mask, packing_possible
from reptune.tokens import cache_argument, forward_keeping_logits, output_cache


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix, leaving at least one token in each tail."""
    n = 0
    limit = min(len(a), len(b)) - 1
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def _forward(handle: ModelHandle, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
    """The logits ``[batch, seq, vocab]`` (as the model computes them) and the grown cache."""
    with handle.autocast():
        inputs = {"input_ids": ids.to(handle.device), "attention_mask": mask.to(handle.device), "position_ids": positions.to(handle.device)}
        out = handle.model(**inputs, **{cache_argument(handle.model): cache}, use_cache=True)
    return out.logits, output_cache(out)


def _picked(logits: torch.Tensor, picks: list[tuple[int, int, int]]) -> tuple[list[float], list[bool]]:
    """Log-prob (float64) of each ``(row, position, token)`` pick and whether it is the argmax;
    the log-softmax runs on the picked positions only, not on padding."""
    if not picks:
        return [], []
    index = torch.tensor(picks, dtype=torch.long, device=logits.device)
    chosen = logits[index[:, 0], index[:, 1]].float()  # [picks, vocab]
    wanted = index[:, 2:]
    logp = torch.log_softmax(chosen, dim=-1).gather(1, wanted).squeeze(1).double()
    return logp.tolist(), (chosen.argmax(-1, keepdim=True) == wanted).squeeze(1).tolist()


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
    logits_a, cache = _forward(handle, ids_a, torch.cat([torch.ones(len(pairs), g, dtype=torch.long), mask_a], 1),
                             (g + torch.arange(ids_a.shape[1])).expand(len(pairs), -1), cache)
    # a tail's last token predicts nothing: each row feeds its tail up to the one before
    tails = [rows[i][0][c:-1] for (t, f), c in zip(pairs, commons) for i in (t, f)]
    logits_b = None
    if any(tails):
        cache.batch_repeat_interleave(2)
        ids_b, mask_b = _pad(tails, pad)
        lengths_a = mask_a.sum(1).repeat_interleave(2)
        mask = torch.cat([torch.ones(len(tails), g, dtype=torch.long), mask_a.repeat_interleave(2, 0), mask_b], 1)
        positions = g + lengths_a.unsqueeze(1) + torch.arange(ids_b.shape[1]).unsqueeze(0)
        logits_b, _ = _forward(handle, ids_b, mask, positions, cache)
    picks, owners = _scored_positions(rows, pairs, commons, g)
    tokens: list[tuple[int, float, bool]] = []
    for logits, stage_picks, stage_owners in ((logits_a, picks[0], owners[0]), (logits_b, picks[1], owners[1])):
        if stage_picks:
            assert logits is not None
            tokens.extend(zip(stage_owners, *_picked(logits, stage_picks)))
    return _row_scores(rows, pairs, tokens)


def _pack_pairs(rows: list[tuple[list[int], int]], pairs: list[tuple[int, int]], g: int, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[tuple[int, int], int]]:
    """The pairs of a batch as one row without padding: per pair its common tokens, then the true
    and the false tail (each without its last token).

    Returns:
        ``(ids [1, L], positions [1, L], allowed [L, L], where)``: ``allowed[q, k]`` says token
        ``q`` may attend to token ``k`` (its own pair's common tokens up to itself, then its own
        tail); ``where[(row, at)]`` is the packed index of row ``row``'s absolute position ``at``.
    """
    ids: list[int] = []
    positions: list[int] = []
    owner: list[tuple[int, int]] = []  # (pair, segment: 0 common, 1 true tail, 2 false tail)
    where: dict[tuple[int, int], int] = {}
    for k, (t, f) in enumerate(pairs):
        c = _common(rows[t][0], rows[f][0])
        for at in range(g, c):
            where[(t, at)] = where[(f, at)] = len(ids)
            ids.append(rows[t][0][at]), positions.append(at), owner.append((k, 0))
        for segment, row in ((1, t), (2, f)):
            for at in range(c, len(rows[row][0]) - 1):
                where[(row, at)] = len(ids)
                ids.append(rows[row][0][at]), positions.append(at), owner.append((k, segment))
    pair = torch.tensor([o[0] for o in owner], device=device)
    segment = torch.tensor([o[1] for o in owner], device=device)
    order = torch.arange(len(ids), device=device)
    allowed = (pair[:, None] == pair[None, :]) & (order[:, None] >= order[None, :]) & ((segment[None, :] == 0) | (segment[:, None] == segment[None, :]))
    as_row = torch.tensor([ids], dtype=torch.long, device=device), torch.tensor([positions], dtype=torch.long, device=device)
    return as_row[0], as_row[1], allowed, where


def _score_batch_packed(handle: ModelHandle, rows: list[tuple[list[int], int]], pairs: list[tuple[int, int]], prefix: list[int],
                        prompt_cache: Any) -> dict[int, RowScore]:
    """:func:`_score_batch` with the batch packed into one row (:func:`_pack_pairs`): no padding,
    and the LM head runs only where a scored token is predicted. ``prompt_cache`` is read-only
    (:func:`reptune.prefix_cache.freeze_prefix_cache`)."""
    g = len(prefix)
    ids, positions, allowed, where = _pack_pairs(rows, pairs, g, handle.device)
    mask = packed_attention_mask(handle.model, allowed, g)
    targets = [(row, pos - 1, rows[row][0][pos]) for pair in pairs for row in pair for pos in range(len(rows[row][0]) - rows[row][1], len(rows[row][0]))]
    keep = sorted({where[(row, at)] for row, at, _ in targets})
    column = {packed: j for j, packed in enumerate(keep)}
    kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, cache_argument(handle.model): prompt_cache, "use_cache": True}
    with handle.autocast():
        out, kept = forward_keeping_logits(handle.model, kwargs, torch.tensor(keep, device=handle.device))
    logits = out.logits if kept else out.logits[:, keep]
    logprobs, hits = _picked(logits, [(0, column[where[(row, at)]], token) for row, at, token in targets])
    return _row_scores(rows, pairs, [(row, logprob, hit) for (row, _at, _token), logprob, hit in zip(targets, logprobs, hits)])


def _row_scores(rows: list[tuple[list[int], int]], pairs: list[tuple[int, int]], tokens: list[tuple[int, float, bool]]) -> dict[int, RowScore]:
    """Each row's :class:`RowScore` from its scored tokens ``(row, log-prob, argmax hit)``, summed
    in token order, as one row's sum."""
    totals: dict[int, float] = {}
    greedy: dict[int, bool] = {}
    for row, logprob, hit in tokens:
        totals[row] = totals.get(row, 0.0) + logprob
        greedy[row] = greedy.get(row, True) and hit
    return {index: RowScore(totals[index], rows[index][1], greedy[index]) for pair in pairs for index in pair}


def _scored_positions(rows: list[tuple[list[int], int]], pairs: list[tuple[int, int]], commons: list[int], g: int
                      ) -> tuple[tuple[list[tuple[int, int, int]], ...], tuple[list[int], ...]]:
    """Where each scored token is predicted: ``(picks, owners)``, each a pair (stage a, tail stage);
    a pick is ``(row in that stage's batch, position, token)``, its owner the row index in ``rows``."""
    picks: tuple[list[tuple[int, int, int]], ...] = ([], [])
    owners: tuple[list[int], ...] = ([], [])
    for k, ((t, f), c) in enumerate(zip(pairs, commons)):
        for side, row_index in enumerate((t, f)):
            tokens, n_target = rows[row_index]
            for pos in range(len(tokens) - n_target, len(tokens)):  # token `pos` is predicted at `pos - 1`
                at = pos - 1  # >= g: the cached prompt ends one token before the replies
                stage = int(at >= c)
                picks[stage].append((k, at - g, tokens[pos]) if at < c else (2 * k + side, at - c, tokens[pos]))
                owners[stage].append(row_index)
    return picks, owners


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
    # pairs of similar shape share a batch, so little of either stage is padding: tail length
    # first (the tails vary more and run at twice the batch), then common length
    def shape(i: int) -> tuple[int, int]:
        common = _common(rows[2 * i][0], rows[2 * i + 1][0])
        return max(len(rows[2 * i][0]), len(rows[2 * i + 1][0])) - common, common

    order = sorted(range(len(twins)), key=shape)
    packed = packing_exact(handle)
    call = {"prompt": prompt, "twins": [list(twin) for twin in twins], "batch_size": batch_size} | ({"layout": "packed"} if packed else {})
    with frozen_blocks(handle, call):
        prompt_cache = _prompt_cache(handle, prefix)  # once per call: every batch starts from a copy
        frozen = freeze_prefix_cache(prompt_cache, len(prefix)) if packed else None
        for start in range(0, len(order), batch_size):
            batch = [(2 * i, 2 * i + 1) for i in order[start : start + batch_size]]
            if frozen is not None:
                results.update(_score_batch_packed(handle, rows, batch, prefix, frozen))
            else:
                results.update(_score_batch(handle, rows, batch, prefix, prompt_cache))
            if advance:
                advance(len(batch))
    return [(results[2 * i], results[2 * i + 1]) for i in range(len(twins))]


_PACKING_EXACT: dict[tuple[type, str], bool] = {}


def packing_exact(handle: ModelHandle) -> bool:
    """Whether twins may be scored packed on this model: an attention implementation that takes a
    custom mask (:func:`reptune.prefix_cache.packing_possible`), and, checked once per model class
    and implementation on two short pairs, the same log-probs as the padded batches (a model that
    builds positions or biases from the 2D mask, ALiBi say, would not give them)."""
    model = handle.model
    if not packing_possible(model, 64):
        return False
    key = (type(model), str(model.config._attn_implementation))
    if key not in _PACKING_EXACT:
        rows = [([1, 2, 3, 4, 5, 6], 3), ([1, 2, 3, 4, 7, 8, 9], 4), ([1, 2, 3, 5, 6], 2), ([1, 2, 3, 6, 5, 4, 3], 4)]
        rows = [([token % handle.model.config.vocab_size for token in tokens], n) for tokens, n in rows]
        pairs = [(0, 1), (2, 3)]
        prefix = rows[0][0][:2]
        exact = False
        with torch.inference_mode():
            cache = _prompt_cache(handle, prefix)
            frozen = freeze_prefix_cache(cache, len(prefix))
            if frozen is not None:
                padded = _score_batch(handle, rows, pairs, prefix, cache)
                packed = _score_batch_packed(handle, rows, pairs, prefix, frozen)
                tolerance = 1e-3 if handle.autocast_dtype is None else 0.1
                exact = all(abs(padded[i].logprob - packed[i].logprob) <= tolerance for i in padded)
        _PACKING_EXACT[key] = exact
    return _PACKING_EXACT[key]
