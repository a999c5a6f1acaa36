"""Without a terminal, long work prints plain progress lines (a log file shows what is happening)."""

from __future__ import annotations

from reptune import _progress


def test_bars_print_lines_when_stderr_is_not_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(_progress, "interactive", lambda: False)
    monkeypatch.setattr(_progress, "LOG_EVERY_S", 0.0)
    clock = iter(range(0, 1000, 5))
    monkeypatch.setattr(_progress.time, "perf_counter", lambda: float(next(clock)))
    with _progress.progress_bar("training", total=4) as advance:
        for _ in range(4):
            advance(1, status="loss 0.5")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[reptune")]
    assert any("training: 1/4" in line and "ETA" in line for line in lines)
    assert "training: 4/4 in" in lines[-1] and "loss 0.5" in lines[-1]


def test_experiment_prints_one_line_per_stage_without_a_terminal(monkeypatch, capsys):
    from reptune.pipeline.runner import _Overall

    monkeypatch.setattr(_progress, "interactive", lambda: False)
    overall = _Overall(None, total=10.0)
    for name in ("data", "vector"):
        overall.stage(name)
        overall.advance(5.0)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].split("] ", 1)[1].startswith("data: done in") and "ETA" in lines[0] and lines[1].endswith("100%")
