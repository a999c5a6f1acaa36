"""Skipping the base model's blocks below a tuned range: their output recorded once, then fed in.

A tuned model of an experiment keeps the base model's blocks below its trained range, and steering
at layer ``L`` changes nothing up to the output of block ``L``. So on the same inputs the input of
block ``start`` (the first trained block) is the same for the untuned model, every tuned variant and
every steered condition whose steering layer is at least ``start``. An evaluation records those
inputs once (:func:`capture_block_inputs`); the next one on the same inputs feeds them in and skips
blocks ``0 .. start-1`` (:func:`replay_block_inputs`). For the embedded model with blocks 11-14
trained that skips 11 of 30 blocks of every tuned or steered evaluation.

How a skipped block stays invisible: it returns its input, and where the forward carries a KV
cache it stores zeros of the right shape for its layer, so the cache keeps one length at every
layer (the causal mask is sized from layer 0) and nothing reads them (a layer reads only its own
keys and values). The block at ``start`` gets the recorded hidden states through a forward
pre-hook. :func:`replay_matches` checks the mechanism once per loaded model (a three-token
prompt in a KV cache, then a batch of two rows, against the plain forward).

The recorded inputs live in a :class:`BlockInputStore` (safetensors files, one per evaluation
call, keyed by its content), so both processes of a run share them.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reptune._io import atomic_path, sha256_json
from reptune.models import ModelHandle, text_config
from reptune.tokens import cache_argument, output_cache

REPLAY_TOLERANCE = 1e-3
"""Largest log-prob gap (nats) :func:`replay_matches` accepts between replay and the plain forward."""


@dataclass
class BlockInputStore:
    """Recorded inputs of block ``start``, one safetensors file per evaluation call in ``folder``.

    ``base`` identifies what produced them (the base model, its precision): it is part of every key,
    so a store is never read for another model.
    """

    folder: Path
    start: int
    base: Any
    counts: dict[str, int] = field(default_factory=lambda: {"recorded": 0, "replayed": 0, "plain": 0})  # scoring calls, this process

    def key(self, call: Any) -> str:
        """The file stem for an evaluation call described by the JSON-able ``call``."""
        return sha256_json({"base": self.base, "start": self.start, "call": call})[:32]

    def load(self, key: str) -> list[torch.Tensor] | None:
        """The recorded inputs of call ``key``, in forward order, or ``None`` if not recorded."""
        from safetensors.torch import load_file

        path = self.folder / f"{key}.safetensors"
        if not path.is_file():
            return None
        tensors = load_file(str(path))
        return [tensors[str(index)] for index in range(len(tensors))]

    def save(self, key: str, tensors: list[torch.Tensor]) -> None:
        """Record the inputs of call ``key`` (atomically: a reader never sees half a file)."""
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / f"{key}.safetensors") as staging:
            save_file({str(index): tensor.contiguous() for index, tensor in enumerate(tensors)}, str(staging))


def blocks_unhooked(layers: nn.ModuleList, start: int) -> bool:
    """No forward hook on blocks ``0 .. start-1`` (a steering or reading hook there changes block ``start``'s input)."""
    return not any(layers[index]._forward_hooks or layers[index]._forward_pre_hooks for index in range(start))


def _hidden_states(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden_states(args: tuple[Any, ...], kwargs: dict[str, Any], value: torch.Tensor) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if args:
        return (value, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": value}


@contextlib.contextmanager
def capture_block_inputs(layers: nn.ModuleList, start: int) -> Iterator[list[torch.Tensor]]:
    """Record the hidden states block ``start`` receives, one tensor ``[batch, seq, hidden]`` per forward."""
    recorded: list[torch.Tensor] = []

    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        recorded.append(_hidden_states(args, kwargs).detach().to("cpu", copy=True))

    handle = layers[start].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield recorded
    finally:
        handle.remove()


class _SkippedBlock(nn.Module):
    """Stands in for block ``index``: returns its input and keeps the KV cache's length (zeros)."""

    def __init__(self, index: int, kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.index, self.kv_heads, self.head_dim = index, kv_heads, head_dim

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        from transformers.cache_utils import Cache

        cache = next((value for value in (*args, *kwargs.values()) if isinstance(value, Cache)), None)
        if cache is not None:
            batch, seq = hidden_states.shape[:2]
            zeros = hidden_states.new_zeros(batch, self.kv_heads, seq, self.head_dim)
            cache.update(zeros, zeros, self.index)
        return hidden_states


def _kv_shape(model: nn.Module) -> tuple[int, int]:
    """``(key/value heads, head dim)`` of the model's attention, from its config."""
    config = text_config(model.config)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return int(kv_heads), int(head_dim)


@contextlib.contextmanager
def replay_block_inputs(model: nn.Module, layers: nn.ModuleList, start: int, recorded: list[torch.Tensor]) -> Iterator[None]:
    """Skip blocks ``0 .. start-1`` and feed block ``start`` the ``recorded`` inputs, one per forward, in order.

    Raises:
        ValueError: a block below ``start`` carries a hook (it would not run), or a forward's
            input shape differs from its recording (the calls are not the recorded ones).
    """
    if not blocks_unhooked(layers, start):
        raise ValueError(f"a block below {start} carries a hook; it cannot be skipped")
    kv_heads, head_dim = _kv_shape(model)
    originals = [layers[index] for index in range(start)]
    queue = iter(recorded)

    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        current = _hidden_states(args, kwargs)
        value = next(queue, None)
        if value is None or value.shape != current.shape:
            raise ValueError(f"recorded block inputs do not match this forward ({None if value is None else tuple(value.shape)} vs {tuple(current.shape)})")
        return _with_hidden_states(args, kwargs, value.to(current.device, current.dtype))

    for index in range(start):
        layers[index] = _SkippedBlock(index, kv_heads, head_dim)
    handle = layers[start].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        for index, block in enumerate(originals):
            layers[index] = block


def replay_matches(model: nn.Module, layers: nn.ModuleList, start: int, autocast: Any = contextlib.nullcontext) -> bool:
    """Whether replay reproduces this model's plain forward (checked once per model object and ``start``).

    A three-token prompt is run into a KV cache, then a batch of two rows (one padded) after it;
    the replayed forward's log-probs must match the plain one's within :data:`REPLAY_TOLERANCE`.
    """
    checked = _REPLAY_CHECKS.setdefault(model, {})
    if start not in checked:
        try:
            plain, recorded = _probe(model, layers, start, autocast, None)
            replayed, _ = _probe(model, layers, start, autocast, recorded)
            checked[start] = all(torch.allclose(a, b, atol=REPLAY_TOLERANCE, rtol=0) for a, b in zip(plain, replayed))
        except (ValueError, TypeError, RuntimeError, AttributeError, KeyError):
            checked[start] = False
    return checked[start]


_REPLAY_CHECKS: weakref.WeakKeyDictionary[nn.Module, dict[int, bool]] = weakref.WeakKeyDictionary()


def _probe(model: nn.Module, layers: nn.ModuleList, start: int, autocast: Any, recorded: list[torch.Tensor] | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The check's two forwards, plain and capturing (``recorded`` None) or replayed."""
    from transformers.cache_utils import DynamicCache

    device = next(model.parameters()).device
    vocab = int(text_config(model.config).vocab_size)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, vocab, (1, 3), generator=generator).to(device)
    rows = torch.randint(0, vocab, (2, 4), generator=generator).to(device)
    mask = torch.ones(2, 7, dtype=torch.long, device=device)
    mask[1, -1] = 0
    context = capture_block_inputs(layers, start) if recorded is None else replay_block_inputs(model, layers, start, recorded)
    out = []
    with torch.inference_mode(), autocast(), context as captured:
        name = cache_argument(model)
        first = model(input_ids=prompt, attention_mask=torch.ones_like(prompt), position_ids=torch.arange(3, device=device)[None], **{name: DynamicCache()}, use_cache=True)
        cache = output_cache(first)
        cache.batch_repeat_interleave(2)
        second = model(input_ids=rows, attention_mask=mask, position_ids=(3 + torch.arange(4, device=device)).expand(2, -1), **{name: cache}, use_cache=True)
        out = [torch.log_softmax(first.logits.float(), -1)[0], torch.log_softmax(second.logits.float(), -1)[0], torch.log_softmax(second.logits.float(), -1)[1, :3]]
    return out, (captured if recorded is None else [])


@contextlib.contextmanager
def frozen_blocks(handle: ModelHandle, call: Any) -> Iterator[None]:
    """Around the forwards of one evaluation call (``call``: JSON-able, what makes its inputs), on a
    model whose ``block_inputs`` store is set: replay the call's
    recorded block inputs (skipping the blocks below), or record them for the next model. Without
    a store, or with a hook below its start block, the forwards run plainly."""
    store = handle.block_inputs
    if store is None:
        yield
        return
    if not blocks_unhooked(handle.layers, store.start):
        yield
        store.counts["plain"] += 1
        return
    key = store.key(call)
    recorded = store.load(key)
    if recorded is None:
        with capture_block_inputs(handle.layers, store.start) as captured:
            yield
        store.save(key, captured)
        store.counts["recorded"] += 1
    elif replay_matches(handle.model, handle.layers, store.start, handle.autocast):
        with replay_block_inputs(handle.model, handle.layers, store.start, recorded):
            yield
        store.counts["replayed"] += 1
    else:
        yield
        store.counts["plain"] += 1
