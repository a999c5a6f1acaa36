"""The representation-tuning loop: losses, checkpoints, resume, early stopping, outputs.

Reproducibility: dropout is off (the model stays in eval mode), batch ``s`` is a pure function
of ``(seed, s)``, and checkpoints hold the trainable tensors, the AdamW state and the loop
state, so a run killed at any point and resumed ends where an uninterrupted run would.
Checkpoints and outputs are safetensors + JSON, written atomically; nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from reptune._io import remove_stale_temps, sha256_json, write_json_atomic, write_run_marker, write_text_atomic
from reptune._progress import progress_bar
from reptune.activations import _StopForward, capture_layers, tokenize_examples
from reptune.data.ab import letter_token_ids
from reptune.data.pairs import Example
from reptune.errors import DataError, ReptuneError, VectorError
from reptune.models import ModelHandle
from reptune.sites import Positions, parse_layers
from reptune.tuning.config import TuneConfig
from reptune.tuning.data import BalancedBatches, TrainItem, split_items
from reptune.tuning.losses import answer_loss, kl_base_to_tuned, representation_loss, sft_loss, topk_reference
from reptune.vectors import SteeringVector

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
class _Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    rep_mask: torch.Tensor
    completion_mask: torch.Tensor
    last_prompt: torch.Tensor
    correct: torch.Tensor | None


class Tuner:
    """Holds the model, the trainable parameters and the loss set-up for one run."""

    def __init__(
        self,
        handle: ModelHandle,
        config: TuneConfig,
        items: Sequence[TrainItem],
        vector: SteeringVector | None,
        *,
        retain_texts: Sequence[str] | None = None,
        allow_model_mismatch: bool = False,
    ) -> None:
        config.validate()
        self.handle = handle
        self.config = config
        self.layers = parse_layers(config.layers, handle.num_layers)
        self.blocks = [handle.layers[layer] for layer in range(handle.num_layers)]
        self.rep_vectors: dict[int, torch.Tensor] = {}
        if config.uses_vector:
            if vector is None:
                raise VectorError(f"preset {config.preset!r} needs a vector (--vector)")
            vector.check_compatible(handle, allow_model_mismatch=allow_model_mismatch)
            if config.rep_layers is not None:
                rep_layers = parse_layers(config.rep_layers, handle.num_layers)
            else:
                rep_layers = [layer for layer in self.layers if layer in vector.directions]
                if not rep_layers:
                    raise VectorError(f"the vector has none of the trained layers {self.layers}; it has {vector.layers} (set rep_layers)")
            self.rep_vectors = vector.select(rep_layers)
            too_early = [layer for layer in rep_layers if layer < min(self.layers)]
            if too_early:
                raise ReptuneError(f"representation loss at layer(s) {too_early} cannot be moved by training layers {self.layers}")
        self.rep_positions = config.rep_positions
        Positions.parse(self.rep_positions)
        self.letter_ids: tuple[int, int] | None = None
        if config.uses_tokens:
            if config.token_target in {"truth", "lie", "soft"}:
                if any(item.correct is None for item in items):
                    raise DataError(f"token target {config.token_target!r} needs A/B items with a correct answer (e.g. a statement CSV or CAA set)")
                self.letter_ids = letter_token_ids(handle.tokenizer, items[0].prompt)
            elif any(not item.completion for item in items):
                raise DataError("token target 'sft' needs items with completions (prompt/completion pairs)")
        self.train_items, self.val_items = split_items(items, config.val_fraction, config.seed)
        self.batches = BalancedBatches(self.train_items, config.batch_size, config.seed)
        self.peft_model = None
        self._setup_trainable()
        self.retain_batches: list[_Batch] = []
        self.retain_refs: list[dict[str, Any]] = []
        if config.retain != "none":
            self._setup_retain(retain_texts or [item.prompt for item in self.train_items])

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
        groups: dict[float, list[torch.nn.Parameter]] = {}
        for name, param in named:
            lr = next((group.lr for group in config.param_groups if re.search(group.pattern, name)), config.lr)
            groups.setdefault(lr, []).append(param)
        self.optimizer = torch.optim.AdamW(
            [{"params": params, "lr": lr} for lr, params in groups.items()], weight_decay=config.weight_decay, betas=(0.9, 0.999)
        )
        self.param_order = [param for group in self.optimizer.param_groups for param in group["params"]]

    def _setup_retain(self, texts: Sequence[str]) -> None:
        texts = [text for text in texts if text.strip()][: 16 * self.config.batch_size]
        if not texts:
            raise DataError("retain loss needs a non-empty retain corpus")
        for start in range(0, len(texts), self.config.batch_size):
            chunk = [TrainItem(prompt=text) for text in texts[start : start + self.config.batch_size]]
            batch = self._tokenize(chunk, rep_positions="all")
            self.retain_batches.append(batch)
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
        examples = [Example(item.prompt, item.completion) for item in items]
        spec = Positions.parse(rep_positions or self.rep_positions)
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
        if spec.kind == "generated":
            rep_mask = completion
        else:
            rep_mask = spec.mask(prompt.long().cpu(), batch.offsets, batch.texts).to(real.device)
        correct = None
        if all(item.correct is not None for item in items):
            correct = torch.tensor([item.correct for item in items], device=real.device)
        return _Batch(batch.input_ids, batch.attention_mask, batch.position_ids, rep_mask, completion, prompt.sum(-1) - 1, correct)

    def _forward(self, batch: _Batch, capture: Sequence[int], need_logits: bool) -> tuple[torch.Tensor | None, dict[int, torch.Tensor]]:
        """One forward pass; stops after the deepest captured layer when logits are not needed."""
        stop = None if need_logits or not capture else max(capture)
        logits = None
        with self.handle.autocast(), capture_layers(self.handle, capture, stop_after=stop) as captured:
            try:
                out = self.handle.model(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids, use_cache=False
                )
                logits = out.logits
            except _StopForward:
                pass
            hidden = dict(captured)
        return logits, hidden

    def losses(self, batch: _Batch, retain_index: int | None) -> dict[str, torch.Tensor]:
        """All loss terms for one batch (and one retain batch); ``loss`` is the weighted total."""
        config = self.config
        need_logits = config.uses_tokens
        logits, hidden = self._forward(batch, list(self.rep_vectors), need_logits)
        zero = torch.zeros((), device=self.handle.device)
        terms: dict[str, torch.Tensor] = {"tok": zero, "rep": zero, "retain": zero, "cos": zero}
        if config.uses_vector:
            rep_terms = [representation_loss(hidden[layer], vec, batch.rep_mask, config.rep_mode, config.rep_sign) for layer, vec in self.rep_vectors.items()]
            terms["rep"] = torch.stack([loss for loss, _ in rep_terms]).mean()
            terms["cos"] = torch.stack([cos for _, cos in rep_terms]).mean()
        if need_logits:
            assert logits is not None
            if config.token_target == "sft":
                terms["tok"] = sft_loss(logits, batch.input_ids, batch.completion_mask)
            else:
                assert self.letter_ids is not None and batch.correct is not None
                rows = torch.arange(logits.shape[0], device=logits.device)
                terms["tok"] = answer_loss(logits[rows, batch.last_prompt], self.letter_ids, batch.correct, config.token_target)
        if retain_index is not None and self.retain_batches:
            terms["retain"] = self._retain_loss(retain_index)
        terms["loss"] = config.w_tok * terms["tok"] + config.w_rep * terms["rep"] + config.w_retain * terms["retain"]
        return terms

    def _retain_loss(self, index: int) -> torch.Tensor:
        batch = self.retain_batches[index % len(self.retain_batches)]
        mode = self.config.retain
        capture = self.layers if mode in {"act", "both"} else []
        logits, hidden = self._forward(batch, capture, need_logits=mode in {"kl", "both"})
        real = batch.attention_mask.bool()
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

    @torch.no_grad()
    def evaluate(self, items: Sequence[TrainItem]) -> dict[str, float]:
        """Mean loss terms over ``items`` (no retain term), weighted by batch size."""
        sums = dict.fromkeys(LOSS_KEYS, 0.0)
        for start in range(0, len(items), self.config.batch_size):
            chunk = items[start : start + self.config.batch_size]
            terms = self.losses(self._tokenize(chunk), retain_index=None)
            for key in LOSS_KEYS:
                sums[key] += float(terms[key]) * len(chunk)
        return {key: value / len(items) for key, value in sums.items()}

    # ------------------------------------------------------------------ state
    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {name: param.detach().to("cpu", copy=True).contiguous() for name, param in self.named_params}

    def load_trainable(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, param in self.named_params:
                if name not in tensors:
                    raise ReptuneError(f"checkpoint lacks parameter {name}: it belongs to another run")
                param.copy_(tensors[name])

    def optimizer_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for index, param in enumerate(self.param_order):
            for key, value in self.optimizer.state.get(param, {}).items():
                out[f"{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
        return out

    def load_optimizer(self, tensors: dict[str, torch.Tensor]) -> None:
        device = self.handle.device
        for index, param in enumerate(self.param_order):
            state = {key.split(".", 1)[1]: value for key, value in tensors.items() if key.split(".", 1)[0] == str(index)}
            if state:
                self.optimizer.state[param] = {k: (v if k == "step" else v.to(device)) for k, v in state.items()}


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


def _save_checkpoint(tuner: Tuner, output: Path, loop: dict[str, Any], best: dict[str, torch.Tensor] | None) -> None:
    root = _checkpoint_dir(output)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".step-{loop['step']}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    save_file(tuner.trainable_state(), str(staging / "trainable.safetensors"))
    save_file(tuner.optimizer_tensors() or {"empty": torch.zeros(1)}, str(staging / "optimizer.safetensors"))
    if best is not None:
        save_file(best, str(staging / "best.safetensors"))
    state = {**loop, "config": tuner.config.to_json(), "fingerprint": run_fingerprint(tuner)}
    (staging / "state.json").write_text(json.dumps(state), encoding="utf-8")
    final = root / f"step-{loop['step']}"
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    write_json_atomic(root / "latest.json", {"step": loop["step"], "path": final.name})
    for old in root.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(tuner: Tuner, output: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None] | None:
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
    return loop, best


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
) -> TuneResult:
    """Fine-tune ``handle``'s model in place and write the run to ``output_dir``.

    Args:
        handle: the model to tune (its weights change; load a fresh one for the base).
        config: a :class:`TuneConfig` (e.g. ``TuneConfig.from_preset("honesty", layers="10-17")``).
        items: training items (see :func:`reptune.tuning.data.load_tune_items`).
        output_dir: gets the merged weights (``config.json`` + safetensors: loadable by
            ``load_model`` and ``AutoModelForCausalLM.from_pretrained``), ``adapter/`` with LoRA,
            ``tune_config.json``, ``metrics.json``, ``loss_curves.{json,png}``, ``README.md`` and
            ``checkpoints/``.
        resume: continue from the latest checkpoint in ``output_dir``.
        save_model: write the final weights (tests may skip it).

    Raises:
        ReptuneError: bad settings or data (before training); TrainingDiverged on a NaN loss.
    """
    output = Path(output_dir)
    if not resume and (_checkpoint_dir(output) / "latest.json").is_file():
        raise ReptuneError(f"{output} already holds a run: pass resume=True (--resume) or choose another directory")
    if output.exists() and not output.is_dir():
        raise ReptuneError(f"output {output} is a file, not a directory")
    tuner = Tuner(handle, config, items, vector, retain_texts=retain_texts, allow_model_mismatch=allow_model_mismatch)
    output.mkdir(parents=True, exist_ok=True)
    write_run_marker(output, "tune")
    _forget_finished(output)
    loop: dict[str, Any] = {"step": 0, "history": [], "val_history": [], "best_val": None, "best_step": None, "bad_evals": 0, "stopped": None}
    best: dict[str, torch.Tensor] | None = None
    if resume:
        restored = _load_checkpoint(tuner, output)
        if restored is not None:
            loop, best = restored
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    with progress_bar(f"tuning ({config.preset})", total=config.steps, enabled=progress) as advance:
        advance(loop["step"])
        while loop["step"] < config.steps and loop["stopped"] is None:
            step = loop["step"]
            terms = tuner.losses(tuner._tokenize(tuner.batches(step)), retain_index=step)
            if not torch.isfinite(terms["loss"]):
                latest = _checkpoint_dir(output) / "latest.json"
                kept = f"last good checkpoint kept in {_checkpoint_dir(output)}" if latest.is_file() else "no checkpoint was written yet"
                raise TrainingDiverged(f"loss became {float(terms['loss'].detach())} at step {step + 1}; {kept}; lower the learning rate")
            terms["loss"].backward()
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_([param for _, param in tuner.named_params], config.max_grad_norm)
            tuner.optimizer.step()
            tuner.optimizer.zero_grad(set_to_none=True)
            loop["history"].append({"step": step + 1, **{key: float(terms[key].detach()) for key in LOSS_KEYS}})
            loop["step"] = step + 1
            if tuner.val_items and (loop["step"] % config.eval_every == 0 or loop["step"] == config.steps):
                val = tuner.evaluate(tuner.val_items)
                loop["val_history"].append({"step": loop["step"], **val})
                if loop["best_val"] is None or val["loss"] < loop["best_val"] - 1e-6:
                    loop["best_val"], loop["best_step"], loop["bad_evals"] = val["loss"], loop["step"], 0
                    best = tuner.trainable_state()
                else:
                    loop["bad_evals"] += 1
                    if loop["bad_evals"] >= config.patience:
                        loop["stopped"] = f"early stop at step {loop['step']}: no validation improvement in {config.patience} evaluations"
            if loop["step"] % config.checkpoint_every == 0 or loop["step"] == config.steps or loop["stopped"]:
                _save_checkpoint(tuner, output, loop, best)
            shown = loop["history"][-1]
            advance(1, status=" ".join(f"{key} {shown[key]:.3f}" for key in LOSS_KEYS if key == "loss" or shown[key]))
    if best is not None:
        tuner.load_trainable(best)  # end on the best validation weights
    elapsed = time.perf_counter() - started
    metrics = {
        "steps_run": loop["step"],
        "stopped": loop["stopped"] or "completed",
        "best_step": loop["best_step"],
        "best_val_loss": loop["best_val"],
        "final_train": loop["history"][-1] if loop["history"] else None,
        "final_val": loop["val_history"][-1] if loop["val_history"] else None,
        "train_items": len(tuner.train_items),
        "val_items": len(tuner.val_items),
        "trainable_parameters": sum(param.numel() for _, param in tuner.named_params),
        "seconds": elapsed,
    }
    result = TuneResult(output, config, metrics, loop["history"], loop["val_history"])
    _write_outputs(tuner, result, vector, vector_path, data_origin, save_model)
    return result


def _forget_finished(output: Path) -> None:
    """Before (re)training into ``output``: drop what a killed write left and the old completion record.

    ``metrics.json`` is written last, so its presence means the weights beside it are complete;
    a run that starts again removes it until it has finished again.
    """
    remove_stale_temps(output)
    remove_stale_temps(_checkpoint_dir(output))
    (output / "metrics.json").unlink(missing_ok=True)


def _write_outputs(tuner: Tuner, result: TuneResult, vector: SteeringVector | None, vector_path: str | None, data_origin: str | None, save_model: bool) -> None:
    """Write the run's files; ``metrics.json`` (the completion record) goes last, after the weights."""
    from reptune._plots import plot_loss_curves

    output, handle = result.output_dir, tuner.handle
    write_json_atomic(output / "tune_config.json", {**tuner.config.to_json(), "vector": vector_path, "data": data_origin, "base_model": handle.model_id})
    write_json_atomic(output / "loss_curves.json", {"train": result.history, "val": result.val_history})
    if result.history:
        plot_loss_curves(result.history, result.val_history, output / "loss_curves.png", title=f"{tuner.config.preset} on {handle.model_id}")
    if save_model:
        staging = output / ".model.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        model = handle.model
        if tuner.peft_model is not None:
            tuner.peft_model.save_pretrained(str(output / ".adapter.tmp"))
            shutil.rmtree(output / "adapter", ignore_errors=True)
            os.replace(output / ".adapter.tmp", output / "adapter")
            model = tuner.peft_model.merge_and_unload()
            handle.model = model
        model.requires_grad_(False)
        model.save_pretrained(str(staging))
        handle.tokenizer.save_pretrained(str(staging))
        for path in staging.iterdir():
            os.replace(path, output / path.name)
        staging.rmdir()
    write_text_atomic(output / "README.md", _model_card(tuner, result, vector, vector_path, data_origin))
    write_json_atomic(output / "metrics.json", result.metrics)  # last: "completed" only once everything is there


