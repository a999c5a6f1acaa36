"""benchmarks/bench_demo.py's arguments: bad ones stop with a one-line usage error, before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_demo.py"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from-run", "no/such/run"], "--from-run no/such/run: no results.json there"),
        (["--wall-s", "12"], "--wall-s and --install-s go with --from-run"),
        (["--from-run", "x", "--wall-s", "soon"], "argument --wall-s: invalid float value: 'soon'"),
    ],
)
def test_bad_arguments_stop_with_one_line(tmp_path, args, message):
    done = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("bench_demo.py: error: ") and message in last
