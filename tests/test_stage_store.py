"""The stage store's claims: two processes of one run never run a stage twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from reptune.pipeline.stages import StageBusy, StageStore, run_deferring


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _hold(store: StageStore, name: str, pid: int) -> None:
    store.root.mkdir(parents=True, exist_ok=True)
    (store.root / f"{name}.lock").write_text(str(pid))


def test_a_claim_of_a_dead_process_is_taken_over_and_released(tmp_path):
    store = StageStore(tmp_path, "s1")
    _hold(store, "vector", _dead_pid())
    assert store.run("vector", {"a": 1}, lambda folder: {"ok": 1}) == {"ok": 1}
    assert store.computed == ["vector"] and not list(store.root.glob("*.lock"))
    assert json.loads((store.root / "vector" / "stage.json").read_text())["session"] == "s1"


def test_a_held_stage_is_put_off_then_reused_as_the_other_process_left_it(tmp_path):
    """wait=False: the item whose stage a live process holds runs after the others; by then the
    other process has finished it, so it is reused and counted as the worker's, not re-run."""
    store = StageStore(tmp_path, "s1")
    store.wait = False
    _hold(store, "b", os.getppid())  # a live process that is not this one
    order = []

    def finish_b_as_the_other_process(folder_name: str) -> None:
        other = StageStore(tmp_path, "s1")
        (store.root / f"{folder_name}.lock").unlink()
        other.run(folder_name, {}, lambda folder: {"by": "other"})

    def work(name: str) -> None:
        outputs = store.run(name, {}, lambda folder: {"by": "me"})
        order.append((name, outputs["by"]))
        if name == "c":
            finish_b_as_the_other_process("b")

    run_deferring(store, ["a", "b", "c"], work)
    assert order == [("a", "me"), ("c", "me"), ("b", "other")]
    assert store.computed == ["a", "c"] and store.by_worker == ["b"] and store.wait is False
    assert sorted(store.ran) == ["a", "b", "c"] and not store.skipped


def test_waiting_is_the_default_and_busy_is_raised_only_without_it(tmp_path):
    store = StageStore(tmp_path, "s1")
    _hold(store, "b", os.getppid())
    store.wait = False
    with pytest.raises(StageBusy):
        store.run("b", {}, lambda folder: {})
    assert not (store.root / "b").exists()  # nothing ran, nothing was written
    assert store.wait is False


def test_independent_stages_skip_the_held_one_and_the_main_process_waits_for_none(tmp_path):
    """run_independent, as after a training: a process (here the main one, which otherwise waits)
    takes every free stage first and comes back to the one the other process holds; a held stage
    still held after the rest is looked at again until the other process releases it."""
    import threading

    from reptune.pipeline.stages import run_independent

    store = StageStore(tmp_path, "s1")
    assert store.wait is True
    _hold(store, "eval-b", os.getppid())
    order: list[tuple[str, str]] = []

    def release_later() -> None:  # the other process finishes eval-b a little after this one ran the rest
        other = StageStore(tmp_path, "s1")
        (store.root / "eval-b.lock").unlink()
        other.run("eval-b", {}, lambda folder: {"by": "other"})

    def work(name: str) -> None:
        outputs = store.run(name, {}, lambda folder: {"by": "me"})
        order.append((name, outputs["by"]))
        if name == "eval-c":
            threading.Timer(0.4, release_later).start()

    run_independent(store, [lambda n=n: work(n) for n in ("eval-a", "eval-b", "eval-c")])
    assert order == [("eval-a", "me"), ("eval-c", "me"), ("eval-b", "other")]
    assert store.computed == ["eval-a", "eval-c"] and store.wait is True  # the process's own setting is back


def test_each_stage_records_the_work_it_did_and_a_reuse_reads_it_back(tmp_path):
    """items scored and steps taken inside a stage (reptune._work) go into its stage.json; a later
    store reusing the stage reports the same counts; work outside a stage counts in none."""
    from reptune import _work

    def work(folder):
        _work.count(_work.ITEMS, 7)
        _work.count(_work.STEPS, 3)
        return {"ok": 1}

    store = StageStore(tmp_path, "s1")
    store.run("train:x", {"a": 1}, work)
    _work.count(_work.ITEMS, 100)  # between stages
    store.run("eval:x", {"a": 1}, lambda folder: _work.count(_work.ITEMS, 2) or {"ok": 2})
    assert store.counts == {"train:x": {"items": 7, "steps": 3}, "eval:x": {"items": 2, "steps": 0}}
    assert json.loads((store.root / "train-x" / "stage.json").read_text())["counts"] == {"items": 7, "steps": 3}
    again = StageStore(tmp_path, "s2")
    again.run("train:x", {"a": 1}, lambda folder: pytest.fail("reused stages do not run"))
    assert again.counts == {"train:x": {"items": 7, "steps": 3}} and again.skipped == ["train:x"]
