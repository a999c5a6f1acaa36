"""Kept for compatibility: the experiment runner moved to :mod:`reptune.pipeline.runner`."""

# A package rather than experiment.py: with no file left at the old path, git sees experiment.py
# renamed to runner.py, so edits made to experiment.py on other branches merge into runner.py.

from reptune.pipeline.runner import (
    RESULTS_FORMAT,
    RUN_ENTRIES,
    SPLIT_TASKS,
    VECTOR_FILE,
    Experiment,
    ExperimentRun,
    clean_run,
    plan_experiment,
    run_experiment,
    select_multipliers,
)

__all__ = [
    "RESULTS_FORMAT",
    "RUN_ENTRIES",
    "SPLIT_TASKS",
    "VECTOR_FILE",
    "Experiment",
    "ExperimentRun",
    "clean_run",
    "plan_experiment",
    "run_experiment",
    "select_multipliers",
]
