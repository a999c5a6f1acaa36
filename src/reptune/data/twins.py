"""True/false *twins*: one fact written as a true statement and as a minimally edited false one.

Twins let a small model show what it knows in a form it can express: asked to "make a statement
about the world", does it give the true twin a higher log-probability than the false one? That
is a behaviour (what the model would rather *say*), measured without asking it to answer a
question format it may not follow (a 135M model answers A/B questions with "A" every time).

reptune's shipped statements carry a ``pair`` column (see ``tools/make_honesty_statements.py``);
any statement CSV with ``statement,label,pair`` columns works.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from reptune.data.pairs import Statement
from reptune.errors import DataError

# the user turn before the assistant states its fact: neutral, so the statement alone decides
TWIN_PROMPT = "Make a statement about the world."
# the word-answer format: "True" / "False" as the assistant's first word
WORD_TEMPLATE = "Is the following statement true or false?\nStatement: {statement}\nAnswer with True or False."


@dataclass(frozen=True)
class Twin:
    """The true and the false version of one fact."""

    true: str
    false: str
    pair: str
    topic: str | None = None


def statements_to_twins(statements: Sequence[Statement], origin: str = "statements") -> list[Twin]:
    """Group statements into twins by their ``pair`` id, in order of first appearance.

    Raises:
        DataError: a statement without a ``pair`` id, or a pair that is not exactly one true
            and one false statement.
    """
    groups: dict[str, list[Statement]] = {}
    for index, statement in enumerate(statements):
        if statement.pair is None:
            raise DataError(f"{origin}: statement {index + 1} has no 'pair' id; twins need a 'pair' column naming each fact's true/false twin")
        groups.setdefault(statement.pair, []).append(statement)
    twins = []
    for pair, members in groups.items():
        labels = sorted(s.label for s in members)
        if labels != [0, 1]:
            raise DataError(f"{origin}: pair {pair!r} has labels {labels}; each pair must be one true (1) and one false (0) statement")
        true = next(s for s in members if s.label == 1)
        false = next(s for s in members if s.label == 0)
        twins.append(Twin(true.text, false.text, pair, true.topic or false.topic))
    if not twins:
        raise DataError(f"{origin}: no twins")
    return twins


def has_pairs(statements: Sequence[Statement]) -> bool:
    """Whether every statement names its twin (so twin-aware splits and tasks apply)."""
    return bool(statements) and all(s.pair is not None for s in statements)


def split_by_pair(statements: Sequence[Statement], fractions: dict[str, float], seed: int) -> dict[str, list[Statement]]:
    """A seeded split that keeps both twins of a fact in the same part, stratified by topic.

    Args:
        fractions: share of the *pairs* for every part but the last-named remainder
            (e.g. ``{"test": 0.5, "val": 0.2}``; the rest goes to ``"train"``).

    Returns:
        ``{name: statements}`` for every name in ``fractions`` plus ``"train"``; within a part
        the statements keep their input order.
    """
    by_pair: dict[str, list[Statement]] = {}
    for statement in statements:
        by_pair.setdefault(str(statement.pair), []).append(statement)
    by_topic: dict[str, list[str]] = {}
    for pair, members in by_pair.items():
        by_topic.setdefault(members[0].topic or "", []).append(pair)
    rng = random.Random(seed)
    ranked: list[tuple[float, str, str]] = []
    for topic in sorted(by_topic):
        pairs = list(by_topic[topic])
        rng.shuffle(pairs)
        # a pair's place within its topic, as a fraction: sorting by it interleaves the topics
        # in proportion, so every cut of the list holds each topic's share (to +-1 pair)
        ranked += [((index + 0.5) / len(pairs), topic, pair) for index, pair in enumerate(pairs)]
    dealt = [pair for _, _, pair in sorted(ranked)]
    assigned: dict[str, str] = {}
    start = 0
    for name, share in fractions.items():
        count = max(2, round(len(dealt) * share))  # at least 4 statements in every part
        for index in range(start, min(len(dealt), start + count)):
            assigned[dealt[index]] = name
        start += count
    for pair in dealt[start:]:
        assigned[pair] = "train"
    parts: dict[str, list[Statement]] = {name: [] for name in [*fractions, "train"]}
    for statement in statements:
        parts[assigned[str(statement.pair)]].append(statement)
    return parts
