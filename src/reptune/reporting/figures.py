"""Every figure reptune draws: each matplotlib call lives here (Agg backend, PNGs written atomically).

* :func:`save_figure`: lay out, write atomically, close; every figure below ends with it.
* :func:`plot_scan` (``VEC.scan.png``), :func:`plot_loss_curves` (a tuning run's ``loss_curves.png``),
  :func:`plot_norm_curves` (``VECS.norm.png`` of ``reptune discover --tune-norm``).
* :func:`plot_robustness` and :func:`plot_projection`: the robustness-grid and per-token cosine
  heatmaps; :func:`write_eval_figures` draws them beside an evaluation results file
  (``R.robustness.png``, ``R.projection.png``: first 8 prompts; other tasks have no figure).
* The experiment report's figures (:func:`plot_task`, :func:`plot_sweep`, :func:`plot_training`,
  :func:`plot_scan_rows`, :func:`draw_robustness`, :func:`draw_projection`), drawn from
  ``results.json`` entries.

matplotlib is imported on first use, not with the package.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reptune._io import atomic_path, safe_filename
from reptune.reporting.document import fmt, short
from reptune.reporting.schema import Condition, Metric, RobustnessGrid, SampleEfficiency, Sweep, SweepRow, TaskScore, TrainingRun
from reptune.reporting.sections.common import given, label, num

if TYPE_CHECKING:
    from reptune.directions import LayerScan
    from reptune.discovery.norm import NormCurve

KIND_COLORS = {"untuned": "tab:gray", "steered": "tab:blue", "tuned": "tab:green", "counter": "tab:orange"}
EXTRA_COLORS = ("tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:red")
UNBOUNDED_METRICS = {"mean_margin", "perplexity", "kl", "nll", "loss", "mean_projection", "mean_cosine"}
PROJECTION_PANELS = 8


def _pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display): the one place that chooses it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Lay out, write atomically as PNG, and close a matplotlib figure."""
    plt = _pyplot()
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def _mpl(text: Any) -> str:
    """Text for matplotlib with ``$`` escaped (no accidental mathtext)."""
    return str(text).replace("$", r"\$")


def _tick(text: str) -> str:
    """A token as a tick label: visible whitespace, no mathtext."""
    return text.replace("\\", "\\\\").replace("$", r"\$").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r") or "∅"


def kind_color(kind: str, extra: dict[str, str]) -> str:
    """The colour of a condition kind; kinds without one take the next of ``EXTRA_COLORS`` (kept in ``extra``)."""
    if kind in KIND_COLORS:
        return KIND_COLORS[kind]
    if kind not in extra:
        extra[kind] = EXTRA_COLORS[len(extra) % len(EXTRA_COLORS)]
    return extra[kind]


# ----------------------------------------------------------------------------- scan, tuning, discovery


def plot_scan(scan: LayerScan, path: str | os.PathLike[str]) -> Path:
    """Line plot of held-out accuracies and effect size per layer, written atomically as PNG."""
    plt = _pyplot()
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


