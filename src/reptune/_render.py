"""The report builders that tuning and discovery call but :mod:`reptune.reporting` provides.

``tune()`` writes ``README.md`` (the model card) and ``loss_curves.png`` beside the weights, and
``DiscoveryResult.save()`` writes ``STEM.discovery.md`` and ``STEM.norm.png``. Their text and
figures are built in reporting, which sits above tuning and discovery on the import ladder, so
neither may import it. Instead reporting's builders are put into :data:`RENDERERS` by
:func:`reptune.reporting.install_renderers`, which the package facade (``reptune/__init__.py``,
run by Python before any submodule) calls: every entry point (the CLI, the pipeline,
``reptune.tuning.tune`` or ``reptune.discovery.discover`` from Python) finds them filled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any


@dataclass
class Renderers:
    """One slot per builder; ``None`` until :func:`reptune.reporting.install_renderers` fills it."""

    model_card: Callable[..., str] | None = None
    """``(config, metrics, *, model_id, revision, layers, rep_layers, vector, vector_path, data_origin) -> README.md text``"""
    loss_curves: Callable[..., Any] | None = None
    """``(history, val_history, path, title) -> the PNG written``"""
    discovery_report: Callable[..., str] | None = None
    """``(result, samples, figure) -> STEM.discovery.md text``"""
    norm_curves: Callable[..., Any] | None = None
    """``(curves, path, labels) -> the PNG written``"""


RENDERERS = Renderers()
SLOTS = tuple(slot.name for slot in fields(Renderers))


def renderer(name: str) -> Callable[..., Any]:
    """The builder in slot ``name``; RuntimeError when it was never installed."""
    found = getattr(RENDERERS, name)
    if found is None:
        raise RuntimeError(f"no {name} renderer installed: reptune.reporting.install_renderers() was not called")
    return found


def install(**builders: Callable[..., Any]) -> None:
    """Fill slots by name (``install(model_card=...)``); an unknown name is a TypeError."""
    unknown = sorted(set(builders) - set(SLOTS))
    if unknown:
        raise TypeError(f"unknown renderer slot(s): {', '.join(unknown)}; known: {', '.join(SLOTS)}")
    for name, builder in builders.items():
        setattr(RENDERERS, name, builder)
