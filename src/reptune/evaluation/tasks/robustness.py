"""Robustness grid: a task under layers x multipliers of (counter-)steering with a vector.

For every (layer, multiplier) cell, :func:`run_robustness` steers the model (tuned or not) with
the vector at that single layer with that multiplier (:func:`reptune.steering.steer`, every
token) and runs the task on the same items (loaded once). Each cell records the task's primary
metric with its CI, and ``same_letter_rate``: the share of the most common answer letter among
the parsed answers (tasks whose records carry ``answer``: the A/B tasks, ``mmlu``, ``caa``,
multiple-choice ``lm-eval`` tasks; ``None`` for other tasks, which are never degenerate). A cell
is **degenerate** when ``same_letter_rate > degenerate_threshold`` (0.9): the model answers
(nearly) everything with one letter, so its accuracy says nothing about honesty.

Multiplier 0 is the unsteered model, the same for every layer: it is run once and reused.
The direction steered at layer L is the vector's own layer L, else its nearest layer (ties:
lower; see :func:`reptune.evaluation.tasks.base.direction_at`), recorded as ``vector_layers``.

The ``robustness`` task runs the grid from ``reptune eval --vector V --tasks robustness`` (options
``task``, ``layers``, ``multipliers``, ``degenerate_threshold``, ``data`` and ``task_options`` for the
inner task; ``--limit`` limits the inner task's items); ``-o R.json`` also writes the heatmap
``R.robustness.png``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from reptune._io import sha256_json
from reptune.errors import ReptuneError
from reptune.evaluation.registry import RunContext, Task, TaskResult, get_task
from reptune.evaluation.statistics import mean_metric, proportion_metric
from reptune.evaluation.tasks.base import direction_at, vector_directions
from reptune.models import ModelHandle
from reptune.sites import parse_layers

DEGENERATE_THRESHOLD = 0.9
DEFAULT_MULTIPLIERS = "-8,-4,-2,0,2,4,8"


def same_letter_rate(records: Sequence[dict[str, Any]]) -> float | None:
    """Share of the most common ``answer`` among the parsed answers (``None``: no letters)."""
    if not any("answer" in record for record in records):
        return None
    answers = [record["answer"] for record in records if record.get("answer") is not None]
    if not answers:
        return None
    return Counter(answers).most_common(1)[0][1] / len(answers)


@dataclass
class RobustnessCell:
    """One (layer, multiplier) cell: the primary metric with its CI and the degeneracy check."""

    layer: int
    multiplier: float
    value: float
    ci_low: float | None
    ci_high: float | None
    n: int
    same_letter_rate: float | None
    degenerate: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer, "multiplier": self.multiplier, "value": _num(self.value), "ci_low": _num(self.ci_low),
            "ci_high": _num(self.ci_high), "n": self.n, "same_letter_rate": self.same_letter_rate, "degenerate": self.degenerate,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RobustnessCell:
        return cls(
            layer=int(data["layer"]), multiplier=float(data["multiplier"]),
            value=math.nan if data.get("value") is None else float(data["value"]),
            ci_low=data.get("ci_low"), ci_high=data.get("ci_high"), n=int(data.get("n", 0)),
            same_letter_rate=data.get("same_letter_rate"), degenerate=bool(data.get("degenerate", False)),
        )


def _num(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


@dataclass
class RobustnessResult:
    """A robustness grid; ``task_results`` (not serialised) keeps each cell's full :class:`TaskResult`."""

    task: str
    metric: str
    layers: list[int]
    multipliers: list[float]
    cells: list[RobustnessCell]
    degenerate_threshold: float = DEGENERATE_THRESHOLD
    vector_layers: list[int] = field(default_factory=list)
    task_results: dict[tuple[int, float], TaskResult] = field(default_factory=dict, repr=False)

    def cell(self, layer: int, multiplier: float) -> RobustnessCell:
        for cell in self.cells:
            if cell.layer == layer and cell.multiplier == float(multiplier):
                return cell
        raise KeyError((layer, multiplier))

    def grid(self) -> np.ndarray:
        """``[len(layers), len(multipliers)]`` metric values (NaN where missing)."""
        out = np.full((len(self.layers), len(self.multipliers)), np.nan)
        for cell in self.cells:
            out[self.layers.index(cell.layer), self.multipliers.index(cell.multiplier)] = cell.value
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task, "metric": self.metric, "layers": list(self.layers), "multipliers": list(self.multipliers),
            "degenerate_threshold": self.degenerate_threshold, "vector_layers": list(self.vector_layers),
            "cells": [cell.to_json() for cell in self.cells],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RobustnessResult:
        try:
            return cls(
                task=data["task"], metric=data["metric"], layers=[int(x) for x in data["layers"]],
                multipliers=[float(x) for x in data["multipliers"]], cells=[RobustnessCell.from_json(c) for c in data["cells"]],
                degenerate_threshold=float(data.get("degenerate_threshold", DEGENERATE_THRESHOLD)),
                vector_layers=[int(x) for x in data.get("vector_layers", [])],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ReptuneError(f"malformed robustness result: {exc}") from None

    def to_markdown(self) -> str:
        """The grid as a Markdown table (rows: layers; ``×`` marks degenerate cells)."""
        head = "| layer | " + " | ".join(f"x{m:g}" for m in self.multipliers) + " |"
        lines = [head, "|---:|" + "---:|" * len(self.multipliers)]
        for layer in self.layers:
            row = []
            for multiplier in self.multipliers:
                cell = self.cell(layer, multiplier)
                row.append(("-" if math.isnan(cell.value) else f"{cell.value:.3f}") + (" ×" if cell.degenerate else ""))
            lines.append(f"| {layer} | " + " | ".join(row) + " |")
        lines.append("")
        lines.append(f"{self.task}, {self.metric}; × = degenerate (> {self.degenerate_threshold:.0%} of answers the same letter).")
        return "\n".join(lines) + "\n"


def parse_multipliers(spec: str | Sequence[float]) -> list[float]:
    """``"-8,-4,0"`` (or numbers) into distinct finite floats, in the given order."""
    items = [part for part in spec.replace(";", ",").split(",") if part.strip()] if isinstance(spec, str) else list(spec)
    try:
        values = [float(item) for item in items]
    except (TypeError, ValueError):
        raise ReptuneError(f"multipliers must be numbers like -8,-4,0, got {spec!r}") from None
    if not values:
        raise ReptuneError("give at least one multiplier")
    if not all(math.isfinite(v) for v in values):
        raise ReptuneError("multipliers must be finite")
    if len(set(values)) != len(values):
        raise ReptuneError(f"a multiplier is listed twice: {spec!r}")
    return values


def _cell(result: TaskResult, layer: int, multiplier: float, threshold: float) -> RobustnessCell:
    metric = result.metrics[result.primary]
    rate = same_letter_rate(result.records)
    return RobustnessCell(
        layer=layer, multiplier=float(multiplier), value=float(metric["value"]), ci_low=_num(metric.get("ci_low")),
        ci_high=_num(metric.get("ci_high")), n=int(metric.get("n", len(result.records))), same_letter_rate=rate,
        degenerate=rate is not None and rate > threshold,
    )


def _run_cell(
    handle: ModelHandle, task: Task, prepared: tuple[list[dict[str, Any]], str, str], directions: dict[int, Any],
    layer: int, multiplier: float, *, limit: int | None, batch_size: int, seed: int,
) -> TaskResult:
    """The task with the vector's direction for ``layer`` added at ``layer`` x ``multiplier`` (0: unsteered)."""
    from reptune.steering import steer

    if multiplier == 0:
        return task.run(handle, limit=limit, batch_size=batch_size, seed=seed, context=RunContext(), prepared=prepared)
    _, direction = direction_at(directions, layer)
    with steer(handle, {layer: direction}, multiplier=float(multiplier)) as steering:
        return task.run(handle, limit=limit, batch_size=batch_size, seed=seed, context=RunContext(steering=steering), prepared=prepared)


def _inner_task(task: str | Task) -> Task:
    inner = get_task(task) if isinstance(task, str) else task
    if inner.uses_vector:
        raise ReptuneError(f"robustness cannot run {inner.full_name}, which uses the vector itself")
    return inner


def run_robustness(
    handle: ModelHandle,
    vector: Any,
    task: str | Task,
    layers: Sequence[int] | str,
    multipliers: Sequence[float] | str,
    *,
    limit: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = False,
    degenerate_threshold: float = DEGENERATE_THRESHOLD,
    allow_model_mismatch: bool = True,
) -> RobustnessResult:
    """Run ``task`` under every (layer, multiplier) of steering with ``vector``.

    Args:
        vector: a :class:`~reptune.vectors.SteeringVector` or ``{layer: tensor}``.
        task: a task name (``"facts-ab"``) or a built :class:`Task` (with options).
        layers: the layers to steer at, one per grid row (a list or a layer spec).
        multipliers: one per grid column; negative values counter-steer; 0 is the unsteered
            model (run once, shared by every layer).
        limit: at most this many items of the task (the same items in every cell).
        degenerate_threshold: a cell is degenerate when more than this share of its parsed
            answers is the same letter.
        allow_model_mismatch: accept a vector made for another model id (the usual case: a
            tuned copy of the vector's model); hidden size and layer count are always checked.

    Returns:
        :class:`RobustnessResult` (cells in layer-major order).
    """
    from reptune._progress import progress_bar

    if not 0.0 <= degenerate_threshold <= 1.0:
        raise ReptuneError(f"degenerate_threshold must be in [0, 1], got {degenerate_threshold}")
    if limit is not None and limit < 1:
        raise ReptuneError(f"--limit must be at least 1, got {limit}")
    directions = vector_directions(vector, handle, allow_model_mismatch=allow_model_mismatch)
    layer_list = parse_layers(layers, handle.num_layers)
    values = parse_multipliers(multipliers)
    inner = _inner_task(task)
    prepared = inner.load_items(handle, limit)
    by_cell: dict[tuple[int, float], TaskResult] = {}
    cells: list[RobustnessCell] = []
    baseline: TaskResult | None = None
    with progress_bar(f"robustness {inner.full_name}", total=len(layer_list) * len(values), enabled=progress) as advance:
        for layer in layer_list:
            for multiplier in values:
                if multiplier == 0 and baseline is not None:
                    result = baseline
                else:
                    result = _run_cell(handle, inner, prepared, directions, layer, multiplier, limit=limit, batch_size=batch_size, seed=seed)
                    if multiplier == 0:
                        baseline = result
                by_cell[(layer, multiplier)] = result
                cells.append(_cell(result, layer, multiplier, degenerate_threshold))
                advance(1)
    first = next(iter(by_cell.values()))
    return RobustnessResult(
        task=inner.full_name, metric=first.primary, layers=layer_list, multipliers=values, cells=cells,
        degenerate_threshold=degenerate_threshold, vector_layers=[direction_at(directions, layer)[0] for layer in layer_list],
        task_results=by_cell,
    )


class Robustness(Task):
    """``reptune eval --vector V --tasks robustness``: the grid as a task; items are the grid cells.

    Each record is a cell (``id`` ``L<layer>/x<multiplier>``) with the grid fields, all the inner
    task's metrics and (``records=true``) its per-item records; ``details`` holds
    :meth:`RobustnessResult.to_json`. Resuming works cell by cell.
    """

    name = "robustness"
    description = "a task under a grid of layers x multipliers of steering with --vector; degenerate cells (>90% one letter) flagged"
    primary = "mean_value"
    binary_key = None
    continuous_key = "value"
    uses_vector = True
    chunk_items = 1
    counts_items = False  # its items are grid cells: each cell's inner run counts the items it scored
    defaults: ClassVar[dict[str, Any]] = {
        "task": "facts-ab", "layers": "", "multipliers": DEFAULT_MULTIPLIERS, "degenerate_threshold": DEGENERATE_THRESHOLD,
        "data": "", "task_options": "", "records": True,
    }

    def chunk_size(self, batch_size: int) -> int:
        return 1  # a cell is a whole run of the inner task: checkpoint every one

    def _build_inner(self) -> Task:
        options: dict[str, str] = {}
        for part in str(self.options["task_options"]).split(";"):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise ReptuneError(f"robustness.task_options expects KEY=VALUE;KEY=VALUE, got {part!r}")
            options[key.strip()] = value.strip()
        if self.options["data"]:
            options["data"] = self.options["data"]
        inner = get_task(self.options["task"], **options)
        return _inner_task(inner)

    def load_items(self, handle: ModelHandle, limit: int | None) -> tuple[list[dict[str, Any]], str, str]:
        threshold = float(self.options["degenerate_threshold"])
        if not 0.0 <= threshold <= 1.0:
            raise ReptuneError(f"robustness.degenerate_threshold must be in [0, 1], got {threshold}")
        self._inner = self._build_inner()
        self._multipliers = parse_multipliers(self.options["multipliers"])
        self._layer_spec = self.options["layers"] or None
        if self._layer_spec is not None:
            parse_layers(self._layer_spec, handle.num_layers)
        self._limit = limit
        self._prepared = self._inner.load_items(handle, limit)
        _, origin, digest = self._prepared
        self._data_hash = sha256_json({"inner": self._inner.fingerprint(handle, digest), "limit": limit})
        # the cells are known once the layers are (they may come from the vector): see run()
        return [], origin, self._data_hash

    def run(self, handle: ModelHandle, *, limit: int | None = None, context: RunContext | None = None,
            prepared: tuple[list[dict[str, Any]], str, str] | None = None, **kwargs: Any) -> TaskResult:
        """Run the grid; ``limit`` limits the inner task's items (not the cells)."""
        context = context or RunContext()
        if context.vector is None:
            raise ReptuneError("task robustness needs a vector (--vector)")
        if prepared is None or getattr(self, "_limit", "unset") != limit:
            prepared = self.load_items(handle, limit)
        directions = vector_directions(context.vector, handle, allow_model_mismatch=True)
        if self._layer_spec is not None:
            layers = parse_layers(self._layer_spec, handle.num_layers)
        elif context.layers:
            layers = list(context.layers)
        else:
            layers = sorted(directions)
        self._directions = directions
        self._layers = layers
        self._vector_layers = [direction_at(directions, layer)[0] for layer in layers]
        self._baseline: TaskResult | None = None
        self._seed = int(kwargs.get("seed", 0))
        cells = [{"id": _cell_id(layer, m), "layer": layer, "multiplier": m} for layer in layers for m in self._multipliers]
        result = super().run(handle, limit=None, context=context, prepared=(cells, prepared[1], prepared[2]), **kwargs)
        result.limit = limit
        return result

    def score(self, handle: ModelHandle, items: Sequence[dict[str, Any]], *, batch_size: int, context: RunContext, advance: Callable[[int], None]) -> list[dict[str, Any]]:
        records = []
        threshold = float(self.options["degenerate_threshold"])
        for item in items:
            layer, multiplier = int(item["layer"]), float(item["multiplier"])
            if multiplier == 0 and self._baseline is not None:
                result = self._baseline
            else:
                result = _run_cell(handle, self._inner, self._prepared, self._directions, layer, multiplier,
                                   limit=self._limit, batch_size=batch_size, seed=self._seed)
                if multiplier == 0:
                    self._baseline = result
            record = _cell(result, layer, multiplier, threshold).to_json()
            record["vector_layer"] = direction_at(self._directions, layer)[0]
            record["metric"] = result.primary
            record["metrics"] = result.metrics
            if self.options["records"]:
                record["records"] = result.records
            records.append(record)
            advance(1)
        return records

    def summarize(self, records: Sequence[dict[str, Any]], seed: int) -> dict[str, dict[str, Any]]:
        values = [r["value"] for r in records if r.get("value") is not None]
        usable = [r["value"] for r in records if r.get("value") is not None and not r["degenerate"]]
        checked = [r for r in records if r.get("same_letter_rate") is not None]
        metrics = {
            "mean_value": mean_metric(values, seed=seed),
            "mean_value_non_degenerate": mean_metric(usable, seed=seed),
            "degenerate_rate": proportion_metric(sum(bool(r["degenerate"]) for r in checked), len(checked)),
        }
        zero = [r for r in records if float(r["multiplier"]) == 0]
        if zero:
            metric = zero[0]["metrics"][zero[0]["metric"]]
            metrics["baseline"] = {"value": metric["value"], "ci_low": metric.get("ci_low"), "ci_high": metric.get("ci_high"), "n": metric.get("n"), "ci": metric.get("ci")}
        return metrics

    def details(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        layers = sorted({int(r["layer"]) for r in records})
        multipliers = list(dict.fromkeys(float(r["multiplier"]) for r in records))
        by_layer = {int(r["layer"]): int(r.get("vector_layer", r["layer"])) for r in records}
        result = RobustnessResult(
            task=self._inner.full_name, metric=records[0]["metric"] if records else "", layers=layers, multipliers=multipliers,
            cells=[RobustnessCell.from_json(r) for r in records], degenerate_threshold=float(self.options["degenerate_threshold"]),
            vector_layers=[by_layer[layer] for layer in layers],
        )
        return result.to_json()

def _cell_id(layer: int, multiplier: float) -> str:
    return f"L{layer}/x{multiplier:g}"
