"""MELBO (Mack & Turner 2024): steering vectors that maximise the downstream change they cause.

For a vector ``theta`` of norm exactly ``R`` added at the source layer, MELBO maximises

    f(theta) = sum_i ( sum_t || Delta_{i,t}(theta) ||_2^p )^(1/q)

where ``Delta_{i,t}`` is the change of the target-layer activation of prompt ``i`` at token
``t`` (:meth:`reptune.discovery.slice.LayerSlice.objective`). The norm is over the hidden
dimension (the reference code took it over tokens by mistake). Defaults ``p = 2, q = 1``:
the summed squared change, which the paper uses for its main results (``q = p`` gives the
per-prompt l_p norm of the token-wise changes; both are accepted).

Training is the paper's projected-gradient Adam (``lr 1e-3``, ``betas (0.9, 0.98)``,
``amsgrad``, no weight decay): each step the gradient is projected onto the sphere's
tangent space (and, with ``orthogonal``, away from earlier vectors), Adam steps, and the
vector is projected back onto the sphere (and orthogonalised). **k vectors train in parallel**
as one ``[k, hidden]`` parameter: Adam is element-wise, so each row follows exactly the update
it would get alone, while the model runs one batched replay of the layer slice per step.

With ``orthogonal`` there are two orders (``orthogonal_order``):

* ``sequential`` (default, the paper's): vector ``i`` is trained for all ``steps`` after vectors
  ``0..i-1`` are finished and frozen; it starts projected off them, and every gradient and every
  iterate is projected off them. So vector ``i`` is exactly what training it alone with
  ``orthogonal_to = vectors[:i]`` gives, and later vectors never move earlier ones. One vector
  at a time: ``k`` times the replays of one batched run.
* ``parallel``: all ``k`` rows train at once and are orthogonalised in order (Gram-Schmidt) after
  every step, row ``i`` against rows ``0..i-1`` as they are *now* (its gradient projected off
  them, too): faster (one batched replay per step), but row ``i`` chases rows that are still
  moving, so it is not the paper's vector ``i``.

Both keep every vector orthogonal to any ``orthogonal_to`` vectors.

The paper's step size (``1e-3`` per coordinate) suits its models (hidden sizes in the
thousands, ``R`` about 4-16, 300+ steps); raise ``lr`` for small models or short budgets.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from reptune._progress import progress_bar
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
from reptune.discovery.side_effects import SideEffectPenalty
from reptune.discovery.slice import LayerSlice

PAPER_LR = 1e-3
PAPER_BETAS = (0.9, 0.98)
ORTHOGONAL_ORDERS = ("sequential", "parallel")


@dataclass
class MelboRun:
    """Vectors from :func:`train_melbo` (rows in training order, not ranked).

    Attributes:
        vectors: ``[k, hidden]`` float32 on the CPU, every row of norm ``radius``.
        objective: ``[k]`` final objective of each vector.
        history: ``[steps, k]`` objective of each vector at the start of each step.
        radius, steps, lr, p, q, orthogonal, seed: the settings used.
        seconds: training wall time.
        settings: further settings (``betas``, ``amsgrad``, ``vector_batch_size``, ``orthogonal_order``).
    """

    vectors: torch.Tensor
    objective: torch.Tensor
    history: torch.Tensor
    radius: float
    steps: int
    lr: float
    p: float
    q: float
    orthogonal: bool
    seed: int
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)


def total_objective(slices: Sequence[LayerSlice], theta: torch.Tensor, p: float = 2.0, q: float = 1.0) -> torch.Tensor:
    """The MELBO objective ``[k]`` summed over prompt chunks (no gradient)."""
    with torch.no_grad():
        return sum((piece.objective(theta, p, q).cpu() for piece in slices), torch.zeros(theta.shape[0]))


def check_orthogonal_order(order: str) -> str:
    """``sequential`` or ``parallel`` (see the module docstring), else a one-line error."""
    if order not in ORTHOGONAL_ORDERS:
        raise DiscoveryError(f"orthogonal order must be sequential or parallel, got {order!r}")
    return order


def check_training(slices: Sequence[LayerSlice], steps: int, lr: float, p: float, q: float) -> None:
    if not slices:
        raise DiscoveryError("no prompts: discovery needs at least one prompt")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise DiscoveryError(f"steps must be a non-negative integer, got {steps!r}")
    if not lr > 0:
        raise DiscoveryError(f"learning rate must be > 0, got {lr}")
    if not p > 0 or not q > 0:
        raise DiscoveryError(f"p and q must be > 0, got p={p}, q={q}")


def initial_vectors(
    num: int,
    hidden_size: int,
    radius: float,
    *,
    init: torch.Tensor | None = None,
    orthogonal: bool = False,
    fixed: torch.Tensor | None = None,
    generator: torch.Generator,
) -> torch.Tensor:
    """Starting points ``[num, hidden]``: the rows of ``init`` first, then random directions;
    orthogonalised in order when asked; every row of norm ``radius``."""
    rows = random_directions(num, hidden_size, generator)
    if init is not None:
        given = torch.as_tensor(init, dtype=torch.float32).detach().cpu().reshape(-1, hidden_size)
        if given.shape[0] > num:
            raise DiscoveryError(f"{given.shape[0]} starting vectors given for {num} vectors")
        if not torch.isfinite(given).all() or bool((given.norm(dim=-1) == 0).any()):
            raise DiscoveryError("starting vectors must be finite and non-zero")
        rows[: given.shape[0]] = given
    if orthogonal:
        rows = gram_schmidt(rows, None if fixed is None else fixed.cpu())
    return to_radius(rows, radius)


def train_melbo(
    slices: Sequence[LayerSlice],
    num: int,
    radius: float,
    *,
    steps: int = 300,
    lr: float = PAPER_LR,
    betas: tuple[float, float] = PAPER_BETAS,
    p: float = 2.0,
    q: float = 1.0,
    orthogonal: bool = False,
    orthogonal_order: str = "sequential",
    orthogonal_to: torch.Tensor | None = None,
    init: torch.Tensor | None = None,
    seed: int = 0,
    vector_batch_size: int | None = None,
    penalty: SideEffectPenalty | None = None,
    progress: bool = False,
) -> MelboRun:
    """Train ``num`` MELBO vectors of norm ``radius`` at the slices' source layer.

    Args:
        slices: the prompts' :class:`LayerSlice` chunks (see :func:`build_slices`).
        num: how many vectors.
        radius: the norm ``R`` of every vector.
        steps, lr, betas: projected-gradient Adam (amsgrad) settings.
        p, q: exponents of the objective.
        orthogonal: keep vector ``i`` orthogonal to vectors ``0..i-1`` (and to ``orthogonal_to``).
        orthogonal_order: ``sequential`` (the paper's: vector ``i`` trained after ``0..i-1`` are
            frozen) or ``parallel`` (all at once, orthogonalised in order after every step).
        orthogonal_to: ``[e, hidden]`` earlier vectors every new vector must be orthogonal to
            (used with or without ``orthogonal``).
        init: ``[m, hidden]`` starting vectors for the first ``m`` rows (local search); the
            rest start at random. Rescaled to ``radius`` (and orthogonalised when asked).
        seed: seeds this call's own ``torch.Generator`` (same seed, same vectors).
        vector_batch_size: train at most this many vectors at once (default: all; with
            ``orthogonal`` and ``sequential`` always 1); later groups are kept orthogonal to
            earlier, frozen groups when ``orthogonal``.
        penalty: a :class:`~reptune.discovery.side_effects.SideEffectPenalty`: train on
            ``objective - weight x side_effect`` (its gradient from one forward and one backward
            pass per vector per step on the penalty's texts); ``objective`` and ``history`` are
            then the penalised values, and the settings count those passes.

    Raises:
        DiscoveryError: bad radius, counts, exponents, or more orthogonal vectors than dimensions.
    """
    radius = check_radius(radius)
    num = check_count(num, "number of vectors")
    check_training(slices, steps, lr, p, q)
    sequential = orthogonal and check_orthogonal_order(orthogonal_order) == "sequential"
    hidden = slices[0].hidden_size
    fixed = orthonormal_basis(orthogonal_to, hidden)
    if orthogonal or fixed.shape[0]:
        check_orthogonal_room(num if orthogonal else 1, hidden, fixed.shape[0])
    generator = make_generator(seed)
    # sequential: each start is projected off the vectors trained before it, not off the other starts
    start_rows = initial_vectors(
        num, hidden, radius, init=init, orthogonal=orthogonal and not sequential, fixed=fixed if fixed.shape[0] else None, generator=generator
    )
    group = num if vector_batch_size is None else check_count(vector_batch_size, "vector_batch_size")
    if sequential:
        group = 1
    started = time.perf_counter()
    penalty = penalty if penalty is not None and penalty.weight else None
    spent_before = {} if penalty is None else penalty.cost()
    with progress_bar("training MELBO vectors", total=num * max(steps, 1), enabled=progress) as advance:
        vectors, objective, history = _train_in_groups(
            slices, start_rows, num, group, radius, fixed, orthogonal=orthogonal, steps=steps, lr=lr, betas=betas, p=p, q=q, penalty=penalty,
            advance=advance,
        )
    extra = {} if penalty is None else {"side_effect_penalty": penalty.weight, **{k: v - spent_before[k] for k, v in penalty.cost().items()}}
    return MelboRun(
        vectors=vectors,
        objective=objective,
        history=history,
        radius=radius, steps=steps, lr=lr, p=p, q=q, orthogonal=orthogonal, seed=seed,
        seconds=time.perf_counter() - started,
        settings={"betas": list(betas), "amsgrad": True, "vector_batch_size": group,
                  "orthogonal_order": orthogonal_order if orthogonal else None, **extra},
    )


def _train_in_groups(
    slices: Sequence[LayerSlice], start_rows: torch.Tensor, num: int, group: int, radius: float, fixed: torch.Tensor, *, orthogonal: bool,
    steps: int, lr: float, betas: tuple[float, float], p: float, q: float, penalty: SideEffectPenalty | None, advance: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(vectors [num, hidden], objective [num], history [steps, num])``: the ``start_rows`` trained
    ``group`` at a time; with ``orthogonal`` each group is kept orthogonal to ``fixed`` and to the
    groups trained (and frozen) before it."""
    hidden, device = slices[0].hidden_size, slices[0].device
    vectors, objectives, histories = [], [], []
    for first in range(0, num, group):
        group_fixed = fixed
        if orthogonal and vectors:  # the vectors trained so far are frozen
            group_fixed = orthonormal_basis(torch.cat([fixed, torch.cat(vectors)]), hidden)
        rows, objective, history = _train_group(
            slices, start_rows[first : first + group].clone(), radius, steps=steps, lr=lr, betas=betas, p=p, q=q,
            orthogonal=orthogonal, fixed=group_fixed, device=device, penalty=penalty, advance=advance,
        )
        vectors.append(rows)
        objectives.append(objective)
        histories.append(history)
    return torch.cat(vectors), torch.cat(objectives), torch.cat(histories, dim=1)


def _train_group(
    slices: Sequence[LayerSlice],
    start: torch.Tensor,
    radius: float,
    *,
    steps: int,
    lr: float,
    betas: tuple[float, float],
    p: float,
    q: float,
    orthogonal: bool,
    fixed: torch.Tensor,
    device: torch.device,
    penalty: SideEffectPenalty | None,
    advance,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Projected-gradient Adam on one group of vectors; returns (vectors, final objective, history)
    (objectives minus ``penalty`` when given)."""
    k = start.shape[0]
    fixed = fixed.to(device)
    if orthogonal:
        start = gram_schmidt(start, fixed.cpu())
    elif fixed.shape[0]:
        start = _project_out(start, fixed.cpu())
    start = to_radius(start, radius)
    theta = torch.nn.Parameter(start.to(device))
    optimizer = torch.optim.Adam([theta], lr=lr, betas=betas, weight_decay=0.0, amsgrad=True)
    lower = torch.ones(k, k, device=device).tril(-1)  # row i sees rows j < i
    history = torch.zeros(steps, k)
    for step in range(steps):
        optimizer.zero_grad(set_to_none=False)
        total = torch.zeros(k)
        for piece in slices:
            objective = piece.objective(theta, p, q)
            (-objective.sum()).backward()
            total += objective.detach().cpu()
        if penalty is not None:  # the loss is -(objective - penalty)
            cost, cost_grad = penalty.value_and_grad(theta.detach())
            theta.grad += cost_grad.to(device=device, dtype=theta.grad.dtype)
            total -= cost.float()
        history[step] = total
        with torch.no_grad():
            grad = theta.grad
            if fixed.shape[0]:
                grad -= (grad @ fixed.T) @ fixed
            if orthogonal and k > 1:
                units = theta / radius
                grad -= ((grad @ units.T) * lower) @ units
            grad -= (grad * theta).sum(-1, keepdim=True) * theta / radius**2  # tangent space of the sphere
        optimizer.step()
        with torch.no_grad():
            rows = theta.detach()
            if orthogonal or fixed.shape[0]:
                rows = gram_schmidt(rows, fixed) if orthogonal else _project_out(rows, fixed)
            theta.copy_(to_radius(rows, radius))
        advance(k)
    final = to_radius(theta.detach(), radius)
    objective = total_objective(slices, final, p, q)
    return final.cpu(), objective if penalty is None else objective - penalty(final).float(), history


def _project_out(rows: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    return rows - (rows @ fixed.T) @ fixed


def local_search(
    slices: Sequence[LayerSlice],
    start: torch.Tensor,
    radius: float | None = None,
    *,
    steps: int = 25,
    lr: float = PAPER_LR,
    seed: int = 0,
    **kwargs,
) -> MelboRun:
    """Search around promising vectors: a few projected-gradient steps of the MELBO objective
    starting from ``start`` (``[m, hidden]``; rescaled to ``radius``, default: their mean norm)."""
    start = torch.as_tensor(start, dtype=torch.float32).detach().cpu()
    if start.ndim == 1:
        start = start.unsqueeze(0)
    if start.numel() == 0:
        raise DiscoveryError("local search needs at least one starting vector")
    if radius is None:
        radius = float(start.norm(dim=-1).mean())
    return train_melbo(slices, start.shape[0], radius, steps=steps, lr=lr, init=start, seed=seed, **kwargs)