def plot_loss_curves(history: list[dict[str, float]], val_history: list[dict[str, float]], path: str | os.PathLike[str], title: str = "") -> Path:
    """Training loss terms per step (and validation loss), written atomically as PNG."""
    plt = _pyplot()
    fig, (ax_loss, ax_cos) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [row["step"] for row in history]
    for key, style in (("loss", "-"), ("tok", "--"), ("rep", ":"), ("retain", "-.")):
        values = [row[key] for row in history]
        if any(values):
            ax_loss.plot(steps, values, style, label=f"train {key}")
    if val_history:
        ax_loss.plot([row["step"] for row in val_history], [row["loss"] for row in val_history], "o-", label="validation loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=8)
    ax_cos.plot(steps, [row["cos"] for row in history], label="train")
    if val_history:
        ax_cos.plot([row["step"] for row in val_history], [row["cos"] for row in val_history], "o-", label="validation")
    ax_cos.set_xlabel("step")
    ax_cos.set_ylabel("cosine to v at the loss sites")
    ax_cos.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_norm_curves(curves: Sequence[NormCurve], path: str | os.PathLike[str], labels: Sequence[str] | None = None) -> Path:
    """One panel per vector: objective over R (log-log) and the scored curves (right axis), with
    the appear / degenerate radii marked; written atomically as PNG."""
    plt = _pyplot()
    count = len(curves)
    columns = min(4, count)
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.8 * rows), squeeze=False)
    for number, curve in enumerate(curves):
        ax = axes[number // columns][number % columns]
        ax.plot(curve.radii, [max(value, 1e-30) for value in curve.objective], "k.-", label="objective")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("radius R")
        ax.set_title((labels[number] if labels else f"vector {curve.index}") + f" (growth {curve.growth:.2f})", fontsize=9)
        if curve.curves:
            twin = ax.twinx()
            for key, values in curve.curves.items():
                twin.plot(curve.radii, values, ".-", label=key)
            twin.legend(fontsize=6, loc="upper left")
        for radius, style in ((curve.appear_radius, "g--"), (curve.degenerate_radius, "r:")):
            if radius is not None:
                ax.axvline(radius, color=style[0], linestyle=style[1:])
    for number in range(count, rows * columns):
        axes[number // columns][number % columns].axis("off")
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- evaluation heatmaps


def _robustness_grid(result_json: dict[str, Any]) -> tuple[list[int], list[float], Any, Any]:
    """(layers, multipliers, values [layers, multipliers] with NaN for no value, degenerate mask)."""
    import numpy as np

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
    return layers, multipliers, grid, degenerate


def _value_range(grid: Any) -> tuple[float, float]:
    import numpy as np

    finite = grid[np.isfinite(grid)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if finite.size and vmin >= 0.0 and vmax <= 1.0:
        vmin, vmax = 0.0, 1.0  # a rate: the full scale, so 0.48 vs 0.50 does not look like black vs white
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    return vmin, vmax


def plot_robustness(result_json: dict[str, Any], path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Layers x multipliers heatmap of a robustness grid (:meth:`RobustnessResult.to_json`).

    Each cell shows the task's primary metric; degenerate cells (more than the threshold of
    answers on one letter) are hatched and marked ``×``, as the note under the plot says.
    Cells without a value are grey.
    """
    import numpy as np
    from matplotlib.patches import Patch, Rectangle

    plt = _pyplot()
    layers, multipliers, grid, degenerate = _robustness_grid(result_json)
    width = max(4.5, 1.0 + 0.9 * len(multipliers))
    height = max(2.8, 1.4 + 0.5 * len(layers))
    fig, ax = plt.subplots(figsize=(width, height))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d0d0d0")
    vmin, vmax = _value_range(grid)
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
        ax.set_xticks(range(len(tokens)), [_tick(token) for token in tokens], rotation=90, fontsize=7)
        step = max(1, len(layers) // 8)
        ax.set_yticks(range(0, len(layers), step), [str(layer) for layer in layers[::step]], fontsize=7)
        ax.set_ylabel("layer", fontsize=8)
        text = prompt if len(prompt) <= 90 else prompt[:87] + "..."
        ax.set_title(_tick(text) + (f"  (last {len(tokens)} tokens)" if start else ""), fontsize=8, loc="left")
    fig.colorbar(image, cax=fig.add_subplot(grid[:, 1]), label="cosine to the vector")
    fig.suptitle(title or "per-token cosine to the vector", fontsize=10)
    return save_figure(fig, path)


def _eval_robustness(result: Any, path: Path) -> Path | None:
    return plot_robustness(result.details, path) if result.details else None


def _eval_projection(result: Any, path: Path) -> Path | None:
    shown = result.records[:PROJECTION_PANELS]
    more = f" (first {len(shown)} of {len(result.records)} prompts)" if len(result.records) > len(shown) else ""
    return plot_projection(shown, path, title=f"cosine to the vector per token and layer{more}")


FIGURES: dict[str, Callable[[Any, Path], Path | None]] = {"robustness": _eval_robustness, "projection": _eval_projection}


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


# ----------------------------------------------------------------------------- the experiment report


def _bars(ids: list[str], entries: dict[str, TaskScore], conds: dict[str, Condition], primary: str) -> tuple[list[float], list[Metric], list[str]]:
    """x positions (a gap between kinds), the ``primary`` metric and the kind of every condition."""
    xs, values, kinds = [], [], []
    x, prev_kind = 0.0, None
    for cid in ids:
        kind = conds[cid].kind or "other"
        if prev_kind is not None and kind != prev_kind:
            x += 0.6
        prev_kind = kind
        xs.append(x)
        x += 1.0
        values.append(((entries[cid].metrics or {}).get(primary)) or Metric())
        kinds.append(kind)
    return xs, values, kinds


def plot_task(task: str, primary: str, ids: list[str], entries: dict[str, TaskScore], conds: dict[str, Condition], path: Path) -> Path:
    """Bars of ``primary`` per condition, grouped by kind, with 95% CIs, per-seed dots and the untuned value dashed."""
    from matplotlib.patches import Patch

    plt = _pyplot()
    extra: dict[str, str] = {}
    xs, values, kinds = _bars(ids, entries, conds, primary)
    colors = [kind_color(kind, extra) for kind in kinds]
    labels = [_mpl(short(label(conds, cid), 28)) for cid in ids]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.75 * len(ids) + 2.5), 4.0))
    heights = [num(m.value) for m in values]
    ax.bar(xs, heights, color=colors, width=0.8, edgecolor="black", linewidth=0.5)
    for xi, m, h in zip(xs, values, heights):
        lo, hi = m.ci_low, m.ci_high
        if lo is not None and hi is not None and not math.isnan(h):
            ax.errorbar([xi], [h], yerr=[[max(0.0, h - lo)], [max(0.0, hi - h)]], color="black", capsize=4, lw=1)
        seeds = m.per_seed or []
        if len(seeds) > 1:
            ax.scatter([xi] * len(seeds), seeds, s=10, color="black", zorder=3)
        if not math.isnan(h):
            ax.annotate(fmt(m.value), (xi, hi if hi is not None else h), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=7)
    base = next((h for cid, h in zip(ids, heights) if (conds[cid].kind == "untuned" and not math.isnan(h))), None)
    if base is not None:
        ax.axhline(base, color="gray", lw=0.8, ls="--")
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(_mpl(primary))
    ax.set_title(_mpl(f"{task}: {primary} (95% CI)"))
    numbers = [v for m in values for v in (m.value, m.ci_low, m.ci_high) if v is not None]
    if numbers and primary not in UNBOUNDED_METRICS and min(numbers) >= 0.0 and max(numbers) <= 1.0:
        ax.set_ylim(0.0, 1.1)
    seen = list(dict.fromkeys(kinds))
    ax.legend(handles=[Patch(color=kind_color(k, extra), label=_mpl(k)) for k in seen], fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return save_figure(fig, path)


def plot_sweep(sweep: Sweep, rows: list[SweepRow], path: Path) -> Path:
    """The steering sweep: the metric against the multiplier, one line per layer, the selected cells starred."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    base = next((r for r in rows if num(r.multiplier) == 0), None)
    layers = sorted({r.layer for r in rows if r.layer is not None})
    chosen_layer, chosen = sweep.choice()
    for index, layer in enumerate(layers):
        cells = sorted([r for r in rows if r.layer == layer] + ([base] if base else []), key=lambda r: num(r.multiplier))
        mult, val = [num(r.multiplier) for r in cells], [num(r.value) for r in cells]
        color = f"C{index % 10}"
        ax.plot(mult, val, "o-" if layer == chosen_layer else "o--", color=color, lw=2.0 if layer == chosen_layer else 1.0, label=_mpl(f"layer {layer}"))
        if layer == chosen_layer:
            ax.fill_between(mult, [num(r.ci_low) for r in cells], [num(r.ci_high) for r in cells], alpha=0.2, color=color)
            picked = [(m, v) for m, v in zip(mult, val) if m in chosen]
            ax.scatter([p[0] for p in picked], [p[1] for p in picked], marker="*", s=220, color=color, edgecolor="black", zorder=5, label="selected")
        bad = [(m, v) for m, v, r in zip(mult, val, cells) if r.degenerate]
        if bad:
            ax.scatter([b[0] for b in bad], [b[1] for b in bad], marker="x", s=70, color="tab:red", zorder=4)
    ax.axhline(num(base.value) if base else float("nan"), color="gray", lw=0.8, ls=":")
    ax.set_xlabel("steering multiplier (x the vector)")
    ax.set_ylabel(_mpl(given(sweep.metric, "value")))
    ax.set_title(_mpl(f"steering sweep: {given(sweep.task, '?')} ({given(sweep.split, '?')}); red x = degenerate"))
    if ax.get_legend_handles_labels()[0]:  # a sweep without steered cells has nothing to name
        ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


def _plot_runs(ax: Any, runs: dict[str, TrainingRun | None], term_colors: dict[str, str]) -> None:
    """One variant's panel: every loss term of every seed (line style = seed), validation dots, best step dotted."""
    styles = ("-", "--", "-.", ":")
    palette = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink")
    for si, (seed, info) in enumerate(runs.items()):
        info = info or TrainingRun()
        curves = info.loss_curves or {}
        steps = curves.get("step") or []
        suffix = f" s{seed}" if len(runs) > 1 else ""
        for term, values in curves.items():
            if term in ("step", "val_step", "val_loss") or not values or len(values) != len(steps):
                continue
            color = term_colors.setdefault(term, palette[len(term_colors) % len(palette)])
            ax.plot(steps, [num(v) for v in values], styles[si % len(styles)], color=color, lw=1, label=_mpl(term + suffix))
        if curves.get("val_step") and curves.get("val_loss"):
            ax.plot(curves["val_step"], [num(v) for v in curves["val_loss"]], "o", color="black", ms=4, label="val" + suffix)
        if info.best_step is not None:
            ax.axvline(info.best_step, color="tab:green", ls=":", lw=1.2)


def plot_training(training: dict[str, dict[str, TrainingRun | None] | None], path: Path) -> Path:
    """Every loss term per step, one panel per variant (line style = seed), validation dots, best step dotted."""
    plt = _pyplot()
    variants = [v for v in training if training[v]]
    ncols = min(3, len(variants))
    nrows = math.ceil(len(variants) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False)
    term_colors: dict[str, str] = {}
    for ax, variant in zip(axes.flat, variants):
        _plot_runs(ax, training[variant] or {}, term_colors)
        ax.set_title(_mpl(variant))
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(variants):]:
        ax.set_visible(False)
    return save_figure(fig, path)


def plot_scan_rows(scan: list[dict[str, Any]], selected: Any, path: Path) -> Path:
    """The layer scan of ``results.json`` (rows, not a :class:`LayerScan`), the selected layer marked."""
    plt = _pyplot()
    layers = [r.get("layer") for r in scan]
    fig, (ax_acc, ax_eff) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, marker in (("pair_acc", "o"), ("probe_acc", "s"), ("label_acc", "^")):
        if any(r.get(key) is not None for r in scan):
            ax_acc.plot(layers, [num(r.get(key)) for r in scan], marker=marker, label=key)
    ax_acc.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax_acc.set_ylim(0.0, 1.05)
    ax_acc.set_xlabel("layer (output of block L)")
    ax_acc.set_ylabel("held-out accuracy")
    ax_acc.legend(fontsize=8)
    ax_eff.plot(layers, [num(r.get("effect")) for r in scan], marker="o", color="tab:red")
    ax_eff.set_xlabel("layer (output of block L)")
    ax_eff.set_ylabel("effect size (Cohen's d)")
    if selected is not None:
        for ax in (ax_acc, ax_eff):
            ax.axvline(selected, color="tab:green", alpha=0.4)
    fig.suptitle("layer scan")
    return save_figure(fig, path)


def draw_robustness(grid: RobustnessGrid, path: Path, title: str) -> Any:
    """:func:`plot_robustness`, or the simple heatmap when that one fails (the report keeps a figure)."""
    try:
        return plot_robustness(grid.to_json(), path, title)
    except Exception as exc:  # noqa: BLE001  the detailed figure failing must not lose the report: draw the simple one
        warnings.warn(f"plot_robustness failed ({exc!r}); using the simple heatmap", stacklevel=2)
        return _simple_robustness(grid, path, title)


def draw_projection(items: list[dict[str, Any]], path: Path, title: str) -> Any:
    """:func:`plot_projection`, or the simple heatmaps when that one fails."""
    try:
        return plot_projection(items, path, title)
    except Exception as exc:  # noqa: BLE001  see draw_robustness
        warnings.warn(f"plot_projection failed ({exc!r}); using the simple heatmap", stacklevel=2)
        return _simple_projection(items, path, title)


def _simple_robustness(grid: RobustnessGrid, path: Path, title: str) -> Path:
    import numpy as np

    plt = _pyplot()
    layers, mults, cells = grid.table()
    mat = np.full((max(1, len(layers)), max(1, len(mults))), np.nan)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(mults) + 2), max(3.0, 0.35 * len(layers) + 1.5)))
    for i, layer in enumerate(layers):
        for j, mult in enumerate(mults):
            cell = cells.get((layer, float(mult)))
            if cell is not None and cell.value is not None:
                mat[i, j] = cell.value
            if cell is not None and cell.degenerate:
                ax.text(j, i, "x", ha="center", va="center", color="red", fontsize=12, fontweight="bold")
    image = ax.imshow(mat, aspect="auto", cmap="viridis", origin="lower")
    fig.colorbar(image, ax=ax, label=_mpl(given(grid.metric, "value")))
    ax.set_xticks(range(len(mults)))
    ax.set_xticklabels([fmt(m) for m in mults], fontsize=8)
    ax.set_yticks(range(len(layers)))
    ax.set_yticklabels([fmt(layer) for layer in layers], fontsize=8)
    ax.set_xlabel("multiplier")
    ax.set_ylabel("layer")
    ax.set_title(_mpl(title))
    return save_figure(fig, path)


