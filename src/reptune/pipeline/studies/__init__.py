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

and optionally::

    def check(config, data, headline) -> None   # errors that need the data, raised before any model work
    def cost(config) -> dict[str, float]         # its work in the runner's cost units ({"eval_task": 8}), for the ETA

``check`` gets the data stage's output (``splits``, ``pairs``, ``twins``) and the resolved headline
task; the runner calls it right after the data stage, so a study's bad input (a limit beyond the
test split, ...) is a one-line error before the model loads. Modules are imported only when their
study is enabled.
"""

from __future__ import annotations

import importlib
from typing import Any

from reptune.pipeline.studies.base import StudyHost

# run order; each name is a module of this package and the study's config section
STUDIES: tuple[str, ...] = ("stacking",)


def enabled_studies(config: Any) -> list[str]:
    """The studies ``config`` asks for, in run order."""
    return [name for name in STUDIES if importlib.import_module(f"{__name__}.{name}").enabled(config)]


def check_studies(config: Any, data: dict[str, Any], headline: str) -> None:
    """Each enabled study's data-dependent checks (its optional ``check``), before any model work."""
    for name in enabled_studies(config):
        check = getattr(importlib.import_module(f"{__name__}.{name}"), "check", None)
        if check is not None:
            check(config, data, headline)


def study_costs(config: Any) -> dict[str, float]:
    """The enabled studies' work, summed per cost unit of the runner (only for the progress estimate)."""
    total: dict[str, float] = {}
    for name in enabled_studies(config):
        cost = getattr(importlib.import_module(f"{__name__}.{name}"), "cost", None)
        for unit, amount in (cost(config) if cost is not None else {}).items():
            total[unit] = total.get(unit, 0.0) + float(amount)
    return total


def run_studies(host: StudyHost) -> dict[str, dict[str, Any]]:
    """Run every enabled study: ``{name: its results section}``."""
    return {name: importlib.import_module(f"{__name__}.{name}").run(host) for name in enabled_studies(host.config)}


__all__ = ["STUDIES", "StudyHost", "check_studies", "enabled_studies", "run_studies", "study_costs"]
