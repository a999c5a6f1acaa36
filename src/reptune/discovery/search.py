"""The ``anneal`` and ``cmaes`` methods of :func:`reptune.discovery.discover`.

:class:`SearchSpec` holds their settings; :func:`check_search` validates them before any model
work (one-line errors); :func:`run_search` builds the objective (the MELBO objective on the
slice, a logit readout, string match or a judge, optionally minus a side-effect penalty) and runs

* ``anneal``: ``candidates`` random vectors (or the given starts) scored, the best ``num`` kept,
  then one annealing chain from each: derivative-free (:func:`~reptune.discovery.anneal.anneal`)
  or, for the MELBO objective, annealed projected gradient
  (:func:`~reptune.discovery.anneal.anneal_gradient`); the budget covers the candidates too;
* ``cmaes``: CMA-ES (:func:`~reptune.discovery.ensemble.cmaes_search`) in the ``span`` of given
  vectors, the top ``pca`` axes of the slice, or the ``full`` space.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from reptune.discovery.anneal import anneal, anneal_gradient
from reptune.discovery.baselines import random_vectors
from reptune.discovery.common import DiscoveryError, check_count, check_number, orthonormal_basis
from reptune.discovery.ensemble import SUBSPACES, check_budget, cmaes_search, subspace_basis
from reptune.discovery.objectives import (
    Objective,
    judge_objective,
    match_objective,
    readout_objective,
    slice_objective,
)
from reptune.discovery.scoring import CompletionScorer
from reptune.discovery.side_effects import SideEffectPenalty
from reptune.discovery.slice import LayerSlice
from reptune.models import ModelHandle

SEARCH_METHODS = ("anneal", "cmaes")
OBJECTIVES = ("melbo", "logit", "match", "judge")
ANNEAL_MODES = ("auto", "free", "gradient")


@dataclass
class SearchSpec:
    """Settings of the ``anneal`` / ``cmaes`` methods (see the module docstring).

    Attributes:
        budget: objective evaluations in all (vectors scored).
        objective: ``melbo``, ``logit``, ``match`` or ``judge``.
        anneal_mode: ``auto`` (gradient for melbo, else free), ``free`` or ``gradient``.
        candidates: anneal: random vectors scored to pick the starts (default :meth:`default_candidates`).
        proposals: anneal: proposals per chain per step.
        subspace: cmaes: ``span``, ``pca`` or ``full``; ``subspace_dim`` for pca;
            ``subspace_vectors`` ``[e, hidden]`` for span.
        population, sigma: CMA-ES population (default ``4 + 3 ln d``) and initial step.
        max_new_tokens: completion length for match / judge objectives.
    """

    budget: int = 256
    objective: str = "melbo"
    anneal_mode: str = "auto"
    candidates: int | None = None
    proposals: int = 4
    subspace: str = "full"
    subspace_dim: int = 8
    subspace_vectors: torch.Tensor | None = None
    population: int | None = None
    sigma: float = 0.5
    max_new_tokens: int = 16

    def mode(self) -> str:
        return ("gradient" if self.objective == "melbo" else "free") if self.anneal_mode == "auto" else self.anneal_mode

    def pool_size(self, num: int) -> int:
        """Random vectors the ``anneal`` method scores for ``num`` starts: ``candidates`` when given, else
        ``max(num, budget // 4)`` (free mode) or ``max(num, min(budget // 2, budget - 2 num))`` (gradient
        mode: a gradient step costs about three forward passes, so half the evaluations on the pool is
        about a quarter of the work; at least one step of ``num`` chains stays within the budget)."""
        if self.candidates is not None:
            return self.candidates
        if self.mode() == "gradient":
            return max(num, min(self.budget // 2, self.budget - 2 * num))
        return max(num, self.budget // 4)

    def validate(self, names: Mapping[str, str] | None = None) -> None:
        """One-line :class:`DiscoveryError` for a number out of range, before any model work.

        ``names``: what the messages call each field (the CLI passes its flags, e.g. ``--budget``).
        The checks that need the method, the model or the other inputs are :func:`check_search`'s.
        """
        name = (names or {}).get
        check_number(name("budget", "budget"), self.budget, 1, integer=True)
        check_number(name("candidates", "candidates"), self.candidates, 1, integer=True, optional=True)
        check_number(name("proposals", "proposals"), self.proposals, 1, integer=True)
        # the Python message keeps check_search's wording for a pca subspace of no dimensions
        check_number(name("subspace_dim", "empty subspace: subspace_dim"), self.subspace_dim, 1, integer=True)
        check_number(name("population", "population"), self.population, 2, integer=True, optional=True)
        check_number(name("sigma", "sigma"), self.sigma, 0, above=True)
        check_number(name("max_new_tokens", "max_new_tokens"), self.max_new_tokens, 1, integer=True)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON values (``subspace_vectors`` as nested lists of float32 values)."""
        data = {spec.name: getattr(self, spec.name) for spec in fields(self)}
        if self.subspace_vectors is not None:
            data["subspace_vectors"] = torch.as_tensor(self.subspace_vectors, dtype=torch.float32).tolist()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpec:
        """The inverse of :meth:`to_dict`; unknown keys are a one-line error."""
        unknown = set(data) - {spec.name for spec in fields(cls)}
        if unknown:
            raise DiscoveryError(f"unknown search setting(s): {', '.join(sorted(unknown))}")
        values = dict(data)
        if values.get("subspace_vectors") is not None:
            values["subspace_vectors"] = torch.tensor(values["subspace_vectors"], dtype=torch.float32)
        return cls(**values)


