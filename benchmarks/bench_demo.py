#!/usr/bin/env python
"""Time the main job (``reptune demo``) stage by stage and write the figures to a file.

    .venv/bin/python benchmarks/bench_demo.py                      # precision auto
    .venv/bin/python benchmarks/bench_demo.py --precision fp32     # force fp32
    .venv/bin/python benchmarks/bench_demo.py --emulate-avx2       # fp32 with AVX2-only kernels
    .venv/bin/python benchmarks/bench_demo.py --set seeds=[0]      # any experiment override

Each run starts from an empty run folder (nothing reused) and writes
``benchmarks/results/demo-<precision>[-avx2].json``: the machine (CPU model, flags, torch's CPU
capability), the resolved precision, the total wall time and every stage's seconds, grouped by
kind (vector, sweep, training, evaluation, ...). The demo runs with a stage worker on a CPU
(``workers: auto``): the stage seconds then overlap and add up to more than the wall time;
``--set workers=1`` times one process. ``--emulate-avx2`` re-runs itself with
``ATEN_CPU_CAPABILITY=avx2``, ``MKL_ENABLE_INSTRUCTIONS=AVX2`` and ``DNNL_MAX_CPU_ISA=AVX2``, so
torch, MKL and oneDNN pick their AVX2 kernels, as on a CPU without AVX-512: this reproduces the
kernel choice, not the clock or the cache sizes of such a machine (a real AVX2-only EPYC measured
14.5 ms for the 512x576 @ 576x1536 fp32 matmul; the ``matmul_ms`` field lets you scale).
Run it on an otherwise idle machine: the figures are wall times.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2"}


def machine_info() -> dict[str, Any]:
    """CPU model, the flags that decide bf16 speed, torch's dispatch level and thread count."""
    import platform

    import torch

    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name") and model is None:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {
        "processor": model or platform.processor(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads(),
        "flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
        "emulated_avx2": all(os.environ.get(k) == v for k, v in AVX2_ENV.items()),
    }


