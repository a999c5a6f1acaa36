"""llama.cpp: tuned models to GGUF, and a ``llama-server`` on 127.0.0.1 to check and time them.

* :func:`export_model` turns a model directory (the merged output of ``reptune tune``, or any
  Hugging Face causal-LM folder) into one GGUF file with llama.cpp's own converter,
  ``convert_hf_to_gguf.py`` from the llama.cpp tree that ``scripts/setup-llamacpp.sh`` unpacks, run
  in this Python (it needs torch, transformers, numpy and sentencepiece, which reptune has; its
  ``gguf`` package comes from the same tree). The folder is checked first, the file is written
  atomically and read back (architecture, block count). ``reptune export-model`` is the CLI.
* :class:`LlamaServer` starts ``llama-server`` on a free port of 127.0.0.1 with a model and,
  optionally, control vectors (``--control-vector-scaled FILE:SCALE``, llama.cpp's own loader, so
  the file ``reptune export-gguf`` wrote is what is tested), and asks it for greedy completions
  with their top log-probs over the whole vocabulary (``n_probs``, taken before sampling).

Where llama.cpp is (:func:`find_llama_cpp`): ``--llama-cpp DIR`` / ``llama_cpp=``, else
``$REPTUNE_LLAMA_CPP``, else ``<venv>/llama.cpp`` (``sys.prefix``: the project's ``.venv``,
where the setup script builds it). A directory counts if it holds ``convert_hf_to_gguf.py``
(in ``src/`` or at its top) and/or ``llama-server`` (in ``bin/`` or ``build/bin/``): the
script's layout or a plain llama.cpp checkout built with CMake.

Control vectors in llama.cpp: tensor ``direction.L`` is added to the output of block L
(``common_control_vector_load`` stores it at offset ``n_embd * (L - 1)``,
``llama_adapter_cvec::apply`` reads block ``il`` from ``n_embd * (il - 1)``, and each model's graph
adds it after the block's feed-forward residual), which is reptune's layer L. Every token is
steered, the prompt's included: reptune's ``scope="all"``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reptune._io import atomic_path, loads_json
from reptune._process import end_process
from reptune.errors import ModelError, ReptuneError
from reptune.tuned_blocks import TUNED_BLOCKS_FILE

LLAMA_CPP_ENV = "REPTUNE_LLAMA_CPP"
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
SETUP_HINT = "run scripts/setup-llamacpp.sh, or pass --llama-cpp DIR / set $REPTUNE_LLAMA_CPP to a llama.cpp tree"


@dataclass(frozen=True)
class LlamaCpp:
    """A llama.cpp installation: its converter and binaries (``None`` where absent)."""

    home: Path
    converter: Path | None
    server: Path | None
    completion: Path | None

    @property
    def commit(self) -> str | None:
        """The upstream llama.cpp commit the setup script recorded, if any."""
        for path in (self.home / "src" / ".upstream-commit", self.home / ".upstream-commit"):
            if path.is_file():
                return path.read_text(encoding="utf-8").strip() or None
        return None


def _first(*paths: Path) -> Path | None:
    return next((path for path in paths if path.is_file()), None)


def _inspect(home: Path) -> LlamaCpp:
    def binary(name: str) -> Path | None:
        found = _first(home / "bin" / name, home / "build" / "bin" / name)
        return found if found is not None and os.access(found, os.X_OK) else None

    return LlamaCpp(
        home=home,
        converter=_first(home / "src" / "convert_hf_to_gguf.py", home / "convert_hf_to_gguf.py"),
        server=binary("llama-server"),
        completion=binary("llama-completion"),
    )


def llama_cpp_candidates(explicit: str | os.PathLike[str] | None = None) -> list[Path]:
    """Where llama.cpp is looked for, in order (an explicit directory alone, when given)."""
    if explicit is not None:
        return [Path(explicit).expanduser()]
    out = []
    if os.environ.get(LLAMA_CPP_ENV):
        out.append(Path(os.environ[LLAMA_CPP_ENV]).expanduser())
    out.append(Path(sys.prefix) / "llama.cpp")
    return out


def find_llama_cpp(explicit: str | os.PathLike[str] | None = None, *, need: Sequence[str] = ("converter",)) -> LlamaCpp:
    """The first llama.cpp directory that has everything in ``need`` (``converter``, ``server``, ``completion``).

    Raises:
        ReptuneError: none has them; the message says where it looked and how to get one.
    """
    looked = llama_cpp_candidates(explicit)
    for home in looked:
        if home.is_dir():
            found = _inspect(home)
            if all(getattr(found, part) is not None for part in need):
                return found
    wanted = " and ".join({"converter": "convert_hf_to_gguf.py", "server": "llama-server", "completion": "llama-completion"}[part] for part in need)
    where = ", ".join(str(path) for path in looked)
    raise ReptuneError(f"llama.cpp's {wanted} not found (looked in {where}): {SETUP_HINT}")


# --- tuned model -> GGUF -----------------------------------------------------------------


def check_model_dir(path: str | os.PathLike[str], *, allow_pickle: bool = False, trust_remote_code: bool = False) -> dict[str, Any]:
    """Check that ``path`` is a model folder the converter can read safely; returns its ``config.json``.

    Refused, each with one line: a missing path, a file, a folder without ``config.json``, a LoRA
    adapter folder, no weights, pickled ``.bin`` weights only (unless ``allow_pickle``), no
    tokenizer, and Python code shipped with the model (``auto_map`` or ``*.py``; the converter
    loads tokenizers with ``trust_remote_code=True``) unless ``trust_remote_code``.
    """
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelError(f"model directory not found: {folder}")
    if not folder.is_dir():
        raise ModelError(f"{folder} is not a directory: give the folder `reptune tune -o` wrote (config.json + model.safetensors)")
    config_path = folder / "config.json"
    if not config_path.is_file():
        if (folder / "adapter_config.json").is_file():
            raise ModelError(f"{folder} is a LoRA adapter: export the merged model, the folder above it that `reptune tune` wrote")
        if (folder / TUNED_BLOCKS_FILE).is_file():
            raise ModelError(f"{folder} holds only the trained blocks (tune --weights blocks): tune with --weights full for a "
                             "whole model to export, or load it in Python (load_model) and save_pretrained it")
        raise ModelError(f"{folder} holds no config.json: not a Hugging Face model directory")
    config = loads_json(config_path.read_bytes(), str(config_path))
    if not isinstance(config, dict):
        raise ModelError(f"{config_path}: expected a JSON object")
    safetensors = list(folder.glob("*.safetensors"))
    pickled = list(folder.glob("pytorch_model*.bin"))
    if not safetensors:
        if pickled and not allow_pickle:
            raise ModelError(f"{folder} holds only pickled .bin weights (torch.load can run code): pass --allow-pickle to convert them")
        if not pickled:
            raise ModelError(f"{folder} holds no weights (model.safetensors)")
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        raise ModelError(f"{folder} holds no tokenizer (tokenizer.json or tokenizer.model)")
    if not trust_remote_code:
        tokenizer_config = folder / "tokenizer_config.json"
        with contextlib.suppress(ReptuneError):
            tokenizer_extra = loads_json(tokenizer_config.read_bytes(), str(tokenizer_config)) if tokenizer_config.is_file() else {}
            if isinstance(tokenizer_extra, dict) and "auto_map" in tokenizer_extra:
                config = {**config, "auto_map": config.get("auto_map") or tokenizer_extra["auto_map"]}
        code = sorted(p.name for p in folder.glob("*.py"))
        if "auto_map" in config or code:
            what = ", ".join(code) if code else "auto_map"
            raise ModelError(
                f"{folder} ships Python code ({what}) that llama.cpp's converter would run: pass --trust-remote-code if you trust it"
            )
    return config


@dataclass(frozen=True)
class GGUFInfo:
    """What a written model GGUF holds: read back from its header."""

    path: Path
    architecture: str
    block_count: int
    file_type: str
    tensors: int
    size_bytes: int

    def describe(self) -> str:
        return f"{self.architecture}, {self.block_count} blocks, {self.file_type}, {self.tensors} tensors, {self.size_bytes / 2**20:.0f} MiB"


def read_gguf_info(path: str | os.PathLike[str]) -> GGUFInfo:
    """Architecture, block count, weight type and tensor count from a model GGUF's header."""
    import gguf

    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # the reader raises ValueError, struct.error, ... on a damaged file
        raise ModelError(f"{path} is not a readable GGUF file: {exc}".splitlines()[0]) from exc

    def field(key: str) -> Any:
        found = reader.fields.get(key)
        return None if found is None else found.contents()

    architecture = str(field("general.architecture") or "?")
    file_type = field("general.file_type")
    try:
        type_name = gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_").lower() if file_type is not None else "?"
    except ValueError:
        type_name = str(file_type)
    return GGUFInfo(path, architecture, int(field(f"{architecture}.block_count") or 0), type_name, len(reader.tensors), path.stat().st_size)


