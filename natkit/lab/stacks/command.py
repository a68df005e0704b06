"""A program as a lab stack: any command that follows the lab peers' contract (docs/lab-peers.md).

:class:`CommandPeer` runs one process per side of a case with the contract's environment
(:func:`contract_env`), in a fresh working directory and a process group of its own, and turns
what it did into a :class:`~natkit.lab.stacks.base.PeerResult`:

* exit status 0 is a connection, 1 a failed case, anything else (another status, a signal, no
  exit by the deadline, a flood of stdout, a program that cannot start) an error of the peer,
  each with one clear line in ``PeerResult.error``;
* the last line of stdout, if it is a JSON object, gives the selected pair, the timings and the
  peer's own error; anything else there is ignored with a note;
* the tail of stderr is kept for the report (``PeerResult.report["stderr_tail"]``).

Nothing a peer does can hold a case past its bound (:meth:`CommandPeer.max_duration_s`): at the
deadline plus :data:`TERM_AFTER_S` the group gets SIGTERM, :data:`KILL_AFTER_S` later SIGKILL;
stdout and stderr are read as they come and only their tails kept.

``--peer NAME=COMMAND`` is :meth:`CommandPeer.from_spec`; natkit's pion and libnice stacks are
:class:`CommandPeer`\\ s with a program of natkit's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from natkit.errors import ConfigError, PrerequisiteError
from natkit.lab.stacks.base import ROLES, PeerConfig, PeerResult, candidate_types
from natkit.lab.stacks.capabilities import Capabilities

__all__ = [
    "CONTRACT_VERSION",
    "CommandPeer",
    "PeerRun",
    "candidate_types",
    "contract_env",
    "interpret",
    "parse_result_line",
    "run_command",
]

CONTRACT_VERSION = 1
TERM_AFTER_S = 2.0  # SIGTERM this long after the deadline
KILL_AFTER_S = 3.0  # SIGKILL this long after SIGTERM
STDOUT_LIMIT = 16 << 20  # more than this on stdout is a flood: the peer is stopped at once
STDOUT_TAIL = 64 << 10  # the result line lives in here
STDERR_TAIL = 8 << 10
RESULT_LINE_MAX = 64 << 10
DRAIN_S = 1.0  # after the process is gone, how long its pipes may take to close
STDERR_LINES = 20  # lines of stderr in the report
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,31}$")
_CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay")
_PROTOCOLS = ("udp", "tcp", "tls", "dtls")


def signaling_url(host: str, port: int) -> str:
    return f"ws://[{host}]:{port}/ws" if ":" in host else f"ws://{host}:{port}/ws"


def contract_env(stack: str, role: str, config: PeerConfig) -> dict[str, str]:
    """The variables the contract gives a peer of ``stack`` taking ``role`` in ``config``'s case."""
    types = candidate_types(config.path)
    ice = {"iceServers": list(config.ice_servers), "iceTransportPolicy": "relay" if types == ["relay"] else "all"}
    return {
        "NATKIT_PEER_CONTRACT": str(CONTRACT_VERSION),
        "NATKIT_ROLE": role,
        "NATKIT_SIGNALING_URL": signaling_url(*config.signaling),
        "NATKIT_ROOM": config.room,
        "NATKIT_ICE_CONFIG": json.dumps(ice, separators=(",", ":")),
        "NATKIT_CANDIDATE_TYPES": ",".join(types),
        "NATKIT_PATH": config.path,
        "NATKIT_DEADLINE_S": f"{config.deadline_s:g}",
        "NATKIT_IDLE_S": f"{config.idle_s:g}",
        "NATKIT_STACK": stack,
    }


# -- running one process ----------------------------------------------------------------------


