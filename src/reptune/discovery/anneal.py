"""Search around promising vectors: simulated annealing on the sphere of radius R.

The best random vectors are far better than the average one, so searching *around* them finds
stronger ones. :func:`anneal` runs one chain per starting vector (the top-k of any method),
derivative-free, with any :class:`~reptune.discovery.objectives.Objective` (the MELBO objective on
the slice, a logit readout, string match, a judge). Each step, every chain proposes
``proposals`` points ``normalise(x + s R n) R`` (``n`` a random unit vector in the tangent
space at ``x``; ``s`` the chain's step size), all scored in one batched objective call, and moves to its best proposal with the
Metropolis rule at temperature ``T_t`` (always when better; else with probability
``exp((f' - f) / (T_t * scale))``, ``scale`` = the mean ``|f|`` of the starts). Each chain's step
size grows 1.5x after a gain and shrinks 0.8x otherwise, between ``sigma_end`` and a ceiling that,
like ``T_t``, decays geometrically from ``sigma`` / ``temperature`` to ``sigma_end`` /
``temperature_end`` over the budget. A chain that has not improved its own best for ``patience`` steps restarts
from the best point found by any chain (``restarts`` counts them). The budget is counted in
objective evaluations (vectors scored), starts included; NaN scores are invalid (never accepted,
counted in ``invalid``).

:func:`anneal_gradient` is the gradient alternative for the MELBO objective: annealed projected
gradient (Langevin) ascent on the sphere, with the same restarts
(:func:`reptune.discovery.melbo.local_search` is plain projected Adam from the same starts).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from reptune.discovery.common import DiscoveryError, check_count, check_radius, make_generator, to_radius
from reptune.discovery.melbo import total_objective
from reptune.discovery.objectives import Objective, as_objective
from reptune.discovery.side_effects import SideEffectPenalty
from reptune.discovery.slice import LayerSlice

ADAPT_UP, ADAPT_DOWN = 1.5, 0.8  # step size after a gain / after none (the 1/5 success rule's spirit)


@dataclass
class AnnealRun:
    """Result of :func:`anneal`.

    Attributes:
        vectors: ``[m, hidden]`` float32, the best point of each chain (norm ``radius``).
        scores: ``[m]`` float64, their objective.
        history: best score of any chain after each step.
        evaluations, invalid, restarts: budget spent, NaN scores met, chain restarts.
        cost: the objective's counters (evaluations, forward passes, judge calls).
    """

    vectors: torch.Tensor
    scores: torch.Tensor
    history: list[float]
    evaluations: int
    invalid: int
    restarts: int
    radius: float
    seconds: float = 0.0
    cost: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


def _check_anneal(budget: int, proposals: int, chains: int, sigma: float, sigma_end: float, temperature: float, temperature_end: float) -> None:
    check_count(budget, "budget")
    check_count(proposals, "proposals")
    if budget < chains * (proposals + 1):
        raise DiscoveryError(f"budget {budget} is below one annealing step: {chains} start(s) + {chains} x {proposals} proposals")
    _check_finite({"sigma": sigma, "sigma_end": sigma_end}, positive=True)
    _check_finite({"temperature": temperature, "temperature_end": temperature_end}, positive=False)


def _check_finite(settings: dict[str, float], *, positive: bool) -> None:
    """Each named setting finite and > 0 (``positive``) or >= 0, else a one-line DiscoveryError naming it."""
    for name, value in settings.items():
        if not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
            raise DiscoveryError(f"{name} must be a finite number {'>' if positive else '>='} 0, got {value}")


def _decay(first: float, last: float, frac: float) -> float:
    """``first`` at ``frac`` 0 to ``last`` at 1: geometric, or linear to 0 when either end is 0."""
    return first * (last / first) ** frac if last > 0 and first > 0 else first * (1 - frac)


def _tangent(rows: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """``rows`` less their components along ``units`` (unit rows, broadcast), in place: tangent to the sphere there."""
    rows -= (rows * units).sum(-1, keepdim=True) * units
    return rows


def _keep_best(
    current: torch.Tensor, values: torch.Tensor, best: torch.Tensor, best_values: torch.Tensor, stale: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(best, best_values, stale)`` after the chains' points ``current`` ``[m, hidden]`` scored
    ``values`` ``[m]``: a chain's best moves where it improved, its stale count resets there and grows elsewhere."""
    improved = values > best_values
    best = torch.where(improved.unsqueeze(1), current, best)
    best_values = torch.where(improved, values, best_values)
    return best, best_values, torch.where(improved, torch.zeros_like(stale), stale + 1)


