"""Heatmaps of evaluation grids: the robustness grid and per-token projections (PNG, Agg backend)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from reptune.reporting import save_figure


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(text: str) -> str:
    """A token as a tick label: visible whitespace, no mathtext."""
    return text.replace("\\", "\\\\").replace("$", r"\$").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r") or "∅"


def plot_robustness(result_json: dict[str, Any], path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Layers x multipliers heatmap of a robustness grid (:meth:`RobustnessResult.to_json`).

    Each cell shows the task's primary metric; degenerate cells (more than the threshold of
    answers on one letter) are hatched and marked ``×``, as the note under the plot says.
    Cells without a value are grey.
    """
    import numpy as np
    from matplotlib.patches import Patch, Rectangle

    plt = _pyplot()
    layers = [int(layer) for layer in result_json["layers"]]
    multipliers = [float(m) for m in result_json["multipliers"]]
    grid = np.full((len(layers), len(multipliers)), np.nan)
    degenerate = np.zeros_like(grid, dtype=bool)
    for cell in result_json["cells"]:
        row = layers.index(int(cell["layer"]))
        col = multipliers.index(float(cell["multiplier"]))
        value = cell.get("value")
        grid[row, col] = np.nan if value is None or not math.isfinite(float(value)) else float(value)
        degenerate[row, col] = bool(cell.get("degenerate"))
    width = max(4.5, 1.0 + 0.9 * len(multipliers))
    height = max(2.8, 1.4 + 0.5 * len(layers))
    fig, ax = plt.subplots(figsize=(width, height))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d0d0d0")
    finite = grid[np.isfinite(grid)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if finite.size and vmin >= 0.0 and vmax <= 1.0:
        vmin, vmax = 0.0, 1.0  # a rate: the full scale, so 0.48 vs 0.50 does not look like black vs white
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", origin="lower")
    metric = str(result_json.get("metric", "value"))
    fig.colorbar(image, ax=ax, label=metric)
    for row in range(len(layers)):
        for col in range(len(multipliers)):
            value = grid[row, col]
            text = "-" if math.isnan(value) else f"{value:.2f}"
            shade = 0.0 if math.isnan(value) else (value - vmin) / (vmax - vmin)
            color = "black" if shade > 0.6 else "white"
            if degenerate[row, col]:
                ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, hatch="///", edgecolor="white", linewidth=0))
                text = f"× {text}"
            ax.text(col, row, text, ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(len(multipliers)), [f"{m:g}" for m in multipliers])
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set_xlabel("multiplier (negative = counter-steering)")
    ax.set_ylabel("layer (output of block L)")
    threshold = float(result_json.get("degenerate_threshold", 0.9))
    if degenerate.any():
        ax.legend(
            handles=[Patch(facecolor="none", edgecolor="grey", hatch="///", label=f"× degenerate: > {threshold:.0%} same answer letter")],
            loc="upper center", bbox_to_anchor=(0.5, -0.3), fontsize=8, frameon=False,
        )
    ax.set_title(title or f"robustness: {result_json.get('task', '')} ({metric})")
    return save_figure(fig, path)


def plot_projection(items: list[dict[str, Any]], path: str | os.PathLike[str], title: str | None = None, max_tokens: int = 48) -> Path:
    """One panel per prompt: layers x tokens cosine heatmap (from :func:`token_projections`).

    Diverging colormap centred at 0 with one symmetric scale for all panels; token strings on
    the x axis. Prompts longer than ``max_tokens`` show their last ``max_tokens`` tokens.
    """
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    if not items:
        raise ValueError("no projections to plot")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    plt = _pyplot()
    panels = []
    for item in items:
        cosine = np.asarray(item["cosine"], dtype=np.float64)
        tokens = list(item["tokens"])
        start = max(0, len(tokens) - max_tokens)
        panels.append((cosine[:, start:], tokens[start:], start, [int(layer) for layer in item["layers"]], item.get("prompt", "")))
    bound = max(float(np.nanmax(np.abs(c))) if c.size else 0.0 for c, *_ in panels) or 1.0
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)
    widest = max(len(tokens) for _, tokens, *_ in panels)
    heights = [max(1.6, 0.16 * len(layers) + 1.4) for *_, layers, _ in panels]
    fig = plt.figure(figsize=(max(6.0, 0.24 * widest + 2.5), sum(heights) + 0.4))
    grid = fig.add_gridspec(len(panels), 2, width_ratios=[1.0, 0.025], height_ratios=heights)
    axes = [fig.add_subplot(grid[row, 0]) for row in range(len(panels))]
    image = None
    for ax, (cosine, tokens, start, layers, prompt) in zip(axes, panels):
        image = ax.imshow(cosine, cmap="RdBu_r", norm=norm, aspect="auto", origin="lower", interpolation="nearest")
        ax.set_xticks(range(len(tokens)), [_label(token) for token in tokens], rotation=90, fontsize=7)
        step = max(1, len(layers) // 8)
        ax.set_yticks(range(0, len(layers), step), [str(layer) for layer in layers[::step]], fontsize=7)
        ax.set_ylabel("layer", fontsize=8)
        short = prompt if len(prompt) <= 90 else prompt[:87] + "..."
        ax.set_title(_label(short) + (f"  (last {len(tokens)} tokens)" if start else ""), fontsize=8, loc="left")
    fig.colorbar(image, cax=fig.add_subplot(grid[:, 1]), label="cosine to the vector")
    fig.suptitle(title or "per-token cosine to the vector", fontsize=10)
    return save_figure(fig, path)
