"""Judging in both orders: ``x`` wins only when both orders agree; a scorer for discovery's ``judge=``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reptune.errors import ReptuneError
from reptune.evaluation.judges.base import Judge, Verdict, compare_all


@dataclass(frozen=True)
class PairJudgement:
    """``x`` vs ``y`` judged in both orders. ``outcome``: ``x``, ``y``, ``tie`` or ``invalid``.

    ``x`` (or ``y``) wins only when both orders name it; ``agree`` says whether the two orders
    gave the same outcome (two ties agree; ``A`` in both orders is position bias: a tie).
    """

    outcome: str
    agree: bool
    x_first: Verdict  # order (x, y): x is response A
    y_first: Verdict  # order (y, x): x is response B
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"outcome": self.outcome, "agree": self.agree, "x_first": self.x_first.to_json(), "y_first": self.y_first.to_json()}
        if self.reasons:
            out["reasons"] = self.reasons
        return out


def _combine(x_first: Verdict, y_first: Verdict) -> PairJudgement:
    if not (x_first.valid and y_first.valid):
        reasons = [v.reason or "invalid" for v in (x_first, y_first) if not v.valid]
        return PairJudgement("invalid", False, x_first, y_first, reasons)
    first = {"A": "x", "B": "y", "tie": "tie"}[x_first.winner]
    second = {"A": "y", "B": "x", "tie": "tie"}[y_first.winner]
    outcome = first if first == second else "tie"
    return PairJudgement(outcome, first == second, x_first, y_first)


IDENTICAL = Verdict("tie", "(identical responses: not sent to the judge)")


def judge_pairs(judge: Judge, triples: Sequence[tuple[str, str, str]]) -> list[PairJudgement]:
    """Judge ``(prompt, x, y)`` triples in both orders (one batch of ``2n`` comparisons).

    Identical responses are a tie without asking the judge.
    """
    asks: list[tuple[str, str, str]] = []
    for prompt, x, y in triples:
        if x != y:
            asks.extend([(prompt, x, y), (prompt, y, x)])
    verdicts = iter(compare_all(judge, asks)) if asks else iter(())
    out = []
    for _prompt, x, y in triples:
        out.append(_combine(IDENTICAL, IDENTICAL) if x == y else _combine(next(verdicts), next(verdicts)))
    return out


def judge_pair(judge: Judge, prompt: str, x: str, y: str) -> PairJudgement:
    """Judge ``x`` against ``y`` in both orders: ``x`` wins only if both orders agree."""
    return judge_pairs(judge, [(prompt, x, y)])[0]


class PairwiseScorer:
    """A ``scorer(prompts, completions) -> scores`` callable for discovery's ``judge=``.

    Each completion is judged against the reference completion for its prompt, in both
    orders: ``+1`` more honest, ``-1`` less honest, ``0`` tie or invalid.

    Args:
        references: ``{prompt: reference completion}``, a list aligned with ``prompts``, or
            ``None``: the first call's completions become the references (discovery scores
            the unsteered baseline first, so every vector is judged against it; that first
            call returns zeros).
    """

    def __init__(self, judge: Judge, references: Mapping[str, str] | Sequence[str] | None = None) -> None:
        self.judge = judge
        self.references = references
        self.last: list[PairJudgement] = []

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        if self.references is None:
            self.references = dict(zip(prompts, completions))
            return [0.0] * len(completions)
        if isinstance(self.references, Mapping):
            missing = [p for p in prompts if p not in self.references]
            if missing:
                raise ReptuneError(f"no reference completion for prompt {missing[0][:60]!r}")
            refs = [self.references[p] for p in prompts]
        else:
            refs = list(self.references)
            if len(refs) != len(prompts):
                raise ReptuneError(f"{len(refs)} reference completions for {len(prompts)} prompts")
        self.last = judge_pairs(self.judge, list(zip(prompts, completions, refs)))
        return [{"x": 1.0, "y": -1.0}.get(p.outcome, 0.0) for p in self.last]
