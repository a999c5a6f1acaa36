"""Evaluation suite: tasks behind one interface, batched log-prob scoring, sound statistics.

* :mod:`~reptune.evaluation.registry` — :class:`Task`, :class:`TaskResult`, :func:`register_task`,
  :func:`get_task`, :func:`available_tasks`; the built-in tasks as a lazy ``name -> "module:Class"`` table;
* :mod:`~reptune.evaluation.statistics` — Wilson, McNemar, bootstrap (fp64);
* :mod:`~reptune.evaluation.scoring` — batched next-token / continuation / window log-probs
  (:mod:`~reptune.evaluation.twin_scoring`: twin pairs sharing their prompt's tokens);
* :mod:`~reptune.evaluation.data` — TruthfulQA, MMLU and WikiText-2 loaders (the names resolved by
  :func:`reptune.data.sources.resolve_data`);
* :mod:`~reptune.evaluation.tasks` — the built-in tasks, one module per task family (A/B facts,
  twins and True/False words, TruthfulQA, MMLU, perplexity and KL, CAA, open-ended, robustness grids,
  projections, the lm-eval bridge, GCG) and their shared :mod:`~reptune.evaluation.tasks.base`;
* :mod:`~reptune.evaluation.judges` — pairwise LLM judges (OpenAI-compatible endpoint or local model),
  both-order judging, on-disk judgement cache (the ``openended`` task's);
* :mod:`~reptune.evaluation.runner` — :func:`evaluate` (steered or not, resumable),
  results files (:func:`load_eval_results`) and :func:`compare_results` (figures:
  :mod:`reptune.reporting.figures`).

``reptune.evaluation.judge``, ``.robustness`` and ``.projection`` re-export the judges, the
robustness grid and the projections from their former paths.
"""

from reptune.evaluation.registry import RunContext, Task, TaskResult, available_tasks, get_task, register_task
from reptune.evaluation.runner import EvalResults, compare_results, evaluate, load_eval_results
from reptune.evaluation.statistics import (
    bootstrap_ci,
    bootstrap_ratio_ci,
    mcnemar_test,
    paired_bootstrap_diff,
    paired_mcnemar,
    wilson_interval,
)

load_results = load_eval_results  # the former name of load_eval_results, kept for compatibility

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
    "load_eval_results",
    "load_results",
    "mcnemar_test",
    "paired_bootstrap_diff",
    "paired_mcnemar",
    "register_task",
    "wilson_interval",
]
