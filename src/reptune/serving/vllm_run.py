"""Run vLLM offline on token-id prompts and write what it generated, as JSON.

Executed inside vLLM's own environment (``.venv-vllm``, made by ``scripts/setup-vllm.sh``), never
imported by reptune itself: the tests and ``benchmarks/bench_serving.py`` call

    .venv-vllm/bin/python -m reptune.serving.vllm_run SPEC.json OUT.json

``SPEC.json``: ``model`` (a directory), ``prompts`` (lists of token ids: the caller tokenizes, so
both sides see the same ids), ``max_tokens``, ``logprobs`` (top-k per generated token, 0 = none),
``extra_args`` (optional, one dict per prompt: ``SamplingParams.extra_args``, e.g. the steering
plugin's ``{"reptune_multiplier": 4.0}``), ``texts`` (optional: strings vLLM's tokenizer should
tokenize, returned as ``tokenized``), ``repeats`` (timed runs after one warm-up, default 0) and
``engine`` (keyword arguments for ``vllm.LLM``; defaults below). ``OUT.json``: ``completions``
(``tokens``, ``top_logprobs`` as ``{id: logprob}`` per token), ``tokenized``, ``load_seconds``,
``timings`` (seconds and generated tokens of each timed run) and versions.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

ENGINE_DEFAULTS: dict[str, Any] = {
    "dtype": "float32",
    "max_model_len": 1024,
    "enforce_eager": True,
    "gpu_memory_utilization": 0.1,  # on the CPU backend: the share of RAM vLLM may reserve
    "kv_cache_memory_bytes": 512 << 20,
    "enable_prefix_caching": False,  # what the steering plugin needs; plain runs use it too, so both run the same engine
    "seed": 0,
}


def run(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    engine = {**ENGINE_DEFAULTS, **spec.get("engine", {})}
    start = time.perf_counter()
    llm = LLM(model=spec["model"], **engine)
    load_seconds = time.perf_counter() - start
    prompts = [TokensPrompt(prompt_token_ids=[int(t) for t in ids]) for ids in spec["prompts"]]
    extra = spec.get("extra_args") or [None] * len(prompts)
    params = [
        SamplingParams(temperature=0.0, max_tokens=int(spec["max_tokens"]), logprobs=int(spec.get("logprobs", 0)) or None, extra_args=args)
        for args in extra
    ]

    def generate() -> tuple[list[Any], float]:
        began = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        return outputs, time.perf_counter() - began

    outputs, _ = generate()
    completions = []
    for output in outputs:
        choice = output.outputs[0]
        tops = [{int(token): float(entry.logprob) for token, entry in step.items()} for step in (choice.logprobs or [])]
        completions.append({"tokens": [int(t) for t in choice.token_ids], "top_logprobs": tops})
    timings = []
    for _ in range(int(spec.get("repeats", 0))):
        again, seconds = generate()
        timings.append({"seconds": seconds, "tokens": sum(len(o.outputs[0].token_ids) for o in again)})
    tokenizer = llm.get_tokenizer()
    tokenized = [tokenizer.encode(text, add_special_tokens=False) for text in spec.get("texts", [])]
    return {
        "completions": completions, "tokenized": tokenized, "load_seconds": load_seconds, "timings": timings,
        "vllm": vllm.__version__, "torch": torch.__version__, "engine": engine,
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m reptune.serving.vllm_run SPEC.json OUT.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    result = run(spec)
    Path(args[1]).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":  # vLLM's engine starts worker processes: keep the entry point guarded
    raise SystemExit(main())
