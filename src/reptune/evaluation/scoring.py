"""Batched log-probability scoring: the shared scorer of the likelihood tasks (A/B, CAA, MMLU, TruthfulQA).

It is not the only code in evaluation that runs the model: generation (open-ended answers, the
``generate`` scoring mode, through :func:`reptune.steering.generate`), perplexity and KL windows
(:mod:`~reptune.evaluation.tasks.perplexity`), twin sequence scoring
(:mod:`~reptune.evaluation.twin_scoring`), GCG's attack loss (:mod:`~reptune.evaluation.tasks.gcg`)
and the projection task's activation capture run their own forward passes.

Three primitives, each one forward pass per batch, padding-aware (left padding with position
ids counted over real tokens, so a row scores the same alone or in any batch):

* :func:`next_token_logprobs` — log-probs of a few candidate tokens (answer letters) right
  after each prompt; A/B questions, CAA and MMLU (one row per question scores all options).
* :func:`token_row_logprobs` — summed log-prob of the last ``n_target`` tokens of each row of
  token ids given the tokens before them; the engine of the two below.
* :func:`continuation_logprobs` — summed log-prob of each (prompt, continuation) row, batched
  across rows of different questions; :func:`choice_logprobs` — the same for every choice of
  each question (TruthfulQA MC answers, MMLU's `` A``..`` D``), one forward per question when
  every choice is one token.
* :func:`sliding_windows` — WikiText-style windows whose targets cover every token but the first
  exactly once.

**Tokenisation is lm-evaluation-harness' (0.4.13).** A prompt gets the tokenizer's default
special tokens (BOS on Llama/Gemma/Mistral tokenizers) unless it already starts with the BOS text
(:func:`prompt_token_ids`, ``HFLM.tok_encode``); a (context, continuation) pair is encoded
``context + continuation`` whole and the continuation is what follows the context's own tokens
(:func:`encode_pair`, lm-eval's ``_encode_pair``), never the continuation encoded alone (which
adds a spurious ``"▁"`` token on SentencePiece tokenizers such as Llama-2's). Tests compare
per-item log-likelihoods with lm-eval's ``HFLM.loglikelihood`` (1e-4).

Rows are sorted by length before batching (less padding) and results come back in input
order. Log-softmax is taken over the full vocabulary in fp32 and sums are accumulated in fp64.
Only the logits that are needed are computed (``logits_to_keep``), so the LM head does not run
over long prompts.

**Shared prompt prefix.** When the rows of a call start with the same tokens (a chat template's
system prompt and instruction, TruthfulQA's six-shot primer, MMLU's header line), that prefix
runs once (batch 1, ``use_cache=True``) and every batch then runs only its rows' remaining
tokens against the prefix's keys and values (expanded to the batch, never modified),
right-padded, with position ids continuing after the prefix, an attention mask of ones over the
prefix, and logits gathered at each row's own last positions. The prefix is the longest common
*token* prefix of all rows of the call, cut so that every position whose logits are read stays
in the second pass. It is used when the call has at least two rows and the prefix has at least
:data:`PREFIX_MIN_TOKENS` (8) tokens and at least :data:`PREFIX_MIN_FRACTION` (5%) of the mean
row length (below that the extra pass buys nothing measurable). Results equal the one-pass path
up to float rounding (tested on Llama, GPT-2, Qwen2, Gemma, Gemma3, GPT-NeoX and Phi, steered
and not). Every row runs whole, as without sharing, when:

* ``share_prefix=False`` is passed, or ``REPTUNE_NO_PREFIX_CACHE=1`` is set (debugging);
* a forward (pre-)hook anywhere in the model could act differently on a split forward: every
  hook counts as such unless its function has ``reptune_tokenwise = True``.
  :class:`~reptune.steering.Steering` sets it for scope ``all`` with one multiplier for every
  row (the evaluation default: each position is edited from its own hidden state, in either
  pass), not for scopes ``generated``/``from:K`` or per-row multipliers, which depend on the
  batch and the mask of each call;
* the model's cache cannot hold the prefix exactly: anything but a plain ``DynamicCache`` of
  full-attention or sliding-window layers that kept all prefix tokens (a window shorter than
  the prefix, linear-attention or quantized caches, a model that returns no cache).

MMLU rows share only their header's first words across subjects (tasks score items round-robin
over subjects, so one call rarely holds two questions of a subject); there is no per-subject
grouping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from reptune.errors import ReptuneError
from reptune.models import ModelHandle
from reptune.prefix_cache import (  # noqa: F401  (re-exported: tests and tasks import them from here)
    NO_PREFIX_ENV,
    PREFIX_MIN_FRACTION,
    PREFIX_MIN_TOKENS,
    freeze_prefix_cache,
    prefix_pass,
    prefix_sharing_allowed,
    prefix_worth_sharing,
    shared_prefix_length,
)
from reptune.tokens import cache_argument, forward_keeping_logits, left_pad


def _noop(_n: int = 1) -> None:
    return None


def _prefix_token_id(tokenizer: Any) -> int | None:
    """lm-eval's ``prefix_token_id``: BOS, else EOS (the context of an empty-context request)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos if bos is not None else getattr(tokenizer, "eos_token_id", None)


