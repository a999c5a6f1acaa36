"""Shared prompt prefixes: run the tokens every row of a batch starts with once.

A chat template's system prompt and instruction, a few-shot primer or a persona sentence often
make most of a batch's tokens. :func:`shared_prefix_length` finds the longest common token prefix
of a batch's rows, :func:`prefix_worth_sharing` says whether a separate pass for it pays, and
:func:`freeze_prefix_cache` turns the batch-1 prefix pass's ``DynamicCache`` into a read-only
cache that every row attends to (expanded to the batch, never modified). Evaluation scoring
(:mod:`reptune.evaluation.scoring`), activation reading (:mod:`reptune.activations`) and the
tuning forward (:mod:`reptune.tuning.trainer`) use it; results equal one pass over whole rows
up to float rounding, and gradients flow through the prefix keys and values when the prefix
pass ran with autograd on.

Sharing is refused (every row runs whole) when ``REPTUNE_NO_PREFIX_CACHE=1`` is set, when a
forward hook in the model lacks ``reptune_tokenwise = True`` (it could act differently on a
split forward), or when the model's cache cannot hold the prefix exactly (anything but a plain
``DynamicCache`` of full-attention or sliding-window layers that kept every prefix token).
"""

from __future__ import annotations

import functools
import os
import types
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from reptune.models import ModelHandle
from reptune.tokens import cache_argument, forward_keeping_logits, output_cache

PREFIX_MIN_TOKENS = 8
"""A shared prefix shorter than this many tokens is not worth a separate pass ..."""
PREFIX_MIN_FRACTION = 0.05
"""... nor one shorter than this fraction of the mean row length."""
NO_PREFIX_ENV = "REPTUNE_NO_PREFIX_CACHE"
"""Set to ``1`` to turn prefix sharing off everywhere (debugging)."""


def shared_prefix_length(rows: Sequence[Sequence[int]], n_targets: Sequence[int] | None = None) -> int:
    """Length of the longest common token prefix of ``rows`` that leaves every logit to read after it.

    Row ``i`` reads the logits at its last ``n_targets[i] + 1`` positions (0: only the last), so
    the prefix stops at least that many tokens before the row's end.
    """
    if not rows:
        return 0
    targets = n_targets if n_targets is not None else [0] * len(rows)
    first = rows[0]
    length = min(len(row) - n - 1 for row, n in zip(rows, targets))
    for row in rows[1:]:
        same = 0
        while same < length and row[same] == first[same]:
            same += 1
        length = same
        if length <= 0:
            return 0
    return max(length, 0)


def prefix_worth_sharing(prefix_length: int, rows: Sequence[Sequence[int]]) -> bool:
    """The rule: at least 2 rows, a prefix of >= PREFIX_MIN_TOKENS and >= PREFIX_MIN_FRACTION of the mean row."""
    return _worth_sharing(prefix_length, [len(row) for row in rows])


def _worth_sharing(prefix_length: int, lengths: Sequence[int]) -> bool:
    """:func:`prefix_worth_sharing` on the rows' lengths."""
    if len(lengths) < 2 or prefix_length < PREFIX_MIN_TOKENS:
        return False
    return prefix_length >= PREFIX_MIN_FRACTION * sum(lengths) / len(lengths)


def _hook_functions(model: torch.nn.Module) -> Iterator[Any]:
    from torch.nn.modules import module as torch_module

    yield from getattr(torch_module, "_global_forward_hooks", {}).values()
    yield from getattr(torch_module, "_global_forward_pre_hooks", {}).values()
    for sub in model.modules():
        yield from sub._forward_hooks.values()
        yield from sub._forward_pre_hooks.values()


def prefix_sharing_allowed(handle: ModelHandle, share_prefix: bool = True) -> bool:
    """Whether a call may split its forward into a shared-prefix pass and a suffix pass.

    No when ``share_prefix`` is false, ``REPTUNE_NO_PREFIX_CACHE`` is set (not ``0``), or any
    forward hook lacks ``reptune_tokenwise = True`` (see the module docstring).
    """
    if not share_prefix or os.environ.get(NO_PREFIX_ENV, "").strip() not in {"", "0"}:
        return False
    return all(getattr(fn, "reptune_tokenwise", False) is True for fn in _hook_functions(handle.model))


