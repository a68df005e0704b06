"""`natkit bench turn`: natkit's TURN relay and coturn driven by the same client in one run.

Each engine runs on loopback pinned to one core (``taskset -c SERVER_CPU``): natkit as a
``natkit serve turn`` subprocess, coturn through :class:`natkit.server.coturn.CoturnServer`,
both with one static user, the same realm, relay ports and ``--allow-peer 127.0.0.0/8`` (the
peer is on loopback). The driver, the extension module natkit.bench._turnload (_turnload.c,
built at install time; run as ``python -m natkit.bench.loadgen turn ...``), runs pinned to
another core and makes its allocations the way a client does (401, then long-term credentials), each on its own UDP socket; it sends in
batches (one UDP GSO send per burst to one destination, recvmmsg reads) so that on one core it
drives well beyond what either server relays on one core (the null relay self-test shows
how far). The servers still receive every packet as its own datagram. Per engine, fresh
server each time, alternating engines round by round:

* ``allocations``: ALLOCATIONS allocations as fast as the server takes them (allocations/s);
  the server's RSS before and with them all held gives the memory per idle allocation; then
  every allocation is refreshed and counted (state held), then deleted. Counts beyond what
  one relay IP or one process's descriptor limit holds are spread as :class:`AllocationPlan`
  says (more loopback relay IPs; natkit with --workers and several driver processes).
* ``channel_data``: CLIENTS allocations bound to a channel toward a peer socket that reflects
  every datagram to the relay address it came from; WINDOW ChannelData messages in flight per
  allocation for SECONDS. ``relayed_per_s`` counts both directions (client->peer and
  peer->client are each one relayed packet); ``loss`` is 1 - received/sent.
* ``send_indication``: the same with CreatePermission, Send indications out, Data back.

Each traffic run records the CPU share of the server process and of the driver, and how busy
both cores were (/proc/stat): a server near 100% of its core with the driver below 100% of
its own means the server was the limit, not the driver. ``per_cpu_second`` (relayed packets
per CPU-second of the server) is the efficiency figure independent of who saturated first.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from natkit.bench._common import (
    Progress,
    check_seconds_rounds,
    core_busy,
    core_times,
    coturn_version,
    cpu_seconds,
    cpu_seconds_each,
    rss_bytes,
    stop,
    tool_command,
)
from natkit.errors import ConfigError, PrerequisiteError, UsageError
from natkit.server._workers import raise_fd_limit

ENGINES = ("natkit", "coturn")
USER, PASSWORD, REALM = "bench", "bench-password", "natkit-bench"
RELAY_PORTS = (10000, 29999)  # below the kernel's ephemeral range, where the driver's ports are
MAX_ALLOCATIONS = 100_000
# One relay IP holds one allocation per relay port; one process holds one socket per
# allocation, up to its descriptor limit (RLIMIT_NOFILE, which only a process with
# CAP_SYS_RESOURCE may raise). So a large allocations run adds loopback relay IPs, and where
# the limit is lower than the count, natkit serves with --workers and the driver runs as
# several processes, each with a source IP of its own (one IP has ~28,000 ephemeral ports).
PER_RELAY_IP = RELAY_PORTS[1] - RELAY_PORTS[0] + 1
_FD_MARGIN = 1500  # descriptors a process keeps for everything but its allocations


@dataclass(frozen=True)
class AllocationPlan:
    """How ``allocations`` idle allocations are held on this machine."""

    allocations: int
    fd_limit: int
    #: natkit's processes (serve turn --workers) and the driver's processes
    workers: int
    drivers: int
    #: what coturn (one process) is asked for: the count, or what its limit allows
    coturn: int
    relay_ips: tuple[str, ...]

    @classmethod
    def make(cls, allocations: int, fd_limit: int | None = None) -> AllocationPlan:
        import resource

        limit = fd_limit or resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        per_process = max(1000, min(limit, 1 << 20) - _FD_MARGIN)
        workers = -(-allocations // per_process)
        # shares of the port range per worker are uneven by the hash's spread: 15 % spare
        spare = 1.15 if workers > 1 else 1.0
        n_ips = max(1, -(-int(allocations * spare) // PER_RELAY_IP))
        ips = ("127.0.0.1", *(f"127.0.2.{n}" for n in range(1, n_ips)))
        return cls(allocations, limit, workers, workers, min(allocations, per_process), ips)

    def driver_counts(self, total: int) -> list[int]:
        return [total // self.drivers + (1 if n < total % self.drivers else 0)
                for n in range(self.drivers)]  # fmt: skip

    def driver_sources(self, n: int) -> list[str]:
        """Driver ``n``'s source IP (none with one driver: the kernel's choice)."""
        return [] if self.drivers == 1 else [f"127.0.3.{n + 1}"]


# The peer is not on the relay's own IP (127.0.0.1): a relay treats its own IPs specially
# (natkit checks their ports per packet), and real peers are elsewhere.
PEER_IP = "127.0.0.2"
_KV = re.compile(r"(\w+)=(\S+)")


# -- the driver ---------------------------------------------------------------------------


def driver_command() -> list[str]:
    """The command that runs the driver (arguments follow); PrerequisiteError when natkit was
    installed without its extension modules."""
    return tool_command("turn")


class _LineReader:
    """Lines from a child's stdout, each read with a deadline (no unbounded wait)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc, self.buf = proc, b""
        self.sel = selectors.DefaultSelector()
        self.sel.register(proc.stdout, selectors.EVENT_READ)

    def line(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sel.select(left):
                return None
            assert self.proc.stdout is not None
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode(errors="replace")


def _fields(line: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in _KV.findall(line):
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
    return out


# -- the servers --------------------------------------------------------------------------


def natkit_command(port: int, cpu: int | str | None, extra: tuple[str, ...] = ()) -> list[str]:
    prefix = ["taskset", "-c", str(cpu)] if cpu is not None else []
    return [
        *prefix, sys.executable, "-m", "natkit", "serve", "turn",
        "--listen", f"127.0.0.1:{port}", "--realm", REALM, "--user", f"{USER}:{PASSWORD}",
        "--relay-ip", "127.0.0.1", "--allow-peer", "127.0.0.0/8",
        "--min-port", str(RELAY_PORTS[0]), "--max-port", str(RELAY_PORTS[1]), *extra,
    ]  # fmt: skip


@contextlib.contextmanager
def natkit_server(
    cpu: int | str | None, timeout: float = 20.0, extra: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, int], int]]:
    """``natkit serve turn`` on a free loopback port, pinned to ``cpu`` (a core or a taskset
    list): ((ip, port), pid); ``extra``: more flags (``--no-gro``, ``--workers N``: then it
    returns once every worker serves, as the server's announcement says)."""
    from natkit.server.coturn import free_port, wait_for_binding

    port = free_port("127.0.0.1")
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            natkit_command(port, cpu, extra),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            status = wait_for_binding(("127.0.0.1", port), timeout, proc)
            if status == "ok" and "--workers" in extra:
                status = _wait_for_announcement(log, proc, timeout)
            if status != "ok":
                log.seek(0)
                tail = log.read().decode(errors="replace").strip().splitlines() or ["no output"]
                raise UsageError(f"natkit serve turn did not start ({status}): {tail[-1][:200]}")
            yield ("127.0.0.1", port), proc.pid
        finally:
            stop(proc)


