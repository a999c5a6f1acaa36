"""The representation-tuning loop: losses, checkpoints, resume, early stopping, outputs.

Reproducibility: dropout is off (the model stays in eval mode), batch ``s`` is a pure function
of ``(seed, s)``, and checkpoints hold the trainable tensors, the AdamW state and the loop
state, so a run killed at any point and resumed ends where an uninterrupted run would.
Checkpoints and outputs are safetensors + JSON, written atomically; nothing is pickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file

from reptune import _work as work
from reptune._io import remove_stale_temps, set_plain_modes, sha256_json, write_json_atomic, write_run_marker, write_text_atomic
from reptune._progress import progress_bar
from reptune._render import renderer
from reptune.activations import capture_layers, tokenize_examples
from reptune.data.ab import letter_token_ids
from reptune.data.pairs import Example
from reptune.errors import DataError, ReptuneError, VectorError
from reptune.hooks import forward_until
from reptune.models import ModelHandle, _autocast_with_fp32_head
from reptune.prefix_cache import packing_possible, prefix_sharing_allowed, right_padded_prefix_length, split_forward
from reptune.sites import Positions, parse_layers
from reptune.tokens import forward_keeping_logits
from reptune.tuned_blocks import TUNED_BLOCKS_FILE, WEIGHT_FORMATS, block_tensors, save_tuned_blocks
from reptune.tuning.config import TuneConfig, rep_position
from reptune.tuning.distributed import Ranks, current
from reptune.tuning.items import (
    BalancedBatches,
    TrainItem,
    default_retain_source,
    drop_training_overlap,
    load_retain_texts,
    split_items,
)
from reptune.tuning.losses import (
    answer_loss,
    completion_logprobs,
    kl_base_to_tuned,
    pair_sequence_loss,
    representation_loss,
    sft_loss,
    topk_reference,
)
from reptune.vectors import SteeringVector

logger = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "tok", "rep", "retain", "cos")


class TrainingDiverged(ReptuneError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TuneResult:
    """What a finished run produced."""

    output_dir: Path
    config: TuneConfig
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    val_history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class LoopState:
    """Where the training loop stands: what a checkpoint's ``state.json`` holds, plus the best weights.

    ``step`` counts finished optimiser steps; ``best_val`` is the lowest watched validation loss
    (``config.early_stop_on``) seen at ``best_step``; ``bad_evals`` counts the evaluations since
    then without improvement (early stop at ``config.patience``); ``stopped`` is the early-stop
    note or ``None``. ``best_weights`` (the trainable tensors at ``best_step``) is saved beside
    ``state.json`` as ``best.safetensors``, not in it.
    """

    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    val_history: list[dict[str, float]] = field(default_factory=list)
    best_val: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    stopped: str | None = None
    best_weights: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The ``state.json`` keys, in the order checkpoints have always written them."""
        return {name: getattr(self, name) for name in _LOOP_KEYS}

    @classmethod
    def from_json(cls, data: dict[str, Any], best_weights: dict[str, torch.Tensor] | None = None) -> LoopState:
        """The state a checkpoint saved (``data``: its ``state.json`` without config and fingerprint)."""
        return cls(**{name: data[name] for name in _LOOP_KEYS if name in data}, best_weights=best_weights)


_LOOP_KEYS = ("step", "history", "val_history", "best_val", "best_step", "bad_evals", "stopped")


@dataclass
class _Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    rep_mask: torch.Tensor
    completion_mask: torch.Tensor
    last_prompt: torch.Tensor
    correct: torch.Tensor | None


def retain_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions the retain loss compares: every real token but each row's last (``[batch, seq]`` bool).

    The last position of a text predicts what follows it, which for a prompt-shaped text is
    the answer: the retain loss never covers an answer position. Right padding.
    """
    mask = attention_mask.bool().clone()
    last = attention_mask.long().sum(-1) - 1
    mask[torch.arange(mask.shape[0], device=mask.device), last.clamp_min(0)] = False
    return mask


def _compact(layers: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3,7"``."""
    runs: list[list[int]] = []
    for layer in layers:
        if runs and runs[-1][1] == layer - 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def tuning_plan(handle: ModelHandle, config: TuneConfig, items: Sequence[TrainItem], vector: SteeringVector | None = None, **kwargs: Any) -> dict[str, Any]:
    """:meth:`Tuner.plan` without training (a dry run): which parameters get which loss term,
    at which layers and positions, with which learning rates. ``kwargs`` go to :class:`Tuner`.

    Leaves ``handle`` untrained, all parameters frozen (LoRA adapters removed again); with a
    retain loss the base outputs are computed once (forward passes only).
    """
    tuner = Tuner(handle, config, items, vector, **kwargs)
    try:
        return tuner.plan()
    finally:
        if tuner.peft_model is not None:
            handle.model = tuner.peft_model.unload()
        handle.model.requires_grad_(False)


def lr_factor(config: TuneConfig, step: int) -> float:
    """Learning-rate multiplier at 0-based optimizer step ``step``.

    ``linear`` is ``transformers.get_linear_schedule_with_warmup``: ``step / warmup`` during
    warm-up (0 at the first step), then ``(steps - step) / (steps - warmup)``, never below 0.
    """
    if config.lr_schedule == "constant":
        return 1.0
    if step < config.warmup_steps:
        return step / max(1, config.warmup_steps)
    return max(0.0, (config.steps - step) / max(1, config.steps - config.warmup_steps))


def single_position_mask(prompt: torch.Tensor, offset: int) -> torch.Tensor:
    """The one prompt token ``offset`` (< 0) from the end of each row's prompt: ``[batch, seq]`` bool.

    Raises:
        DataError: a prompt shorter than ``-offset`` tokens.
    """
    from_end = prompt.flip(-1).long().cumsum(-1).flip(-1) - 1
    mask = prompt.bool() & (from_end == -offset - 1)
    if (mask.sum(-1) != 1).any():
        raise DataError(f"rep_positions pos:{offset} needs prompts of at least {-offset} tokens; a prompt is shorter")
    return mask


PACKING_TOLERANCE = 1e-3
"""Largest gap (nats; hidden-state units) :func:`_same_forward` allows between a packed and a padded forward."""