def _simple_projection(items: list[dict[str, Any]], path: Path, title: str) -> Path:
    import numpy as np

    plt = _pyplot()
    items = items[:6]
    fig, axes = plt.subplots(len(items), 1, figsize=(9.0, 2.6 * len(items)), squeeze=False)
    for ax, item in zip(axes[:, 0], items):
        tokens, layers = list(item.get("tokens") or []), list(item.get("layers") or [])
        mat = np.array(item.get("cosine") or [[np.nan]], dtype=float)
        if mat.ndim == 2 and mat.shape == (len(tokens), len(layers)) and len(tokens) != len(layers):
            mat = mat.T  # tokens x layers -> layers x tokens
        bound = float(np.nanmax(np.abs(mat))) if np.isfinite(mat).any() else 1.0
        image = ax.imshow(mat, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound, origin="lower")
        fig.colorbar(image, ax=ax, label="cosine")
        if len(tokens) == mat.shape[1]:
            ax.set_xticks(range(len(tokens)))
            ax.set_xticklabels([_mpl(short(t, 12)) for t in tokens], rotation=60, fontsize=7)
        if len(layers) == mat.shape[0]:
            ax.set_yticks(range(len(layers)))
            ax.set_yticklabels([fmt(layer) for layer in layers], fontsize=7)
        ax.set_ylabel("layer")
        ax.set_title(_mpl(short(item.get("prompt", ""), 90)), fontsize=8)
    fig.suptitle(_mpl(title))
    return save_figure(fig, path)


