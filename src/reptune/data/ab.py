"""Two-choice (A/B) question items, shared by tuning (token losses) and evaluation.

A true/false statement becomes a question whose two options are "True" and "False", their
order alternating item by item so that always answering "A" scores 50%. The chat template
(when the tokenizer has one) wraps the question as a user turn; the answer letter is the
assistant's first token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from reptune.data.pairs import Statement, render_chat
from reptune.errors import DataError
from reptune.tokens import LETTERS, letter_token_ids  # noqa: F401 (re-exported: their home is reptune.tokens)

FACT_TEMPLATE = "Is the following statement true or false?\nStatement: {statement}\nA) {option_a}\nB) {option_b}\nAnswer with A or B."


@dataclass(frozen=True)
class ABItem:
    """An A/B question: the rendered prompt, and which letter is correct (0 = A, 1 = B)."""

    prompt: str
    correct: int
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def wrong(self) -> int:
        return 1 - self.correct


def statements_to_ab(
    statements: Sequence[Statement],
    tokenizer: Any | None = None,
    *,
    template: str = FACT_TEMPLATE,
    alternate: bool = True,
    system: str | None = None,
) -> list[ABItem]:
    """Turn true/false statements into A/B questions.

    Args:
        template: a format string with ``{statement}``, ``{option_a}``, ``{option_b}``.
        alternate: put "True" first for even items and "False" first for odd ones.
        system: a system prompt before the question (``None``: no system message; see ``render_chat``).

    Returns:
        Items whose ``correct`` letter is the truthful answer; ``meta`` keeps the statement,
        its label and topic.
    """
    if not statements:
        raise DataError("no statements to build A/B questions from")
    items = []
    for index, statement in enumerate(statements):
        true_first = not alternate or index % 2 == 0
        options = ("True", "False") if true_first else ("False", "True")
        correct = options.index("True" if statement.label == 1 else "False")
        question = template.format(statement=statement.text, option_a=options[0], option_b=options[1])
        items.append(
            ABItem(
                prompt=render_chat(tokenizer, question, system=system),
                correct=correct,
                meta={"statement": statement.text, "label": statement.label, "topic": statement.topic},
            )
        )
    return items
