"""Ensemble search with output ratings: CMA-ES over directions in a chosen subspace.

With a judge, a logit readout or a string match as the objective, discovery can search without
gradients. :func:`cmaes_search` runs CMA-ES (the ``cmaes`` package, ``pip install reptune[search]``)
over coordinates ``z`` in a subspace with orthonormal basis ``B`` (``[d, hidden]``), each candidate
being the vector ``theta = R * normalise(z B)``, so every vector has norm exactly ``R`` and CMA-ES
sees a scale-free problem. Subspaces (:func:`subspace_basis`):

* ``span``: the span of given vectors (e.g. the top vectors found by MELBO, random search or DCT);
* ``pca``: the top ``d`` principal axes of the slice's source-layer activations (real tokens);
* ``full``: the whole hidden space.

The budget is counted in objective evaluations (vectors scored; the objective also counts forward
passes and judge calls); it must cover at least one population. ``num`` vectors come from ``num``
independent runs (seeds ``seed + i``, the budget split evenly). NaN scores are invalid: CMA-ES is
told the worst valid score of the run (so it moves away from them), and they are counted in
``invalid`` and never returned as a result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from reptune.discovery.common import DiscoveryError, check_count, check_radius, make_generator, orthonormal_basis
from reptune.discovery.objectives import Objective, as_objective
from reptune.discovery.slice import LayerSlice

SUBSPACES = ("span", "pca", "full")


@dataclass
class EnsembleRun:
    """Result of :func:`cmaes_search`: ``vectors`` ``[num, hidden]`` (norm ``radius``), their
    ``scores`` ``[num]``, the best valid score per generation of each run (``history``), the budget
    spent (``evaluations``), NaN scores met (``invalid``) and the objective's ``cost`` counters."""

    vectors: torch.Tensor
    scores: torch.Tensor
    history: list[list[float]]
    evaluations: int
    invalid: int
    radius: float
    dim: int
    seconds: float = 0.0
    cost: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


def _require_cmaes():
    try:
        import cmaes
    except ImportError:
        raise DiscoveryError("CMA-ES needs the cmaes package: pip install 'reptune[search]' (or pip install cmaes)") from None
    return cmaes


def pca_basis(slices: Sequence[LayerSlice], dim: int) -> torch.Tensor:
    """Top ``dim`` principal axes ``[dim, hidden]`` of the source activations over real tokens (float64 SVD)."""
    rows = torch.cat([piece.source_acts[piece.attention_mask.bool()].double().cpu() for piece in slices])
    if dim > min(rows.shape):
        raise DiscoveryError(f"a {dim}-dimensional PCA subspace needs at least {dim} real tokens and hidden dimensions, got {list(rows.shape)}")
    centred = rows - rows.mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return vh[:dim].float()


def subspace_basis(
    kind: str,
    hidden_size: int,
    *,
    vectors: torch.Tensor | None = None,
    slices: Sequence[LayerSlice] | None = None,
    dim: int | None = None,
) -> torch.Tensor:
    """An orthonormal basis ``[d, hidden]`` float32 for ``span`` / ``pca`` / ``full`` (see the module docstring)."""
    if kind not in SUBSPACES:
        raise DiscoveryError(f"unknown subspace {kind!r}: use span, pca or full")
    if kind == "full":
        return torch.eye(hidden_size)
    if kind == "span":
        basis = orthonormal_basis(vectors, hidden_size)
        if basis.shape[0] == 0:
            raise DiscoveryError("empty subspace: span needs at least one non-zero vector")
        return basis
    if dim is None or isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise DiscoveryError(f"empty subspace: pca needs a dimension >= 1, got {dim!r}")
    if not slices:
        raise DiscoveryError("a pca subspace needs the prompts' layer slices")
    return pca_basis(slices, dim)


def check_budget(budget: int, population: int | None, dim: int, runs: int = 1) -> int:
    """The population size (CMA-ES default ``4 + 3 ln d``) after checking the budget covers one per run."""
    check_count(budget, "budget")
    if dim < 2:
        raise DiscoveryError(f"CMA-ES needs a subspace of at least 2 dimensions, got {dim}")
    size = 4 + int(3 * math.log(dim)) if population is None else check_count(population, "population")
    if size < 2:
        raise DiscoveryError(f"population must be at least 2, got {size}")
    if budget // runs < size:
        raise DiscoveryError(f"budget {budget} is below the population size {size}" + (f" for each of {runs} runs" if runs > 1 else ""))
    return size


