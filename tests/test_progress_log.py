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
    from reptune.pipeline import runner

    monkeypatch.setattr(_progress, "interactive", lambda: False)
    now = [100.0]
    monkeypatch.setattr(runner.time, "perf_counter", lambda: now[0])
    overall = runner._Overall(None, total=20.0)
    for name, seconds in (("data", 0.0), ("vector", 30.0), ("sweep", 30.0)):
        overall.stage(name)
        now[0] += seconds
        overall.advance(5.0 if name == "data" else 7.5)
    lines = [line.split("] ", 1)[1] for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == 3 and lines[0].startswith("data: done in 0.0 s") and lines[2].endswith("100%")
    assert "ETA" not in lines[0]  # no time spent yet: no guess at the speed
    assert "ETA 0:18" in lines[1]  # 30 s for 12.5 of 20 cost units: 30 / 12.5 x 7.5 s to go


def test_the_stage_workers_finished_stages_count_as_they_finish_and_only_once(monkeypatch, capsys):
    """With a stage worker the main process's share of the plan is about half: the worker's
    finished stages (reported through the stage store) count at once, not when the main process
    reaches them, and a stage reached as 'done by the stage worker' is not counted again."""
    from reptune.pipeline import runner

    monkeypatch.setattr(_progress, "interactive", lambda: False)
    now, worker = [0.0], [0.0]
    monkeypatch.setattr(runner.time, "perf_counter", lambda: now[0])
    overall = runner._Overall(None, total=40.0, worker_done=lambda: worker[0])
    overall.stage("vector")
    now[0] += 60.0
    worker[0] = 10.0  # meanwhile the worker finished 10 units of the other end
    overall.advance(10.0)
    overall.stage("train:tune-out:s0")
    overall.advance(10.0, by_worker=True)
    lines = [line.split("] ", 1)[1] for line in capsys.readouterr().err.splitlines()]
    assert lines[0].endswith("50%") and "ETA 1:00" in lines[0]  # 20 of 40 units in 60 s
    assert lines[1].startswith("train:tune-out:s0: done by the stage worker") and lines[1].endswith("50%")


def test_a_bar_of_its_own_says_it_started_once_it_runs_past_the_quiet_time(monkeypatch, capsys):
    import time

    monkeypatch.setattr(_progress, "interactive", lambda: False)
    monkeypatch.setattr(_progress, "QUIET_S", 0.05)
    with _progress.progress_bar("reading activations", total=3) as advance:
        time.sleep(0.3)  # a slow first item: without the start line the log shows nothing until the 30 s count
        advance(3)
    lines = [line.split("] ", 1)[1] for line in capsys.readouterr().err.splitlines()]
    assert lines[0] == "reading activations: started (3 to do)" and lines[-1].startswith("reading activations: 3/3 in")
    with _progress.progress_bar("quick", total=2) as advance:  # a quick loop stays quiet
        advance(2)
    with _progress.progress_display(), _progress.progress_bar("inside an experiment", total=1) as advance:
        time.sleep(0.3)  # the stage lines say what runs: no start line
        advance(1)
    assert "started" not in capsys.readouterr().err
