"""The model card of a tuning run: the ``README.md`` that ``tune()`` writes beside the weights.

:func:`reptune.tuning.tune` calls it through :mod:`reptune._render` (tuning sits below reporting
on the import ladder and cannot import it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reptune.tuning.config import TuneConfig
    from reptune.vectors import SteeringVector


def model_card(
    config: TuneConfig,
    metrics: dict[str, Any],
    *,
    model_id: str,
    revision: str | None,
    layers: Sequence[int],
    rep_layers: Sequence[int],
    vector: SteeringVector | None,
    vector_path: str | None,
    data_origin: str | None,
) -> str:
    """The ``README.md`` text of a finished run.

    Args:
        config: the run's :class:`~reptune.tuning.TuneConfig`.
        metrics: the run's ``metrics.json`` (``train_items``, ``val_items``, ``steps_run``,
            ``stopped``, ``best_step``, ``final_val``).
        model_id, revision: the base model.
        layers: the trained blocks; rep_layers: the layers the representation loss reads.
        vector, vector_path: the tuned-in vector and where it came from (None: token loss only).
        data_origin: where the training items came from.
    """
    final_val = metrics.get("final_val") or {}
    vector_line = "none"
    if vector is not None:
        vector_line = f"`{vector_path or 'in memory'}` ({vector.meta.method}, layers {list(rep_layers)}, from {vector.meta.dataset or 'unknown data'})"
    lines = [
        f"# {model_id}, tuned with reptune ({config.preset})",
        "",
        f"- Base model: `{model_id}` (revision {revision})",
        f"- Preset: `{config.preset}`; trained layers {layers}{' with LoRA (merged; adapter in adapter/)' if config.lora else ''}",
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