def _same_forward(padded: tuple[torch.Tensor, dict[int, torch.Tensor]], packed: tuple[torch.Tensor, dict[int, torch.Tensor]],
                  inputs: dict[str, torch.Tensor], keep: int) -> bool:
    """Whether two split forwards of one batch agree on every real position: log-softmax of the
    kept logits within :data:`PACKING_TOLERANCE` (fp32) or 0.1 (a 16-bit autocast), and each
    captured hidden state within the same gap relative to its scale."""
    real = inputs["attention_mask"].bool()
    tolerance = PACKING_TOLERANCE if padded[0].dtype == torch.float32 else 0.1
    gaps = [(torch.log_softmax(padded[0].float(), -1) - torch.log_softmax(packed[0].float(), -1))[real[:, -keep:]].abs().max()]
    for layer, hidden in padded[1].items():
        scale = hidden[real].float().abs().max().clamp_min(1.0)
        gaps.append((hidden.float() - packed[1][layer].float())[real].abs().max() / scale)
    return bool(max(float(gap) for gap in gaps) <= tolerance)


def check_vector_position(vector: SteeringVector, rep_positions: str) -> None:
    """Refuse a per-position direction used at another position (and ``pos:K`` without its own).

    A per-position vector (``reptune extract --positions last:N --per-position``) records its
    position in ``meta.positions`` as ``last:N@K``.
    """
    found = re.search(r"@(-\d+)$", vector.meta.positions or "")
    vector_offset = int(found.group(1)) if found else None
    offset = rep_position(rep_positions)
    if offset is not None and vector_offset != offset:
        raise VectorError(
            f"rep_positions {rep_positions} needs that position's own direction, but the vector was read at {vector.meta.positions!r}: "
            f"extract with --positions last:N --per-position (N >= {-offset}) and pass STEM.pos{offset}.safetensors"
        )
    if offset is None and vector_offset is not None and not (vector_offset == -1 and rep_positions == "last"):
        raise VectorError(f"the vector is the direction of prompt position {vector_offset} ({vector.meta.positions}): set rep_positions pos:{vector_offset}")


def resolve_rep_layers(config: TuneConfig, trained: Sequence[int], vector: SteeringVector, num_layers: int) -> list[int]:
    """The layers the representation loss reads (each with its own direction), checked.

    ``config.rep_layers`` when set, else every trained layer the vector has. Refused: a
    representation layer before every trained block (nothing trained can move it) and, unless
    ``config.allow_blocks_beyond_rep``, trained blocks deeper than every representation layer
    (they would get only the token-loss gradient, so the variant would be part token-only).

    Raises:
        VectorError: the vector lacks the layers; ReptuneError: the layers do not fit the blocks.
    """
    if config.rep_layers is not None:
        rep_layers = parse_layers(config.rep_layers, num_layers)
    else:
        rep_layers = [layer for layer in trained if layer in vector.directions]
        if not rep_layers:
            raise VectorError(f"the vector has none of the trained layers {list(trained)}; it has {vector.layers} (set rep_layers)")
    too_early = [layer for layer in rep_layers if layer < min(trained)]
    if too_early:
        raise ReptuneError(f"representation loss at layer(s) {too_early} cannot be moved by training layers {list(trained)}")
    beyond = [layer for layer in trained if layer > max(rep_layers)]
    if beyond and not config.allow_blocks_beyond_rep:
        raise ReptuneError(
            f"trained block(s) {beyond} lie beyond every representation layer ({sorted(rep_layers)}): they would get only the token loss; "
            "read the loss at every trained layer (a vector with those layers, rep_layers unset) or set allow_blocks_beyond_rep"
        )
    return sorted(rep_layers)


def _check_placement(handle: ModelHandle, config: TuneConfig, ranks: Ranks) -> None:
    """Refuse what the loop cannot train: a model split over devices or offloaded by a ``device_map``,
    and, with FSDP, LoRA or ``routing: paper`` (see :mod:`reptune.tuning.distributed`)."""
    if handle.dispatched:
        raise ReptuneError(
            "tuning needs the whole model on one device per process, but it was loaded with a device_map that splits or offloads it: "
            "load it without device_map, and tune across devices with accelerate launch (README: Scaling out)"
        )
    if ranks.fsdp and config.lora:
        raise ReptuneError("LoRA is not supported with FSDP: launch without --use_fsdp (DDP: one full replica per process) or train full weights")
    if ranks.fsdp and config.routing == "paper" and config.uses_vector:
        raise ReptuneError("routing 'paper' is not supported with FSDP (its per-term gradients bypass FSDP's reduce-scatter): launch without --use_fsdp or use routing 'all'")


