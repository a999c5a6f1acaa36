"""Where datasets come from: a path, reptune's own shipped data, ``$REPTUNE_DATA_DIR``, or the hub.

Every dataset argument in reptune (``--data``) is resolved here, in this order:

1. an existing file: ``.jsonl`` (contrast pairs), ``.csv`` (``statement,label``), ``.json``
   (CAA A/B questions, or a list of pair objects);
2. a built-in name: ``honesty`` (reptune's own true/false statements, shipped in the package);
3. a standard set name, looked up in the folder named by ``$REPTUNE_DATA_DIR``:
   ``facts`` (Azaria & Mitchell true/false facts), ``gpt4-facts``, ``caa:<behaviour>``
   (CAA generate split), ``caa-test:<behaviour>`` (CAA A/B test split);
4. a Hugging Face dataset id (``org/name``), loaded with ``datasets`` when online.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from reptune.data.pairs import (
    ContrastPair,
    Statement,
    caa_pairs,
    honesty_pairs,
    load_pairs_jsonl,
    load_statements_csv,
    parse_pair,
)
from reptune.errors import DataError

DATA_DIR_ENV = "REPTUNE_DATA_DIR"

# name -> path inside $REPTUNE_DATA_DIR; "{b}" is a behaviour name
STANDARD_SETS: dict[str, str] = {
    "facts": "honesty/facts_true_false.csv",
    "gpt4-facts": "honesty/gpt4_facts.csv",
    "caa": "caa/generate/{b}/generate_dataset.json",
    "caa-test": "caa/test/{b}/test_dataset_ab.json",
}
BUILTIN_SETS = {"honesty": "honesty_statements.csv"}


@dataclass(frozen=True)
class DataSource:
    """A resolved dataset: its kind (``pairs``, ``statements``, ``caa``) and where it came from."""

    kind: str
    origin: str
    records: list[Any]


def builtin_path(name: str) -> Path:
    """Path of a data file shipped inside the reptune package."""
    return Path(str(resources.files("reptune.data") / "resources" / BUILTIN_SETS[name]))


def data_dir() -> Path | None:
    """The folder named by ``$REPTUNE_DATA_DIR``, if set."""
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser() if value else None


def standard_path(name: str) -> Path | None:
    """Resolve a standard set name (``facts``, ``caa:sycophancy``...) under ``$REPTUNE_DATA_DIR``.

    Returns ``None`` when the name is not a standard set. Raises DataError when it is one but
    the file is not there, saying where to get it.
    """
    base, _, behaviour = name.partition(":")
    if base not in STANDARD_SETS or (("{b}" in STANDARD_SETS[base]) != bool(behaviour)):
        return None
    relative = STANDARD_SETS[base].format(b=behaviour)
    root = data_dir()
    if root is None:
        raise DataError(
            f"standard set {name!r} needs ${DATA_DIR_ENV} pointing at a data folder holding {relative} "
            "(or pass the file's path)"
        )
    path = root / relative
    if not path.is_file():
        raise DataError(f"standard set {name!r} not found: expected {path} (set ${DATA_DIR_ENV} or pass a path)")
    return path


def read_source(spec: str | os.PathLike[str]) -> DataSource:
    """Resolve a dataset argument (see module docstring) and read its records."""
    text = str(spec)
    if not text.strip():
        raise DataError("empty dataset argument")
    path = Path(text).expanduser()
    if path.is_file():
        return _read_file(path)
    if text in BUILTIN_SETS:
        return _read_file(builtin_path(text))
    standard = standard_path(text)
    if standard is not None:
        return _read_file(standard)
    if path.suffix in {".jsonl", ".csv", ".json"} or os.sep in text.strip("/") and text.count("/") > 1:
        raise DataError(f"dataset file not found: {path}")
    if text.count("/") == 1:
        return _read_hub(text)
    known = ", ".join([*BUILTIN_SETS, *(f"{k}:<behaviour>" if "{b}" in v else k for k, v in STANDARD_SETS.items())])
    raise DataError(f"unknown dataset {text!r}: not a file, nor one of {known}, nor a hub id org/name")


def _read_file(path: Path) -> DataSource:
    if path.suffix == ".jsonl":
        return DataSource("pairs", str(path), load_pairs_jsonl(path))
    if path.suffix == ".csv":
        return DataSource("statements", str(path), load_statements_csv(path))
    if path.suffix == ".json":
        try:
            records = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        except RecursionError:
            raise DataError(f"{path}: JSON nested too deeply to read") from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None
        if not isinstance(records, list) or not records:
            raise DataError(f"{path}: expected a non-empty JSON list")
        first = records[0]
        if isinstance(first, dict) and "positive" in first:
            pairs = [parse_pair(record, f"{path}: record {i + 1}") for i, record in enumerate(records)]
            return DataSource("pairs", str(path), pairs)
        return DataSource("caa", str(path), records)
    raise DataError(f"{path}: unsupported file type {path.suffix!r} (use .jsonl, .csv or .json)")


def _read_hub(name: str) -> DataSource:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise DataError(f"dataset {name!r} looks like a hub id but the 'datasets' package is missing") from None
    try:
        table = datasets.load_dataset(name, split="train")
    except Exception as exc:  # noqa: BLE001 (datasets raises many types; shown as one line)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"cannot load hub dataset {name!r} (offline or unknown?): {first[:200]}") from None
    columns = set(table.column_names)
    rows = list(table)
    if {"positive", "negative"} <= columns:
        pairs = [parse_pair({k: v for k, v in row.items() if k in {"positive", "negative", "label", "meta"}}, f"{name}: row {i + 1}") for i, row in enumerate(rows)]
        return DataSource("pairs", name, pairs)
    if {"statement", "label"} <= columns:
        from reptune.data.pairs import _parse_label

        statements = [Statement(row["statement"], _parse_label(row["label"], f"{name}: row {i + 1}")) for i, row in enumerate(rows)]
        return DataSource("statements", name, statements)
    if {"question", "answer_matching_behavior", "answer_not_matching_behavior"} <= columns:
        return DataSource("caa", name, rows)
    raise DataError(f"hub dataset {name!r} has columns {sorted(columns)}: expected positive/negative, statement/label or CAA fields")


def load_contrast_pairs(
    spec: str | os.PathLike[str],
    tokenizer: Any | None = None,
    *,
    variant: str = "paired",
    limit: int | None = None,
    seed: int = 0,
) -> tuple[list[ContrastPair], str]:
    """Resolve ``spec`` and turn it into contrast pairs.

    Statement CSVs become honesty persona pairs (``variant`` paired/unpaired), CAA question
    sets become A/B answer pairs, JSONL pairs are used as they are.

    Args:
        spec: path, built-in name, standard set name or hub id.
        tokenizer: the model's tokenizer, for chat templates.
        limit: keep at most this many pairs (the first ones; files are already shuffled).

    Returns:
        ``(pairs, origin)`` where ``origin`` says where the data came from.
    """
    source = read_source(spec)
    if source.kind == "pairs":
        pairs = source.records
    elif source.kind == "statements":
        pairs = honesty_pairs(source.records, tokenizer, variant=variant, seed=seed)
    else:
        pairs = caa_pairs(source.records, tokenizer, source=source.origin)
    if limit is not None:
        if limit < 1:
            raise DataError(f"limit must be at least 1, got {limit}")
        pairs = pairs[:limit]
    if not pairs:
        raise DataError(f"{source.origin}: no contrast pairs")
    return pairs, source.origin