def cmaes_search(
    objective: Objective,
    basis: torch.Tensor,
    radius: float,
    *,
    num: int = 1,
    budget: int = 200,
    population: int | None = None,
    sigma: float = 0.5,
    start: torch.Tensor | None = None,
    seed: int = 0,
) -> EnsembleRun:
    """CMA-ES for the best ``num`` directions of norm ``radius`` in the span of ``basis`` rows.

    Args:
        objective: the score to maximise (an :class:`Objective` or ``fn(vectors) -> scores``).
        basis: ``[d, hidden]`` orthonormal rows (:func:`subspace_basis`).
        budget: objective evaluations in all (split over the ``num`` runs).
        population: CMA-ES population (default ``4 + 3 ln d``).
        sigma: initial step size in subspace coordinates (the start has length 1).
        start: ``[hidden]`` or ``[m, hidden]`` starting directions (projected into the subspace; run
            ``i`` starts from row ``i % m``); default: random.
    """
    cmaes = _require_cmaes()
    objective = as_objective(objective)
    basis = torch.as_tensor(basis, dtype=torch.float32).detach().cpu()
    if basis.ndim != 2 or basis.shape[0] == 0:
        raise DiscoveryError("empty subspace: the basis has no rows")
    radius, num = check_radius(radius), check_count(num, "number of vectors")
    dim = int(basis.shape[0])
    size = check_budget(budget, population, dim, num)
    if not (math.isfinite(sigma) and sigma > 0):
        raise DiscoveryError(f"sigma must be a finite number > 0, got {sigma}")
    starts = None if start is None else torch.as_tensor(start, dtype=torch.float32).reshape(-1, basis.shape[1]) @ basis.T
    if starts is not None and bool((starts.norm(dim=-1) == 0).any()):
        raise DiscoveryError("a starting vector has no component in the subspace")
    started, generator = time.perf_counter(), make_generator(seed)
    vectors, scores, history, spent, invalid = [], [], [], 0, 0
    per_run = budget // num
    for run in range(num):
        mean = torch.randn(dim, generator=generator, dtype=torch.float64) if starts is None else starts[run % len(starts)].double()
        result = _one_run(cmaes, objective, basis, radius, mean / mean.norm(), sigma, size, per_run, seed + run)
        vectors.append(result[0])
        scores.append(result[1])
        history.append(result[2])
        spent += result[3]
        invalid += result[4]
    return EnsembleRun(
        vectors=torch.stack(vectors), scores=torch.tensor(scores, dtype=torch.float64), history=history, evaluations=spent, invalid=invalid,
        radius=radius, dim=dim, seconds=time.perf_counter() - started, cost=objective.cost(),
        settings={"budget": budget, "population": size, "sigma": sigma, "runs": num, "dim": dim, "seed": seed, "objective": objective.name},
    )


def _to_vectors(points: np.ndarray, basis: torch.Tensor, radius: float) -> torch.Tensor:
    wide = torch.as_tensor(points, dtype=torch.float64) @ basis.double()
    return (wide / wide.norm(dim=-1, keepdim=True).clamp_min(1e-300) * radius).float()


def _one_run(cmaes, objective: Objective, basis: torch.Tensor, radius: float, mean: torch.Tensor, sigma: float, size: int, budget: int, seed: int):
    """One CMA-ES run; returns (best vector, best score, history, evaluations, invalid)."""
    optimizer = cmaes.CMA(mean=mean.numpy(), sigma=sigma, population_size=size, seed=seed)
    best_vector, best_score, worst = None, -math.inf, None
    history, spent, invalid = [], 0, 0
    while spent + size <= budget:
        points = np.stack([optimizer.ask() for _ in range(size)])
        vectors = _to_vectors(points, basis, radius)
        values = objective(vectors)
        spent += size
        valid = ~torch.isnan(values)
        invalid += int((~valid).sum())
        if bool(valid.any()):
            low = float(values[valid].min())
            worst = low if worst is None else min(worst, low)
            top = int(torch.where(valid, values, torch.tensor(-math.inf, dtype=torch.float64)).argmax())
            if float(values[top]) > best_score:
                best_score, best_vector = float(values[top]), vectors[top]
        fill = (worst if worst is not None else 0.0) - 1.0
        optimizer.tell([(point, -(float(value) if not math.isnan(float(value)) else fill)) for point, value in zip(points, values)])
        history.append(best_score)
    if best_vector is None:
        raise DiscoveryError(f"every one of {spent} candidates scored NaN (invalid): the objective gave no valid score")
    return best_vector, best_score, history, spent, invalid
