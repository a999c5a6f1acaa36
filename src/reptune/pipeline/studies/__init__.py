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
    def check(host: StudyHost) -> None     # optional: checks that need the data, before any model work

Modules are imported only when their study is enabled. The runner calls :func:`check_studies` right
after the ``data`` stage (the splits exist, no model is loaded yet), so a setting that does not fit
the data (an unknown topic, a subset left empty) is a one-line error before any model work.
"""

from __future__ import annotations

import importlib
from typing import Any

from reptune.pipeline.studies.base import StudyHost

# run order; each name is a module of this package and the study's config section
STUDIES: tuple[str, ...] = ("generalisation",)


def enabled_studies(config: Any) -> list[str]:
    """The studies ``config`` asks for, in run order."""
    return [name for name in STUDIES if importlib.import_module(f"{__name__}.{name}").enabled(config)]


def check_studies(host: StudyHost) -> None:
    """Every enabled study's data checks (its optional ``check(host)``); raises a one-line ReptuneError."""
    for name in enabled_studies(host.config):
        check = getattr(importlib.import_module(f"{__name__}.{name}"), "check", None)
        if check is not None:
            check(host)


def run_studies(host: StudyHost) -> dict[str, dict[str, Any]]:
    """Run every enabled study: ``{name: its results section}``."""
    return {name: importlib.import_module(f"{__name__}.{name}").run(host) for name in enabled_studies(host.config)}


__all__ = ["STUDIES", "StudyHost", "check_studies", "enabled_studies", "run_studies"]
