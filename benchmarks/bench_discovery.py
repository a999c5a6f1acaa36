#!/usr/bin/env python
"""Discovery benchmark: batched MELBO (k vectors at once) vs one-at-a-time training.

Run on demand (never part of the test suite)::

    .venv/bin/python benchmarks/bench_discovery.py [--precision bf16|fp32] [--prompts N] [--steps N] [--repeats N] [--out PATH]

On the embedded model (SmolLM2-135M-Instruct), with the same prompts, layers, radius, starting
vectors and number of steps, it times three ways of training ``--num`` (8) MELBO vectors:

* ``batched``: :func:`reptune.discovery.train_melbo` with all k vectors in one ``[k, hidden]``
  parameter: one replay of blocks source+1..target per step on cached source activations;
* ``sequential``: the same engine (same cached slice) called k times with one vector each;
* ``naive``: one vector at a time through the model itself (a forward hook adds theta at the
  source block; the forward stops after the target block, so later blocks and the LM head never
  run; backward from target to source);
* ``reference``: one vector at a time through the whole model and LM head per step, as the MELBO
  reference code does (``--no-reference`` skips it).

All three follow the same projected-gradient Adam updates from the same starts, so they end at
the same vectors (checked: ``max_vector_diff``). The goal is ``vectors/s(batched) >= 4 x
vectors/s(one-at-a-time)``. Caching the source activations is done once, before timing, and
reported separately (it is shared by the batched and sequential variants; the naive one needs
no cache). Variants are interleaved each round (order rotated), medians are reported, and a
timing disturbed by other processes (foreign CPU share above ``--max-foreign-load``) is retried.
Results go atomically to ``benchmarks/results/discovery.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO / "src") not in sys.path and not os.environ.get("REPTUNE_BENCH_INSTALLED"):
    sys.path.insert(0, str(REPO / "src"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from rich.console import Console
from rich.table import Table

import reptune
from reptune._io import write_json_atomic
from reptune.activations import capture_layers, run_until, tokenize_examples
from reptune.data.pairs import Example
from reptune.discovery import build_slices, random_vectors, train_melbo
from reptune.discovery.common import to_radius
from reptune.discovery.melbo import PAPER_BETAS
from reptune.sites import block_output_tensor, replace_block_output
from reptune.steering import format_prompts

DEFAULT_OUT = HERE / "results" / "discovery.json"
GOAL = 4.0
PROMPTS = [
    "How can I pick a lock without the key?",
    "Write a short poem about the sea.",
    "What is the capital of Australia?",
    "Tell me a joke about cats.",
    "Explain photosynthesis to a child.",
    "Give me three tips for sleeping well.",
    "Why is the sky blue?",
    "Describe your ideal weekend.",
]


class CpuMeter:
    """Share of all cores' CPU time used by *other* processes while a timing ran (Linux /proc)."""

    def __init__(self) -> None:
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.ncpu = os.cpu_count() or 1
        self.available = os.path.exists("/proc/stat") and os.path.exists("/proc/self/stat")

    def sample(self) -> tuple[int, int, float] | None:
        if not self.available:
            return None
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
        busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + (fields[7] if len(fields) > 7 else 0)
        with open("/proc/self/stat", encoding="ascii") as own:
            text = own.read()
        after = text[text.rindex(")") + 2 :].split()
        return busy, int(after[11]) + int(after[12]), time.perf_counter()

    def foreign_share(self, start: tuple[int, int, float] | None) -> float | None:
        end = self.sample()
        if start is None or end is None or end[2] <= start[2]:
            return None
        foreign = max(0, (end[0] - start[0]) - (end[1] - start[1]))
        return foreign / ((end[2] - start[2]) * self.hz * self.ncpu)


METER = CpuMeter()


