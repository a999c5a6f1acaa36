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
:class:`SideEffects` keeps that cache for repeated use and also gives the score's gradient with
respect to the vector (:meth:`SideEffects.value_and_grad`). A penalty ``W x side_effect`` enters a
derivative-free search objective through :func:`penalized`, and MELBO training and gradient
annealing through :class:`SideEffectPenalty` (value and gradient).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import torch

from reptune.activations import tokenize_examples
from reptune.data.pairs import Example
from reptune.discovery.common import DiscoveryError, check_number, load_prompts
from reptune.hooks import add, install
from reptune.models import ModelHandle

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

    Each vector is added at ``layer`` (every token, multiplier 1, as ``reptune steer`` does) and
    the texts run in the same batches as the cached unsteered pass, so the zero vector scores
    exactly 0. :meth:`__call__` scores without gradients; :meth:`value_and_grad` also returns the
    gradient of the score with respect to each vector (for the gradient searches' penalty).

    Args:
        handle: the model.
        layer: the layer vectors are added at (site convention: output of block L).
        texts: plain texts (no chat template is applied).
        batch_size: texts per forward pass.

    Attributes:
        forward_passes: vector evaluations so far (one per vector, over all texts; gradient ones included).
        backward_passes: vector gradients so far (one per vector, over all texts).
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
        with torch.no_grad():  # not inference_mode: the cached pass enters the gradient searches' graphs
            self._base = [self._log_probs(batch) for batch in self._batches]
        self._real = [batch.attention_mask.cpu().bool() for batch in self._batches]
        self._tokens = sum(int(real.sum()) for real in self._real)
        self.forward_passes = 0
        self.backward_passes = 0

    def _log_probs(self, batch) -> torch.Tensor:
        """Next-token log-probabilities ``[B, S, vocab]`` float64 on the CPU (under the caller's grad mode)."""
        with self.handle.autocast():
            out = self.handle.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        return out.logits.double().log_softmax(-1).cpu()

    def _kl_sum(self, index: int, vector: torch.Tensor) -> torch.Tensor:
        """Summed KL(unsteered || steered) over batch ``index``'s real tokens, a float64 scalar
        (differentiable in ``vector`` ``[hidden]`` when it requires grad)."""
        with install(self.handle.layers, {self.layer: add(vector)}, prepend=True):
            steered = self._log_probs(self._batches[index])
        base = self._base[index]
        kl = (base.exp() * (base - steered)).sum(-1)  # [B, S]
        return kl[self._real[index]].sum()

    def _rows(self, vectors: torch.Tensor) -> torch.Tensor:
        """``vectors`` as float32 rows ``[k, hidden]`` on the model's device; a one-line error for another shape."""
        vectors = torch.as_tensor(vectors, dtype=torch.float32).detach()
        if vectors.ndim == 1:
            vectors = vectors.unsqueeze(0)
        if vectors.ndim != 2 or vectors.shape[1] != self.handle.hidden_size:
            raise DiscoveryError(f"vectors must be [k, {self.handle.hidden_size}], got {list(vectors.shape)}")
        return vectors.to(self.handle.device)

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        """Side-effect scores ``[k]`` float64 (nats per token) of the rows of ``vectors`` ``[k, hidden]``."""
        vectors = self._rows(vectors)
        scores = torch.zeros(vectors.shape[0], dtype=torch.float64)
        with torch.inference_mode():
            for row, vector in enumerate(vectors):
                total = sum(float(self._kl_sum(index, vector)) for index in range(len(self._batches)))
                scores[row] = max(total / max(self._tokens, 1), 0.0)
                self.forward_passes += 1
        return scores

    def value_and_grad(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``[k]`` float64 (as :meth:`__call__`, not clamped at 0) and their gradients
        ``[k, hidden]`` float32 on the CPU (nats per token per unit of the vector), one forward and
        one backward pass per vector and batch of texts (the graph of one batch is freed before the next)."""
        vectors = self._rows(vectors)
        scores = torch.zeros(vectors.shape[0], dtype=torch.float64)
        grads = torch.zeros(vectors.shape, dtype=torch.float32)
        for row, vector in enumerate(vectors):
            for index in range(len(self._batches)):
                theta = vector.clone().requires_grad_(True)
                with torch.enable_grad():
                    total = self._kl_sum(index, theta)
                    (grad,) = torch.autograd.grad(total, theta)
                scores[row] += float(total.detach())
                grads[row] += grad.float().cpu()
            self.forward_passes += 1
            self.backward_passes += 1
        count = max(self._tokens, 1)
        return scores / count, grads / count

    def cost(self) -> dict[str, int]:
        """The passes spent so far, named for a search's cost record (each over all the texts)."""
        return {"side_effect_forward_passes": self.forward_passes, "side_effect_backward_passes": self.backward_passes}


def side_effect_scores(handle: ModelHandle, vectors: torch.Tensor, layer: int, texts: Sequence[str] | None = None, *, batch_size: int = 16) -> torch.Tensor:
    """KL-to-unsteered side-effect score ``[k]`` (float64, nats per token) of each row of ``vectors``
    added at ``layer``, on ``texts`` (default: the shipped neutral sentences)."""
    return SideEffects(handle, layer, neutral_prompts() if texts is None else texts, batch_size=batch_size)(vectors)


Scorer = Callable[[torch.Tensor], torch.Tensor]


def check_penalty(weight: float) -> float:
    """The side-effect penalty as a float: finite and >= 0, else a one-line :class:`DiscoveryError`."""
    check_number("side-effect penalty", weight, 0)
    return float(weight)


class SideEffectPenalty:
    """``weight x side_effect``: the term a search subtracts from its objective.

    Args:
        side_effects: the scorer (its texts, layer and cached unsteered pass).
        weight: score units per nat (finite, >= 0).

    Calling it gives ``[k]`` float64 penalties; :meth:`value_and_grad` also their gradients
    ``[k, hidden]`` (what :func:`~reptune.discovery.melbo.train_melbo` and
    :func:`~reptune.discovery.anneal.anneal_gradient` subtract from the MELBO objective's).
    """

    def __init__(self, side_effects: SideEffects, weight: float) -> None:
        self.side_effects, self.weight = side_effects, check_penalty(weight)

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.weight * self.side_effects(vectors)

    def value_and_grad(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, grads = self.side_effects.value_and_grad(vectors)
        return self.weight * values, self.weight * grads

    def cost(self) -> dict[str, int]:
        return self.side_effects.cost()

    def describe(self) -> str:
        """How a report names the penalised objective's extra term, e.g. ``" - 2 x side_effect"``."""
        return f" - {self.weight:g} x side_effect"


def penalized(scorer: Scorer, side_effects: SideEffects, weight: float) -> Scorer:
    """``score(theta) - weight * side_effect(theta)``: a search objective that prefers vectors
    leaving ordinary text alone (``weight`` >= 0, in score units per nat)."""
    weight = check_penalty(weight)

    def objective(vectors: torch.Tensor) -> torch.Tensor:
        base = torch.as_tensor(scorer(vectors), dtype=torch.float64)
        return base - weight * side_effects(vectors) if weight else base

    return objective
