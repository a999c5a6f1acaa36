"""Per-token cosine between the residual stream and a vector, layer by layer (the paper's Figure 2C).

:func:`token_projections` reads layer L (the output of decoder block L, see :mod:`reptune.sites`)
at every real token of each prompt, in one early-exit forward pass per batch (the blocks after
the deepest requested layer, the final norm and the LM head never run), and returns the cosine
of each token's residual vector with the vector's direction at L, in fp32.

**Which direction is used at layer L** (:func:`~reptune.evaluation.tasks.base.direction_at`): the
vector's own layer L when it has one; otherwise the direction of the vector's layer *nearest* to
L (ties go to the lower layer). A one-layer vector (e.g. from ``reptune discover``) is therefore
compared with every layer; the layer actually used is returned as ``vector_layers``.

The ``projection`` task (``reptune eval --vector V --tasks projection``) runs it on prompts from a
file (``data=prompts.txt``/``.jsonl``/``.json``, as for ``reptune discover``) or, by default, on
reptune's shipped honesty statements put as questions (``template``); its metric is the mean
cosine at the last prompt token (averaged over the layers), and ``reptune eval -o R.json``
writes the heatmaps to ``R.projection.png``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from reptune._io import sha256_json
from reptune.data.pairs import Example
from reptune.errors import DataError, ReptuneError, VectorError
from reptune.evaluation.registry import RunContext, Task
from reptune.evaluation.statistics import mean_metric
from reptune.evaluation.tasks.base import direction_at, vector_directions
from reptune.models import ModelHandle
from reptune.sites import parse_layers

STATEMENT_TEMPLATE = "Is the following statement true or false? {statement}"


def _token_strings(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each token as readable text (its own decoding; a SentencePiece word start keeps its space)."""
    raw = tokenizer.convert_ids_to_tokens(list(ids))
    out = []
    for token_id, piece in zip(ids, raw):
        text = tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if isinstance(piece, str) and piece.startswith("\u2581") and not text.startswith(" "):
            text = " " + text
        out.append(text if text else str(piece))
    return out


