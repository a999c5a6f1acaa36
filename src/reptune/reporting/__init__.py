"""Human-facing output: layer-scan tables and plots, heatmaps, evaluation figures, the experiment report.

``save_figure`` and ``plot_loss_curves`` live in :mod:`reptune._plots` (tuning draws its loss
curves without importing this upper layer) and are re-exported here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from reptune._io import write_json_atomic, write_text_atomic
from reptune._plots import plot_loss_curves, save_figure
from reptune.directions import LayerScan

__all__ = ["SCAN_COLUMNS", "plot_loss_curves", "plot_scan", "save_figure", "scan_markdown", "write_scan"]

SCAN_COLUMNS = ("layer", "pair_acc", "probe_acc", "label_acc", "gap", "effect", "norm", "rel_norm")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def scan_markdown(scan: LayerScan, rich: bool = False) -> Any:
    """The scan as a Markdown table (or a rich Table when ``rich``), best layers marked ``*``."""
    best = set(scan.best_layers(min(3, len(scan.scores))))
    rows = [[_fmt(getattr(score, column)) + ("*" if column == "layer" and score.layer in best else "") for column in SCAN_COLUMNS] for score in scan.scores]
    if rich:
        from rich.table import Table

        table = Table(title=f"layer scan ({scan.method}; held-out {scan.num_test} of {scan.num_train + scan.num_test} pairs; * = best)")
        for column in SCAN_COLUMNS:
            table.add_column(column, justify="right")
        for row in rows:
            table.add_row(*row)
        return table
    lines = ["| " + " | ".join(SCAN_COLUMNS) + " |", "|" + "---:|" * len(SCAN_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines.append("")
    lines.append(f"Best layers (`*`): {sorted(best)}. Rule: {scan.rule}. Held-out pairs: {scan.num_test}.")
    return "\n".join(lines) + "\n"


def plot_scan(scan: LayerScan, path: str | os.PathLike[str]) -> Path:
    """Line plot of held-out accuracies and effect size per layer, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [score.layer for score in scan.scores]
    fig, (ax_acc, ax_eff) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_acc.plot(layers, [s.pair_acc for s in scan.scores], marker="o", label="pair acc (direction)")
    ax_acc.plot(layers, [s.probe_acc for s in scan.scores], marker="s", label="probe acc (pos vs neg)")
    if any(s.label_acc is not None for s in scan.scores):
        ax_acc.plot(layers, [s.label_acc if s.label_acc is not None else float("nan") for s in scan.scores], marker="^", label="label probe acc")
    ax_acc.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax_acc.set_xlabel("layer (output of block L)")
    ax_acc.set_ylabel("held-out accuracy")
    ax_acc.set_ylim(0.0, 1.05)
    ax_acc.legend(fontsize=8)
    ax_eff.plot(layers, [s.effect for s in scan.scores], marker="o", color="tab:red")
    ax_eff.set_xlabel("layer (output of block L)")
    ax_eff.set_ylabel("effect size (Cohen's d)")
    for best in scan.best_layers(min(3, len(layers))):
        ax_acc.axvline(best, color="tab:green", alpha=0.3)
        ax_eff.axvline(best, color="tab:green", alpha=0.3)
    fig.suptitle(f"layer scan: {scan.method}")
    return save_figure(fig, path)


def write_scan(scan: LayerScan, vector_path: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``VEC.scan.json``, ``VEC.scan.md`` and ``VEC.scan.png`` beside a vector file."""
    base = Path(vector_path).with_suffix("")
    paths = {
        "json": base.with_name(base.name + ".scan.json"),
        "md": base.with_name(base.name + ".scan.md"),
        "png": base.with_name(base.name + ".scan.png"),
    }
    write_json_atomic(paths["json"], scan.to_json())
    write_text_atomic(paths["md"], scan_markdown(scan))
    plot_scan(scan, paths["png"])
    return paths


