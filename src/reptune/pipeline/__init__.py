"""The experiment pipeline: one YAML file from vector to verdict (``reptune run``, ``reptune demo``)."""

from reptune.pipeline.config import ExperimentConfig, builtin_config, load_config, parse_config
from reptune.pipeline.runner import ExperimentRun, run_experiment, select_multipliers
from reptune.pipeline.stages import StageError, StageStore

__all__ = [
    "ExperimentConfig",
    "ExperimentRun",
    "StageError",
    "StageStore",
    "builtin_config",
    "load_config",
    "parse_config",
    "run_experiment",
    "select_multipliers",
]
