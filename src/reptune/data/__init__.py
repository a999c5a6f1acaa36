"""Contrast data: the pair schema, builders, and where datasets come from."""

from reptune.data.pairs import (
    DISHONEST_PERSONA,
    HONEST_PERSONA,
    ContrastPair,
    Example,
    Statement,
    caa_pairs,
    honesty_pairs,
    load_pairs_jsonl,
    load_statements_csv,
    pairs_hash,
    render_chat,
    save_pairs_jsonl,
)
from reptune.data.sources import DATA_DIR_ENV, builtin_path, load_contrast_pairs, read_source

__all__ = [
    "DATA_DIR_ENV",
    "DISHONEST_PERSONA",
    "HONEST_PERSONA",
    "ContrastPair",
    "Example",
    "Statement",
    "builtin_path",
    "caa_pairs",
    "honesty_pairs",
    "load_contrast_pairs",
    "load_pairs_jsonl",
    "load_statements_csv",
    "pairs_hash",
    "read_source",
    "render_chat",
    "save_pairs_jsonl",
]
