"""`natkit bench stun`: Binding responses/s of natkit and coturn, per core, in one run.

Both servers run on loopback, one after the other and alternating (natkit, coturn, natkit,
coturn, ...), each pinned to one core (``taskset -c SERVER_CPU``) while the C load generator
stunflood (../shared/tools/stunflood.c, built with gcc into a cache directory) runs pinned to
another core. Each run also records how busy the server's core and the generator's core were
(CPU time from /proc and wait4): a server near 100% of its core is the bottleneck; a server
well below it means the generator (or the loopback path on the generator's core) limited the
run, so that server's figure is a lower bound. ``per_cpu_second`` (responses per CPU-second of
the server) is the efficiency figure that does not depend on who saturated first.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from natkit.bench._common import (
    Progress,
    build_tool,
    check_seconds_rounds,
    core_busy,
    core_times,
    coturn_version,
    cpu_seconds,
    stop,
)
from natkit.errors import UsageError
from natkit.server.coturn import free_port, wait_for_binding

_REPO = Path(__file__).resolve().parents[2]
DEFAULT_GENERATOR = _REPO.parent / "shared" / "tools" / "stunflood.c"
_LINE = re.compile(r"responses=(\d+) other=(\d+) seconds=([\d.]+) rate=(\d+)")


def build_generator(source: Path | None = None) -> Path:
    """Compile stunflood.c (once per source version) and return the binary's path."""
    src = Path(source) if source else DEFAULT_GENERATOR
    if not src.is_file():
        raise UsageError(
            f"load generator source {src} not found: pass --generator-source PATH/stunflood.c"
        )
    return build_tool(src, "stunflood", "the load generator")


def _wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float = 15.0) -> None:
    """Until the server answers a Binding request on 127.0.0.1:port."""
    status = wait_for_binding(("127.0.0.1", port), timeout, proc)
    if status == "exited":
        raise UsageError(f"server exited with status {proc.returncode} at start")
    if status != "ok":
        raise UsageError(f"server did not answer on 127.0.0.1:{port} within {timeout:g} s")


def natkit_command(port: int, cpu: int) -> list[str]:
    return [
        "taskset", "-c", str(cpu), sys.executable, "-m", "natkit", "serve", "stun",
        "--listen", f"127.0.0.1:{port}", "--no-tcp",
    ]  # fmt: skip


def coturn_command(port: int, cpu: int, workdir: Path) -> list[str]:
    # STUN only, UDP only, no auth, no extras: coturn's lightest Binding path.
    return [
        "taskset", "-c", str(cpu), "turnserver", "-n", "--stun-only",
        "--listening-ip=127.0.0.1", f"--listening-port={port}", "--no-tcp", "--no-tls",
        "--no-dtls", "--no-cli", "--no-software-attribute", "--no-rfc5780",
        f"--log-file={workdir / 'turnserver.log'}", "--simple-log",
        f"--pidfile={workdir / 'turnserver.pid'}", f"--userdb={workdir / 'turndb'}",
    ]  # fmt: skip