class _Tail:
    """The last ``limit`` bytes of a stream, and how many came in all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[: len(self.data) - self.limit]

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


@dataclass
class PeerRun:
    """What one peer process did. ``returncode`` is negative for a signal (asyncio's way)."""

    argv: list[str]
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    duration_s: float = 0.0
    timed_out: bool = False  # still running at the deadline + TERM_AFTER_S
    killed: bool = False  # needed SIGKILL
    flooded: bool = False  # more than STDOUT_LIMIT on stdout
    spawn_error: str | None = None


async def _pump(stream: asyncio.StreamReader | None, tail: _Tail, flood: asyncio.Event | None, limit: int) -> None:
    if stream is None:
        return
    while chunk := await stream.read(1 << 16):
        tail.add(chunk)
        if flood is not None and tail.total > limit:
            flood.set()


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def run_command(
    argv: Sequence[str],
    env: Mapping[str, str],
    deadline_s: float,
    *,
    term_after_s: float | None = None,
    kill_after_s: float | None = None,
    stdout_limit: int | None = None,
) -> PeerRun:
    """Run ``argv`` as a contract peer (fresh working directory, its own process group) and
    return what it did; bounded by ``deadline_s + term_after_s + kill_after_s`` plus reaping,
    and cancellation-safe (the group is killed, the directory removed)."""
    term_after_s = TERM_AFTER_S if term_after_s is None else term_after_s
    kill_after_s = KILL_AFTER_S if kill_after_s is None else kill_after_s
    stdout_limit = STDOUT_LIMIT if stdout_limit is None else stdout_limit
    run = PeerRun(list(argv))
    workdir = tempfile.mkdtemp(prefix="natkit-peer-")
    t0 = time.monotonic()
    try:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, cwd=workdir, env=dict(env), start_new_session=True,
            )
        except OSError as exc:
            run.spawn_error = f"{argv[0]}: {exc.strerror or exc}"
            return run
        out, err = _Tail(STDOUT_TAIL), _Tail(STDERR_TAIL)
        flood = asyncio.Event()
        pumps = [
            asyncio.ensure_future(_pump(proc.stdout, out, flood, stdout_limit)),
            asyncio.ensure_future(_pump(proc.stderr, err, None, 0)),
        ]
        try:
            run.timed_out, run.flooded = await _wait_bounded(proc, flood, deadline_s + term_after_s)
            if proc.returncode is None:
                _signal_group(proc.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), kill_after_s)
                except TimeoutError:
                    run.killed = True
        finally:
            # Whatever is left of the group (the leader on cancellation, helpers it forked) goes.
            _signal_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                await asyncio.shield(proc.wait())
            _, pending = await asyncio.wait(pumps, timeout=DRAIN_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        run.returncode = proc.returncode
        run.stdout, run.stderr = out.text(), err.text()
        run.stdout_bytes, run.stderr_bytes = out.total, err.total
        return run
    finally:
        run.duration_s = round(time.monotonic() - t0, 3)
        shutil.rmtree(workdir, ignore_errors=True)


async def _wait_bounded(proc: asyncio.subprocess.Process, flood: asyncio.Event, limit_s: float) -> tuple[bool, bool]:
    """Wait until ``proc`` exits, floods stdout or ``limit_s`` passes: (timed out, flooded)."""
    exited = asyncio.ensure_future(proc.wait())
    flooded = asyncio.ensure_future(flood.wait())
    try:
        await asyncio.wait([exited, flooded], timeout=limit_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        flooded.cancel()
        exited.cancel()
    if proc.returncode is not None:
        return False, False
    return not flood.is_set(), flood.is_set()


# -- what it meant ----------------------------------------------------------------------------


def parse_result_line(stdout: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The peer's result (its last line of stdout as a JSON object) and notes on what was not."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        return None, []
    last = lines[-1].strip()
    if len(last.encode()) > RESULT_LINE_MAX:
        return None, [f"the last line of stdout is longer than {RESULT_LINE_MAX} bytes; ignored"]
    try:
        value = json.loads(last)
    except (ValueError, RecursionError):
        return None, [f"the last line of stdout is not JSON; ignored: {_clip(last, 120)!r}"]
    if not isinstance(value, dict):
        return None, [f"the last line of stdout is JSON but not an object; ignored: {_clip(last, 120)!r}"]
    notes = []
    version = value.get("natkit_peer")
    if version is not None and version != CONTRACT_VERSION:
        notes.append(f"the result says natkit_peer {version!r}; this natkit reads version {CONTRACT_VERSION}")
    return value, notes


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return round(float(value), 2)


def _candidate(value: Any) -> dict[str, Any] | None:
    """A candidate of a result's ``selected``, with only well-formed fields."""
    if not isinstance(value, dict):
        return None
    out: dict[str, Any] = {}
    typ = value.get("type")
    if isinstance(typ, str) and typ in _CANDIDATE_TYPES:
        out["type"] = typ
    address = value.get("address")
    if isinstance(address, str) and 0 < len(address) <= 255:
        out["address"] = address
    port = value.get("port")
    if isinstance(port, int) and not isinstance(port, bool) and 0 <= port <= 65535:
        out["port"] = port
    for key in ("protocol", "relay_protocol"):
        proto = value.get(key)
        if isinstance(proto, str) and proto.lower() in _PROTOCOLS:
            out[key] = proto.lower()
    return out


def _selected(result: dict[str, Any]) -> dict[str, Any] | None:
    sel = result.get("selected")
    if not isinstance(sel, dict):
        return None
    local, remote = _candidate(sel.get("local")), _candidate(sel.get("remote"))
    if local is None and remote is None:
        return None
    relay_protocol = result.get("relay_protocol")
    if local is not None and isinstance(relay_protocol, str) and relay_protocol.lower() in _PROTOCOLS:
        local.setdefault("relay_protocol", relay_protocol.lower())
    return {"local": local or {}, "remote": remote or {}}


def _status(run: PeerRun) -> str:
    code = run.returncode
    if code is None:
        return "no exit status"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _stderr_lines(run: PeerRun) -> list[str]:
    return [line.rstrip() for line in run.stderr.splitlines() if line.strip()][-STDERR_LINES:]


def interpret(run: PeerRun, role: str, config: PeerConfig, stack: str) -> PeerResult:
    """The :class:`PeerResult` of one peer process (see the module docstring)."""
    result = PeerResult(role, config.path, stack, relays=None)
    parsed, notes = parse_result_line(run.stdout)
    stderr = _stderr_lines(run)
    said = parsed.get("error") if parsed else None
    said = _clip(" ".join(said.split()), 300) if isinstance(said, str) and said.strip() else None
    claims = parsed.get("connected") if parsed else None
    limit = config.deadline_s + TERM_AFTER_S
    if run.spawn_error is not None:
        error: str | None = f"the peer command did not start: {run.spawn_error}"
    elif run.flooded:
        error = f"peer flooded stdout (more than {STDOUT_LIMIT >> 20} MiB); stopped"
    elif run.timed_out:
        error = (f"peer did not exit by its deadline ({config.deadline_s:g} s): SIGTERM after {limit:g} s"
                 + (f", SIGKILL {KILL_AFTER_S:g} s later" if run.killed else ""))
    elif run.returncode == 0:
        error = None
        if claims is False:
            error = "peer error: exit status 0, but its result says connected: false"
    elif run.returncode == 1:
        error = said or "not connected (exit status 1)"
        if claims is True:
            error = "peer error: exit status 1, but its result says connected: true"
    else:
        error = f"peer error: {_status(run)}"
        if said:
            error += f": {said}"
    if error is not None and not said and stderr and run.spawn_error is None:
        error += f" (stderr: {_clip(stderr[-1], 200)})"
    result.error = error
    result.outcome = "connected" if error is None else "failed"
    if parsed is not None:
        result.selected = _selected(parsed)
        result.t_connect_ms = _number(parsed.get("t_connect_ms"))
        result.rtt_ms = _number(parsed.get("rtt_ms"))
        signaled = parsed.get("signaled")
        if isinstance(signaled, list):
            result.signaled = [s for s in signaled if isinstance(s, str)][:64]
    if run.stdout_bytes > STDOUT_TAIL:
        notes.append(f"stdout had {run.stdout_bytes} bytes; only the last {STDOUT_TAIL} were read")
    result.report = {
        "command": run.argv,
        "exit_status": run.returncode if run.returncode is None or run.returncode >= 0 else None,
        "status": _status(run) if run.spawn_error is None else "did not start",
        "duration_s": run.duration_s,
        "result": parsed,
        "notes": notes,
        "stderr_tail": stderr if error is not None or notes else stderr[-3:],
        "stack_version": parsed.get("stack") if parsed and isinstance(parsed.get("stack"), str) else None,
    }
    return result


# -- the adapter ------------------------------------------------------------------------------


def _absolute_words(argv: list[str], base: str) -> list[str]:
    """``argv`` with relative paths made absolute against ``base``: the first word when it
    has a ``/``, any other word that names an existing file (the peer runs elsewhere)."""
    out = []
    for i, word in enumerate(argv):
        relative = word and not os.path.isabs(word) and not word.startswith("-")
        if relative and ((i == 0 and "/" in word) or (i > 0 and os.path.exists(os.path.join(base, word)))):
            word = os.path.normpath(os.path.join(base, word))
        out.append(word)
    return out


class CommandPeer:
    """A contract command as a lab stack (caller and callee).

    ``argv`` is the command's words (``{role}`` replaced per side); ``capabilities`` what the
    stack supports (:class:`~natkit.lab.stacks.capabilities.Capabilities`; unknown for a
    user's peer). A subclass that finds its program late overrides :meth:`resolve`.
    """

    roles: ClassVar[tuple[str, ...]] = ROLES
    heavy: ClassVar[bool] = False
    parallel: ClassVar[int] = 0

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        start_s: float = 1.0,
        capabilities: Capabilities | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if not argv:
            raise ConfigError(f"{name}: empty command", param="peer")
        self.name = name
        self.argv = list(argv)
        self.start_s = start_s
        self.capabilities = capabilities or Capabilities.unknown(name)
        self.env = dict(env or {})

    @classmethod
    def from_spec(cls, spec: str, *, reserved: Sequence[str] = ()) -> CommandPeer:
        """``NAME=COMMAND`` (``--peer``'s value) as a peer; ConfigError(param="peer") when
        malformed. ``reserved``: names that are taken (the built-in stacks)."""
        name, sep, command = spec.partition("=")
        name = name.strip()
        where = repr(_clip(spec, 80))  # the CLI puts "--peer:" before it
        if not sep or not command.strip():
            raise ConfigError(f"{where}: expected NAME=COMMAND, e.g. mypeer='./my-peer --role {{role}}'", param="peer")
        if not NAME_RE.match(name):
            raise ConfigError(
                f"{where}: the name must start with a letter and hold only letters, digits, '.', '_' or '-' "
                "(at most 32 characters)", param="peer",
            )
        if name in reserved:
            raise ConfigError(f"{where}: {name!r} is a built-in stack; choose another name", param="peer")
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise ConfigError(f"{where}: the command cannot be split into words: {exc}", param="peer") from None
        if not argv:
            raise ConfigError(f"{where}: empty command", param="peer")
        return cls(name, _absolute_words(argv, os.getcwd()))

    @property
    def spec(self) -> str:
        """This peer as ``NAME=COMMAND`` again (for another process, e.g. a Compose agent)."""
        return f"{self.name}={shlex.join(self.argv)}"

    def command(self, role: str) -> list[str]:
        return [w.replace("{role}", role) for w in self.argv]

    def resolve(self) -> None:
        """Find the program (a no-op here: a user's command is as given)."""

    def check(self) -> None:
        """ConfigError(param="peer") when the command's program cannot be found or run."""
        program = self.argv[0]
        found = program if "/" in program else shutil.which(program)
        if found is None:
            raise ConfigError(f"{self.name}: {program!r} is not on PATH", param="peer")
        if not os.path.isfile(found) or not os.access(found, os.X_OK):
            raise ConfigError(f"{self.name}: {found} is not an executable file", param="peer")

    def max_duration_s(self, config: PeerConfig) -> float:
        return config.deadline_s + TERM_AFTER_S + KILL_AFTER_S + DRAIN_S + 1.0

    def environment(self, role: str, config: PeerConfig) -> dict[str, str]:
        return {**os.environ, **self.env, **contract_env(self.name, role, config)}

    async def start(self, role: str, config: PeerConfig) -> PeerResult:
        if role not in self.roles:
            return PeerResult(role, config.path, self.name, error=f"the {self.name} stack cannot be the {role}", relays=None)
        try:
            self.resolve()
            env = self.environment(role, config)
        except (ConfigError, PrerequisiteError) as exc:
            return PeerResult(role, config.path, self.name, error=str(exc), relays=None)
        with _ca_file(config.ca_pem) as ca_file:
            if ca_file is not None:
                # The lab CA that turns: servers' certificates chain to; SSL_CERT_FILE makes
                # OpenSSL's and Go's default trust store that file, for this process only.
                env = {**env, "NATKIT_CA_FILE": ca_file, "SSL_CERT_FILE": ca_file}
            run = await run_command(self.command(role), env, config.deadline_s)
        return interpret(run, role, config, self.name)


@contextlib.contextmanager
def _ca_file(pem: str | None) -> Iterator[str | None]:
    """``pem`` in a file of its own while the peer runs (None: no CA, no file)."""
    if not pem:
        yield None
        return
    folder = tempfile.mkdtemp(prefix="natkit-ca-")
    try:
        path = os.path.join(folder, "lab-ca.pem")
        with open(path, "w", encoding="ascii") as f:
            f.write(pem)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)

