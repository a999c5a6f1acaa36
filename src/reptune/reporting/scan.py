"""The layer scan beside a vector file: ``VEC.scan.json``, ``VEC.scan.md`` and ``VEC.scan.png``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from reptune._io import write_json_atomic, write_text_atomic
from reptune.directions import LayerScan
from reptune.reporting.document import fmt
from reptune.reporting.figures import plot_scan

# the per-layer columns of the scan table, here and in the experiment report's "Layer scan"
SCAN_COLUMNS = ("layer", "pair_acc", "probe_acc", "label_acc", "gap", "effect", "norm", "rel_norm")


def scan_markdown(scan: LayerScan, rich: bool = False) -> Any:
    """The scan as a Markdown table (or a rich Table when ``rich``), best layers marked ``*``."""
    best = set(scan.best_layers(min(3, len(scan.scores))))
    rows = [[fmt(getattr(score, column)) + ("*" if column == "layer" and score.layer in best else "") for column in SCAN_COLUMNS] for score in scan.scores]
    if rich:
        from rich.table import Table

        table = Table(title=f"layer scan ({scan.method}; held-out {scan.num_test} of {scan.num_train + scan.num_test} pairs; * = best)")
        for column in SCAN_COLUMNS:
            table.add_column(column, justify="right")
        for row in rows:
            table.add_row(*row)
        return table
    lines = ["| " + " | ".join(SCAN_COLUMNS) + " |", "|" + "---:|" * len(SCAN_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines.append("")
    lines.append(f"Best layers (`*`): {sorted(best)}. Rule: {scan.rule}. Held-out pairs: {scan.num_test}.")
    return "\n".join(lines) + "\n"


def write_scan(scan: LayerScan, vector_path: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``VEC.scan.json``, ``VEC.scan.md`` and ``VEC.scan.png`` beside a vector file."""
    base = Path(vector_path).with_suffix("")
    paths = {
        "json": base.with_name(base.name + ".scan.json"),
        "md": base.with_name(base.name + ".scan.md"),
        "png": base.with_name(base.name + ".scan.png"),
    }
    write_json_atomic(paths["json"], scan.to_json())
    write_text_atomic(paths["md"], scan_markdown(scan))
    plot_scan(scan, paths["png"])
    return paths
