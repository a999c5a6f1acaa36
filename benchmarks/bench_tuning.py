"""Tuning cost benchmark: ``honesty`` preset (representation + token loss) over ``truth`` (token only).

On the embedded model, same batch, same trained layers, bf16 autocast over fp32 weights. Each
preset runs in its own fresh process (so peak memory is not polluted by the other), twice,
alternating (truth, honesty, truth, honesty); per run: median step time after 2 warm-up steps
and the peak resident memory added by training (Linux ``VmHWM`` reset after loading).
Goals: time ratio <= 1.10, memory ratio <= 1.05.

    python benchmarks/bench_tuning.py [--steps 12] [--batch-size 8] [--layers 10-17] [--out benchmarks/results/tuning.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = r"""
import json, os, statistics, sys, time
import torch
import reptune
from reptune.tuning import TuneConfig, load_tune_items
from reptune.tuning.trainer import Tuner
preset, steps, batch_size, layers, vector_path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
handle = reptune.load_model(None, autocast="bf16")
vector = reptune.load_vector(vector_path, handle)
items, _ = reptune.tuning.load_tune_items("honesty", handle.tokenizer, limit=256)
config = TuneConfig.from_preset(preset, layers=layers, rep_layers="15", batch_size=batch_size, steps=steps, val_fraction=0.0)
tuner = Tuner(handle, config, items, vector if config.uses_vector else None)
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
base = rss("VmRSS:")
with open("/proc/self/clear_refs", "w") as handle_file:
    handle_file.write("5")  # reset the peak-RSS counter
times = []
for step in range(steps):
    batch = tuner._tokenize(tuner.batches(step))
    start = time.perf_counter()
    terms = tuner.losses(batch, retain_index=None)
    terms["loss"].backward()
    tuner.optimizer.step()
    tuner.optimizer.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - start)
print(json.dumps({"preset": preset, "step_s": times, "median_step_s": statistics.median(times[2:]),
                  "peak_extra_bytes": rss("VmHWM:") - base}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--layers", default="10-17")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "tuning.json"))
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import reptune
    from reptune._io import write_json_atomic

    with tempfile.TemporaryDirectory() as tmp:
        vector_path = Path(tmp) / "honesty.safetensors"
        handle = reptune.load_model(None, autocast="bf16")
        pairs, origin = reptune.load_contrast_pairs("honesty", handle.tokenizer, limit=64)
        vector, _ = reptune.extract_vector(handle, pairs, "15", dataset=origin, scan=False, progress=False)
        vector.save(vector_path)
        del handle
        runs: dict[str, list[dict]] = {"truth": [], "honesty": []}
        for _ in range(args.rounds):
            for preset in ("truth", "honesty"):
                started = time.perf_counter()
                out = subprocess.run(
                    [sys.executable, "-c", WORKER, preset, str(args.steps), str(args.batch_size), args.layers, str(vector_path)],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                record = json.loads(out.stdout.strip().splitlines()[-1])
                record["wall_s"] = time.perf_counter() - started
                runs[preset].append(record)
                print(
                    f"{preset}: median step {record['median_step_s']:.3f} s, peak extra {record['peak_extra_bytes'] / 2**20:.0f} MiB"
                )
    step = {preset: statistics.median(r["median_step_s"] for r in records) for preset, records in runs.items()}
    memory = {preset: statistics.median(r["peak_extra_bytes"] for r in records) for preset, records in runs.items()}
    ratios = {
        "time_honesty_over_truth": step["honesty"] / step["truth"],
        "memory_honesty_over_truth": memory["honesty"] / memory["truth"],
    }
    goals = {"time_honesty_over_truth": 1.10, "memory_honesty_over_truth": 1.05}
    result = {
        "benchmark": "tuning",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": vars(args),
        "median_step_s": step,
        "peak_extra_bytes": memory,
        "ratios": ratios,
        "goals": {key: f"<= {value}" for key, value in goals.items()},
        "goals_met": {key: ratios[key] <= goals[key] for key in goals},
        "runs": runs,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }
    write_json_atomic(args.out, result)
    print(json.dumps({"ratios": ratios, "goals_met": result["goals_met"]}, indent=2))


if __name__ == "__main__":
    main()
