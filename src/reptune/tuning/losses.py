"""The three loss terms of representation tuning, in float32.

Shapes: ``hidden [batch, seq, hidden]``, ``mask [batch, seq]`` (bool, selected positions),
``logits [batch, seq, vocab]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_to_vector(hidden: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every position to ``vector``: ``[batch, seq]`` float32."""
    return F.cosine_similarity(hidden.float(), vector.to(hidden.device, torch.float32).view(1, 1, -1), dim=-1, eps=1e-6)


def representation_loss(hidden: torch.Tensor, vector: torch.Tensor, mask: torch.Tensor, mode: str, sign: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Tune in (``(1 - cos(h, sign*v)) / 2``) or tune out (``|cos(h, v)|``), averaged over ``mask``.

    Returns:
        ``(loss, mean_cos)`` where ``mean_cos`` is the mean cosine to ``+v`` (detached).
    """
    cos = cosine_to_vector(hidden, vector)
    selected = cos[mask]
    if mode == "in":
        loss = ((1 - sign * selected) / 2).mean()
    elif mode == "out":
        loss = selected.abs().mean()
    else:
        raise ValueError(f"unknown representation loss mode {mode!r}")
    return loss, selected.detach().mean()


def answer_loss(logits_last: torch.Tensor, letter_ids: tuple[int, int], correct: torch.Tensor, target: str) -> torch.Tensor:
    """Cross-entropy on the answer letter at the last prompt position.

    Args:
        logits_last: ``[batch, vocab]`` logits predicting the first answer token.
        correct: ``[batch]`` index (0 = A, 1 = B) of the correct letter.
        target: ``truth`` (correct letter), ``lie`` (the other letter) or ``soft`` (50/50).
    """
    logprobs = F.log_softmax(logits_last.float(), dim=-1)
    ids = torch.tensor(letter_ids, device=logits_last.device)
    letter_logprobs = logprobs[:, ids]  # [batch, 2]
    if target == "soft":
        return -(0.5 * letter_logprobs).sum(-1).mean()
    chosen = correct if target == "truth" else 1 - correct
    return -letter_logprobs.gather(1, chosen.view(-1, 1)).mean()


def completion_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Summed log-prob of each row's completion tokens (token t predicted at t-1): ``[batch]`` float32."""
    targets = input_ids[:, 1:]
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (logp * completion_mask[:, 1:].float()).sum(-1)


def pair_sequence_loss(logp_true: torch.Tensor, logp_false: torch.Tensor, target: str) -> torch.Tensor:
    """Pairwise loss on twins: ``-log softmax([logp_true, logp_false])[target]``, mean over pairs.

    Args:
        logp_true, logp_false: ``[pairs]`` summed completion log-probs of each twin.
        target: ``truth`` (prefer the true twin), ``lie`` (the false one) or ``soft`` (50/50).
    """
    both = F.log_softmax(torch.stack([logp_true, logp_false], dim=-1), dim=-1)  # [pairs, 2]
    if target == "soft":
        return -(0.5 * both).sum(-1).mean()
    return -both[:, 0 if target == "truth" else 1].mean()


def sft_loss(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on completion tokens (token t predicted from position t-1)."""
    targets = input_ids[:, 1:]
    predicted = logits[:, :-1].float()
    weights = completion_mask[:, 1:].float()
    nll = F.cross_entropy(predicted.reshape(-1, predicted.shape[-1]), targets.reshape(-1), reduction="none").view_as(weights)
    return (nll * weights).sum() / weights.sum().clamp_min(1.0)


def topk_reference(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compress base next-token distributions for caching: top-k log-probs, their ids, tail log-mass.

    Returns ``(logp_topk [..., k], ids [..., k], logp_tail [...])``.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    top, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
    tail = torch.log1p(-top.exp().sum(-1).clamp(max=1 - 1e-6))
    return top, ids, tail


def kl_base_to_tuned(
    tuned_logits: torch.Tensor,
    reference: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    mask: torch.Tensor,
) -> torch.Tensor:
    """KL(base || tuned) per position over the base's top-k tokens plus one tail bucket, mean over ``mask``.

    Exact when k equals the vocabulary size; otherwise the tail of both distributions is
    lumped into one outcome (a lower bound on the full KL, by the data-processing inequality).
    """
    base_top, ids, base_tail = reference
    logq = F.log_softmax(tuned_logits.float(), dim=-1)
    q_top = logq.gather(-1, ids)
    q_tail = torch.log1p(-q_top.exp().sum(-1).clamp(max=1 - 1e-6))
    p_top = base_top.exp()
    kl = (p_top * (base_top - q_top)).sum(-1) + base_tail.exp() * (base_tail - q_tail)
    return kl[mask].mean()
