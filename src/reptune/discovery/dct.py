"""DCT: the exponential deep causal transcoder (Mack & Turner, "Deep Causal Transcoding", 2024).

The layer slice's average response to a source-layer vector,
``Delta(theta) = mean over prompts and selected positions of (target(h + theta) - target(h))``,
is modelled as a sum of ``m`` exponential factors

    Delta(theta) ~ sum_l alpha_l u_l (exp(v_l . theta / R) - 1)

with unit input directions ``v_l`` (the steering vectors are ``R v_l``) and unit output
directions ``u_l``. Steps:

1. **Calibrate R** (:func:`calibrate_radius`): for random unit directions ``w``, the
   nonlinear part of the response, ``Delta(R w) - R J w``, should be ``lambda = 0.5`` times the
   linear part ``R J w`` (root mean square over directions). ``J w`` is a central finite
   difference in the weights' precision (forward-mode AD is not available for CPU SDPA
   kernels); ``R`` is found on a log grid, then by bisection in log R.
2. **Fit** (:func:`fit_dct`): orthogonalised gradient iteration, a nonlinear version of
   orthogonal iteration for the top singular vectors of ``J``, in the reference's order
   (``ExponentialDCT.fit`` of amack315/melbo-dct-post, ``src/dct.py``): each iteration first
   orthogonalises the ``v_l`` (QR, in order; skipped with ``orthogonal=False``), then sets
   ``u_l = normalise(Delta(R v_l))`` and ``v_l = normalise(grad_theta u_l . Delta(theta) at R v_l)``
   (with the ``u_l`` of the previous iteration). So the final ``v_l`` are the normalised gradients
   of the last iteration, close to but not exactly orthogonal (``DCTResult.max_overlap``). All
   ``m`` factors run as one batch. The QR keeps each direction's orientation (``R_ll > 0``);
   the reference's ``torch.linalg.qr`` may flip a column's sign, which only changes where that
   factor's next iteration starts.
3. **Rank** (the reference's ``rank``): ``b_l = u_l . Delta(R v_l)`` with the last iteration's ``u_l``
   and the final ``v_l``, ``K = (U U^T) * expm1(V V^T)``, and ``alpha`` solving ``K alpha = b``
   (least squares in float64, so a singular ``K`` is no error); factors are ranked by ``|alpha|``
   (the reference's ``alpha^2``), or in :func:`reptune.discovery.discover` by a logit readout.
   Because ``U`` and ``V`` are not orthonormal, ``K`` is not ``(e - 1) I`` and the solve mixes factors.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from reptune._progress import progress_bar
from reptune.discovery.common import (
    DiscoveryError,
    check_count,
    check_orthogonal_room,
    check_radius,
    gram_schmidt,
    make_generator,
    random_directions,
    to_radius,
)
from reptune.discovery.slice import LayerSlice

DEFAULT_RATIO = 0.5


def _num_prompts(slices: Sequence[LayerSlice]) -> int:
    return sum(piece.num_prompts for piece in slices)


def mean_response(slices: Sequence[LayerSlice], theta: torch.Tensor) -> torch.Tensor:
    """``Delta(theta)`` averaged over positions and prompts, ``[k, hidden]`` float32 on the CPU (no grad)."""
    with torch.no_grad():
        total = sum((piece.mean_delta_sum(theta.to(piece.device)).cpu() for piece in slices), torch.zeros(theta.shape[0], theta.shape[1]))
    return total / _num_prompts(slices)


def linear_response(slices: Sequence[LayerSlice], units: torch.Tensor, *, rel_step: float = 1e-3) -> torch.Tensor:
    """``J w`` for each row ``w`` of ``units`` ``[m, hidden]``: the Jacobian of the mean response at 0,
    by central differences of step ``rel_step`` times the mean source-activation norm, computed
    without autocast."""
    step = rel_step * max(slices[0].source_norm(), 1e-6)
    total = torch.zeros(units.shape[0], units.shape[1])
    with torch.no_grad():
        for piece in slices:
            with piece.precise():
                plus = piece.target_acts((units * step).to(piece.device))
                minus = piece.target_acts((units * -step).to(piece.device))
                weights = piece.mask.float() / piece.mask.sum(-1, keepdim=True).clamp_min(1).float()
                total += torch.einsum("knsd,ns->kd", (plus - minus).float(), weights).cpu()
    return total / (2 * step * _num_prompts(slices))


def response_ratio(slices: Sequence[LayerSlice], units: torch.Tensor, linear: torch.Tensor, radius: float) -> float:
    """Root mean square over directions of ``|Delta(R w) - R J w| / |R J w|`` (without autocast)."""
    with torch.no_grad():
        total = torch.zeros(units.shape[0], units.shape[1])
        for piece in slices:
            with piece.precise():
                total += piece.mean_delta_sum((units * radius).to(piece.device)).cpu()
        response = total / _num_prompts(slices)
    linear_part = radius * linear
    ratios = (response - linear_part).pow(2).sum(-1) / linear_part.pow(2).sum(-1).clamp_min(1e-30)
    return float(ratios.mean().sqrt())


@dataclass
class Calibration:
    """The radius where the nonlinear/linear response ratio reaches ``target``."""

    radius: float
    target: float
    ratio: float
    grid: list[tuple[float, float]] = field(default_factory=list)  # (R, ratio) evaluated
    num_directions: int = 0
    seconds: float = 0.0

    def markdown(self) -> str:
        head = (f"Radius calibration: R = {self.radius:.4g} where nonlinear/linear = {self.ratio:.3f} (target {self.target}); "
                f"{self.num_directions} random directions.")
        lines = [head, "", "| R | nonlinear / linear |", "|---:|---:|"]
        lines += [f"| {radius:.4g} | {ratio:.3f} |" for radius, ratio in sorted(self.grid)]
        return "\n".join(lines) + "\n"


def calibrate_radius(
    slices: Sequence[LayerSlice],
    *,
    ratio: float = DEFAULT_RATIO,
    num_directions: int = 16,
    points: int = 9,
    bisections: int = 10,
    seed: int = 0,
    progress: bool = False,
) -> Calibration:
    """Find ``R`` with nonlinear/linear response ratio ``ratio`` (the DCT calibration, ``lambda``).

    Searches a log grid from 1/64 to 16 times the mean source-activation norm (widened up to
    three times by 16x each way if the ratio does not cross), then bisects in ``log R``.

    ``progress`` shows a bar over the ``points + bisections`` radii it usually tries.

    Raises:
        DiscoveryError: ``ratio`` outside (0, 1), or the ratio never crosses it (the slice is
            almost linear or saturated everywhere): pass an explicit radius instead.
    """
    with progress_bar("calibrating the radius", total=points + bisections, enabled=progress) as advance:
        return _calibrate(slices, ratio, num_directions, points, bisections, seed, advance)


def _calibrate(
    slices: Sequence[LayerSlice], ratio: float, num_directions: int, points: int, bisections: int, seed: int, advance: Callable[..., None],
) -> Calibration:
    if not 0 < ratio < 1:
        raise DiscoveryError(f"calibration ratio must be in (0, 1), got {ratio}")
    num_directions = check_count(num_directions, "calibration directions")
    started = time.perf_counter()
    units = to_radius(random_directions(num_directions, slices[0].hidden_size, make_generator(seed)), 1.0)
    linear = linear_response(slices, units)
    if not bool((linear.norm(dim=-1) > 0).all()):
        raise DiscoveryError("the target layer does not respond to the source layer (zero Jacobian): cannot calibrate a radius")
    scale = max(slices[0].source_norm(), 1e-6)
    grid: dict[float, float] = {}

    def at(radius: float) -> float:
        if radius not in grid:
            grid[radius] = response_ratio(slices, units, linear, radius)
            advance(1)
        return grid[radius]

    low, high = scale / 64, scale * 16
    for _ in range(4):
        radii = [math.exp(math.log(low) + i * (math.log(high) - math.log(low)) / (points - 1)) for i in range(points)]
        values = [at(radius) for radius in radii]
        above = [i for i, value in enumerate(values) if value >= ratio]
        if above and above[0] > 0:
            lo, hi = radii[above[0] - 1], radii[above[0]]
            break
        if above:  # already nonlinear at the smallest radius
            high, low = low, low / 16
        else:
            low, high = high, high * 16
    else:
        seen = ", ".join(f"R={r:.3g}: {v:.3f}" for r, v in sorted(grid.items())[:: max(1, len(grid) // 6)])
        raise DiscoveryError(f"cannot calibrate the radius: the nonlinear/linear ratio never crosses {ratio} ({seen}); pass a radius")
    for _ in range(bisections):
        mid = math.sqrt(lo * hi)
        if at(mid) >= ratio:
            hi = mid
        else:
            lo = mid
    best = min((lo, hi), key=lambda r: abs(at(r) - ratio))
    return Calibration(radius=best, target=ratio, ratio=at(best), grid=sorted(grid.items()), num_directions=num_directions,
                       seconds=time.perf_counter() - started)


@dataclass
class DCTResult:
    """Factors of an exponential DCT (rows in fit order, not ranked).

    Attributes:
        vectors: ``[m, hidden]`` steering vectors ``R v_l`` (norm ``radius``), float32 CPU.
        input_dirs, output_dirs: ``V`` and ``U``, ``[m, hidden]`` unit rows.
        alpha: ``[m]`` factor strengths solving ``K alpha = response``; ``response``: ``[m]``
            ``b_l = u_l . Delta(R v_l)``.
        history: objective ``sum_l u_l . Delta(R v_l)`` per iteration (before its update).
        max_overlap: the largest ``|v_i . v_j|``, ``i != j``, of the final input directions.
    """

    vectors: torch.Tensor
    input_dirs: torch.Tensor
    output_dirs: torch.Tensor
    alpha: torch.Tensor
    response: torch.Tensor
    radius: float
    iters: int
    orthogonal: bool
    seed: int
    history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    max_overlap: float = 0.0


def dct_alpha(inputs: torch.Tensor, outputs: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """``alpha`` ``[m]`` solving ``((U U^T) * expm1(V V^T)) alpha = b`` (float64 least squares).

    ``inputs`` ``V`` and ``outputs`` ``U`` are ``[m, hidden]`` unit rows, ``strength`` ``b`` is ``[m]``.
    """
    kernel = (outputs.double() @ outputs.double().T) * torch.expm1(inputs.double() @ inputs.double().T)
    return torch.linalg.lstsq(kernel, strength.double().unsqueeze(-1)).solution.squeeze(-1).float()


def _dct_step(slices: Sequence[LayerSlice], inputs: torch.Tensor, outputs: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over the prompts at ``theta = R V``: ``(Delta(R V) [m, hidden], grad_theta sum_l u_l . Delta_l [m, hidden])``."""
    device = slices[0].device
    theta = (inputs * radius).to(device).requires_grad_(True)
    response = torch.zeros_like(inputs)
    for piece in slices:
        part = piece.mean_delta_sum(theta)
        (part * outputs.to(device)).sum().backward()
        response += part.detach().cpu()
    count = _num_prompts(slices)
    return response / count, theta.grad.detach().cpu().float() / count