def machine_info() -> dict[str, Any]:
    import transformers

    cpu = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), None)
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "processor": cpu or platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "reptune": reptune.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def naive_train(
    handle: Any,
    batch: Any,
    mask: torch.Tensor,
    base: torch.Tensor,
    source: int,
    target: int,
    start: torch.Tensor,
    radius: float,
    steps: int,
    lr: float,
    *,
    full: bool = False,
) -> torch.Tensor:
    """One vector at a time through the model: a hook adds theta at the source block; the forward
    stops after the target block (``full``: runs the whole model and LM head, as the reference code)."""
    out = []
    for row in start:
        theta = torch.nn.Parameter(row.clone().to(handle.device))
        optimizer = torch.optim.Adam([theta], lr=lr, betas=PAPER_BETAS, weight_decay=0.0, amsgrad=True)

        def add(_module: Any, _args: Any, output: Any, theta: torch.Tensor = theta) -> Any:
            hidden = block_output_tensor(output)
            return replace_block_output(output, hidden + theta.to(hidden.dtype))

        hook = handle.layers[source].register_forward_hook(add)
        try:
            for _ in range(steps):
                optimizer.zero_grad()
                with handle.autocast(), capture_layers(handle, [target], stop_after=None if full else target) as got:
                    if full:
                        handle.model(
                            input_ids=batch.input_ids,
                            attention_mask=batch.attention_mask,
                            position_ids=batch.position_ids,
                            use_cache=False,
                            output_hidden_states=True,
                        )
                    else:
                        run_until(handle, batch)
                delta = (got[target] - base).float()
                objective = torch.where(mask, delta.pow(2).sum(-1), torch.zeros(())).sum()
                (-objective).backward()
                with torch.no_grad():
                    theta.grad -= (theta.grad @ theta) * theta / radius**2
                optimizer.step()
                with torch.no_grad():
                    theta.copy_(to_radius(theta.detach().unsqueeze(0), radius)[0])
        finally:
            hook.remove()
        out.append(theta.detach().cpu())
    return torch.stack(out)


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    mark = METER.sample()
    time.sleep(1.0)
    idle_share = METER.foreign_share(mark)
    if idle_share is not None and idle_share > args.max_foreign_load:
        console.print(
            f"[yellow]warning:[/] other processes use {idle_share:.0%} of the CPU before the start; timings will be noisy "
            "(wall time especially; see the CPU-time ratios, or use --threads 1)"
        )
    load_start = time.perf_counter()
    handle = reptune.load_model(None, autocast="bf16" if args.precision == "bf16" else None)
    load_s = time.perf_counter() - load_start
    source = args.source if args.source is not None else 7
    target = args.target if args.target is not None else handle.num_layers - 8
    texts = format_prompts(handle, PROMPTS[: args.prompts])
    tick = time.perf_counter()
    slices = build_slices(handle, texts, source, target, "all", prompt_batch_size=len(texts))
    cache_s = time.perf_counter() - tick
    piece = slices[0]
    start = random_vectors(handle.hidden_size, args.num, args.radius, seed=args.seed)
    batch = tokenize_examples(handle.tokenizer, [Example(t) for t in texts], padding_side="right", device=handle.device)
    base = piece.reference.float()
    mask = piece.mask
    console.print(
        f"model {handle.model_id}; layers {source} -> {target} ({target - source} blocks replayed); {len(texts)} prompts, "
        f"{int(batch.attention_mask.sum())} real tokens (padded {tuple(batch.input_ids.shape)}); k = {args.num}; "
        f"{args.steps} steps; R = {args.radius}; precision {args.precision}; cache {cache_s:.2f} s"
    )

    results: dict[str, torch.Tensor] = {}

    def batched() -> None:
        results["batched"] = train_melbo(slices, args.num, args.radius, steps=args.steps, lr=args.lr, init=start).vectors

    def sequential() -> None:
        rows = [
            train_melbo(slices, 1, args.radius, steps=args.steps, lr=args.lr, init=start[i : i + 1]).vectors
            for i in range(args.num)
        ]
        results["sequential"] = torch.cat(rows)

    def naive() -> None:
        results["naive"] = naive_train(handle, batch, mask, base, source, target, start, args.radius, args.steps, args.lr)

    def reference() -> None:
        results["reference"] = naive_train(
            handle, batch, mask, base, source, target, start, args.radius, args.steps, args.lr, full=True
        )

    variants: dict[str, Callable[[], None]] = {"batched": batched, "sequential": sequential}
    if not args.no_naive:
        variants["naive"] = naive
    if args.reference:
        variants["reference"] = reference
    descriptions = {
        "batched": f"train_melbo, {args.num} vectors as one [k, hidden] parameter (one slice replay per step)",
        "sequential": f"train_melbo called {args.num} times with one vector each (same cached slice)",
        "naive": "one vector at a time through the model: source-block hook, early exit after the target block",
        "reference": "one vector at a time through the whole model incl. LM head (output_hidden_states), as the reference code",
    }
    raw: dict[str, list[float]] = {name: [] for name in variants}
    raw_cpu: dict[str, list[float]] = {name: [] for name in variants}
    foreign: dict[str, list[float | None]] = {name: [] for name in variants}
    discarded: dict[str, list[float]] = {name: [] for name in variants}
    warmup: dict[str, float] = {}
    steps_backup = args.steps
    args.steps = 1
    for name, fn in variants.items():  # warm-up: kernels, allocator, cold guest memory
        tick = time.perf_counter()
        fn()
        warmup[name] = time.perf_counter() - tick
    args.steps = steps_backup
    names = list(variants)
    for round_index in range(args.repeats):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            for attempt in range(args.retries + 1):
                gc.collect()
                mark = METER.sample()
                cpu_tick = time.process_time()
                tick = time.perf_counter()
                variants[name]()
                seconds = time.perf_counter() - tick
                cpu_seconds = time.process_time() - cpu_tick
                share = METER.foreign_share(mark)
                if share is not None and share > args.max_foreign_load and attempt < args.retries:
                    discarded[name].append(seconds)
                    console.print(f"[yellow]{name}: {seconds:.1f} s with {share:.0%} foreign CPU load; retrying[/]")
                    continue
                raw[name].append(seconds)
                raw_cpu[name].append(cpu_seconds)
                foreign[name].append(share)
                break
            console.print(f"round {round_index + 1}: {name} {raw[name][-1]:.2f} s (process CPU {raw_cpu[name][-1]:.2f} s)")
    medians = {name: statistics.median(values) for name, values in raw.items()}
    cpu_medians = {name: statistics.median(values) for name, values in raw_cpu.items()}
    per_s = {name: args.num / medians[name] for name in medians}
    comparisons = {}
    for other in [name for name in names if name != "batched"]:
        paired = [raw[other][i] / raw["batched"][i] for i in range(len(raw["batched"]))]
        value = per_s["batched"] / per_s[other]
        cpu_value = cpu_medians[other] / cpu_medians["batched"]
        comparisons[f"batched_over_{other}"] = {
            "value": value,
            "paired_median": statistics.median(paired),
            "paired_min": min(paired),
            "paired_max": max(paired),
            "cpu_time_value": cpu_value,
            "goal": GOAL,
            "goal_op": ">=",
            "met": bool(value >= GOAL),
        }
    agreement = {
        f"max_vector_diff_batched_vs_{other}": float((results["batched"] - results[other]).abs().max())
        for other in names
        if other != "batched"
    }
    return {
        "benchmark": "reptune-discovery",
        "schema": 1,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "foreign_load_before_start": idle_share,
        "precision": args.precision,
        "model": {
            k: v for k, v in handle.describe().items() if k in {"model_id", "revision", "num_layers", "hidden_size", "device"}
        },
        "config": {
            "num_vectors": args.num,
            "steps": args.steps,
            "lr": args.lr,
            "radius": args.radius,
            "source": source,
            "target": target,
            "blocks_replayed": target - source,
            "prompts": len(texts),
            "real_tokens": int(batch.attention_mask.sum()),
            "padded_shape": list(batch.input_ids.shape),
            "repeats": args.repeats,
            "seed": args.seed,
            "order": "interleaved, rotated each round",
        },
        "notes": [
            "vectors/s = num_vectors / median seconds of the training loop (same steps, same starting vectors, same updates).",
            "The source-activation cache is built once before timing (cache_s) and shared by batched and sequential.",
            (
                "naive: a forward hook at the source block adds theta; the forward pass stops after the target block; "
                "reference: the same through the whole model and LM head, as the MELBO reference code."
            ),
            "max_vector_diff_*: the variants end at the same vectors up to floating-point differences.",
            (
                "cpu_time_value: the same ratio from this process's CPU time (user + sys), less sensitive to other processes "
                "than wall time; with --threads 1 it is close to pure compute time."
            ),
        ],
        "results": {
            "vectors_per_s": per_s,
            **comparisons,
            **agreement,
            "cache_s": cache_s,
            "seconds_per_step_per_vector": {name: medians[name] / (args.steps * args.num) for name in medians},
        },
        "variants": {
            name: {
                "description": descriptions[name],
                "median_s": medians[name],
                "raw_s": raw[name],
                "median_cpu_s": cpu_medians[name],
                "raw_cpu_s": raw_cpu[name],
                "warmup_s": warmup[name],
                "foreign_load": foreign[name],
                "discarded_s": discarded[name],
            }
            for name in names
        },
        "load_seconds": load_s,
        "max_foreign_load": args.max_foreign_load,
    }