def _finite(scores: torch.Tensor) -> tuple[torch.Tensor, int]:
    bad = torch.isnan(scores)
    return torch.where(bad, torch.full_like(scores, -math.inf), scores), int(bad.sum())


def anneal(
    objective: Objective,
    start: torch.Tensor,
    radius: float | None = None,
    *,
    budget: int = 256,
    proposals: int = 4,
    sigma: float = 0.3,
    sigma_end: float = 0.03,
    temperature: float = 0.05,
    temperature_end: float = 0.001,
    patience: int = 8,
    seed: int = 0,
) -> AnnealRun:
    """Anneal one chain from each row of ``start`` ``[m, hidden]`` (see the module docstring).

    Args:
        objective: the score to maximise (an :class:`Objective` or ``fn(vectors) -> scores``).
        radius: the norm of every point (default: the starts' mean norm).
        budget: objective evaluations in all, the ``m`` starts included.
        proposals: proposals per chain per step.
        sigma, sigma_end: step size as a fraction of R (about the angle in radians), first and last.
        temperature, temperature_end: Metropolis temperature in units of the starts' mean |score|.
        patience: steps without a chain improving before it restarts from the global best.
        seed: seeds this call's generator.

    Raises:
        DiscoveryError: no starts, a budget below one step, a non-positive step size, no valid start.
    """
    objective = as_objective(objective)
    start = _starts(start)
    chains, hidden = start.shape
    radius = check_radius(float(start.norm(dim=-1).mean()) if radius is None else radius)
    _check_anneal(budget, proposals, chains, sigma, sigma_end, temperature, temperature_end)
    generator = make_generator(seed)
    started = time.perf_counter()
    current = to_radius(start, radius)
    raw = objective(current)
    values, invalid = _finite(raw)
    if bool(torch.isinf(values).all()):
        raise DiscoveryError("every starting vector scored NaN (invalid): nothing to anneal from")
    best, best_values = current.clone(), values.clone()
    scale = float(values[torch.isfinite(values)].abs().mean()) or 1.0
    spent, steps_total = chains, max(1, (budget - chains) // (chains * proposals))
    stale, restarts, history = torch.zeros(chains, dtype=torch.long), 0, []
    step_size = torch.full((chains, 1, 1), float(sigma))
    for step in range(steps_total):
        frac = step / max(1, steps_total - 1)
        ceiling, temp = _decay(sigma, sigma_end, frac), _decay(temperature, temperature_end, frac)
        candidates = _proposals(current, radius, step_size, proposals, generator)
        scores, bad = _finite(objective(candidates).reshape(chains, proposals))
        invalid += bad
        spent += chains * proposals
        top, pick = scores.max(dim=1)
        chosen = candidates.reshape(chains, proposals, hidden)[torch.arange(chains), pick]
        delta = top - values
        threshold = torch.rand(chains, generator=generator, dtype=torch.float64)
        accept = torch.isfinite(top) & ((delta >= 0) | (temp > 0) & (threshold < torch.exp((delta / (temp * scale)).clamp(max=0))))
        gained = accept & (delta > 0)
        step_size = torch.where(gained.view(-1, 1, 1), step_size * ADAPT_UP, step_size * ADAPT_DOWN).clamp(min=sigma_end, max=ceiling)
        current = torch.where(accept.unsqueeze(1), chosen, current)
        values = torch.where(accept, top, values)
        best, best_values, stale = _keep_best(current, values, best, best_values, stale)
        restarts += _restart_stale(current, values, stale, best, best_values, patience)
        history.append(float(best_values.max()))
    return AnnealRun(
        vectors=best, scores=best_values, history=history, evaluations=spent, invalid=invalid, restarts=restarts, radius=radius,
        seconds=time.perf_counter() - started, cost=objective.cost(),
        settings={"budget": budget, "proposals": proposals, "sigma": sigma, "sigma_end": sigma_end, "temperature": temperature,
                  "temperature_end": temperature_end, "patience": patience, "seed": seed, "steps": steps_total, "objective": objective.name},
    )


def _starts(start: torch.Tensor) -> torch.Tensor:
    """``start`` as float32 CPU rows ``[m, hidden]``; one-line errors for no rows, non-finite or zero rows."""
    start = torch.as_tensor(start, dtype=torch.float32).detach().cpu()
    start = start.unsqueeze(0) if start.ndim == 1 else start
    if start.numel() == 0 or start.ndim != 2:
        raise DiscoveryError("annealing needs at least one starting vector [m, hidden]")
    if not torch.isfinite(start).all() or bool((start.norm(dim=-1) == 0).any()):
        raise DiscoveryError("starting vectors must be finite and non-zero")
    return start


def _proposals(current: torch.Tensor, radius: float, step_size: torch.Tensor, proposals: int, generator: torch.Generator) -> torch.Tensor:
    """``proposals`` points per chain, ``[chains * proposals, hidden]`` on the sphere of ``radius``: a
    step of ``step_size * radius`` (``[chains, 1, 1]``) from each chain's point ``current`` ``[chains,
    hidden]`` along random directions tangent to the sphere there."""
    chains, hidden = current.shape
    noise = _tangent(torch.randn(chains, proposals, hidden, generator=generator), (current / radius).unsqueeze(1))
    noise = noise / noise.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return to_radius((current.unsqueeze(1) + step_size * radius * noise).reshape(-1, hidden), radius)


def _restart_stale(
    current: torch.Tensor, values: torch.Tensor, stale: torch.Tensor, best: torch.Tensor, best_values: torch.Tensor, patience: int,
) -> int:
    """Move every chain that has not improved for ``patience`` steps to the global best (in place);
    returns how many moved (none when ``patience`` is 0)."""
    if patience <= 0 or not bool((stale >= patience).any()):
        return 0
    leader = int(best_values.argmax())
    moved = torch.nonzero(stale >= patience).flatten().tolist()
    for chain in moved:
        current[chain], values[chain], stale[chain] = best[leader], best_values[leader], 0
    return len(moved)


def _gradient_starts(start: torch.Tensor, radius: float | None) -> tuple[torch.Tensor, float]:
    """``(starts [m, hidden] at norm R, R)``: R defaults to the starts' mean norm; one-line errors for bad starts."""
    start = torch.as_tensor(start, dtype=torch.float32).detach().cpu()
    start = start.unsqueeze(0) if start.ndim == 1 else start
    if start.numel() == 0 or not torch.isfinite(start).all() or bool((start.norm(dim=-1) == 0).any()):
        raise DiscoveryError("annealing needs finite, non-zero starting vectors [m, hidden]")
    radius = check_radius(float(start.norm(dim=-1).mean()) if radius is None else radius)
    return to_radius(start, radius), radius


def _value_and_grad(
    slices: Sequence[LayerSlice], current: torch.Tensor, p: float, q: float, penalty: SideEffectPenalty | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The objective ``[k]`` float64 at the rows of ``current`` ``[k, hidden]`` and its gradient
    ``[k, hidden]`` float32 (CPU): the MELBO objective, minus ``penalty`` (weight x side effect) when given."""
    theta = current.detach().clone().to(slices[0].device).requires_grad_(True)
    total = sum(piece.objective(theta, p, q) for piece in slices)
    (grad,) = torch.autograd.grad(total.sum(), theta)
    values, grad = total.detach().double().cpu(), grad.detach().cpu().float()
    if penalty is not None:
        cost, cost_grad = penalty.value_and_grad(current)
        values, grad = values - cost, grad - cost_grad
    return values, grad


def _final_values(slices: Sequence[LayerSlice], current: torch.Tensor, p: float, q: float, penalty: SideEffectPenalty | None) -> torch.Tensor:
    """The (penalised) objective ``[k]`` float64 of ``current`` without gradients."""
    values = total_objective(slices, current.to(slices[0].device), p, q).double()
    return values if penalty is None else values - penalty(current)


def _langevin_step(current: torch.Tensor, grad: torch.Tensor, radius: float, rate: float, temp: float, generator: torch.Generator) -> torch.Tensor:
    """``normalise(x + rate R g + sqrt(2 temp rate) R n) R`` for each row ``x`` of ``current``
    ``[k, hidden]``: ``g`` the unit tangent gradient, ``n`` a random unit tangent vector."""
    units = current / radius
    grad = _tangent(grad.clone(), units)
    noise = _tangent(torch.randn(current.shape, generator=generator), units)
    move = rate * grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    move += math.sqrt(2 * temp * rate) * noise / noise.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return to_radius((current + radius * move).detach(), radius)


def anneal_gradient(
    slices: Sequence[LayerSlice],
    start: torch.Tensor,
    radius: float | None = None,
    *,
    steps: int = 50,
    lr: float = 0.2,
    lr_end: float = 0.01,
    temperature: float = 0.02,
    temperature_end: float = 0.0,
    patience: int = 10,
    p: float = 2.0,
    q: float = 1.0,
    penalty: SideEffectPenalty | None = None,
    seed: int = 0,
) -> AnnealRun:
    """Annealed projected-gradient (Langevin) ascent of the MELBO objective from each start ``[m, hidden]``.

    Each step moves every chain ``x <- normalise(x + lr_t R g + sqrt(2 T_t lr_t) R n) R`` with ``g``
    the unit tangent gradient of the objective and ``n`` a random unit tangent vector; ``lr_t`` and
    ``T_t`` decay geometrically (linearly to 0 when the end value is 0) over ``steps``. The best point
    of each chain is kept; a chain with no new best for ``patience`` steps restarts from the best of
    all chains. With ``penalty`` (:class:`~reptune.discovery.side_effects.SideEffectPenalty`) the
    objective and its gradient are ``melbo - weight x side_effect`` (the KL on the penalty's texts).

    Cost: ``steps x m`` forward and as many backward passes of the slice plus ``m`` forward passes
    for the final scores; with a penalty as many again on the side-effect texts, each over all of
    them (``cost`` keys ``side_effect_forward_passes`` and ``side_effect_backward_passes``).
    """
    check_count(steps, "steps")
    _check_finite({"lr": lr, "lr_end": lr_end}, positive=True)
    current, radius = _gradient_starts(start, radius)
    chains = current.shape[0]
    generator, started = make_generator(seed), time.perf_counter()
    spent_before = {} if penalty is None else penalty.cost()
    best, best_values = current.clone(), torch.full((chains,), -math.inf, dtype=torch.float64)
    stale, restarts, history = torch.zeros(chains, dtype=torch.long), 0, []
    for step in range(steps):
        frac = step / max(1, steps - 1)
        values, grad = _value_and_grad(slices, current, p, q, penalty)
        best, best_values, stale = _keep_best(current, values, best, best_values, stale)
        history.append(float(best_values.max()))
        current = _langevin_step(current, grad, radius, _decay(lr, lr_end, frac), _decay(temperature, temperature_end, frac), generator)
        restarts += _restart_stale(current, values, stale, best, best_values, patience)  # values: this step's, not read again
    best, best_values, _ = _keep_best(current, _final_values(slices, current, p, q, penalty), best, best_values, stale)
    cost = {"evaluations": (steps + 1) * chains, "forward_passes": (steps + 1) * chains, "backward_passes": steps * chains, "judge_calls": 0}
    if penalty is not None:  # this run's passes on the side-effect texts
        cost.update({key: value - spent_before[key] for key, value in penalty.cost().items()})
    return AnnealRun(
        vectors=best, scores=best_values, history=history, evaluations=(steps + 1) * chains, invalid=0, restarts=restarts, radius=radius,
        seconds=time.perf_counter() - started, cost=cost,
        settings={"steps": steps, "lr": lr, "lr_end": lr_end, "temperature": temperature, "temperature_end": temperature_end,
                  "patience": patience, "p": p, "q": q, "seed": seed, "mode": "gradient",
                  "objective": "melbo" + ("" if penalty is None else penalty.describe())},
    )
