"""A tuned model stored as the blocks training changed, on top of a base model named in the file.

Representation tuning changes a few decoder blocks; the rest of the model (embeddings, the other
blocks, the LM head) stays the base model's. ``tuned_blocks.safetensors`` holds the tensors of
the trained blocks only (about 14 MB a block for SmolLM2-135M, against 538 MB for the whole
model) and, in its safetensors metadata, how to load the base: ``{"model", "revision",
"layers_path", "layers"}``. :func:`reptune.models.load_model` loads such a folder like any model
folder: the base first, then these tensors over it.

The experiment pipeline stores its tuned models this way (a demo run trains 13 of them);
``reptune tune --weights blocks`` does too. A folder meant for serving or for
``AutoModelForCausalLM.from_pretrained`` needs the whole model (``--weights full``, the default).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reptune._io import atomic_path
from reptune.errors import ModelError

TUNED_BLOCKS_FILE = "tuned_blocks.safetensors"
WEIGHT_FORMATS = ("full", "blocks")
"""How a tuning run stores its weights: the whole model, or the trained blocks in :data:`TUNED_BLOCKS_FILE`."""
_METADATA_KEY = "reptune_tuned_blocks"


def block_tensors(state: Mapping[str, torch.Tensor], layers_path: str, layers: Iterable[int]) -> dict[str, torch.Tensor]:
    """The entries of a state dict that belong to decoder blocks ``layers`` (``{layers_path}.{i}.*``)."""
    prefixes = tuple(f"{layers_path}.{layer}." for layer in layers)
    return {name: tensor for name, tensor in state.items() if name.startswith(prefixes)}


def save_tuned_blocks(folder: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], base: dict[str, Any]) -> Path:
    """Write ``folder/tuned_blocks.safetensors`` atomically.

    Args:
        tensors: ``{parameter name: tensor}`` in the base model's naming (from :func:`block_tensors`).
        base: ``{"model": what load_model takes, "revision": str | None, "layers_path": str,
            "layers": [int, ...]}``, stored in the file's metadata.
    """
    from safetensors.torch import save_file

    if not tensors:
        raise ModelError("no tensors to save: the trained blocks matched no parameter")
    path = Path(folder) / TUNED_BLOCKS_FILE
    contiguous = {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}
    with atomic_path(path) as staging:
        save_file(contiguous, str(staging), metadata={_METADATA_KEY: json.dumps(base)})
    return path


def tuned_blocks_base(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The base-model record of a tuned-blocks folder, or ``None`` when ``folder`` is not one.

    A folder is one when it holds ``tuned_blocks.safetensors`` and no ``config.json`` (a full model
    folder always loads as itself).
    """
    path = Path(folder).expanduser()
    if not path.is_dir() or (path / "config.json").is_file() or not (path / TUNED_BLOCKS_FILE).is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path / TUNED_BLOCKS_FILE), framework="pt") as handle:
            record = json.loads((handle.metadata() or {})[_METADATA_KEY])
    except (KeyError, ValueError, OSError) as exc:
        raise ModelError(f"{path / TUNED_BLOCKS_FILE} is not a reptune tuned-blocks file ({type(exc).__name__}: {exc})") from None
    if not isinstance(record, dict) or "model" not in record:
        raise ModelError(f"{path / TUNED_BLOCKS_FILE} names no base model")
    return record


def apply_tuned_blocks(model: nn.Module, folder: str | os.PathLike[str]) -> list[str]:
    """Copy the tensors of ``folder``'s tuned-blocks file into ``model`` (in place); returns their names.

    Raises:
        ModelError: a tensor the model does not have, or one of another shape (the file was made
            for another base model).
    """
    from safetensors.torch import load_file

    tensors = load_file(str(Path(folder) / TUNED_BLOCKS_FILE))
    state = model.state_dict()
    wrong = [name for name, tensor in tensors.items() if name not in state or state[name].shape != tensor.shape]
    if wrong:
        raise ModelError(f"{folder}: the base model has no tensor {wrong[0]!r} of that shape ({len(wrong)} such); was the base model changed?")
    with torch.no_grad():
        for name, tensor in tensors.items():
            state[name].copy_(tensor.to(state[name].dtype))
    return sorted(tensors)
