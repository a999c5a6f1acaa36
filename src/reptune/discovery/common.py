"""Shared pieces of discovery: its error type, input checks and vector geometry helpers."""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Any

import torch

from reptune.errors import ReptuneError, check_range
from reptune.tokens import jsonl_records


class DiscoveryError(ReptuneError):
    """Bad discovery input (layers, radius, prompts, vector counts), explained in one line."""


def check_radius(radius: float) -> float:
    """A finite radius > 0, as float."""
    if isinstance(radius, bool) or not isinstance(radius, (int, float)):
        raise DiscoveryError(f"radius must be a number > 0 or 'auto', got {radius!r}")
    if not math.isfinite(float(radius)) or float(radius) <= 0:
        raise DiscoveryError(f"radius must be > 0 (the norm of every vector), got {radius}")
    return float(radius)


def check_number(name: str, value: Any, low: float, *, above: bool = False, integer: bool = False, optional: bool = False) -> None:
    """A numeric setting: a number (an integer with ``integer``; a boolean never is one), finite and
    ``>= low`` (``> low`` with ``above``); ``None`` passes when ``optional``. ``name`` is what the
    one-line :class:`DiscoveryError` calls it (a field name, or the CLI flag)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real):
        raise DiscoveryError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    check_range(name, value, low, above=above, error=DiscoveryError)


def check_count(num: int, what: str = "num") -> int:
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise DiscoveryError(f"{what} must be a positive integer, got {num!r}")
    return num


def check_orthogonal_room(num: int, hidden_size: int, fixed: int = 0) -> None:
    """``num`` mutually orthogonal vectors (plus ``fixed`` earlier ones) must fit in the hidden space."""
    if num + fixed > hidden_size:
        extra = f" plus {fixed} earlier one(s)" if fixed else ""
        raise DiscoveryError(
            f"cannot make {num} orthogonal vectors{extra} in a hidden space of size {hidden_size}; "
            f"ask for at most {hidden_size - fixed} or turn orthogonality off"
        )


def orthonormal_basis(vectors: torch.Tensor | None, hidden_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """An orthonormal basis ``[e, hidden]`` (float32) of the span of ``vectors`` (rows); empty if None."""
    if vectors is None or vectors.numel() == 0:
        return torch.zeros(0, hidden_size, device=device)
    rows = vectors.detach().to(device=device, dtype=torch.float32).reshape(-1, hidden_size)
    q, r = torch.linalg.qr(rows.T.double())
    keep = r.diagonal().abs() > 1e-9 * max(1.0, float(r.diagonal().abs().max()))
    return q[:, keep].T.to(torch.float32)


def gram_schmidt(rows: torch.Tensor, fixed: torch.Tensor | None = None) -> torch.Tensor:
    """Orthonormalise ``rows`` ``[k, d]`` in order: row i loses its components along the
    ``fixed`` (orthonormal) rows and along rows ``0..i-1``; each keeps its orientation."""
    k = rows.shape[0]
    head = fixed if fixed is not None and fixed.numel() else rows.new_zeros(0, rows.shape[1])
    stacked = torch.cat([head.to(rows.dtype), rows], dim=0).T.double()  # [d, e + k]
    q, r = torch.linalg.qr(stacked)
    signs = torch.sign(r.diagonal())
    signs[signs == 0] = 1.0
    q = q * signs
    return q[:, head.shape[0] : head.shape[0] + k].T.to(rows.dtype)


def to_radius(rows: torch.Tensor, radius: float) -> torch.Tensor:
    """Rescale every row to norm ``radius`` (computed in float64, so the float32 norm is exact to ~1e-7 R)."""
    wide = rows.detach().double()
    wide = wide / wide.norm(dim=-1, keepdim=True).clamp_min(1e-300) * radius
    return wide.to(rows.dtype)


def random_directions(num: int, hidden_size: int, generator: torch.Generator) -> torch.Tensor:
    """``num`` Gaussian rows ``[num, hidden]`` float32 on the CPU, from ``generator``."""
    return torch.randn(num, hidden_size, generator=generator, dtype=torch.float32)


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded for one call (never the global RNG)."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(seed))
    return generator


def load_prompts(path: str | Path) -> list[str]:
    """Prompts from a file: ``.txt`` (one per non-empty line), ``.jsonl`` (strings or objects with
    ``prompt``), or ``.json`` (a list of strings/objects, or ``{"prompts": [...]}``)."""
    path = Path(path)
    if not path.is_file():
        raise DiscoveryError(f"prompts file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DiscoveryError(f"{path}: not UTF-8 text") from None

    def one(item: Any, where: str) -> str:
        if isinstance(item, dict):
            item = item.get("prompt")
        if not isinstance(item, str) or not item.strip():
            raise DiscoveryError(f"{where}: expected a prompt string or an object with a 'prompt' string")
        return item

    try:
        if path.suffix == ".jsonl":
            records = jsonl_records(text.splitlines(), str(path), error=DiscoveryError, bad_json="{where}: invalid JSON ({msg}, line {lineno})", too_deep="{where}: JSON nested too deeply to read")
            prompts = [one(record, f"{path}:{number}") for number, record in records]
        elif path.suffix == ".json":
            data = json.loads(text)
            data = data.get("prompts") if isinstance(data, dict) else data
            if not isinstance(data, list):
                raise DiscoveryError(f"{path}: expected a JSON list of prompts or {{\"prompts\": [...]}}")
            prompts = [one(item, f"{path}[{index}]") for index, item in enumerate(data)]
        else:
            prompts = [line.strip() for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise DiscoveryError(f"{path}: invalid JSON ({exc.msg}, line {exc.lineno})") from None
    except RecursionError:
        raise DiscoveryError(f"{path}: JSON nested too deeply to read") from None
    if not prompts:
        raise DiscoveryError(f"{path}: no prompts")
    return prompts
