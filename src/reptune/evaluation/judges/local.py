"""A local Hugging Face causal LM as the judge: the next-token log-prob of ``A`` vs ``B`` after ``Verdict:``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reptune.errors import DataError
from reptune.evaluation.judges.base import JudgeError, Verdict, fill_template, load_template


class LocalJudge:
    """A local causal LM judge: next-token log-prob of ``A`` vs ``B`` after ``Verdict:``.

    The filled template is the user turn (chat template applied when the tokenizer has one)
    and the assistant's reply starts with ``Verdict:``; the verdict is the letter with the
    higher log-prob, ``tie`` when they differ by at most ``tie_margin`` nats. Deterministic.

    Args:
        model: a :class:`~reptune.models.ModelHandle`, or a name/path for
            :func:`~reptune.models.load_model`.
    """

    def __init__(self, model: Any, *, template: str | None = None, batch_size: int = 8, tie_margin: float = 0.0, device: str = "auto") -> None:
        from reptune.models import ModelHandle, load_model

        self.handle = model if isinstance(model, ModelHandle) else load_model(str(model), device=device)
        self.template = template if template is not None else load_template()
        self.batch_size = int(batch_size)
        self.tie_margin = float(tie_margin)
        if self.tie_margin < 0:
            raise JudgeError(f"tie_margin must be >= 0, got {tie_margin}")

    def __repr__(self) -> str:
        return f"LocalJudge({self.handle.model_id!r})"

    @property
    def identity(self) -> str:
        return f"local:{self.handle.model_id}@{self.handle.revision}|tie_margin={self.tie_margin:g}"

    def check(self) -> LocalJudge:
        return self

    def judge_text(self, prompt: str, response_a: str, response_b: str) -> str:
        """The exact text the model scores (ends with ``Verdict:``)."""
        from reptune.data.pairs import render_chat

        return render_chat(self.handle.tokenizer, fill_template(self.template, prompt, response_a, response_b)) + "Verdict:"

    def _letter_ids(self, text: str) -> list[int]:
        from reptune.tokens import choice_token_ids

        try:
            return choice_token_ids(self.handle.tokenizer, text, [" A", " B"])
        except DataError:  # " A" and " B" share a first token (a bare space): use the bare letters
            return choice_token_ids(self.handle.tokenizer, text, ["A", "B"])

    def compare_many(self, triples: Sequence[tuple[str, str, str]]) -> list[Verdict]:
        from reptune.evaluation.scoring import next_token_logprobs

        if not triples:
            return []
        texts = [self.judge_text(*t) for t in triples]
        logprobs = next_token_logprobs(self.handle, texts, [self._letter_ids(t) for t in texts], batch_size=self.batch_size)
        verdicts = []
        for lp_a, lp_b in logprobs:
            diff = float(lp_a - lp_b)
            winner = "tie" if abs(diff) <= self.tie_margin else ("A" if diff > 0 else "B")
            verdicts.append(Verdict(winner, f"logprob A {lp_a:.4f}, B {lp_b:.4f}"))
        return verdicts

    def compare(self, prompt: str, response_a: str, response_b: str) -> Verdict:
        return self.compare_many([(prompt, response_a, response_b)])[0]
