#!/usr/bin/env python
"""Serving throughput: vLLM and llama.cpp against reptune's own generation, same prompts, same model.

Run on demand (never part of the test suite), after ``scripts/setup-vllm.sh`` and
``scripts/setup-llamacpp.sh`` (a variant whose engine is missing is skipped and says why)::

    .venv/bin/python benchmarks/bench_serving.py [--model-dir DIR] [--repeats 3] [--out PATH]

Every variant generates greedily ``--max-new-tokens`` (32) tokens for the same 16 chat prompts, in
fp32, after one warm-up run; tokens/s = generated tokens (up to EOS) / wall seconds, median of
``--repeats`` runs:

* ``hf_generate``: ``reptune.generate`` (transformers ``generate``), all 16 prompts in one batch;
* ``reptune_steer``: ``reptune.steered_generate`` with one multiplier (a vector at layer 14), one batch;
* ``vllm``: vLLM's offline engine (``reptune.serving.vllm_run``, enforce-eager), all 16 requests at once;
* ``vllm_plugin_steered``: the same with the reptune steering plugin and every request steered;
* ``llama_cpp_sequential`` / ``llama_cpp_parallel``: ``llama-server`` on the model's f32 GGUF
  (``reptune export-model``), the 16 requests one after another / all at once on 16 slots.

The model defaults to the embedded SmolLM2-135M-Instruct's converted directory; a tuned one
(``--model-dir``, the output of ``reptune tune``) has the same architecture and size, so the
same speed. The machine may be shared: the load average before and after each variant is
recorded, and the numbers are only comparable within one run. Results go to
``benchmarks/results/serving.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if (REPO / "src" / "reptune").is_dir() and str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))  # benchmark the checkout this file belongs to

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

import reptune
from reptune._io import write_json_atomic
from reptune.precision import machine_info
from reptune.steering import format_prompts

DEFAULT_OUT = HERE / "results" / "serving.json"
LAYER, MULTIPLIER = 14, 4.0
PROMPTS = [
    "What is the capital of France?", "Is the Earth flat?", "Tell me one fact about the Moon.", "Can pigs fly?",
    "Describe yourself in one sentence.", "Is it safe to drink sea water?", "Why is the sky blue?", "How many legs does a spider have?",
    "What is two plus two?", "Name a mammal that can fly.", "What does a bee make?", "Is the Sun a star?",
    "Who wrote Romeo and Juliet?", "What is water made of?", "Is a tomato a fruit?", "What do plants need to grow?",
]


def load() -> tuple[float, float, float]:
    return os.getloadavg()


def timed(fn, repeats: int) -> dict[str, Any]:
    """One warm-up call, then ``repeats`` timed calls; ``fn`` returns the number of generated tokens."""
    fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = fn()
        runs.append({"seconds": time.perf_counter() - start, "tokens": tokens})
    return summarise(runs)


def summarise(runs: list[dict[str, float]]) -> dict[str, Any]:
    rates = [run["tokens"] / run["seconds"] for run in runs]
    return {"tokens_per_s": round(statistics.median(rates), 2), "runs": [{**r, "seconds": round(r["seconds"], 3)} for r in runs]}


def count(ids_per_prompt: list[list[int]], eos: int | None) -> int:
    return sum(len(ids[: ids.index(eos)] if eos in ids else ids) for ids in ids_per_prompt)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="model directory (default: the embedded model's conversion)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--vllm-python", type=Path, default=REPO / ".venv-vllm" / "bin" / "python")
    parser.add_argument("--llama-cpp", type=Path, default=REPO / ".venv" / "llama.cpp")
    parser.add_argument("--skip", action="append", default=[], help="variant to skip (repeatable)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    from reptune.models import convert_gguf, embedded_gguf_path

    model_dir = args.model_dir or convert_gguf(embedded_gguf_path())
    handle = reptune.load_model(str(model_dir))
    texts = format_prompts(handle, PROMPTS)
    ids = [handle.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    eos = handle.tokenizer.eos_token_id
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(handle.hidden_size, generator=generator)
    vector = reptune.vectors.as_vector({LAYER: direction / direction.norm() * 4.0}, handle)
    results: dict[str, Any] = {}
    notes: dict[str, str] = {}

    def record(name: str, fn) -> None:
        if name in args.skip:
            notes[name] = "skipped (--skip)"
            return
        before = load()
        print(f"{name} ...", file=sys.stderr, flush=True)
        try:
            results[name] = {**fn(), "load_before": before, "load_after": load()}
        except Exception as exc:  # noqa: BLE001 (a missing or failing engine is reported, not fatal)
            notes[name] = f"failed: {exc}".splitlines()[0]
        print(f"  {results.get(name, {}).get('tokens_per_s', notes.get(name))}", file=sys.stderr, flush=True)

    record("hf_generate", lambda: timed(
        lambda: count(reptune.generate(handle, PROMPTS, max_new_tokens=args.max_new_tokens, batch_size=16, return_token_ids=True), eos), args.repeats))
    record("reptune_steer", lambda: timed(
        lambda: count(reptune.steered_generate(handle, vector, PROMPTS, [MULTIPLIER], max_new_tokens=args.max_new_tokens, batch_size=16,
                                               return_token_ids=True)[MULTIPLIER], eos), args.repeats))

    versions: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        tmp_path = Path(tmp)
        vector_path = tmp_path / "vector.safetensors"
        vector.save(vector_path)

        def vllm(steered: bool) -> dict[str, Any]:
            if not args.vllm_python.is_file():
                raise RuntimeError(f"{args.vllm_python} absent: run scripts/setup-vllm.sh")
            spec = {"model": str(model_dir), "prompts": ids, "max_tokens": args.max_new_tokens, "repeats": args.repeats,
                    "extra_args": [{"reptune_multiplier": MULTIPLIER}] * len(ids) if steered else None}
            (tmp_path / "spec.json").write_text(json.dumps(spec))
            env = {k: v for k, v in os.environ.items() if not k.startswith("REPTUNE_VLLM_")}
            if steered:
                env.update(REPTUNE_VLLM_VECTOR=str(vector_path), REPTUNE_VLLM_LAYERS=str(LAYER))
            done = subprocess.run([str(args.vllm_python), "-m", "reptune.serving.vllm_run", str(tmp_path / "spec.json"), str(tmp_path / "out.json")],
                                  env=env, capture_output=True, text=True, check=False)
            if done.returncode:
                raise RuntimeError(done.stderr.strip().splitlines()[-1])
            out = json.loads((tmp_path / "out.json").read_text())
            versions["vllm"] = out["vllm"]
            return {**summarise(out["timings"]), "engine_start_s": round(out["load_seconds"], 1), "engine": out["engine"]}

        record("vllm", lambda: vllm(False))
        record("vllm_plugin_steered", lambda: vllm(True))

        from reptune.serving.llamacpp import LlamaServer, export_model, find_llama_cpp

        def llama(parallel: bool) -> dict[str, Any]:
            home = find_llama_cpp(args.llama_cpp, need=("converter", "server"))
            versions["llama_cpp"] = home.commit
            gguf = tmp_path / "model-f32.gguf"
            if not gguf.exists():
                export_model(model_dir, gguf, outtype="f32", llama_cpp=home.home)
            slots = len(ids) if parallel else 1
            extra = ["-np", str(slots), "-c", str(2048 * slots), "-t", str(min(2, os.cpu_count() or 1))]
            with LlamaServer(gguf, llama_cpp=home.home, extra_args=extra) as server:
                def run_all() -> int:
                    if parallel:
                        with ThreadPoolExecutor(len(ids)) as pool:
                            outs = list(pool.map(lambda p: server.complete(p, args.max_new_tokens), ids))
                    else:
                        outs = [server.complete(p, args.max_new_tokens) for p in ids]
                    return count([o.tokens for o in outs], eos)

                return {**timed(run_all, args.repeats), "weights": "f32 GGUF (reptune export-model)", "slots": slots}

        record("llama_cpp_sequential", lambda: llama(False))
        record("llama_cpp_parallel", lambda: llama(True))

    report = {
        "benchmark": "serving", "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine_info(), "load_average_at_end": load()}, "model": str(model_dir) if args.model_dir else "embedded SmolLM2-135M-Instruct (converted, fp32)",
        "config": {"prompts": len(PROMPTS), "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "precision": "fp32",
                   "steering": {"layer": LAYER, "multiplier": MULTIPLIER, "vector": "random direction, norm 4"}},
        "versions": {"reptune": reptune.__version__, "torch": torch.__version__, **versions},
        "results": results, "notes": notes,
    }
    write_json_atomic(args.out, report)
    for name, value in results.items():
        print(f"{name:24s} {value['tokens_per_s']:8.1f} tokens/s", file=sys.stderr)
    for name, note in notes.items():
        print(f"{name:24s} {note}", file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