@functools.cache
def _cache_classes() -> tuple[type, Any, type]:
    """The frozen prefix cache classes (built on first use: transformers is imported lazily)."""
    from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

    class FrozenPrefixLayer(DynamicLayer):
        """One layer's prefix keys/values ``[1, heads, P, dim]``, shared read-only by every row.

        ``update`` returns prefix + new states for the batch without storing anything, so one
        cache serves every batch of a call and no forward copies the prefix into a growing cache.
        """

        def __init__(self, source: Any) -> None:
            super().__init__()
            self.keys, self.values = source.keys, source.values
            self.dtype, self.device = source.keys.dtype, source.keys.device
            self.is_initialized = True
            self.is_sliding = bool(getattr(source, "is_sliding", False))
            self.length = int(source.keys.shape[-2])

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            batch = key_states.shape[0]
            keys = self.keys.to(key_states.dtype).expand(batch, -1, -1, -1)
            values = self.values.to(value_states.dtype).expand(batch, -1, -1, -1)
            return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.length + query_length, 0

        def get_seq_length(self) -> int:
            return self.length

    class SharedPrefixCache(DynamicCache):
        """A DynamicCache of frozen prefix layers (reusable: forward passes do not change it)."""

        def __init__(self, layers: list[Any]) -> None:
            Cache.__init__(self, layers=layers)

        def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
            """Layer ``index``'s ``(keys, values)``, as the legacy tuple format gave them (nanogcg reads its cache so)."""
            layer = self.layers[index]
            return layer.keys, layer.values

    def freeze(cache: Any, prefix_length: int) -> Any:
        if type(cache) is not DynamicCache or getattr(cache, "offloading", False) or not cache.layers:
            return None
        layers = []
        for layer in cache.layers:
            if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer) or not layer.is_initialized:
                return None
            keys = layer.keys
            # a sliding-window layer keeps only its last window-1 tokens: the prefix must fit whole
            if keys is None or keys.ndim != 4 or keys.shape[0] != 1 or keys.shape[-2] != prefix_length:
                return None
            if isinstance(layer, DynamicSlidingWindowLayer) and layer.cumulative_length != prefix_length:
                return None
            layers.append(FrozenPrefixLayer(layer))
        return SharedPrefixCache(layers)

    return SharedPrefixCache, freeze, FrozenPrefixLayer


def frozen_cache_from_pairs(pairs: Sequence[Sequence[torch.Tensor]]) -> Any:
    """A read-only prefix cache from legacy ``[(keys, values), ...]`` per layer, each ``[1 or batch, heads, P, dim]``."""
    shared, _freeze, frozen_layer = _cache_classes()
    return shared([frozen_layer(types.SimpleNamespace(keys=keys, values=values)) for keys, values in pairs])


def freeze_prefix_cache(cache: Any, prefix_length: int) -> Any:
    """A read-only, batch-expanding copy of a prefix pass's cache, or ``None`` when its layout
    cannot be shared exactly (not a plain DynamicCache of full or sliding-window layers holding
    all ``prefix_length`` tokens of one row)."""
    return _cache_classes()[1](cache, prefix_length)


def prefix_pass(model: torch.nn.Module, prefix_ids: torch.Tensor) -> Any:
    """Run a shared prefix once and freeze its keys/values (:func:`freeze_prefix_cache`).

    Args:
        prefix_ids: ``[1, P]`` token ids (positions ``0..P-1``, no padding). Runs under whatever
            autocast and grad mode the caller set, so a training loss reaches the prefix's weights.

    Returns:
        The frozen cache, or ``None`` when the model's cache cannot hold the prefix exactly.
    """
    kwargs = {
        "input_ids": prefix_ids,
        "attention_mask": torch.ones_like(prefix_ids),
        "position_ids": torch.arange(prefix_ids.shape[1], device=prefix_ids.device).unsqueeze(0),
        "use_cache": True,
    }
    out, _ = forward_keeping_logits(model, kwargs, 1)
    return freeze_prefix_cache(output_cache(out), prefix_ids.shape[1])


