"""Network namespaces, veth pairs, bridges and nftables NATs: the lab's netns engine.

Everything one run creates lives in network namespaces named ``<tag>-<role>``, where the tag is
``nk`` plus 6 random hex digits (``nk3fa2c1-rtr``). Bridges and veth ends are created directly
inside those namespaces, so nothing is added to the host's own namespace and deleting the
namespaces removes every link, address, route and nftables table with them. A state file
``/run/natkit/<tag>.json`` names the owning process; :func:`cleanup_leftovers` removes the
namespaces of runs whose owner is gone (``kill -9``, crash) and kills processes left in them.

Building blocks (:class:`NetnsLab`, a context manager)::

    with NetnsLab() as lab:                      # checks prerequisites, removes dead runs' leftovers
        a = lab.add_ns("a")                      # -> "nk3fa2c1-a" (loopback up)
        b = lab.add_ns("b")
        lab.add_bridge(a, "br0")                 # a bridge inside namespace a
        lab.add_veth(b, "eth0", a, "b0", master="br0")   # b:eth0 <-> a:b0 (port of br0)
        lab.add_addr(b, "eth0", "203.0.113.5/24")
        lab.add_route(b, "default", via="203.0.113.1")
        lab.sysctl(a, "net.ipv4.ip_forward", "1")
        lab.apply_nft(a, ruleset_text)           # nft -f inside a (check=True: nft -c only)
        lab.apply_nat(a, behaviour, inside_if="lan", outside_if="wan",
                      public_ip="203.0.113.1", inside_net="10.0.0.0/24")  # sysctls + ruleset
        lab.impair(b, "eth0", delay_ms=20, loss_pct=1)   # on packets leaving b:eth0 (see below)
        lab.impair(b, "eth0")                    # back to a clean link
        lab.run(b, ["ping", "-c1", "203.0.113.1"])        # subprocess.run inside b
        proc = lab.popen(b, ["python3", "server.py"])      # killed at teardown
        sock = lab.socket(b, socket.AF_INET, socket.SOCK_DGRAM)  # a socket living in b
        lab.in_netns(b, fn)                      # fn() in a thread that entered b
    # everything is gone here, also after an exception, Ctrl-C or SIGTERM

    cleanup_leftovers()                          # remove dead runs' namespaces; -> their names
    cleanup_leftovers(force=True)                # ...and live runs' of other processes too

``impair`` uses netem when the kernel has it (:func:`has_netem`); without netem, loss is done
by an nftables netdev egress rule and a delay raises :class:`~natkit.errors.PrerequisiteError`.
Failing system commands raise :class:`NetnsError` (a PrerequisiteError: exit status 2, one line
saying which command failed, why, and what to do).

The probe topology (:class:`NatTopology`)::

    with NatTopology(NatBehaviour.preset("symmetric"), clients=2) as topo:
        topo.server_ns, topo.router_ns, topo.client_ns, topo.client2_ns  # namespace names
        topo.server_ips            # ("203.0.113.10", "198.51.100.10"): RFC 5780 primary, alternate
        topo.router_public_ip      # "203.0.113.1": the NAT's public address
        topo.client_ip, topo.client2_ip   # "10.0.0.2", "10.0.0.3" ("192.0.2.x" for open)
        topo.run(topo.client_ns, ["natkit", "probe", "--server", "203.0.113.10"])
        topo.popen(topo.server_ns, [...]); topo.socket(topo.client_ns)
        topo.lab                   # the NetnsLab, to add more hosts on the public bridge:
        topo.add_public_host("turn", "203.0.113.20")   # -> namespace name

Layout: ``<tag>-inet`` holds the public bridge ``br0`` (203.0.113.0/24 and 198.51.100.0/24, both
on one segment); ``<tag>-srv`` has both server addresses on ``eth0``; ``<tag>-rtr`` has ``wan``
(203.0.113.1) and the LAN bridge ``lan`` (10.0.0.1/24, or 192.0.2.1/24 for ``open``); clients
have ``eth0`` and a default route via the router. The server side has no route to 10.0.0.0/24,
so only the NAT's public address is reachable from outside. ``NatTopology`` also works with
``async with`` (set-up runs in a worker thread).

Run as root; :func:`check_prerequisites` raises :class:`natkit.errors.PrerequisiteError`
naming what is missing.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TypeVar

from natkit.errors import ConfigError, PrerequisiteError
from natkit.lab import nats
from natkit.lab.nats import NatBehaviour

__all__ = [
    "PREFIX",
    "STATE_DIR",
    "NatTopology",
    "NetnsError",
    "NetnsLab",
    "check_prerequisites",
    "cleanup_leftovers",
    "enter_netns",
    "has_netem",
    "in_netns",
    "owner_alive",
    "process_start",
]

PREFIX = "nk"
STATE_DIR = Path("/run/natkit")
_NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000
_T = TypeVar("_T")


class NetnsError(PrerequisiteError):
    """A system command of the netns engine failed: the host refused (exit status 2)."""


# What a failing command's error text usually means on a lab host, and what to do about it.
_HINTS = (
    ("File exists", "a namespace or link of that name is left over: run 'natkit lab clean'"),
    ("Operation not permitted", "run as root with CAP_NET_ADMIN (not in an unprivileged container)"),
    ("Permission denied", "run as root with CAP_NET_ADMIN (not in an unprivileged container)"),
    ("No space left", "the host is out of a resource (namespaces, memory): run 'natkit lab clean'"),
    ("Cannot allocate memory", "the host is out of memory or of namespaces: run 'natkit lab clean'"),
    ("Could not process rule", "the kernel lacks an nftables feature this lab uses (nf_tables, nft_ct, nft_nat)"),
    ("No such file or directory", "a kernel module or tool is missing (nf_tables, veth, bridge): load or install it"),
    ("Unknown device type", "the kernel lacks a link type (veth, bridge): load its module (modprobe veth bridge)"),
)


def _hint(text: str) -> str:
    for needle, hint in _HINTS:
        if needle in text:
            return hint
    return "check the host (root, kernel modules veth/bridge/nf_tables) or run 'natkit lab clean'"


# --------------------------------------------------------------------------------------------
# prerequisites and plumbing


def check_prerequisites() -> None:
    """Raise :class:`PrerequisiteError` saying what to install or change if the engine cannot run."""
    if os.name != "posix" or not Path("/proc/self/ns/net").exists():
        raise PrerequisiteError("the netns lab needs Linux with network namespaces (/proc/self/ns/net)")
    if os.geteuid() != 0:
        raise PrerequisiteError("the netns lab needs root: run it with sudo (or as root in a container)")
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if missing:
        pkgs = {"ip": "iproute2", "nft": "nftables"}
        raise PrerequisiteError(
            f"missing {', '.join(missing)}: install {' '.join(pkgs[m] for m in missing)} "
            "(e.g. apt-get install iproute2 nftables)"
        )


def _cmd(argv: Sequence[str], *, input: str | None = None, timeout: float = 20) -> str:
    try:
        res = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise NetnsError(f"'{' '.join(argv)}' gave no answer in {timeout} s; the host is overloaded or stuck") from None
    except OSError as exc:
        raise NetnsError(f"cannot run '{argv[0]}': {exc.strerror or exc}; install iproute2 and nftables") from None
    if res.returncode != 0:
        err = " ".join(res.stderr.split()) or f"exit {res.returncode}"
        raise NetnsError(f"'{' '.join(argv)}' failed: {err[:300]}; {_hint(err)}")
    return res.stdout


_libc: Any = None


def _setns(ns: str) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(_NETNS_DIR / ns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetnsError(f"setns into {ns}: {os.strerror(err)}; {_hint(os.strerror(err))}")
    finally:
        os.close(fd)


def in_netns(ns: str, fn: Callable[[], _T]) -> _T:
    """Call ``fn`` in a short-lived thread that has entered namespace ``ns``; return its result.

    Sockets made by ``fn`` stay in ``ns`` for their whole life, whichever thread uses them.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            _setns(ns)
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    th = threading.Thread(target=target, name=f"netns-{ns}", daemon=True)
    th.start()
    th.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def _proc_start(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks


def _owner_alive(state: dict[str, Any]) -> bool:
    pid = state.get("pid")
    return isinstance(pid, int) and _proc_start(pid) == state.get("start")


def enter_netns(ns: str) -> None:
    """Move the calling thread into namespace ``ns`` (for a fresh child process or thread)."""
    _setns(ns)


def process_start(pid: int) -> str | None:
    """Start time of process ``pid`` (clock ticks, as text), or None: a pid-reuse-proof id."""
    return _proc_start(pid)


def owner_alive(state: dict[str, Any]) -> bool:
    """Whether ``state`` ({"pid": int, "start": process_start(pid)}) names a living process."""
    return _owner_alive(state)


def _list_netns() -> list[str]:
    out = _cmd(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_netns(ns: str) -> None:
    """Kill every process in ``ns`` and delete it (ignoring what is already gone)."""
    with contextlib.suppress(NetnsError):
        for pid in _cmd(["ip", "netns", "pids", ns]).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    with contextlib.suppress(NetnsError):
        _cmd(["ip", "netns", "del", ns])


def cleanup_leftovers(prefix: str = PREFIX, *, force: bool = False) -> list[str]:
    """Remove namespaces (and their processes, links, rules) left by dead runs; return them.

    A namespace ``<prefix><hex>-<role>`` is left over when its run's state file is missing or
    names a process that no longer exists. ``force=True`` removes live runs' namespaces too
    (``natkit lab clean --force``); this process's own runs are never touched.
    """
    check_prerequisites()
    tag_re = re.compile(rf"^({re.escape(prefix)}[0-9a-f]{{6}})-")
    # Namespaces first, state files second: a run that starts in between has written its
    # state file before creating any namespace, so it is never mistaken for a dead one.
    namespaces = _list_netns()
    states: dict[str, dict[str, Any]] = {}
    if STATE_DIR.is_dir():
        for path in STATE_DIR.glob(f"{prefix}*.json"):
            try:
                states[path.stem] = json.loads(path.read_text())
            except (OSError, ValueError):
                states[path.stem] = {}
    removed: list[str] = []
    dead_tags: set[str] = set()
    for ns in namespaces:
        m = tag_re.match(ns)
        if not m:
            continue
        tag = m.group(1)
        state = states.get(tag)
        if state is not None and state.get("pid") == os.getpid():
            continue
        if state is not None and _owner_alive(state) and not force:
            continue
        _kill_netns(ns)
        removed.append(ns)
        dead_tags.add(tag)
    # Scratch directories of runs (``natkit-lab-<tag>-*`` in the temp dir, e.g. a packet
    # capture) that were killed before they could remove them.
    scratch_re = re.compile(rf"^natkit-lab-({re.escape(prefix)}[0-9a-f]{{6}})-")
    for path in Path(tempfile.gettempdir()).glob(f"natkit-lab-{prefix}*"):
        m = scratch_re.match(path.name)
        if not m:
            continue
        state = states.get(m.group(1))
        if state is not None and (
            state.get("pid") == os.getpid() or (_owner_alive(state) and not force)
        ):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(str(path))
    # Servers' TLS directories of natkit versions that wrote them outside the run's scratch
    # directory (``natkit-lab-tls-*``, no tag): whose they are is unknown, so they go only
    # when no other run is alive (or with force).
    others_alive = any(st.get("pid") != os.getpid() and _owner_alive(st) for st in states.values())
    if force or not others_alive:
        for path in list(Path(tempfile.gettempdir()).glob("natkit-lab-tls-*"))[:1000]:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    for tag, state in states.items():
        if tag in dead_tags or (state.get("pid") != os.getpid() and not _owner_alive(state)):
            with contextlib.suppress(OSError):
                (STATE_DIR / f"{tag}.json").unlink()
    return removed


_netem: bool | None = None


def has_netem() -> bool:
    """Whether the kernel has the netem qdisc (link delay); loss works without it."""
    global _netem
    if _netem is None:
        if shutil.which("tc") is None:
            _netem = False
            return False
        lab = NetnsLab()  # a recorded namespace: a crash here leaves nothing behind for long
        lab.open()
        try:
            ns = lab.add_ns("netem")
            res = lab.run(ns, ["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"])
            _netem = res.returncode == 0
        finally:
            lab.close()
    return _netem


# --------------------------------------------------------------------------------------------
# the engine


class NetnsLab:
    """A set of namespaces with one unique tag, torn down on exit, exception, SIGINT, SIGTERM."""

    def __init__(self, prefix: str = PREFIX) -> None:
        if not re.fullmatch(r"[a-z]{1,4}", prefix):
            raise ConfigError(f"namespace prefix {prefix!r}: use 1-4 lowercase letters", param="prefix")
        self.prefix = prefix
        self.tag = f"{prefix}{secrets.token_hex(3)}"
        self.namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._old_handlers: dict[int, Any] = {}
        self._closed = False
        self._lock = threading.Lock()

    # ---- life cycle

    def __enter__(self) -> NetnsLab:
        self._install_signals()
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> None:
        """Check prerequisites, remove dead runs' leftovers and record this run's state."""
        check_prerequisites()
        cleanup_leftovers(self.prefix)
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        self._write_state()
        atexit.register(self.close)

    def close(self) -> None:
        """Stop processes, delete every namespace and the state file (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)
        for ns in reversed(self.namespaces):
            _kill_netns(ns)
        with contextlib.suppress(OSError):
            (STATE_DIR / f"{self.tag}.json").unlink()
        atexit.unregister(self.close)
        self._restore_signals()

    def _write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "start": _proc_start(os.getpid()),
            "namespaces": self.namespaces,
        }
        tmp = STATE_DIR / f".{self.tag}.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(STATE_DIR / f"{self.tag}.json")

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_term(signum: int, frame: FrameType | None) -> None:
            raise SystemExit(128 + signum)

        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, on_term)

    def _restore_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, old in self._old_handlers.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, old)
        self._old_handlers.clear()

    # ---- building blocks

    def add_ns(self, role: str) -> str:
        """Create namespace ``<tag>-<role>`` with loopback up; return its name."""
        if not re.fullmatch(r"[A-Za-z0-9_.]{1,24}", role):
            raise ConfigError(f"namespace role {role!r}: use 1-24 letters, digits, _ or .", param="role")
        ns = f"{self.tag}-{role}"
        self.namespaces.append(ns)
        self._write_state()  # before creation: a kill -9 right after still leaves a record
        _cmd(["ip", "netns", "add", ns])
        _cmd(["ip", "-n", ns, "link", "set", "lo", "up"])
        # Bridged frames must not pass through the IP hooks (br_netfilter is per namespace).
        with contextlib.suppress(NetnsError, OSError):
            self.sysctl(ns, "net.bridge.bridge-nf-call-iptables", "0")
        return ns

    def add_bridge(self, ns: str, name: str) -> None:
        """Create bridge ``name`` in ``ns`` and bring it up."""
        _cmd(["ip", "-n", ns, "link", "add", name, "type", "bridge"])
        _cmd(["ip", "-n", ns, "link", "set", name, "up"])

    def add_veth(
        self, ns_a: str, if_a: str, ns_b: str, if_b: str, *, master: str | None = None
    ) -> None:
        """Create a veth pair ``ns_a:if_a <-> ns_b:if_b``, both up; ``if_b`` joins ``master``."""
        for name in (if_a, if_b):
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", name):
                raise ConfigError(f"interface name {name!r}: use 1-15 of A-Za-z0-9_.-", param="ifname")
        _cmd(
            [
                "ip",
                "link",
                "add",
                "name",
                if_a,
                "netns",
                ns_a,
                "type",
                "veth",
                "peer",
                "name",
                if_b,
                "netns",
                ns_b,
            ]
        )
        if master is not None:
            _cmd(["ip", "-n", ns_b, "link", "set", if_b, "master", master])
        _cmd(["ip", "-n", ns_a, "link", "set", if_a, "up"])
        _cmd(["ip", "-n", ns_b, "link", "set", if_b, "up"])

    def add_addr(self, ns: str, ifname: str, cidr: str) -> None:
        """Add address ``cidr`` (e.g. ``10.0.0.2/24``) to ``ns:ifname``."""
        _cmd(
            ["ip", "-n", ns, "addr", "add", cidr, "dev", ifname, "nodad"]
            if ":" in cidr
            else ["ip", "-n", ns, "addr", "add", cidr, "dev", ifname]
        )

    def add_route(
        self, ns: str, dest: str, *, via: str | None = None, dev: str | None = None
    ) -> None:
        """Add a route to ``dest`` (CIDR or ``default``) via a gateway and/or a device."""
        argv = ["ip", "-n", ns, "route", "add", dest]
        if via:
            argv += ["via", via]
        if dev:
            argv += ["dev", dev]
        _cmd(argv)

    def sysctl(self, ns: str, key: str, value: str) -> None:
        """Set sysctl ``key`` (dotted, e.g. ``net.ipv4.ip_forward``) inside ``ns``."""
        path = Path("/proc/sys", *key.split("."))

        def write() -> None:
            path.write_text(value)

        in_netns(ns, write)

    def apply_nft(self, ns: str, ruleset: str, *, check: bool = False) -> None:
        """Load ``ruleset`` with ``nft -f`` inside ``ns`` (``check``: ``nft -c``, nothing loaded)."""
        argv = ["ip", "netns", "exec", ns, "nft", *(["-c"] if check else []), "-f", "-"]
        try:
            _cmd(argv, input=ruleset)
        except NetnsError as exc:
            raise NetnsError(f"nftables rejected the ruleset in {ns}: {exc}") from None

    def apply_nat(
        self,
        ns: str,
        behaviour: NatBehaviour,
        *,
        inside_if: str,
        outside_if: str,
        public_ip: str,
        inside_net: str,
    ) -> None:
        """Make router ``ns`` behave like ``behaviour``: its kind's recipe (sysctls + nftables)."""
        recipe = nats.recipe(behaviour, nats.RouterSide(inside_if, outside_if, public_ip, inside_net))
        for key, value in recipe.sysctls.items():
            self.sysctl(ns, key, value)
        self.apply_nft(ns, recipe.nft)

    def impair(self, ns: str, ifname: str, *, delay_ms: float = 0, loss_pct: float = 0) -> None:
        """Delay and/or drop packets leaving ``ns:ifname`` (netem; without netem: loss only)."""
        if not 0 <= loss_pct <= 100 or delay_ms < 0:
            raise ConfigError(f"{ns}:{ifname}: loss must be 0..100 % and delay >= 0 ms", param="loss_pct")
        table = f"impair_{re.sub(r'[^A-Za-z0-9_]', '_', ifname)}"
        if delay_ms == 0 and loss_pct == 0:  # back to a clean link
            self.run(ns, ["tc", "qdisc", "del", "dev", ifname, "root"])
            self.run(ns, ["nft", "delete", "table", "netdev", table])
            return
        if has_netem():
            argv = [
                "ip",
                "netns",
                "exec",
                ns,
                "tc",
                "qdisc",
                "replace",
                "dev",
                ifname,
                "root",
                "netem",
            ]
            if delay_ms:
                argv += ["delay", f"{delay_ms}ms"]
            if loss_pct:
                argv += ["loss", f"{loss_pct}%"]
            _cmd(argv)
            return
        if delay_ms:
            raise PrerequisiteError(
                f"link delay on {ns}:{ifname} needs the kernel's netem qdisc "
                "(CONFIG_NET_SCH_NETEM / module sch_netem), which this kernel lacks; "
                "drop the delay setting or use a kernel with netem"
            )
        # Loss without netem: drop a random share at the device's egress hook (netdev family,
        # Linux >= 5.16), where a drop is silent to the sender, unlike in the IP hooks (EPERM).
        per_mille = round(loss_pct * 10)
        self.apply_nft(
            ns,
            "\n".join(
                [
                    f"add table netdev {table}",
                    f"delete table netdev {table}",
                    f"table netdev {table} {{",
                    "  chain egress {",
                    f'    type filter hook egress device "{ifname}" priority 0; policy accept;',
                    "    drop"
                    if per_mille >= 1000
                    else f"    numgen random mod 1000 < {per_mille} drop",
                    "  }",
                    "}",
                    "",
                ]
            ),
        )

    # ---- running things inside

    def run(
        self,
        ns: str,
        argv: Sequence[str],
        *,
        timeout: float = 30,
        check: bool = False,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[str]:
        """``subprocess.run`` of ``argv`` inside ``ns`` (text, captured output, bounded time)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(
            ["ip", "netns", "exec", ns, *argv], timeout=timeout, check=check, **kwargs
        )

    def popen(self, ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``ns``; the process is killed when the lab closes."""
        proc: subprocess.Popen[Any] = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kwargs)
        self._procs.append(proc)
        return proc

    def socket(
        self,
        ns: str,
        family: int = socket.AF_INET,
        type: int = socket.SOCK_DGRAM,
        proto: int = 0,
    ) -> socket.socket:
        """A socket created inside ``ns`` (usable from any thread or event loop)."""
        return in_netns(ns, lambda: socket.socket(family, type, proto))

    def in_netns(self, ns: str, fn: Callable[[], _T]) -> _T:
        """Call ``fn`` inside ``ns`` (see :func:`in_netns`)."""
        return in_netns(ns, fn)


# --------------------------------------------------------------------------------------------
# the probe topology


class NatTopology:
    """A STUN server with two public addresses, a NAT router and one or two clients behind it."""

    server_ips = ("203.0.113.10", "198.51.100.10")
    router_public_ip = "203.0.113.1"
    public_nets = ("203.0.113.0/24", "198.51.100.0/24")

    def __init__(
        self, behaviour: NatBehaviour | str, *, clients: int = 1, prefix: str = PREFIX
    ) -> None:
        if isinstance(behaviour, str):
            behaviour = NatBehaviour.preset(behaviour)
        if clients not in (1, 2):
            raise ConfigError(f"NatTopology: clients must be 1 or 2, not {clients}", param="clients")
        self.behaviour = behaviour
        self.clients = clients
        self.lab = NetnsLab(prefix)
        lan = "192.0.2" if not behaviour.nat else "10.0.0"
        self.inside_net = f"{lan}.0/24"
        self.router_inside_ip = f"{lan}.1"
        self.client_ip = f"{lan}.2"
        self.client2_ip: str | None = f"{lan}.3" if clients == 2 else None
        self.inet_ns = self.server_ns = self.router_ns = self.client_ns = ""
        self.client2_ns: str | None = None
        self._hosts = 0

    # ---- life cycle

    def __enter__(self) -> NatTopology:
        self.lab._install_signals()
        try:
            self._build()
        except BaseException:
            self.lab.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.lab.close()

    async def __aenter__(self) -> NatTopology:
        self.lab._install_signals()
        try:
            await asyncio.to_thread(self._build)
        except BaseException:
            await asyncio.to_thread(self.lab.close)
            self.lab._restore_signals()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.lab.close)
        self.lab._restore_signals()

    def close(self) -> None:
        self.lab.close()

    def _build(self) -> None:
        lab, b = self.lab, self.behaviour
        lab.open()
        self.inet_ns = lab.add_ns("inet")
        lab.add_bridge(self.inet_ns, "br0")
        self.server_ns = self._attach_public("srv", self.server_ips[0], "eth0")
        lab.add_addr(self.server_ns, "eth0", f"{self.server_ips[1]}/24")
        self.router_ns = rtr = self._attach_public("rtr", self.router_public_ip, "wan")
        # One public address on the router, whatever the destination: a route, not an address,
        # toward the alternate server network.
        lab.add_route(rtr, self.public_nets[1], dev="wan")
        lab.add_bridge(rtr, "lan")
        lab.add_addr(rtr, "lan", f"{self.router_inside_ip}/24")
        lab.apply_nat(
            rtr,
            b,
            inside_if="lan",
            outside_if="wan",
            public_ip=self.router_public_ip,
            inside_net=self.inside_net,
        )
        self.client_ns = self._add_client("cli", self.client_ip, "c1")
        if self.client2_ip is not None:
            self.client2_ns = self._add_client("cli2", self.client2_ip, "c2")
        if not b.nat:  # routed: the public side needs a way back to the inside network
            lab.add_route(self.server_ns, self.inside_net, via=self.router_public_ip)

    def add_public_host(self, role: str, ip: str, ifname: str = "eth0") -> str:
        """A new namespace ``<tag>-<role>`` with ``ip``/24 on the public bridge; its name.

        ``ip`` is in 203.0.113.0/24 or 198.51.100.0/24; the host reaches the other public
        network on-link too, and the inside network via the router when the router does not NAT.
        """
        ns = self._attach_public(role, ip, ifname)
        other = self.public_nets[1] if ip.startswith("203.0.113.") else self.public_nets[0]
        self.lab.add_route(ns, other, dev=ifname)
        if not self.behaviour.nat:
            self.lab.add_route(ns, self.inside_net, via=self.router_public_ip)
        return ns

    def _attach_public(self, role: str, ip: str, dev: str) -> str:
        lab = self.lab
        ns = lab.add_ns(role)
        self._hosts += 1
        lab.add_veth(ns, dev, self.inet_ns, f"p{self._hosts}", master="br0")
        lab.add_addr(ns, dev, f"{ip}/24")
        return ns

    def _add_client(self, role: str, ip: str, port: str) -> str:
        lab = self.lab
        ns = lab.add_ns(role)
        lab.add_veth(ns, "eth0", self.router_ns, f"lan-{port}", master="lan")
        lab.add_addr(ns, "eth0", f"{ip}/24")
        lab.add_route(ns, "default", via=self.router_inside_ip)
        return ns

    # ---- running things inside

    def run(self, ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """``subprocess.run`` inside ``ns`` (see :meth:`NetnsLab.run`)."""
        return self.lab.run(ns, argv, **kwargs)

    def popen(self, ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen`` inside ``ns``, killed on exit (see :meth:`NetnsLab.popen`)."""
        return self.lab.popen(ns, argv, **kwargs)

    def socket(
        self, ns: str, family: int = socket.AF_INET, type: int = socket.SOCK_DGRAM
    ) -> socket.socket:
        """A socket created inside ``ns``."""
        return self.lab.socket(ns, family, type)