def print_report(report: dict[str, Any], console: Console) -> None:
    config = report["config"]
    table = Table(
        title=f"discovery benchmark: MELBO k={config['num_vectors']}, {config['steps']} steps, "
        f"{config['blocks_replayed']} blocks, {config['prompts']} prompts ({report['precision']})"
    )
    for column in ("variant", "median s", "CPU s", "vectors/s", "speed-up", "paired", "by CPU", "goal"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    results = report["results"]
    for name, item in report["variants"].items():
        comparison = results.get(f"batched_over_{name}")
        if comparison is None:
            cells = ["-", "-", "-", "-"]
        else:
            cells = [
                f"{comparison['value']:.2f}x",
                f"{comparison['paired_min']:.2f}-{comparison['paired_max']:.2f}",
                f"{comparison['cpu_time_value']:.2f}x",
                ("[green]met[/]" if comparison["met"] else "[red]missed[/]") + f" >={GOAL:g}x",
            ]
        table.add_row(
            name, f"{item['median_s']:.2f}", f"{item['median_cpu_s']:.2f}", f"{results['vectors_per_s'][name]:.3f}", *cells
        )
    console.print(table)
    for key, value in results.items():
        if key.startswith("max_vector_diff"):
            console.print(f"{key}: {value:.2e}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--num", type=int, default=8, help="vectors (k)")
    parser.add_argument("--steps", type=int, default=5, help="MELBO steps per vector (same for every variant)")
    parser.add_argument(
        "--prompts",
        type=int,
        default=1,
        choices=range(1, len(PROMPTS) + 1),
        metavar=f"1..{len(PROMPTS)}",
        help="training prompts (the paper's demos use one)",
    )
    parser.add_argument("--source", type=int, default=None, help="source layer (default 7, as in the paper)")
    parser.add_argument("--target", type=int, default=None, help="target layer (default num_layers - 8, as in the paper)")
    parser.add_argument("--radius", type=float, default=16.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved measured rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive (through-the-model, early exit) baseline")
    parser.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the reference code's way (whole model + LM head per step)",
    )
    parser.add_argument("--max-foreign-load", type=float, default=0.10)
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.steps < 1 or args.num < 2:
        parser.error("--repeats and --steps must be >= 1 and --num >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=max(120, Console().width))
    report = run(args, console)
    write_json_atomic(args.out, report)
    print_report(report, console)
    console.print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
