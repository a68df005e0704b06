"""A lab kept up for a test session: the ``nat_lab`` pytest fixture's library side.

:class:`NatLab` builds a topology once (the netns engine, every router the topology has, its
STUN, TURN and signaling servers running) and runs things behind its NATs::

    with NatLab() as lab:
        out = lab.run("symmetric", ["my-client", "--connect", lab.signaling_url])
        assert out.returncode == 0, out.stderr
        mapped = lab.run("port-restricted", my_function, "arg")     # a Python callable
        lab.ice_servers("relay")                                     # RTCIceServer dicts

``run(where, what)``: ``where`` is a NAT's name (the first peer behind its first router) or a
node of the lab (``symmetric-2-p1``, a second router's peer; ``same-lan-1-p2``); ``what`` a
command (a list of words, or a string split like a shell) run with ``ip netns exec``, or a
callable run in a forked child inside that namespace (its return value and exceptions come
back pickled). Both are bounded by ``timeout``. Nothing here is shared with ``natkit lab up``:
several labs (one per test session) may run at once, each with its own ``nk`` tag.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import shlex
import shutil
import signal
import subprocess
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from natkit.errors import ConfigError, NatkitError
from natkit.lab.topology import Topology

__all__ = ["NatLab", "NatLabError", "RunResult"]

RESULT_LIMIT = 64 << 20  # a callable's pickled result


class NatLabError(NatkitError):
    """A callable run behind a NAT raised (``remote`` holds its traceback), or timed out."""

    def __init__(self, message: str, remote: str = "") -> None:
        super().__init__(message + (f"\n{remote}" if remote else ""))
        self.remote = remote


@dataclass
class RunResult:
    """A command run behind a NAT: like :class:`subprocess.CompletedProcess`, plus where and
    how long. ``timed_out``: killed at ``timeout`` (``returncode`` is then negative)."""

    node: str
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class NatLab:
    """See the module docstring. ``topology``: a :class:`~natkit.lab.topology.Topology`
    (default: ``configs/lab/default.toml``); ``turn_engine``: ``natkit`` or ``coturn``."""

    def __init__(self, topology: Topology | None = None, *, turn_engine: str | None = None) -> None:
        from natkit.lab.topology import load

        self.topology = topology if topology is not None else load()
        self.turn_engine = turn_engine
        self.nodes: dict[str, str] = {}  # node -> namespace
        self.tag = ""
        self._stack: contextlib.ExitStack | None = None
        self._plan: Any = None

    # -- lifetime

    def start(self) -> NatLab:
        from natkit.lab.engines import netns
        from natkit.lab.runner import check_turn_engine
        from natkit.lab.up import serving

        engine = check_turn_engine(self.topology, self.turn_engine)
        netns.check(capture=False)
        self.turn_engine = engine
        self._plan = self.topology.plan()
        stack = contextlib.ExitStack()
        try:
            built = stack.enter_context(serving(self.topology, self._plan, engine))
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        self.tag = built.tag
        self.nodes = built.nodes.nodes()
        return self

    def close(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def __enter__(self) -> NatLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what a test needs to know

    @property
    def nats(self) -> list[str]:
        """The NATs' names (what :meth:`run` takes)."""
        return [n.name for n in self.topology.nats]

    @property
    def stun(self) -> tuple[str, int]:
        s = self.topology.servers
        return (s.stun_addresses[0], s.stun_port)

    @property
    def stun_url(self) -> str:
        return "stun:{}:{}".format(*self.stun)

    @property
    def turn(self) -> tuple[str, int]:
        s = self.topology.servers
        return (s.turn_address, s.turn_port)

    @property
    def turn_urls(self) -> list[str]:
        s = self.topology.servers
        return [f"turn:{s.turn_address}:{s.turn_port}?transport={t}" for t in s.turn_transports]

    @property
    def turn_credentials(self) -> tuple[str, str]:
        s = self.topology.servers
        return (s.turn_username, s.turn_password)

    @property
    def signaling(self) -> tuple[str, int]:
        s = self.topology.servers
        return (s.signaling_address, s.signaling_port)

    @property
    def signaling_url(self) -> str:
        return "ws://{}:{}/ws".format(*self.signaling)

    def ice_servers(self, path: str = "relay") -> list[dict[str, Any]]:
        """The ``iceServers`` (W3C shape) the lab's peers get for ``path``: none for ``host``,
        STUN for ``srflx``, TURN with credentials for ``relay``."""
        return self.topology.servers.ice_servers(path)

    def public_ip(self, where: str) -> str | None:
        """The public address of the router in front of ``where`` (None without NAT)."""
        node = self.node(where)
        router = next(r for r in self._planned().routers if any(p.id == node for p in r.peers))
        ip: str | None = router.public_ip
        return ip

    def node(self, where: str) -> str:
        """The node id ``where`` names (a NAT's name: its first router's first peer)."""
        if where in self.nodes:
            return where
        candidate = f"{where}-1-p1"
        if candidate in self.nodes:
            return candidate
        raise ConfigError(
            f"{where!r}: not a NAT or node of the lab; NATs: {', '.join(self.nats)}", param="where"
        )

    def namespace(self, where: str) -> str:
        self._require()
        return self.nodes[self.node(where)]

    def _planned(self) -> Any:
        self._require()
        return self._plan

    def _require(self) -> None:
        if self._stack is None:
            raise ConfigError("the lab is not up: use NatLab as a context manager, or start() it", param="lab")

    # -- running things behind a NAT

    def run(
        self,
        where: str,
        what: Sequence[str] | str | Callable[..., Any],
        *args: Any,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run a command (-> :class:`RunResult`) or a callable (-> its return value) behind
        ``where``; see the module docstring."""
        ns = self.namespace(where)
        if not 0 < timeout <= 3600:
            raise ConfigError(f"{timeout}: give 0..3600 seconds", param="timeout")
        if callable(what):
            return _call_in(ns, what, args, kwargs, timeout)
        if args or kwargs:
            raise ConfigError("extra arguments go with a callable; put a command's words in its list", param="what")
        argv = shlex.split(what) if isinstance(what, str) else [str(w) for w in what]
        if not argv:
            raise ConfigError("empty command", param="what")
        return self._command(self.node(where), ns, argv, timeout, env, input)

    def _command(
        self, node: str, ns: str, argv: list[str], timeout: float, env: Mapping[str, str] | None, data: str | None,
    ) -> RunResult:
        full = [shutil.which("ip") or "ip", "netns", "exec", ns, *argv]
        environ = {**os.environ, **(env or {}), "NATKIT_LAB_NODE": node}
        t0 = time.monotonic()
        proc = subprocess.Popen(
            full, stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=environ, start_new_session=True,
        )
        timed_out = False
        try:
            out, err = proc.communicate(data, timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        return RunResult(node, argv, proc.returncode, out, err, round(time.monotonic() - t0, 3), timed_out)


def _call_in(ns: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float) -> Any:
    """``fn(*args, **kwargs)`` in a forked child inside namespace ``ns``; its pickled result."""
    from natkit.lab.netns import enter_netns

    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        os.close(rfd)
        code = 0
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            enter_netns(ns)
            try:
                payload = pickle.dumps(("ok", fn(*args, **kwargs)))
            except BaseException as exc:
                payload = pickle.dumps(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
            with os.fdopen(wfd, "wb") as w:
                w.write(payload)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    data = bytearray()
    end = time.monotonic() + timeout
    try:
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise NatLabError(f"{getattr(fn, '__name__', fn)!r} did not return within {timeout:g} s behind {ns}")
            ready, _, _ = select.select([rfd], [], [], left)
            if not ready:
                continue
            chunk = os.read(rfd, 1 << 16)
            if not chunk:
                break
            data += chunk
            if len(data) > RESULT_LIMIT:
                raise NatLabError(f"the result of {getattr(fn, '__name__', fn)!r} is larger than {RESULT_LIMIT >> 20} MiB")
    finally:
        os.close(rfd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    if not data:
        raise NatLabError(f"{getattr(fn, '__name__', fn)!r} died behind {ns} without a result")
    result = pickle.loads(bytes(data))
    if result[0] == "error":
        raise NatLabError(f"{getattr(fn, '__name__', fn)!r} raised behind {ns}: {result[1]}", result[2])
    return result[1]