def _last_error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or line.startswith("ERROR") or "error:" in line.lower():
            return line
    return lines[-1] if lines else "no output"


def export_model(
    model_dir: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    outtype: str = "f16",
    llama_cpp: str | os.PathLike[str] | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> GGUFInfo:
    """Convert a model directory to one GGUF file with llama.cpp's ``convert_hf_to_gguf.py``.

    Args:
        model_dir: the merged output of ``reptune tune`` (or any HF causal-LM folder).
        output: the ``.gguf`` file to write (atomically; an existing file is replaced).
        outtype: ``f32`` (exact), ``f16`` (default), ``bf16`` or ``q8_0``.
        llama_cpp: llama.cpp directory (see :func:`find_llama_cpp`).

    Returns:
        The header of the written file (:class:`GGUFInfo`).
    """
    if outtype not in OUTTYPES:
        raise ReptuneError(f"unknown --outtype {outtype!r}: use one of {', '.join(OUTTYPES)}")
    folder = Path(model_dir).expanduser()
    config = check_model_dir(folder, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    converter = find_llama_cpp(llama_cpp, need=("converter",)).converter
    assert converter is not None
    output = Path(output)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("NO_LOCAL_GGUF", None)  # the converter must use the gguf-py of its own tree
    with atomic_path(output) as tmp:
        command = [sys.executable, str(converter), str(folder), "--outfile", str(tmp), "--outtype", outtype]
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise ModelError(f"llama.cpp's converter failed on {folder}: {_last_error_line(done.stderr + done.stdout)}")
        info = read_gguf_info(tmp)
        layers = config.get("num_hidden_layers") or config.get("n_layer")
        if isinstance(layers, int) and info.block_count != layers:
            raise ModelError(f"the converter wrote {info.block_count} blocks for a model with {layers} layers")
    return GGUFInfo(output, info.architecture, info.block_count, info.file_type, info.tensors, info.size_bytes)


# --- llama-server ---------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Completion:
    """One greedy completion: token ids, and per generated token the top log-probs ``{id: logprob}``."""

    tokens: list[int]
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    seconds: float = 0.0


class LlamaServer:
    """``llama-server`` on 127.0.0.1 for one model (and control vectors), as a context manager.

    Args:
        model: the ``.gguf`` model.
        control_vectors: ``[(file.gguf, scale), ...]`` passed as ``--control-vector-scaled``
            (llama.cpp sums them); ``layer_range`` = ``--control-vector-layer-range START END``.
        threads: ``-t`` (default: llama.cpp's choice).
        llama_cpp: llama.cpp directory (see :func:`find_llama_cpp`).
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        control_vectors: Sequence[tuple[str | os.PathLike[str], float]] = (),
        layer_range: tuple[int, int] | None = None,
        context: int = 2048,
        threads: int | None = None,
        llama_cpp: str | os.PathLike[str] | None = None,
        startup_timeout: float = 180.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.binary = find_llama_cpp(llama_cpp, need=("server",)).server
        self.model = Path(model)
        if not self.model.is_file():
            raise ModelError(f"GGUF model not found: {self.model}")
        self.command = [str(self.binary), "-m", str(self.model), "--host", "127.0.0.1", "-c", str(context), "-np", "1", "--no-webui"]
        if threads is not None:
            self.command += ["-t", str(threads)]
        for path, scale in control_vectors:
            text = str(path)
            if "," in text or ":" in text:
                raise ReptuneError(f"llama.cpp cannot take a control-vector path with ',' or ':': {text}")
            if not Path(text).is_file():
                raise ReptuneError(f"control vector not found: {text}")
            self.command += ["--control-vector-scaled", f"{text}:{float(scale)!r}"]
        if layer_range is not None:
            self.command += ["--control-vector-layer-range", str(layer_range[0]), str(layer_range[1])]
        self.command += list(extra_args)
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LlamaServer:
        self.port = free_port()
        self._log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen([*self.command, "--port", str(self.port)], stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.log_tail()
                self.stop()
                raise ModelError(f"llama-server exited with code {self.process.returncode}: {_last_error_line(log)}")
            with contextlib.suppress(OSError, ValueError):
                if self._request("GET", "/health", timeout=2).get("status") == "ok":
                    return self
            time.sleep(0.2)
        self.stop()
        raise ModelError(f"llama-server did not become ready in {self.startup_timeout:.0f} s")

    def log_tail(self, chars: int = 4000) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        return Path(self._log.name).read_text(encoding="utf-8", errors="replace")[-chars:]

    def stop(self) -> None:
        if self.process is not None:
            end_process(self.process)
        if self._log is not None:
            self._log.close()
            with contextlib.suppress(OSError):
                os.unlink(self._log.name)
            self._log = None

    def __enter__(self) -> LlamaServer:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 600) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # 127.0.0.1 only
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if path == "/health":
                raise OSError(exc) from exc
            raise ModelError(f"llama-server {path}: HTTP {exc.code} {exc.read()[:300]!r}") from exc

    def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        """llama.cpp's tokenization of ``text``."""
        return [int(t) for t in self._request("POST", "/tokenize", {"content": text, "add_special": add_special, "parse_special": True})["tokens"]]

    def complete(self, prompt: Sequence[int], max_tokens: int, *, top_logprobs: int = 0) -> Completion:
        """Greedy completion of a token-id prompt (no special tokens added, no prompt cache reuse)."""
        body = {
            "prompt": [int(t) for t in prompt], "n_predict": int(max_tokens), "temperature": 0.0, "top_k": 1, "seed": 0,
            "n_probs": int(top_logprobs), "cache_prompt": False, "stream": False, "return_tokens": True,
        }
        start = time.perf_counter()
        reply = self._request("POST", "/completion", body)
        seconds = time.perf_counter() - start
        tokens = [int(t) for t in reply.get("tokens") or []]
        tops = [{int(p["id"]): float(p["logprob"]) for p in entry.get("top_logprobs", [])} for entry in reply.get("completion_probabilities") or []]
        if top_logprobs and not tokens:
            tokens = [int(entry["id"]) for entry in reply.get("completion_probabilities") or []]
        return Completion(tokens, tops, seconds)
