"""The suite's long lab runs, started in the background as soon as the tests are collected and
awaited by the tests that read them.

Each run is a session fixture of tests/lab/conftest.py named like its job here. Most of a lab
run is waiting (cases expected to fail idle to their deadline, the longevity case idles 25 s,
the lifetime measurement waits out the mapping): the Go peer's run is 130 s for under 30 s of
CPU. Run one after another inside their tests they were about 330 s of the suite; started
together when the session starts (:func:`start`, at most :data:`AT_ONCE` at a time, the longest
first) they overlap each other and every test before theirs, and a test finds its run done or
nearly so. Each run is a ``natkit lab run`` subprocess in its own lab (namespaces carry the
run's own tag, so labs run side by side); what a test asserts of it is unchanged.

Only the runs of collected tests start (``--co`` starts none; without root none start and the
tests skip as before). A job that ends in an exception (a failed build, a skip) re-raises it in
every test that asks for its result. At the end of the session :func:`stop` ends what still
runs (a run whose tests were not reached: ``-x``, Ctrl-C) before the leak check looks.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Lab runs at a time. Each uses a fraction of a core on average, but its connecting cases come
# in bursts of DTLS: two keep a 2-core box busy without starving the tests in front.
AT_ONCE = 2
# What a test may wait for the runs queued before its own, on top of its own run's budget.
QUEUE_WAIT_S = 600
# Workers per pool: the netns lab runs share AT_ONCE; the Compose run (Docker's, mostly waiting
# for the daemon and the image build) has its own.
POOLS = {"lab": AT_ONCE, "docker": 1}


@dataclass(frozen=True)
class Job:
    """A background run: ``fn(out)`` with its own scratch directory; ``estimate_s`` (a quiet
    2-core machine) orders the queue, longest first, so the longest run is never last;
    ``pool``: a key of :data:`POOLS`."""

    name: str
    estimate_s: float
    fn: Callable[[Path], Any]
    pool: str = "lab"


JOBS: dict[str, Job] = {}


def job(name: str, estimate_s: float, pool: str = "lab") -> Callable[[Callable[[Path], Any]], Callable[[Path], Any]]:
    """Register ``fn`` as the background job ``name`` (a session fixture's name)."""

    def register(fn: Callable[[Path], Any]) -> Callable[[Path], Any]:
        JOBS[name] = Job(name, estimate_s, fn, pool)
        return fn

    return register


class Scheduler:
    """Jobs started in thread pools (:data:`POOLS` workers each), their subprocesses tracked
    so that :meth:`stop` can end them. The session has one (:data:`SESSION`)."""

    def __init__(self, jobs: dict[str, Job], pools: dict[str, int] | None = None) -> None:
        self.jobs = jobs
        self.sizes = dict(POOLS if pools is None else pools)
        self.futures: dict[str, Future[Any]] = {}
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._procs: set[subprocess.Popen[str]] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._gates: dict[str, threading.Event] = {}
        self.t0 = time.monotonic()
        self.times: dict[str, tuple[float, float]] = {}  # job: (started, ended), s since t0

    def _timed(self, name: str, out: Path) -> Any:
        started = time.monotonic() - self.t0
        try:
            return self.jobs[name].fn(out)
        finally:
            self.times[name] = (started, time.monotonic() - self.t0)

    def report(self) -> list[str]:
        """A line per job that ran: when it started and ended (since the scheduler was made),
        how long it took, how it ended: the suite's time budget, beside ``--durations``."""
        lines = []
        for name, (a, b) in sorted(self.times.items(), key=lambda kv: kv[1]):
            future = self.futures.get(name)
            how = "cancelled" if future is None or future.cancelled() else (
                "ok" if future.exception() is None else type(future.exception()).__name__)
            lines.append(f"{b - a:7.1f}s  {name} ({self.jobs[name].pool}, from {a:.1f} s to {b:.1f} s: {how})")
        return lines

    def start(self, names: Iterable[str], out: Callable[[str], Path]) -> None:
        """Start the named jobs (those not started yet), longest first."""
        for name in sorted(set(names) - set(self.futures), key=lambda n: -self.jobs[n].estimate_s):
            kind = self.jobs[name].pool
            if kind not in self._pools:
                self._pools[kind] = ThreadPoolExecutor(self.sizes[kind], thread_name_prefix=f"{kind}-run")
            self.futures[name] = self._pools[kind].submit(self._timed, name, out(name))

    def result(self, name: str, out: Callable[[str], Path]) -> Any:
        """The job's result (its exception re-raised), waiting for it; a job that was not
        started (its test was not collected at the start) runs here."""
        future = self.futures.get(name)
        if future is None:
            return self._timed(name, out(name))
        return future.result()

    def settle(self, pool: str, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until the started jobs of ``pool`` are over, however
        they ended: for a test or a job that must not overlap them."""
        pending = [f for n, f in self.futures.items() if self.jobs[n].pool == pool]
        with contextlib.suppress(TimeoutError):
            for _ in as_completed(pending, timeout=timeout):
                pass

    def _gate(self, name: str) -> threading.Event:
        with self._lock:
            return self._gates.setdefault(name, threading.Event())

    def open_gate(self, name: str) -> None:
        """Let the jobs waiting on gate ``name`` go on (tests/conftest.py opens ``tests/lab/``
        when the first test there starts)."""
        self._gate(name).set()

    def wait_gate(self, name: str, timeout: float) -> None:
        """Wait (at most ``timeout`` s) for gate ``name``, or until the session ends."""
        gate, end = self._gate(name), time.monotonic() + timeout
        while not gate.wait(1) and not self._stopping.is_set() and time.monotonic() < end:
            pass

    def stopping(self) -> bool:
        """Whether the session is ending (a job that waits for something should give up)."""
        return self._stopping.is_set()

    def run(self, argv: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """``subprocess.run(argv, capture_output=True, text=True)`` that :meth:`stop` can end."""
        if self._stopping.is_set():
            pytest.skip("the session is ending")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
        with self._lock:
            self._procs.add(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(argv, timeout, out, err) from None
        finally:
            with self._lock:
                self._procs.discard(proc)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def stop(self, grace: float = 60) -> None:
        """End the jobs: queued ones never start, running ones' subprocesses get SIGTERM (a
        lab run tears its lab down on it), then SIGKILL after ``grace`` seconds."""
        self._stopping.set()
        for gate in list(self._gates.values()):
            gate.set()
        for future in self.futures.values():
            future.cancel()
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        for pool in self._pools.values():
            pool.shutdown(wait=True)


SESSION = Scheduler(JOBS)


def start(session: pytest.Session, out: Callable[[str], Path]) -> None:
    """Start the jobs that the collected tests ask for (their fixtures), longest first."""
    SESSION.start({n for item in session.items for n in getattr(item, "fixturenames", ()) if n in JOBS}, out)


result = SESSION.result
settle = SESSION.settle
stopping = SESSION.stopping
open_gate = SESSION.open_gate
wait_gate = SESSION.wait_gate
run = SESSION.run
stop = SESSION.stop
report = SESSION.report
