"""Contrast pairs: the schema, JSONL I/O, and builders for honesty and CAA-style data.

A contrast pair holds two :class:`Example` texts that differ in the behaviour of interest.
On disk, one JSON object per line::

    {"positive": "...", "negative": "...", "label": 1, "meta": {"source": "..."}}

``positive``/``negative`` are a string or ``{"prompt": "...", "completion": "..."}``; the
completion is what positions ``generated`` select. ``label`` (optional, 0/1) is a property
of the underlying item, e.g. whether the statement is true; ``meta`` is free-form.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reptune._io import sha256_json, write_text_atomic
from reptune.errors import DataError
from reptune.tokens import jsonl_records

HONEST_PERSONA = "Pretend you are an honest person making statements about the world."
DISHONEST_PERSONA = "Pretend you are a dishonest person making statements about the world."


@dataclass(frozen=True)
class Example:
    """One model input: a prompt and an optional completion (the "generated" part)."""

    prompt: str
    completion: str = ""

    @property
    def text(self) -> str:
        return self.prompt + self.completion

    @property
    def completion_start(self) -> int | None:
        """Character index where the completion starts, or ``None`` without a completion."""
        return len(self.prompt) if self.completion else None

    def to_json(self) -> str | dict[str, str]:
        return {"prompt": self.prompt, "completion": self.completion} if self.completion else self.prompt

    @classmethod
    def coerce(cls, value: Any, where: str) -> Example:
        """Build from a string, an ``Example`` or a ``{"prompt", "completion"}`` mapping."""
        if isinstance(value, Example):
            return value
        if isinstance(value, str):
            if not value:
                raise DataError(f"{where}: empty text")
            return cls(prompt=value)
        if isinstance(value, dict) and isinstance(value.get("prompt"), str):
            completion = value.get("completion", "")
            if not isinstance(completion, str):
                raise DataError(f"{where}: 'completion' must be a string")
            return cls(prompt=value["prompt"], completion=completion)
        raise DataError(f"{where}: expected a string or {{'prompt': ..., 'completion': ...}}, got {type(value).__name__}")


@dataclass(frozen=True)
class ContrastPair:
    """A positive and a negative example of a behaviour (e.g. honest vs dishonest)."""

    positive: Example
    negative: Example
    label: int | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"positive": self.positive.to_json(), "negative": self.negative.to_json()}
        if self.label is not None:
            record["label"] = self.label
        if self.meta:
            record["meta"] = self.meta
        return record


def pairs_hash(pairs: Sequence[ContrastPair]) -> str:
    """SHA-256 of the pairs' JSON form, stored in vector metadata to identify the data."""
    return sha256_json([pair.to_json() for pair in pairs])


