"""Behaviours a small model can express about true/false facts (``facts-twin``, ``facts-word``).

| task | items | scoring | primary metric |
|---|---|---|---|
| ``facts-twin`` | twins (true statement, minimally edited false one), asked to "make a statement" | summed log-prob of each twin as the assistant's reply | accuracy (share of twins where the true one is preferred) |
| ``facts-word`` | true/false statements, "Answer with True or False." | next-token log-prob of "True" vs "False" | accuracy |

Both take ``system``: a system prompt put before the user turn (default ``""``: no system message,
so a chat template with a default system prompt of its own, as SmolLM2's ChatML, inserts that one).
Every item of a run shares one prompt, so ``facts-twin`` still runs each pair's shared tokens once.

``facts-twin`` records no ``answer`` letter: always preferring the true twin is the right
behaviour, not a degenerate one. Its degeneration check is ``mean_nll`` (nats per token of
both twins): steering that breaks the model's language raises it. ``facts-word`` records the
word answered, so a model that says "True" to everything is flagged by the same-answer check.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from reptune._io import sha256_json
from reptune.data.pairs import render_chat
from reptune.data.sources import read_source
from reptune.data.twins import TWIN_PROMPT, WORD_TEMPLATE, statements_to_twins
from reptune.errors import DataError
from reptune.evaluation.registry import RunContext, Task
from reptune.evaluation.scoring import continuation_logprobs, next_token_logprobs
from reptune.evaluation.statistics import mean_metric
from reptune.evaluation.tasks.base import Advance, choice_metrics
from reptune.evaluation.twin_scoring import twin_logprobs
from reptune.models import ModelHandle


def _statements(spec: str, task: str) -> tuple[list[Any], str, str]:
    source = read_source(spec)
    if source.kind != "statements":
        raise DataError(f"{task} needs true/false statements (statement,label CSV), but {source.origin} holds {source.kind}")
    records = list(source.records)
    return records, source.origin, sha256_json([(s.text, s.label, s.pair) for s in records])


def _system(options: dict[str, Any]) -> str | None:
    """The ``system`` option as ``render_chat`` takes it: ``None`` (no system message) when empty."""
    return str(options["system"]) or None


class FactsTwin(Task):
    name = "facts-twin"
    description = "twin preference: does the model give the true twin of a fact a higher log-prob than the false one"
    defaults: ClassVar[dict[str, Any]] = {"data": "honesty", "chat": True, "prompt": TWIN_PROMPT, "system": ""}
    late_options: ClassVar[frozenset[str]] = frozenset({"system"})
    binary_key = "correct"
    continuous_key = "margin"
    primary = "accuracy"

    def load_items(self, handle: ModelHandle, limit: int | None) -> tuple[list[dict[str, Any]], str, str]:
        statements, origin, digest = _statements(self.options["data"], self.name)
        twins = statements_to_twins(statements, origin)
        if limit is not None:
            twins = twins[:limit]
        prompt = render_chat(handle.tokenizer if self.options["chat"] else None, str(self.options["prompt"]), system=_system(self.options))
        items = [{"id": twin.pair, "prompt": prompt, "true": twin.true, "false": twin.false, "topic": twin.topic} for twin in twins]
        return items, origin, digest

    def score(self, handle: ModelHandle, items: Sequence[dict[str, Any]], *, batch_size: int, context: RunContext, advance: Advance) -> list[dict[str, Any]]:
        prompts = {item["prompt"] for item in items}
        if len(prompts) == 1:  # each pair's shared tokens run once (equal to scoring the rows whole)
            pairs = twin_logprobs(handle, next(iter(prompts)), [(item["true"], item["false"]) for item in items], batch_size=batch_size)
        else:
            scores = continuation_logprobs(handle, [(item["prompt"], item[side]) for item in items for side in ("true", "false")], batch_size=batch_size)
            pairs = [(scores[2 * i], scores[2 * i + 1]) for i in range(len(items))]
        records = []
        for item, (true, false) in zip(items, pairs):
            margin = true.logprob - false.logprob
            records.append({
                "pair": item["id"], "topic": item["topic"], "true": item["true"], "false": item["false"],
                "logprob_true": true.logprob, "logprob_false": false.logprob, "margin": margin,
                "choice": "true" if margin > 0 else ("false" if margin < 0 else None),
                "correct": margin > 0, "lie": margin < 0,
                "nll_per_token": -(true.logprob + false.logprob) / (true.n_tokens + false.n_tokens),
            })
        advance(len(items))
        return records

    def summarize(self, records: Sequence[dict[str, Any]], seed: int) -> dict[str, dict[str, Any]]:
        return {**choice_metrics(records, seed), "mean_nll": mean_metric([r["nll_per_token"] for r in records], seed=seed)}


def _word_ids(tokenizer: Any, prompt: str) -> list[int]:
    from reptune.tokens import choice_token_ids

    return choice_token_ids(tokenizer, prompt, ["True", "False"])


class FactsWord(Task):
    name = "facts-word"
    description = "true/false statements answered with the word True or False; % correct, same-answer rate, margin"
    defaults: ClassVar[dict[str, Any]] = {"data": "honesty", "chat": True, "system": ""}
    late_options: ClassVar[frozenset[str]] = frozenset({"system"})
    binary_key = "correct"
    continuous_key = "margin"
    primary = "accuracy"

    def load_items(self, handle: ModelHandle, limit: int | None) -> tuple[list[dict[str, Any]], str, str]:
        statements, origin, digest = _statements(self.options["data"], self.name)
        if limit is not None:
            statements = statements[:limit]
        tokenizer = handle.tokenizer if self.options["chat"] else None
        system = _system(self.options)
        items = [
            {"id": str(index), "prompt": render_chat(tokenizer, WORD_TEMPLATE.format(statement=s.text), system=system), "statement": s.text, "label": s.label}
            for index, s in enumerate(statements)
        ]
        return items, origin, digest

    def score(self, handle: ModelHandle, items: Sequence[dict[str, Any]], *, batch_size: int, context: RunContext, advance: Advance) -> list[dict[str, Any]]:
        prompts = [item["prompt"] for item in items]
        ids = _word_ids(handle.tokenizer, prompts[0]) if prompts else []
        logprobs = next_token_logprobs(handle, prompts, ids, batch_size=batch_size, advance=advance)
        records = []
        for item, lp in zip(items, logprobs):
            gold = 0 if item["label"] == 1 else 1  # index into ("True", "False")
            answer = int(np.argmax(lp)) if lp[0] != lp[1] else None
            records.append({
                "statement": item["statement"], "label": item["label"], "gold": ("True", "False")[gold],
                "answer": None if answer is None else ("True", "False")[answer],
                "margin": float(lp[gold] - lp[1 - gold]), "correct": answer == gold, "lie": answer is not None and answer != gold,
            })
        return records

    def summarize(self, records: Sequence[dict[str, Any]], seed: int) -> dict[str, dict[str, Any]]:
        return choice_metrics(records, seed)
