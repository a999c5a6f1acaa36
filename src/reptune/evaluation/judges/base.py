"""The judge protocol and what every judge shares: verdicts, errors, the prompt template, verdict parsing.

The judge prompt lives in ``resources/judge_honesty.txt`` (placeholders ``{prompt}``,
``{response_a}``, ``{response_b}``); its answer must end with a line ``Verdict: A``,
``Verdict: B`` or ``Verdict: tie``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from reptune._io import read_text_file
from reptune.errors import DataError, ReptuneError

WINNERS = ("A", "B", "tie")
PLACEHOLDERS = ("{prompt}", "{response_a}", "{response_b}")
VERDICT_RE = re.compile(r"verdict\s*[:\-]?\s*[*_`\"'(\[]*\s*(A|B|tie)\b", re.IGNORECASE)


class JudgeError(ReptuneError):
    """A judge that is misconfigured or refuses requests (one line)."""


class JudgeUnreachableError(JudgeError):
    """The judge endpoint cannot be reached (the message names the URL)."""


@dataclass(frozen=True)
class Verdict:
    """One judgement: ``winner`` is ``A``, ``B``, ``tie`` or ``invalid``; ``raw`` the judge's text."""

    winner: str
    raw: str = ""
    reason: str = ""  # why it is invalid
    attempts: int = 1
    cached: bool = False

    @property
    def valid(self) -> bool:
        return self.winner in WINNERS

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"winner": self.winner, "raw": self.raw}
        if self.reason:
            out["reason"] = self.reason
        if self.attempts != 1:
            out["attempts"] = self.attempts
        if self.cached:
            out["cached"] = True
        return out


@runtime_checkable
class Judge(Protocol):
    """Anything that says which of two responses to ``prompt`` is more honest."""

    identity: str  # stable description (model, endpoint, settings): part of the cache key
    template: str

    def compare(self, prompt: str, response_a: str, response_b: str) -> Verdict: ...


# ------------------------------------------------------------------------------ template
def default_template_path() -> Path:
    return Path(str(resources.files("reptune.evaluation") / "resources" / "judge_honesty.txt"))


def load_template(path: str | os.PathLike[str] | None = None) -> str:
    """The judge prompt template (the shipped one when ``path`` is empty); checks the placeholders."""
    where = Path(path) if path else default_template_path()
    text = read_text_file(where, "judge prompt", missing="judge prompt file")
    missing = [p for p in PLACEHOLDERS if p not in text]
    if missing:
        raise DataError(f"judge prompt {where} lacks the placeholder(s) {', '.join(missing)}")
    return text


def fill_template(template: str, prompt: str, response_a: str, response_b: str) -> str:
    # plain replacement (not str.format): templates and responses may hold braces
    marker = "\x00RESPONSE_B\x00"
    text = template.replace("{response_b}", marker).replace("{prompt}", prompt).replace("{response_a}", response_a)
    return text.replace(marker, response_b)


def template_hash(template: str) -> str:
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


def parse_verdict(text: str) -> str | None:
    """``A``/``B``/``tie`` from the last ``Verdict: X`` in ``text`` (``None`` if there is none)."""
    matches = VERDICT_RE.findall(text or "")
    if not matches:
        return None
    last = matches[-1]
    return "tie" if last.lower() == "tie" else last.upper()


def compare_all(judge: Judge, triples: Sequence[tuple[str, str, str]]) -> list[Verdict]:
    """Judge many ``(prompt, response_a, response_b)`` at once (batched/concurrent when the judge can)."""
    many = getattr(judge, "compare_many", None)
    if callable(many):
        return list(many(triples))
    return [judge.compare(*triple) for triple in triples]
