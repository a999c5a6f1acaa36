"""Studies: the questions the field asks of representation tuning, each a section of the experiment config.

A study runs after the main conditions are trained and evaluated, through the run's own cached
stages (:class:`~reptune.pipeline.studies.base.StudyHost`), so a re-run reuses what it did and a
condition the main run already evaluated is never evaluated twice. It returns one section of
``results.json`` (``studies.<name>``): its numbers, and under ``claims`` the claims it measured
(:func:`reptune.pipeline.claims.claim_spec`), which are judged with the paper's claims in one
Holm family and by the same verdict rule. Its report section is in
:mod:`reptune.reporting.sections.studies`.

A study is a module of this package with::

    NAME: str                              # its config section and its key in results.json
    def enabled(config) -> bool            # whether the experiment config asks for it
    def run(host: StudyHost) -> dict       # the section (claims under "claims")
    def check(host: StudyHost) -> None     # optional: input errors that need the data, raised right
                                           # after the data stage, before any model work
    def reads(config) -> set               # optional: the main run's (variant, seed) models it reads (a stage
                                           # worker may run the study before the other models are done)
    def cost(config, unit) -> float        # optional: rough cost for the progress ETA, in the runner's
                                           # units (``unit["train_step"]``, ``unit["eval_task"]`` seconds)

``check`` sees the data stage's output as ``host.data`` (``splits``, ``pairs``, ``twins``) and the
resolved ``host.headline``; the runner calls it right after the data stage, so a study's bad input
(a limit beyond the test split, ...) is a one-line error before the model loads. Modules are
imported only when their study is enabled.
"""

from __future__ import annotations

import importlib
from typing import Any

from reptune.pipeline.studies.base import StudyHost

# run order; each name is a module of this package and the study's config section
STUDIES: tuple[str, ...] = ("sample_efficiency", "generalisation", "stacking", "gcg")


def enabled_studies(config: Any) -> list[str]:
    """The studies ``config`` asks for, in run order."""
    return [name for name in STUDIES if importlib.import_module(f"{__name__}.{name}").enabled(config)]


def check_studies(host: StudyHost) -> None:
    """Each enabled study's ``check(host)`` (if it has one): bad input that needs the data (a size larger
    than the train split, ...) fails here, after the data stage and before the model loads."""
    for name in enabled_studies(host.config):
        check = getattr(importlib.import_module(f"{__name__}.{name}"), "check", None)
        if check is not None:
            check(host)


def estimate_studies(config: Any, unit: dict[str, float]) -> float:
    """The enabled studies' rough cost (only for the progress ETA; a study without ``cost`` counts 0)."""
    total = 0.0
    for name in enabled_studies(config):
        cost = getattr(importlib.import_module(f"{__name__}.{name}"), "cost", None)
        total += float(cost(config, unit)) if cost is not None else 0.0
    return total


def study_reads(config: Any) -> set[tuple[str, int]] | None:
    """The main run's ``(variant, seed)`` models whose training or evaluations the enabled studies
    read; ``None`` where a study does not say (then it may read any)."""
    read: set[tuple[str, int]] = set()
    for name in enabled_studies(config):
        reads = getattr(importlib.import_module(f"{__name__}.{name}"), "reads", None)
        if reads is None:
            return None
        read |= set(reads(config))
    return read


def run_studies(host: StudyHost) -> dict[str, dict[str, Any]]:
    """Run every enabled study: ``{name: its results section}`` (in ``host.walk`` order: a stage worker's last first)."""
    from reptune.pipeline.stages import run_deferring

    names = enabled_studies(host.config)
    results: dict[str, dict[str, Any]] = {}

    def study(name: str) -> None:
        results[name] = importlib.import_module(f"{__name__}.{name}").run(host)

    run_deferring(host.store, host.walk(list(names)), study)
    return {name: results[name] for name in names}


__all__ = ["STUDIES", "StudyHost", "check_studies", "enabled_studies", "estimate_studies", "run_studies", "study_reads"]