def _model_card(tuner: Tuner, result: TuneResult, vector: SteeringVector | None, vector_path: str | None, data_origin: str | None) -> str:
    config, metrics = tuner.config, result.metrics
    final_val = metrics.get("final_val") or {}
    vector_line = "none"
    if vector is not None:
        vector_line = f"`{vector_path or 'in memory'}` ({vector.meta.method}, layers {list(tuner.rep_vectors)}, from {vector.meta.dataset or 'unknown data'})"
    lines = [
        f"# {tuner.handle.model_id}, tuned with reptune ({config.preset})",
        "",
        f"- Base model: `{tuner.handle.model_id}` (revision {tuner.handle.revision})",
        f"- Preset: `{config.preset}`; trained layers {tuner.layers}{' with LoRA (merged; adapter in adapter/)' if config.lora else ''}",
        f"- Vector: {vector_line}",
        f"- Data: `{data_origin or 'in memory'}` ({metrics['train_items']} train / {metrics['val_items']} validation items)",
        (
            f"- Loss: {config.w_tok} x token ({config.token_target}) + {config.w_rep} x representation ({config.rep_mode}, sign {config.rep_sign:+d}) "
            f"+ {config.w_retain} x retain ({config.retain})"
        ),
        f"- Steps: {metrics['steps_run']} ({metrics['stopped']}); best validation step {metrics['best_step']}",
        f"- Final validation: loss {final_val.get('loss', float('nan')):.4f}, cosine to v {final_val.get('cos', float('nan')):.3f}",
        "",
        "Load with `reptune.load_model(DIR)` or `transformers.AutoModelForCausalLM.from_pretrained(DIR)`.",
        "The full settings are in `tune_config.json`; curves in `loss_curves.png`.",
        "",
    ]
    return "\n".join(lines)
