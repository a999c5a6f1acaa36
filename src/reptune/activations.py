"""Reading residual-stream activations at chosen layers and token positions.

Batched and padding-aware (left or right padding give the same numbers), reading only the
requested layers, and *stopping the forward pass after the deepest requested layer*: reading
layer 15 of a 30-layer model costs about half a forward pass, and the final norm and LM head
never run. A prompt every input starts with (a persona, a chat template) runs once and is
shared by the batches that follow it (:mod:`reptune.prefix_cache`), when no position read lies
inside it. Selected positions are averaged per example in fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from reptune._progress import progress_bar
from reptune.data.pairs import Example
from reptune.errors import DataError, ReptuneError
from reptune.hooks import forward_until, install, read
from reptune.models import ModelHandle
from reptune.prefix_cache import PREFIX_MIN_TOKENS, prefix_pass, prefix_sharing_allowed, right_padded_prefix_length, suffix_inputs
from reptune.sites import Positions, parse_layers


@dataclass
class TokenBatch:
    """A tokenised batch with what position selection needs."""

    input_ids: torch.Tensor  # [batch, seq]
    attention_mask: torch.Tensor  # [batch, seq]
    position_ids: torch.Tensor  # [batch, seq], counted over real tokens only
    offsets: list[list[tuple[int, int]]] | None
    texts: list[str]
    completion_starts: list[int | None]


def tokenize_examples(
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    padding_side: str = "left",
    with_offsets: bool = False,
    device: torch.device | str = "cpu",
) -> TokenBatch:
    """Tokenise examples into one padded batch.

    Special tokens (BOS) are added unless the texts already start with the BOS string
    (chat templates usually include it), so no input gets a doubled BOS.

    Args:
        padding_side: ``left`` or ``right``; position ids are computed from the attention
            mask either way, so both give the same activations.
        with_offsets: also return per-token character spans (fast tokenizers only).
    """
    if padding_side not in {"left", "right"}:
        raise ReptuneError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    texts = [example.text for example in examples]
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and all(text.startswith(bos) for text in texts))
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    try:
        encoded = tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            add_special_tokens=add_special,
            return_offsets_mapping=with_offsets,
        )
    except NotImplementedError:
        raise ReptuneError("these positions need token offsets, which only fast tokenizers provide") from None
    finally:
        tokenizer.padding_side = previous_side
    attention_mask = encoded["attention_mask"]
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    offsets = None
    if with_offsets:
        offsets = [[(int(start), int(end)) for start, end in row] for row in encoded["offset_mapping"].tolist()]
    return TokenBatch(
        input_ids=encoded["input_ids"].to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        offsets=offsets,
        texts=texts,
        completion_starts=[example.completion_start for example in examples],
    )


@contextlib.contextmanager
def capture_layers(handle: ModelHandle, layers: Sequence[int], stop_after: int | None = None) -> Iterator[dict[int, torch.Tensor]]:
    """Record the outputs of the given blocks (layer convention of :mod:`reptune.sites`).

    Yields a dict that each forward pass fills with ``{layer: [batch, seq, hidden]}`` (the
    model's dtype, not detached, on ``handle.device`` also when a ``device_map`` placed the
    blocks elsewhere). With ``stop_after`` (one of ``layers``), the forward pass
    ends after that block is recorded (:func:`reptune.hooks.forward_until`, which
    :func:`run_until` uses, swallows the stop): the remaining blocks, the final norm and the
    LM head are skipped.
    """
    captured: dict[int, torch.Tensor] = {}
    wanted = sorted(set(layers))
    stop = stop_after if stop_after in wanted else None
    # a model placed by a device_map: every layer's output is recorded on the input device
    device = handle.device if handle.dispatched else None
    with install(handle.layers, {layer: read(captured, device) for layer in wanted}, stop_after=stop):
        yield captured


def run_until(handle: ModelHandle, batch: TokenBatch, prefix: int = 0, prefix_cache: Any = None) -> None:
    """Run the model on ``batch``, ending quietly where a capture hook stops it.

    With ``prefix > 0`` (``batch`` right-padded) only the tokens after the first ``prefix`` run,
    attending to ``prefix_cache`` (:func:`reptune.prefix_cache.prefix_pass` of those tokens):
    capture hooks then record ``[batch, seq - prefix, hidden]``. Else no KV cache is used.
    """
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "position_ids": batch.position_ids}
    if prefix:
        forward_until(handle.model, **suffix_inputs(handle.model, inputs, prefix, prefix_cache))
    else:
        forward_until(handle.model, **inputs, use_cache=False)


@dataclass
class _SharedPrefix:
    """The prompt tokens a reading's batches start with, run once and reused while they match.

    A persona or chat template is often most of each input (44 of the 54 tokens of the demo's
    contrast pairs): its keys and values are computed once (:func:`reptune.prefix_cache.prefix_pass`)
    and every later batch that starts with the same tokens runs only its own.
    """

    enabled: bool
    tokens: torch.Tensor | None = None  # [P]
    cache: Any = None

    def length_for(self, handle: ModelHandle, batch: TokenBatch, mask: torch.Tensor) -> int:
        """How many leading tokens of ``batch`` (right-padded) to take from the shared cache: 0 = none.

        The prefix ends before every row's first selected position (``mask`` ``[batch, seq]``)
        and leaves each row a real token; a new prefix runs its pass here.
        """
        if not self.enabled:
            return 0
        ids, attention = batch.input_ids, batch.attention_mask
        first_read = int(mask.float().argmax(-1).min())
        length = right_padded_prefix_length(ids, attention, keep=0, before=first_read)
        if self.tokens is not None:
            n = len(self.tokens)
            reusable = n <= first_read and n < int(attention.sum(-1).min()) and bool((ids[:, :n] == self.tokens).all())
            if reusable and length < n + PREFIX_MIN_TOKENS:  # a common prefix that much longer pays a pass of its own
                return n
        if not length:
            return 0
        cache = prefix_pass(handle.model, ids[:1, :length])
        if cache is None:  # the model's cache cannot hold a prefix: whole rows from now on
            self.enabled = False
            return 0
        self.tokens, self.cache = ids[0, :length].clone(), cache
        return length


def read_activations(
    handle: ModelHandle,
    inputs: Sequence[str | Example],
    layers: str | int | Sequence[int] | None = None,
    positions: str | Positions = "last",
    *,
    batch_size: int = 8,
    padding_side: str = "left",
    progress: bool = True,
    description: str = "reading activations",
    per_position: bool = False,
    share_prefix: bool = True,
) -> dict[int, torch.Tensor]:
    """Mean residual-stream activation over the selected positions, per input and layer.

    Args:
        handle: the loaded model.
        inputs: strings or :class:`~reptune.data.Example` (prompt + completion).
        layers: layer spec (see :func:`reptune.sites.parse_layers`); default all layers.
        positions: which tokens to read (see :class:`reptune.sites.Positions`).
        batch_size: inputs per forward pass.
        padding_side: ``left`` or ``right`` (same results; a choice for speed/memory). While
            prefix sharing is allowed, batches are right-padded whatever this says.
        progress: show a progress bar.
        per_position: keep each selected position instead of averaging them; needs a fixed
            number of positions per input (``last:N`` or ``marker``).
        share_prefix: run a prompt the inputs share once (equal up to float rounding; see
            :func:`reptune.prefix_cache.prefix_sharing_allowed` for when it is refused anyway).

    Returns:
        ``{layer: tensor [len(inputs), hidden_size]}`` in float32 on the CPU, layer indices
        non-negative; with ``per_position``, ``[len(inputs), num_positions, hidden_size]``
        in token order.

    Raises:
        DataError: no inputs. ReptuneError: bad layers or positions.
    """
    if not inputs:
        raise DataError("no inputs to read activations from")
    if batch_size < 1:
        raise ReptuneError(f"batch_size must be at least 1, got {batch_size}")
    if padding_side not in {"left", "right"}:
        raise ReptuneError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    layer_list = parse_layers(layers, handle.num_layers)
    spec = Positions.parse(positions)
    examples = [Example.coerce(item, f"input {index}") for index, item in enumerate(inputs)]
    needs_offsets = spec.kind in {"marker", "generated"}
    if per_position and spec.kind not in {"last", "marker"}:
        raise ReptuneError(f"per-position reading needs positions last:N or marker, not {spec.spec()!r}")
    width = (spec.count if spec.kind == "last" else 1) if per_position else None
    shape = (len(examples), handle.hidden_size) if width is None else (len(examples), width, handle.hidden_size)
    results = {layer: torch.zeros(shape, dtype=torch.float32) for layer in layer_list}
    device = handle.device
    starts = range(0, len(examples), batch_size)
    shared = _SharedPrefix(prefix_sharing_allowed(handle, share_prefix))  # checked before reptune's own reading hooks exist
    with (
        torch.inference_mode(),
        handle.autocast(),
        progress_bar(description, total=len(examples), enabled=progress) as advance,
    ):
        for start in starts:
            chunk = examples[start : start + batch_size]
            side = "right" if shared.enabled else padding_side  # a shared prefix needs it at column 0
            batch = tokenize_examples(handle.tokenizer, chunk, padding_side=side, with_offsets=needs_offsets, device=device)
            mask = spec.mask(batch.attention_mask.cpu(), batch.offsets, batch.texts, batch.completion_starts).to(device)
            if width is not None and not bool((mask.sum(-1) == width).all()):
                raise ReptuneError(f"per-position reading: some inputs have fewer than {width} tokens")
            prefix = shared.length_for(handle, batch, mask)
            mask = mask[:, prefix:]  # every selected position lies after the prefix
            counts = mask.sum(-1, keepdim=True).float()  # [batch, 1]
            weights = (mask.float() / counts).unsqueeze(-1)  # [batch, seq - prefix, 1]
            with capture_layers(handle, layer_list, stop_after=max(layer_list)) as captured:
                run_until(handle, batch, prefix, shared.cache)
            for layer in layer_list:
                hidden = captured[layer].float()  # fp32 accumulation
                if width is None:
                    results[layer][start : start + len(chunk)] = (hidden * weights).sum(1).cpu()
                else:
                    results[layer][start : start + len(chunk)] = hidden[mask].view(len(chunk), width, -1).cpu()
            advance(len(chunk))
    return results


def read_pair_activations(
    handle: ModelHandle,
    pairs: Sequence[Any],
    layers: str | int | Sequence[int] | None = None,
    positions: str | Positions = "last",
    **kwargs: Any,
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Activations of the positive and negative side of contrast pairs, in one pass.

    Returns:
        ``(positive, negative)``, each ``{layer: [num_pairs, hidden]}`` float32.
    """
    if not pairs:
        raise DataError("no contrast pairs")
    inputs = [pair.positive for pair in pairs] + [pair.negative for pair in pairs]
    both = read_activations(handle, inputs, layers, positions, **kwargs)
    count = len(pairs)
    return ({layer: acts[:count] for layer, acts in both.items()}, {layer: acts[count:] for layer, acts in both.items()})
