"""`natkit bench probe`: natkit probe vs ``turnutils_natdiscovery -m -f -H`` on the same lab NATs.

For every NAT preset, one :class:`natkit.lab.netns.NatTopology` is built; an RFC 5780 STUN server
(coturn, or natkit's own responder) runs in the server namespace on both public addresses, and
both probes run in the client namespace, one after the other, as the commands a user would type.
Reported: wall time of each (process start to exit), natkit's verdict and whether it matches
the preset, and the ratio of the two times.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from natkit.errors import UsageError
from natkit.lab.nat import NatBehaviour
from natkit.lab.netns import NatTopology, NetnsLab, check_prerequisites
from natkit.stun import Class, Message, Method, StunParseError, decode

SCHEMA_VERSION = 1
PRESETS = ("open", "full-cone", "restricted-cone", "port-restricted", "symmetric", "udp-blocked")

# What natkit probe must answer for each lab preset: (nat_type, mapping, filtering).
EXPECTED: dict[str, tuple[str, str, str]] = {
    "open": ("open", "none", "endpoint-independent"),
    "full-cone": ("full-cone", "endpoint-independent", "endpoint-independent"),
    "restricted-cone": ("restricted-cone", "endpoint-independent", "address-dependent"),
    "port-restricted": (
        "port-restricted-cone",
        "endpoint-independent",
        "address-and-port-dependent",
    ),
    "symmetric": ("symmetric", "address-and-port-dependent", "address-and-port-dependent"),
    "udp-blocked": ("udp-blocked", "unknown", "unknown"),
}

STUN_PORT = 3478


def server_command(kind: str, ips: tuple[str, str], port: int = STUN_PORT) -> list[str]:
    """The command that runs an RFC 5780 server on both ``ips`` (``kind``: coturn | natkit)."""
    if kind == "coturn":
        if shutil.which("turnserver") is None:
            raise UsageError("coturn is not installed: apt-get install coturn")
        return [
            "turnserver",
            "-n",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--stun-only",
            "--log-file=stdout",
            "--simple-log",
            f"--listening-ip={ips[0]}",
            f"--listening-ip={ips[1]}",
            f"--listening-port={port}",
            f"--alt-listening-port={port + 1}",
            f"--relay-ip={ips[0]}",
        ]
    if kind == "natkit":
        listen = f"[{ips[0]}]:{port}" if ":" in ips[0] else f"{ips[0]}:{port}"
        return [
            sys.executable,
            "-m",
            "natkit",
            "serve",
            "stun",
            "--listen",
            listen,
            "--alternate-ip",
            ips[1],
        ]
    raise UsageError(f"unknown STUN server kind {kind!r}: choose coturn or natkit")


def wait_ready(
    make_socket: Callable[[int], socket.socket], addr: tuple[str, int], timeout: float = 10.0
) -> None:
    """Wait until a Binding request to ``addr`` is answered (``make_socket(family)`` gives a
    UDP socket in the right namespace)."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    sock = make_socket(family)
    try:
        sock.settimeout(0.1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            req = Message(Method.BINDING, Class.REQUEST)
            try:
                sock.sendto(req.encode(), addr)
                data, _ = sock.recvfrom(2048)
                if decode(data).transaction_id == req.transaction_id:
                    return
            except (TimeoutError, OSError, StunParseError):
                time.sleep(0.05)
        raise RuntimeError(f"the STUN server at {addr[0]}:{addr[1]} did not answer in {timeout}s")
    finally:
        sock.close()


def start_server(topo: NatTopology, kind: str) -> subprocess.Popen[Any]:
    """Start ``kind`` in ``topo``'s server namespace (killed with the topology) and wait for it."""
    return start_server_in(topo.lab, topo.server_ns, kind, topo.server_ips)


def start_server_in(
    lab: NetnsLab, ns: str, kind: str, ips: tuple[str, str]
) -> subprocess.Popen[Any]:
    """Start an RFC 5780 server of ``kind`` on ``ips`` inside namespace ``ns`` of ``lab``."""
    proc = lab.popen(
        ns, server_command(kind, ips), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for ip in ips:
            wait_ready(lambda fam: lab.socket(ns, fam), (ip, STUN_PORT))
    except RuntimeError:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def run_natkit_probe(topo: NatTopology, extra: Sequence[str] = ()) -> tuple[dict[str, Any], float]:
    """``natkit probe --json`` in the client namespace: (its JSON, wall seconds)."""
    argv = [
        sys.executable,
        "-m",
        "natkit",
        "probe",
        "--server",
        f"{topo.server_ips[0]}:{STUN_PORT}",
        "--json",
        *extra,
    ]
    t0 = time.monotonic()
    out = topo.run(topo.client_ns, argv, timeout=60)
    took = time.monotonic() - t0
    try:
        data = json.loads(out.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(
            f"natkit probe printed no JSON (exit {out.returncode}): {out.stderr.strip()[-500:]}"
        ) from None
    data["_exit"] = out.returncode
    return data, took


def run_natdiscovery(topo: NatTopology) -> tuple[str, float]:
    """``turnutils_natdiscovery -m -f -H SERVER`` in the client namespace: (verdicts, seconds)."""
    if shutil.which("turnutils_natdiscovery") is None:
        raise UsageError("turnutils_natdiscovery is missing: apt-get install coturn")
    argv = ["turnutils_natdiscovery", "-m", "-f", "-H", "-p", str(STUN_PORT), topo.server_ips[0]]
    t0 = time.monotonic()
    out = topo.run(topo.client_ns, argv, timeout=120)
    took = time.monotonic() - t0
    verdicts = [
        line.strip()
        for line in out.stdout.splitlines()
        if line.startswith("NAT with") or "hairpinning" in line.lower()
    ]
    return "; ".join(verdicts) or f"(exit {out.returncode})", took


@dataclass
class BenchRow:
    preset: str
    server: str
    natkit_s: float
    natkit_probe_s: float  # the probe's own duration_s (without interpreter start-up)
    natkit_type: str
    correct: bool
    natdiscovery_s: float | None = None
    natdiscovery: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.natdiscovery_s is None or self.natkit_s <= 0:
            return None
        return self.natdiscovery_s / self.natkit_s


@dataclass
class BenchResult:
    rows: list[BenchRow] = field(default_factory=list)
    command: str = ""

    @property
    def total_ratio(self) -> float | None:
        timed = [r for r in self.rows if r.natdiscovery_s is not None]
        if not timed:
            return None
        return sum(r.natdiscovery_s or 0.0 for r in timed) / sum(r.natkit_s for r in timed)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "bench-probe",
            "command": self.command,
            "rows": [
                {
                    "nat": r.preset,
                    "server": r.server,
                    "natkit_s": round(r.natkit_s, 3),
                    "natkit_probe_s": round(r.natkit_probe_s, 3),
                    "natkit_nat_type": r.natkit_type,
                    "correct": r.correct,
                    "natdiscovery_s": None
                    if r.natdiscovery_s is None
                    else round(r.natdiscovery_s, 3),
                    "natdiscovery": r.natdiscovery,
                    "ratio": None if r.ratio is None else round(r.ratio, 2),
                }
                for r in self.rows
            ],
            "ratio": None if self.total_ratio is None else round(self.total_ratio, 2),
            "all_correct": all(r.correct for r in self.rows),
        }


def matches(preset: str, data: dict[str, Any]) -> bool:
    want = EXPECTED[preset]
    return (data.get("nat_type"), data.get("mapping"), data.get("filtering")) == want


def bench_probe(
    presets: Sequence[str] = PRESETS,
    servers: Sequence[str] = ("coturn",),
    *,
    natdiscovery: bool = True,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Time natkit probe (and turnutils_natdiscovery) on each preset, against each server."""
    check_prerequisites()
    bad = [p for p in presets if p not in EXPECTED]
    if bad:
        raise UsageError(
            f"unknown NAT preset(s) {', '.join(bad)}: choose from {', '.join(PRESETS)}"
        )
    result = BenchResult(
        command="natkit bench probe "
        + " ".join(
            [f"--nat {p}" for p in presets]
            + [f"--server {s}" for s in servers]
            + ([] if natdiscovery else ["--no-natdiscovery"])
        )
    )
    for preset in presets:
        with NatTopology(NatBehaviour.preset(preset)) as topo:
            for kind in servers:
                proc = start_server(topo, kind)
                try:
                    data, took = run_natkit_probe(topo)
                    row = BenchRow(
                        preset,
                        kind,
                        took,
                        float(data.get("duration_s") or 0.0),
                        str(data.get("nat_type")),
                        matches(preset, data),
                    )
                    if natdiscovery:
                        row.natdiscovery, row.natdiscovery_s = run_natdiscovery(topo)
                finally:
                    stop(proc)
                result.rows.append(row)
                if progress is not None:
                    progress(
                        f"{preset:<16} {kind:<7} natkit {row.natkit_s:5.2f}s "
                        f"({row.natkit_type}{'' if row.correct else ' WRONG'})"
                        + (
                            f"  natdiscovery {row.natdiscovery_s:5.2f}s"
                            if row.natdiscovery_s is not None
                            else ""
                        )
                    )
    return result


__all__ = [
    "EXPECTED",
    "PRESETS",
    "BenchResult",
    "BenchRow",
    "bench_probe",
    "matches",
    "run_natdiscovery",
    "run_natkit_probe",
    "server_command",
    "start_server",
    "start_server_in",
    "stop",
    "wait_ready",
]
