"""Evaluation data sets: TruthfulQA, MMLU, WikiText-2 (statements and CAA come from reptune.data).

Each ``--data`` value is resolved in this order: an existing path; a standard name looked up
in ``$REPTUNE_DATA_DIR`` (``truthfulqa``, ``mmlu``, ``wikitext2``); a Hugging Face dataset id
(``org/name``) when online. A missing set raises :class:`DataError` saying where to get it.
"""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path
from typing import Any

from reptune._io import sha256_file, sha256_json
from reptune.data.sources import DATA_DIR_ENV, data_dir
from reptune.errors import DataError

# standard name -> (path under $REPTUNE_DATA_DIR, where to get it)
STANDARD = {
    "truthfulqa-csv": ("truthfulqa/TruthfulQA.csv", "https://github.com/sylinrl/TruthfulQA (TruthfulQA.csv)"),
    "truthfulqa-mc": ("truthfulqa/mc_task.json", "https://github.com/sylinrl/TruthfulQA (data/mc_task.json)"),
    "mmlu": ("mmlu/test", "https://people.eecs.berkeley.edu/~hendrycks/data.tar (test/*.csv) or hub cais/mmlu"),
    "wikitext2": ("wikitext2/wiki.test.raw", "https://huggingface.co/datasets/Salesforce/wikitext (wikitext-2-raw-v1, test)"),
}
# the same sets on the Hugging Face hub, used for a standard name when $REPTUNE_DATA_DIR lacks it
HUB = {"truthfulqa-csv": "truthfulqa/truthful_qa", "truthfulqa-mc": "truthfulqa/truthful_qa", "mmlu": "cais/mmlu", "wikitext2": "Salesforce/wikitext"}
NAMES = {
    "truthfulqa-csv": {"truthfulqa", "tqa"},
    "truthfulqa-mc": {"truthfulqa", "tqa"},
    "mmlu": {"mmlu"},
    "wikitext2": {"wikitext2", "wikitext"},
}


def resolve(spec: str, standard: str) -> Path | str:
    """A path for ``spec`` (file or folder), or the hub id string when it looks like one.

    Args:
        standard: the key in :data:`STANDARD` used when ``spec`` is a standard name.
    """
    text = str(spec).strip()
    if not text:
        raise DataError("empty dataset argument")
    path = Path(text).expanduser()
    if path.exists():
        return path
    relative, where = STANDARD[standard]
    if text in NAMES[standard]:
        root = data_dir()
        found = root / relative if root is not None else None
        if found is not None and found.exists():
            return found
        if _hub_reachable():  # online: the same set from the hub (downloaded once into the HF cache)
            return HUB[standard]
        if found is None:
            raise DataError(f"data set {text!r} needs ${DATA_DIR_ENV} pointing at a folder holding {relative} (get it from {where}), or pass a path; the hub is not reachable")
        raise DataError(f"data set {text!r} not found: expected {found} (get it from {where}; set ${DATA_DIR_ENV} or pass a path); the hub is not reachable")
    if text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.suffix:
        return text
    raise DataError(f"dataset not found: {text} (a path, {' or '.join(sorted(NAMES[standard]))} in ${DATA_DIR_ENV}, or a hub id org/name)")


@functools.lru_cache(maxsize=1)
def _hub_reachable() -> bool:
    """Checked once per process (a 3 s connection timeout at most)."""
    from reptune.models import _hub_reachable as reachable

    return reachable()


def _hub(name: str, config: str | None, split: str) -> list[dict[str, Any]]:
    try:
        import datasets

        return list(datasets.load_dataset(name, config, split=split))
    except Exception as exc:  # noqa: BLE001  (datasets raises many types when offline or unknown)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"cannot load hub dataset {name!r} (offline or unknown?): {first[:200]}") from None


