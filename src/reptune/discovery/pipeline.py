"""Kept for compatibility: :func:`discover` and its results moved to :mod:`reptune.discovery.run`."""

from reptune.discovery.run import (
    METHOD_SCORE,
    METHODS,
    RANK_KEYS,
    DiscoveredVector,
    DiscoveryResult,
    default_layers,
    discover,
    rank_path,
)

__all__ = [
    "METHODS",
    "METHOD_SCORE",
    "RANK_KEYS",
    "DiscoveredVector",
    "DiscoveryResult",
    "default_layers",
    "discover",
    "rank_path",
]
