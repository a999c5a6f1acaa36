"""Kept for compatibility: the training items moved to :mod:`reptune.tuning.items`."""

from reptune.tuning.items import (
    ITEM_KINDS,
    NEUTRAL_TEXT,
    WIKITEXT_TRAIN,
    BalancedBatches,
    TrainItem,
    default_retain_source,
    drop_training_overlap,
    load_retain_texts,
    load_tune_items,
    split_items,
    twin_items,
)

__all__ = [
    "ITEM_KINDS",
    "NEUTRAL_TEXT",
    "WIKITEXT_TRAIN",
    "BalancedBatches",
    "TrainItem",
    "default_retain_source",
    "drop_training_overlap",
    "load_retain_texts",
    "load_tune_items",
    "split_items",
    "twin_items",
]
