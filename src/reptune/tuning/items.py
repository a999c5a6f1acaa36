"""Training items for tuning, and deterministic label-balanced batching.

A :class:`TrainItem` is a prompt (the model input; chat template already applied), an optional
completion (for SFT and ``generated`` positions), the index of the correct answer letter for
A/B items, and a label used to balance batches (e.g. the statement's truth).

A *twin* item (``rejected`` set) is one fact as a reply to a neutral prompt: ``completion`` is
the true twin and ``rejected`` the false one. Its token loss is the pairwise sequence loss
``-log softmax([logp(true), logp(false)])[target]``: the behaviour ``facts-twin`` measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from reptune.data.ab import statements_to_ab
from reptune.data.pairs import render_chat
from reptune.data.sources import data_dir, read_source
from reptune.errors import DataError


@dataclass(frozen=True)
class TrainItem:
    prompt: str
    completion: str = ""
    correct: int | None = None
    label: int | None = None
    rejected: str = ""


ITEM_KINDS = ("ab", "twin")


def twin_items(statements: Sequence[Any], tokenizer: Any, origin: str = "statements") -> list[TrainItem]:
    """One twin :class:`TrainItem` per fact (see :func:`reptune.data.twins.statements_to_twins`)."""
    from reptune.data.twins import TWIN_PROMPT, statements_to_twins

    prompt = render_chat(tokenizer, TWIN_PROMPT)
    return [TrainItem(prompt=prompt, completion=twin.true, rejected=twin.false, label=1) for twin in statements_to_twins(statements, origin)]


def load_tune_items(spec: str, tokenizer: Any, *, limit: int | None = None, kind: str = "ab") -> tuple[list[TrainItem], str]:
    """Resolve a dataset argument into training items.

    * statement CSVs (and ``honesty``/``facts``) -> true/false A/B questions (correct letter known),
      or with ``kind="twin"`` (CSVs with a ``pair`` column) one twin item per fact;
    * CAA A/B sets -> their questions, correct letter = the behaviour-matching answer;
    * contrast-pair JSONL -> the positive side as prompt (+ completion, for SFT).
    """
    if kind not in ITEM_KINDS:
        raise DataError(f"training item kind must be one of {', '.join(ITEM_KINDS)}, got {kind!r}")
    source = read_source(spec)
    if kind == "twin":
        if source.kind != "statements":
            raise DataError(f"twin items need true/false statements with a 'pair' column, but {source.origin} holds {source.kind}")
        items = twin_items(source.records, tokenizer, source.origin)
    elif source.kind == "statements":
        items = [
            TrainItem(prompt=item.prompt, correct=item.correct, label=item.meta["label"])
            for item in statements_to_ab(source.records, tokenizer)
        ]
    elif source.kind == "caa":
        items = []
        for index, record in enumerate(source.records):
            try:
                question, matching = record["question"], record["answer_matching_behavior"]
            except (KeyError, TypeError):
                raise DataError(f"{source.origin}: record {index + 1} lacks question/answer_matching_behavior") from None
            letter = matching.strip().strip("()")[:1].upper()
            if letter not in {"A", "B"}:
                raise DataError(f"{source.origin}: record {index + 1}: answer {matching!r} is not (A) or (B)")
            correct = "AB".index(letter)
            items.append(TrainItem(prompt=render_chat(tokenizer, question.strip()), correct=correct, label=correct))
    else:
        items = [TrainItem(prompt=pair.positive.prompt, completion=pair.positive.completion, label=pair.label) for pair in source.records]
    if limit is not None:
        items = items[:limit]
    if not items:
        raise DataError(f"{source.origin}: no training items")
    return items, source.origin


def split_items(items: Sequence[TrainItem], val_fraction: float, seed: int) -> tuple[list[TrainItem], list[TrainItem]]:
    """Seeded train/validation split, stratified by label (at least one validation item if asked)."""
    if val_fraction == 0:
        return list(items), []
    generator = torch.Generator().manual_seed(seed)
    train: list[TrainItem] = []
    val: list[TrainItem] = []
    for label in sorted({item.label for item in items}, key=lambda value: (value is None, value)):
        group = [item for item in items if item.label == label]
        order = torch.randperm(len(group), generator=generator).tolist()
        cut = max(1, round(len(group) * val_fraction)) if len(group) > 1 else 0
        val.extend(group[i] for i in order[:cut])
        train.extend(group[i] for i in order[cut:])
    if not train:
        raise DataError("no training items left after the validation split")
    return train, val


class BalancedBatches:
    """Batch ``step`` is a pure function of (seed, step): resumable without stored sampler state.

    Items are pooled by label; each batch draws equally from every pool (the remainder from
    the first pools), walking a fresh seeded permutation of each pool per epoch.
    """

    def __init__(self, items: Sequence[TrainItem], batch_size: int, seed: int) -> None:
        self.items = list(items)
        self.batch_size = batch_size
        self.seed = seed
        labels = sorted({item.label for item in self.items}, key=lambda value: (value is None, value))
        self.pools = [[i for i, item in enumerate(self.items) if item.label == label] for label in labels]
        self._permutations: dict[tuple[int, int], list[int]] = {}

    def _permutation(self, pool_index: int, epoch: int) -> list[int]:
        key = (pool_index, epoch)
        if key not in self._permutations:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + pool_index * 10_007 + epoch)
            self._permutations[key] = torch.randperm(len(self.pools[pool_index]), generator=generator).tolist()
        return self._permutations[key]

    def _draw(self, pool_index: int, start: int, count: int) -> list[int]:
        pool = self.pools[pool_index]
        out = []
        for position in range(start, start + count):
            epoch, offset = divmod(position, len(pool))
            out.append(pool[self._permutation(pool_index, epoch)[offset]])
        return out

    def __call__(self, step: int) -> list[TrainItem]:
        shares = [self.batch_size // len(self.pools)] * len(self.pools)
        for index in range(self.batch_size % len(self.pools)):
            shares[index] += 1
        chosen: list[int] = []
        for pool_index, share in enumerate(shares):
            chosen.extend(self._draw(pool_index, step * share, share))
        return [self.items[i] for i in chosen]


# retain corpora used when none is given: WikiText-2 *train* (never the test split, which the
# perplexity evaluation reads) when $REPTUNE_DATA_DIR holds it, else reptune's shipped neutral text
WIKITEXT_TRAIN = "wikitext2/wiki.train.raw"
NEUTRAL_TEXT = "neutral_text.txt"


def load_retain_texts(spec: str, *, min_chars: int = 40, max_chars: int = 600, limit: int = 512) -> list[str]:
    """Plain texts for the retain loss.

    A text file (any suffix but .jsonl/.csv/.json, e.g. WikiText's ``wiki.train.raw``) gives its
    non-empty lines of at least ``min_chars`` characters, each cut to ``max_chars`` at a word
    boundary; any other dataset argument gives its statements, or the positive side of its
    pairs, or its CAA questions.
    """
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix not in {".jsonl", ".csv", ".json"}:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise DataError(f"{path}: not a UTF-8 text file") from None
        texts = [_cut(line.strip(), max_chars) for line in lines if len(line.strip()) >= min_chars]
    else:
        source = read_source(spec)
        if source.kind == "statements":
            texts = [record.text for record in source.records]
        elif source.kind == "pairs":
            texts = [record.positive.text for record in source.records]
        else:
            texts = [str(record.get("question", "")) for record in source.records]
    texts = [text for text in texts if text.strip()][:limit]
    if not texts:
        raise DataError(f"retain corpus {spec!r} holds no usable text")
    return texts


def _cut(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    return head[: head.rfind(" ")] if " " in head else head


def default_retain_source() -> str:
    """Where the default retain corpus comes from: a path (WikiText-2 train, or the shipped neutral text).

    The retain corpus must be unrelated to the training items (a retain loss on the training
    prompts pulls the model back to the base model's answers) and must not be evaluation data.
    """
    root = data_dir()
    if root is not None and (root / WIKITEXT_TRAIN).is_file():
        return str(root / WIKITEXT_TRAIN)
    return str(resources.files("reptune.data") / "resources" / NEUTRAL_TEXT)


def drop_training_overlap(texts: Sequence[str], prompts: Sequence[str]) -> tuple[list[str], int]:
    """Remove retain texts that are, or are contained in, a training prompt.

    Returns ``(kept texts, number dropped)``.
    """
    kept = [text for text in texts if not any(text.strip() in prompt for prompt in prompts)]
    return kept, len(texts) - len(kept)
