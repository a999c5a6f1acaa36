"""The studies' sections (``results.studies``, see :mod:`reptune.pipeline.studies`): one builder per study.

``STUDY_SECTIONS`` maps a study's name to ``"module:function"``; the builder takes ``(plan, section,
results)`` with ``section`` the study's entry of ``results.studies``. A study the run did not do
has no section. Builders are imported only when their study is in the results.
"""

from __future__ import annotations

import importlib
from typing import Any

from reptune.reporting.document import Heading, Plan
from reptune.reporting.schema import ExperimentResults

STUDY_SECTIONS: dict[str, str] = {
    "gcg": "reptune.reporting.sections.gcg:section_gcg",
    "generalisation": "reptune.reporting.sections.generalisation:section_generalisation",
    "sample_efficiency": "reptune.reporting.sections.sample_efficiency:section_sample_efficiency",
    "stacking": "reptune.reporting.sections.stacking:section_stacking",
}


def section_studies(plan: Plan, results: ExperimentResults) -> None:
    """Each study the run did, in the order the run recorded them."""
    for name, section in (results.studies or {}).items():
        target = STUDY_SECTIONS.get(name)
        if target is None:  # a newer run's study: show that it is there
            plan.add(Heading(2, f"Study: {name}"))
            plan.para("This version of reptune has no report section for this study; its numbers are in results.json under ",
                      ("c", f"studies.{name}"), ".")
            continue
        module, _, function = target.partition(":")
        builder: Any = getattr(importlib.import_module(module), function)
        builder(plan, section or {}, results)
