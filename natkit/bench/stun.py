"""`natkit bench stun`: Binding responses/s of natkit, coturn and a bare C reflector, per core.

The servers run on loopback one after the other, alternating round by round (natkit, coturn,
ceiling, natkit, ...), each pinned to one core (``taskset -c SERVER_CPU``), while the load
generator runs pinned to another core. Both the generator and the ceiling are C loops of the
extension module ``natkit.bench._stunload`` (built at install time, run as ``python -m
natkit.bench.loadgen stun-flood|stun-reflect``; nothing is compiled at run time):

- the generator keeps WINDOW plain Binding requests in flight on each of SOCKETS sockets and
  refills a socket's window with one UDP GSO send (sendmmsg without GSO), reading with
  recvmmsg: it pays far less per request than any server, so the figure is the server's;
- the *ceiling* is a bare Binding reflector (recvmmsg, a header check, XOR-MAPPED-ADDRESS,
  sendmmsg) on the server's core: what one core can answer through the same kernel interface
  natkit's C path uses. natkit/ceiling says how much natkit leaves on the table.

Each run also records how busy the server's and the generator's cores were (/proc/stat): a
server near 100% of its core is the limit; ``per_cpu_second`` (responses per CPU-second of the
server process) is the efficiency figure that does not depend on who saturated first.
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
    check_seconds_rounds,
    core_busy,
    core_times,
    coturn_version,
    cpu_seconds,
    stop,
    tool_command,
)
from natkit.errors import ConfigError, PrerequisiteError, UsageError
from natkit.server.coturn import free_port, wait_for_binding

SERVERS = ("natkit", "coturn", "ceiling")
_KV = re.compile(r"(\w+)=(\S+)")
_PATH_LINE = re.compile(r"UDP path: (.+)")


def _wait_ready(proc: subprocess.Popen[bytes], name: str, port: int, timeout: float = 15.0) -> None:
    """Until the server answers a Binding request on 127.0.0.1:port."""
    status = wait_for_binding(("127.0.0.1", port), timeout, proc)
    if status == "exited":
        raise UsageError(f"{name} exited with status {proc.returncode} at start")
    if status != "ok":
        raise UsageError(f"{name} did not answer on 127.0.0.1:{port} within {timeout:g} s")


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


def ceiling_command(port: int, cpu: int, max_seconds: float) -> list[str]:
    return [*tool_command("stun-reflect", cpu), "127.0.0.1", str(port), f"{max_seconds:g}"]


def child_env(no_cext: bool = False) -> dict[str, str]:
    """The environment of natkit's child processes: the natkit this process runs (its
    directory first on PYTHONPATH), NATKIT_NO_CEXT=1 when ``no_cext``."""
    import natkit

    env = dict(os.environ)
    here = str(Path(natkit.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    if no_cext:
        env["NATKIT_NO_CEXT"] = "1"
    return env


def _one_run(
    name: str,
    make_command: Callable[[Path], list[str]],
    port: int,
    *,
    seconds: float,
    sockets: int,
    window: int,
    generator_cpu: int,
    server_core: int,
    env: dict[str, str],
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="natkit-bench-") as tmp:
        out_path = Path(tmp) / "server.out"
        with open(out_path, "wb") as server_out:
            proc = subprocess.Popen(
                make_command(Path(tmp)),
                stdin=subprocess.DEVNULL,
                stdout=server_out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        try:
            _wait_ready(proc, name, port)
            time.sleep(0.3)  # let the server settle after start
            cpu0, t0, cores0 = cpu_seconds(proc.pid), time.monotonic(), core_times()
            command = [
                *tool_command("stun-flood", generator_cpu), "127.0.0.1", str(port),
                f"{seconds:g}", str(sockets), str(window),
            ]  # fmt: skip
            try:
                gen = subprocess.run(
                    command, capture_output=True, timeout=seconds + 60, env=env, check=False
                )
            except subprocess.TimeoutExpired:
                raise UsageError(f"the load generator did not finish against {name}") from None
            elapsed = time.monotonic() - t0
            cpu1, cores1 = cpu_seconds(proc.pid), core_times()
        finally:
            stop(proc)
        server_text = out_path.read_text(errors="replace")
    text = gen.stdout.decode(errors="replace")
    fields = dict(_KV.findall(text))
    if gen.returncode or "responses" not in fields:
        detail = (gen.stderr.decode(errors="replace").strip() or text.strip())[-200:]
        raise UsageError(f"the load generator failed against {name}: {detail!r}")
    responses, gen_seconds = int(fields["responses"]), float(fields["seconds"])
    server_cpu = cpu1 - cpu0
    result: dict[str, Any] = {
        "server": name,
        "responses": responses,
        "other": int(fields["other"]),
        "sent": int(fields["sent"]),
        "refills": int(fields["refills"]),
        "seconds": gen_seconds,
        "rate": round(responses / gen_seconds) if gen_seconds > 0 else 0,
        "server_cpu": round(server_cpu / elapsed, 3),
        "generator_cpu": round(float(fields["cpu"]) / gen_seconds, 3) if gen_seconds > 0 else 0,
        "gso": fields["gso"] == "1",
        "per_cpu_second": round(responses / server_cpu) if server_cpu > 0 else None,
        "server_core_busy": core_busy(cores0, cores1, server_core),
        "generator_core_busy": core_busy(cores0, cores1, generator_cpu),
    }
    line = _PATH_LINE.search(server_text)
    if line:
        result["udp_path"] = line[1].strip()
    return result


def run(
    *,
    seconds: float = 5.0,
    rounds: int = 2,
    server_cpu: int = 1,
    generator_cpu: int = 0,
    sockets: int = 16,
    window: int = 32,
    fast_path: str = "auto",
    with_coturn: bool = True,
    with_ceiling: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the benchmark; returns the report (see docs/bench_stun.md for the keys)."""
    say = progress or (lambda _msg: None)
    check_seconds_rounds(seconds, rounds)
    if not 1 <= sockets <= 1024 or not 1 <= window <= 1024:
        raise ConfigError(f"{sockets} / {window}: give 1-1024 sockets and 1-1024 in flight",
                          param="sockets" if not 1 <= sockets <= 1024 else "window")
    ncpu = os.cpu_count() or 1
    for param, cpu in (("server_cpu", server_cpu), ("generator_cpu", generator_cpu)):
        if not 0 <= cpu < ncpu:
            raise ConfigError(f"{cpu}: this machine has CPUs 0-{ncpu - 1}", param=param)
    if server_cpu == generator_cpu:
        raise ConfigError(f"{cpu}: the server and the generator need one core each", param="generator_cpu")
    if fast_path not in ("auto", "c", "python"):
        raise ConfigError(f"{fast_path}: choose auto, c or python", param="fast_path")
    if shutil.which("taskset") is None:
        raise PrerequisiteError(
            "taskset is not installed (CPU pinning): apt-get install util-linux"
        )
    if with_coturn and shutil.which("turnserver") is None:
        raise PrerequisiteError("coturn is not installed: apt-get install coturn (or leave coturn out)")
    tool_command("stun-flood")  # the generator is built, or say so before anything starts

    from natkit.server._fastpath import describe, helper_status

    if fast_path == "python":
        kind = "python (NATKIT_NO_CEXT=1)"
    else:
        kind = helper_status()
        if fast_path == "c" and kind != "c":
            raise PrerequisiteError(
                f"the C fast path is not available ({describe()}): reinstall natkit where gcc "
                "and the Python headers are installed, or unset NATKIT_NO_CEXT"
            )
    env = child_env()
    natkit_env = child_env(no_cext=fast_path == "python")

    runs: list[dict[str, Any]] = []
    order = [
        n for n in SERVERS if (n != "coturn" or with_coturn) and (n != "ceiling" or with_ceiling)
    ]
    for rnd in range(1, rounds + 1):
        for name in order:
            port = free_port("127.0.0.1")

            def make(tmp: Path, name: str = name, port: int = port) -> list[str]:
                if name == "natkit":
                    return natkit_command(port, server_cpu)
                if name == "coturn":
                    return coturn_command(port, server_cpu, tmp)
                return ceiling_command(port, server_cpu, seconds + 120)

            say(f"round {rnd}/{rounds}: {name} on 127.0.0.1:{port} (cpu {server_cpu}) ...")
            result = _one_run(
                name, make, port, seconds=seconds, sockets=sockets, window=window,
                generator_cpu=generator_cpu, server_core=server_cpu,
                env=natkit_env if name == "natkit" else env,
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
            "generator_cpu": round(statistics.mean(r["generator_cpu"] for r in mine), 3),
            "generator_core_busy": round(
                statistics.mean(r["generator_core_busy"] for r in mine), 3
            ),
            "per_cpu_second": round(statistics.mean(per_cpu)) if per_cpu else None,
        }

    def ratios(key: str, peer: str) -> dict[str, Any]:
        """natkit / ``peer``: of the means, per round, their median, per CPU-second."""
        per_round: list[float | None] = []
        for rnd in range(1, rounds + 1):
            n = next(r for r in runs if r["round"] == rnd and r["server"] == "natkit")
            o = next(r for r in runs if r["round"] == rnd and r["server"] == peer)
            per_round.append(round(n["rate"] / o["rate"], 3) if o["rate"] else None)
        known = [r for r in per_round if r is not None]
        a, b = report["natkit"]["per_cpu_second"], report[peer]["per_cpu_second"]
        rate = report[peer]["rate"]
        return {
            key: round(report["natkit"]["rate"] / rate, 3) if rate else None,
            f"{key}_per_round": per_round,
            f"{key}_median": round(statistics.median(known), 3) if known else None,
            f"{key}_per_cpu_second": round(a / b, 3) if a and b else None,
        }

    natkit_runs = [r for r in runs if r["server"] == "natkit"]
    report: dict[str, Any] = {
        "schema_version": 2,
        "kind": "bench-stun",
        "natkit": {
            **summary("natkit"),
            "fast_path": kind,
            "udp_path": natkit_runs[0].get("udp_path", "unknown"),
        },
        "generator": {
            "tool": "natkit.bench._stunload (python -m natkit.bench.loadgen stun-flood)",
            "gso": all(r["gso"] for r in runs),
            "sockets": sockets,
            "window": window,
            "seconds": seconds,
            "cpu": generator_cpu,
            "max_cpu": max(r["generator_cpu"] for r in runs),
        },
        "server_cpu": server_cpu,
        "rounds": rounds,
        "runs": runs,
    }
    if with_coturn:
        report["coturn"] = {**summary("coturn"), "version": coturn_version()}
        report.update(ratios("ratio", "coturn"))
    if with_ceiling:
        report["ceiling"] = {**summary("ceiling"), "what": "bare C reflector, recvmmsg/sendmmsg"}
        report.update(ratios("ceiling_ratio", "ceiling"))
    return report
