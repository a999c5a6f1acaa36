#!/usr/bin/env python
"""Core performance benchmark for reptune on the embedded model (SmolLM2-135M-Instruct).

Run on demand (never part of the test suite)::

    .venv/bin/python benchmarks/bench_core.py [--precision bf16|fp32] [--repeats N] [--out PATH]

It measures, side by side in one process, with the same precision for every variant:

(a) all-layer activation extraction (``read_activations(..., "all", "last")``) over one bare
    batched forward pass of the base model without the LM head            goal <= 1.10
(b) one middle layer (layer 15 of 30) extraction over the same bare pass   goal <= 0.45
(c) steered / unsteered greedy generation throughput (tokens per second)   goal >= 0.97

Every variant is run once as warm-up, then ``--repeats`` rounds in which the variants are
interleaved (A B C ... A B C ...); medians are reported. Results go atomically to
``benchmarks/results/core.json`` (see benchmarks/README.md for the meaning of each field).
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
if (REPO / "src" / "reptune").is_dir() and str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))  # benchmark the checkout this file belongs to

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from rich.console import Console
from rich.table import Table

import reptune
from reptune._io import write_json_atomic
from reptune.activations import tokenize_examples

DEFAULT_OUT = HERE / "results" / "core.json"

GOALS = {
    "a_all_layers_over_bare": ("<=", 1.10),
    "b_middle_layer_over_bare": ("<=", 0.45),
    "c_steered_over_unsteered_tokens_per_s": (">=", 0.97),
}

# 16 short user prompts for the generation benchmark (chat template applied by generate()).
GEN_PROMPTS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "How do birds fly?",
    "Tell me a short joke.",
    "Is the sky green?",
    "What is two plus two?",
    "Describe a cat in one sentence.",
    "Why is the sea salty?",
    "Give me a tip for sleeping well.",
    "What do bees make?",
    "Who wrote Hamlet?",
    "What is the boiling point of water?",
    "Suggest a name for a dog.",
    "How many legs does a spider have?",
    "What is photosynthesis?",
    "Say something kind.",
]


GEN_PAIR = ("generate_unsteered", "generate_steered")


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


class CpuMeter:
    """CPU time used by *other* processes while a measurement ran (Linux /proc only).

    On a 2-core machine a second busy process halves the cores torch's OpenMP pool can use and
    makes its barriers stall: a forward pass can take 10-40x longer. Each timing therefore
    records the share of the machine's CPU time that went to other processes, and runs above
    ``--max-foreign-load`` are repeated.
    """

    def __init__(self) -> None:
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.ncpu = os.cpu_count() or 1
        self.available = os.path.exists("/proc/stat") and os.path.exists("/proc/self/stat")

    def _busy_total(self) -> int:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(x) for x in handle.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal [guest guest_nice are inside user/nice]
        return fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + (fields[7] if len(fields) > 7 else 0)

    def _own(self) -> int:
        with open("/proc/self/stat", encoding="ascii") as handle:
            text = handle.read()
        after = text[text.rindex(")") + 2 :].split()
        return int(after[11]) + int(after[12])  # utime + stime, all threads

    def sample(self) -> tuple[int, int, float] | None:
        if not self.available:
            return None
        return self._busy_total(), self._own(), time.perf_counter()

    def foreign_share(self, start: tuple[int, int, float] | None) -> float | None:
        """Fraction of all cores' time spent by other processes since ``start``."""
        end = self.sample()
        if start is None or end is None:
            return None
        wall = end[2] - start[2]
        if wall * self.hz * self.ncpu < 50:  # under ~50 clock ticks the estimate is too coarse
            return None
        foreign_ticks = max(0, (end[0] - start[0]) - (end[1] - start[1]))
        return foreign_ticks / (wall * self.hz * self.ncpu)


METER = CpuMeter()


def _timed(fn: Callable[[], Any]) -> tuple[float, Any, float | None]:
    gc.collect()
    mark = METER.sample()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return seconds, result, METER.foreign_share(mark)


def idle_check(seconds: float = 1.0) -> float | None:
    """Foreign CPU share over a short idle wait (before the benchmark starts)."""
    mark = METER.sample()
    time.sleep(seconds)
    return METER.foreign_share(mark)


