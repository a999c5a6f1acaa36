"""Precision ``auto``: bf16 autocast only where it is faster on the device in use.

bf16 autocast over fp32 weights is about 3x faster than fp32 on CPUs with native bf16
(AVX512-BF16, AMX) and on CUDA GPUs with bf16 support, but about 9x *slower* on CPUs without
it (AVX2 only: a 512x576 by 576x1536 matmul takes 14.5 ms in fp32 and 132 ms in bf16). So:

* CUDA: bf16 when ``torch.cuda.is_bf16_supported()``, else fp32;
* CPU: bf16 when torch's kernels run at AVX512 level (or better) and the CPU reports
  ``avx512_bf16`` or ``amx_bf16``; fp32 when it reports neither or torch runs AVX2 kernels;
  where the flags cannot be read (not Linux), a one-second matmul micro-benchmark decides, and
  its verdict is cached per machine in ``~/.cache/reptune/precision.json``.

Every result, vector and report records the precision used and :func:`machine_info`.
"""

from __future__ import annotations

import json
import os
import platform
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from reptune.errors import ReptuneError

PRECISIONS = ("auto", "bf16", "fp32")


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str | None, frozenset[str] | None]:
    """CPU model name and flags from ``/proc/cpuinfo`` (``None`` where unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None, None
    name, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and name is None:
            name = value.strip()
        elif key in {"flags", "Features"} and flags is None:
            flags = frozenset(value.split())
    return name, flags


def cpu_capability() -> str:
    """The instruction level torch's CPU kernels use (``AVX512``, ``AVX2``, ``DEFAULT``...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # older torch builds
        return "unknown"


def machine_info() -> dict[str, Any]:
    """What a benchmark figure or a result needs to be read against: CPU, kernels, cores, torch."""
    name, flags = _cpuinfo()
    info: dict[str, Any] = {
        "cpu": name or platform.processor() or platform.machine(),
        "cpu_capability": cpu_capability(),
        "native_bf16": None if flags is None else bool(flags & {"avx512_bf16", "amx_bf16"}),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "platform": platform.platform(terse=True),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "reptune" / "precision.json"


def _benchmark_bf16_faster(seconds: float = 1.0) -> bool:
    """Time a 512x576 by 576x1536 matmul in fp32 and under bf16 autocast (about ``seconds``)."""
    a, b = torch.randn(512, 576), torch.randn(576, 1536)

    def timed(use_bf16: bool) -> float:
        best = float("inf")
        deadline = time.perf_counter() + seconds / 2
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                a @ b
            best = min(best, time.perf_counter() - start)
        return best

    return timed(True) < timed(False)


def _cpu_bf16_faster() -> tuple[bool, str]:
    capability = cpu_capability()
    _, flags = _cpuinfo()
    if capability.upper() in {"DEFAULT", "AVX2", "ZVECTOR", "VSX"}:
        return False, f"torch CPU kernels at {capability} (no native bf16 path)"
    if flags is not None:
        native = sorted(flags & {"avx512_bf16", "amx_bf16"})
        if native:
            return True, f"CPU reports {', '.join(native)} and torch runs {capability} kernels"
        return False, f"CPU reports no avx512_bf16/amx_bf16 ({capability} kernels)"
    key = f"{platform.machine()}|{platform.processor()}|{capability}|{torch.__version__}"
    path = _cache_path()
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict) or not isinstance(cached.get(key), bool):
        cached = cached if isinstance(cached, dict) else {}
        cached[key] = _benchmark_bf16_faster()
        try:
            from reptune._io import write_json_atomic

            write_json_atomic(path, cached)
        except OSError:
            pass  # an unwritable cache only costs a second next time
    return bool(cached[key]), "micro-benchmark (cached in " + str(path) + ")"


def resolve_precision(precision: str | None, device: str | torch.device = "cpu") -> tuple[str, str]:
    """Turn ``auto`` / ``bf16`` / ``fp32`` into the precision to use, and why.

    Returns:
        ``("bf16" | "fp32", reason)``.

    Raises:
        ReptuneError: an unknown precision name.
    """
    value = (precision or "auto").lower()
    if value in {"none", "float32"}:
        value = "fp32"
    if value in {"bfloat16"}:
        value = "bf16"
    if value not in PRECISIONS:
        raise ReptuneError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if value != "auto":
        return value, "forced"
    device_type = torch.device(device).type if not isinstance(device, str) or device not in {"auto"} else ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ("bf16" if ok else "fp32"), ("CUDA with bf16 support" if ok else "CUDA without bf16 support")
    if device_type != "cpu":
        return "fp32", f"device {device_type}: fp32 is the safe default"
    faster, reason = _cpu_bf16_faster()
    return ("bf16" if faster else "fp32"), reason
