"""``mmlu``: zero-shot MMLU, scored as lm-evaluation-harness scores it.

| task | items | scoring | primary metric |
|---|---|---|---|
| ``mmlu`` | zero-shot MMLU (lm-evaluation-harness prompt) | lm-eval log-likelihood of " A".." D" | accuracy |
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from reptune.evaluation import data as evaldata
from reptune.evaluation.registry import RunContext, Task
from reptune.evaluation.scoring import choice_logprobs
from reptune.evaluation.statistics import proportion_metric
from reptune.evaluation.tasks.base import Advance
from reptune.models import ModelHandle

MMLU_LETTERS = ("A", "B", "C", "D")


class MMLU(Task):
    name = "mmlu"
    description = "zero-shot MMLU by log-prob over A-D (subjects option: comma list)"
    defaults: ClassVar[dict[str, Any]] = {"data": "mmlu", "subjects": ""}

    def load_items(self, handle: ModelHandle, limit: int | None) -> tuple[list[dict[str, Any]], str, str]:
        subjects = [s.strip() for s in self.options["subjects"].split(",") if s.strip()] or None
        by_subject, origin, digest = evaldata.load_mmlu(self.options["data"], subjects)
        # round-robin over subjects, so a --limit samples every subject
        queues = {subject: list(enumerate(rows)) for subject, rows in sorted(by_subject.items())}
        items = []
        while queues:
            for subject in list(queues):
                if not queues[subject]:
                    del queues[subject]
                    continue
                index, row = queues[subject].pop(0)
                items.append({"id": f"{subject}/{index}", "subject": subject, "prompt": mmlu_prompt(subject, row), "answer": row["answer"]})
        return items, origin, digest

    def score(self, handle: ModelHandle, items: Sequence[dict[str, Any]], *, batch_size: int, context: RunContext, advance: Advance) -> list[dict[str, Any]]:
        # lm-eval's requests: context "...Answer:", continuations " A".." D" (one forward when each is one token)
        requests = [(item["prompt"], [" " + letter for letter in MMLU_LETTERS]) for item in items]
        logprobs = choice_logprobs(handle, requests, batch_size=batch_size, advance=advance)
        records = []
        for item, lp in zip(items, logprobs):
            choice = int(np.argmax(lp))
            records.append({"subject": item["subject"], "gold": MMLU_LETTERS[item["answer"]], "answer": MMLU_LETTERS[choice], "correct": choice == item["answer"], "logprobs": [float(v) for v in lp]})
        return records

    def summarize(self, records: Sequence[dict[str, Any]], seed: int) -> dict[str, dict[str, Any]]:
        metrics = {"accuracy": proportion_metric(sum(r["correct"] for r in records), len(records))}
        subjects = sorted({r["subject"] for r in records})
        if len(subjects) > 1:
            for subject in subjects:
                mine = [r for r in records if r["subject"] == subject]
                metrics[f"accuracy/{subject}"] = proportion_metric(sum(r["correct"] for r in mine), len(mine))
        return metrics


def mmlu_prompt(subject: str, row: dict[str, Any]) -> str:
    """The lm-evaluation-harness zero-shot MMLU prompt (ends in ``Answer:``)."""
    options = "".join(f"{letter}. {str(choice).strip()}\n" for letter, choice in zip(MMLU_LETTERS, row["choices"]))
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n{str(row['question']).strip()}\n{options}Answer:"