class Tuner:
    """Holds the model, the trainable parameters and the loss set-up for one run.

    With several processes (``ranks``), each holds its share of every batch and the loss terms
    are scaled so that their mean over the processes is the one-process loss (see
    :mod:`reptune.tuning.distributed`).
    """

    def __init__(
        self,
        handle: ModelHandle,
        config: TuneConfig,
        items: Sequence[TrainItem],
        vector: SteeringVector | None,
        *,
        retain_texts: Sequence[str] | None = None,
        allow_model_mismatch: bool = False,
        ranks: Ranks | None = None,
    ) -> None:
        config.validate()
        self.handle = handle
        self.config = config
        self.ranks = ranks or Ranks()
        _check_placement(handle, config, self.ranks)
        self.layers = parse_layers(config.layers, handle.num_layers)
        self.blocks = [handle.layers[layer] for layer in range(handle.num_layers)]
        self.rep_vectors: dict[int, torch.Tensor] = {}
        if config.uses_vector:
            if vector is None:
                raise VectorError(f"preset {config.preset!r} needs a vector (--vector)")
            vector.check_compatible(handle, allow_model_mismatch=allow_model_mismatch)
            rep_layers = resolve_rep_layers(config, self.layers, vector, handle.num_layers)
            self.rep_vectors = vector.select(rep_layers)
        self.rep_positions = config.rep_positions
        if rep_position(self.rep_positions) is None:
            Positions.parse(self.rep_positions)
        if vector is not None and config.uses_vector:
            check_vector_position(vector, self.rep_positions)
        self.letter_ids: tuple[int, int] | None = None
        self.twins = bool(items) and all(item.rejected for item in items)
        if config.uses_tokens and not self.twins:
            if config.token_target in {"truth", "lie", "soft"}:
                if any(item.correct is None for item in items):
                    raise DataError(f"token target {config.token_target!r} needs A/B items with a correct answer (e.g. a statement CSV or CAA set)")
                self.letter_ids = letter_token_ids(handle.tokenizer, items[0].prompt)
            elif any(not item.completion for item in items):
                raise DataError("token target 'sft' needs items with completions (prompt/completion pairs)")
        self.train_items, self.val_items = split_items(items, config.val_fraction, config.seed)
        self.batches = BalancedBatches(self.train_items, config.batch_size, config.seed)
        self.peft_model = None
        self.prefix_unsupported = False
        self.packing: bool | None = None  # suffixes packed without padding; None until checked on a batch
        self._setup_trainable()
        self.retain_batches: list[_Batch] = []
        self.retain_real: list[bool] = []  # per retain batch: False where this process holds a stand-in row
        self.retain_refs: list[dict[str, Any]] = []
        self.retain_info: dict[str, Any] | None = None
        if config.retain != "none":
            self._setup_retain(self._retain_corpus(retain_texts, [item.prompt for item in items]))

    # ------------------------------------------------------------------ set-up
    def _setup_trainable(self) -> None:
        config, handle = self.config, self.handle
        handle.model.requires_grad_(False)
        if config.lora:
            from peft import LoraConfig, get_peft_model

            layer_alt = "|".join(str(layer) for layer in self.layers)
            target = rf"{re.escape(handle.layers_path)}\.({layer_alt})\..*{config.lora_targets}"
            lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0, target_modules=target, bias="none")
            try:
                self.peft_model = get_peft_model(handle.model, lora)
            except ValueError as exc:
                raise ReptuneError(f"LoRA found no target modules in layers {self.layers}: {str(exc).splitlines()[0][:160]}") from None
            named = [(name, param) for name, param in handle.model.named_parameters() if param.requires_grad]
        else:
            pattern = re.compile(config.train_modules)
            named = []
            for layer in self.layers:
                prefix = f"{handle.layers_path}.{layer}."
                for name, param in self.blocks[layer].named_parameters():
                    if pattern.search(name):
                        param.requires_grad_(True)
                        named.append((prefix + name, param))
        if not named:
            raise ReptuneError(f"no trainable parameters: train_modules {config.train_modules!r} matched nothing in layers {self.layers}")
        self.named_params = named
        # which trainable tensors each loss term updates (see backward)
        self.term_params: dict[str, list[tuple[str, torch.nn.Parameter]]] = {"tok": named, "rep": named, "retain": named}
        if config.routing == "paper" and config.uses_vector:
            routed = [(name, param) for name, param in named if re.search(config.rep_params, name)]
            if not routed:
                raise ReptuneError(f"routing 'paper': rep_params {config.rep_params!r} matches no trained parameter in layers {self.layers} (set rep_params)")
            self.term_params["rep"] = routed
        groups: dict[float, list[torch.nn.Parameter]] = {}
        for name, param in named:
            lr = next((group.lr for group in config.param_groups if re.search(group.pattern, name)), config.lr)
            groups.setdefault(lr, []).append(param)
        self.optimizer = torch.optim.AdamW(
            [{"params": params, "lr": lr} for lr, params in groups.items()], weight_decay=config.weight_decay, betas=(0.9, 0.999), eps=config.adam_eps
        )
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.param_order = [param for group in self.optimizer.param_groups for param in group["params"]]
        if self.ranks.fsdp:
            self._shard_model()

    def _shard_model(self) -> None:
        """FSDP2: shard the model over the processes (accelerate's ``prepare``, which also points the
        optimizer at the shards) and re-point the trainable lists at the sharded parameters (same names)."""
        named = self.named_params
        self.handle.model, self.optimizer = self.ranks.prepare(self.handle.model, self.optimizer)
        by_name = dict(self.handle.model.named_parameters())
        self.named_params = [(name, by_name[name]) for name, _ in named]
        self.term_params = {
            term: self.named_params if params is named else [(name, by_name[name]) for name, _ in params] for term, params in self.term_params.items()
        }
        self.param_order = [param for group in self.optimizer.param_groups for param in group["params"]]

    def _retain_corpus(self, given: Sequence[str] | None, prompts: Sequence[str]) -> list[str]:
        """The retain texts: ``given``, else ``config.retain_data``, else the default corpus
        (:func:`~reptune.tuning.data.default_retain_source`), minus any text that is (part of) a
        training prompt: the retain loss must not pull the training items back to the base answers."""
        origin = "in memory" if given is not None else (self.config.retain_data or default_retain_source())
        texts = list(given) if given is not None else load_retain_texts(origin)
        kept, dropped = drop_training_overlap(texts, prompts)
        if not kept:
            raise DataError(f"retain corpus {origin} holds only training prompts: use text unrelated to the training items")
        kept = [text for text in kept if text.strip()][: 16 * self.config.batch_size]
        self.retain_info = {"corpus": origin, "texts": len(kept), "dropped_overlapping_training": dropped}
        return kept

    def _setup_retain(self, texts: Sequence[str]) -> None:
        texts = [text for text in texts if text.strip()][: 16 * self.config.batch_size]
        if not texts:
            raise DataError("retain loss needs a non-empty retain corpus")
        for start in range(0, len(texts), self.config.batch_size):
            rows, real = self.ranks.shard(texts[start : start + self.config.batch_size])  # one process: the whole chunk
            batch = self._tokenize([TrainItem(prompt=text) for text in rows], rep_positions="all")
            self.retain_batches.append(batch)
            self.retain_real.append(real)
            if self.peft_model is None:  # full fine-tuning: cache the base outputs now
                with torch.no_grad():
                    logits, hidden = self._forward(batch, capture=self.layers if self.config.retain in {"act", "both"} else [], need_logits=True)
                reference: dict[str, Any] = {}
                if self.config.retain in {"kl", "both"}:
                    reference["kl"] = topk_reference(logits, self.config.retain_topk)
                if self.config.retain in {"act", "both"}:
                    reference["act"] = {layer: tensor.float() for layer, tensor in hidden.items()}
                self.retain_refs.append(reference)

    # ------------------------------------------------------------------ batches and forward
    def _tokenize(self, items: Sequence[TrainItem], rep_positions: str | None = None) -> _Batch:
        if items and all(item.rejected for item in items):
            # twins: the true replies first, then the false ones (rows i and i + n are one fact)
            items = [TrainItem(item.prompt, item.completion) for item in items] + [TrainItem(item.prompt, item.rejected) for item in items]
        examples = [Example(item.prompt, item.completion) for item in items]
        spec_text = rep_positions or self.rep_positions
        offset = rep_position(spec_text)
        spec = Positions.parse("last" if offset is not None else spec_text)
        has_completion = any(item.completion for item in items)
        batch = tokenize_examples(
            self.handle.tokenizer, examples, padding_side="right", with_offsets=has_completion or spec.kind == "marker", device=self.handle.device
        )
        real = batch.attention_mask.bool()
        if has_completion:
            assert batch.offsets is not None
            ends = torch.tensor([[end for _, end in row] for row in batch.offsets], device=real.device)
            starts = torch.tensor([[len(item.prompt) if item.completion else 10**9 for item in items]], device=real.device).T
            completion = real & (ends > starts)
        else:
            completion = torch.zeros_like(real)
        prompt = real & ~completion
        if offset is not None:
            rep_mask = single_position_mask(prompt, offset)
        elif spec.kind == "generated":
            rep_mask = completion
        else:
            rep_mask = spec.mask(prompt.long().cpu(), batch.offsets, batch.texts).to(real.device)
        correct = None
        if all(item.correct is not None for item in items):
            correct = torch.tensor([item.correct for item in items], device=real.device)
        return _Batch(batch.input_ids, batch.attention_mask, batch.position_ids, rep_mask, completion, prompt.sum(-1) - 1, correct)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """``config.autocast`` for the training forward passes (the handle's own setting is not used)."""
        dtype = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.config.autocast]
        if dtype is None or dtype == self.handle.dtype:
            return contextlib.nullcontext()
        return _autocast_with_fp32_head(self.handle.model, self.handle.device.type, dtype)

    def _forward(self, batch: _Batch, capture: Sequence[int], need_logits: bool, keep: int = 0) -> tuple[torch.Tensor | None, dict[int, torch.Tensor]]:
        """One forward pass; stops after the deepest captured layer when logits are not needed.

        ``keep > 0`` asks for the logits of the last ``keep`` positions only (the LM head, a large
        share of a small model's compute, then runs where a loss reads it); ``0`` = every position.
        """
        # FSDP: no early exit (a pass stopped inside a sharded model would skip the root's post-forward)
        stop = None if need_logits or not capture or self.ranks.fsdp else max(capture)
        logits = None
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "position_ids": batch.position_ids, "use_cache": False}
        # twins and chat items share their prompt's tokens: run them once (see reptune.prefix_cache)
        prefix = right_padded_prefix_length(batch.input_ids, batch.attention_mask, keep) if keep and self._share_prefix() else 0
        if prefix:
            packed = self._pack(inputs, prefix, keep, capture)
            with self._autocast(), capture_layers(self.handle, capture) as captured:
                split = split_forward(self.handle.model, inputs, prefix, keep, captured, packed)
            if split is not None:
                return split
            self.prefix_unsupported = True
        with self._autocast(), capture_layers(self.handle, capture, stop_after=stop) as captured:
            # keep > 0 implies logits are needed, so no stop hook can end this pass early
            out = forward_keeping_logits(self.handle.model, inputs, keep)[0] if keep else forward_until(self.handle.model, **inputs)
            if out is not None:
                logits = out.logits
                if keep and logits.shape[1] != keep:  # a model class without logits_to_keep: every position came back
                    logits = logits[:, -keep:]
            hidden = dict(captured)
        return logits, hidden

    def _pack(self, inputs: dict[str, torch.Tensor], prefix: int, keep: int, capture: Sequence[int]) -> bool:
        """Whether this split forward runs its suffixes packed (:func:`reptune.prefix_cache.packed_suffix_inputs`).

        The first time, the batch runs both ways without gradients and packing is kept only if
        they agree: a model whose positions or attention ignore the custom mask (ALiBi from the
        2D mask, say) trains padded, as before.
        """
        if self.ranks.fsdp or not packing_possible(self.handle.model, inputs["input_ids"].shape[1]):
            return False
        if self.packing is None:
            with torch.no_grad(), self._autocast():
                runs = []
                for packed in (False, True):
                    with capture_layers(self.handle, capture) as captured:
                        runs.append(split_forward(self.handle.model, inputs, prefix, keep, captured, packed))
            padded, packed_run = runs
            self.packing = padded is not None and packed_run is not None and _same_forward(padded, packed_run, inputs, keep)
            if not self.packing:
                logger.info("packed suffixes differ from padded ones on this model; training with padding")
        return self.packing

    def _share_prefix(self) -> bool:
        """Whether a forward may split off the rows' shared prefix: no foreign hook on the model,
        ``REPTUNE_NO_PREFIX_CACHE`` unset, and the model's cache has held a prefix before."""
        return not self.prefix_unsupported and prefix_sharing_allowed(self.handle)

    @property
    def twin_tokens(self) -> bool:
        """Whether the token loss is the pairwise sequence loss on twins."""
        return self.config.uses_tokens and self.twins and self.config.token_target in {"truth", "lie", "soft"}

    def local_batch(self, items: Sequence[TrainItem]) -> tuple[_Batch, bool]:
        """This process's share of the global batch ``items``, tokenised, and whether it holds real rows."""
        rows, real = self.ranks.shard(items)
        return self._tokenize(rows), real

    def losses(self, batch: _Batch, retain_index: int | None, real: bool = True) -> dict[str, torch.Tensor]:
        """All loss terms for one batch (and one retain batch); ``loss`` is the weighted total.

        With several processes ``batch`` is this process's share (``real=False``: a stand-in row
        that counts zero) and each term is this process's share of the global mean (:meth:`_share`).
        """
        config = self.config
        need_logits = config.uses_tokens
        # twins: the replies follow one shared prompt, so only the positions from the one before
        # the first reply token on need logits
        twin_tokens = self.twin_tokens
        first = int(batch.completion_mask.float().argmax(-1).min()) if twin_tokens else 0
        keep = batch.input_ids.shape[1] - first + 1 if twin_tokens and first > 0 else 0
        logits, hidden = self._forward(batch, list(self.rep_vectors), need_logits, keep)
        zero = torch.zeros((), device=self.handle.device)
        terms: dict[str, torch.Tensor] = {"tok": zero, "rep": zero, "retain": zero, "cos": zero}
        if config.uses_vector:
            rep_terms = [representation_loss(hidden[layer], vec, batch.rep_mask, config.rep_mode, config.rep_sign) for layer, vec in self.rep_vectors.items()]
            terms["rep"] = torch.stack([loss for loss, _ in rep_terms]).mean()
            terms["cos"] = torch.stack([cos for _, cos in rep_terms]).mean()
        if need_logits:
            assert logits is not None
            if twin_tokens:
                start = batch.input_ids.shape[1] - logits.shape[1]
                logp = completion_logprobs(logits, batch.input_ids[:, start:], batch.completion_mask[:, start:])
                half = logp.shape[0] // 2
                terms["tok"] = pair_sequence_loss(logp[:half], logp[half:], config.token_target)
            elif config.token_target == "sft":
                terms["tok"] = sft_loss(logits, batch.input_ids, batch.completion_mask)
            else:
                assert self.letter_ids is not None and batch.correct is not None
                rows = torch.arange(logits.shape[0], device=logits.device)
                terms["tok"] = answer_loss(logits[rows, batch.last_prompt], self.letter_ids, batch.correct, config.token_target)
        if retain_index is not None and self.retain_batches:
            terms["retain"] = self._retain_loss(retain_index)
        if self.ranks.distributed:
            self._share(terms, batch, retain_index, real)
        terms["loss"] = config.w_tok * terms["tok"] + config.w_rep * terms["rep"] + config.w_retain * terms["retain"]
        return terms

    def _units(self, batch: _Batch, retain_index: int | None, real: bool) -> torch.Tensor:
        """What each term's local mean is over, ``[rep, tok, retain]`` float64: selected positions;
        rows, twin pairs or completion tokens; retain positions (0 for a stand-in row)."""
        rep = float(batch.rep_mask.sum()) if real else 0.0
        if not real:
            tok = 0.0
        elif self.twin_tokens:
            tok = batch.input_ids.shape[0] / 2
        elif self.config.token_target == "sft":
            tok = float(batch.completion_mask[:, 1:].sum())
        else:
            tok = float(batch.input_ids.shape[0])
        retain = 0.0
        if retain_index is not None and self.retain_batches:
            index = retain_index % len(self.retain_batches)
            retain = float(retain_mask(self.retain_batches[index].attention_mask).sum()) if self.retain_real[index] else 0.0
        return torch.tensor([rep, tok, retain], dtype=torch.float64, device=self.handle.device)

    def _share(self, terms: dict[str, torch.Tensor], batch: _Batch, retain_index: int | None, real: bool) -> None:
        """Turn the local means in ``terms`` into this process's shares of the global means (in place)."""
        scale = self.ranks.scales(self._units(batch, retain_index, real)).float()
        for key, index in (("rep", 0), ("cos", 0), ("tok", 1), ("retain", 2)):
            terms[key] = terms[key] * scale[index]

    def _retain_loss(self, index: int) -> torch.Tensor:
        batch = self.retain_batches[index % len(self.retain_batches)]
        mode = self.config.retain
        capture = self.layers if mode in {"act", "both"} else []
        logits, hidden = self._forward(batch, capture, need_logits=mode in {"kl", "both"})
        real = retain_mask(batch.attention_mask)
        if self.peft_model is not None:  # LoRA: the base is the model with its adapter switched off
            with torch.no_grad(), self.peft_model.disable_adapter():
                base_logits, base_hidden = self._forward(batch, capture, need_logits=mode in {"kl", "both"})
            reference = {}
            if base_logits is not None:
                reference["kl"] = topk_reference(base_logits, base_logits.shape[-1])
            reference["act"] = {layer: tensor.float() for layer, tensor in base_hidden.items()}
        else:
            reference = self.retain_refs[index % len(self.retain_refs)]
        total = torch.zeros((), device=self.handle.device)
        if mode in {"kl", "both"}:
            assert logits is not None
            total = total + kl_base_to_tuned(logits, reference["kl"], real)
        if mode in {"act", "both"}:
            total = total + torch.stack([(hidden[layer].float() - reference["act"][layer]).pow(2).mean(-1)[real].mean() for layer in capture]).mean()
        return total

    def set_learning_rates(self, step: int) -> None:
        """Learning rates for optimizer step ``step`` (0-based): the schedule is a pure function of the step."""
        factor = lr_factor(self.config, step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def active_terms(self) -> list[str]:
        """The loss terms that contribute to training (non-zero weight and in use)."""
        config = self.config
        active = {"tok": config.uses_tokens, "rep": config.uses_vector, "retain": bool(self.retain_batches) and config.w_retain > 0}
        return [name for name, on in active.items() if on]

    def _weighted(self, terms: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        weight = {"tok": self.config.w_tok, "rep": self.config.w_rep, "retain": self.config.w_retain}[name]
        return weight * terms[name]

    def backward(self, terms: dict[str, torch.Tensor], names: Sequence[str] | None = None) -> None:
        """Accumulate the gradients of the weighted terms ``names`` (default: the active ones).

        Each term is differentiated only with respect to the tensors it may update
        (``term_params``), so the others receive exactly zero from it (``routing='paper'``).
        When every term updates every trainable tensor this is ``terms["loss"].backward()``.
        """
        active = self.active_terms()
        names = active if names is None else list(names)
        if names == active and all(self.term_params[name] is self.named_params for name in names):
            terms["loss"].backward()
            return
        for index, name in enumerate(names):
            params = [param for _, param in self.term_params[name]]
            grads = torch.autograd.grad(self._weighted(terms, name), params, retain_graph=index < len(names) - 1, allow_unused=True)
            for param, grad in zip(params, grads):
                if grad is not None:
                    param.grad = grad if param.grad is None else param.grad + grad

    def term_gradients(self, items: Sequence[TrainItem]) -> dict[str, dict[str, float]]:
        """Per loss term, the gradient norm it alone sends to every trainable tensor.

        Runs the training backward (:meth:`backward`) for one term at a time on one batch of
        ``items`` (and the first retain batch); the weights are not updated and the gradients are
        cleared afterwards. Returns ``{term: {parameter name: L2 norm}}`` for the active terms; a
        tensor the term does not update has norm exactly 0.
        """
        out: dict[str, dict[str, float]] = {}
        batch = self._tokenize(items)
        for name in self.active_terms():
            self.optimizer.zero_grad(set_to_none=True)
            self.backward(self.losses(batch, retain_index=0 if self.retain_batches else None), [name])
            out[name] = {pname: 0.0 if param.grad is None else float(param.grad.norm()) for pname, param in self.named_params}
        self.optimizer.zero_grad(set_to_none=True)
        return out

    def plan(self) -> dict[str, Any]:
        """:meth:`TuneConfig.describe`, resolved: actual layers, positions and parameter names.

        Per term, ``updates`` maps each trained tensor name (inside a block) to the blocks whose
        tensor of that name the term updates, e.g. ``{"self_attn.v_proj.weight": "11-17"}``.
        """
        config = self.config
        plan = config.describe()
        plan["trained_blocks"] = _compact(self.layers)
        names = {"tok": "token", "rep": "representation", "retain": "retain"}
        for key, title in names.items():
            if title in plan["terms"]:
                plan["terms"][title]["updates"] = self._by_block(self.term_params[key])
        if "representation" in plan["terms"]:
            plan["terms"]["representation"]["layers"] = _compact(list(self.rep_vectors))
            plan["terms"]["representation"]["trained_blocks_without_rep_loss"] = _compact([layer for layer in self.layers if layer not in self.rep_vectors])
        if "retain" in plan["terms"] and self.retain_info is not None:
            plan["terms"]["retain"].update(self.retain_info)
        if self.twins and "token" in plan["terms"] and config.token_target in {"truth", "lie", "soft"}:
            target = {"truth": "the true twin", "lie": "the false twin", "soft": "50/50 over the twins"}[config.token_target]
            plan["terms"]["token"]["loss"] = f"pairwise sequence loss -log softmax([logp(true), logp(false)]) toward {target}"
            plan["terms"]["token"]["position"] = "every token of both twins (summed log-prob of each reply)"
        by_id = {id(param): name for name, param in self.named_params}
        plan["optimizer"]["groups"] = [
            {"lr": base, "params": self._by_block([(by_id[id(param)], param) for param in group["params"]])}
            for group, base in zip(self.optimizer.param_groups, self.base_lrs)
        ]
        return plan

    def _by_block(self, named: Sequence[tuple[str, torch.nn.Parameter]]) -> dict[str, str]:
        found: dict[str, list[int]] = {}
        pattern = re.compile(rf"{re.escape(self.handle.layers_path)}\.(\d+)\.(.+)$")
        for name, _ in named:
            match = pattern.search(name)
            suffix, layer = (match.group(2), int(match.group(1))) if match else (name, -1)
            found.setdefault(suffix, []).append(layer)
        return {suffix: _compact(sorted(layers)) for suffix, layers in found.items()}

    @torch.no_grad()
    def evaluate(self, items: Sequence[TrainItem]) -> dict[str, float]:
        """Mean loss terms over ``items`` (no retain term), weighted by batch size.

        With several processes every chunk is shared like a training batch and its terms are
        averaged over the processes: every process gets the same numbers.
        """
        sums = dict.fromkeys(LOSS_KEYS, 0.0)
        for start in range(0, len(items), self.config.batch_size):
            chunk = items[start : start + self.config.batch_size]
            batch, real = self.local_batch(chunk)
            values = self.logged(self.losses(batch, retain_index=None, real=real))
            for key in LOSS_KEYS:
                sums[key] += values[key] * len(chunk)
        return {key: value / len(items) for key, value in sums.items()}

    def logged(self, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        """The loss terms as numbers: this process's own, or with several processes their mean
        over the processes, which is the loss of the whole batch (the same on every process)."""
        if not self.ranks.distributed:
            return {key: float(terms[key].detach()) for key in LOSS_KEYS}
        merged = self.ranks.mean(torch.stack([terms[key].detach().float() for key in LOSS_KEYS]))
        return dict(zip(LOSS_KEYS, merged.tolist()))

    # ------------------------------------------------------------------ state
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """CPU copies of the whole trainable tensors (FSDP shards are gathered: every process must call)."""
        return {name: self.ranks.full(param) for name, param in self.named_params}

    def load_trainable(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, param in self.named_params:
                if name not in tensors:
                    raise ReptuneError(f"checkpoint lacks parameter {name}: it belongs to another run")
                param.copy_(self.ranks.local(param, tensors[name]))

    def optimizer_tensors(self) -> dict[str, torch.Tensor]:
        """The AdamW state as ``{"INDEX.KEY": tensor}`` CPU copies (FSDP shards gathered: every process must call)."""
        out = {}
        for index, param in enumerate(self.param_order):
            for key, value in self.optimizer.state.get(param, {}).items():
                out[f"{index}.{key}"] = self.ranks.full(torch.as_tensor(value))
        return out

    def load_optimizer(self, tensors: dict[str, torch.Tensor]) -> None:
        for index, param in enumerate(self.param_order):
            state = {key.split(".", 1)[1]: value for key, value in tensors.items() if key.split(".", 1)[0] == str(index)}
            if state:
                self.optimizer.state[param] = {k: (v if k == "step" else self.ranks.local(param, v)) for k, v in state.items()}


def _checkpoint_dir(output: Path) -> Path:
    return output / "checkpoints"


def run_fingerprint(tuner: Tuner) -> dict[str, str | None]:
    """SHA-256 of what a run learns from: its items (train + validation) and the vector's used layers.

    Saved with every checkpoint; ``--resume`` refuses a checkpoint made from other data or
    another vector (the settings are compared separately).
    """
    items = [[item.prompt, item.completion, item.correct, item.label] for item in (*tuner.train_items, *tuner.val_items)]
    vector = None
    if tuner.rep_vectors:
        digest = hashlib.sha256()
        for layer, tensor in sorted(tuner.rep_vectors.items()):
            digest.update(f"layer.{layer}:".encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        vector = digest.hexdigest()
    return {"items": sha256_json(items), "vector": vector}


def _save_checkpoint(tuner: Tuner, output: Path, state: LoopState) -> None:
    """Write ``checkpoints/step-N`` (atomically: staged, then renamed) and point ``latest.json`` at it.

    Every process calls it (FSDP gathers the shards); only the main process writes.
    """
    trainable, optimizer = tuner.trainable_state(), tuner.optimizer_tensors()
    if not tuner.ranks.is_main:
        return
    root = _checkpoint_dir(output)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".step-{state.step}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    save_file(trainable, str(staging / "trainable.safetensors"))
    save_file(optimizer or {"empty": torch.zeros(1)}, str(staging / "optimizer.safetensors"))
    if state.best_weights is not None:
        save_file(state.best_weights, str(staging / "best.safetensors"))
    saved = {**state.to_json(), "config": tuner.config.to_json(), "fingerprint": run_fingerprint(tuner)}
    (staging / "state.json").write_text(json.dumps(saved), encoding="utf-8")
    set_plain_modes(staging)
    final = root / f"step-{state.step}"
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    write_json_atomic(root / "latest.json", {"step": state.step, "path": final.name})
    for old in root.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(tuner: Tuner, output: Path) -> LoopState | None:
    latest = _checkpoint_dir(output) / "latest.json"
    if not latest.is_file():
        return None
    pointer = json.loads(latest.read_text(encoding="utf-8"))
    folder = _checkpoint_dir(output) / pointer["path"]
    loop = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    saved = TuneConfig.from_json(loop.pop("config")).to_json()
    current = tuner.config.to_json()
    differing = sorted(key for key in current if key not in {"steps", "patience"} and saved.get(key) != current[key])
    if differing:
        raise ReptuneError(f"cannot resume: the checkpoint in {folder} was made with different settings ({', '.join(differing)})")
    saved_print, current_print = loop.pop("fingerprint", None), run_fingerprint(tuner)
    if isinstance(saved_print, dict):  # checkpoints of older versions have none
        what = {"items": "training data", "vector": "vector"}
        changed = [what[key] for key in what if saved_print.get(key) != current_print[key]]
        if changed:
            raise ReptuneError(
                f"cannot resume: the checkpoint in {folder} was made with a different {' and '.join(changed)}; "
                "use the same --data/--limit/--vector, or another --output"
            )
    tuner.load_trainable(load_file(str(folder / "trainable.safetensors")))
    optimizer = load_file(str(folder / "optimizer.safetensors"))
    optimizer.pop("empty", None)
    tuner.load_optimizer(optimizer)
    best = load_file(str(folder / "best.safetensors")) if (folder / "best.safetensors").is_file() else None
    return LoopState.from_json(loop, best)


def tune(
    handle: ModelHandle,
    config: TuneConfig,
    items: Sequence[TrainItem],
    output_dir: str | os.PathLike[str],
    *,
    vector: SteeringVector | None = None,
    vector_path: str | None = None,
    data_origin: str | None = None,
    retain_texts: Sequence[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    allow_model_mismatch: bool = False,
    save_model: bool = True,
    weights: Literal["full", "blocks"] = "full",
    accelerator: Any | None = None,
) -> TuneResult:
    """Fine-tune ``handle``'s model in place and write the run to ``output_dir``.

    Args:
        handle: the model to tune (its weights change; load a fresh one for the base).
        config: a :class:`TuneConfig` (e.g. ``TuneConfig.from_preset("honesty", layers="10-17")``).
        items: training items (see :func:`reptune.tuning.data.load_tune_items`); with
            ``config.limit`` only the first ``limit`` of them, as ``load_tune_items(limit=)`` keeps.
        output_dir: gets the merged weights (``config.json`` + safetensors: loadable by
            ``load_model`` and ``AutoModelForCausalLM.from_pretrained``), ``adapter/`` with LoRA,
            ``tune_config.json``, ``metrics.json``, ``loss_curves.{json,png}``, ``README.md`` and
            ``checkpoints/``.
        resume: continue from the latest checkpoint in ``output_dir``.
        save_model: write the final weights (tests may skip it).
        weights: ``full`` writes the whole merged model (``config.json`` + ``model.safetensors``,
            for serving and ``from_pretrained``); ``blocks`` writes only the trained blocks
            (``tuned_blocks.safetensors``, naming the base model; :mod:`reptune.tuned_blocks`),
            which ``load_model`` loads over the base: about 14 MB a block instead of the model.
        accelerator: an ``accelerate.Accelerator`` to share the run over its processes; by
            default one is made when the process was started by ``accelerate launch`` or
            ``torchrun`` with several processes (see :mod:`reptune.tuning.distributed`). Every
            process then calls ``tune`` with the same arguments; ``config.batch_size`` is the
            global batch, the main process writes ``output_dir`` (which every process must see).

    Raises:
        ReptuneError: bad settings or data (before training); TrainingDiverged on a NaN loss.
    """
    output = Path(output_dir)
    if weights not in WEIGHT_FORMATS:
        raise ReptuneError(f"weights must be 'full' or 'blocks', not {weights!r}")
    ranks = current(accelerator)
    _check_output(output, resume)
    if config.limit is not None:  # the recorded limit is the one trained with, however the items came
        items = list(items)[: config.limit]
    tuner = Tuner(handle, config, items, vector, retain_texts=retain_texts, allow_model_mismatch=allow_model_mismatch, ranks=ranks)
    ranks.barrier()  # every process has checked the folder before the main one writes into it
    if ranks.is_main:
        output.mkdir(parents=True, exist_ok=True)
        write_run_marker(output, "tune")
        _forget_finished(output)
    state = (_load_checkpoint(tuner, output) if resume else None) or LoopState()
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    with progress_bar(f"tuning ({config.preset})", total=config.steps, enabled=progress and ranks.is_main) as advance:
        advance(state.step)
        while state.step < config.steps and state.stopped is None:
            _train_step(tuner, state, output)
            _validate(tuner, state)
            if state.step % config.checkpoint_every == 0 or state.step == config.steps or state.stopped:
                _save_checkpoint(tuner, output, state)
            shown = state.history[-1]
            advance(1, status=" ".join(f"{key} {shown[key]:.3f}" for key in LOSS_KEYS if key == "loss" or shown[key]))
    if state.best_weights is not None:
        tuner.load_trainable(state.best_weights)  # end on the best validation weights
    result = TuneResult(output, config, _metrics(tuner, state, time.perf_counter() - started), state.history, state.val_history)
    _write_outputs(tuner, result, vector, vector_path, data_origin, save_model and weights)
    ranks.barrier()  # every process returns once the outputs are written
    return result


def _check_output(output: Path, resume: bool) -> None:
    """Refuse, before any model work, a run directory that holds another run (without ``resume``) or is a file."""
    if not resume and (_checkpoint_dir(output) / "latest.json").is_file():
        raise ReptuneError(f"{output} already holds a run: pass resume=True (--resume) or choose another directory")
    if output.exists() and not output.is_dir():
        raise ReptuneError(f"output {output} is a file, not a directory")


def _train_step(tuner: Tuner, state: LoopState, output: Path) -> None:
    """One optimiser step on batch ``state.step``; appends its loss terms to ``state.history``.

    Raises:
        TrainingDiverged: the total loss is NaN or infinite (nothing is updated; checkpoints stay).
    """
    step, config = state.step, tuner.config
    batch, real = tuner.local_batch(tuner.batches(step))
    terms = tuner.losses(batch, retain_index=step, real=real)
    logged = tuner.logged(terms)  # with several processes: the whole batch's, the same on every process
    if not math.isfinite(logged["loss"]):
        latest = _checkpoint_dir(output) / "latest.json"
        kept = f"last good checkpoint kept in {_checkpoint_dir(output)}" if latest.is_file() else "no checkpoint was written yet"
        raise TrainingDiverged(f"loss became {logged['loss']} at step {step + 1}; {kept}; lower the learning rate")
    tuner.backward(terms)
    tuner.ranks.sync_gradients([param for _, param in tuner.named_params])
    tuner.set_learning_rates(step)
    if config.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_([param for _, param in tuner.named_params], config.max_grad_norm)
    tuner.optimizer.step()
    tuner.optimizer.zero_grad(set_to_none=True)
    state.history.append({"step": step + 1, **logged})
    state.step = step + 1
    work.count(work.STEPS)


def _validate(tuner: Tuner, state: LoopState) -> None:
    """At an evaluation step: validation losses into ``state.val_history``, then best weights or patience.

    Evaluates every ``eval_every`` steps and at the last step; an improvement must beat the best
    watched loss by more than 1e-6.
    """
    config = tuner.config
    if not tuner.val_items or (state.step % config.eval_every != 0 and state.step != config.steps):
        return
    val = tuner.evaluate(tuner.val_items)
    state.val_history.append({"step": state.step, **val})
    watched = val[config.early_stop_on]
    if state.best_val is None or watched < state.best_val - 1e-6:
        state.best_val, state.best_step, state.bad_evals = watched, state.step, 0
        state.best_weights = tuner.trainable_state()
        return
    state.bad_evals += 1
    if state.bad_evals >= config.patience:
        state.stopped = f"early stop at step {state.step}: no validation improvement in {config.patience} evaluations"


def _metrics(tuner: Tuner, state: LoopState, seconds: float) -> dict[str, Any]:
    """``metrics.json`` of a finished run (``seconds``: wall time from after any checkpoint load to the end)."""
    return {
        "steps_run": state.step,
        "stopped": state.stopped or "completed",
        "best_step": state.best_step,
        "best_val_loss": state.best_val,
        "early_stop_on": tuner.config.early_stop_on,
        "final_train": state.history[-1] if state.history else None,
        "final_val": state.val_history[-1] if state.val_history else None,
        "train_items": len(tuner.train_items),
        "val_items": len(tuner.val_items),
        "trainable_parameters": sum(param.numel() for _, param in tuner.named_params),
        "retain_corpus": tuner.retain_info,
        "seconds": seconds,
        "processes": tuner.ranks.world_size,
        "parallel": tuner.ranks.mode,
    }


def _write_weights(tuner: Tuner, output: Path, full_state: dict[str, torch.Tensor] | None, weights: Literal["full", "blocks"]) -> None:
    """The tuned weights (LoRA merged first; its adapter kept in ``adapter/``): the whole model, or its trained blocks."""
    handle = tuner.handle
    model = handle.model
    if tuner.peft_model is not None:
        tuner.peft_model.save_pretrained(str(output / ".adapter.tmp"))
        set_plain_modes(output / ".adapter.tmp")
        shutil.rmtree(output / "adapter", ignore_errors=True)
        os.replace(output / ".adapter.tmp", output / "adapter")
        model = tuner.peft_model.merge_and_unload()
        handle.model = model
    model.requires_grad_(False)
    if weights == "blocks":
        tensors = block_tensors(full_state or model.state_dict(), handle.layers_path, tuner.layers)
        load_name = "embedded" if handle.source == "embedded" else handle.model_id
        base = {"model": load_name, "revision": handle.revision if handle.source == "hub" else None,
                "layers_path": handle.layers_path, "layers": list(tuner.layers)}
        for stale in ("config.json", "model.safetensors", "model.safetensors.index.json"):  # an earlier full save would load instead
            (output / stale).unlink(missing_ok=True)
        save_tuned_blocks(output, tensors, base)
        return
    (output / TUNED_BLOCKS_FILE).unlink(missing_ok=True)
    staging = output / ".model.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging), state_dict=full_state)  # full_state: FSDP's gathered weights, else None
    handle.tokenizer.save_pretrained(str(staging))
    set_plain_modes(staging)
    for path in staging.iterdir():
        os.replace(path, output / path.name)
    staging.rmdir()


def _forget_finished(output: Path) -> None:
    """Before (re)training into ``output``: drop what a killed write left and the old completion record.

    ``metrics.json`` is written last, so its presence means the weights beside it are complete;
    a run that starts again removes it until it has finished again.
    """
    remove_stale_temps(output)
    remove_stale_temps(_checkpoint_dir(output))
    (output / "metrics.json").unlink(missing_ok=True)


def _write_outputs(tuner: Tuner, result: TuneResult, vector: SteeringVector | None, vector_path: str | None, data_origin: str | None,
                   save_model: Literal["full", "blocks", False]) -> None:
    """Write the run's files; ``metrics.json`` (the completion record) goes last, after the weights.

    The loss-curve figure and the model card are built by reporting (through :mod:`reptune._render`).
    Every process calls it (FSDP gathers the full state dict); only the main process writes.
    """
    output, handle = result.output_dir, tuner.handle
    full_state = tuner.ranks.model_state(handle.model) if save_model else None
    if not tuner.ranks.is_main:
        if save_model and tuner.peft_model is not None:
            handle.model = tuner.peft_model.merge_and_unload()  # every process ends with the merged model
        return
    write_json_atomic(
        output / "tune_config.json",
        {**tuner.config.to_json(), "vector": vector_path, "data": data_origin, "base_model": handle.model_id, "plan": tuner.plan()},
    )
    write_json_atomic(output / "loss_curves.json", {"train": result.history, "val": result.val_history})
    if result.history:
        renderer("loss_curves")(result.history, result.val_history, output / "loss_curves.png", title=f"{tuner.config.preset} on {handle.model_id}")
    if save_model:
        _write_weights(tuner, output, full_state, save_model)
    card = renderer("model_card")(
        tuner.config, result.metrics, model_id=handle.model_id, revision=handle.revision, layers=tuner.layers,
        rep_layers=list(tuner.rep_vectors), vector=vector, vector_path=vector_path, data_origin=data_origin,
    )
    write_text_atomic(output / "README.md", card)
    write_json_atomic(output / "metrics.json", result.metrics)  # last: "completed" only once everything is there
