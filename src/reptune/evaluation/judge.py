"""The judges' former import path, kept for code written against it: see :mod:`reptune.evaluation.judges`."""

from reptune.evaluation.judges import *
from reptune.evaluation.judges import __all__ as __all__  # noqa: PLC0414 - the re-export of the former module path
