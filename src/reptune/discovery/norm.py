"""Norm tuning: each found direction's effect over a grid of radii.

Meaningful vectors need not share one norm. For every direction ``u`` (unit) and every radius
``R`` of a grid (sorted ascending), :func:`norm_curves` measures ``theta = R u``:

* ``objective``: the MELBO objective on the slice (cheap, no generation);
* with scoring, on the evaluation prompts (greedy, as :func:`reptune.discovery.scoring.score_vectors`):
  ``diverge``, ``logit_shift`` (with logit tokens), ``match``, ``judge``, and ``degenerate``: the
  fraction of completions that are empty or repetitive (distinct-token share below
  :data:`DEGENERATE_DISTINCT`);
* ``appear_radius``: the smallest R at which the behaviour signal (judge, else match, else
  logit shift, else diverge; each relative to the unsteered value) reaches half of its largest
  rise over the grid (the half-effect radius; ``None`` if it never rises);
* ``degenerate_radius``: the smallest R at which at least half the completions degenerate
  (and more than unsteered); ``None`` if none does;
* ``best_radius``: the R with the strongest behaviour signal below ``degenerate_radius``;
* ``growth``: an unsupervised per-dimension growth statistic. With ``r(R)`` the mean change of
  the target layer over the selected positions (``[hidden]``) and the finite-difference
  derivatives ``D_j = (r(R_j) - r(R_{j-1})) / (R_j - R_{j-1})`` (``r(0) = 0``), each normalised to
  unit length, ``growth = sqrt(sum_d Var_j(D_j[d] / ||D_j||))`` in ``[0, 1]``: 0 when every
  dimension of the response grows in proportion (a linear or uniformly saturating response),
  larger when dimensions grow or shrink unevenly as R changes.

Everything is deterministic given the vectors (statistics in float64).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from reptune.discovery.common import DiscoveryError
from reptune.discovery.melbo import total_objective
from reptune.discovery.scoring import CompletionScorer, score_vectors
from reptune.discovery.slice import LayerSlice
from reptune.models import ModelHandle

DEGENERATE_DISTINCT = 0.3
DEFAULT_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass
class NormCurve:
    """One direction's effect over the radius grid (lists in grid order, ascending R)."""

    index: int
    radii: list[float]
    objective: list[float]
    growth: float
    signal: str | None = None
    curves: dict[str, list[float]] = field(default_factory=dict)
    appear_radius: float | None = None
    degenerate_radius: float | None = None
    best_radius: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_grid(radii: Sequence[float]) -> list[float]:
    """A radius grid: finite values > 0, no duplicates; returned sorted ascending."""
    values = list(radii)
    if not values:
        raise DiscoveryError("the radius grid is empty")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)) or float(value) <= 0:
            raise DiscoveryError(f"radius grid values must be finite numbers > 0, got {value!r}")
    grid = sorted(float(value) for value in values)
    if len(set(grid)) != len(grid):
        raise DiscoveryError(f"the radius grid repeats a value: {grid}")
    return grid


def default_grid(radius: float) -> list[float]:
    """``radius`` times :data:`DEFAULT_FACTORS` (1/4 .. 8)."""
    return [radius * factor for factor in DEFAULT_FACTORS]


