"""tests/lab/background.py, the scheduler of the suite's long lab runs: at most a pool's size at
a time, the longest first, each result (or exception) for its test, a job that was not started
run by the test that asks, and stop() ending what still runs."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.lab.background import Job, Scheduler


def _scheduler(tmp_path: Path, **estimates: float) -> tuple[Scheduler, list[str], dict[str, int]]:
    """Jobs that record their start and how many ran at once, each ~0.2 s."""
    started: list[str] = []
    at_once = {"now": 0, "max": 0}
    lock = threading.Lock()

    def make(name: str, estimate: float) -> Job:
        def fn(out: Path) -> str:
            with lock:
                started.append(name)
                at_once["now"] += 1
                at_once["max"] = max(at_once["max"], at_once["now"])
            time.sleep(0.2)
            with lock:
                at_once["now"] -= 1
            if name == "bad":
                raise ValueError("the job failed")
            return f"{name} in {out.name}"

        return Job(name, estimate, fn)

    jobs = {name: make(name, estimate) for name, estimate in estimates.items()}
    return Scheduler(jobs, {"lab": 2}), started, at_once


def test_two_at_a_time_longest_first_each_result_to_its_test(tmp_path: Path) -> None:
    sched, started, at_once = _scheduler(tmp_path, short=1, long=9, mid=5, bad=3)
    sched.start(["short", "long", "mid", "bad"], lambda n: tmp_path / n)
    assert sched.result("short", lambda n: tmp_path / "unused") == "short in short"
    assert sched.result("long", lambda n: tmp_path / "unused") == "long in long"
    with pytest.raises(ValueError, match="the job failed"):  # re-raised in the test that reads it
        sched.result("bad", lambda n: tmp_path / "unused")
    sched.settle("lab", timeout=10)
    assert started[:2] == ["long", "mid"] and set(started) == {"short", "long", "mid", "bad"}
    assert at_once["max"] == 2
    sched.stop()
    lines = sched.report()  # the CI log's account: each job's time and how it ended
    assert len(lines) == 4 and lines[0].endswith(": ok)") and "long (lab, from " in lines[0]
    assert any(ln.endswith(": ValueError)") and " bad " in ln for ln in lines)


def test_a_job_not_started_runs_in_the_test_that_asks(tmp_path: Path) -> None:
    sched, started, _ = _scheduler(tmp_path, alone=1, other=2)
    sched.start(["other"], lambda n: tmp_path / n)
    assert sched.result("alone", lambda n: tmp_path / "here") == "alone in here"
    assert "alone" in started
    sched.stop()


def test_stop_ends_a_running_subprocess_and_skips_the_queue(tmp_path: Path) -> None:
    sched = Scheduler({}, {"lab": 1})
    out: dict[str, object] = {}

    def sleeper() -> None:
        out["proc"] = sched.run([sys.executable, "-c", "import time; time.sleep(60)"], 120)

    th = threading.Thread(target=sleeper)
    th.start()
    end = time.monotonic() + 10
    while not sched._procs and time.monotonic() < end:
        time.sleep(0.01)
    t0 = time.monotonic()
    sched.stop(grace=5)
    th.join(10)
    proc = out["proc"]
    assert isinstance(proc, subprocess.CompletedProcess) and proc.returncode == -15  # SIGTERM
    assert time.monotonic() - t0 < 5
    assert sched.stopping()
    with pytest.raises(pytest.skip.Exception, match="the session is ending"):
        sched.run(["true"], 5)


def test_a_gate_holds_a_job_until_it_opens_or_the_session_ends() -> None:
    sched = Scheduler({}, {"lab": 1})
    passed = threading.Event()

    def waiter() -> None:
        sched.wait_gate("tests/lab/", 30)
        passed.set()

    th = threading.Thread(target=waiter)
    th.start()
    assert not passed.wait(1.5)  # held
    sched.open_gate("tests/lab/")
    assert passed.wait(5)
    th.join(5)
    t0 = time.monotonic()
    other = threading.Thread(target=sched.wait_gate, args=("never", 30))
    other.start()
    sched.stop()
    other.join(5)
    assert not other.is_alive() and time.monotonic() - t0 < 5
