"""The projection task's former import path, kept for code written against it: see :mod:`reptune.evaluation.tasks.projection`."""

from reptune.evaluation.tasks.base import direction_at, vector_directions
from reptune.evaluation.tasks.projection import STATEMENT_TEMPLATE, Projection, load_projection_prompts, token_projections

__all__ = ["STATEMENT_TEMPLATE", "Projection", "direction_at", "load_projection_prompts", "token_projections", "vector_directions"]