def load_truthfulqa_ab(spec: str) -> tuple[list[dict[str, Any]], str, str]:
    """TruthfulQA questions with the best answer and the first incorrect answer."""
    source = resolve(spec, "truthfulqa-csv")
    if isinstance(source, str):
        rows = _hub(source, "generation", "validation")
        items = [{"question": r["question"], "best": r["best_answer"], "incorrect": r["incorrect_answers"][0]} for r in rows if r["incorrect_answers"]]
        return items, source, sha256_json(items)
    if source.is_dir():
        source = source / "TruthfulQA.csv"
    if not source.is_file():
        raise DataError(f"TruthfulQA CSV not found: {source}")
    items = []
    with open(source, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            needed = {"Question", "Best Answer", "Incorrect Answers"}
            if not needed <= set(reader.fieldnames or []):
                raise DataError(f"{source}: expected TruthfulQA columns {sorted(needed)}, got {reader.fieldnames}")
            for row in reader:
                incorrect = [part.strip() for part in (row["Incorrect Answers"] or "").split(";") if part.strip()]
                if (row["Question"] or "").strip() and (row["Best Answer"] or "").strip() and incorrect:
                    items.append({"question": row["Question"].strip(), "best": row["Best Answer"].strip(), "incorrect": incorrect[0]})
        except csv.Error as exc:
            raise DataError(f"{source}:{reader.line_num}: not a readable CSV row ({exc})") from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{source}: not UTF-8 text ({exc.reason})") from None
    if not items:
        raise DataError(f"{source}: no TruthfulQA questions")
    return items, str(source), sha256_file(source)


def load_truthfulqa_mc(spec: str) -> tuple[list[dict[str, Any]], str, str]:
    """TruthfulQA MC questions: ``{"question", "mc1": (choices, labels), "mc2": (choices, labels)}``."""
    source = resolve(spec, "truthfulqa-mc")
    if isinstance(source, str):
        rows = _hub(source, "multiple_choice", "validation")
        items = [
            {"question": r["question"], "mc1": (r["mc1_targets"]["choices"], r["mc1_targets"]["labels"]),
             "mc2": (r["mc2_targets"]["choices"], r["mc2_targets"]["labels"])}
            for r in rows
        ]
        return items, source, sha256_json(items)
    if source.is_dir():
        source = source / "mc_task.json"
    try:
        records = json.loads(Path(source).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read TruthfulQA MC file {source}: {exc}") from None
    except RecursionError:
        raise DataError(f"{source}: JSON nested too deeply to read") from None
    items = []
    for index, record in enumerate(records if isinstance(records, list) else []):
        try:
            items.append({
                "question": record["question"],
                "mc1": (list(record["mc1_targets"]), [int(v) for v in record["mc1_targets"].values()]),
                "mc2": (list(record["mc2_targets"]), [int(v) for v in record["mc2_targets"].values()]),
            })
        except (KeyError, TypeError, AttributeError, ValueError):
            raise DataError(f"{source}: record {index + 1} is not a TruthfulQA MC record (question, mc1_targets, mc2_targets)") from None
    if not items:
        raise DataError(f"{source}: no TruthfulQA MC questions")
    return items, str(source), sha256_file(source)


def load_mmlu(spec: str, subjects: list[str] | None) -> tuple[dict[str, list[dict[str, Any]]], str, str]:
    """MMLU test questions by subject: ``{subject: [{"question", "choices", "answer"}]}``."""
    source = resolve(spec, "mmlu")
    by_subject: dict[str, list[dict[str, Any]]] = {}
    if isinstance(source, str):
        for row in _hub(source, "all", "test"):
            by_subject.setdefault(row["subject"], []).append({"question": row["question"], "choices": list(row["choices"]), "answer": int(row["answer"])})
        origin, digest = source, None
    else:
        files = [source] if source.is_file() else sorted(source.glob("*_test.csv")) or sorted(source.glob("*.csv"))
        if not files:
            raise DataError(f"{source}: no MMLU CSV files (question,A,B,C,D,answer)")
        for path in files:
            subject = path.stem.removesuffix("_test")
            if subjects and subject not in subjects:
                continue
            rows = []
            with open(path, encoding="utf-8", newline="") as handle:
                reader = csv.reader(handle)
                try:
                    for row in reader:
                        if len(row) != 6 or row[5].strip() not in "ABCD" or not row[5].strip():
                            raise DataError(f"{path}:{reader.line_num}: expected question,A,B,C,D,answer")
                        rows.append({"question": row[0], "choices": row[1:5], "answer": "ABCD".index(row[5].strip())})
                except csv.Error as exc:
                    raise DataError(f"{path}:{reader.line_num}: not a readable CSV row ({exc})") from None
                except UnicodeDecodeError as exc:
                    raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None
            by_subject[subject] = rows
        origin, digest = str(source), None
    if subjects:
        missing = [s for s in subjects if s not in by_subject]
        if missing:
            known = ", ".join(sorted(by_subject)[:8])
            raise DataError(f"unknown MMLU subject(s) {', '.join(missing)} in {origin} (e.g. {known})")
        by_subject = {s: by_subject[s] for s in subjects}
    if not by_subject:
        raise DataError(f"{origin}: no MMLU questions")
    digest = sha256_json(by_subject)
    return by_subject, origin, digest


def load_text(spec: str) -> tuple[str, str, str]:
    """A raw text corpus (WikiText-2 test by default): ``(text, origin, hash)``."""
    source = resolve(spec, "wikitext2")
    if isinstance(source, str):
        rows = _hub(source, "wikitext-2-raw-v1" if "wikitext" in source else None, "test")
        text = "".join(row.get("text", "") for row in rows)
        return text, source, sha256_json(text)
    if source.is_dir():
        source = source / "wiki.test.raw"
    try:
        text = Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read text corpus {source}: {exc}") from None
    if not text.strip():
        raise DataError(f"{source}: empty text")
    return text, str(source), sha256_json(text)
