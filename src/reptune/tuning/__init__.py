"""Representation tuning: fine-tune a behaviour direction into (or out of) the weights.

* :mod:`reptune.tuning.config` — :class:`TuneConfig` and the paper's presets;
* :mod:`reptune.tuning.items` — training items and deterministic balanced batches;
* :mod:`reptune.tuning.losses` — representation, token and retain losses;
* :mod:`reptune.tuning.trainer` — the loop, checkpoints, resume and outputs;
* :mod:`reptune.tuning.distributed` — the same loop over several processes (DDP, FSDP2) under
  ``accelerate launch``.
"""

from reptune.tuning.config import PAPER_PARAM_GROUPS, PAPER_SETTINGS, PRESETS, ParamGroup, TuneConfig, paper_settings
from reptune.tuning.items import TrainItem, load_tune_items
from reptune.tuning.trainer import TrainingDiverged, TuneResult, tune, tuning_plan

__all__ = [
    "PAPER_PARAM_GROUPS",
    "PAPER_SETTINGS",
    "PRESETS",
    "ParamGroup",
    "TrainItem",
    "TrainingDiverged",
    "TuneConfig",
    "TuneResult",
    "load_tune_items",
    "paper_settings",
    "tune",
    "tuning_plan",
]
