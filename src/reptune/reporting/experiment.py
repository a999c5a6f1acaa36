"""The experiment report: ``runs/NAME/results.json`` -> figures, ``report.md`` and ``report.html``.

:func:`write_report` reads the ``reptune-experiment/1`` results file written by ``reptune run``
(through the schema both sides share, :class:`~reptune.reporting.schema.ExperimentResults`), draws every figure into ``RUN/figures/*.png`` and writes ``RUN/report.md`` (figures referenced by
relative path) and a self-contained ``RUN/report.html`` (figures embedded as base64 data URIs,
inline CSS, no scripts, nothing fetched). :func:`render_markdown` is the pure Markdown renderer.

Both outputs come from one list of blocks (:mod:`reptune.reporting.document`), built by the
section builders of :mod:`reptune.reporting.sections` (in report order: :func:`_plan`), so they
always say the same thing. Every number shown is the JSON value passed through :func:`fmt`
(p-values through :func:`fmt_p`); nothing is recomputed here. Optional sections (sweep, training,
robustness, projections, representation, paired tests, scan) that the run did not produce say
"Not run." instead of failing. The figures are drawn by :mod:`reptune.reporting.figures`.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from reptune._io import write_text_atomic
from reptune.errors import ReptuneError
from reptune.reporting.document import FIGURES_DIR, Plan, fmt, fmt_ci, fmt_p, to_html, to_markdown
from reptune.reporting.schema import ExperimentResults
from reptune.reporting.sections.overview import (
    section_answer,
    section_claims,
    section_findings,
    section_headline,
    section_summary,
)
from reptune.reporting.sections.record import section_config, section_footer, section_scan, section_timing
from reptune.reporting.sections.scores import section_paired, section_representation, section_tasks
from reptune.reporting.sections.steering import section_counter, section_projection, section_robustness, section_sweep
from reptune.reporting.sections.studies import section_studies
from reptune.reporting.sections.training import section_training

FORMAT_PREFIX = "reptune-experiment/"


def _plan(results: ExperimentResults) -> Plan:
    """Every section, in report order."""
    plan = Plan()
    conds = results.conditions_by_id()
    section_summary(plan, results, conds)
    section_answer(plan, results, conds)
    section_headline(plan, results)
    section_claims(plan, results)
    section_findings(plan, results)
    section_tasks(plan, results, conds)
    section_sweep(plan, results)
    section_training(plan, results)
    section_counter(plan, results)
    section_studies(plan, results)
    section_robustness(plan, results, conds)
    section_projection(plan, results, conds)
    section_representation(plan, results, conds)
    section_paired(plan, results)
    section_scan(plan, results)
    section_timing(plan, results)
    section_config(plan, results)
    section_footer(plan, results)
    return plan


def _invalid(path: Path, error: ValidationError) -> ReptuneError:
    """The first problem of a results file that does not fit the schema, as one line."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "the file"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return ReptuneError(f"{path}: {where}: {first['msg']}{more}; rebuild the file with `reptune run`")


def load_experiment_results(run_dir: str | os.PathLike[str]) -> ExperimentResults:
    """Read ``run_dir/results.json`` and check it against :class:`~reptune.reporting.schema.ExperimentResults`."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise ReptuneError(f"{path}: not found (write it with `reptune run EXPERIMENT.yaml -o {run_dir}`)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReptuneError(f"{path}: not valid JSON ({exc})") from exc
    except RecursionError:
        raise ReptuneError(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(results, dict) or not str(results.get("format", "")).startswith(FORMAT_PREFIX):
        found = results.get("format") if isinstance(results, dict) else type(results).__name__
        raise ReptuneError(f"{path}: not a reptune experiment results file (format {found!r}, expected {FORMAT_PREFIX}N)")
    try:
        return ExperimentResults.model_validate(results)
    except ValidationError as exc:
        raise _invalid(path, exc) from None
    except RecursionError:
        raise ReptuneError(f"{path}: nested too deeply") from None


def render_markdown(results: ExperimentResults | dict[str, Any]) -> str:
    """The report as Markdown (pure: figures are referenced as ``figures/NAME.png``, not drawn); a dict is read through the schema."""
    if not isinstance(results, ExperimentResults):
        results = ExperimentResults.model_validate(results)
    return to_markdown(_plan(results).blocks)


def _draw(plan: Plan, run_dir: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Draw every figure of ``plan``: ``({"figure:NAME": path}, {rel: why} of the figures that failed)``."""
    (run_dir / FIGURES_DIR).mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    failed: dict[str, str] = {}
    for job in plan.jobs:
        target = run_dir / job.rel
        try:
            job.draw(target)
        except Exception as exc:  # noqa: BLE001  one broken figure must not cost the whole report
            failed[job.rel] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"{target}: figure failed: {exc!r}", stacklevel=3)
            import matplotlib.pyplot as plt

            plt.close("all")
            continue
        paths["figure:" + Path(job.rel).stem] = target
    return paths, failed


def write_report(run_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Draw the figures and write ``report.md`` and the self-contained ``report.html`` of a run.

    Returns ``{"md": ..., "html": ..., "figure:NAME": ...}``. A figure that fails to draw is
    reported in both documents (and warned about) instead of aborting the report.
    """
    run_dir = Path(run_dir)
    results = load_experiment_results(run_dir)
    try:
        plan = _plan(results)
    except (AttributeError, TypeError, KeyError, ValueError, IndexError) as exc:  # a hand-edited entry deeper down
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160]
        raise ReptuneError(f"{run_dir / 'results.json'}: unexpected content ({detail}); rebuild the file with `reptune run`") from exc
    paths, failed = _draw(plan, run_dir)
    title = f"reptune experiment: {results.name or run_dir.name}"
    paths["md"] = run_dir / "report.md"
    paths["html"] = run_dir / "report.html"
    write_text_atomic(paths["md"], to_markdown(plan.blocks, failed))
    write_text_atomic(paths["html"], to_html(plan.blocks, run_dir, title, failed))
    return paths


__all__ = ["fmt", "fmt_ci", "fmt_p", "load_experiment_results", "render_markdown", "write_report"]