def parse_grid(text: str) -> list[float]:
    """``"0.5,1,2,4"`` into a checked grid."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise DiscoveryError(f"radius grid must be numbers separated by commas, got {text!r}") from None
    return check_grid(values)


def mean_response(slices: Sequence[LayerSlice], theta: torch.Tensor) -> torch.Tensor:
    """Mean target-layer change over prompts and selected positions, ``[k, hidden]`` float64."""
    with torch.no_grad():
        total = sum((piece.mean_delta_sum(theta.to(piece.device)).double().cpu() for piece in slices), torch.zeros(theta.shape[0], theta.shape[1], dtype=torch.float64))
    return total / sum(piece.num_prompts for piece in slices)


def growth_statistic(responses: torch.Tensor, radii: Sequence[float]) -> float:
    """Dispersion of the normalised response derivative over the grid (see the module docstring).

    Args:
        responses: ``[n, hidden]`` mean response at each radius (ascending).
        radii: the ``n`` radii.
    """
    wide = responses.double()
    steps = torch.tensor([0.0, *radii], dtype=torch.float64)
    previous = torch.cat([torch.zeros(1, wide.shape[1], dtype=torch.float64), wide[:-1]])
    derivative = (wide - previous) / (steps[1:] - steps[:-1]).unsqueeze(1)
    norms = derivative.norm(dim=-1, keepdim=True)
    if bool((norms == 0).all()) or derivative.shape[0] < 2:
        return 0.0
    units = derivative / norms.clamp_min(1e-300)
    return float(units.var(dim=0, unbiased=False).sum().sqrt())


def _degenerate_rate(tokenizer: Any, completions: Sequence[str]) -> float:
    bad = 0
    for text in completions:
        ids = tokenizer.encode(text, add_special_tokens=False) if text.strip() else []
        bad += (not ids) or (len(ids) >= 4 and len(set(ids)) / len(ids) < DEGENERATE_DISTINCT)
    return bad / max(1, len(completions))


def _first_at(radii: Sequence[float], values: Sequence[float], level: float) -> float | None:
    return next((radius for radius, value in zip(radii, values) if value >= level), None)


def norm_curves(
    slices: Sequence[LayerSlice],
    vectors: torch.Tensor,
    radii: Sequence[float],
    *,
    p: float = 2.0,
    q: float = 1.0,
    handle: ModelHandle | None = None,
    layer: int | None = None,
    prompts: Sequence[str] | None = None,
    chat: bool = True,
    max_new_tokens: int = 16,
    diverge_within: int = 8,
    logit_tokens: tuple[str, str] | None = None,
    match: Sequence[str] = (),
    judge: CompletionScorer | None = None,
) -> list[NormCurve]:
    """The effect of each row's direction of ``vectors`` ``[k, hidden]`` over ``radii``.

    Scoring (``diverge``, readouts, judge, ``degenerate``) runs when ``handle``, ``layer`` and
    ``prompts`` are given: ``k * len(radii)`` greedy generations plus one unsteered.

    Raises:
        DiscoveryError: an empty grid, a non-positive, non-finite or repeated radius, a zero vector.
    """
    grid = check_grid(radii)
    vectors = torch.as_tensor(vectors, dtype=torch.float32).detach().cpu().reshape(-1, slices[0].hidden_size)
    norms = vectors.double().norm(dim=-1)
    if bool((norms == 0).any()):
        raise DiscoveryError("norm tuning needs non-zero vectors")
    units = (vectors.double() / norms.unsqueeze(1)).float()
    scaled = torch.stack([units * radius for radius in grid], dim=1)  # [k, n, hidden]
    flat = scaled.reshape(-1, scaled.shape[-1])
    objective = total_objective(slices, flat.to(slices[0].device), p, q).double().reshape(len(units), len(grid))
    responses = mean_response(slices, flat).reshape(len(units), len(grid), -1)
    curves = [NormCurve(index=i, radii=grid, objective=objective[i].tolist(), growth=growth_statistic(responses[i], grid)) for i in range(len(units))]
    if handle is not None and layer is not None and prompts:
        _score_curves(curves, handle, layer, prompts, flat, chat=chat, max_new_tokens=max_new_tokens, diverge_within=diverge_within,
                      logit_tokens=logit_tokens, match=match, judge=judge)
    return curves


def _score_curves(curves: list[NormCurve], handle: ModelHandle, layer: int, prompts: Sequence[str], flat: torch.Tensor, **options: Any) -> None:
    baseline, scores = score_vectors(handle, flat, layer, prompts, **options)
    n = len(curves[0].radii)
    base_degenerate = _degenerate_rate(handle.tokenizer, baseline.completions)
    for curve in curves:
        rows = scores[curve.index * n : (curve.index + 1) * n]
        curve.curves["diverge"] = [row.diverge for row in rows]
        curve.curves["degenerate"] = [_degenerate_rate(handle.tokenizer, row.completions) for row in rows]
        signal, rise = "diverge", list(curve.curves["diverge"])
        if options.get("logit_tokens") is not None:
            curve.curves["logit_shift"] = [float(row.logit_shift or 0.0) for row in rows]
            signal, rise = "logit_shift", list(curve.curves["logit_shift"])
        if options.get("match"):
            curve.curves["match"] = [float(row.match or 0.0) for row in rows]
            signal, rise = "match", [value - float(baseline.match or 0.0) for value in curve.curves["match"]]
        if options.get("judge") is not None:
            curve.curves["judge"] = [float(row.judge) if row.judge is not None else float("nan") for row in rows]
            signal, rise = "judge", [value - float(baseline.judge or 0.0) for value in curve.curves["judge"]]
        curve.signal = signal
        curve.degenerate_radius = next(
            (r for r, value in zip(curve.radii, curve.curves["degenerate"]) if value >= 0.5 and value > base_degenerate), None
        )
        finite = [value for value in rise if math.isfinite(value)]
        peak = max(finite) if finite else 0.0
        if peak > 0:
            curve.appear_radius = _first_at(curve.radii, [v if math.isfinite(v) else -math.inf for v in rise], peak / 2)
            usable = [(value, r) for r, value in zip(curve.radii, rise)
                      if math.isfinite(value) and (curve.degenerate_radius is None or r < curve.degenerate_radius)]
            if usable:
                best = max(value for value, _ in usable)
                curve.best_radius = next(r for value, r in usable if value == best)