def _one_run(
    name: str,
    make_command: Callable[[Path], list[str]],
    port: int,
    generator: Path,
    *,
    seconds: float,
    sockets: int,
    window: int,
    generator_cpu: int,
    server_core: int,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="natkit-bench-") as tmp:
        proc = subprocess.Popen(
            make_command(Path(tmp)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
        try:
            _wait_ready(proc, port)
            time.sleep(0.3)  # let the server settle after start
            cpu0, t0, cores0 = cpu_seconds(proc.pid), time.monotonic(), core_times()
            gen = subprocess.Popen(
                ["taskset", "-c", str(generator_cpu), str(generator), "127.0.0.1", str(port),
                 f"{seconds:g}", str(sockets), str(window)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            out = b""
            assert gen.stdout is not None
            out = gen.stdout.read()
            _, status, usage = os.wait4(gen.pid, 0)
            gen.returncode = os.waitstatus_to_exitcode(status)
            elapsed = time.monotonic() - t0
            cpu1, cores1 = cpu_seconds(proc.pid), core_times()
        finally:
            stop(proc)
    match = _LINE.search(out.decode(errors="replace"))
    if gen.returncode or not match:
        raise UsageError(f"the load generator failed against {name}: {out.decode()[:200]!r}")
    responses, other, gen_seconds = int(match[1]), int(match[2]), float(match[3])
    server_cpu = cpu1 - cpu0
    return {
        "server": name,
        "responses": responses,
        "other": other,
        "seconds": gen_seconds,
        "rate": round(responses / gen_seconds),
        "server_cpu": round(server_cpu / elapsed, 3),
        "generator_cpu": round((usage.ru_utime + usage.ru_stime) / gen_seconds, 3),
        "per_cpu_second": round(responses / server_cpu) if server_cpu > 0 else None,
        "server_core_busy": core_busy(cores0, cores1, server_core),
        "generator_core_busy": core_busy(cores0, cores1, generator_cpu),
    }


def run(
    *,
    seconds: float = 5.0,
    rounds: int = 2,
    server_cpu: int = 1,
    generator_cpu: int = 0,
    sockets: int = 16,
    window: int = 32,
    generator_source: Path | None = None,
    fast_path: str = "auto",
    with_coturn: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the benchmark; returns the report (see docs/bench_stun.md for the keys)."""
    say = progress or (lambda _msg: None)
    check_seconds_rounds(seconds, rounds)
    if not 1 <= sockets <= 1024 or not 1 <= window <= 1024:
        raise UsageError(f"bad --sockets {sockets} / --window {window}: give 1-1024 each")
    ncpu = os.cpu_count() or 1
    for label, cpu in (("--server-cpu", server_cpu), ("--generator-cpu", generator_cpu)):
        if not 0 <= cpu < ncpu:
            raise UsageError(f"bad {label} {cpu}: this machine has CPUs 0-{ncpu - 1}")
    if server_cpu == generator_cpu:
        raise UsageError("--server-cpu and --generator-cpu must differ (one core each)")
    if shutil.which("taskset") is None:
        raise UsageError("taskset is not installed (CPU pinning): apt-get install util-linux")
    if with_coturn and shutil.which("turnserver") is None:
        raise UsageError("coturn is not installed: apt-get install coturn (or --no-coturn)")
    if fast_path not in ("auto", "c", "python"):
        raise UsageError(f"bad --fast-path {fast_path}: auto, c or python")

    generator = build_generator(generator_source)
    env = dict(os.environ)
    if fast_path == "python":
        env["NATKIT_NO_CEXT"] = "1"
        kind = "python"
    else:
        from natkit.server._fastpath import helper_status

        kind = helper_status()  # builds the C helper now, not during a measurement
        if fast_path == "c" and kind != "c":
            raise UsageError(f"the C fast path is not available: {kind}")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO), env.get("PYTHONPATH")) if p)

    runs: list[dict[str, Any]] = []
    order = ["natkit", "coturn"] if with_coturn else ["natkit"]
    for rnd in range(1, rounds + 1):
        for name in order:
            port = free_port("127.0.0.1")

            def make(tmp: Path, name: str = name, port: int = port) -> list[str]:
                if name == "natkit":
                    return natkit_command(port, server_cpu)
                return coturn_command(port, server_cpu, tmp)

            say(f"round {rnd}/{rounds}: {name} on 127.0.0.1:{port} (cpu {server_cpu}) ...")
            result = _one_run(
                name, make, port, generator, seconds=seconds, sockets=sockets,
                window=window, generator_cpu=generator_cpu, server_core=server_cpu, env=env if name == "natkit" else None,
            )  # fmt: skip
            result["round"] = rnd
            runs.append(result)
            say(
                f"  {name}: {result['rate']:,} responses/s (server process "
                f"{result['server_cpu']:.0%} of a core; cores busy: server "
                f"{result['server_core_busy']:.0%}, generator {result['generator_core_busy']:.0%})"
            )

    def summary(name: str) -> dict[str, Any]:
        mine = [r for r in runs if r["server"] == name]
        per_cpu = [r["per_cpu_second"] for r in mine if r["per_cpu_second"]]
        return {
            "rate": round(statistics.mean(r["rate"] for r in mine)),
            "rates": [r["rate"] for r in mine],
            "server_cpu": round(statistics.mean(r["server_cpu"] for r in mine), 3),
            "server_core_busy": round(statistics.mean(r["server_core_busy"] for r in mine), 3),
            "generator_core_busy": round(
                statistics.mean(r["generator_core_busy"] for r in mine), 3
            ),
            "per_cpu_second": round(statistics.mean(per_cpu)) if per_cpu else None,
        }

    report: dict[str, Any] = {
        "natkit": {**summary("natkit"), "fast_path": kind},
        "generator": {
            "path": str(generator),
            "source": str(generator_source or DEFAULT_GENERATOR),
            "sockets": sockets,
            "window": window,
            "seconds": seconds,
            "cpu": generator_cpu,
        },
        "server_cpu": server_cpu,
        "rounds": rounds,
        "runs": runs,
    }
    if with_coturn:
        report["coturn"] = {**summary("coturn"), "version": coturn_version()}
        report["ratio"] = round(report["natkit"]["rate"] / report["coturn"]["rate"], 3)
        per_round = []
        for rnd in range(1, rounds + 1):
            n = next(r for r in runs if r["round"] == rnd and r["server"] == "natkit")
            c = next(r for r in runs if r["round"] == rnd and r["server"] == "coturn")
            per_round.append(round(n["rate"] / c["rate"], 3))
        report["ratio_per_round"] = per_round
        report["ratio_median"] = round(statistics.median(per_round), 3)
        a, b = report["natkit"]["per_cpu_second"], report["coturn"]["per_cpu_second"]
        report["ratio_per_cpu_second"] = round(a / b, 3) if a and b else None
    return report
