"""The one hook installer: read, add, ablate or replay at decoder-block outputs.

Every intervention reptune makes while a model runs goes through :func:`install` (the shape of
steering-vectors' ``patch_activations``): it hooks the output of ``blocks[L]`` (layer L in the
convention of :mod:`reptune.sites`) for each layer it is given and returns a :class:`HookHandle`,
which removes the hooks on :meth:`~HookHandle.remove` or at the end of a ``with`` block::

    store: dict[int, torch.Tensor] = {}
    with install(handle.layers, {12: read(store)}, stop_after=12):
        forward_until(handle.model, input_ids=ids, attention_mask=mask)
    store[12]  # [batch, seq, hidden]

Blocks may sit on different devices (a model loaded with a ``device_map``): every edit is made on
the block output's own device (vectors, masks and multipliers are moved there), and readers can
move what they record to one device.

Interventions (one per layer):

* :func:`read` records the block output ``[batch, seq, hidden]`` (not detached) in a dict;
* :func:`add` replaces ``h`` with ``h + strength * v`` (masked to chosen tokens);
* :func:`ablate` replaces ``h`` with ``h - strength * (h . u) u`` (``u = v / |v|``);
* :func:`replay` replaces the block output with a given tensor (activation patching).

``stop_after=L`` ends the forward pass right after block L's hooks ran (an internal
:class:`StopForward` that :func:`forward_until` swallows): the deeper blocks, the final norm and
the LM head never run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from reptune.sites import block_output_tensor, replace_block_output

# strength: a float, or a function of the hidden state giving a float or ``[batch, 1, 1]``
Strength = float | Callable[[torch.Tensor], "float | torch.Tensor"]
# token mask: a function of the hidden state giving ``[batch, seq, 1]`` (or None: every token)
TokenMask = Callable[[torch.Tensor], "torch.Tensor | None"]
KINDS = ("read", "add", "ablate", "replay")


class StopForward(Exception):
    """Raised after the hooks of the ``stop_after`` block to end the forward pass early."""


@dataclass
class Intervention:
    """What happens at one block output; build it with :func:`read`, :func:`add`,
    :func:`ablate` or :func:`replay`.

    Attributes:
        kind: ``read``, ``add``, ``ablate`` or ``replay``.
        store: ``read``: the dict filled with ``{layer: [batch, seq, hidden]}``.
        device: ``read``: move what is stored there (for a model whose blocks sit on several
            devices, :func:`reptune.models.load_model` with a ``device_map``); ``None``: leave it.
        vector: ``add``/``ablate``: the direction ``[hidden]`` (cast to the hidden state's
            dtype and device once per dtype/device).
        strength: ``add``/``ablate``: the multiplier (see :data:`Strength`).
        mask: ``add``/``ablate``: which tokens are changed (see :data:`TokenMask`).
        value: ``replay``: the tensor that replaces the output (broadcast to ``[batch, seq, hidden]``).
        tokenwise: the edit of each token depends only on that token (marks the hook with
            ``reptune_tokenwise``, read by :mod:`reptune.evaluation.scoring`).
    """

    kind: str
    store: dict[int, torch.Tensor] | None = None
    device: torch.device | None = None
    vector: torch.Tensor | None = None
    strength: Strength = 1.0
    mask: TokenMask | None = None
    value: torch.Tensor | None = None
    tokenwise: bool = False
    _cast: dict[tuple[torch.dtype, torch.device], torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown intervention {self.kind!r}: use one of {', '.join(KINDS)}")

    def vector_like(self, hidden: torch.Tensor) -> torch.Tensor:
        """The vector in ``hidden``'s dtype and device (cached per dtype/device)."""
        assert self.vector is not None
        key = (hidden.dtype, hidden.device)
        cached = self._cast.get(key)
        if cached is None:
            cached = self.vector.to(device=hidden.device, dtype=hidden.dtype)
            self._cast[key] = cached
        return cached


def read(store: dict[int, torch.Tensor], device: torch.device | str | None = None) -> Intervention:
    """Record the block output ``[batch, seq, hidden]`` in ``store[layer]`` on every forward
    (moved to ``device`` when given; autograd follows the move)."""
    return Intervention("read", store=store, device=None if device is None else torch.device(device))


def add(vector: torch.Tensor, strength: Strength = 1.0, mask: TokenMask | None = None, *, tokenwise: bool = False) -> Intervention:
    """Add ``strength * vector`` (``vector`` ``[hidden]``) to the chosen tokens' block output."""
    return Intervention("add", vector=vector, strength=strength, mask=mask, tokenwise=tokenwise)


