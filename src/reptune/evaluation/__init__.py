"""Evaluation suite: tasks behind one interface, batched log-prob scoring, sound statistics.

* :mod:`~reptune.evaluation.registry` — :class:`Task`, :class:`TaskResult`, :func:`register_task`,
  :func:`get_task`, :func:`available_tasks`;
* :mod:`~reptune.evaluation.statistics` — Wilson, McNemar, bootstrap (fp64);
* :mod:`~reptune.evaluation.scoring` — batched next-token / continuation / window log-probs;
* :mod:`~reptune.evaluation.data` — TruthfulQA, MMLU and WikiText-2 loaders;
* :mod:`~reptune.evaluation.tasks` — the built-in tasks;
* :mod:`~reptune.evaluation.runner` — :func:`evaluate` (steered or not, resumable),
  results files and :func:`compare_results` (figures: :mod:`reptune.reporting.figures`);
* :mod:`~reptune.evaluation.robustness` — counter-steering grids (``robustness`` task, :func:`run_robustness`);
* :mod:`~reptune.evaluation.projection` — per-token cosine to a vector (``projection`` task, :func:`token_projections`);
* :mod:`~reptune.evaluation.lmeval` — any lm-evaluation-harness task (``lm-eval:<task>``).
* :mod:`~reptune.evaluation.judge` — pairwise LLM judges (OpenAI-compatible endpoint or local model),
  both-order judging, on-disk judgement cache; :mod:`~reptune.evaluation.openended` — the ``openended`` task.
"""

from reptune.evaluation.registry import RunContext, Task, TaskResult, available_tasks, get_task, register_task
from reptune.evaluation.runner import EvalResults, compare_results, evaluate, load_results
from reptune.evaluation.statistics import (
    bootstrap_ci,
    bootstrap_ratio_ci,
    mcnemar_test,
    paired_bootstrap_diff,
    paired_mcnemar,
    wilson_interval,
)

__all__ = [
    "EvalResults",
    "RunContext",
    "Task",
    "TaskResult",
    "available_tasks",
    "bootstrap_ci",
    "bootstrap_ratio_ci",
    "compare_results",
    "evaluate",
    "get_task",
    "load_results",
    "mcnemar_test",
    "paired_bootstrap_diff",
    "paired_mcnemar",
    "register_task",
    "wilson_interval",
]