def right_padded_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: int, before: int | None = None) -> int:
    """The longest common token prefix of a right-padded batch that a split forward may share.

    Args:
        input_ids, attention_mask: ``[batch, seq]``, right-padded (real tokens start at 0).
        keep: logits are read at the last ``keep`` positions of the padded width, so the prefix
            ends at least ``keep`` positions before it; every row keeps one real token after it.
        before: the prefix also ends at or before this column (the first one a caller reads).

    Returns:
        The prefix length in tokens, ``0`` when it is not worth a separate pass
        (:func:`prefix_worth_sharing`).
    """
    real = attention_mask.sum(-1)
    limit = min(int(real.min()) - 1, input_ids.shape[1] - keep, input_ids.shape[1] if before is None else before)
    if input_ids.shape[0] < 2 or limit <= 0:
        return 0
    same = (input_ids[:, :limit] == input_ids[:1, :limit]).all(0)
    length = int(same.long().cumprod(0).sum())
    return length if _worth_sharing(length, real.tolist()) else 0


def suffix_inputs(model: torch.nn.Module, inputs: dict[str, torch.Tensor], prefix: int, cache: Any) -> dict[str, Any]:
    """The keyword arguments of a split forward's suffix pass: each row's tokens after the shared
    ``prefix`` (``inputs`` right-padded, ``[batch, seq]``), attending to the frozen prefix ``cache``."""
    return {
        "input_ids": inputs["input_ids"][:, prefix:],
        "attention_mask": inputs["attention_mask"],  # the whole width: the prefix's columns are real tokens
        "position_ids": inputs["position_ids"][:, prefix:],
        cache_argument(model): cache,
        "use_cache": True,
    }


def split_forward(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], prefix: int, keep: int, captured: dict[int, torch.Tensor],
    packed: bool = False,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]] | None:
    """One forward of a right-padded batch as a shared-prefix pass (batch 1) and a suffix pass.

    Autograd flows through both passes (the prefix keys and values are expanded, not copied),
    so a loss on the suffix trains the weights that computed the prefix as it would unsplit.
    ``packed`` runs the suffixes as one row without their padding (:func:`packed_suffix_inputs`;
    only where :func:`packing_possible` says so).

    Args:
        inputs: ``input_ids``, ``attention_mask``, ``position_ids``, each ``[batch, seq]``.
        prefix: from :func:`right_padded_prefix_length` (> 0).
        keep: logits wanted at the last ``keep`` positions (> 0).
        captured: the dict that reading hooks on the model's blocks fill (``{layer: [b, s, h]}``).

    Returns:
        ``(logits [batch, keep, vocab], {layer: hidden [batch, seq, hidden]})`` with each
        layer's prefix rows expanded in front of its suffix rows, or ``None`` (nothing changed)
        when the model's cache cannot hold the prefix.
    """
    ids = inputs["input_ids"]
    # right padding and prefix <= every row's length: the prefix's positions are 0..prefix-1
    cache = prefix_pass(model, ids[:1, :prefix])
    head_hidden = dict(captured)
    captured.clear()
    if cache is None:
        return None
    batch = ids.shape[0]
    if packed:
        kwargs, index = packed_suffix_inputs(model, inputs, prefix, cache)
        logits = forward_keeping_logits(model, kwargs, 0)[0].logits[0][index[:, -keep:]]
        suffix_hidden = {layer: tensor[0][index] for layer, tensor in captured.items()}
    else:
        logits = forward_keeping_logits(model, suffix_inputs(model, inputs, prefix, cache), keep)[0].logits[:, -keep:]
        suffix_hidden = dict(captured)
    hidden = {layer: torch.cat([head_hidden[layer].expand(batch, -1, -1), tensor], dim=1) for layer, tensor in suffix_hidden.items()}
    return logits, hidden


