"""Ending a child process reptune started (a llama.cpp server, a stage worker)."""

from __future__ import annotations

import subprocess


def end_process(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """Terminate ``process`` (if it still runs), give it ``grace_s`` seconds to exit, then kill it; always reaped."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