def fit_dct(
    slices: Sequence[LayerSlice],
    num_factors: int,
    radius: float,
    *,
    iters: int = 10,
    orthogonal: bool = True,
    seed: int = 0,
) -> DCTResult:
    """Fit ``num_factors`` exponential DCT factors at radius ``R`` (see the module docstring).

    Raises:
        DiscoveryError: bad radius/count, or more orthogonal factors than hidden dimensions.
    """
    radius = check_radius(radius)
    num_factors = check_count(num_factors, "number of factors")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise DiscoveryError(f"DCT iterations must be a non-negative integer, got {iters!r}")
    hidden = slices[0].hidden_size
    if orthogonal:
        check_orthogonal_room(num_factors, hidden)
    started = time.perf_counter()
    generator = make_generator(seed)
    inputs = random_directions(num_factors, hidden, generator)
    inputs = gram_schmidt(inputs) if orthogonal else to_radius(inputs, 1.0)
    outputs = to_radius(random_directions(num_factors, hidden, generator), 1.0)
    history: list[float] = []
    for _ in range(iters):
        if orthogonal:  # the reference orthogonalises at the start of every iteration, not after it
            inputs = gram_schmidt(inputs)
        response, grad = _dct_step(slices, inputs, outputs, radius)
        history.append(float((response * outputs).sum()))
        outputs = to_radius(response, 1.0)
        inputs = to_radius(grad, 1.0)
    inputs = to_radius(inputs, 1.0)
    final = mean_response(slices, inputs * radius)
    strength = (final * outputs).sum(-1)
    alpha = dct_alpha(inputs, outputs, strength)
    overlaps = (inputs @ inputs.T - torch.eye(num_factors)).abs()
    return DCTResult(
        vectors=to_radius(inputs, radius), input_dirs=inputs, output_dirs=outputs, alpha=alpha, response=strength,
        radius=radius, iters=iters, orthogonal=orthogonal, seed=seed, history=history, seconds=time.perf_counter() - started,
        max_overlap=float(overlaps.max()) if num_factors > 1 else 0.0,
    )
