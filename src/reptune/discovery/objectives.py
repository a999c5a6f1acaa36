"""Search objectives: any score of a steering vector, for annealing and CMA-ES.

An :class:`Objective` maps vectors ``[k, hidden]`` to scores ``[k]`` (float64, higher = better)
and counts its cost: ``evaluations`` (one per vector) and ``forward_passes`` (model forward passes
over the whole prompt set: one per vector for the slice objective and the logit readout, one per
generated token for generation-based scores, counted as ``max_new_tokens`` per vector).

* :func:`slice_objective`: the MELBO objective on cached layer slices (batched);
* :func:`readout_objective`: mean next-token ``logit(A) - logit(B)`` (token ids or texts);
* :func:`match_objective`: the fraction of greedy completions containing a string;
* :func:`judge_objective`: a judge's mean score of greedy completions, with judge calls cached per
  (prompt, completion) and batched over every vector of a call (:class:`CachedScorer`);
* :func:`function_objective`: a user callable.

A NaN score (a judge that failed, say) is *invalid*: searches never rank or keep it and report
how many they met (``invalid``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from reptune.discovery.common import DiscoveryError
from reptune.discovery.melbo import total_objective
from reptune.discovery.scoring import CompletionScorer, _match_rate, next_token_logits, token_id
from reptune.discovery.slice import LayerSlice
from reptune.models import ModelHandle
from reptune.steering import Steering, format_prompts, generate


@dataclass
class Objective:
    """A scored search objective with its cost counters (see the module docstring)."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    passes_per_vector: int = 1
    evaluations: int = 0
    forward_passes: int = 0
    judge_calls: int = 0
    extra: dict = field(default_factory=dict)

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        vectors = torch.as_tensor(vectors, dtype=torch.float32).detach().cpu()
        if vectors.ndim == 1:
            vectors = vectors.unsqueeze(0)
        scores = torch.as_tensor(self.fn(vectors), dtype=torch.float64).reshape(-1).cpu()
        if scores.shape[0] != vectors.shape[0]:
            raise DiscoveryError(f"objective {self.name!r} returned {scores.shape[0]} scores for {vectors.shape[0]} vectors")
        self.evaluations += int(vectors.shape[0])
        self.forward_passes += int(vectors.shape[0]) * self.passes_per_vector
        return scores

    def cost(self) -> dict[str, int]:
        return {"evaluations": self.evaluations, "forward_passes": self.forward_passes, "judge_calls": self.judge_calls}


def slice_objective(slices: Sequence[LayerSlice], *, p: float = 2.0, q: float = 1.0, batch: int = 16) -> Objective:
    """The MELBO objective of each vector on the cached slices (one replay per ``batch`` vectors)."""
    if not slices:
        raise DiscoveryError("no prompts: discovery needs at least one prompt")
    device = slices[0].device

    def fn(vectors: torch.Tensor) -> torch.Tensor:
        parts = [total_objective(slices, vectors[i : i + batch].to(device), p, q) for i in range(0, vectors.shape[0], batch)]
        return torch.cat(parts).double()

    return Objective("melbo", fn)


def _token(tokenizer, value: int | str) -> int:
    return int(value) if isinstance(value, int) else token_id(tokenizer, value)


