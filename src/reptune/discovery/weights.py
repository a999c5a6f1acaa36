"""From a found vector to weights: tune it in (``pos``) or fine-tune on its generations (SFT).

It is open whether fine-tuning on the greedy generations of a discovered vector works as well
as tuning the vector itself into the weights. :func:`compare_tune_in` runs both on fresh copies
of a model and evaluates each **without hooks** on the same prompts (:func:`behaviour`):

* ``cos``: mean cosine between the layer-``L`` activations (every prompt token) and the vector;
* ``agreement``: mean share of the first ``n`` greedy tokens that equal the steered model's
  (the vector's behaviour, reproduced without steering), and ``exact``: the share of prompts
  whose first ``n`` tokens all match.

Variants: ``pos`` (:meth:`TuneConfig.from_preset` ``"pos"``: representation loss toward ``+v`` at
the vector's layer over all prompt tokens, no token loss since the prompts are no A/B questions)
and ``sft`` (next-token cross-entropy on the steered greedy completions, no representation
loss). Both train blocks ``layers`` (default: the vector's layer alone) with the same steps and
learning rate. :func:`generation_items` gives the SFT items; :func:`write_generation_pairs`
writes them as a pairs JSONL for ``reptune tune --data FILE --token-target sft``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from reptune._io import write_text_atomic
from reptune.activations import read_activations
from reptune.discovery.common import DiscoveryError
from reptune.models import ModelHandle
from reptune.steering import Steering, format_prompts, generate
from reptune.tuning import TrainItem, TuneConfig, tune
from reptune.vectors import SteeringVector


def _layer(vector: SteeringVector, layer: int | None) -> int:
    layers = sorted(vector.directions)
    if layer is None:
        if len(layers) != 1:
            raise DiscoveryError(f"the vector has layers {layers}: say which one (layer=...)")
        return layers[0]
    if layer not in vector.directions:
        raise DiscoveryError(f"the vector has no layer {layer} (it has {layers})")
    return layer


def greedy_ids(handle: ModelHandle, prompts: Sequence[str], *, vector: SteeringVector | None = None, layer: int | None = None,
               max_new_tokens: int = 16, chat: bool = True) -> list[list[int]]:
    """Greedy completion token ids, steered with ``vector`` at ``layer`` (multiplier 1) when given."""
    if vector is None:
        return generate(handle, list(prompts), max_new_tokens=max_new_tokens, chat=chat, return_token_ids=True)
    with Steering(handle, {layer: vector[layer]}) as steering:
        return generate(handle, list(prompts), max_new_tokens=max_new_tokens, chat=chat, steering=steering, return_token_ids=True)


def generation_items(handle: ModelHandle, vector: SteeringVector, prompts: Sequence[str], *, layer: int | None = None,
                     max_new_tokens: int = 16, chat: bool = True) -> list[TrainItem]:
    """SFT items: each formatted prompt with the vector's steered greedy completion."""
    if not prompts:
        raise DiscoveryError("no prompts to generate from")
    layer = _layer(vector, layer)
    texts = format_prompts(handle, list(prompts), chat=chat)
    ids = greedy_ids(handle, prompts, vector=vector, layer=layer, max_new_tokens=max_new_tokens, chat=chat)
    completions = [handle.tokenizer.decode(row, skip_special_tokens=True) for row in ids]
    return [TrainItem(prompt=text, completion=completion, label=index % 2) for index, (text, completion) in enumerate(zip(texts, completions))]


def write_generation_pairs(items: Sequence[TrainItem], path: str | os.PathLike[str]) -> Path:
    """The items as contrast-pair JSONL (positive = prompt + steered completion), atomically."""
    lines = [json.dumps({"positive": {"prompt": item.prompt, "completion": item.completion}, "negative": item.prompt, "label": item.label})
             for item in items]
    write_text_atomic(path, "\n".join(lines) + "\n")
    return Path(path)


def behaviour(handle: ModelHandle, vector: SteeringVector, prompts: Sequence[str], reference: Sequence[Sequence[int]], *,
              layer: int | None = None, max_new_tokens: int = 16, chat: bool = True) -> dict[str, float]:
    """Unhooked ``cos`` at the vector's layer and greedy ``agreement`` / ``exact`` with ``reference`` ids."""
    layer = _layer(vector, layer)
    texts = format_prompts(handle, list(prompts), chat=chat)
    acts = read_activations(handle, texts, str(layer), "all", progress=False)[layer].double()
    cos = float(torch.nn.functional.cosine_similarity(acts, vector[layer].double().view(1, -1)).mean())
    ids = greedy_ids(handle, prompts, max_new_tokens=max_new_tokens, chat=chat)
    shares, exact = [], 0
    for got, want in zip(ids, reference):
        n = max(1, min(max_new_tokens, len(want)))
        same = sum(a == b for a, b in zip(got[:n], want[:n]))
        shares.append(same / n)
        exact += same == n
    return {"cos": cos, "agreement": sum(shares) / len(shares), "exact": exact / len(shares)}


def compare_tune_in(
    load: Callable[[], ModelHandle],
    vector: SteeringVector,
    prompts: Sequence[str],
    output_dir: str | os.PathLike[str],
    *,
    layer: int | None = None,
    layers: str | None = None,
    steps: int = 50,
    lr: float = 3e-3,
    max_new_tokens: int = 16,
    chat: bool = True,
    seed: int = 0,
    **overrides: Any,
) -> dict[str, Any]:
    """Tune the vector in (``pos``) and fine-tune on its generations (``sft``); evaluate both unhooked.

    Args:
        load: returns a fresh copy of the base model (called three times: base, pos, sft).
        vector: a discovered vector (one layer, or pass ``layer``).
        prompts: user prompts (training and evaluation; the comparison is on the same prompts).
        output_dir: gets ``pos/`` and ``sft/`` runs (weights not saved) and ``generations.jsonl``.
        layers: trained blocks (default: the vector's layer).
        overrides: further :class:`TuneConfig` fields for both variants.

    Returns:
        ``{"base": {...}, "pos": {...}, "sft": {...}, "settings": {...}}`` with :func:`behaviour` metrics.
    """
    if not prompts:
        raise DiscoveryError("no prompts to tune on")
    base = load()
    layer = _layer(vector, layer)
    reference = greedy_ids(base, prompts, vector=vector, layer=layer, max_new_tokens=max_new_tokens, chat=chat)
    items = generation_items(base, vector, prompts, layer=layer, max_new_tokens=max_new_tokens, chat=chat)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    write_generation_pairs(items, output / "generations.jsonl")
    measure = {"prompts": prompts, "reference": reference, "layer": layer, "max_new_tokens": max_new_tokens, "chat": chat}
    report: dict[str, Any] = {"base": behaviour(base, vector, **measure)}
    del base
    common = {"layers": layers or str(layer), "steps": steps, "lr": lr, "seed": seed, "autocast": None, "val_fraction": 0.0, **overrides}
    configs = {
        "pos": TuneConfig.from_preset("pos", rep_positions="all", token_target="none", w_tok=0.0, **common),
        "sft": TuneConfig.from_preset("truth", token_target="sft", **common),
    }
    for name, config in configs.items():
        handle = load()
        result = tune(handle, config, items, output / name, vector=vector, progress=False, save_model=False)
        report[name] = {**behaviour(handle, vector, **measure), "final_loss": result.history[-1]["loss"] if result.history else None}
    report["settings"] = {"steps": steps, "lr": lr, "layers": common["layers"], "layer": layer, "prompts": len(prompts), "seed": seed}
    return report
