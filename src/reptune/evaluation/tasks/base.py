"""What several built-in tasks share: the A/B base class, answer parsing, choice metrics, vector helpers.

A task module imports from here (and from the registry, scoring and statistics), never another
task module's names: each task family stays one file that can be read and loaded on its own.

* :class:`ABTask` — A/B questions scored by the next-token log-prob of A vs B, or by parsing a
  greedy generation (``facts-ab``, ``tqa-ab``); :func:`parse_ab_answer` reads such a generation.
* :func:`choice_metrics` — accuracy, lie rate and mean margin of two-way choices (the A/B tasks,
  ``facts-twin``, ``facts-word``).
* :class:`SuffixCache` — per-prompt candidate token ids, computed once per prompt ending.
* :func:`vector_directions` / :func:`direction_at` — a vector's directions and the one to use at a
  layer (``robustness``, ``projection``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from reptune.errors import ReptuneError, VectorError
from reptune.evaluation.registry import RunContext, Task
from reptune.evaluation.scoring import next_token_logprobs
from reptune.evaluation.statistics import mean_metric, proportion_metric
from reptune.models import ModelHandle
from reptune.tokens import letter_token_ids

Advance = Callable[[int], None]


class SuffixCache:
    """Per-prompt candidate ids, cached by the prompt's last characters (where merges happen)."""

    def __init__(self, fn: Callable[[str], Sequence[int]]) -> None:
        self.fn = fn
        self.cache: dict[str, list[int]] = {}

    def __call__(self, prompt: str) -> list[int]:
        key = prompt[-24:]
        if key not in self.cache:
            self.cache[key] = list(self.fn(prompt))
        return self.cache[key]


def choice_metrics(records: Sequence[dict[str, Any]], seed: int, *, unparsed: bool = False) -> dict[str, dict[str, Any]]:
    """Accuracy and lie rate (Wilson CIs) and the mean margin (bootstrap CI) of two-way choices.

    Records carry ``correct`` and ``lie`` (bools) and ``margin`` (nats, right minus wrong);
    ``unparsed=True`` adds ``unparsed_rate`` from their ``unparsed`` field (before the margin).
    """
    n = len(records)
    metrics = {
        "accuracy": proportion_metric(sum(r["correct"] for r in records), n),
        "lie_rate": proportion_metric(sum(r["lie"] for r in records), n),
    }
    if unparsed:
        metrics["unparsed_rate"] = proportion_metric(sum(r["unparsed"] for r in records), n)
    metrics["mean_margin"] = mean_metric([r["margin"] for r in records], seed=seed)
    return metrics


# --------------------------------------------------------------------------------------- A/B
LETTER_RE = re.compile(r"^[\s\"'*]*(?:answer\s*(?:is)?\s*:?\s*)?\(?([AB])(?![A-Za-z])", re.IGNORECASE)


def parse_ab_answer(text: str, options: Sequence[str] | None = None) -> int | None:
    """The letter a generation answers with (0 = A, 1 = B), or ``None`` if it cannot be parsed.

    Accepts ``A``, ``(A)``, ``A)``, ``Answer: A`` at the start, or the option text itself
    (``True``/``False`` for facts) when ``options`` are given.
    """
    stripped = text.strip()
    match = LETTER_RE.match(stripped)
    if match and (match.group(1).isupper() or stripped.lower().startswith("answer")):
        return "AB".index(match.group(1).upper())
    if options:
        lowered = stripped.lower().lstrip("\"'*(")
        hits = [index for index, option in enumerate(options) if lowered.startswith(option.lower())]
        if len(hits) == 1:
            return hits[0]
    return None


