"""The layer slice: blocks ``source+1 .. target`` replayed on cached source-layer activations.

Discovery asks one question many times: *how does the target layer change when theta is added
at the source layer?* (layers in the convention of :mod:`reptune.sites`: layer L is the output
of block L). Running the whole model for every question wastes the blocks before the source,
the blocks after the target and the LM head. :class:`LayerSlice` instead

1. runs the model **once** on the prompts (right padding, early exit after the target block),
   recording the source-layer output, the target-layer output, and the exact arguments every
   block ``source+1 .. target`` received (a forward pre-hook with ``with_kwargs=True``:
   the causal + padding mask, position ids, rotary ``position_embeddings``, per-layer sliding
   window masks, ...), then
2. answers each question by calling those blocks directly on ``cached + theta``, with the
   recorded arguments tiled along the batch for ``k`` vectors at once (row ``v*N + i`` is
   vector ``v`` on prompt ``i``).

Recording what the model itself passed makes the replay layout-agnostic (Llama, Qwen2, Gemma,
GPT-2, NeoX, Phi, ... take different arguments); the first replay for each ``k`` is checked
against the normal forward's target activation, so a layout the replay cannot reproduce fails
loudly instead of training on the wrong function. Right padding keeps every real token's
attention identical to the unpadded prompt (pads come after it), and padded positions never
enter an objective (see :attr:`LayerSlice.mask`).

``Delta(theta) = target(cached + theta) - target(cached)`` where both terms come from the same
replay code at the same batch shape, so ``Delta(0)`` is exactly zero.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from reptune.activations import capture_layers, run_until, tokenize_examples
from reptune.data.pairs import Example
from reptune.discovery.common import DiscoveryError
from reptune.hooks import HookHandle
from reptune.models import ModelHandle, text_config
from reptune.sites import Positions, block_output_tensor, normalize_layer

REPLAY_TOLERANCE = 1e-2  # relative error allowed between replay(theta=0) and the model's own forward
# On CPU, the plain ("math") attention kernel is faster than the flash kernel for short prompts (its
# backward especially: about 20% of a whole MELBO step on SmolLM2); it materialises the
# [rows, heads, seq, seq] scores, so it is used only while they stay under this many elements.
MATH_ATTENTION_LIMIT = 1 << 25


def _wide(tensor: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision tensors; float32/float64 tensors unchanged."""
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()


def check_layers(handle: ModelHandle, source: int, target: int) -> tuple[int, int]:
    """Normalise ``source`` and ``target`` (negative = from the end); source must come first."""
    try:
        source_n = normalize_layer(int(source), handle.num_layers)
        target_n = normalize_layer(int(target), handle.num_layers)
    except (TypeError, ValueError) as exc:
        raise DiscoveryError(str(exc)) from None
    if source_n >= target_n:
        raise DiscoveryError(
            f"source layer {source} must come before target layer {target} "
            f"(got blocks {source_n} >= {target_n} of 0..{handle.num_layers - 1})"
        )
    return source_n, target_n


def _tile(value: Any, rows: int, k: int, memo: dict[int, Any]) -> Any:
    """Repeat every batch-leading tensor (``ndim >= 2``, first dim ``rows``) ``k`` times along dim 0."""
    if isinstance(value, torch.Tensor):
        if k == 1 or value.ndim < 2 or value.shape[0] != rows:
            return value
        key = id(value)
        if key not in memo:
            memo[key] = value.repeat(k, *([1] * (value.ndim - 1)))
        return memo[key]
    if isinstance(value, tuple):
        return tuple(_tile(item, rows, k, memo) for item in value)
    if isinstance(value, list):
        return [_tile(item, rows, k, memo) for item in value]
    if isinstance(value, dict):
        return {key: _tile(item, rows, k, memo) for key, item in value.items()}
    return value