def _wait_for_announcement(log: Any, proc: subprocess.Popen[bytes], timeout: float) -> str:
    """Until ``natkit serve turn`` printed its start lines (with --workers: every worker up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return "exited"
        log.seek(0)
        if b"SIGTERM stops it" in log.read():
            return "ok"
        time.sleep(0.05)
    return "timeout"


@contextlib.contextmanager
def coturn_server(
    cpu: int | None, relay: list[str] | None = None
) -> Iterator[tuple[tuple[str, int], int]]:
    from natkit.server.coturn import CoturnServer

    turn = CoturnServer(
        [("127.0.0.1", 0)],
        realm=REALM,
        users={USER: PASSWORD},
        relay_ip=relay or "127.0.0.1",
        allow_peers=["127.0.0.0/8"],
        min_port=RELAY_PORTS[0],
        max_port=RELAY_PORTS[1],
        cpu=cpu,
    )
    with turn:
        assert turn.pid is not None
        yield turn.addresses_of("udp")[0], turn.pid


@contextlib.contextmanager
def stream_server(
    engine: str, cpu: int | None, transport: str, certs: tuple[Any, Any] | None
) -> Iterator[tuple[tuple[str, int], int]]:
    """``engine`` serving TURN over ``transport`` (tcp or tls, with ``certs``): its (ip, port)
    on that transport and its pid."""
    from natkit.server.coturn import CoturnServer, free_port

    if engine == "natkit":
        extra: tuple[str, ...] = ()
        tls_port = free_port("127.0.0.1") if certs else 0
        if certs:
            extra = ("--tls-cert", str(certs[0]), "--tls-key", str(certs[1]),
                     "--tls-port", str(tls_port))  # fmt: skip
        with natkit_server(cpu, extra=extra) as (addr, pid):
            yield ((addr[0], tls_port) if certs else addr), pid
        return
    tls: dict[str, Any] = {"tls_cert": str(certs[0]), "tls_key": str(certs[1])} if certs else {}
    turn = CoturnServer(
        [("127.0.0.1", 0)], realm=REALM, users={USER: PASSWORD}, relay_ip="127.0.0.1",
        allow_peers=["127.0.0.0/8"], min_port=RELAY_PORTS[0], max_port=RELAY_PORTS[1],
        cpu=cpu, **tls,
    )  # fmt: skip
    with turn:
        assert turn.pid is not None
        yield turn.addresses_of(transport)[0], turn.pid


@contextlib.contextmanager
def null_relay(cpu: int | None, driver: list[str]) -> Iterator[tuple[tuple[str, int], int]]:
    """The driver's C null relay (the least a relay can do): the driver self-test."""
    from natkit.server.coturn import free_port, wait_for_binding

    port = free_port("127.0.0.1")
    prefix = ["taskset", "-c", str(cpu)] if cpu is not None else []
    proc = subprocess.Popen(
        [*prefix, *driver, "null", "127.0.0.1", str(port), "900"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        if wait_for_binding(("127.0.0.1", port), 10, proc) != "ok":
            raise UsageError("the driver's null relay did not start (driver self-test)")
        yield ("127.0.0.1", port), proc.pid
    finally:
        stop(proc)


# -- one measurement ----------------------------------------------------------------------


class Bench:
    def __init__(
        self,
        *,
        seconds: float,
        allocations: int,
        clients: int,
        window: int,
        payload: int,
        server_cpu: int | None,
        driver_cpu: int | None,
        driver: list[str],
        natkit_flags: tuple[str, ...] = (),
    ) -> None:
        self.natkit_flags = natkit_flags
        self.seconds, self.allocations, self.clients = seconds, allocations, clients
        self.window, self.payload = window, payload
        self.server_cpu, self.driver_cpu, self.driver = server_cpu, driver_cpu, driver
        from natkit.stun import long_term_key

        self.key = long_term_key(USER, REALM, PASSWORD).hex()
        # the driver's setup (and refresh) deadline: 60 s, more for a large allocations run
        self.setup_seconds = max(60, allocations // 500)
        self.plan = AllocationPlan.make(allocations)

    def _driver(self, mode: str, addr: tuple[str, int], *extra: str) -> subprocess.Popen[bytes]:
        prefix = ["taskset", "-c", str(self.driver_cpu)] if self.driver_cpu is not None else []
        command = [*prefix, *self.driver, mode, addr[0], str(addr[1]), USER, self.key, *extra]
        return subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def _finish(self, proc: subprocess.Popen[bytes], what: str) -> None:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        assert proc.stderr is not None
        err = proc.stderr.read().decode(errors="replace").strip()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        if proc.returncode not in (0, None):
            raise UsageError(
                f"the TURN load driver failed ({what}): {err[-200:] or proc.returncode}"
            )

    def _setup(
        self, reader: _LineReader, proc: subprocess.Popen[bytes], engine: str
    ) -> dict[str, Any]:
        line = reader.line(self.setup_seconds + 60)
        if line is None or not line.startswith("setup"):
            proc.kill()
            raise UsageError(f"the TURN load driver got no allocations from {engine}: {line!r}")
        setup = _fields(line)
        if setup["ok"] == 0:
            proc.kill()
            raise UsageError(
                f"{engine} refused every allocation (first error {setup['first_error']})"
            )
        return setup

    def allocations_run(
        self, engine: str, addr: tuple[str, int], pid: int, count: int | None = None
    ) -> dict[str, Any]:
        """``count`` (default: all) allocations made as fast as the server takes them, held
        idle (memory), refreshed (state held), released; by the plan's driver processes
        at once, each with its share."""
        requested = count or self.allocations
        plan = self.plan
        time.sleep(0.3)  # let the server settle after start
        before = rss_bytes(pid)
        cpu0 = cpu_seconds(pid)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for n, share in enumerate(plan.driver_counts(requested)):
                sources = plan.driver_sources(n)
                flags = ("-a", ",".join(sources)) if sources else ()
                procs.append(self._driver(
                    "alloc", addr, "-n", str(share), "-c", str(max(16, 256 // plan.drivers)),
                    "-l", "3600", "-t", str(self.setup_seconds), *flags,
                ))  # fmt: skip
            readers = [_LineReader(p) for p in procs]
            setups = [self._setup(r, p, engine) for r, p in zip(readers, procs, strict=True)]
            made = sum(int(s["ok"]) for s in setups)
            # the server's CPU time over the allocations (threads and workers included): a
            # figure other work on the machine moves less than the wall-clock rate
            server_cpu = cpu_seconds(pid) - cpu0
            time.sleep(1.0 if made >= 1000 else 0.2)  # idle: let the server finish deferred work
            held = rss_bytes(pid)
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")
                proc.stdin.flush()
            results = [_fields(r.line(self.setup_seconds + 60) or "") for r in readers]
        except BaseException:  # Ctrl-C or a failure: the drivers go now, not at their end
            for proc in procs:
                proc.kill()
                proc.wait(5)
            raise
        for proc in procs:
            self._finish(proc, "allocations")
        # the drivers ran side by side: the count over the longest one's time
        seconds = max(float(s["seconds"]) for s in setups)
        return {
            "requested": requested,
            "allocated": made,
            "failed": sum(int(s["failed"]) + int(s["unanswered"]) for s in setups),
            # requests the driver sent again after a timeout (a reply the server dropped,
            # or one late): each costs its client 250 ms or more
            "retransmits": sum(int(s.get("retransmits", 0)) for s in setups),
            "per_s": round(made / seconds) if seconds > 0 else 0,
            "per_cpu_second": round(made / server_cpu) if server_cpu > 0 else None,
            "server_cpu": round(server_cpu / seconds, 3) if seconds > 0 else None,
            "refreshed": sum(int(r.get("refreshed", 0)) for r in results),
            "released": sum(int(r.get("released", 0)) for r in results),
            "rss_before": before,
            "rss_held": held,
            "bytes_per_allocation": round((held - before) / made),
            "server_processes": plan.workers if engine == "natkit" else 1,
            "driver_processes": plan.drivers,
            "relay_ips": len(plan.relay_ips),
        }

    def traffic_run(
        self,
        mode: str,
        engine: str,
        addr: tuple[str, int],
        pid: int,
        cores: list[int] | None = None,
    ) -> dict[str, Any]:
        """One traffic run; ``cores``: the server's cores when it has several (workers)."""
        time.sleep(0.3)
        proc = self._driver(
            mode, addr, "-n", str(self.clients), "-w", str(self.window),
            "-b", str(self.payload), "-s", f"{self.seconds:g}", "-p", PEER_IP,
        )  # fmt: skip
        reader = _LineReader(proc)
        try:
            self._setup(reader, proc, engine)
            each0, t0, cores0 = cpu_seconds_each(pid), time.monotonic(), core_times()
            line = reader.line(self.seconds + 60)
            elapsed = time.monotonic() - t0
            each1, cores1 = cpu_seconds_each(pid), core_times()
            reader.line(30)  # released=N
        except BaseException:  # Ctrl-C or a failure: the driver goes now, not at its end
            proc.kill()
            proc.wait(5)
            raise
        self._finish(proc, mode)
        if line is None or not line.startswith("result"):
            raise UsageError(f"the TURN load driver stopped early against {engine}: {line!r}")
        r = _fields(line)
        server_cpu = sum(each1.values()) - sum(each0.values())
        relayed = int(r["peer_rx"]) + int(r["client_rx"])
        out: dict[str, Any] = {
            "relayed_per_s": round(float(r["relayed_per_s"])),
            "round_trips_per_s": round(float(r["round_trips_per_s"])),
            "sent": int(r["sent"]),
            "received": int(r["client_rx"]),
            "peer_received": int(r["peer_rx"]),  # the peer's count: where a loss happened
            "loss": round(float(r["loss"]), 6),
            "server_cpu": round(server_cpu / elapsed, 3),
            "driver_cpu": round(float(r["driver_cpu"]), 3),
            "per_cpu_second": round(relayed / server_cpu) if server_cpu > 0 else None,
            # of the lost: dropped at the driver's own sockets (receive buffers, its echoes)
            "driver_dropped": int(r.get("driver_dropped", 0)),
            "refills": int(r.get("refills", 0)),  # silences the driver took as loss
            "late": int(r.get("late", 0)),  # back after the drain: not lost, not in the rate
        }
        driver_cpu = float(r["driver_cpu_s"])
        # what one core of the driver sustains: far above relayed_per_s = not the limit
        out["driver_per_cpu_second"] = round(relayed / driver_cpu) if driver_cpu > 0 else None
        if cores is not None:  # several server processes: each one's share of a core
            busy = [round((each1[p] - each0.get(p, 0.0)) / elapsed, 3) for p in each1]
            out["process_cpu"] = sorted((b for b in busy if b >= 0.01), reverse=True)
            out["server_cores_busy"] = round(sum(core_busy(cores0, cores1, c) for c in cores), 3)
        if self.server_cpu is not None and self.driver_cpu is not None:
            out["server_core_busy"] = core_busy(cores0, cores1, self.server_cpu)
            out["driver_core_busy"] = core_busy(cores0, cores1, self.driver_cpu)
        return out

    def workers_run(self, workers: int, cpus: str | None) -> dict[str, Any]:
        """ChannelData against natkit with 1 and with ``workers`` processes (--workers), all
        pinned to ``cpus``: relayed/s per busy server core (per_cpu_second: per CPU-second of
        all server processes) and the efficiency, N workers' figure over 1 worker's."""
        cores = parse_cpus(cpus) if cpus is not None else None
        out: dict[str, Any] = {}
        for n in (1, workers):
            extra = (*self.natkit_flags, "--workers", str(n))
            with natkit_server(cpus, extra=extra) as (addr, pid):
                out[str(n)] = self.traffic_run("channel", f"natkit x{n}", addr, pid, cores or [])
        one, many = out["1"]["per_cpu_second"], out[str(workers)]["per_cpu_second"]
        out["efficiency"] = round(many / one, 3) if one and many else None
        return out

    def self_test(self) -> dict[str, Any]:
        """The same traffic runs against the C null relay: what the driver can do."""
        out: dict[str, Any] = {}
        for section, mode in (("channel_data", "channel"), ("send_indication", "send")):
            with null_relay(self.server_cpu, self.driver) as (addr, pid):
                out[section] = self.traffic_run(mode, "the null relay", addr, pid)
        return out

    def engine_round(self, engine: str) -> dict[str, Any]:
        def start(cpu: int | None, plan: AllocationPlan | None = None) -> Any:
            if engine == "natkit":
                more: list[str] = []
                if plan is not None:
                    more = [f for ip in plan.relay_ips[1:] for f in ("--relay-ip", ip)]
                    if plan.workers > 1:
                        more += ["--workers", str(plan.workers)]
                return natkit_server(cpu, timeout=60.0, extra=(*self.natkit_flags, *more))
            return coturn_server(cpu, list(plan.relay_ips) if plan else None)

        out: dict[str, Any] = {}
        plan = self.plan
        count = plan.allocations if engine == "natkit" else plan.coturn
        # a fresh server for each figure: memory is measured from a clean start
        with start(self.server_cpu, plan) as (addr, pid):
            out["allocations"] = self.allocations_run(engine, addr, pid, count)
        with start(self.server_cpu) as (addr, pid):
            out["channel_data"] = self.traffic_run("channel", engine, addr, pid)
        with start(self.server_cpu) as (addr, pid):
            out["send_indication"] = self.traffic_run("send", engine, addr, pid)
        return out


def parse_cpus(text: str) -> list[int]:
    """A taskset CPU list ("1", "1-3", "0,2") as core numbers (UsageError if malformed)."""
    cores: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.partition("-")
            first, last = int(low), int(high or low)
            if not 0 <= first <= last < 4096:
                raise ValueError
            cores += range(first, last + 1)
    except ValueError:
        raise ConfigError(f"{text[:40]!r}: give a CPU list, e.g. 1 or 1-3 or 1,3", param="worker_cpus") from None
    return sorted(set(cores))


# -- the whole benchmark ------------------------------------------------------------------

FIGURES = (  # (section, key, higher is better)
    ("channel_data", "relayed_per_s", True),
    ("channel_data", "per_cpu_second", True),
    ("send_indication", "relayed_per_s", True),
    ("send_indication", "per_cpu_second", True),
    ("allocations", "per_s", True),
    ("allocations", "per_cpu_second", True),
    ("allocations", "bytes_per_allocation", False),
)
SCHEMA_VERSION = 2
# natkit / coturn per server core, and natkit / the driver's null relay (the kernel's ceiling
# with this driver) for ChannelData
TARGETS = {
    "channel_data.relayed_per_s": 2.0,
    "send_indication.relayed_per_s": 2.0,
    "allocations.per_s": 2.0,
}
NULL_TARGET = 0.5  # ChannelData natkit / null relay
BUSY = 0.9  # a core at least this busy (softirq included) is the limit


def run(
    *,
    seconds: float = 5.0,
    engines: tuple[str, ...] = ENGINES,
    rounds: int = 1,
    allocations: int = 10_000,
    clients: int = 16,
    window: int = 32,
    payload: int = 100,
    server_cpu: int | None = 1,
    driver_cpu: int | None = 0,
    self_test: bool = True,
    gro: bool = True,
    workers: int = 1,
    worker_cpus: str | None = None,
    progress: Progress | None = None,
    c_allocate: bool = True,
) -> dict[str, Any]:
    """Run the benchmark; returns the report (keys documented in docs/bench_turn.md).
    ``workers`` > 1: each round also runs ChannelData against natkit with 1 and with that
    many processes, all pinned to ``worker_cpus`` (a taskset list; default the server's core)."""
    say = progress or (lambda _msg: None)
    check_seconds_rounds(seconds, rounds)
    if not 1 <= workers <= 64:
        raise ConfigError(f"{workers}: give 1-64 processes", param="workers")
    if workers > 1 and "natkit" not in engines:
        raise ConfigError("several workers measure natkit's engine: add natkit to the engines", param="engines")
    if not 1 <= allocations <= MAX_ALLOCATIONS:
        raise ConfigError(f"{allocations}: give 1-{MAX_ALLOCATIONS} (one relay port each)", param="allocations")
    raise_fd_limit()  # both engines and the driver hold a socket per allocation
    if not 1 <= clients <= 1024 or not 1 <= window <= 1024:
        raise ConfigError(f"{clients} / {window}: give 1-1024 clients and 1-1024 in flight",
                          param="clients" if not 1 <= clients <= 1024 else "window")
    if not 8 <= payload <= 1200:
        raise ConfigError(f"{payload}: give 8-1200 bytes", param="payload")
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        raise ConfigError(f"{','.join(engines)}: choose from natkit,coturn", param="engines")
    ncpu = os.cpu_count() or 1
    if ncpu < 2:
        server_cpu = driver_cpu = None  # nothing to pin to: say so in the report
    else:
        for param, cpu in (("server_cpu", server_cpu), ("driver_cpu", driver_cpu)):
            if cpu is not None and not 0 <= cpu < ncpu:
                raise ConfigError(f"{cpu}: this machine has CPUs 0-{ncpu - 1}", param=param)
        if server_cpu == driver_cpu:
            raise ConfigError(f"{driver_cpu}: the server and the driver need one core each", param="driver_cpu")
        if worker_cpus is None and server_cpu is not None:
            worker_cpus = str(server_cpu)
        if worker_cpus is not None:
            bad = [c for c in parse_cpus(worker_cpus) if c >= ncpu]
            if bad:
                raise ConfigError(f"{worker_cpus}: this machine has CPUs 0-{ncpu - 1}", param="worker_cpus")
        if shutil.which("taskset") is None:
            raise PrerequisiteError("taskset is not installed (CPU pinning): apt-get install util-linux")
    if "coturn" in engines and shutil.which("turnserver") is None:
        raise PrerequisiteError("coturn is not installed: apt-get install coturn (or measure natkit alone)")

    bench = Bench(
        seconds=seconds, allocations=allocations, clients=clients, window=window,
        payload=payload, server_cpu=server_cpu, driver_cpu=driver_cpu, driver=driver_command(),
        natkit_flags=(*(() if gro else ("--no-gro",)), *(() if c_allocate else ("--no-c-allocate",))),
    )  # fmt: skip
    load_before = os.getloadavg()[0]
    runs: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
    nulls: list[dict[str, Any]] = []
    scaling: list[dict[str, Any]] = []
    if ncpu < 2:
        worker_cpus = None
    for rnd in range(1, rounds + 1):
        for engine in engines:
            say(
                f"round {rnd}/{rounds}: {engine} (server on CPU {server_cpu}, driver on CPU {driver_cpu}) ..."
            )
            result = bench.engine_round(engine)
            runs[engine].append(result)
            ch, a = result["channel_data"], result["allocations"]
            say(
                f"  {engine}: ChannelData {ch['relayed_per_s']:,} relayed/s, loss {ch['loss']:.2%} "
                f"(server {ch['server_cpu']:.0%}, driver {ch['driver_cpu']:.0%} of a core); "
                f"{a['per_s']:,} allocations/s; {a['bytes_per_allocation']:,} B/allocation"
            )
        if self_test:  # the ceiling in the same round, on the same core
            nulls.append(bench.self_test())
            say(
                f"  null relay: ChannelData {nulls[-1]['channel_data']['relayed_per_s']:,} "
                f"relayed/s, Send {nulls[-1]['send_indication']['relayed_per_s']:,}/s"
            )
        if workers > 1:
            say(f"  natkit with 1 and {workers} workers on CPU(s) {worker_cpus} ...")
            scaling.append(bench.workers_run(workers, worker_cpus))
            w = scaling[-1]
            say(
                f"  workers: 1 -> {w['1']['per_cpu_second']:,}, {workers} -> "
                f"{w[str(workers)]['per_cpu_second']:,} relayed per server CPU-second "
                f"(efficiency {w['efficiency']})"
            )

    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "bench-turn",
        "settings": {
            "seconds": seconds, "rounds": rounds, "allocations": allocations,
            "clients": clients, "window": window, "payload": payload,
            "server_cpu": server_cpu, "driver_cpu": driver_cpu, "driver": " ".join(bench.driver),
            "peer_ip": PEER_IP, "gro": gro, "c_allocate": c_allocate,
            # other work on the machine competes for the pinned cores: the 1-minute load
            # average before and after the engine runs says how quiet the machine was
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "cpus": ncpu,
        },
        "engines": {e: _summary(runs[e]) for e in engines},
        "runs": runs,
    }  # fmt: skip
    if "coturn" in engines:
        report["engines"]["coturn"]["version"] = coturn_version()
    if nulls:
        report["self_test"] = _summary(nulls, sections=("channel_data", "send_indication"))
        report["runs"]["null"] = nulls
    if "natkit" in engines and "coturn" in engines:
        n, c = report["engines"]["natkit"], report["engines"]["coturn"]
        report["ratios"] = _ratios(n, c)
        per_round = [_ratios(a, b) for a, b in zip(runs["natkit"], runs["coturn"], strict=True)]
        report["ratios_per_round"] = per_round
    if "natkit" in engines and nulls:
        report["null_ratios"] = _null_ratios(report["engines"]["natkit"], report["self_test"])
        report["null_ratios_per_round"] = [
            _null_ratios(a, b) for a, b in zip(runs["natkit"], nulls, strict=True)
        ]
    if scaling:
        report["workers"] = _workers_summary(scaling, workers, worker_cpus)
    if "ratios" in report:
        report["target"] = _target(report)
    report["limits"] = _limits(report["engines"])
    report["driver_max_cpu"] = max(
        f[section]["driver_cpu"]
        for rounds_ in runs.values()
        for f in rounds_
        for section in ("channel_data", "send_indication")
    )
    return report


def _stream_traffic_run(
    bench: Bench, engine: str, transport: str, certs: tuple[Any, Any] | None,
    peer: tuple[str, int],
) -> dict[str, Any]:  # fmt: skip
    """One traffic run of ``engine`` over ``transport`` with a fresh server."""
    with stream_server(engine, bench.server_cpu, transport, certs) as (addr, pid):
        time.sleep(0.3)
        prefix = ["taskset", "-c", str(bench.driver_cpu)] if bench.driver_cpu is not None else []
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "natkit.bench.turn_stream", addr[0], str(addr[1]),
             transport, USER, PASSWORD, peer[0], str(peer[1]), str(bench.clients),
             str(bench.window), str(bench.payload), f"{bench.seconds:g}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        reader = _LineReader(proc)
        try:
            setup = reader.line(60)
            if setup is None or not setup.startswith("setup"):
                proc.kill()
                _, err = proc.communicate(timeout=10)
                tail = err.decode(errors="replace").strip().splitlines() or [repr(setup)]
                raise UsageError(f"the TCP/TLS driver got no allocations from {engine}: {tail[-1]}")
            cpu0, t0, cores0 = cpu_seconds(pid), time.monotonic(), core_times()
            line = reader.line(bench.seconds + 30)
            elapsed = time.monotonic() - t0
            cpu1, cores1 = cpu_seconds(pid), core_times()
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)
    if line is None or not line.startswith("result"):
        raise UsageError(f"the TCP/TLS driver stopped early against {engine}: {line!r}")
    r = _fields(line)
    server_cpu = cpu1 - cpu0
    out = {
        "relayed_per_s": int(r["relayed_per_s"]),
        "sent": int(r["sent"]),
        "received": int(r["received"]),
        "loss": float(r["loss"]),
        "server_cpu": round(server_cpu / elapsed, 3),
        "driver_cpu": float(r["driver_cpu"]),
        "per_cpu_second": round(2 * int(r["received"]) / server_cpu) if server_cpu > 0 else None,
        # echoes the driver's own peer could not send (TCP; 0 with turnutils_peer)
        "driver_dropped": int(r.get("peer_lost", 0)),
    }
    if bench.server_cpu is not None and bench.driver_cpu is not None:
        out["server_core_busy"] = core_busy(cores0, cores1, bench.server_cpu)
        out["driver_core_busy"] = core_busy(cores0, cores1, bench.driver_cpu)
    return out


STREAM_TARGET = 1.0  # TCP and TLS ChannelData natkit / coturn


def run_stream(
    *,
    transport: str,
    seconds: float = 5.0,
    engines: tuple[str, ...] = ENGINES,
    rounds: int = 1,
    clients: int = 16,
    window: int = 32,
    payload: int = 100,
    server_cpu: int | None = 1,
    driver_cpu: int | None = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """ChannelData over TURN-over-TCP or -TLS (natkit/bench/turn_stream.py), both engines in
    one run; the report has the UDP report's shape with ``channel_data`` only."""
    from natkit.bench import turn_stream

    say = progress or (lambda _msg: None)
    check_seconds_rounds(seconds, rounds)
    if transport not in turn_stream.TRANSPORTS:
        raise ConfigError(f"{transport}: choose udp, tcp or tls", param="transport")
    if not 1 <= clients <= 1024 or not 1 <= window <= 1024:
        raise ConfigError(f"{clients} / {window}: give 1-1024 clients and 1-1024 in flight",
                          param="clients" if not 1 <= clients <= 1024 else "window")
    if not 8 <= payload <= 1200 or payload % 4:
        raise ConfigError(f"{payload}: give 8-1200 bytes, a multiple of 4 over TCP", param="payload")
    tools = (("turnutils_peer", "coturn"),) if transport == "tls" else ()
    for tool, package in (*tools, ("taskset", "util-linux")):
        if shutil.which(tool) is None:
            raise PrerequisiteError(f"{tool} is not installed (the TLS runs): apt-get install {package}")
    if transport == "tcp":
        from natkit.bench import loadgen

        why = loadgen.missing("turn")  # the TCP driver's traffic loop is in that module
        if why:
            raise PrerequisiteError(why)
    if "coturn" in engines and shutil.which("turnserver") is None:
        raise PrerequisiteError("coturn is not installed: apt-get install coturn (or measure natkit alone)")
    if (os.cpu_count() or 1) < 2:
        server_cpu = driver_cpu = None
    bench = Bench(
        seconds=seconds, allocations=1, clients=clients, window=window, payload=payload,
        server_cpu=server_cpu, driver_cpu=driver_cpu, driver=[],
    )  # fmt: skip
    load_before = os.getloadavg()[0]
    runs: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
    with turn_stream.certificates(transport) as certs, turn_stream.peer_for(
        transport, driver_cpu, PEER_IP
    ) as peer:
        for rnd in range(1, rounds + 1):
            for engine in engines:
                say(f"round {rnd}/{rounds}: {engine} over {transport.upper()} ...")
                figures = _stream_traffic_run(bench, engine, transport, certs, peer)
                runs[engine].append({"channel_data": figures})
                say(
                    f"  {engine}: ChannelData {figures['relayed_per_s']:,} relayed/s, loss "
                    f"{figures['loss']:.2%} (server {figures['server_cpu']:.0%}, driver "
                    f"{figures['driver_cpu']:.0%} of a core)"
                )
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "bench-turn",
        "settings": {
            "transport": transport, "seconds": seconds, "rounds": rounds, "clients": clients,
            "window": window, "payload": payload, "server_cpu": server_cpu,
            "driver_cpu": driver_cpu, "driver": turn_stream.driver_name(transport),
            "peer": turn_stream.peer_name(transport), "peer_ip": PEER_IP,
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "cpus": os.cpu_count() or 1,
        },
        "engines": {e: _summary(runs[e], sections=("channel_data",)) for e in engines},
        "runs": runs,
    }  # fmt: skip
    if "coturn" in engines:
        report["engines"]["coturn"]["version"] = coturn_version()
    if "natkit" in engines and "coturn" in engines:

        def ratio(n: dict[str, Any], c: dict[str, Any]) -> dict[str, float | None]:
            out: dict[str, float | None] = {}
            for key in ("relayed_per_s", "per_cpu_second"):
                a, b = n["channel_data"].get(key), c["channel_data"].get(key)
                out[f"channel_data.{key}"] = round(a / b, 3) if a and b else None
            return out

        report["ratios"] = ratio(report["engines"]["natkit"], report["engines"]["coturn"])
        per_round = [ratio(a, b) for a, b in zip(runs["natkit"], runs["coturn"], strict=True)]
        report["ratios_per_round"] = per_round
        key = "channel_data.relayed_per_s"
        rounds_ = [r[key] for r in per_round]
        median = report["ratios"][key]
        loss = report["engines"]["natkit"]["channel_data"]["loss"]
        report["target"] = {
            "floors": {
                f"{key}_vs_coturn": {
                    "floor": STREAM_TARGET, "median": median, "rounds": rounds_,
                    "rounds_met": sum(1 for r in rounds_ if r is not None and r >= STREAM_TARGET),
                    "met": median is not None and median >= STREAM_TARGET,
                },
            },
            "channel_data_loss": loss,
            "met": median is not None and median >= STREAM_TARGET and loss == 0,
        }  # fmt: skip
    report["limits"] = _limits(report["engines"], sections=("channel_data",))
    return report


def _workers_summary(
    scaling: list[dict[str, Any]], workers: int, cpus: str | None
) -> dict[str, Any]:
    """The --workers section: medians of 1 and N workers, the efficiency per round."""
    keys = ("relayed_per_s", "per_cpu_second", "server_cpu", "loss")
    medians: dict[str, Any] = {}
    for n in ("1", str(workers)):
        medians[n] = {}
        for key in keys:
            values = [r[n][key] for r in scaling if r[n].get(key) is not None]
            medians[n][key] = statistics.median(values) if values else None
    rounds = [r["efficiency"] for r in scaling]
    known = [e for e in rounds if e is not None]
    return {
        "workers": workers,
        "cpus": cpus,
        "median": medians,
        "efficiency": round(statistics.median(known), 3) if known else None,
        "efficiency_per_round": rounds,
        "runs": scaling,
    }


def _ratios(n: dict[str, Any], c: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for section, key, _ in FIGURES:
        a, b = n[section].get(key), c[section].get(key)
        out[f"{section}.{key}"] = round(a / b, 3) if a and b else None
    return out


def _null_ratios(n: dict[str, Any], null: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for section in ("channel_data", "send_indication"):
        a, b = n[section].get("relayed_per_s"), null[section].get("relayed_per_s")
        out[f"{section}.relayed_per_s"] = round(a / b, 3) if a and b else None
    return out


def _target(report: dict[str, Any]) -> dict[str, Any]:
    """Each floor against the median ratio, and how many rounds met it on their own."""
    floors: dict[str, Any] = {}
    checks = [("ratios", k, v) for k, v in TARGETS.items()]
    if "null_ratios" in report:
        checks.append(("null_ratios", "channel_data.relayed_per_s", NULL_TARGET))
    for table, key, floor in checks:
        median = report[table].get(key)
        rounds = [r.get(key) for r in report[f"{table}_per_round"]]
        name = f"{key}_vs_{'coturn' if table == 'ratios' else 'null'}"
        floors[name] = {
            "floor": floor,
            "median": median,
            "rounds": rounds,
            "rounds_met": sum(1 for r in rounds if r is not None and r >= floor),
            "met": median is not None and median >= floor,
        }
    loss = report["engines"]["natkit"]["channel_data"]["loss"]
    return {
        "floors": floors,
        "channel_data_loss": loss,
        "met": all(f["met"] for f in floors.values()) and loss == 0,
    }


def _summary(
    rounds: list[dict[str, Any]],
    sections: tuple[str, ...] = ("channel_data", "send_indication", "allocations"),
) -> dict[str, Any]:
    """Per section and key: the median over rounds (the per-round values stay in ``runs``)."""
    out: dict[str, Any] = {}
    for section in sections:
        keys = rounds[0][section].keys()
        out[section] = {}
        for key in keys:
            values = [r[section][key] for r in rounds if r[section][key] is not None]
            out[section][key] = (
                (round(statistics.median(values), 6) if isinstance(values[0], float) else
                 round(statistics.median(values)))
                if values else None
            )  # fmt: skip
    return out


def _limits(
    engines: dict[str, Any], sections: tuple[str, ...] = ("channel_data", "send_indication")
) -> dict[str, str]:
    """Who limited each traffic run, from how busy each pinned core was (/proc/stat: user,
    system, irq and softirq, whoever ran there; on loopback much of a packet's cost is
    softirq time charged to the core of whoever sent it, not to any process).

    'server': the server's core was >= 90% busy and the driver's was not; 'driver': the
    reverse; 'both': both were (the figure is a lower bound on the server and the driver
    together); 'neither': neither core was full (latency-bound: raise --window).
    """
    out = {}
    for engine, figures in engines.items():
        for section in sections:
            f = figures[section]
            server = f.get("server_core_busy", f["server_cpu"]) >= BUSY
            driver = f.get("driver_core_busy", f["driver_cpu"]) >= BUSY
            verdict = {
                (True, False): "server", (False, True): "driver",
                (True, True): "both", (False, False): "neither",
            }[(server, driver)]  # fmt: skip
            out[f"{engine}.{section}"] = verdict
    return out
