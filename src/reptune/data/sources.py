"""Where datasets come from: a path, reptune's own shipped data, ``$REPTUNE_DATA_DIR``, or the hub.

Every dataset argument in reptune (``--data``) is resolved here, by :func:`resolve_data`, against
one table of standard sets (:data:`STANDARD_SETS`). Contrast and statement data
(:func:`read_source`) is resolved in this order:

1. an existing file: ``.jsonl`` (contrast pairs), ``.csv`` (``statement,label``), ``.json``
   (CAA A/B questions, or a list of pair objects);
2. a built-in name: ``honesty`` (reptune's own true/false statements, shipped in the package);
3. a standard set name, looked up in the folder named by ``$REPTUNE_DATA_DIR``:
   ``facts`` (Azaria & Mitchell true/false facts), ``gpt4-facts``, ``caa:<behaviour>``
   (CAA generate split), ``caa-test:<behaviour>`` (CAA A/B test split);
4. a Hugging Face dataset id (``org/name``), loaded with ``datasets`` when online.

The evaluation sets (TruthfulQA, MMLU, WikiText-2; read by :mod:`reptune.evaluation.data`) are
asked for by their loader: an existing file or folder; a standard name (``truthfulqa``, ``mmlu``,
``wikitext2``) looked up in ``$REPTUNE_DATA_DIR``, else the same set on the hub when it is
reachable; a hub id ``org/name``. A missing set raises :class:`DataError` saying where to get it.
"""

from __future__ import annotations

import functools
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


@dataclass(frozen=True)
class StandardSet:
    """A standard data set kept under ``$REPTUNE_DATA_DIR``.

    Attributes:
        path: where it lies under ``$REPTUNE_DATA_DIR`` (``{b}``: a behaviour name).
        names: the ``--data`` names that mean it when its evaluation loader asks for it (empty:
            it is named by its key, as :func:`read_source` reads it: ``facts``, ``caa:<behaviour>``).
        where: where to get it (said when it is missing).
        hub: the same set on the Hugging Face hub (used when the folder lacks it and the hub is reachable).
    """

    path: str
    names: tuple[str, ...] = ()
    where: str = ""
    hub: str = ""


_TQA = "https://github.com/sylinrl/TruthfulQA"
# the one table of standard sets: the contrast and statement sets (named by their key), then the
# evaluation sets (named by `names`; "truthfulqa" means either TruthfulQA file, its loader says which)
STANDARD_SETS: dict[str, StandardSet] = {
    "facts": StandardSet("honesty/facts_true_false.csv"),
    "gpt4-facts": StandardSet("honesty/gpt4_facts.csv"),
    "caa": StandardSet("caa/generate/{b}/generate_dataset.json"),
    "caa-test": StandardSet("caa/test/{b}/test_dataset_ab.json"),
    "truthfulqa-csv": StandardSet("truthfulqa/TruthfulQA.csv", ("truthfulqa", "tqa"), f"{_TQA} (TruthfulQA.csv)", "truthfulqa/truthful_qa"),
    "truthfulqa-mc": StandardSet("truthfulqa/mc_task.json", ("truthfulqa", "tqa"), f"{_TQA} (data/mc_task.json)", "truthfulqa/truthful_qa"),
    "mmlu": StandardSet("mmlu/test", ("mmlu",), "https://people.eecs.berkeley.edu/~hendrycks/data.tar (test/*.csv) or hub cais/mmlu", "cais/mmlu"),
    "wikitext2": StandardSet(
        "wikitext2/wiki.test.raw", ("wikitext2", "wikitext"), "https://huggingface.co/datasets/Salesforce/wikitext (wikitext-2-raw-v1, test)",
        "Salesforce/wikitext",
    ),
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

    Returns ``None`` when the name is not a standard set named by its key. Raises DataError when
    it is one but the file is not there, saying where to get it.
    """
    base, _, behaviour = name.partition(":")
    entry = STANDARD_SETS.get(base)
    if entry is None or entry.names or (("{b}" in entry.path) != bool(behaviour)):
        return None
    relative = entry.path.format(b=behaviour)
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


def resolve_data(spec: str | os.PathLike[str], standard: str | None = None) -> Path | str:
    """Where a dataset argument points: a local file or folder (a Path), or a hub id ``org/name`` (a str).

    Args:
        spec: the ``--data`` value.
        standard: ``None`` for contrast and statement data (the order in the module docstring: a
            file, a built-in name, a standard set by its key, a hub id); for an evaluation loader,
            its set's key in :data:`STANDARD_SETS` (``"mmlu"``): an existing file or folder, one of
            the set's names (its copy in ``$REPTUNE_DATA_DIR``, else the hub's when reachable), or
            a hub id.

    Raises:
        DataError: nothing found (a missing standard set: saying where to get it).
    """
    text = str(spec)
    if not text.strip():
        raise DataError("empty dataset argument")
    if standard is None:
        return _resolve_source(text)
    return _resolve_named(text.strip(), STANDARD_SETS[standard])


def _resolve_source(text: str) -> Path | str:
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if text in BUILTIN_SETS:
        return builtin_path(text)
    standard = standard_path(text)
    if standard is not None:
        return standard
    if path.suffix in {".jsonl", ".csv", ".json"} or os.sep in text.strip("/") and text.count("/") > 1:
        raise DataError(f"dataset file not found: {path}")
    if text.count("/") == 1:
        return text
    known = ", ".join([*BUILTIN_SETS, *(f"{k}:<behaviour>" if "{b}" in v.path else k for k, v in STANDARD_SETS.items() if not v.names)])
    raise DataError(f"unknown dataset {text!r}: not a file, nor one of {known}, nor a hub id org/name")


def _resolve_named(text: str, entry: StandardSet) -> Path | str:
    path = Path(text).expanduser()
    if path.exists():
        return path
    if text in entry.names:
        root = data_dir()
        found = root / entry.path if root is not None else None
        if found is not None and found.exists():
            return found
        if _hub_reachable():  # online: the same set from the hub (downloaded once into the HF cache)
            return entry.hub
        if found is None:
            raise DataError(
                f"data set {text!r} needs ${DATA_DIR_ENV} pointing at a folder holding {entry.path} (get it from {entry.where}), "
                "or pass a path; the hub is not reachable"
            )
        raise DataError(f"data set {text!r} not found: expected {found} (get it from {entry.where}; set ${DATA_DIR_ENV} or pass a path); the hub is not reachable")
    if text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.suffix:
        return text
    raise DataError(f"dataset not found: {text} (a path, {' or '.join(sorted(entry.names))} in ${DATA_DIR_ENV}, or a hub id org/name)")


@functools.lru_cache(maxsize=1)
def _hub_reachable() -> bool:
    """Checked once per process (a 3 s connection timeout at most)."""
    from reptune.models import _hub_reachable as reachable

    return reachable()


def hub_rows(name: str, config: str | None, split: str) -> list[dict[str, Any]]:
    """The rows of one split of a hub dataset (``datasets.load_dataset``); one-line DataError when it cannot load."""
    try:
        import datasets

        return list(datasets.load_dataset(name, config, split=split))
    except Exception as exc:  # noqa: BLE001  (datasets raises many types when offline or unknown)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"cannot load hub dataset {name!r} (offline or unknown?): {first[:200]}") from None


def read_source(spec: str | os.PathLike[str]) -> DataSource:
    """Resolve a dataset argument (see module docstring) and read its records."""
    found = resolve_data(spec)
    return _read_hub(found) if isinstance(found, str) else _read_file(found)


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