def plot_counter(rows: Sequence[Any], path: Path, task: str) -> Path:
    """Each variant's drop under each counter-steering vector (bars: mean over seeds; whiskers: the
    per-seed 95% CIs' envelope; dots: seeds), the random floor hatched."""
    plt = _pyplot()
    variants = list(dict.fromkeys(str(r.variant) for r in rows))
    vectors = list(dict.fromkeys(str(r.vector) for r in rows))
    width = 0.8 / max(1, len(vectors))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 * len(variants) * max(1, len(vectors)) / 2 + 2.0), 3.8))
    colors = {"training": "tab:orange", "other": "tab:red"}
    for j, vector in enumerate(vectors):
        for i, variant in enumerate(variants):
            mine = [r for r in rows if str(r.variant) == variant and str(r.vector) == vector and r.drop is not None]
            if not mine:
                continue
            x = i + (j - (len(vectors) - 1) / 2) * width
            drops = [float(r.drop) for r in mine]
            mean = sum(drops) / len(drops)
            random_floor = vector.startswith("random")
            ax.bar([x], [mean], width=width * 0.95, color="lightgray" if random_floor else colors.get(vector, "tab:purple"),
                   hatch="//" if random_floor else None, edgecolor="black", linewidth=0.5, label=_mpl(vector) if i == 0 else None)
            lows = [float(r.ci_low) for r in mine if r.ci_low is not None]
            highs = [float(r.ci_high) for r in mine if r.ci_high is not None]
            if lows and highs:
                ax.errorbar([x], [mean], yerr=[[max(0.0, mean - min(lows))], [max(0.0, max(highs) - mean)]], color="black", capsize=3, lw=1)
            if len(drops) > 1:
                ax.scatter([x] * len(drops), drops, s=10, color="black", zorder=3)
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels([_mpl(v) for v in variants])
    ax.set_ylabel(_mpl(f"{task} accuracy drop under counter-steering"))
    ax.set_title(_mpl("counter-steering: drop by attacking vector (95% CI)"))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, title="vector", title_fontsize=8)
    return save_figure(fig, path)


