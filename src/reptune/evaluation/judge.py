"""The judges' former import path, kept for code written against it: see :mod:`reptune.evaluation.judges`."""

from reptune.evaluation.judges import *  # noqa: F403  (the same public names)
from reptune.evaluation.judges import __all__ as __all__
