"""Random baselines and search: norm-matched random vectors, a log-grid sweep over R, random search.

Every learned vector should be compared with what chance gives at the same norm: a
random direction of norm ``R`` already changes the target layer, and at a large enough ``R``
any vector breaks the model. :func:`random_vectors` draws norm-matched (optionally
orthogonal) random vectors from a per-call generator, :func:`sweep_radius` scores random
vectors on a logarithmic grid of radii (the MELBO objective and the slice's
nonlinear/linear response ratio, see :mod:`reptune.discovery.dct`), and
:func:`random_search` keeps the best of many random candidates and can polish them with a
few local MELBO steps ("search around promising vectors", :func:`reptune.discovery.melbo.local_search`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from reptune.discovery.common import (
    DiscoveryError,
    check_count,
    check_orthogonal_room,
    check_radius,
    gram_schmidt,
    make_generator,
    orthonormal_basis,
    random_directions,
    to_radius,
)
from reptune.discovery.melbo import PAPER_LR, MelboRun, total_objective, train_melbo
from reptune.discovery.slice import LayerSlice


def random_vectors(
    hidden_size: int,
    num: int,
    radius: float,
    *,
    orthogonal: bool = False,
    orthogonal_to: torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """``[num, hidden_size]`` float32 Gaussian directions scaled to norm ``radius``.

    Args:
        orthogonal: orthogonalise them (in order) against each other.
        orthogonal_to: ``[e, hidden]`` vectors they must all be orthogonal to.
        seed: seeds this call's own generator.
    """
    radius = check_radius(radius)
    num = check_count(num, "number of vectors")
    fixed = orthonormal_basis(orthogonal_to, hidden_size)
    if orthogonal or fixed.shape[0]:
        check_orthogonal_room(num if orthogonal else 1, hidden_size, fixed.shape[0])
    rows = random_directions(num, hidden_size, make_generator(seed))
    if orthogonal:
        rows = gram_schmidt(rows, fixed)
    elif fixed.shape[0]:
        rows = rows - (rows @ fixed.T) @ fixed
    return to_radius(rows, radius)


def log_grid(low: float, high: float, points: int) -> list[float]:
    """``points`` radii evenly spaced in log scale from ``low`` to ``high`` (inclusive)."""
    low, high = check_radius(low), check_radius(high)
    if high < low:
        raise DiscoveryError(f"radius grid runs backwards: {low} > {high}")
    if points < 2:
        return [low]
    step = (math.log(high) - math.log(low)) / (points - 1)
    return [math.exp(math.log(low) + index * step) for index in range(points)]


def objective_batched(slices: Sequence[LayerSlice], vectors: torch.Tensor, *, p: float = 2.0, q: float = 1.0, batch: int = 16) -> torch.Tensor:
    """MELBO objective ``[n]`` of ``n`` fixed vectors, ``batch`` vectors per replay."""
    device = slices[0].device
    out = [total_objective(slices, vectors[i : i + batch].to(device), p, q) for i in range(0, vectors.shape[0], batch)]
    return torch.cat(out) if out else torch.zeros(0)


@dataclass
class RadiusSweep:
    """Random vectors scored on a log grid of radii (rows: one dict per radius)."""

    rows: list[dict[str, float]] = field(default_factory=list)

    def markdown(self) -> str:
        lines = ["| R | objective mean | objective max | objective / R^2 | nonlinear / linear |", "|---:|---:|---:|---:|---:|"]
        for row in self.rows:
            ratio = row.get("ratio")
            lines.append(
                f"| {row['radius']:.4g} | {row['objective_mean']:.4g} | {row['objective_max']:.4g} | "
                f"{row['objective_mean'] / row['radius'] ** 2:.4g} | {'-' if ratio is None else f'{ratio:.3f}'} |"
            )
        return "\n".join(lines) + "\n"


def sweep_radius(
    slices: Sequence[LayerSlice],
    radii: Sequence[float] | None = None,
    *,
    num: int = 8,
    low: float | None = None,
    high: float | None = None,
    points: int = 9,
    p: float = 2.0,
    q: float = 1.0,
    with_ratio: bool = True,
    seed: int = 0,
) -> RadiusSweep:
    """Score ``num`` random unit directions scaled to each radius of a log grid.

    Default grid: ``points`` radii from 1/16 to 4 times the mean source-activation norm.
    Each row holds the mean and max MELBO objective and (``with_ratio``) the slice's
    nonlinear/linear response ratio at that radius (:func:`reptune.discovery.dct.response_ratio`).
    """
    from reptune.discovery.dct import linear_response, response_ratio

    num = check_count(num, "number of random vectors")
    if radii is None:
        scale = max(slices[0].source_norm(), 1e-6)
        radii = log_grid(low or scale / 16, high or scale * 4, points)
    units = random_vectors(slices[0].hidden_size, num, 1.0, seed=seed)
    linear = linear_response(slices, units) if with_ratio else None
    sweep = RadiusSweep()
    for radius in radii:
        radius = check_radius(radius)
        values = objective_batched(slices, units * radius, p=p, q=q)
        row = {"radius": radius, "objective_mean": float(values.mean()), "objective_max": float(values.max())}
        if linear is not None:
            row["ratio"] = response_ratio(slices, units, linear, radius)
        sweep.rows.append(row)
    return sweep


def random_search(
    slices: Sequence[LayerSlice],
    num: int,
    radius: float,
    *,
    candidates: int | None = None,
    orthogonal: bool = False,
    orthogonal_to: torch.Tensor | None = None,
    orthogonal_order: str = "sequential",
    refine_steps: int = 0,
    lr: float = PAPER_LR,
    p: float = 2.0,
    q: float = 1.0,
    seed: int = 0,
    progress: bool = False,
) -> MelboRun:
    """The best ``num`` of ``candidates`` random vectors of norm ``radius`` by the MELBO
    objective, optionally refined by ``refine_steps`` local MELBO steps each.

    ``candidates`` defaults to ``num`` (plain norm-matched random vectors, the baseline).
    ``orthogonal_order`` is the order of the refinement (:func:`reptune.discovery.melbo.train_melbo`).
    Returns a :class:`MelboRun` (``steps`` = refine steps; ``history`` empty without refinement).
    """
    radius = check_radius(radius)
    num = check_count(num, "number of vectors")
    candidates = num if candidates is None else check_count(candidates, "candidates")
    if candidates < num:
        raise DiscoveryError(f"candidates ({candidates}) must be at least the number of vectors ({num})")
    started = time.perf_counter()
    pool = random_vectors(slices[0].hidden_size, candidates, radius, orthogonal=orthogonal, orthogonal_to=orthogonal_to, seed=seed)
    scores = objective_batched(slices, pool, p=p, q=q)
    order = torch.argsort(scores, descending=True)[:num]
    chosen, chosen_scores = pool[order], scores[order]
    if refine_steps > 0:
        run = train_melbo(
            slices, num, radius, steps=refine_steps, lr=lr, p=p, q=q, orthogonal=orthogonal, orthogonal_order=orthogonal_order,
            orthogonal_to=orthogonal_to, init=chosen, seed=seed, progress=progress,
        )
        run.settings.update({"candidates": candidates, "refine_steps": refine_steps, "candidate_objective": chosen_scores.tolist()})
        run.seconds = time.perf_counter() - started
        return run
    return MelboRun(
        vectors=chosen, objective=chosen_scores, history=torch.zeros(0, num), radius=radius, steps=0, lr=lr, p=p, q=q,
        orthogonal=orthogonal, seed=seed, seconds=time.perf_counter() - started,
        settings={"candidates": candidates, "refine_steps": 0},
    )