def prompt_token_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` with lm-evaluation-harness' BOS convention (``HFLM.tok_encode``, 0.4.13).

    The tokenizer's own default special tokens (BOS for Llama/Gemma/Mistral tokenizers, none for
    GPT-2/Qwen-style ones), except when ``text`` already starts with the text of the prefix
    token (BOS, else EOS), as a chat template's output does: then none are added.
    """
    prefix_id = _prefix_token_id(tokenizer)
    if prefix_id is not None and text.startswith(tokenizer.decode(prefix_id)):
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(text))


def encode_pair(tokenizer: Any, context: str, continuation: str, *, cache: dict[str, list[int]] | None = None) -> tuple[list[int], list[int]]:
    """``(context ids, continuation ids)`` of a log-likelihood request, exactly as lm-eval builds them.

    lm-eval's ``loglikelihood`` / ``_encode_pair`` for causal models: trailing whitespace of the
    context moves to the continuation; ``context + continuation`` is encoded whole and the
    continuation is its tokens after the first ``len(context ids)`` (context encoded alone,
    :func:`prompt_token_ids`). The model reads ``context ids + continuation ids``. So a
    SentencePiece tokenizer scores ``"▁Paris"``, not the ``"▁", "▁Paris"`` it gives for
    ``" Paris"`` encoded alone. An empty context is lm-eval's prefix token (BOS, else EOS).
    ``cache`` maps context strings to their ids (reused across a question's choices).
    """
    if context == "":
        cont = list(tokenizer.encode(continuation, add_special_tokens=False))
        prefix_id = _prefix_token_id(tokenizer)
        if cont and prefix_id == cont[0]:
            return cont[:1], cont[1:]
        return ([] if prefix_id is None else [prefix_id]), cont
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if cache is not None and context in cache:
        context_ids = cache[context]
    else:
        context_ids = prompt_token_ids(tokenizer, context)
        if cache is not None:
            cache[context] = context_ids
    whole = prompt_token_ids(tokenizer, context + continuation)
    return list(context_ids), whole[len(context_ids) :]


def _last_logits(handle: ModelHandle, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, keep: int) -> torch.Tensor:
    """Logits of the last ``keep`` positions, ``[batch, keep, vocab]`` in fp32."""
    kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "use_cache": False}
    out, _ = _call_model(handle, kwargs, keep)
    return out.logits[:, -keep:].float()


def _order_by_length(lengths: Sequence[int]) -> list[int]:
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


# ------------------------------------------------------------------------- shared prefix
def _call_model(handle: ModelHandle, kwargs: dict[str, Any], keep: int | torch.Tensor) -> tuple[Any, bool]:
    """The model's output and whether it took ``logits_to_keep`` (else its logits cover every position)."""
    with handle.autocast():
        return forward_keeping_logits(handle.model, kwargs, keep)


def _prefix_cache(handle: ModelHandle, prefix: Sequence[int]) -> Any:
    """Run the shared prefix once (batch 1) and freeze its keys/values; ``None`` if unsupported."""
    with handle.autocast():
        return prefix_pass(handle.model, torch.tensor([list(prefix)], dtype=torch.long, device=handle.device))


def _suffix_logits(handle: ModelHandle, cache: Any, suffixes: Sequence[Sequence[int]], pad_id: int, keep: int) -> torch.Tensor:
    """Logits ``[batch, keep, vocab]`` (fp32) at each row's last ``keep`` positions, after the cached prefix.

    Suffixes are right-padded (real tokens follow the prefix without a gap); positions continue
    after the prefix; a row's logits are gathered at its own last real tokens.
    """
    prefix = cache.get_seq_length()
    batch, width = len(suffixes), max(len(row) for row in suffixes)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, prefix + width), dtype=torch.long)
    mask[:, :prefix] = 1
    for index, row in enumerate(suffixes):
        ids[index, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[index, prefix : prefix + len(row)] = 1
    ends = torch.tensor([len(row) - 1 for row in suffixes], dtype=torch.long)
    # row i's last `keep` positions (clamped at 0: those columns are never read, see callers)
    index = (ends.unsqueeze(1) - keep + 1 + torch.arange(keep)).clamp(min=0)
    device = handle.device
    positions = (prefix + torch.arange(width)).unsqueeze(0).expand(batch, -1)
    kwargs = {
        "input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": positions.to(device),
        cache_argument(handle.model): cache, "use_cache": True,
    }
    index = index.to(device)
    out, kept = _call_model(handle, kwargs, index)
    logits = out.logits
    if not kept or logits.shape[:2] != (batch, keep):
        if logits.shape[:2] != (batch, width):  # per-row logits_to_keep misread: every position instead
            logits = _call_model(handle, kwargs, 0)[0].logits
        logits = logits.take_along_dim(index.unsqueeze(-1), dim=1)
    return logits.float()


def _logit_batches(
    handle: ModelHandle, rows: Sequence[Sequence[int]], n_targets: Sequence[int], *, batch_size: int, share_prefix: bool
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield ``(row indices, logits [batch, keep, vocab])``, ``keep = 1 + max n_target`` of the batch.

    ``logits[i, keep - 1 - j]`` are the logits at position ``len(row) - 1 - j`` of row ``i``
    (``j <= n_targets[i]``), whether the rows ran whole or after a shared prefix.
    """
    pad = handle.tokenizer.pad_token_id
    cache = None
    prefix = 0
    if len(rows) > 1 and prefix_sharing_allowed(handle, share_prefix):
        prefix = shared_prefix_length(rows, n_targets)
        if prefix_worth_sharing(prefix, rows):
            cache = _prefix_cache(handle, rows[0][:prefix])
    order = _order_by_length([len(row) for row in rows])
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        keep = max(n_targets[i] for i in chunk) + 1
        if cache is not None:
            logits = _suffix_logits(handle, cache, [rows[i][prefix:] for i in chunk], pad, keep)
        else:
            ids, mask, positions = left_pad([rows[i] for i in chunk], pad, handle.device)
            logits = _last_logits(handle, ids, mask, positions, keep)
        yield chunk, logits


def next_token_logprobs(
    handle: ModelHandle,
    prompts: Sequence[str],
    candidates: Sequence[int] | Sequence[Sequence[int]],
    *,
    batch_size: int = 16,
    advance: Callable[[int], None] = _noop,
    share_prefix: bool = True,
) -> np.ndarray:
    """Log-probabilities of candidate next tokens after each prompt.

    Args:
        prompts: full prompt texts (chat template already applied where wanted), tokenised by
            :func:`prompt_token_ids`.
        candidates: token ids shared by all prompts (``[k]``), or one list per prompt
            (``[n][k]``, same ``k``).
        advance: progress callback, called with the number of prompts done.
        share_prefix: run the prompts' common token prefix once (see the module docstring).

    Returns:
        ``[n, k]`` float64 log-probs (normalised over the whole vocabulary).
    """
    tokenized = [prompt_token_ids(handle.tokenizer, prompt) for prompt in prompts]
    return next_token_logprobs_ids(handle, tokenized, candidates, batch_size=batch_size, advance=advance, share_prefix=share_prefix)


@torch.inference_mode()
def next_token_logprobs_ids(
    handle: ModelHandle,
    rows: Sequence[Sequence[int]],
    candidates: Sequence[int] | Sequence[Sequence[int]],
    *,
    batch_size: int = 16,
    advance: Callable[[int], None] = _noop,
    share_prefix: bool = True,
) -> np.ndarray:
    """:func:`next_token_logprobs` on rows of token ids (``[n][len]``); returns ``[n, k]`` float64."""
    if batch_size < 1:
        raise ReptuneError(f"batch_size must be at least 1, got {batch_size}")
    if not rows:
        return np.zeros((0, len(candidates)), dtype=np.float64)
    if any(len(row) == 0 for row in rows):
        raise ReptuneError("a scored prompt has no tokens")
    per_row = bool(candidates) and isinstance(candidates[0], (list, tuple))
    table = torch.tensor([list(c) for c in candidates] if per_row else [list(candidates)] * len(rows), dtype=torch.long)
    if table.shape[0] != len(rows):
        raise ReptuneError(f"{table.shape[0]} candidate lists for {len(rows)} prompts")
    tokenized = [list(row) for row in rows]
    out = np.zeros((len(rows), table.shape[1]), dtype=np.float64)
    batches = _logit_batches(handle, tokenized, [0] * len(tokenized), batch_size=batch_size, share_prefix=share_prefix)
    for chunk, logits in batches:
        logprobs = torch.log_softmax(logits[:, -1], dim=-1)
        out[chunk] = logprobs.gather(1, table[chunk].to(logprobs.device)).double().cpu().numpy()
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
    share_prefix: bool = True,
) -> list[RowScore]:
    """Score rows of token ids: the summed log-prob of each row's last ``n_target`` tokens.

    Args:
        rows: ``(token_ids, n_target)`` with ``1 <= n_target < len(token_ids)``.
        share_prefix: run the rows' common token prefix once (see the module docstring).
    """
    if batch_size < 1:
        raise ReptuneError(f"batch_size must be at least 1, got {batch_size}")
    for ids, n_target in rows:
        if not 1 <= n_target < len(ids):
            raise ReptuneError(f"a scored row needs 1 <= targets < tokens, got {n_target} of {len(ids)}")
    results: list[RowScore | None] = [None] * len(rows)
    tokens = [list(ids) for ids, _ in rows]
    targets = [n_target for _, n_target in rows]
    for chunk, logits in _logit_batches(handle, tokens, targets, batch_size=batch_size, share_prefix=share_prefix):
        keep = logits.shape[1]
        for row, index in enumerate(chunk):
            n_target = targets[index]
            # position p predicts token p+1: the last n_target tokens are predicted by logits
            # at the n_target positions before the last one
            predicting = logits[row, keep - 1 - n_target : keep - 1]
            wanted = torch.tensor(tokens[index][-n_target:], dtype=torch.long, device=predicting.device)
            logprobs = torch.log_softmax(predicting, dim=-1)
            token_lp = logprobs.gather(1, wanted.unsqueeze(1)).squeeze(1).double()
            greedy = bool((predicting.argmax(-1) == wanted).all())
            results[index] = RowScore(float(token_lp.sum()), n_target, greedy)
        advance(len(chunk))
    return [score for score in results if score is not None]


def continuation_rows(tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """Token rows ``(context ids + continuation ids, n continuation tokens)`` of (context, continuation)
    pairs, tokenised as lm-evaluation-harness does (:func:`encode_pair`)."""
    rows = []
    cache: dict[str, list[int]] = {}
    for prompt, continuation in pairs:
        context_ids, cont = encode_pair(tokenizer, prompt, continuation, cache=cache)
        if not cont:
            raise ReptuneError(f"empty continuation {continuation!r} after prompt {prompt[-40:]!r}")
        rows.append((context_ids + cont, len(cont)))
    return rows


def continuation_logprobs(
    handle: ModelHandle,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 16,
    advance: Callable[[int], None] = _noop,
    share_prefix: bool = True,
) -> list[RowScore]:
    """Summed log-prob of each continuation given its prompt (lm-eval's ``loglikelihood``), batched across all rows."""
    rows = continuation_rows(handle.tokenizer, pairs)
    return token_row_logprobs(handle, rows, batch_size=batch_size, advance=advance, share_prefix=share_prefix)


def choice_logprobs(
    handle: ModelHandle,
    requests: Sequence[tuple[str, Sequence[str]]],
    *,
    batch_size: int = 16,
    advance: Callable[[int], None] = _noop,
    share_prefix: bool = True,
) -> list[list[float]]:
    """lm-eval's ``loglikelihood`` of every continuation of every ``(context, continuations)`` request.

    Tokenised by :func:`encode_pair`. A request whose continuations are all one token (MMLU's
    ``" A"``..``" D"`` on most tokenizers) runs as one row whose next-token log-probs are read
    for each (the same numbers lm-eval computes, one forward instead of ``k``); the others run
    one row per continuation. ``advance`` is called with the number of requests done.

    Returns:
        ``[n][k_i]`` summed log-probs (float64 sums of fp32 log-softmax values).
    """
    cache: dict[str, list[int]] = {}
    single_rows: list[list[int]] = []
    single_ids: list[list[int]] = []
    single_at: list[int] = []
    multi_rows: list[tuple[list[int], int]] = []
    multi_at: list[tuple[int, int]] = []
    out: list[list[float]] = [[0.0] * len(continuations) for _, continuations in requests]
    for index, (context, continuations) in enumerate(requests):
        encoded = [encode_pair(handle.tokenizer, context, c, cache=cache) for c in continuations]
        if (empty := [c for c, (_, ids) in zip(continuations, encoded) if not ids]):
            raise ReptuneError(f"empty continuation {empty[0]!r} after prompt {context[-40:]!r}")
        if encoded and all(len(ids) == 1 for _, ids in encoded) and len({tuple(ctx) for ctx, _ in encoded}) == 1:
            single_rows.append(encoded[0][0])
            single_ids.append([ids[0] for _, ids in encoded])
            single_at.append(index)
            continue
        for choice, (context_ids, ids) in enumerate(encoded):
            multi_rows.append((context_ids + ids, len(ids)))
            multi_at.append((index, choice))
    by_k: dict[int, list[int]] = {}
    for row, index in enumerate(single_at):  # one call per candidate count (the table is rectangular)
        by_k.setdefault(len(single_ids[row]), []).append(row)
    for rows in by_k.values():
        values = next_token_logprobs_ids(
            handle, [single_rows[r] for r in rows], [single_ids[r] for r in rows], batch_size=batch_size, advance=advance, share_prefix=share_prefix
        )
        for r, row_values in zip(rows, values):
            out[single_at[r]] = [float(v) for v in row_values]
    if multi_rows:
        scores = token_row_logprobs(handle, multi_rows, batch_size=batch_size, share_prefix=share_prefix)
        for (index, choice), score in zip(multi_at, scores):
            out[index][choice] = score.logprob
        advance(len({index for index, _ in multi_at}))
    return out


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
