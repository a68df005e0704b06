"""A lab kept up to explore by hand: ``natkit lab up`` / ``shell`` / ``down``.

:func:`up` builds the whole topology with the netns engine and runs its servers until the
block ends; the state file :data:`UP_STATE` names the process that keeps it, its tag and its
nodes, for :func:`shell_command` and :func:`down`. A lab whose process was killed (``kill -9``)
leaves the state file and its namespaces behind: :func:`down` finds and removes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from natkit.errors import PrerequisiteError, UsageError
from natkit.lab.netns import STATE_DIR, cleanup_leftovers, owner_alive, process_start
from natkit.lab.results import SCHEMA_VERSION
from natkit.lab.servers import ServersSpec
from natkit.lab.topology import Plan, Topology

__all__ = [
    "UP_STATE", "DownReport", "UpLab", "down", "forget_dead", "read_up_state", "serving", "shell_command", "up",
]

UP_STATE = STATE_DIR / "lab-up.json"
SERVERS_START_TIMEOUT = 15.0


@dataclass
class UpLab:
    """A lab kept up by :func:`up`: its namespaces and address plan."""

    tag: str
    nodes: dict[str, str]  # node -> namespace
    plan: Plan
    topology: Topology
    turn_engine: str

    def describe(self) -> list[tuple[str, str, str]]:
        """(node, namespace, what it holds) for every node."""
        srv = self.topology.servers
        rows = [
            ("inet", self.nodes["inet"], f"bridge br0 ({self.topology.internet_net})"),
            (
                "srv",
                self.nodes["srv"],
                f"STUN {srv.stun_addresses[0]}:{srv.stun_port} + {srv.stun_addresses[1]}:{srv.stun_alt_port}, "
                f"TURN {srv.turn_address}:{srv.turn_port}, signaling ws://{srv.signaling_address}:{srv.signaling_port}/ws",
            ),
        ]
        for r in self.plan.routers:
            rows.append((r.id, self.nodes[r.id], f"{r.nat.type}: public {r.public_ip}, LAN {r.lan_net}"))
            for p in r.peers:
                rows.append((p.id, self.nodes[p.id], f"{p.ip} behind {r.id}"))
        return rows

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "tag": self.tag,
            "topology": self.topology.source,
            "pid": os.getpid(),
            "turn_engine": self.turn_engine,
            "nodes": [{"node": n, "namespace": ns, "what": what} for n, ns, what in self.describe()],
        }


def read_up_state(*, alive: bool = True) -> dict[str, Any] | None:
    """The state of the lab of ``natkit lab up``; with ``alive``, only if its process lives."""
    try:
        state = json.loads(UP_STATE.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not isinstance(state.get("nodes"), dict):
        return None
    return state if not alive or owner_alive(state) else None


def _write_state(state: dict[str, Any]) -> None:
    UP_STATE.parent.mkdir(parents=True, exist_ok=True)
    tmp = UP_STATE.with_name(f".{UP_STATE.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, UP_STATE)


def _start_servers(sock: socket.socket, spec: ServersSpec) -> None:
    """Ask the servers' agent to start them; return once they listen."""
    sock.sendall((json.dumps({"id": 1, "op": "servers", "spec": spec.to_json()}) + "\n").encode())
    sock.settimeout(SERVERS_START_TIMEOUT)
    try:
        line = sock.makefile("rb").readline()
    except TimeoutError:
        line = b""
    finally:
        sock.settimeout(None)
    msg = json.loads(line) if line else {"result": {"error": f"no answer in {SERVERS_START_TIMEOUT:g} s"}}
    if not msg.get("ready"):
        detail = msg.get("result", {}).get("error", msg) if isinstance(msg.get("result"), dict) else msg
        raise PrerequisiteError(
            f"the lab's servers did not start: {detail}; check the TURN engine and that no other lab runs"
        )


@contextlib.contextmanager
def serving(topo: Topology, plan: Plan, engine: str) -> Iterator[Any]:
    """The netns lab of ``plan`` built, its servers running (``engine`` relays), no other agent:
    what ``natkit lab up`` and the ``nat_lab`` fixture keep. Torn down when the block ends."""
    from natkit.lab.engines import netns

    with netns.open_lab(topo, plan, capture=False, agents=False) as built:
        built.procs["srv"] = pid_sock = netns.spawn_agent(built.nodes.srv, [], built.scratch)
        _start_servers(pid_sock[1], ServersSpec.of(topo, plan, engine))
        yield built