class ABTask(Task):
    """A/B questions scored by the next-token log-prob of A vs B (and optionally a greedy parse).

    Subclasses implement :meth:`ab_items`: items with ``prompt``, ``correct`` (0 = A, 1 = B) and
    optionally ``options`` (the option texts, for parsing generations), ``statement``, ``label``,
    ``question`` (copied into the records).
    """

    binary_key = "correct"
    continuous_key = "margin"
    primary = "accuracy"

    def ab_items(self, handle: ModelHandle, limit: int | None) -> tuple[list[dict[str, Any]], str, str]:
        raise NotImplementedError

    def load_items(self, handle: ModelHandle, limit: int | None) -> tuple[list[dict[str, Any]], str, str]:
        if self.options.get("scoring", "logprob") not in {"logprob", "generate"}:
            raise ReptuneError(f"{self.full_name}: scoring must be logprob or generate, got {self.options['scoring']!r}")
        return self.ab_items(handle, limit)

    def score(self, handle: ModelHandle, items: Sequence[dict[str, Any]], *, batch_size: int, context: RunContext, advance: Advance) -> list[dict[str, Any]]:
        tokenizer = handle.tokenizer
        letters = SuffixCache(lambda prompt: letter_token_ids(tokenizer, prompt))
        prompts = [item["prompt"] for item in items]
        generate_mode = self.options.get("scoring") == "generate"
        logprobs = next_token_logprobs(
            handle, prompts, [letters(p) for p in prompts], batch_size=batch_size, advance=(lambda _n: None) if generate_mode else advance
        )
        completions: list[str] = []
        if generate_mode:
            from reptune.steering import generate

            if context.steering is not None:
                context.steering.reset()
            completions = list(generate(handle, prompts, chat=False, max_new_tokens=int(self.options["max_new_tokens"]), batch_size=batch_size))
            advance(len(items))
        return [self._record(item, logprobs[index], completions[index] if generate_mode else None) for index, item in enumerate(items)]

    @staticmethod
    def _record(item: dict[str, Any], lp: np.ndarray, completion: str | None) -> dict[str, Any]:
        """One item's record from its A/B log-probs ``[2]`` (and its generation in generate mode)."""
        correct = int(item["correct"])
        record: dict[str, Any] = {
            "gold": "AB"[correct],
            "logprob_a": float(lp[0]),
            "logprob_b": float(lp[1]),
            "margin": float(lp[correct] - lp[1 - correct]),
        }
        if completion is not None:
            answer = parse_ab_answer(completion, item.get("options"))
            record["completion"] = completion
        else:
            answer = int(np.argmax(lp)) if lp[0] != lp[1] else None
        record["answer"] = None if answer is None else "AB"[answer]
        record["correct"] = answer == correct
        record["lie"] = answer is not None and answer != correct
        record["unparsed"] = answer is None
        for key in ("statement", "label", "question"):
            if key in item:
                record[key] = item[key]
        return record

    def summarize(self, records: Sequence[dict[str, Any]], seed: int) -> dict[str, dict[str, Any]]:
        return choice_metrics(records, seed, unparsed=True)


# ------------------------------------------------------------------------------------ vectors
def vector_directions(vector: Any, handle: ModelHandle | None = None, *, allow_model_mismatch: bool = True) -> dict[int, torch.Tensor]:
    """``{layer: direction}`` (fp32, non-negative layers) of a SteeringVector or a ``{layer: tensor}`` dict.

    With ``handle``, checks that the vector fits the model (hidden size and layer count; the
    model id only when ``allow_model_mismatch`` is false, since vectors are routinely applied to
    tuned copies of the model they were made for).
    """
    from reptune.vectors import SteeringVector, as_vector

    if not isinstance(vector, SteeringVector) and not (isinstance(vector, dict) and vector):
        raise VectorError("expected a SteeringVector or a non-empty {layer: tensor} dict")
    if handle is not None:  # the one normalisation steering uses too
        return dict(as_vector(vector, handle, allow_model_mismatch=allow_model_mismatch).directions)
    directions = dict(vector.directions) if isinstance(vector, SteeringVector) else {int(layer): tensor for layer, tensor in vector.items()}
    out = {}
    for layer, tensor in directions.items():
        tensor = torch.as_tensor(tensor).detach().float().reshape(-1).cpu()
        if not torch.isfinite(tensor).all():
            raise VectorError(f"vector layer {layer} holds NaN/inf")
        out[int(layer)] = tensor
    return out


def direction_at(directions: dict[int, torch.Tensor], layer: int) -> tuple[int, torch.Tensor]:
    """The vector's direction to use at ``layer``: its own, else its nearest layer's (ties: lower).

    Returns ``(source_layer, direction)``.
    """
    if layer in directions:
        return layer, directions[layer]
    source = min(directions, key=lambda have: (abs(have - layer), have))
    return source, directions[source]