def ablate(vector: torch.Tensor, strength: Strength = 1.0, mask: TokenMask | None = None, *, tokenwise: bool = False) -> Intervention:
    """Remove ``strength`` times the component along ``vector`` from the chosen tokens."""
    return Intervention("ablate", vector=vector, strength=strength, mask=mask, tokenwise=tokenwise)


def replay(value: torch.Tensor) -> Intervention:
    """Replace the block output with ``value`` (e.g. activations recorded on another input)."""
    return Intervention("replay", value=value, tokenwise=False)


def _apply(intervention: Intervention, layer: int, output: Any) -> Any:
    """Run one intervention on a block output; returns the new output (None: unchanged)."""
    hidden = block_output_tensor(output)
    if intervention.kind == "read":
        assert intervention.store is not None
        intervention.store[layer] = hidden if intervention.device is None else hidden.to(intervention.device)
        return None
    if intervention.kind == "replay":
        assert intervention.value is not None
        value = intervention.value.to(device=hidden.device, dtype=hidden.dtype)
        return replace_block_output(output, value.expand_as(hidden))
    vector = intervention.vector_like(hidden)
    strength = intervention.strength(hidden) if callable(intervention.strength) else intervention.strength
    if intervention.kind == "add":
        delta = strength * vector
    else:
        unit = vector / vector.norm()
        delta = -strength * (hidden @ unit).unsqueeze(-1) * unit
    mask = intervention.mask(hidden) if intervention.mask is not None else None
    if mask is not None:
        delta = delta * mask
    return replace_block_output(output, hidden + delta)


def _make_hook(intervention: Intervention, layer: int) -> Callable[..., Any]:
    def hook(_module: torch.nn.Module, _args: Any, output: Any) -> Any:
        return _apply(intervention, layer, output)

    hook.reptune_tokenwise = intervention.tokenwise  # type: ignore[attr-defined]
    return hook


def _stop_hook(_module: torch.nn.Module, _args: Any, _output: Any) -> None:
    raise StopForward


class HookHandle:
    """The hooks one :func:`install` call put on a model; removable, and a context manager.

    ``remove()`` is idempotent; leaving a ``with`` block removes the hooks even when the body
    raises.
    """

    def __init__(self) -> None:
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def __len__(self) -> int:
        return len(self._hooks)

    def pre_hook(self, module: torch.nn.Module, fn: Callable[..., Any], *, with_kwargs: bool = True) -> None:
        """Also hold a forward pre-hook on ``module`` (e.g. a position tracker on the model)."""
        self._hooks.append(module.register_forward_pre_hook(fn, with_kwargs=with_kwargs))

    def forward_hook(self, module: torch.nn.Module, fn: Callable[..., Any], *, prepend: bool = False) -> None:
        """Also hold a forward hook on ``module``."""
        self._hooks.append(module.register_forward_hook(fn, prepend=prepend))

    def remove(self) -> None:
        """Remove every hook (safe to call twice)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def __enter__(self) -> HookHandle:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def install(
    blocks: Sequence[torch.nn.Module],
    interventions: Mapping[int, Intervention],
    *,
    stop_after: int | None = None,
    prepend: bool = False,
    into: HookHandle | None = None,
) -> HookHandle:
    """Hook ``blocks[layer]``'s output for each ``{layer: intervention}`` (in layer order).

    Args:
        blocks: the decoder blocks (``ModelHandle.layers``); ``layer`` indexes them (>= 0).
        interventions: one intervention per layer.
        stop_after: end the forward pass after this block's hooks (see :func:`forward_until`).
        prepend: run before the hooks already on a block (steering does, so that readers and
            transformers' ``output_hidden_states`` recorder see the edited output).
        into: add the hooks to this handle instead of a new one.

    Returns:
        The :class:`HookHandle`; if installing fails half-way, what was installed is removed.
    """
    handle = into if into is not None else HookHandle()
    try:
        for layer in sorted(interventions):
            handle.forward_hook(blocks[layer], _make_hook(interventions[layer], layer), prepend=prepend)
        if stop_after is not None:
            handle.forward_hook(blocks[stop_after], _stop_hook)
    except BaseException:
        handle.remove()
        raise
    return handle


def forward_until(model: torch.nn.Module, **kwargs: Any) -> Any:
    """``model(**kwargs)``, ending quietly where a ``stop_after`` hook stops it.

    Returns:
        The model's output, or ``None`` when the forward pass was stopped early.
    """
    try:
        return model(**kwargs)
    except StopForward:
        return None
