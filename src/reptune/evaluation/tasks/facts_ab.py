"""``facts-ab``: true/false statements as A/B questions.

| task | items | scoring | primary metric |
|---|---|---|---|
| ``facts-ab`` | true/false statements as A/B questions (``data/ab.py`` template) | log-prob of A vs B (or parse a greedy generation) | accuracy |

The scoring and metrics are :class:`~reptune.evaluation.tasks.base.ABTask`'s (shared with ``tqa-ab``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from reptune._io import sha256_json
from reptune.data.ab import FACT_TEMPLATE, statements_to_ab
from reptune.data.sources import read_source
from reptune.errors import DataError
from reptune.evaluation.tasks.base import ABTask
from reptune.models import ModelHandle


class FactsAB(ABTask):
    name = "facts-ab"
    description = "true/false statements as A/B questions; % correct, % lies, % unparsed, logit margin"
    defaults: ClassVar[dict[str, Any]] = {"data": "honesty", "scoring": "logprob", "max_new_tokens": 8, "chat": True, "system": ""}
    late_options: ClassVar[frozenset[str]] = frozenset({"system"})

    def ab_items(self, handle: ModelHandle, limit: int | None) -> tuple[list[dict[str, Any]], str, str]:
        source = read_source(self.options["data"])
        if source.kind != "statements":
            raise DataError(f"facts-ab needs true/false statements (statement,label CSV), but {source.origin} holds {source.kind}")
        statements = source.records if limit is None else source.records[:limit]
        # system "" = no system message (a template's own default system prompt, if it has one, applies)
        ab = statements_to_ab(statements, handle.tokenizer if self.options["chat"] else None, template=FACT_TEMPLATE,
                              system=str(self.options["system"]) or None)
        items = []
        for index, (statement, item) in enumerate(zip(statements, ab)):
            true_first = index % 2 == 0
            items.append({
                "id": str(index), "prompt": item.prompt, "correct": item.correct, "statement": statement.text,
                "label": statement.label, "options": ["True", "False"] if true_first else ["False", "True"],
            })
        return items, source.origin, sha256_json([(s.text, s.label) for s in source.records])