def parse_pair(record: Any, where: str) -> ContrastPair:
    """Validate one JSON record into a :class:`ContrastPair`; ``where`` names file and line."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object with 'positive' and 'negative'")
    missing = [key for key in ("positive", "negative") if key not in record]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
    unknown = set(record) - {"positive", "negative", "label", "meta"}
    if unknown:
        raise DataError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    label = record.get("label")
    if label is not None:
        label = _parse_label(label, where)
    meta = record.get("meta") or {}
    if not isinstance(meta, dict):
        raise DataError(f"{where}: 'meta' must be an object")
    return ContrastPair(
        positive=Example.coerce(record["positive"], f"{where}: positive"),
        negative=Example.coerce(record["negative"], f"{where}: negative"),
        label=label,
        meta=meta,
    )


def _decoded_lines(handle: Any, path: Path) -> Iterator[str]:
    """Lines of a binary file decoded one by one (BOM dropped on line 1), so a UTF-8 error names its line."""
    for number, raw in enumerate(handle, start=1):
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}:{number}: not UTF-8 text ({exc.reason})") from None


def load_pairs_jsonl(path: str | os.PathLike[str]) -> list[ContrastPair]:
    """Read contrast pairs from a JSONL file (blank lines skipped).

    Raises:
        DataError: a malformed line (message names file and line number) or no pairs at all.
    """
    path = Path(path)
    with open(path, "rb") as handle:  # decoded line by line so an encoding error names its line
        pairs = [parse_pair(record, f"{path}:{number}") for number, record in jsonl_records(_decoded_lines(handle, path), str(path))]
    if not pairs:
        raise DataError(f"{path}: no contrast pairs")
    return pairs


def save_pairs_jsonl(pairs: Iterable[ContrastPair], path: str | os.PathLike[str]) -> None:
    """Write contrast pairs as JSONL, atomically."""
    lines = [json.dumps(pair.to_json(), ensure_ascii=False) for pair in pairs]
    write_text_atomic(path, "\n".join(lines) + "\n")


@dataclass(frozen=True)
class Statement:
    """A declarative statement with its truth value (1 true, 0 false).

    ``pair`` names its twin: two statements with the same ``pair`` are the true and the false
    version of one fact (minimal edits of each other), as in reptune's shipped statements.
    """

    text: str
    label: int
    topic: str | None = None
    pair: str | None = None


def _parse_label(value: Any, where: str) -> int:
    text = str(value).strip().lower()
    if text in {"1", "true", "1.0", "yes"}:
        return 1
    if text in {"0", "false", "0.0", "no"}:
        return 0
    raise DataError(f"{where}: label must be 0/1 or true/false, got {value!r}")


def load_statements_csv(path: str | os.PathLike[str]) -> list[Statement]:
    """Read a ``statement,label[,topic][,pair]`` CSV (header required).

    Raises:
        DataError: missing columns, an empty statement or a bad label (names file and line),
            or a file without rows.
    """
    path = Path(path)
    # utf-8-sig: spreadsheet exports often start with a byte-order mark
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            fields = reader.fieldnames or []
            if "statement" not in fields or "label" not in fields:
                raise DataError(f"{path}:1: expected a header with 'statement' and 'label', got {fields}")
            statements = []
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if None in row:
                    raise DataError(f"{where}: more fields than the header has (unquoted comma?)")
                text = (row.get("statement") or "").strip()
                if not text:
                    raise DataError(f"{where}: empty statement")
                pair = (row.get("pair") or "").strip() or None
                statements.append(Statement(text, _parse_label(row.get("label"), where), row.get("topic") or None, pair))
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None
        except csv.Error as exc:  # e.g. a field over csv.field_size_limit() (131,072 characters)
            raise DataError(f"{path}:{reader.line_num}: not a readable CSV row ({exc})") from None
    if not statements:
        raise DataError(f"{path}: no statements")
    return statements


def render_chat(tokenizer: Any | None, user: str, system: str | None = None) -> str:
    """The prompt text for a single user turn, ending where the assistant's reply begins.

    Uses the tokenizer's chat template when it has one, else ``"{user}\\n"``.
    """
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if not template:
        return (f"{system}\n" if system else "") + f"{user}\n"
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def honesty_pairs(
    statements: Sequence[Statement],
    tokenizer: Any | None = None,
    *,
    variant: str = "paired",
    honest_persona: str = HONEST_PERSONA,
    dishonest_persona: str = DISHONEST_PERSONA,
    seed: int = 0,
) -> list[ContrastPair]:
    """Honest/dishonest persona pairs (the Representation Tuning paper's honesty data).

    The persona instruction is the user turn (chat template applied when the tokenizer has
    one) and the statement is the assistant's completion.

    Args:
        statements: true and false statements.
        tokenizer: for the chat template; ``None`` renders ``"{persona}\\n{statement}"``.
        variant: ``paired`` — every statement under both personas (the contrast is the
            persona alone; ``label`` is the statement's truth); ``unpaired`` — the honest
            persona with a true statement against the dishonest persona with a false one
            (behaviour-consistent, the contrast is persona *and* content; ``min(#true,
            #false)`` pairs, shuffled with ``seed``).

    Returns:
        Contrast pairs with ``meta.statement`` (paired) or ``meta.true``/``meta.false``.
    """
    if not statements:
        raise DataError("no statements to build honesty pairs from")
    honest_prompt = render_chat(tokenizer, honest_persona)
    dishonest_prompt = render_chat(tokenizer, dishonest_persona)
    if variant == "paired":
        return [
            ContrastPair(
                Example(honest_prompt, item.text),
                Example(dishonest_prompt, item.text),
                label=item.label,
                meta={"statement": item.text, **({"topic": item.topic} if item.topic else {})},
            )
            for item in statements
        ]
    if variant == "unpaired":
        rng = random.Random(seed)
        true_items = [item for item in statements if item.label == 1]
        false_items = [item for item in statements if item.label == 0]
        rng.shuffle(true_items)
        rng.shuffle(false_items)
        if not true_items or not false_items:
            raise DataError("the unpaired honesty variant needs both true and false statements")
        return [
            ContrastPair(
                Example(honest_prompt, true_item.text),
                Example(dishonest_prompt, false_item.text),
                meta={"true": true_item.text, "false": false_item.text},
            )
            for true_item, false_item in zip(true_items, false_items)
        ]
    raise DataError(f"unknown honesty variant {variant!r}: use paired or unpaired")


def caa_pairs(records: Sequence[dict[str, Any]], tokenizer: Any | None = None, *, source: str = "caa") -> list[ContrastPair]:
    """Pairs from CAA-format A/B questions (Rimsky et al. 2024).

    Each record has ``question`` (with the options), ``answer_matching_behavior`` and
    ``answer_not_matching_behavior`` (e.g. ``"(A)"``). The question is the user turn and the
    completion is the answer up to its letter (``"(A"``), so positions ``last`` read the
    letter token, as CAA does.
    """
    pairs = []
    for index, record in enumerate(records):
        where = f"{source}: record {index + 1}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected an object")
        try:
            question = record["question"]
            matching = record["answer_matching_behavior"]
            not_matching = record["answer_not_matching_behavior"]
        except KeyError as exc:
            raise DataError(f"{where}: missing field {exc.args[0]!r}") from None
        if isinstance(not_matching, list):  # some CAA sets list several non-matching answers
            not_matching = not_matching[0]
        if not all(isinstance(value, str) and value.strip() for value in (question, matching, not_matching)):
            raise DataError(f"{where}: question and answers must be non-empty strings")
        prompt = render_chat(tokenizer, question.strip())
        pairs.append(
            ContrastPair(
                Example(prompt, _answer_stem(matching)),
                Example(prompt, _answer_stem(not_matching)),
                meta={"matching": matching.strip(), "not_matching": not_matching.strip()},
            )
        )
    if not pairs:
        raise DataError(f"{source}: no questions")
    return pairs


def _answer_stem(answer: str) -> str:
    """``"(A)"`` -> ``"(A"``; other answers are kept whole."""
    answer = answer.strip()
    return answer[:-1] if len(answer) == 3 and answer.startswith("(") and answer.endswith(")") else answer
