"""Figures of evaluation results, written beside a results file (``reptune eval -o R.json``).

``R.robustness.png``: the layers x multipliers grid heatmap; ``R.projection.png``: per-token
cosine heatmaps (first 8 prompts). Other tasks have no figure.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reptune._io import safe_filename

PROJECTION_PANELS = 8


def _robustness(result: Any, path: Path) -> Path | None:
    from reptune.reporting.heatmaps import plot_robustness

    return plot_robustness(result.details, path) if result.details else None


def _projection(result: Any, path: Path) -> Path | None:
    from reptune.reporting.heatmaps import plot_projection

    shown = result.records[:PROJECTION_PANELS]
    more = f" (first {len(shown)} of {len(result.records)} prompts)" if len(result.records) > len(shown) else ""
    return plot_projection(shown, path, title=f"cosine to the vector per token and layer{more}")


FIGURES: dict[str, Callable[[Any, Path], Path | None]] = {"robustness": _robustness, "projection": _projection}


def write_eval_figures(results: Any, output: str | os.PathLike[str]) -> list[Path]:
    """Write the figure of every task that has one beside ``output``: ``STEM.<task>.png``.

    Args:
        results: :class:`reptune.evaluation.EvalResults`.
        output: the results file path (``results.json`` gives ``results.robustness.png``).
    """
    output = Path(output)
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    written = []
    for name, result in results.tasks.items():
        draw = FIGURES.get(name.partition(":")[0])
        if draw is None:
            continue
        path = draw(result, output.with_name(f"{stem}.{safe_filename(name)}.png"))
        if path is not None:
            written.append(Path(path))
    return written
