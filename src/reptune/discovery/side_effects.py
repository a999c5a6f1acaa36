"""Side-effect control: how much a steering vector changes behaviour on ordinary text.

A discovered vector should unlock one behaviour and leave the rest alone. The side-effect score
of a vector ``theta`` added at layer ``L`` (multiplier 1, every token) is

    side_effect(theta) = mean over real tokens t of neutral texts of KL( p_base(.|x_<=t) || p_theta(.|x_<=t) )

in nats, the next-token KL from the unsteered model to the steered one, computed in float64 and
averaged token-weighted over the texts. It is exactly 0 for the zero vector and grows with the
vector's norm. The default texts are reptune's 100 hand-written neutral sentences
(``reptune/data/resources/neutral_text.txt``, the same ones the ``kl`` retain corpus falls back to),
read as plain text (no chat template).

:func:`side_effect_scores` scores many vectors against one cached unsteered pass;
:class:`SideEffects` keeps that cache for repeated use (a search objective's penalty,
:func:`penalized`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import torch

from reptune.activations import tokenize_examples
from reptune.data.pairs import Example
from reptune.discovery.common import DiscoveryError, load_prompts
from reptune.models import ModelHandle
from reptune.steering import Steering

NEUTRAL = "neutral"
DEFAULT_LIMIT = 32


def neutral_prompts(limit: int | None = DEFAULT_LIMIT) -> list[str]:
    """The shipped neutral sentences (first ``limit``; ``None``: all 100)."""
    text = resources.files("reptune.data").joinpath("resources/neutral_text.txt").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines if limit is None else lines[:limit]


def resolve_side_effect_prompts(spec: str | Path | Sequence[str] | None, limit: int | None = DEFAULT_LIMIT) -> list[str] | None:
    """``None`` (off), ``"neutral"`` (shipped sentences), a prompts file, or a list of texts."""
    if spec is None:
        return None
    if isinstance(spec, (str, Path)):
        if str(spec) == NEUTRAL:
            return neutral_prompts(limit)
        texts = load_prompts(spec)
    else:
        texts = [str(text) for text in spec]
    if not texts or any(not text.strip() for text in texts):
        raise DiscoveryError("side-effect prompts must be a non-empty list of non-empty texts")
    return texts if limit is None else texts[:limit]


class SideEffects:
    """KL-to-unsteered scorer on fixed texts; the unsteered log-probabilities are cached once.

    Args:
        handle: the model.
        layer: the layer vectors are added at (site convention: output of block L).
        texts: plain texts (no chat template is applied).
        batch_size: texts per forward pass.

    Attributes:
        forward_passes: vector evaluations so far (one per vector, over all texts).
    """

    def __init__(self, handle: ModelHandle, layer: int, texts: Sequence[str], *, batch_size: int = 16) -> None:
        if not texts:
            raise DiscoveryError("no side-effect prompts")
        self.handle, self.layer, self.batch_size = handle, int(layer), int(batch_size)
        self.texts = list(texts)
        self._batches = [
            tokenize_examples(handle.tokenizer, [Example(t) for t in self.texts[i : i + batch_size]], padding_side="right", device=handle.device)
            for i in range(0, len(self.texts), batch_size)
        ]
        self._base = [self._log_probs(batch) for batch in self._batches]
        self.forward_passes = 0

    def _log_probs(self, batch) -> torch.Tensor:
        with torch.inference_mode(), self.handle.autocast():
            out = self.handle.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        return out.logits.double().log_softmax(-1).cpu()

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        """Side-effect scores ``[k]`` float64 (nats per token) of the rows of ``vectors`` ``[k, hidden]``."""
        vectors = torch.as_tensor(vectors, dtype=torch.float32).detach().cpu()
        if vectors.ndim == 1:
            vectors = vectors.unsqueeze(0)
        if vectors.ndim != 2 or vectors.shape[1] != self.handle.hidden_size:
            raise DiscoveryError(f"vectors must be [k, {self.handle.hidden_size}], got {list(vectors.shape)}")
        scores = torch.zeros(vectors.shape[0], dtype=torch.float64)
        for row, vector in enumerate(vectors):
            total, count = 0.0, 0
            with Steering(self.handle, {self.layer: vector}, multiplier=1.0):
                for batch, base in zip(self._batches, self._base):
                    steered = self._log_probs(batch)
                    kl = (base.exp() * (base - steered)).sum(-1)  # [B, S]
                    real = batch.attention_mask.cpu().bool()
                    total += float(kl[real].sum())
                    count += int(real.sum())
            scores[row] = max(total / max(count, 1), 0.0)
            self.forward_passes += 1
        return scores


def side_effect_scores(handle: ModelHandle, vectors: torch.Tensor, layer: int, texts: Sequence[str] | None = None, *, batch_size: int = 16) -> torch.Tensor:
    """KL-to-unsteered side-effect score ``[k]`` (float64, nats per token) of each row of ``vectors``
    added at ``layer``, on ``texts`` (default: the shipped neutral sentences)."""
    return SideEffects(handle, layer, neutral_prompts() if texts is None else texts, batch_size=batch_size)(vectors)


Scorer = Callable[[torch.Tensor], torch.Tensor]


def penalized(scorer: Scorer, side_effects: SideEffects, weight: float) -> Scorer:
    """``score(theta) - weight * side_effect(theta)``: a search objective that prefers vectors
    leaving ordinary text alone (``weight`` >= 0, in score units per nat)."""
    if not weight >= 0:
        raise DiscoveryError(f"side-effect penalty must be >= 0, got {weight}")

    def objective(vectors: torch.Tensor) -> torch.Tensor:
        base = torch.as_tensor(scorer(vectors), dtype=torch.float64)
        return base - weight * side_effects(vectors) if weight else base

    return objective
