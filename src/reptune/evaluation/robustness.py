"""The robustness grid's former import path, kept for code written against it: see :mod:`reptune.evaluation.tasks.robustness`."""

from reptune.evaluation.tasks.robustness import (
    DEFAULT_MULTIPLIERS,
    DEGENERATE_THRESHOLD,
    Robustness,
    RobustnessCell,
    RobustnessResult,
    parse_multipliers,
    run_robustness,
    same_letter_rate,
)

__all__ = [
    "DEFAULT_MULTIPLIERS",
    "DEGENERATE_THRESHOLD",
    "Robustness",
    "RobustnessCell",
    "RobustnessResult",
    "parse_multipliers",
    "run_robustness",
    "same_letter_rate",
]