def _probe_fn(dtype: torch.dtype) -> Callable[[], None]:
    """A fixed small matmul workload (cache-resident, compute-bound): its spread shows CPU noise."""
    a = torch.randn(256, 576).to(dtype)
    b = torch.randn(576, 1536).to(dtype)

    def probe() -> None:
        for _ in range(40):
            a @ b

    return probe


def _memory_probe_fn() -> Callable[[], None]:
    """Copies 256 MB a few times (memory-bound, like decoding): its spread shows memory-bandwidth noise."""
    source = torch.ones(64 * 1024 * 1024)
    target = torch.empty_like(source)

    def probe() -> None:
        for _ in range(4):
            target.copy_(source)

    return probe


def machine_info() -> dict[str, Any]:
    cpu_model = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import transformers

    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": cpu_model or platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "reptune": reptune.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn_enabled": bool(torch.backends.mkldnn.is_available()),
    }


def build_variants(handle: Any, args: argparse.Namespace) -> tuple[dict[str, Callable[[], Any]], dict[str, str], dict[str, Any]]:
    """The timed callables, a description of each, and the fixed inputs' facts."""
    pairs, origin = reptune.load_contrast_pairs("honesty", handle.tokenizer, limit=args.pairs)
    inputs = [pair.positive for pair in pairs] + [pair.negative for pair in pairs]
    batch_size = args.batch_size
    device = handle.device
    # bare baseline: tokenised up front (same function, same padding side as read_activations)
    batches = [
        tokenize_examples(handle.tokenizer, inputs[i : i + batch_size], padding_side="left", device=device)
        for i in range(0, len(inputs), batch_size)
    ]
    base = handle.model.model  # the decoder stack + final norm, no LM head
    layer = args.layer if args.layer is not None else handle.num_layers // 2

    def bare_forward() -> None:
        with torch.inference_mode(), handle.autocast():
            for batch in batches:
                base(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids,
                    use_cache=False,
                )

    def full_forward_with_head() -> None:
        with torch.inference_mode(), handle.autocast():
            for batch in batches:
                handle.model(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids,
                    use_cache=False,
                )

    def tokenize_only() -> None:
        for i in range(0, len(inputs), batch_size):
            tokenize_examples(handle.tokenizer, inputs[i : i + batch_size], padding_side="left", device=device)

    def extract_all() -> dict[int, torch.Tensor]:
        return reptune.read_activations(handle, inputs, "all", "last", batch_size=batch_size, progress=False)

    def extract_middle() -> dict[int, torch.Tensor]:
        return reptune.read_activations(handle, inputs, [layer], "last", batch_size=batch_size, progress=False)

    prompts = (
        GEN_PROMPTS[: args.gen_prompts]
        if args.gen_prompts <= len(GEN_PROMPTS)
        else (GEN_PROMPTS * (args.gen_prompts // len(GEN_PROMPTS) + 1))[: args.gen_prompts]
    )
    generator = torch.Generator().manual_seed(args.seed)
    vec = torch.randn(handle.hidden_size, generator=generator)
    vec = vec / vec.norm() * args.vec_norm

    def gen_unsteered() -> list[list[int]]:
        return reptune.generate(handle, prompts, max_new_tokens=args.max_new_tokens, batch_size=batch_size, return_token_ids=True)

    def gen_steered() -> list[list[int]]:
        with reptune.steer(handle, {layer: vec}, multiplier=args.multiplier):
            return reptune.generate(
                handle, prompts, max_new_tokens=args.max_new_tokens, batch_size=batch_size, return_token_ids=True
            )

    variants: dict[str, Callable[[], Any]] = {}
    descriptions: dict[str, str] = {}
    if not args.skip_extraction:
        variants.update({"bare_forward": bare_forward, "extract_all_layers": extract_all, "extract_middle_layer": extract_middle})
        descriptions.update(
            {
                "bare_forward": "handle.model.model(...) (no LM head, use_cache=False) over the pre-tokenised batches",
                "extract_all_layers": 'read_activations(handle, inputs, "all", "last", batch_size) incl. tokenisation',
                "extract_middle_layer": f'read_activations(handle, inputs, [{layer}], "last", batch_size) incl. tokenisation',
            }
        )
        if not args.no_reference:
            variants.update({"tokenize_only": tokenize_only, "full_forward_with_lm_head": full_forward_with_head})
            descriptions.update(
                {
                    "tokenize_only": "tokenize_examples over the same batches (what reptune's timings include on top)",
                    "full_forward_with_lm_head": "handle.model(...) with the LM head over all positions (reference only)",
                }
            )
    if not args.skip_generation:
        variants.update({"generate_unsteered": gen_unsteered, "generate_steered": gen_steered})
        descriptions.update(
            {
                "generate_unsteered": f"reptune.generate(handle, {len(prompts)} prompts, max_new_tokens={args.max_new_tokens}, "
                f"batch_size={batch_size}), greedy",
                "generate_steered": f"same inside steer(handle, {{{layer}: vec}}, multiplier={args.multiplier}), |vec|={args.vec_norm}",
            }
        )
    if args.probe:
        variants["probe_matmul"] = _probe_fn(torch.bfloat16 if handle.autocast_dtype == torch.bfloat16 else torch.float32)
        descriptions["probe_matmul"] = "fixed 40x (256x576 @ 576x1536) matmul; its spread measures CPU noise"
        variants["probe_memory"] = _memory_probe_fn()
        descriptions["probe_memory"] = "4 copies of a 256 MB tensor; its spread measures memory-bandwidth noise"
    lengths = [int(b.input_ids.shape[1]) for b in batches]
    facts = {
        "data_origin": origin,
        "num_pairs": len(pairs),
        "num_inputs": len(inputs),
        "num_batches": len(batches),
        "padded_batch_lengths": {"min": min(lengths), "median": _median(lengths), "max": max(lengths)},
        "real_tokens": int(sum(int(b.attention_mask.sum()) for b in batches)),
        "layer": layer,
        "ideal_middle_ratio_blocks": (layer + 1) / handle.num_layers,
        "gen_prompts": prompts,
        "steering_vector_norm": float(vec.norm()),
    }
    return variants, descriptions, facts


def _minor_faults() -> int:
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
    except (ImportError, OSError):
        return 0


def diagnose_extraction(handle: Any, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Where does read_activations spend time beyond the bare forward? (``--diagnose``)

    Component variants are interleaved *per batch* (rotating order), which cancels the slow
    drifts of a shared machine far better than whole-run interleaving. Uses reptune internals
    (capture_layers, run_until), so it may need updating when those change.
    """
    from reptune.activations import _StopForward, capture_layers, run_until
    from reptune.sites import Positions

    pairs, _ = reptune.load_contrast_pairs("honesty", handle.tokenizer, limit=args.pairs)
    inputs = [pair.positive for pair in pairs] + [pair.negative for pair in pairs]
    size = args.batch_size
    chunks = [inputs[i : i + size] for i in range(0, len(inputs), size)]
    batches = [tokenize_examples(handle.tokenizer, chunk, padding_side="left", device=handle.device) for chunk in chunks]
    last = handle.num_layers - 1
    every = list(range(handle.num_layers))
    layer = args.layer if args.layer is not None else handle.num_layers // 2
    spec = Positions.parse("last")

    def weights_for(batch: Any) -> torch.Tensor:
        mask = spec.mask(batch.attention_mask.cpu(), batch.offsets, batch.texts, batch.completion_starts).to(handle.device)
        return (mask.float() / mask.sum(-1, keepdim=True).float()).unsqueeze(-1)

    def bare(batch: Any, chunk: Any) -> None:
        handle.model.model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids, use_cache=False
        )

    def causal_lm_stop_at_last(batch: Any, chunk: Any) -> None:
        with capture_layers(handle, [last], stop_after=last):
            run_until(handle, batch)

    def capture_all_no_pooling(batch: Any, chunk: Any) -> None:
        with capture_layers(handle, every, stop_after=last):
            run_until(handle, batch)

    def capture_all_then_pool(batch: Any, chunk: Any) -> None:
        weights = weights_for(batch)
        with capture_layers(handle, every, stop_after=last) as captured:
            run_until(handle, batch)
            for index in every:
                (captured[index].float() * weights).sum(1).cpu()

    def pool_inside_hook(batch: Any, chunk: Any) -> None:
        # the suggested fix: reduce [batch, seq, hidden] to [batch, hidden] in the hook
        weights = weights_for(batch)
        pooled: dict[int, torch.Tensor] = {}
        hooks = []

        def make(index: int) -> Callable[..., None]:
            def hook(_module: Any, _args: Any, output: Any) -> None:
                hidden = output if isinstance(output, torch.Tensor) else output[0]
                pooled[index] = (hidden.float() * weights).sum(1)  # fp32 pooling, as read_activations does
                if index == last:
                    raise _StopForward

            return hook

        for index in every:
            hooks.append(handle.layers[index].register_forward_hook(make(index)))
        try:
            run_until(handle, batch)
        finally:
            for hook in hooks:
                hook.remove()
        for index in every:
            pooled[index].cpu()

    def read_all(batch: Any, chunk: Any) -> None:
        reptune.read_activations(handle, chunk, "all", "last", batch_size=size, progress=False)

    def early_exit_ideal(batch: Any, chunk: Any) -> None:
        with capture_layers(handle, [layer], stop_after=layer):
            try:
                handle.model.model(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids,
                    use_cache=False,
                )
            except _StopForward:
                pass

    def read_middle(batch: Any, chunk: Any) -> None:
        reptune.read_activations(handle, chunk, [layer], "last", batch_size=size, progress=False)

    parts: list[Callable[[Any, Any], None]] = [
        bare,
        causal_lm_stop_at_last,
        capture_all_no_pooling,
        capture_all_then_pool,
        pool_inside_hook,
        read_all,
        early_exit_ideal,
        read_middle,
    ]
    seconds: dict[str, list[float]] = {part.__name__: [] for part in parts}
    faults: dict[str, list[int]] = {part.__name__: [] for part in parts}
    round_foreign: list[float | None] = []
    redone = [0]

    def wait_quiet() -> None:
        start = time.perf_counter()
        share = idle_check()
        while share is not None and share > args.max_foreign_load and time.perf_counter() - start < args.max_wait:
            share = idle_check(2.0)

    with torch.inference_mode(), handle.autocast():
        for part in parts:  # warm-up
            part(batches[0], chunks[0])
        for round_index in range(args.diagnose_rounds):
            acc = dict.fromkeys(seconds, 0.0)
            flt = dict.fromkeys(seconds, 0)
            mark = METER.sample()
            for index, (batch, chunk) in enumerate(zip(batches, chunks)):
                shift = index % len(parts)
                for attempt in range(args.retries + 1):
                    group_mark = METER.sample()
                    times: dict[str, float] = {}
                    group_faults: dict[str, int] = {}
                    for part in parts[shift:] + parts[:shift]:
                        before = _minor_faults()
                        start = time.perf_counter()
                        part(batch, chunk)
                        times[part.__name__] = time.perf_counter() - start
                        group_faults[part.__name__] = _minor_faults() - before
                    share = METER.foreign_share(group_mark)
                    if share is None or share <= args.max_foreign_load or attempt == args.retries:
                        break
                    redone[0] += 1
                    wait_quiet()
                for name, value in times.items():
                    acc[name] += value
                    flt[name] += group_faults[name]
            round_foreign.append(METER.foreign_share(mark))
            for name, values in seconds.items():
                values.append(acc[name])
                faults[name].append(flt[name])
            console.print(
                f"  diagnose round {round_index + 1}/{args.diagnose_rounds}: "
                + " ".join(f"{name}={value:.2f}s" for name, value in acc.items())
            )
    base = seconds["bare"]
    return {
        "method": "per-batch interleaved component timings (rotating order), summed over the batches of one round",
        "rounds": args.diagnose_rounds,
        "foreign_load_per_round": round_foreign,
        "batch_groups_redone_after_disturbance": redone[0],
        "components": {
            name: {
                "median_s": _median(values),
                "paired_ratio_to_bare": _median([v / b for v, b in zip(values, base)]),
                "minor_page_faults_per_batch": _median(faults[name]) / len(batches),
                "raw_s": values,
            }
            for name, values in seconds.items()
        },
    }


def print_diagnosis(diagnosis: dict[str, Any], console: Console) -> None:
    table = Table(title="extraction breakdown (--diagnose, per-batch interleaved)")
    for column in ("component", "median s", "/ bare (paired)", "minor faults / batch"):
        table.add_column(column, justify="left" if column == "component" else "right")
    for name, item in diagnosis["components"].items():
        table.add_row(
            name, f"{item['median_s']:.3f}", f"{item['paired_ratio_to_bare']:.3f}", f"{item['minor_page_faults_per_batch']:.0f}"
        )
    console.print(table)


def ratio_stats(num: list[float], den: list[float], num_ok: list[bool], den_ok: list[bool]) -> dict[str, Any]:
    """Ratios of two variants' timings; disturbed timings (``ok`` False) are left out."""
    num_kept = _kept(num, num_ok)
    den_kept = _kept(den, den_ok)
    both = [(n, d) for n, d, a, b in zip(num, den, num_ok, den_ok) if a and b] or list(zip(num, den))
    paired = [n / d for n, d in both]
    return {
        "ratio_of_medians": _median(num_kept) / _median(den_kept),
        "ratio_of_mins": min(num_kept) / min(den_kept),
        "paired_median": _median(paired),
        "paired_min": min(paired),
        "paired_max": max(paired),
        "rounds_used": {"numerator": len(num_kept), "denominator": len(den_kept), "paired": len(paired)},
    }


def _kept(values: list[float], ok: list[bool]) -> list[float]:
    """The undisturbed values, or all of them when fewer than half are undisturbed."""
    clean = [value for value, good in zip(values, ok) if good]
    return clean if clean and 2 * len(clean) >= len(values) else list(values)


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    autocast = "bf16" if args.precision == "bf16" else None
    t0 = time.perf_counter()
    handle = reptune.load_model(None, autocast=autocast)
    load_s = time.perf_counter() - t0
    console.print(
        f"[bold]reptune core benchmark[/] model={handle.model_id} layers={handle.num_layers} "
        f"precision={args.precision} threads={torch.get_num_threads()} (load {load_s:.1f}s)"
    )
    variants, descriptions, facts = build_variants(handle, args)

    # Force every generated row to exactly max_new_tokens (EOS suppressed until then), so steered and
    # unsteered runs do the same number of decoding steps. reptune.generate() has no min_new_tokens
    # argument, but transformers' generate() falls back to model.generation_config for it.
    gen_config = handle.model.generation_config
    saved_min_new = getattr(gen_config, "min_new_tokens", None)
    if not args.no_force_length:
        gen_config.min_new_tokens = args.max_new_tokens

    raw: dict[str, list[float]] = {name: [] for name in variants}
    foreign: dict[str, list[float | None]] = {name: [] for name in variants}
    discarded: dict[str, list[dict[str, float | None]]] = {name: [] for name in variants}
    tokens: dict[str, list[int]] = {name: [] for name in variants if name.startswith("generate_")}
    row_lengths: dict[str, list[int]] = {}
    warmup: dict[str, float] = {}
    waited: list[float] = []

    def wait_for_quiet() -> float | None:
        """Block (up to --max-wait seconds) until other processes leave the CPU alone."""
        start = time.perf_counter()
        share = idle_check()
        while share is not None and share > args.max_foreign_load and time.perf_counter() - start < args.max_wait:
            share = idle_check(2.0)
        if time.perf_counter() - start > 1.5:
            waited.append(time.perf_counter() - start)
        return share

    busy = idle_check()
    if busy is not None and busy > args.max_foreign_load:
        console.print(
            f"[yellow]warning:[/] other processes use {busy:.0%} of the CPU right now; waiting up to {args.max_wait:.0f}s "
            "for quiet before disturbed timings are retried"
        )
        wait_for_quiet()

    def measure(name: str) -> tuple[float, Any, float | None]:
        for attempt in range(args.retries + 1):
            seconds, result, share = _timed(variants[name])
            if share is None or share <= args.max_foreign_load or attempt == args.retries:
                return seconds, result, share
            discarded[name].append({"seconds": seconds, "foreign_load": share})
            console.print(
                f"    [yellow]{name}: {seconds:.2f}s disturbed ({share:.0%} of the CPU used by other processes), "
                "waiting for quiet and retrying[/]"
            )
            wait_for_quiet()
        raise AssertionError("unreachable")

    try:
        for name, fn in variants.items():
            for _ in range(args.warmup):
                seconds, _, _ = _timed(fn)
                warmup[name] = seconds
            console.print(f"  warm-up {name}: {warmup.get(name, float('nan')):.2f}s")
        for round_index in range(args.repeats):
            order = list(variants)
            if args.rotate:
                shift = round_index % len(order)
                order = order[shift:] + order[:shift]
            line = []
            for name in order:
                if name in GEN_PAIR:
                    if name != next(n for n in order if n in GEN_PAIR):
                        continue  # both generation sides are measured together, below
                    # ABBA (alternating which side starts each round): cancels linear drift within the block
                    first, second = GEN_PAIR if round_index % 2 == 0 else GEN_PAIR[::-1]
                    sequence = [first, second, second, first] * args.gen_blocks
                    sums = dict.fromkeys(GEN_PAIR, 0.0)
                    counts = dict.fromkeys(GEN_PAIR, 0)
                    worst: dict[str, float | None] = dict.fromkeys(GEN_PAIR)
                    for gen_name in sequence:
                        seconds, result, share = measure(gen_name)
                        sums[gen_name] += seconds
                        lengths = [len(row) for row in result]
                        counts[gen_name] += sum(lengths)
                        row_lengths[gen_name] = lengths
                        if share is not None:
                            worst[gen_name] = max(share, worst[gen_name] or 0.0)
                    for gen_name in GEN_PAIR:
                        raw[gen_name].append(sums[gen_name])
                        foreign[gen_name].append(worst[gen_name])
                        tokens[gen_name].append(counts[gen_name])
                        line.append(f"{gen_name}={sums[gen_name]:.2f}s")
                    continue
                seconds, result, share = measure(name)
                raw[name].append(seconds)
                foreign[name].append(share)
                line.append(f"{name}={seconds:.2f}s")
            console.print(f"  round {round_index + 1}/{args.repeats}: " + " ".join(line))
    finally:
        gen_config.min_new_tokens = saved_min_new

    diagnosis = diagnose_extraction(handle, args, console) if args.diagnose else None

    ok = {name: [share is None or share <= args.max_foreign_load for share in shares] for name, shares in foreign.items()}
    medians = {name: _median(_kept(values, ok[name])) for name, values in raw.items()}
    results: dict[str, Any] = {}
    if "bare_forward" in raw:
        a = ratio_stats(raw["extract_all_layers"], raw["bare_forward"], ok["extract_all_layers"], ok["bare_forward"])
        b = ratio_stats(raw["extract_middle_layer"], raw["bare_forward"], ok["extract_middle_layer"], ok["bare_forward"])
        results["a_all_layers_over_bare"] = {"value": a["paired_median"], **a}
        results["b_middle_layer_over_bare"] = {
            "value": b["paired_median"],
            **b,
            "ideal_block_fraction": facts["ideal_middle_ratio_blocks"],
        }
        if "full_forward_with_lm_head" in raw:
            results["b_middle_layer_over_bare"]["vs_full_forward_with_lm_head"] = (
                medians["extract_middle_layer"] / medians["full_forward_with_lm_head"]
            )
            results["a_all_layers_over_bare"]["vs_full_forward_with_lm_head"] = (
                medians["extract_all_layers"] / medians["full_forward_with_lm_head"]
            )
        if "tokenize_only" in raw:
            results["a_all_layers_over_bare"]["tokenization_share_of_bare"] = medians["tokenize_only"] / medians["bare_forward"]
    if "generate_unsteered" in raw:
        tps = {name: [tok / sec for tok, sec in zip(tokens[name], raw[name])] for name in tokens}
        steered_ok, unsteered_ok = ok["generate_steered"], ok["generate_unsteered"]
        pairs_ok = [
            (s, u) for s, u, a, b in zip(tps["generate_steered"], tps["generate_unsteered"], steered_ok, unsteered_ok) if a and b
        ] or list(zip(tps["generate_steered"], tps["generate_unsteered"]))
        paired = [s / u for s, u in pairs_ok]
        kept_tps = {name: _kept(values, ok[name]) for name, values in tps.items()}
        med_tps = {name: _median(values) for name, values in kept_tps.items()}
        results["c_steered_over_unsteered_tokens_per_s"] = {
            "value": _median(paired),
            "ratio_of_medians": med_tps["generate_steered"] / med_tps["generate_unsteered"],
            "ratio_of_best": max(kept_tps["generate_steered"]) / max(kept_tps["generate_unsteered"]),
            "paired_median": _median(paired),
            "paired_min": min(paired),
            "paired_max": max(paired),
            "tokens_per_s_median": med_tps,
            "tokens_per_s_raw": tps,
            "generated_tokens_raw": tokens,
            "row_lengths_last_round": row_lengths,
            "equal_length_forced": not args.no_force_length,
            "equal_token_counts": len({t for values in tokens.values() for t in values}) == 1,
        }
    for key, (op, goal) in GOALS.items():
        if key in results:
            value = results[key]["value"]
            results[key].update({"goal": goal, "goal_op": op, "met": bool(value <= goal if op == "<=" else value >= goal)})

    kept = {name: _kept(values, ok[name]) for name, values in raw.items()}
    noisy = {name: (max(v) - min(v)) / _median(v) for name, v in kept.items() if len(v) > 1}
    report = {
        "benchmark": "reptune-core",
        "schema": 1,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "precision": args.precision,
        "autocast_dtype": None if handle.autocast_dtype is None else str(handle.autocast_dtype).removeprefix("torch."),
        "weights_dtype": str(handle.dtype).removeprefix("torch."),
        "model": {
            k: v
            for k, v in handle.describe().items()
            if k in {"model_id", "revision", "num_layers", "hidden_size", "num_parameters", "device"}
        },
        "config": {
            "pairs": args.pairs,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "layer": facts["layer"],
            "max_new_tokens": args.max_new_tokens,
            "gen_prompts": args.gen_prompts,
            "gen_blocks": args.gen_blocks,
            "multiplier": args.multiplier,
            "vector_norm": args.vec_norm,
            "seed": args.seed,
            "order": "interleaved" + (", rotated each round" if args.rotate else ", fixed order"),
        },
        "inputs": facts,
        "notes": [
            (
                "The bare baseline runs on batches tokenised before timing (tokenize_examples, left padding); reptune's "
                "read_activations timings include its own tokenisation, position masks and fp32 pooling. 'tokenize_only' "
                "shows how much tokenisation alone costs."
            ),
            "Both extraction and the bare baseline run under torch.inference_mode() and the handle's autocast.",
            (
                "Generation: model.generation_config.min_new_tokens is set to max_new_tokens during the benchmark, so "
                "both sides generate exactly the same number of tokens (EOS suppressed); tokens/s is computed per side "
                "from its own returned token ids (return_token_ids=True). Each round runs the two sides as ABBA "
                "(U S S U, then S U U S in the next round), so a generation timing is the sum of 2 x gen_blocks calls."
            ),
            (
                "Ratios: 'value' is the median over rounds of the per-round ratio variant/baseline (both measured in the "
                "same round, close in time, so slow machine drifts cancel); 'ratio_of_medians' is "
                "median(variant)/median(baseline) and 'ratio_of_mins' min/min. Timings during "
                "which other processes used more than max_foreign_load of the CPU are left out of medians, min/max and "
                "paired ratios (kept in raw_s, flagged by foreign_load) unless fewer than half are clean."
            ),
        ],
        "results": results,
        "variants": {
            name: {
                "description": descriptions.get(name, ""),
                "median_s": medians[name],
                "min_s": min(kept[name]),
                "max_s": max(kept[name]),
                "timings_used": len(kept[name]),
                "spread": noisy.get(name),
                "warmup_s": warmup.get(name),
                "raw_s": raw[name],
                "foreign_load": foreign[name],
                "discarded": discarded[name],
            }
            for name in raw
        },
        "diagnosis": diagnosis,
        "load_seconds": load_s,
        "foreign_load_before_start": busy,
        "waited_for_quiet_s": waited,
        "max_foreign_load": args.max_foreign_load,
    }
    return report


def print_report(report: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"reptune core benchmark ({report['precision']}, {report['machine']['torch_threads']} threads, "
        f"torch {report['machine']['torch']})"
    )
    table.add_column("metric")
    table.add_column("value (paired median)", justify="right")
    table.add_column("paired min-max", justify="right")
    table.add_column("median/median", justify="right")
    table.add_column("goal", justify="right")
    table.add_column("status")
    labels = {
        "a_all_layers_over_bare": "(a) all-layer extraction / bare forward",
        "b_middle_layer_over_bare": f"(b) layer {report['config']['layer']} extraction / bare forward",
        "c_steered_over_unsteered_tokens_per_s": "(c) steered / unsteered tokens/s",
    }
    for key, label in labels.items():
        item = report["results"].get(key)
        if item is None:
            continue
        status = "[green]met[/]" if item["met"] else "[red]missed[/]"
        table.add_row(
            label,
            f"{item['value']:.3f}",
            f"{item['paired_min']:.3f}-{item['paired_max']:.3f}",
            f"{item['ratio_of_medians']:.3f}",
            f"{item['goal_op']} {item['goal']:.2f}",
            status,
        )
    console.print(table)
    vt = Table(title="variants (seconds)")
    for column in ("variant", "median", "min", "max", "spread", "n"):
        vt.add_column(column, justify="left" if column == "variant" else "right")
    for name, item in report["variants"].items():
        spread = item["spread"]
        mark = "[yellow]" if spread is not None and spread > 0.15 else ""
        vt.add_row(
            name,
            f"{item['median_s']:.3f}",
            f"{item['min_s']:.3f}",
            f"{item['max_s']:.3f}",
            f"{mark}{spread:.1%}" if spread is not None else "-",
            str(len(item["raw_s"])),
        )
    console.print(vt)
    if report.get("diagnosis"):
        print_diagnosis(report["diagnosis"], console)
    gen = report["results"].get("c_steered_over_unsteered_tokens_per_s")
    if gen:
        tps = gen["tokens_per_s_median"]
        console.print(
            f"tokens/s: unsteered {tps['generate_unsteered']:.1f}, steered {tps['generate_steered']:.1f} "
            f"(equal token counts: {gen['equal_token_counts']})"
        )
    b = report["results"].get("b_middle_layer_over_bare")
    if b:
        console.print(
            f"(b) block-count floor: {b['ideal_block_fraction']:.3f} "
            f"({report['config']['layer'] + 1} of {report['model']['num_layers']} blocks run)"
            + (
                f"; vs full forward with LM head: {b['vs_full_forward_with_lm_head']:.3f}"
                if "vs_full_forward_with_lm_head" in b
                else ""
            )
        )
    noisy = [name for name, item in report["variants"].items() if item["spread"] is not None and item["spread"] > 0.15]
    if noisy:
        console.print(
            f"[yellow]warning:[/] timings of {', '.join(noisy)} spread over 15% (max-min)/median: the machine was "
            "noisy (the reported values are per-round paired ratios, which cancel slow drifts; rerun with more --repeats "
            "if the paired min-max range is wide)"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument(
        "--precision",
        choices=("bf16", "fp32"),
        default="bf16",
        help="bf16: fp32 weights under bf16 autocast; fp32: no autocast (same for every variant)",
    )
    parser.add_argument("--repeats", type=int, default=7, help="interleaved measured rounds (>= 3)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up runs of each variant before measuring")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path (written atomically)")
    parser.add_argument("--pairs", type=int, default=96, help="honesty pairs (inputs = 2 x pairs)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--layer", type=int, default=None, help="middle layer for (b) and steering (default num_layers // 2)")
    parser.add_argument("--gen-prompts", type=int, default=16)
    parser.add_argument(
        "--gen-blocks",
        type=int,
        default=1,
        help="ABBA blocks of generation per round (each block: 2 unsteered + 2 steered generate() calls)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--multiplier", type=float, default=4.0)
    parser.add_argument("--vec-norm", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--max-foreign-load",
        type=float,
        default=0.10,
        help="retry a timing when other processes used more than this share of all CPU time meanwhile",
    )
    parser.add_argument("--retries", type=int, default=3, help="retries per disturbed timing (then it is kept)")
    parser.add_argument(
        "--max-wait", type=float, default=120.0, help="seconds to wait for other processes to finish before a retry"
    )
    parser.add_argument(
        "--no-force-length", action="store_true", help="let EOS end rows early (tokens/s then uses each side's own token counts)"
    )
    parser.add_argument("--no-reference", action="store_true", help="skip tokenize_only and full_forward_with_lm_head")
    parser.add_argument("--no-probe", dest="probe", action="store_false", help="skip the machine-noise matmul probe")
    parser.add_argument("--no-rotate", dest="rotate", action="store_false", help="same variant order every round")
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="also break extraction time into components (per-batch interleaved, with page-fault counts)",
    )
    parser.add_argument("--diagnose-rounds", type=int, default=3)
    parser.add_argument("--skip-extraction", action="store_true")
    parser.add_argument("--skip-generation", action="store_true")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.skip_extraction and args.skip_generation:
        parser.error("nothing to measure")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 120)
    report = run(args, console)
    write_json_atomic(args.out, report)
    print_report(report, console)
    console.print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
