"""What the benchmarks share: their C load generators, stopping servers, CPU accounting."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from natkit.bench import loadgen
from natkit.errors import ConfigError, PrerequisiteError

Progress = Callable[[str], None]
CoreTimes = dict[int, tuple[int, int]]

_TICK = os.sysconf("SC_CLK_TCK")


def check_seconds_rounds(seconds: float, rounds: int) -> None:
    if not 0.5 <= seconds <= 600:
        raise ConfigError(f"{seconds:g}: give 0.5-600 seconds", param="seconds")
    if not 1 <= rounds <= 20:
        raise ConfigError(f"{rounds}: give 1-20 rounds", param="rounds")


def tool_command(tool: str, cpu: int | None = None) -> list[str]:
    """The command line that runs the load generator ``tool`` (see :mod:`natkit.bench.loadgen`),
    pinned to ``cpu`` when given; PrerequisiteError when its extension module is not built."""
    why = loadgen.missing(tool)
    if why:
        raise PrerequisiteError(why)
    prefix = ["taskset", "-c", str(cpu)] if cpu is not None else []
    return [*prefix, *loadgen.command(tool)]


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group started with ``start_new_session``, SIGKILL after 5 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def coturn_version() -> str:
    try:
        out = subprocess.run(
            ["turnserver", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.splitlines()[0] if out else "unknown"


def _tree(pid: int) -> list[int]:
    """pid and its descendants (a server may run worker processes)."""
    out: list[int] = []
    todo = [pid]
    while todo and len(out) < 256:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    todo += [
                        int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()
                    ]
    return out


def cpu_seconds_each(pid: int) -> dict[int, float]:
    """utime + stime of a process and of each of its descendants (all threads), by pid."""
    out: dict[int, float] = {}
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            out[p] = (int(fields[11]) + int(fields[12])) / _TICK
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its descendants, all threads."""
    return sum(cpu_seconds_each(pid).values())


def rss_bytes(pid: int) -> int:
    """Resident set size of a process and its descendants."""
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def core_times() -> CoreTimes:
    """Per CPU: (busy, total) jiffies from /proc/stat (irq and softirq count as busy)."""
    out: CoreTimes = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *values = line.split()
                v = [int(x) for x in values[:8]]
                out[int(name[3:])] = (sum(v) - v[3] - v[4], sum(v))
    return out


def core_busy(a: CoreTimes, b: CoreTimes, cpu: int) -> float:
    """The share of ``cpu`` that was busy between two :func:`core_times` readings."""
    busy, total = b[cpu][0] - a[cpu][0], b[cpu][1] - a[cpu][1]
    return round(busy / total, 3) if total > 0 else 0.0