def _stacking_panel(ax: Any, cells: Sequence[dict[str, Any]], metric: str, levels: list[str], multiplier: Any) -> None:
    """One panel of :func:`plot_stacking`: ``metric`` (``accuracy`` or ``margin``) at steering 0 and m."""
    palette = ("tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:cyan", "tab:olive", "tab:pink", "tab:red")
    tuned = [level for level in levels if level != "untuned"]
    colors = {"untuned": "tab:gray", **{level: palette[i % len(palette)] for i, level in enumerate(tuned)}}
    lines = [(level, prompt) for level in levels for prompt in ("none", "honest")]
    for k, (level, prompt) in enumerate(lines):
        mine = sorted((c for c in cells if _level(c) == level and c.get("prompt") == prompt and c.get(metric)), key=lambda c: bool(c.get("steered")))
        if not mine:
            continue
        offset = (k - (len(lines) - 1) / 2) * 0.03  # keep the CIs apart
        x = [float(bool(c.get("steered"))) + offset for c in mine]
        y = [num(c[metric].get("value")) for c in mine]
        low = [max(0.0, v - num(c[metric].get("ci_low"))) for v, c in zip(y, mine)]
        high = [max(0.0, num(c[metric].get("ci_high")) - v) for v, c in zip(y, mine)]
        ax.errorbar(x, y, yerr=[low, high], color=colors[level], ls="-" if prompt == "none" else "--", marker="o" if prompt == "none" else "s",
                    capsize=3, lw=1.5, label=_mpl(f"{level}, {'no system prompt' if prompt == 'none' else 'honest prompt'}"))
    ax.set_xticks([0.0, 1.0])
    ax.set_xticklabels(["unsteered", _mpl(f"steered x{fmt(multiplier, 'g')}")])
    ax.set_xlim(-0.4, 1.4)


