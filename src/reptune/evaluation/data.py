"""Evaluation data sets: TruthfulQA, MMLU, WikiText-2 (statements and CAA come from reptune.data).

Each ``--data`` value is resolved by :func:`reptune.data.sources.resolve_data` (the standard
names ``truthfulqa``, ``mmlu``, ``wikitext2`` are in its table of standard sets): an existing path;
a standard name looked up in ``$REPTUNE_DATA_DIR``, else the same set on the hub when reachable; a
Hugging Face dataset id (``org/name``). A missing set raises :class:`DataError` saying where to
get it. The loaders here read what it finds.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from reptune._io import read_text_file, sha256_file, sha256_json
from reptune.data.sources import hub_rows, resolve_data
from reptune.errors import DataError


def load_truthfulqa_ab(spec: str) -> tuple[list[dict[str, Any]], str, str]:
    """TruthfulQA questions with the best answer and the first incorrect answer."""
    source = resolve_data(spec, "truthfulqa-csv")
    if isinstance(source, str):
        rows = hub_rows(source, "generation", "validation")
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
    source = resolve_data(spec, "truthfulqa-mc")
    if isinstance(source, str):
        rows = hub_rows(source, "multiple_choice", "validation")
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
    source = resolve_data(spec, "mmlu")
    by_subject: dict[str, list[dict[str, Any]]] = {}
    if isinstance(source, str):
        for row in hub_rows(source, "all", "test"):
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
    source = resolve_data(spec, "wikitext2")
    if isinstance(source, str):
        rows = hub_rows(source, "wikitext-2-raw-v1" if "wikitext" in source else None, "test")
        text = "".join(row.get("text", "") for row in rows)
        return text, source, sha256_json(text)
    if source.is_dir():
        source = source / "wiki.test.raw"
    text = read_text_file(source, "text corpus")
    if not text.strip():
        raise DataError(f"{source}: empty text")
    return text, str(source), sha256_json(text)
