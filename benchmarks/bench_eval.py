#!/usr/bin/env python
"""Evaluation scoring throughput on the embedded model (SmolLM2-135M-Instruct).

Run on demand (never part of the test suite)::

    .venv/bin/python benchmarks/bench_eval.py [--items 128] [--batch-size 16] [--precision fp32|bf16] [--out PATH]

For ``facts-ab`` (reptune's own statements) and ``mmlu`` (needs ``$REPTUNE_DATA_DIR`` or
``../shared/data``) it times, on the same items and in one process:

* ``batched``: the task's own scoring (:func:`reptune.evaluation.scoring.next_token_logprobs`:
  length-sorted batches, left padding, logits only at the answer position);
* ``per_item``: the obvious loop, one forward per item with full logits, reading the last
  position's log-probs of the answer letters.

Both give the same answers (checked: the max absolute log-prob difference is reported).
Goal: batched / per-item items per second >= 4. Results go atomically to
``benchmarks/results/eval.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if (REPO / "src" / "reptune").is_dir() and str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
if not os.environ.get("REPTUNE_DATA_DIR") and (REPO.parent / "shared" / "data").is_dir():
    os.environ["REPTUNE_DATA_DIR"] = str(REPO.parent / "shared" / "data")

import numpy as np
import torch

import reptune
from reptune._io import write_json_atomic
from reptune.evaluation import get_task
from reptune.evaluation.scoring import next_token_logprobs, prompt_token_ids

DEFAULT_OUT = HERE / "results" / "eval.json"
GOAL = 4.0


@torch.inference_mode()
def per_item(handle, prompts, candidates):
    out = np.zeros((len(prompts), len(candidates[0])))
    for index, (prompt, ids) in enumerate(zip(prompts, candidates)):
        tokens = torch.tensor([prompt_token_ids(handle.tokenizer, prompt)], device=handle.device)
        with handle.autocast():
            logits = handle.model(input_ids=tokens).logits[0, -1].float()
        out[index] = torch.log_softmax(logits, -1)[list(ids)].double().cpu().numpy()
    return out


def bench_task(handle, name, items_n, batch_size):
    task = get_task(name)
    items, origin, _ = task.load_items(handle, items_n)
    items = items[:items_n]
    prompts = [item["prompt"] for item in items]
    if name == "mmlu":
        from reptune.evaluation.tasks import mmlu_choice_ids

        candidates = [mmlu_choice_ids(handle.tokenizer, p) for p in prompts]
    else:
        from reptune.data.ab import letter_token_ids

        candidates = [letter_token_ids(handle.tokenizer, p) for p in prompts]
    warm = min(2 * batch_size, len(prompts))  # first large-batch forwards allocate: keep them out
    next_token_logprobs(handle, prompts[:warm], candidates[:warm], batch_size=batch_size)
    per_item(handle, prompts[:warm], candidates[:warm])
    start = time.perf_counter()
    batched = next_token_logprobs(handle, prompts, candidates, batch_size=batch_size)
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    loop = per_item(handle, prompts, candidates)
    t_loop = time.perf_counter() - start
    agree = float((batched.argmax(1) == loop.argmax(1)).mean())
    return {
        "items": len(prompts),
        "data": origin,
        "mean_prompt_tokens": float(np.mean([len(prompt_token_ids(handle.tokenizer, p)) for p in prompts])),
        "batched_items_per_s": len(prompts) / t_batched,
        "per_item_items_per_s": len(prompts) / t_loop,
        "speedup": t_loop / t_batched,
        "goal": GOAL,
        "meets_goal": t_loop / t_batched >= GOAL,
        "max_abs_logprob_diff": float(np.abs(batched - loop).max()),
        "answer_agreement": agree,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--tasks", default="facts-ab,mmlu")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    handle = reptune.load_model(None, autocast="bf16" if args.precision == "bf16" else None)
    results = {}
    for name in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        results[name] = bench_task(handle, name, args.items, args.batch_size)
        row = results[name]
        print(
            f"{name}: batched {row['batched_items_per_s']:.1f} items/s, per-item {row['per_item_items_per_s']:.1f} items/s, "
            f"speedup {row['speedup']:.2f}x (goal {GOAL}x), max |dlogp| {row['max_abs_logprob_diff']:.2e}"
        )
    write_json_atomic(
        args.out,
        {
            "benchmark": "eval",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": handle.model_id,
            "precision": args.precision,
            "batch_size": args.batch_size,
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "reptune": reptune.__version__,
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "results": results,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
