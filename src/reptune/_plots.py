"""Low-level figure helpers shared by every layer (written atomically as PNG, Agg backend)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from reptune._io import atomic_path


def save_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Lay out, write atomically as PNG, and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def plot_loss_curves(history: list[dict[str, float]], val_history: list[dict[str, float]], path: str | os.PathLike[str], title: str = "") -> Path:
    """Training loss terms per step (and validation loss), written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_cos) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [row["step"] for row in history]
    for key, style in (("loss", "-"), ("tok", "--"), ("rep", ":"), ("retain", "-.")):
        values = [row[key] for row in history]
        if any(values):
            ax_loss.plot(steps, values, style, label=f"train {key}")
    if val_history:
        ax_loss.plot([row["step"] for row in val_history], [row["loss"] for row in val_history], "o-", label="validation loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=8)
    ax_cos.plot(steps, [row["cos"] for row in history], label="train")
    if val_history:
        ax_cos.plot([row["step"] for row in val_history], [row["cos"] for row in val_history], "o-", label="validation")
    ax_cos.set_xlabel("step")
    ax_cos.set_ylabel("cosine to v at the loss sites")
    ax_cos.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)