def _subspace_dim(spec: SearchSpec, hidden: int) -> int:
    if spec.subspace == "full":
        return hidden
    if spec.subspace == "pca":
        if isinstance(spec.subspace_dim, bool) or not isinstance(spec.subspace_dim, int) or spec.subspace_dim < 1:
            raise DiscoveryError(f"empty subspace: pca needs a dimension >= 1, got {spec.subspace_dim!r}")
        return spec.subspace_dim
    dim = int(orthonormal_basis(spec.subspace_vectors, hidden).shape[0])
    if dim == 0:
        raise DiscoveryError("empty subspace: span needs at least one non-zero vector (subspace_vectors / --span-of)")
    return dim


def _anneal_budget_fits(spec: SearchSpec, num: int, init_rows: int) -> bool:
    """Whether ``spec.budget`` scores the candidates (none with ``init_rows`` starts given), the ``num``
    chain starts and one annealing step (``num x proposals`` in free mode, ``num`` gradient steps)."""
    scored = 0 if init_rows else spec.pool_size(num)
    step = num * (spec.proposals if spec.mode() == "free" else 1)
    return spec.budget - scored >= num + step


def check_search(method: str, spec: SearchSpec, num: int, hidden: int, *, logit_tokens: Any, match: Sequence[str], judge: CompletionScorer | None, init_rows: int) -> None:
    """One-line errors for bad search settings, before the model runs."""
    check_count(spec.budget, "budget")
    if spec.objective not in OBJECTIVES:
        raise DiscoveryError(f"unknown search objective {spec.objective!r}: use {', '.join(OBJECTIVES)}")
    needs = {"logit": logit_tokens is not None, "match": bool(match), "judge": judge is not None}
    if spec.objective in needs and not needs[spec.objective]:
        raise DiscoveryError(f"search objective {spec.objective!r} needs {'logit_tokens' if spec.objective == 'logit' else spec.objective} to be given")
    if method == "anneal":
        if spec.anneal_mode not in ANNEAL_MODES:
            raise DiscoveryError(f"anneal mode must be auto, free or gradient, got {spec.anneal_mode!r}")
        if spec.mode() == "gradient" and spec.objective != "melbo":
            raise DiscoveryError("gradient annealing needs the melbo objective (use anneal mode free for output scores)")
        check_count(spec.proposals, "proposals")
        pool = init_rows or spec.pool_size(num)
        check_count(pool, "candidates")
        if pool < num:
            raise DiscoveryError(f"candidates ({pool}) must be at least the number of vectors ({num})")
        if not _anneal_budget_fits(spec, num, init_rows):
            smallest = next(b for b in itertools.count(spec.budget + 1) if _anneal_budget_fits(replace(spec, budget=b), num, init_rows))
            per = f"{num} chain(s) x {spec.proposals} proposals" if spec.mode() == "free" else f"{num} chain(s)"
            what = "" if init_rows else f"the random candidates ({pool} at this budget), "
            raise DiscoveryError(f"budget {spec.budget} is too small: {what}the {num} chain start(s) and one annealing step of {per} "
                                 f"need a budget of at least {smallest}")
    else:
        if spec.subspace not in SUBSPACES:
            raise DiscoveryError(f"unknown subspace {spec.subspace!r}: use span, pca or full")
        check_budget(spec.budget, spec.population, _subspace_dim(spec, hidden), num)
        if not (math.isfinite(spec.sigma) and spec.sigma > 0):
            raise DiscoveryError(f"sigma must be a finite number > 0, got {spec.sigma}")