def _level(cell: dict[str, Any]) -> str:
    return str(cell.get("weights")) if cell.get("seed") is None else f"{cell.get('weights')}:s{cell.get('seed')}"


def plot_stacking(cells: Sequence[dict[str, Any]], path: Path, task: str, multiplier: Any, continuous: str | None) -> Path:
    """The stacking study's interaction plot: accuracy (and the mean margin) unsteered vs steered, one line
    per weights level (colour) x prompt (solid: none, dashed: honest system prompt), 95% CIs. Parallel lines
    are additive; a flatter line under the prompt or the tuning is sub-additive."""
    plt = _pyplot()
    levels = list(dict.fromkeys(_level(c) for c in cells))
    panels = [("accuracy", f"{task} accuracy (Wilson 95% CI)")] + ([("margin", f"mean {continuous} (bootstrap 95% CI)")] if any(c.get("margin") for c in cells) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 2.4, 4.0), squeeze=False)
    for ax, (metric, ylabel) in zip(axes[0], panels):
        _stacking_panel(ax, cells, metric, levels, multiplier)
        ax.set_ylabel(_mpl(ylabel))
    axes[0][0].set_title(_mpl("prompt x steering x weights"))
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return save_figure(fig, path)


_GCG_COLORS = {"direct": "tab:red", "transfer": "tab:orange"}