@torch.inference_mode()
def token_projections(
    handle: ModelHandle,
    vector: Any,
    prompts: Sequence[str],
    layers: Sequence[int] | str | None = None,
    *,
    chat: bool = True,
    batch_size: int = 8,
    allow_model_mismatch: bool = True,
    advance: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Cosine of every real token's residual stream with the vector's direction, per layer.

    Args:
        vector: a :class:`~reptune.vectors.SteeringVector` or ``{layer: tensor [hidden]}``.
        prompts: user messages (chat template applied when ``chat`` and the tokenizer has one)
            or raw texts (``chat=False``).
        layers: a layer spec (``"10-17"``, ``[3, 5]``); ``None``/``"all"``: every layer.
        allow_model_mismatch: accept a vector made for another model id (a tuned copy; hidden
            size and layer count are always checked).

    Returns:
        One dict per prompt: ``{"prompt", "tokens": [str] (n_tokens), "layers": [int],
        "vector_layers": [int] (the vector layer used at each layer, see :func:`direction_at`),
        "cosine": [[float] * n_tokens] * n_layers}``. Tokens include the chat template's and
        the BOS token, never padding.
    """
    from reptune.activations import capture_layers, run_until, tokenize_examples
    from reptune.steering import format_prompts

    if not prompts:
        raise DataError("no prompts for the projection")
    if batch_size < 1:
        raise ReptuneError(f"batch_size must be at least 1, got {batch_size}")
    directions = vector_directions(vector, handle, allow_model_mismatch=allow_model_mismatch)
    layer_list = parse_layers(layers, handle.num_layers) if not isinstance(layers, str) or layers.strip() else list(range(handle.num_layers))
    sources, units = [], []
    for layer in layer_list:
        source, direction = direction_at(directions, layer)
        norm = direction.norm()
        if not norm > 0:
            raise VectorError(f"vector layer {source} is zero: no direction to project on")
        sources.append(source)
        units.append(direction / norm)
    unit_matrix = torch.stack(units)  # [n_layers, hidden]
    texts = format_prompts(handle, prompts, chat=chat)
    results: list[dict[str, Any]] = []
    with handle.autocast(), capture_layers(handle, layer_list, stop_after=max(layer_list)) as captured:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            batch = tokenize_examples(handle.tokenizer, [Example(text) for text in chunk], padding_side="left", device=handle.device)
            run_until(handle, batch)
            stacked = torch.stack([captured[layer].float() for layer in layer_list], dim=1).cpu()  # [b, n_layers, seq, hidden]
            captured.clear()
            real = batch.attention_mask.bool().cpu()
            for row, prompt in enumerate(prompts[start : start + batch_size]):
                hidden = stacked[row][:, real[row]]  # [n_layers, n_tokens, hidden]
                cosine = torch.nn.functional.cosine_similarity(hidden, unit_matrix.unsqueeze(1), dim=-1, eps=1e-12)
                ids = batch.input_ids[row][real[row].to(batch.input_ids.device)].tolist()
                results.append({
                    "prompt": prompt,
                    "tokens": _token_strings(handle.tokenizer, ids),
                    "layers": list(layer_list),
                    "vector_layers": sources,
                    "cosine": cosine.tolist(),
                })
            if advance is not None:
                advance(len(chunk))
    return results


def load_projection_prompts(spec: str, template: str = STATEMENT_TEMPLATE) -> tuple[list[str], str, str]:
    """Prompts for the projection task: ``(prompts, origin, hash)``.

    ``spec`` is a prompts file (``.txt`` one per line, ``.jsonl``/``.json`` strings or objects
    with ``prompt``) or a statements source (``honesty``, ``facts``, a statement CSV), whose
    statements become questions through ``template`` (``{statement}`` is replaced).
    """
    path = Path(spec).expanduser()
    if path.suffix in {".txt", ".jsonl", ".json"} and path.is_file():
        from reptune.discovery.common import load_prompts

        prompts = load_prompts(path)
        return prompts, str(path), sha256_json(prompts)
    if path.suffix in {".txt", ".jsonl", ".json"}:
        raise DataError(f"prompts file not found: {path}")
    from reptune.data.sources import read_source

    source = read_source(spec)
    if source.kind != "statements":
        raise DataError(f"projection needs a prompts file (.txt/.jsonl/.json) or true/false statements, but {source.origin} holds {source.kind}")
    if "{statement}" not in template:
        raise ReptuneError("projection.template must contain {statement}")
    prompts = [template.replace("{statement}", record.text) for record in source.records]
    return prompts, source.origin, sha256_json(prompts)


class Projection(Task):
    """Per-token cosine to the ``--vector`` at each layer, for a few prompts (heatmaps)."""

    name = "projection"
    description = "per-token cosine of the residual stream with the --vector at each layer (heatmap; metric: last-token cosine)"
    primary = "last_token_cosine"
    binary_key = None
    continuous_key = "last_token_cosine"
    uses_vector = True
    defaults: ClassVar[dict[str, Any]] = {"data": "honesty", "template": STATEMENT_TEMPLATE, "layers": "", "chat": True, "max_prompts": 16}
    chunk_items = 8

    def load_items(self, handle: ModelHandle, limit: int | None) -> tuple[list[dict[str, Any]], str, str]:
        prompts, origin, digest = load_projection_prompts(self.options["data"], self.options["template"])
        cap = int(self.options["max_prompts"])
        if cap > 0:
            prompts = prompts[:cap]
        parse_layers(self.options["layers"] or None, handle.num_layers)  # a bad layer spec fails before scoring
        return [{"id": str(index), "prompt": prompt} for index, prompt in enumerate(prompts)], origin, digest

    def score(self, handle: ModelHandle, items: Sequence[dict[str, Any]], *, batch_size: int, context: RunContext, advance: Callable[[int], None]) -> list[dict[str, Any]]:
        if context.vector is None:
            raise ReptuneError("task projection needs a vector (--vector)")
        rows = token_projections(
            handle, context.vector, [item["prompt"] for item in items], self.options["layers"] or None,
            chat=bool(self.options["chat"]), batch_size=batch_size, allow_model_mismatch=True, advance=advance,
        )
        records = []
        for row in rows:
            cosine = torch.tensor(row["cosine"], dtype=torch.float64)  # [n_layers, n_tokens]
            records.append({
                **row,
                "cosine": [[round(value, 6) for value in layer] for layer in row["cosine"]],
                "last_token_cosine": float(cosine[:, -1].mean()),
                "mean_cosine": float(cosine.mean()),
                "last_token_by_layer": [float(value) for value in cosine[:, -1]],
            })
        return records

    def summarize(self, records: Sequence[dict[str, Any]], seed: int) -> dict[str, dict[str, Any]]:
        metrics = {
            "last_token_cosine": mean_metric([r["last_token_cosine"] for r in records], seed=seed),
            "mean_cosine": mean_metric([r["mean_cosine"] for r in records], seed=seed),
        }
        for index, layer in enumerate(records[0]["layers"]):
            metrics[f"last_token_cosine/L{layer}"] = mean_metric([r["last_token_by_layer"][index] for r in records], seed=seed)
        return metrics