@contextlib.contextmanager
def up(topo: Topology, *, turn_engine: str | None = None) -> Iterator[UpLab]:
    """Build the whole lab of ``topo`` with its servers running and keep it until the block
    ends (the process owning it is recorded for ``natkit lab down`` / ``shell``)."""
    from natkit.lab.engines import netns
    from natkit.lab.runner import check_turn_engine

    engine = check_turn_engine(topo, turn_engine)
    netns.check(capture=False)
    if read_up_state() is not None:
        raise UsageError("a lab is already up: stop it with 'natkit lab down' first")
    plan = topo.plan()
    with serving(topo, plan, engine) as built:
        state = {
            "pid": os.getpid(), "start": process_start(os.getpid()), "tag": built.tag,
            "topology": topo.source, "nodes": built.nodes.nodes(),
        }
        _write_state(state)
        try:
            yield UpLab(built.tag, built.nodes.nodes(), plan, topo, engine)
        finally:
            with contextlib.suppress(OSError):
                UP_STATE.unlink()


@dataclass
class DownReport:
    """What :func:`down` did: ``how`` is ``stopped`` (its process ended the lab) or ``leftover``
    (its process was gone; what it left was removed)."""

    tag: str
    how: str
    pid: int | None = None
    removed: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "tag": self.tag, "how": self.how, "pid": self.pid,
                "removed": self.removed}


def down(timeout: float = 15.0) -> DownReport:
    """Stop the lab of ``natkit lab up``, or remove what a killed one left behind."""
    state = read_up_state(alive=False)
    if state is None:
        left = _leftovers()
        hint = f"; {len(left)} namespace(s) of killed runs remain: 'natkit lab clean' removes them" if left else ""
        raise UsageError(f"no lab is up (start one with 'natkit lab up'){hint}")
    tag, pid = str(state.get("tag")), state.get("pid")
    if owner_alive(state):
        assert isinstance(pid, int)
        os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + timeout
        while time.monotonic() < end and read_up_state() is not None:
            time.sleep(0.1)
        if read_up_state() is not None:
            raise PrerequisiteError(f"the lab's process {pid} did not stop; try 'natkit lab clean --force'")
        return DownReport(tag, "stopped", pid)
    # Its process is gone (kill -9, a crash): its namespaces and state stay until removed here.
    removed = cleanup_leftovers()
    with contextlib.suppress(OSError):
        UP_STATE.unlink()
    return DownReport(tag, "leftover", pid if isinstance(pid, int) else None, removed)


def forget_dead() -> str | None:
    """Remove the state file of a ``natkit lab up`` whose process is gone; its tag, or None."""
    state = read_up_state(alive=False)
    if state is None or owner_alive(state):
        return None
    with contextlib.suppress(OSError):
        UP_STATE.unlink()
    return str(state.get("tag"))


def _leftovers() -> list[str]:
    """Namespaces of runs whose owner is gone (what ``natkit lab clean`` would remove)."""
    import re
    import subprocess

    try:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    tags: dict[str, bool] = {}
    found = []
    for line in out.splitlines():
        m = re.match(r"^(nk[0-9a-f]{6})-\S+", line)
        if not m:
            continue
        tag = m.group(1)
        if tag not in tags:
            try:
                tags[tag] = owner_alive(json.loads((STATE_DIR / f"{tag}.json").read_text()))
            except (OSError, ValueError):
                tags[tag] = False
        if not tags[tag]:
            found.append(line.split()[0])
    return found


def shell_command(node: str, command: Sequence[str] = (), *, state: dict[str, Any] | None = None) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) that run ``command`` (default: the user's shell) in ``node`` of the
    lab that is up. The running interpreter's bin directory leads PATH, so ``natkit`` (and the
    venv's tools) work inside even when the venv is not on the caller's PATH."""
    state = state if state is not None else read_up_state(alive=False)
    if state is None:
        raise UsageError("no lab is up (start one with 'natkit lab up')")
    if not owner_alive(state):
        raise UsageError(
            f"lab {state.get('tag')} was left by a killed 'natkit lab up': remove it with "
            "'natkit lab down', then start a new one"
        )
    nodes = state["nodes"]
    if node not in nodes:
        raise UsageError(f"no node {node!r} in the lab; nodes: {', '.join(nodes)}")
    argv = list(command) or [os.environ.get("SHELL", "/bin/sh")]
    if argv and argv[0] == "--":
        argv = argv[1:] or [os.environ.get("SHELL", "/bin/sh")]
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bindir]
    env["PATH"] = os.pathsep.join([bindir, *path, *([] if path else ["/usr/sbin", "/usr/bin", "/sbin", "/bin"])])
    env["NATKIT_LAB_NODE"] = node
    import shutil

    return [shutil.which("ip") or "ip", "netns", "exec", str(nodes[node]), *argv], env