def matmul_ms() -> dict[str, float]:
    """Median time of the 512x576 @ 576x1536 matmul in fp32 and under bf16 autocast (ms)."""
    import torch

    a, b = torch.randn(512, 576), torch.randn(576, 1536)

    def timed(fn: Any, n: int = 15) -> float:
        fn()
        times = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return sorted(times)[n // 2] * 1000

    def bf16() -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return a @ b

    return {"fp32": round(timed(lambda: a @ b), 2), "bf16": round(timed(bf16), 2)}


def stage_kind(name: str) -> str:
    return name.split(":", 1)[0]


def kind_seconds(stages: dict[str, float]) -> dict[str, float]:
    """Stage seconds summed per kind (:func:`stage_kind`), largest first, to 0.1 s."""
    by_kind: dict[str, float] = defaultdict(float)
    for name, seconds in stages.items():
        by_kind[stage_kind(name)] += seconds
    return {kind: round(seconds, 1) for kind, seconds in sorted(by_kind.items(), key=lambda kv: -kv[1])}


def study_of(name: str) -> str | None:
    """The study a stage belongs to (``None``: the paper's study, counter-steering included)."""
    if name.startswith(("se-", "train:se-", "eval:se-")):
        return "sample_efficiency"
    head = stage_kind(name)
    return head if head in ("stacking", "generalisation", "gcg") else None


def study_seconds(stages: dict[str, float]) -> dict[str, float]:
    """Seconds per study (from the run's per-stage timings)."""
    out: dict[str, float] = defaultdict(float)
    for name, seconds in stages.items():
        study = study_of(name)
        if study is not None:
            out[study] += seconds
    return {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def process_busy(run_dir: Path, wall: float, main_pid: int | None = None) -> list[dict[str, Any]]:
    """Per process of the run (main first): stages run, seconds busy in them, and the rest of the
    wall time (waiting, loading, writing the report), from each stage's ``started_at`` and ``pid``;
    the main process is ``main_pid`` (default: this one, which ran the experiment)."""
    import json

    by_pid: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for record_file in (run_dir / "stages").glob("*/stage.json"):
        record = json.loads(record_file.read_text(encoding="utf-8"))
        if "pid" in record and record.get("status") == "done":
            by_pid[int(record["pid"])].append((float(record["started_at"]), float(record["elapsed_s"])))
    main_pid = os.getpid() if main_pid is None else main_pid
    rows = []
    for pid, spans in sorted(by_pid.items(), key=lambda kv: kv[0] != main_pid):
        busy = sum(seconds for _, seconds in spans)
        rows.append({"process": "main" if pid == main_pid else "worker", "stages": len(spans), "busy_s": round(busy, 1), "not_in_a_stage_s": round(wall - busy, 1)})
    return rows


def _first_pid(run_dir: Path) -> int | None:
    """The process that ran the run's first stage: its main process."""
    import json

    records = [json.loads(path.read_text(encoding="utf-8")) for path in (run_dir / "stages").glob("*/stage.json")]
    started = [(float(r["started_at"]), int(r["pid"])) for r in records if "pid" in r and "started_at" in r]
    return min(started)[1] if started else None


def record_finished_run(args: argparse.Namespace) -> int:
    """Write the record of a run that finished elsewhere (its ``results.json`` and stage files)."""
    import json

    from reptune._io import write_json_atomic

    results = json.loads((args.from_run / "results.json").read_text(encoding="utf-8"))
    timings = results.get("timings", {})
    stages = timings.get("stages", {})
    stage_wall = float(timings.get("total_s") or sum(stages.values()))
    wall = args.wall_s if args.wall_s is not None else stage_wall
    by_kind = kind_seconds(stages)
    precision = results.get("model", {}).get("precision", "auto")
    record = {
        "benchmark": "demo", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine_info(),
        "matmul_ms": matmul_ms(), "requested_precision": "auto", "precision": precision, "from_run": str(args.from_run),
        "seeds": results.get("seeds"), "total_s": round(wall, 1), "total_min": round(wall / 60, 2),
        "install_s": args.install_s, "run_s": round(stage_wall, 1),
        "by_kind_s": by_kind,
        "studies_s": study_seconds(stages), "workers": timings.get("workers", 1),
        "processes": process_busy(args.from_run, stage_wall, _first_pid(args.from_run)),
        "stages_s": {k: round(v, 2) for k, v in stages.items()},
    }
    out = args.out or ROOT / "benchmarks" / "results" / f"demo-{precision}-from-run.json"
    write_json_atomic(out, record)
    print(f"demo (recorded from {args.from_run}): {wall / 60:.1f} min in all ({precision}, {record['machine']['cpu_capability']}) -> {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--emulate-avx2", action="store_true", help="AVX2-only kernels (implies fp32 unless --precision says otherwise)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="experiment override, as `reptune run --set`")
    parser.add_argument("--no-studies", action="store_true", help="every study off, as `reptune demo --no-studies` (written to demo-<precision>[-avx2]-no-studies.json)")
    parser.add_argument("--keep", type=Path, default=None, help="run folder to keep (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--from-run", type=Path, default=None, metavar="DIR",
                        help="record a finished run instead of running one (e.g. a fresh clone's `bash scripts/demo.sh`: runs/demo)")
    parser.add_argument("--wall-s", type=float, default=None, help="with --from-run: the command's wall time in seconds, install included")
    parser.add_argument("--install-s", type=float, default=None, help="with --from-run: of that, the seconds scripts/bootstrap.sh took")
    args = parser.parse_args()
    if args.from_run is not None:
        if not (args.from_run / "results.json").is_file():
            parser.error(f"--from-run {args.from_run}: no results.json there (the run folder of a finished run, e.g. runs/demo)")
        return record_finished_run(args)
    if args.wall_s is not None or args.install_s is not None:
        parser.error("--wall-s and --install-s go with --from-run")
    if args.emulate_avx2 and not machine_info()["emulated_avx2"]:
        env = {**os.environ, **AVX2_ENV}
        return subprocess.call([sys.executable, __file__, *sys.argv[1:]], env=env)

    from reptune._io import write_json_atomic
    from reptune.pipeline import builtin_config, load_config, run_experiment
    from reptune.pipeline.studies import STUDIES

    overrides = {f"{name}.enabled": "false" for name in STUDIES} if args.no_studies else {}
    overrides.update(item.split("=", 1) for item in args.set)
    overrides["precision"] = args.precision
    config = load_config(builtin_config("demo"), overrides)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.keep or Path(tmp) / "demo"
        started = time.perf_counter()
        run = run_experiment(config, run_dir, progress=False, command="bench_demo")
        wall = time.perf_counter() - started
        processes = process_busy(run_dir, wall)
    stages = run.results.get("timings", {}).get("stages", {})
    by_kind = kind_seconds(stages)
    precision = run.results.get("model", {}).get("precision", args.precision)
    tag = f"demo-{precision}" + ("-avx2" if args.emulate_avx2 else "") + ("-no-studies" if args.no_studies else "")
    out = args.out or ROOT / "benchmarks" / "results" / f"{tag}.json"
    record = {
        "benchmark": "demo", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine_info(),
        "matmul_ms": matmul_ms(), "requested_precision": args.precision, "precision": precision, "overrides": args.set,
        "seeds": config.seeds, "total_s": round(wall, 1), "total_min": round(wall / 60, 2),
        "by_kind_s": by_kind,
        "studies_s": study_seconds(stages), "no_studies": args.no_studies,
        # with a stage worker (workers: 2) the stage seconds overlap: their sum exceeds total_s
        "workers": run.results.get("timings", {}).get("workers", 1), "stages_by_worker": len(run.results.get("stages", {}).get("by_worker") or []),
        "processes": processes,  # busy = inside a stage; the rest waiting for the other process, loading or reporting
        "stages_s": {k: round(v, 2) for k, v in stages.items()},
    }
    write_json_atomic(out, record)
    print(f"demo: {wall / 60:.1f} min ({precision}, {record['machine']['processor']}, {record['machine']['cpu_capability']}) -> {out}")
    for kind, seconds in record["by_kind_s"].items():
        print(f"  {kind:<12} {seconds:8.1f} s")
    for study, seconds in record["studies_s"].items():
        print(f"  study {study:<18} {seconds:8.1f} s")
    for row in processes:
        print(f"  {row['process']:<6} {row['stages']:3d} stages, {row['busy_s']:7.1f} s in them, {row['not_in_a_stage_s']:6.1f} s not")
    return 0


if __name__ == "__main__":
    sys.exit(main())