def _gcg_bars(ax: Any, rows: Sequence[dict[str, Any]], levels: list[str], metric: str, base_metric: str) -> None:
    """One panel of :func:`plot_gcg`: ``metric`` per model, direct and transfer side by side, 95% CI whiskers,
    the unattacked value (``base_metric``) as a black tick on each bar."""
    for j, mode in enumerate(("direct", "transfer")):
        for i, level in enumerate(levels):
            row = next((r for r in rows if r.get("level") == level and r.get("mode") == mode), None)
            if row is None or not row.get(metric):
                continue
            x = i + (j - 0.5) * 0.38
            value = num(row[metric].get("value"))
            degenerate = bool(row.get("degenerate"))
            ax.bar([x], [value], width=0.36, color=_GCG_COLORS[mode], alpha=0.35 if degenerate else 0.9, hatch="//" if degenerate else None,
                   edgecolor="black", linewidth=0.5)
            low, high = num(row[metric].get("ci_low")), num(row[metric].get("ci_high"))
            if math.isfinite(low) and math.isfinite(high):
                ax.errorbar([x], [value], yerr=[[max(0.0, value - low)], [max(0.0, high - value)]], color="black", capsize=3, lw=1)
            if row.get(base_metric):
                ax.plot([x - 0.16, x + 0.16], [num(row[base_metric].get("value"))] * 2, color="black", lw=2)
    ax.set_xticks(range(len(levels)))
    ax.set_xticklabels([_mpl(level) for level in levels], rotation=20)


def plot_gcg(rows: Sequence[dict[str, Any]], path: Path, budget: dict[str, Any]) -> Path:
    """The gcg study: attack success rate (Wilson 95% CI) and target loss reached (bootstrap 95% CI) per model,
    the direct attack and the untuned model's suffixes transferred; black ticks: unattacked; hatched: degenerate."""
    plt = _pyplot()
    levels = list(dict.fromkeys(str(r.get("level")) for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(max(7.5, 1.4 * len(levels) * 2 + 2), 4.0))
    _gcg_bars(axes[0], rows, levels, "attack_success_rate", "base_success_rate")
    axes[0].set_ylim(0, 1.05)
    axes[0].set_ylabel("attack success rate (Wilson 95% CI)")
    _gcg_bars(axes[1], rows, levels, "mean_loss", "mean_base_loss")
    axes[1].set_ylabel("target loss reached, nats/token (95% CI)")
    axes[0].set_title(_mpl(f"GCG: {budget.get('steps')} steps x {budget.get('search_width')} candidates x {budget.get('suffix_length')} tokens"))
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=color, edgecolor="black", label=mode) for mode, color in _GCG_COLORS.items() if any(r.get("mode") == mode for r in rows)]
    axes[1].legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, title="black: unattacked\nhatched: degenerate",
                   title_fontsize=7)
    return save_figure(fig, path)


