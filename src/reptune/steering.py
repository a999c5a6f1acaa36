"""Online steering: add ``multiplier x vector`` to the residual stream while the model runs.

:class:`Steering` is a context manager that hooks the output of decoder block L (layer L in
the convention of :mod:`reptune.sites`) for each steered layer::

    with steer(handle, vector, layers="15", multiplier=4.0):
        texts = generate(handle, ["Is the sky green?"])

Token scope (``scope``), counted over each row's real tokens (padding excluded):

* ``all``: every token, prompt and generated;
* ``generated``: only tokens produced by ``generate`` (positions at or after the prompt length);
* ``from:K``: prompt positions ``>= K`` and every generated token; ``K < 0`` counts from the
  prompt's end (``from:-1`` starts at the last prompt token).

Operators: ``add`` adds ``multiplier * v``; ``ablate`` removes ``multiplier`` times the
component along ``v`` (``h - m (h.u) u``, u = v/|v|; ``m = 1`` projects the direction out).
``multiplier`` may be a float or one value per batch row. Hooks are removed on exit even
when the body raises. Positions are tracked from the attention mask, so results are the same
with the KV cache on or off, and with left or right padding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from reptune.data.pairs import render_chat
from reptune.errors import ReptuneError, VectorError
from reptune.hooks import HookHandle, Intervention, install
from reptune.hooks import ablate as hooks_ablate
from reptune.hooks import add as hooks_add
from reptune.models import ModelHandle
from reptune.vectors import SteeringVector, as_vector

OPERATORS = ("add", "ablate")


@dataclass(frozen=True)
class TokenScope:
    """Which tokens are steered: ``all``, ``generated`` or ``from:K``."""

    kind: str = "all"
    offset: int = 0

    @classmethod
    def parse(cls, spec: str | TokenScope) -> TokenScope:
        if isinstance(spec, TokenScope):
            return spec
        text = spec.strip()
        if text in {"all", "generated"}:
            return cls(kind=text)
        if text.startswith("from:"):
            try:
                return cls(kind="from", offset=int(text[5:]))
            except ValueError:
                pass
        raise ReptuneError(f"invalid scope {spec!r}: use all, generated or from:K (K an integer)")

    def spec(self) -> str:
        return f"from:{self.offset}" if self.kind == "from" else self.kind


class _PositionTracker:
    """Works out, before each forward call, the real-token position of every input column."""

    def __init__(self) -> None:
        self.positions: torch.Tensor | None = None  # [batch, seq] real-token index
        self.real: torch.Tensor | None = None  # [batch, seq] bool
        self.prompt_lengths: torch.Tensor | None = None  # [batch]

    def reset(self) -> None:
        self.prompt_lengths = None

    def __call__(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        reference = input_ids if input_ids is not None else embeds
        if reference is None:
            return
        batch, length = reference.shape[0], reference.shape[1]
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 2:
            mask = mask.to(torch.long)
            full = mask.cumsum(-1) - 1
            self.positions = full[:, -length:]
            self.real = mask[:, -length:].bool()
            total_real = mask.sum(-1)
        else:
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
            row = torch.arange(past, past + length, device=reference.device)
            self.positions = row.unsqueeze(0).expand(batch, -1)
            self.real = torch.ones(batch, length, dtype=torch.bool, device=reference.device)
            total_real = torch.full((batch,), past + length, device=reference.device)
        if self.prompt_lengths is None or self.prompt_lengths.shape[0] != batch:
            self.prompt_lengths = total_real.clone()


class Steering:
    """Context manager steering a model with a vector at one or more layers.

    ``with Steering(...)`` attaches the hooks (:mod:`reptune.hooks`) and removes them on exit;
    :meth:`attach` / :meth:`detach` do the same by hand, and :meth:`paused` runs a block
    unsteered (e.g. an unsteered reference on the same model).

    Args:
        handle: the model.
        vector: a :class:`SteeringVector` or ``{layer: tensor [hidden]}``.
        layers: layer spec restricting which of the vector's layers are used (default all).
        multiplier: a float, or ``[batch]`` values (one per row of every forward call).
        scope: ``all``, ``generated`` or ``from:K`` (see module docstring).
        operator: ``add`` or ``ablate``.
        allow_model_mismatch: steer a model other than the one the vector was made for
            (hidden size and layer count must still match).
    """

    def __init__(
        self,
        handle: ModelHandle,
        vector: SteeringVector | dict[int, torch.Tensor],
        layers: str | int | Sequence[int] | None = None,
        multiplier: float | Sequence[float] | torch.Tensor = 1.0,
        *,
        scope: str | TokenScope = "all",
        operator: str = "add",
        allow_model_mismatch: bool = False,
    ) -> None:
        if operator not in OPERATORS:
            raise ReptuneError(f"unknown operator {operator!r}: use add or ablate")
        vector = as_vector(vector, handle, allow_model_mismatch=allow_model_mismatch)  # a bare {layer: tensor} validated as a file
        directions = vector.select(layers)
        if not directions:
            raise VectorError("nothing to steer with: no layers selected")
        self.handle = handle
        self.directions = directions
        self.scope = TokenScope.parse(scope)
        self.operator = operator
        self.multiplier = self._check_multiplier(multiplier)
        self._tracker = _PositionTracker()
        self._hooks: HookHandle | None = None
        self._edits = self._interventions()  # built once: each keeps its vector cast per dtype/device

    @staticmethod
    def _check_multiplier(multiplier: float | Sequence[float] | torch.Tensor) -> float | torch.Tensor:
        if isinstance(multiplier, (int, float)):
            if not torch.isfinite(torch.tensor(float(multiplier))):
                raise ReptuneError(f"multiplier must be finite, got {multiplier}")
            return float(multiplier)
        tensor = torch.as_tensor(multiplier, dtype=torch.float32).reshape(-1)
        if not torch.isfinite(tensor).all():
            raise ReptuneError("multipliers must be finite")
        return tensor

    @property
    def tokenwise(self) -> bool:
        """Whether each token's edit depends only on that token's own hidden state: scope ``all``
        and one multiplier for every row. Then a forward split in two (a shared prompt prefix,
        then the rest; :mod:`reptune.evaluation.scoring`) is steered exactly as one pass, and the
        hooks carry ``reptune_tokenwise = True`` to say so."""
        return self.scope.kind == "all" and isinstance(self.multiplier, float)

    def reset(self) -> None:
        """Forget the prompt length (call between independent generate calls without cache)."""
        self._tracker.reset()

    @property
    def attached(self) -> bool:
        """Whether the hooks are on the model now."""
        return self._hooks is not None

    def attach(self) -> Steering:
        """Put the steering hooks on the model (a no-op when attached); returns ``self``."""
        if self._hooks is not None:
            return self
        hooks = HookHandle()
        if self.scope.kind != "all":
            hooks.pre_hook(self.handle.model, self._tracker)
        # prepend: run before other hooks on the block (transformers' output_hidden_states
        # recorder, reptune's readers), so everything downstream sees the steered output
        self._hooks = install(self.handle.layers, self._edits, prepend=True, into=hooks)
        return self

    def detach(self) -> None:
        """Take the hooks off the model (a no-op when detached); the prompt length is forgotten."""
        if self._hooks is not None:
            self._hooks.remove()
            self._hooks = None
        self._tracker = _PositionTracker()

    @contextlib.contextmanager
    def paused(self) -> Iterator[Steering]:
        """Run the body unsteered: detach, then re-attach on exit if the hooks were on."""
        was_attached = self.attached
        self.detach()
        try:
            yield self
        finally:
            if was_attached:
                self.attach()

    def __enter__(self) -> Steering:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    @property
    def _cast_cache(self) -> dict[tuple[int, torch.dtype, torch.device], torch.Tensor]:
        """The vectors cast so far, ``{(layer, dtype, device): [hidden]}`` (cast lazily, once each)."""
        return {(layer, *key): tensor for layer, edit in self._edits.items() for key, tensor in edit._cast.items()}

    def _interventions(self) -> dict[int, Intervention]:
        make = hooks_add if self.operator == "add" else hooks_ablate
        return {
            layer: make(direction, self._row_multiplier, self._token_mask, tokenwise=self.tokenwise)
            for layer, direction in self.directions.items()
        }

    def _token_mask(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """``[batch, seq, 1]`` mask of steered tokens, or None for every token."""
        if self.scope.kind == "all":
            return None
        tracker = self._tracker
        if tracker.positions is None or tracker.prompt_lengths is None or tracker.positions.shape != hidden.shape[:2]:
            raise ReptuneError(f"scope {self.scope.spec()!r} needs the model to be called with input_ids/attention_mask")
        prompt = tracker.prompt_lengths.unsqueeze(-1)
        if self.scope.kind == "generated":
            chosen = tracker.positions >= prompt
        elif self.scope.offset >= 0:
            chosen = tracker.positions >= self.scope.offset
        else:
            chosen = tracker.positions >= prompt + self.scope.offset
        return (chosen & tracker.real).unsqueeze(-1).to(device=hidden.device, dtype=hidden.dtype)

    def _row_multiplier(self, hidden: torch.Tensor) -> torch.Tensor | float:
        if isinstance(self.multiplier, float):
            return self.multiplier
        if self.multiplier.numel() != hidden.shape[0]:
            raise ReptuneError(f"{self.multiplier.numel()} multipliers given for a batch of {hidden.shape[0]} rows")
        return self.multiplier.to(device=hidden.device, dtype=hidden.dtype).view(-1, 1, 1)


def steer(
    handle: ModelHandle,
    vector: SteeringVector | dict[int, torch.Tensor],
    layers: str | int | Sequence[int] | None = None,
    multiplier: float | Sequence[float] | torch.Tensor = 1.0,
    **kwargs: Any,
) -> Steering:
    """Shorthand for :class:`Steering` (use it in a ``with`` statement)."""
    return Steering(handle, vector, layers, multiplier, **kwargs)


def paused(steering: Steering | None) -> contextlib.AbstractContextManager[Any]:
    """``steering.paused()``, or a no-op context for ``None`` (unsteered already)."""
    return contextlib.nullcontext() if steering is None else steering.paused()


def format_prompts(handle: ModelHandle, prompts: Sequence[str], chat: bool = True, system: str | None = None) -> list[str]:
    """Apply the chat template (when ``chat`` and the tokenizer has one) to user prompts."""
    if not chat:
        return list(prompts)
    return [render_chat(handle.tokenizer, prompt, system=system) for prompt in prompts]


@torch.inference_mode()
def generate(
    handle: ModelHandle,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 48,
    chat: bool = True,
    system: str | None = None,
    batch_size: int = 8,
    use_cache: bool = True,
    steering: Steering | None = None,
    return_token_ids: bool = False,
) -> list[str] | list[list[int]]:
    """Greedy completions (new text only) for ``prompts``, batched with left padding.

    Args:
        prompts: user messages (chat template applied when ``chat``) or raw text.
        steering: an *entered* :class:`Steering` whose prompt length is reset per batch;
            leave ``None`` when steering is managed by an outer ``with`` block.
        return_token_ids: return the generated token ids instead of text.

    Returns:
        One string (or id list) per prompt, in order.
    """
    from reptune.activations import tokenize_examples
    from reptune.data.pairs import Example

    if not prompts:
        raise ReptuneError("no prompts to generate from")
    if max_new_tokens < 1:
        raise ReptuneError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    texts = format_prompts(handle, prompts, chat=chat, system=system)
    tokenizer = handle.tokenizer
    outputs: list[Any] = []
    for start in range(0, len(texts), batch_size):
        chunk = [Example(text) for text in texts[start : start + batch_size]]
        batch = tokenize_examples(tokenizer, chunk, padding_side="left", device=handle.device)
        if steering is not None:
            steering.reset()
        with handle.autocast():
            generated = handle.model.generate(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=use_cache,
                pad_token_id=tokenizer.pad_token_id,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        new_tokens = generated[:, batch.input_ids.shape[1] :]
        for row in new_tokens.tolist():
            row = _strip_after_eos(row, tokenizer)
            outputs.append(row if return_token_ids else tokenizer.decode(row, skip_special_tokens=True).strip())
    return outputs


def _strip_after_eos(ids: list[int], tokenizer: Any) -> list[int]:
    eos = getattr(tokenizer, "eos_token_id", None)
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    for index, token in enumerate(ids):
        if token in eos_ids:
            return ids[:index]
    return ids


def steered_generate(
    handle: ModelHandle,
    vector: SteeringVector | dict[int, torch.Tensor],
    prompts: Sequence[str],
    multipliers: Sequence[float],
    layers: str | int | Sequence[int] | None = None,
    *,
    scope: str = "all",
    operator: str = "add",
    allow_model_mismatch: bool = False,
    **generate_kwargs: Any,
) -> dict[float, list[str]]:
    """Greedy completions of every prompt under every multiplier, in shared batches.

    Rows are (multiplier, prompt) combinations steered with per-row multipliers, so all
    multipliers run together. Multiplier 0 is the unsteered baseline.

    Returns:
        ``{multiplier: [completion per prompt]}``.
    """
    if not multipliers:
        raise ReptuneError("give at least one multiplier")
    rows = [(multiplier, prompt) for multiplier in multipliers for prompt in prompts]
    batch_size = int(generate_kwargs.pop("batch_size", 8))
    texts: list[str] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        with Steering(
            handle,
            vector,
            layers,
            [multiplier for multiplier, _ in chunk],
            scope=scope,
            operator=operator,
            allow_model_mismatch=allow_model_mismatch,
        ) as steering:
            texts.extend(generate(handle, [prompt for _, prompt in chunk], batch_size=len(chunk), steering=steering, **generate_kwargs))
    by_multiplier: dict[float, list[str]] = {float(m): [] for m in multipliers}
    for (multiplier, _), text in zip(rows, texts):
        by_multiplier[float(multiplier)].append(text)
    return by_multiplier
