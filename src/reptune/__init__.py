"""reptune: find behaviour directions in a language model, steer with them, tune them in.

The stages, bottom first: each imports only from its own rung and the rungs listed before it
(the import ladder, checked by ``tests/test_layout.py``):

* :mod:`reptune.errors` — one-line user errors; low helpers :mod:`reptune._io`,
  :mod:`reptune._progress`, :mod:`reptune._render`, :mod:`reptune.precision`, :mod:`reptune.tokens`;
* :mod:`reptune.models` — loading models, locating decoder blocks; :mod:`reptune.sites` — the
  layer/position convention every stage uses; :mod:`reptune.hooks` — the one hook installer on
  the block outputs ``sites`` defines;
* :mod:`reptune.data` — contrast pairs and dataset sources;
* :mod:`reptune.activations` — batched, early-exit activation reading;
* :mod:`reptune.vectors` — the vector file format (safetensors + JSON, llama.cpp GGUF export);
* :mod:`reptune.directions` — mean-diff / PCA / probe directions and the layer scan;
* :mod:`reptune.steering` — steering hooks and generation;
* :mod:`reptune.tuning` — tuning a vector into the weights;
* :mod:`reptune.discovery` — finding vectors without labels;
* :mod:`reptune.evaluation` — measuring the result (tasks, judges, statistics);
* :mod:`reptune.reporting` — tables, figures and reports;
* :mod:`reptune.pipeline` — whole experiments;
* :mod:`reptune.cli` — the ``reptune`` command.
"""

from reptune._version import __version__
from reptune.activations import read_activations, read_pair_activations
from reptune.data import ContrastPair, Example, load_contrast_pairs
from reptune.directions import LayerScan, extract_vector, fit_direction, scan_layers
from reptune.errors import ReptuneError
from reptune.models import ModelHandle, load_model, wrap_model

# The composition root: tune() and discover() write reports whose builders live in reptune.reporting,
# above them on the import ladder; hand those builders over before any of them can run (see _render.py).
from reptune.reporting import install_renderers as _install_renderers
from reptune.sites import Positions, parse_layers
from reptune.steering import Steering, generate, steer, steered_generate
from reptune.vectors import SteeringVector, VectorMeta, export_gguf, load_vector

_install_renderers()

__all__ = [
    "ContrastPair",
    "Example",
    "LayerScan",
    "ModelHandle",
    "Positions",
    "ReptuneError",
    "Steering",
    "SteeringVector",
    "VectorMeta",
    "__version__",
    "export_gguf",
    "extract_vector",
    "fit_direction",
    "generate",
    "load_contrast_pairs",
    "load_model",
    "load_vector",
    "parse_layers",
    "read_activations",
    "read_pair_activations",
    "scan_layers",
    "steer",
    "steered_generate",
    "wrap_model",
]