class LayerSlice:
    """Blocks ``source+1 .. target`` of ``handle``'s model on cached prompt activations.

    Args:
        handle: the model.
        texts: the prompts, already formatted (chat template applied if wanted).
        source: layer where vectors are added (output of block ``source``).
        target: layer whose change is measured (output of block ``target``), ``> source``.
        positions: which token positions count in objectives (``all``, ``last[:N]`` or
            ``marker:TEXT[:K]``; see :class:`reptune.sites.Positions`).

    Attributes:
        source_acts: ``[N, S, hidden]`` cached source-layer activations (model dtype).
        reference: ``[N, S, hidden]`` the model's own target-layer activations.
        mask: ``[N, S]`` bool, the real (non-padding) tokens selected by ``positions``.
        attention_mask: ``[N, S]`` the tokeniser's mask (right padding).
    """

    def __init__(self, handle: ModelHandle, texts: Sequence[str], source: int, target: int, positions: str | Positions = "all") -> None:
        if not texts:
            raise DiscoveryError("no prompts: discovery needs at least one prompt")
        self.handle = handle
        self.source, self.target = check_layers(handle, source, target)
        self.positions = Positions.parse(positions)
        if self.positions.kind == "generated":
            raise DiscoveryError("positions 'generated' need completions; discovery reads prompts (use all, last:N or marker:TEXT)")
        device = handle.device
        batch = tokenize_examples(
            handle.tokenizer, [Example(text) for text in texts], padding_side="right",
            with_offsets=self.positions.kind == "marker", device=device,
        )
        self.texts = list(texts)
        self.attention_mask = batch.attention_mask
        self.mask = self.positions.mask(batch.attention_mask.cpu(), batch.offsets, batch.texts, None).to(device)
        self.num_prompts = int(batch.input_ids.shape[0])
        self._calls: list[tuple[tuple[Any, ...], dict[str, Any], bool]] = []
        blocks = [handle.layers[index] for index in range(self.source + 1, self.target + 1)]

        def record(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden_in_kwargs = not args
            if hidden_in_kwargs:
                kwargs = {key: value for key, value in kwargs.items() if key != "hidden_states"}
            else:
                args = (None, *args[1:])  # the hidden state is replaced on replay; don't keep it
            self._calls.append((args, dict(kwargs), hidden_in_kwargs))

        with HookHandle() as recorders:
            for block in blocks:
                recorders.pre_hook(block, record)
            # no_grad, not inference_mode: recorded masks / rotary tables are reused under autograd
            with torch.no_grad(), handle.autocast(), capture_layers(handle, [self.source, self.target], stop_after=self.target) as got:
                run_until(handle, batch)
                self.source_acts = got[self.source].detach()
                self.reference = got[self.target].detach()
        if len(self._calls) != len(blocks):
            raise DiscoveryError(
                f"blocks {self.source + 1}..{self.target} ran {len(self._calls)} times instead of {len(blocks)} "
                "during one forward pass: this layout cannot be replayed"
            )
        self._blocks = blocks
        self._tiled: dict[int, list[tuple[tuple[Any, ...], dict[str, Any], bool]]] = {}
        self._baselines: dict[tuple[int, bool], torch.Tensor] = {}
        self._use_autocast = True

    @contextlib.contextmanager
    def precise(self) -> Iterator[LayerSlice]:
        """Replay in the weights' own precision, without the handle's autocast (for finite
        differences); baselines are kept separately for this mode."""
        previous = self._use_autocast
        self._use_autocast = False
        try:
            yield self
        finally:
            self._use_autocast = previous

    @property
    def _autocasting(self) -> bool:
        handle = self.handle
        return self._use_autocast and handle.autocast_dtype is not None and handle.autocast_dtype != handle.dtype

    @property
    def hidden_size(self) -> int:
        return int(self.source_acts.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.source_acts.device

    def _calls_for(self, k: int) -> list[tuple[tuple[Any, ...], dict[str, Any], bool]]:
        if k not in self._tiled:
            memo: dict[int, Any] = {}
            self._tiled[k] = [
                (_tile(args, self.num_prompts, k, memo), _tile(kwargs, self.num_prompts, k, memo), in_kwargs)
                for args, kwargs, in_kwargs in self._calls
            ]
        return self._tiled[k]

    def _attention_kernel(self, rows: int) -> contextlib.AbstractContextManager[Any]:
        if self.device.type != "cpu":
            return contextlib.nullcontext()
        config = text_config(self.handle.model.config)
        heads = int(getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None) or 64)
        seq = int(self.source_acts.shape[1])
        if rows * heads * seq * seq > MATH_ATTENTION_LIMIT:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)

    def run(self, hidden: torch.Tensor, k: int) -> torch.Tensor:
        """Run blocks ``source+1 .. target`` on ``hidden`` ``[k*N, S, hidden]`` (row ``v*N + i``)."""
        with self.handle.autocast() if self._use_autocast else contextlib.nullcontext(), self._attention_kernel(hidden.shape[0]):
            for block, (args, kwargs, in_kwargs) in zip(self._blocks, self._calls_for(k)):
                if in_kwargs:
                    output = block(*args, hidden_states=hidden, **kwargs)
                else:
                    output = block(hidden, *args[1:], **kwargs)
                hidden = block_output_tensor(output)
        return hidden

    def target_acts(self, theta: torch.Tensor) -> torch.Tensor:
        """Target-layer activations ``[k, N, S, hidden]`` with ``theta[v]`` added at the source layer
        (at every position, as :class:`reptune.steering.Steering` with scope ``all`` does)."""
        k = self._check_theta(theta)
        steered = self.source_acts.unsqueeze(0) + theta.to(self.source_acts.dtype)[:, None, None, :]
        out = self.run(steered.reshape(k * self.num_prompts, *self.source_acts.shape[1:]), k)
        return out.reshape(k, *self.source_acts.shape[:2], out.shape[-1])

    def baseline(self, k: int) -> torch.Tensor:
        """``target_acts(0)`` for a batch of ``k`` vectors (cached; checked against the model's forward)."""
        key = (k, self._autocasting)
        if key not in self._baselines:
            with torch.no_grad():
                zero = torch.zeros(k, self.hidden_size, device=self.device, dtype=self.source_acts.dtype)
                base = self.target_acts(zero).detach()
            real = self.attention_mask.bool()
            reference = self.reference[real].float()
            error = float((base[:, real].float() - reference).norm() / (reference.norm() * k**0.5).clamp_min(1e-30))
            # the reference ran under the handle's autocast: a replay in another precision differs more
            tolerance = REPLAY_TOLERANCE if self._autocasting == (self.handle.autocast_dtype not in (None, self.handle.dtype)) else 5e-2
            if not error <= tolerance:
                raise DiscoveryError(
                    f"replaying blocks {self.source + 1}..{self.target} of {type(self._blocks[0]).__name__} does not reproduce "
                    f"the model's forward pass (relative error {error:.2g}): this layout is not supported by discovery"
                )
            self._baselines[key] = base
        return self._baselines[key]

    def delta(self, theta: torch.Tensor) -> torch.Tensor:
        """``Delta(theta) = target(cached + theta) - target(cached)``, ``[k, N, S, hidden]``."""
        return self.target_acts(theta) - self.baseline(theta.shape[0])

    def objective(self, theta: torch.Tensor, p: float = 2.0, q: float = 1.0) -> torch.Tensor:
        """MELBO objective per vector ``[k]``: ``sum_i ( sum_t ||Delta_{i,t}||_2^p )^(1/q)``.

        The norm is over the hidden dimension; ``t`` runs over the selected real positions of
        prompt ``i`` (:attr:`mask`). Computed in float32.
        """
        delta = _wide(self.delta(theta))
        squared = delta.pow(2).sum(-1)  # [k, N, S]
        term = squared if p == 2 else squared.clamp_min(1e-30).pow(p / 2)
        per_prompt = torch.where(self.mask, term, torch.zeros((), device=term.device)).sum(-1)  # [k, N]
        if q != 1:
            per_prompt = per_prompt.clamp_min(1e-30).pow(1.0 / q)
        return per_prompt.sum(-1)

    def mean_delta_sum(self, theta: torch.Tensor) -> torch.Tensor:
        """Sum over prompts of the mean ``Delta`` over each prompt's selected positions, ``[k, hidden]``
        float32 (divide by the total prompt count for the DCT's average response)."""
        delta = _wide(self.delta(theta))
        weights = self.mask.to(delta.dtype) / self.mask.sum(-1, keepdim=True).clamp_min(1).to(delta.dtype)  # [N, S]
        return torch.einsum("knsd,ns->kd", delta, weights).float()

    def source_norm(self) -> float:
        """Mean norm of the source-layer activations over real tokens (a natural radius scale)."""
        real = self.attention_mask.bool()
        return float(self.source_acts[real].float().norm(dim=-1).mean())

    def _check_theta(self, theta: torch.Tensor) -> int:
        if theta.ndim != 2 or theta.shape[1] != self.hidden_size:
            raise DiscoveryError(f"vectors must be [k, {self.hidden_size}], got {list(theta.shape)}")
        return int(theta.shape[0])


def build_slices(
    handle: ModelHandle,
    texts: Sequence[str],
    source: int,
    target: int,
    positions: str | Positions = "all",
    *,
    prompt_batch_size: int = 16,
) -> list[LayerSlice]:
    """One :class:`LayerSlice` per chunk of ``prompt_batch_size`` prompts (objectives add up over chunks)."""
    if not texts:
        raise DiscoveryError("no prompts: discovery needs at least one prompt")
    if prompt_batch_size < 1:
        raise DiscoveryError(f"prompt_batch_size must be at least 1, got {prompt_batch_size}")
    check_layers(handle, source, target)
    return [LayerSlice(handle, texts[i : i + prompt_batch_size], source, target, positions) for i in range(0, len(texts), prompt_batch_size)]
