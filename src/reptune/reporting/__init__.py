"""Human-facing output: the layer scan, figures, the experiment, discovery and tuning reports.

One module per job:

* :mod:`.document`: number formats, report blocks, the Markdown and HTML renderers;
* :mod:`.figures`: every matplotlib call (scan, loss and norm curves, evaluation heatmaps, the
  experiment report's figures);
* :mod:`.scan`: ``VEC.scan.{json,md,png}`` beside a vector file;
* :mod:`.schema`: ``results.json`` of ``reptune run`` (the pipeline writes it, the report reads it);
* :mod:`.experiment` with :mod:`.sections`: ``report.md`` / ``report.html`` of ``reptune run``;
* :mod:`.discovery`: ``VECS.discovery.md`` of ``reptune discover``;
* :mod:`.model_card`: the ``README.md`` of a tuning run.

Tuning and discovery sit below this package on the import ladder, so they reach the last two
(and the loss / norm curves) through :mod:`reptune._render`, filled by :func:`install_renderers`.
"""

from __future__ import annotations

from reptune import _render
from reptune.reporting.discovery import discovery_markdown
from reptune.reporting.figures import plot_loss_curves, plot_norm_curves, plot_scan, save_figure
from reptune.reporting.model_card import model_card
from reptune.reporting.scan import SCAN_COLUMNS, scan_markdown, write_scan
from reptune.reporting.schema import ExperimentResults

__all__ = ["SCAN_COLUMNS", "ExperimentResults", "install_renderers", "plot_loss_curves", "plot_scan", "save_figure", "scan_markdown", "write_scan"]


def install_renderers() -> None:
    """Give tuning and discovery their report builders (see :mod:`reptune._render`); the facade calls it."""
    _render.install(model_card=model_card, loss_curves=plot_loss_curves, discovery_report=discovery_markdown, norm_curves=plot_norm_curves)