def readout_objective(handle: ModelHandle, layer: int, prompts: Sequence[str], tokens: tuple[int | str, int | str] | int | str, *, chat: bool = True) -> Objective:
    """Mean next-token ``logit(A) - logit(B)`` after each prompt, steered at ``layer``; a single token
    ``A`` gives its mean log-probability instead."""
    texts = format_prompts(handle, list(prompts), chat=chat)
    pair = tokens if isinstance(tokens, tuple) else (tokens,)
    ids = [_token(handle.tokenizer, value) for value in pair]

    def fn(vectors: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(vectors.shape[0], dtype=torch.float64)
        for row, vector in enumerate(vectors):
            with Steering(handle, {layer: vector}):
                logits = next_token_logits(handle, texts).double()
            out[row] = float((logits[:, ids[0]] - logits[:, ids[1]]).mean()) if len(ids) == 2 else float(logits.log_softmax(-1)[:, ids[0]].mean())
        return out

    return Objective("logit", fn)


def _completions(handle: ModelHandle, layer: int, prompts: Sequence[str], vector: torch.Tensor, max_new_tokens: int, chat: bool) -> list[str]:
    with Steering(handle, {layer: vector}, scope="all") as steering:
        ids = generate(handle, list(prompts), max_new_tokens=max_new_tokens, chat=chat, steering=steering, return_token_ids=True)
    return [handle.tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]


def match_objective(handle: ModelHandle, layer: int, prompts: Sequence[str], needles: Sequence[str], *, max_new_tokens: int = 16, chat: bool = True) -> Objective:
    """Fraction of greedy completions containing any of ``needles`` (case-insensitive)."""
    if not needles or not all(needles):
        raise DiscoveryError("match objective needs non-empty strings")

    def fn(vectors: torch.Tensor) -> torch.Tensor:
        return torch.tensor([_match_rate(_completions(handle, layer, prompts, v, max_new_tokens, chat), needles) for v in vectors], dtype=torch.float64)

    return Objective("match", fn, passes_per_vector=max_new_tokens)


class CachedScorer:
    """A judge whose scores are cached per ``(prompt, completion)``; each call sends every pair not
    seen before in one batch. ``calls`` counts batches sent, ``pairs`` the pairs judged."""

    def __init__(self, judge: CompletionScorer) -> None:
        self.judge = judge
        self.cache: dict[tuple[str, str], float] = {}
        self.calls = 0
        self.pairs = 0

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        keys = list(zip(prompts, completions))
        todo = list(dict.fromkeys(key for key in keys if key not in self.cache))
        if todo:
            scores = [float(score) for score in self.judge([k[0] for k in todo], [k[1] for k in todo])]
            if len(scores) != len(todo):
                raise DiscoveryError(f"the judge returned {len(scores)} scores for {len(todo)} completions")
            self.cache.update(zip(todo, scores))
            self.calls += 1
            self.pairs += len(todo)
        return [self.cache[key] for key in keys]


def judge_objective(handle: ModelHandle, layer: int, prompts: Sequence[str], judge: CompletionScorer, *, max_new_tokens: int = 16, chat: bool = True) -> Objective:
    """A judge's mean score of each vector's greedy completions (NaN if the judge gave any NaN)."""
    cached = judge if isinstance(judge, CachedScorer) else CachedScorer(judge)
    objective = Objective("judge", lambda v: v, passes_per_vector=max_new_tokens, extra={"judge": cached})

    def fn(vectors: torch.Tensor) -> torch.Tensor:
        outputs = [_completions(handle, layer, prompts, v, max_new_tokens, chat) for v in vectors]
        flat_prompts = [prompt for _ in outputs for prompt in prompts]
        before = cached.calls
        scores = cached(flat_prompts, [text for row in outputs for text in row])
        objective.judge_calls += cached.calls - before
        n = len(prompts)
        return torch.tensor([sum(scores[i * n : (i + 1) * n]) / n for i in range(len(outputs))], dtype=torch.float64)

    objective.fn = fn
    return objective


def function_objective(fn: Callable[[torch.Tensor], Sequence[float] | torch.Tensor], name: str = "function", passes_per_vector: int = 1) -> Objective:
    """A user callable ``fn(vectors [k, hidden]) -> [k] scores`` as an :class:`Objective`."""
    if not callable(fn):
        raise DiscoveryError("the objective must be callable: fn(vectors [k, hidden]) -> k scores")
    return Objective(name, lambda v: torch.as_tensor(fn(v), dtype=torch.float64), passes_per_vector=passes_per_vector)


def as_objective(value: Objective | Callable[[torch.Tensor], Sequence[float] | torch.Tensor]) -> Objective:
    return value if isinstance(value, Objective) else function_objective(value)
