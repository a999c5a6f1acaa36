"""What a study may ask of the experiment that runs it (implemented by ``pipeline.runner.Experiment``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from reptune.models import ModelHandle
from reptune.pipeline.config import ExperimentConfig
from reptune.pipeline.stages import StageStore


class StudyHost(Protocol):
    """The running experiment, as a study sees it.

    Attributes:
        config: the resolved experiment config (a study reads its own section).
        run_dir: the run's folder; ``progress``: whether to show progress.
        layer: the steering layer the sweep chose; ``m_plus`` / ``m_minus``: its multipliers.
        headline: the headline task (``facts-twin`` with twins, else ``facts-ab``).
        item_kind: the training items, ``twin`` (one item = a true/false twin pair) or ``ab``
            (one item = one statement as an A/B question).
        data: the data stage's output (``splits`` / ``pairs``: item counts per split, ``twins``).
        tasks: the evaluation tasks whose data was found.
        training: ``{variant: {seed (str): training stage output}}`` of the main variants
            (``dir``: the tuned model's folder, relative to ``run_dir``).
        evals: ``{condition: {seed (str): {"results": file relative to run_dir}}}`` of the main conditions.
        conditions: the main conditions (``id``, ``kind``, ``variant``, ``steering``...).
        store: the run's stage store (:class:`reptune.pipeline.stages.StageStore`).
    """

    config: ExperimentConfig
    run_dir: Path
    progress: bool
    layer: int
    m_plus: float
    m_minus: float
    headline: str
    item_kind: str
    data: dict[str, Any]
    tasks: list[str]
    training: dict[str, dict[str, dict[str, Any]]]
    evals: dict[str, dict[str, dict[str, Any]]]
    conditions: list[dict[str, Any]]
    store: StageStore

    def stage(self, name: str, inputs: Any, work: Callable[[Path], dict[str, Any]], cost: float) -> dict[str, Any]:
        """Run ``work(folder)`` once per ``inputs`` (cached in ``stages/<name>/``); returns its outputs."""
        ...

    def stage_key(self, name: str) -> str:
        """The input hash of a stage that ran (or was reused) in this run: what depends on it puts it in its inputs."""
        ...

    def split_path(self, split: str) -> Path:
        """The run's ``train`` / ``val`` / ``test`` statements (CSV)."""
        ...

    def tune_config(self, variant: Any, seed: int, steps: int | None = None) -> Any:
        """The :class:`~reptune.tuning.TuneConfig` ``train_variant`` would train ``variant`` with (steps, batch size, validation share)."""
        ...

    def walk(self, items: list[Any]) -> list[Any]:
        """``items`` in this process's order: as given, or reversed in a stage worker (each study's
        independent trainings and evaluations are then taken from the other end)."""
        ...

    def train_variant(self, variant: Any, seed: int, trained: dict[str, Any] | None = None, *, stage: str | None = None,
                      train_csv: Path | None = None, steps: int | None = None) -> dict[str, Any]:
        """Train a :class:`~reptune.pipeline.config.VariantConfig` from the base weights (see the runner)."""
        ...

    def tuned_loader(self, training: dict[str, Any], trained: dict[str, Any] | None = None) -> Callable[[], ModelHandle]:
        """A loader of the model a training stage wrote."""
        ...

    def evaluate_condition(self, cond: dict[str, Any], trained: tuple[int, str] | None, tasks: list[str],
                           loader: Callable[[], ModelHandle]) -> dict[str, Any]:
        """Evaluate a condition as a cached stage (see the runner for the keys a study's condition may add)."""
        ...

    def base(self) -> ModelHandle:
        """The base model (loaded once, kept until :meth:`release_base`)."""
        ...

    def release_base(self) -> None:
        ...