PACKABLE_ATTENTION = ("sdpa", "eager")
"""Attention implementations that take a custom 4D mask, which packing needs."""
NO_PACKING_ENV = "REPTUNE_NO_PACKING"
"""Set to ``1`` to run every batch padded (debugging; packed results agree up to float rounding)."""


def packing_possible(model: torch.nn.Module, width: int) -> bool:
    """Whether a batch ``width`` tokens wide may run packed: an attention implementation in
    :data:`PACKABLE_ATTENTION`, no sliding window the rows could exceed (a custom mask
    replaces the model's own, window included), and ``REPTUNE_NO_PACKING`` unset (or ``0``)."""
    if os.environ.get(NO_PACKING_ENV, "").strip() not in {"", "0"}:
        return False
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) not in PACKABLE_ATTENTION:
        return False
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(text, "sliding_window", None)
    return not isinstance(window, int) or width <= window


def packed_attention_mask(model: torch.nn.Module, allowed: torch.Tensor, prefix: int) -> torch.Tensor:
    """The 4D attention mask of a packed row after a cached ``prefix`` every token may see.

    Args:
        allowed: ``[L, L]`` bool, which packed token may attend to which.

    Returns:
        ``[1, 1, L, prefix + L]``: bool for sdpa, additive (0 or the dtype's minimum) for eager,
        which adds the mask to its scores.
    """
    mask = torch.cat([allowed.new_ones(allowed.shape[0], prefix), allowed], dim=1)[None, None]
    if model.config._attn_implementation != "eager":
        return mask
    dtype = next(model.parameters()).dtype
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def packed_suffix_inputs(model: torch.nn.Module, inputs: dict[str, torch.Tensor], prefix: int, cache: Any) -> tuple[dict[str, Any], torch.Tensor]:
    """The suffix pass of a split forward with every row's suffix packed into one row.

    Right padding makes a batch as wide as its longest row; for short replies of varied length
    (the demo's twins: 9.5 tokens on average, 14 in the longest of a batch) over a quarter of the
    suffix pass is padding. Packed, each row's real tokens follow the previous row's, keep their
    own position ids, and a 4D mask lets each attend to the shared prefix and to its own earlier
    tokens only, so every row computes what it computes padded.

    Args:
        inputs: ``input_ids``, ``attention_mask``, ``position_ids``, each ``[batch, seq]``,
            right-padded, the first ``prefix`` columns shared.
        cache: the frozen prefix cache (:func:`prefix_pass`).

    Returns:
        ``(kwargs, index)``: the forward's keyword arguments (one row of ``L`` tokens) and
        ``index [batch, seq - prefix]``, where each row's suffix column sits in the packed row
        (padding columns point at 0: read them only through a mask).
    """
    ids, mask, positions = (inputs[key][:, prefix:] for key in ("input_ids", "attention_mask", "position_ids"))
    batch, width = ids.shape
    lengths = mask.sum(-1)
    columns = torch.arange(width, device=ids.device)
    real = columns.unsqueeze(0) < lengths.unsqueeze(1)  # [batch, width]: right padding
    index = ((lengths.cumsum(0) - lengths).unsqueeze(1) + columns.unsqueeze(0)) * real
    row_of = torch.arange(batch, device=ids.device).unsqueeze(1).expand(-1, width)[real]  # [L]
    order = torch.arange(row_of.shape[0], device=ids.device)
    own = (row_of.unsqueeze(1) == row_of.unsqueeze(0)) & (order.unsqueeze(1) >= order.unsqueeze(0))
    kwargs = {
        "input_ids": ids[real].unsqueeze(0),
        "attention_mask": packed_attention_mask(model, own, prefix),
        "position_ids": positions[real].unsqueeze(0),
        cache_argument(model): cache,
        "use_cache": True,
    }
    return kwargs, index