def build_objective(
    spec: SearchSpec, slices: Sequence[LayerSlice], handle: ModelHandle, layer: int, prompts: Sequence[str], *, chat: bool, p: float, q: float,
    logit_tokens: tuple[str, str] | None, match: Sequence[str], judge: CompletionScorer | None, penalty: SideEffectPenalty | None = None,
) -> Objective:
    """The search objective on the training prompts, minus ``penalty`` (weight x side effect) when given."""
    if spec.objective == "melbo":
        objective = slice_objective(slices, p=p, q=q)
    elif spec.objective == "logit":
        objective = readout_objective(handle, layer, prompts, logit_tokens, chat=chat)  # type: ignore[arg-type]
    elif spec.objective == "match":
        objective = match_objective(handle, layer, prompts, match, max_new_tokens=spec.max_new_tokens, chat=chat)
    else:
        objective = judge_objective(handle, layer, prompts, judge, max_new_tokens=spec.max_new_tokens, chat=chat)  # type: ignore[arg-type]
    if penalty is not None and penalty.weight:
        inner = objective.fn
        objective.fn = lambda vectors: torch.as_tensor(inner(vectors), dtype=torch.float64) - penalty(vectors)
        objective.name += penalty.describe()
    return objective


def run_search(
    method: str, spec: SearchSpec, objective: Objective, slices: Sequence[LayerSlice], num: int, radius: float, *,
    init: torch.Tensor | None, p: float, q: float, seed: int, penalty: SideEffectPenalty | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """``(vectors [num, hidden], scores [num], settings)`` of one ``anneal`` or ``cmaes`` run.

    ``penalty``: the side-effect term ``objective`` already subtracts (see :func:`build_objective`);
    gradient annealing subtracts it (and its gradient) too, and the settings' ``cost`` counts its
    passes on the side-effect texts (``side_effect_forward_passes``, ``side_effect_backward_passes``).
    """
    penalty = penalty if penalty is not None and penalty.weight else None
    spent_before = {} if penalty is None else penalty.cost()
    if method == "cmaes":
        basis = subspace_basis(spec.subspace, slices[0].hidden_size, vectors=spec.subspace_vectors, slices=slices, dim=spec.subspace_dim)
        run = cmaes_search(objective, basis, radius, num=num, budget=spec.budget, population=spec.population, sigma=spec.sigma,
                           start=init, seed=seed)
        vectors, scores, settings = run.vectors, run.scores, {**run.settings, "subspace": spec.subspace, "invalid": run.invalid, "cost": objective.cost()}
    else:
        vectors, scores, settings = _run_anneal(spec, objective, slices, num, radius, init=init, p=p, q=q, seed=seed, penalty=penalty)
    if penalty is not None:
        settings["cost"].update({key: value - spent_before[key] for key, value in penalty.cost().items()})
        settings["side_effect_penalty"] = penalty.weight
    return vectors, scores, settings


def _anneal_starts(
    spec: SearchSpec, objective: Objective, hidden: int, num: int, radius: float, init: torch.Tensor | None, seed: int,
) -> tuple[torch.Tensor, int, int]:
    """``(starts [num, hidden], candidates scored, NaN scores among them)``: the given ``init`` rows
    (topped up with random vectors), else the best ``num`` of ``spec.candidates`` random vectors."""
    if init is not None:
        starts = torch.as_tensor(init, dtype=torch.float32).reshape(-1, hidden)[:num]
        if starts.shape[0] < num:
            starts = torch.cat([starts, random_vectors(hidden, num - starts.shape[0], radius, seed=seed)])
        return starts, 0, 0
    pool_size = spec.pool_size(num)
    pool = random_vectors(hidden, pool_size, radius, seed=seed)
    scores = objective(pool)
    invalid = int(torch.isnan(scores).sum())
    if invalid == pool_size:
        raise DiscoveryError(f"every one of the {pool_size} candidates scored NaN (invalid): the objective gave no valid score")
    order = torch.argsort(torch.nan_to_num(scores, nan=-math.inf), descending=True)[:num]
    return pool[order], pool_size, invalid


def _run_anneal(
    spec: SearchSpec, objective: Objective, slices: Sequence[LayerSlice], num: int, radius: float, *,
    init: torch.Tensor | None, p: float, q: float, seed: int, penalty: SideEffectPenalty | None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The ``anneal`` method: starts (:func:`_anneal_starts`), then one chain from each, within ``spec.budget`` evaluations."""
    starts, pool_size, pool_invalid = _anneal_starts(spec, objective, slices[0].hidden_size, num, radius, init, seed)
    left = spec.budget - pool_size
    if spec.mode() == "gradient":
        run = anneal_gradient(slices, starts, radius, steps=max(1, left // num - 1), p=p, q=q, penalty=penalty, seed=seed)
        cost = {key: objective.cost()[key] + run.cost.get(key, 0) for key in ("evaluations", "forward_passes", "judge_calls")}
        cost["backward_passes"] = run.cost["backward_passes"]
    else:
        run = anneal(objective, starts, radius, budget=left, proposals=spec.proposals, seed=seed)
        cost = objective.cost()
    return run.vectors, run.scores, {**run.settings, "mode": spec.mode(), "candidates": pool_size, "invalid": run.invalid + pool_invalid,
                                     "restarts": run.restarts, "cost": cost, "budget": spec.budget}