def plot_sample_efficiency(section: SampleEfficiency, path: Path) -> Path:
    """Held-out accuracy against training items n (log axis), one line per variant (mean over seeds), the
    95% band (envelope of the per-seed Wilson CIs), dots = seeds, the untuned model dashed, the target dotted."""
    plt = _pyplot()
    rows = section.rows or []
    fig, ax = plt.subplots(figsize=(6.8, 4.2))
    for index, variant in enumerate(section.variants or []):
        mine = sorted((r for r in rows if r.variant == variant), key=lambda r: num(r.n))
        if not mine:
            continue
        color = f"C{index % 10}"
        xs = [num(r.n) for r in mine]
        ax.plot(xs, [num(r.value) for r in mine], "o-", color=color, lw=1.8, label=_mpl(variant))
        ax.fill_between(xs, [num(r.ci_low) for r in mine], [num(r.ci_high) for r in mine], color=color, alpha=0.15, lw=0)
        shift = 1.0 + 0.03 * (index - 0.5)  # the variants' seed dots side by side, not on top of each other
        for r in mine:
            seeds = [num(v) for v in (r.per_seed or [])]
            if len(seeds) > 1:
                ax.scatter([num(r.n) * shift] * len(seeds), seeds, s=12, color=color, edgecolor="black", linewidth=0.4, zorder=3)
    untuned = section.untuned
    if untuned is not None and untuned.value is not None:
        ax.axhline(num(untuned.value), color="gray", lw=1.0, ls="--", label=_mpl(f"untuned ({fmt(untuned.value)})"))
    target = section.target
    if target is not None and target.value is not None:
        ax.axhline(num(target.value), color="black", lw=1.0, ls=":", label=_mpl(f"target ({fmt(target.value)})"))
    sizes = sorted({(num(r.n), str(r.size)) for r in rows})
    ax.set_xscale("log")
    ax.set_xticks([n for n, _ in sizes])
    ax.set_xticklabels([_mpl(f"all ({int(n)})" if size == "all" else size) for n, size in sizes], fontsize=8)
    ax.minorticks_off()
    unit = {"twin": "twins", "ab": "statements"}.get(str(section.item_kind), "items")
    ax.set_xlabel(_mpl(f"training items n ({unit}, log scale)"))
    ax.set_ylabel(_mpl(f"{given(section.task, '?')} accuracy (held-out)"))
    ax.set_title(_mpl(f"sample efficiency: {given(section.task, '?')} accuracy vs n (95% CI)"))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return save_figure(fig, path)


def plot_generalisation(rows: Sequence[Any], path: Path, task: str, labels: dict[str, str]) -> Path:
    """Per variant, the gain over the untuned model on each item set (bars: mean over seeds; whiskers:
    the per-seed 95% CIs' envelope; dots: seeds; diamonds: the main model trained on every topic and
    item, on the same items). 0 = the untuned model."""
    plt = _pyplot()
    variants = list(dict.fromkeys(str(r.variant) for r in rows))
    sets = [s for s in labels if any(str(r.set) == s for r in rows)]
    width = 0.8 / max(1, len(sets))
    fig, ax = plt.subplots(figsize=(max(6.5, 1.1 * len(variants) * max(1, len(sets)) / 2 + 4.5), 4.0))
    for j, name in enumerate(sets):
        for i, variant in enumerate(variants):
            mine = [r for r in rows if str(r.variant) == variant and str(r.set) == name and r.gain is not None]
            if not mine:
                continue
            x = i + (j - (len(sets) - 1) / 2) * width
            gains = [float(r.gain) for r in mine]
            mean = sum(gains) / len(gains)
            ax.bar([x], [mean], width=width * 0.95, color=f"C{j % 10}", edgecolor="black", linewidth=0.5, label=_mpl(labels[name]) if i == 0 else None)
            lows = [float(r.gain_low) for r in mine if r.gain_low is not None]
            highs = [float(r.gain_high) for r in mine if r.gain_high is not None]
            if lows and highs:
                ax.errorbar([x], [mean], yerr=[[max(0.0, mean - min(lows))], [max(0.0, max(highs) - mean)]], color="black", capsize=3, lw=1)
            if len(gains) > 1:
                ax.scatter([x] * len(gains), gains, s=10, color="black", zorder=3)
            refs = [float(r.reference_gain) for r in mine if r.reference_gain is not None]
            if refs:
                ax.scatter([x], [sum(refs) / len(refs)], marker="D", s=22, facecolor="white", edgecolor="black", zorder=4,
                           label="main model (all topics and items)" if i == 0 and j == 0 else None)
    ax.axhline(0.0, color="gray", lw=0.8, ls="--")
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels([_mpl(v) for v in variants])
    ax.set_ylabel(_mpl(f"gain over untuned ({task} accuracy)"))
    ax.set_title(_mpl("generalisation: gain over untuned\nper item set (95% CI)"), fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return save_figure(fig, path)
