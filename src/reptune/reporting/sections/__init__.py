"""The experiment report's section builders, one module per job (see :mod:`reptune.reporting.experiment`).

Each ``section_*`` function appends its heading, text, tables and figure jobs to a
:class:`~reptune.reporting.document.Plan`; :mod:`.common` holds the readers of ``results.json``
they (and the figures) share. Nothing is imported here, so :mod:`reptune.reporting.figures` can
import :mod:`.common` without pulling in the builders.
"""
