"""Precision auto: bf16 only where it is faster; the choice and the machine recorded."""

from __future__ import annotations

import pytest

from reptune import precision
from reptune.errors import ReptuneError


def _machine(monkeypatch, capability: str, flags: set[str] | None) -> None:
    monkeypatch.setattr(precision, "cpu_capability", lambda: capability)
    monkeypatch.setattr(precision, "_cpuinfo", lambda: ("Test CPU", None if flags is None else frozenset(flags)))


@pytest.mark.parametrize(
    ("capability", "flags", "expected"),
    [
        ("AVX512", {"avx2", "avx512f", "avx512_bf16"}, "bf16"),  # native bf16: ~3x faster
        ("AVX512", {"avx2", "avx512f", "amx_bf16"}, "bf16"),
        ("AVX512", {"avx2", "avx512f"}, "fp32"),  # AVX512 without bf16: emulated, slower
        ("AVX2", {"avx2", "avx512_bf16"}, "fp32"),  # torch runs AVX2 kernels (e.g. ATEN_CPU_CAPABILITY=avx2)
        ("AVX2", {"avx2"}, "fp32"),  # the AVX2-only EPYC: bf16 ~9x slower
        ("DEFAULT", None, "fp32"),
    ],
)
def test_auto_picks_bf16_only_with_native_support(monkeypatch, capability, flags, expected):
    _machine(monkeypatch, capability, flags)
    chosen, reason = precision.resolve_precision("auto", "cpu")
    assert chosen == expected and reason


def test_forced_precision_wins_and_bad_names_fail(monkeypatch):
    _machine(monkeypatch, "AVX2", {"avx2"})
    assert precision.resolve_precision("bf16", "cpu") == ("bf16", "forced")
    assert precision.resolve_precision("fp32", "cpu") == ("fp32", "forced")
    with pytest.raises(ReptuneError, match="precision must be one of"):
        precision.resolve_precision("fp8", "cpu")


def test_unknown_flags_run_the_cached_micro_benchmark(monkeypatch, tmp_path):
    _machine(monkeypatch, "NEON", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(precision, "_benchmark_bf16_faster", lambda seconds=1.0: calls.append(1) or False)
    assert precision.resolve_precision("auto", "cpu")[0] == "fp32"
    assert precision.resolve_precision("auto", "cpu")[0] == "fp32"
    assert len(calls) == 1 and (tmp_path / "reptune" / "precision.json").is_file()  # measured once per machine


def test_machine_info_names_the_kernels_and_cores():
    info = precision.machine_info()
    assert {"cpu", "cpu_capability", "native_bf16", "cores", "torch"} <= set(info)


def test_load_model_auto_and_results_record_precision(tiny_dir, monkeypatch):
    from reptune.evaluation import evaluate, get_task
    from reptune.models import load_model

    _machine(monkeypatch, "AVX2", {"avx2"})
    handle = load_model(str(tiny_dir), autocast="auto")
    assert handle.autocast_dtype is None and handle.describe()["precision"] == "fp32"
    result = evaluate(handle, [get_task("facts-twin")], limit=2, progress=False)
    assert result.model["precision"] == "fp32" and result.model["machine"]["cpu_capability"] == "AVX2"
