"""``natkit lab run --engine compose``: the lab as a Docker Compose project, driven from the host.

:func:`run` is the Compose engine's counterpart of :func:`natkit.lab.runner.run`, with the same
result:

1. **checks**: a Docker daemon that runs, with a storage driver that shares layers; a Compose
   tool (:func:`natkit.lab.engines.docker.compose_tool`: which one ran is in the result);
   iptables; dumpcap for the capture; the lab's subnets (``[compose]`` keys) clear of
   everything the host uses (:func:`natkit.lab.engines.hostnet.check_overlap`);
2. **image**: built offline or reused (:func:`natkit.lab.engines.image.ensure_image`);
3. **up**: the run's own Compose file (:func:`natkit.lab.engines.compose.render_compose` with
   :class:`~natkit.lab.engines.compose.RunOptions`: project, bridge names and labels carry the
   run's tag ``nk`` + 6 hex); the scoped firewall exception for its bridges
   (:class:`~natkit.lab.engines.hostnet.BridgeGuard`) goes in before ``up --no-start`` creates
   them, the host's addresses come off them before anything starts; then every service but
   the runner starts, the capture starts on the internet bridge (markers sent from the
   servers' container), and last the runner, whose progress events are followed in its log;
4. **finish**: the runner writes its :class:`~natkit.lab.orchestrate.Orchestration` into the
   run's directory and exits; the host calls :func:`natkit.lab.runner.finish` with its capture
   (packet evidence as under netns), then ``down`` and the guard's rules go.

Nothing is left behind: everything goes at the end, on failure, on Ctrl-C and SIGTERM; after
``kill -9`` the next run or ``natkit lab clean --engine compose`` (:func:`cleanup_leftovers`)
removes what a dead run left (its containers, networks and rules, by their labels and its
state file in ``/run/natkit/compose``). The image stays cached.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from natkit.errors import ConfigError, PrerequisiteError
from natkit.lab.capture import Capture, check_dumpcap
from natkit.lab.engines import compose as model
from natkit.lab.engines import hostnet
from natkit.lab.engines.docker import (
    ComposeTool,
    DockerAPI,
    DockerError,
    check_daemon,
    compose_tool,
)
from natkit.lab.engines.image import ImageInfo, ensure_image
from natkit.lab.matrix import Selection
from natkit.lab.netns import STATE_DIR, owner_alive, process_start
from natkit.lab.orchestrate import Orchestration, Progress, Tally, case_result, check_stacks
from natkit.lab.results import LabResult, ProbeResult
from natkit.lab.shard import Shard
from natkit.lab.stacks.command import CommandPeer
from natkit.lab.topology import TURN_ENGINES, Case, Plan, Topology

__all__ = ["NAME", "ComposeBuiltLab", "check", "check_peers_mounted", "cleanup_leftovers", "run",
           "stack_unavailable"]

NAME = "compose"
COMPOSE_STATE = STATE_DIR / "compose"
UP_TIMEOUT_S = 300.0  # compose up --no-start / start of 30+ containers on a loaded host
DOWN_TIMEOUT_S = 180.0
RUNNER_BASE_S = 420.0  # the agents' wait (180 s) and the servers, before the first case
RUNNER_PER_CASE_S = 3.0


@dataclass
class ComposeBuiltLab:
    """The lab as :func:`natkit.lab.runner.finish` sees it: the host's capture of the internet
    bridge; the agents were the runner container's and are gone with it."""

    tag: str
    capture: Capture | None = None
    engine: str = NAME

    @property
    def agents(self) -> dict[str, Any]:
        return {}

    def stop_agents(self) -> None:
        pass  # the runner closed every agent's connection before it exited


@dataclass
class _Run:
    """What one run made, to take it down again."""

    tag: str
    api: DockerAPI
    tool: ComposeTool
    dir: Path
    file: Path
    services: list[str]
    guard: hostnet.BridgeGuard | None = None
    capture: Capture | None = None
    log_tail: list[str] = field(default_factory=list)


def check(*, capture: bool) -> tuple[DockerAPI, ComposeTool]:
    """The daemon and the Compose tool, or PrerequisiteError naming what to install or do."""
    if os.geteuid() != 0:
        raise PrerequisiteError("the Compose lab needs root (Docker, its bridges' firewall rules): run it as root")
    api = check_daemon()
    tool = compose_tool()
    hostnet.lab_rules()  # iptables is there
    if capture:
        check_dumpcap()
    return api, tool


def _check_subnets(topo: Topology, plan: Plan, docker_networks: Sequence[dict[str, Any]]) -> None:
    """ConfigError when a subnet of the lab overlaps something the host uses."""
    subnets = [(topo.internet_net, "compose.internet_subnet"), *((r.lan_net, "compose.lan_base") for r in plan.routers),
               *((i.lan_net, "compose.lan_base") for r in plan.routers for i in r.inner)]
    hostnet.check_overlap(subnets, hostnet.host_usage(docker_networks=docker_networks), where=topo.source)
    six = [(plan.internet_net6, "key 'internet.subnet6'")] if plan.internet_net6 else []
    six += [(net, f"the IPv6 LAN of NAT {r.nat.name}") for r in plan.routers if r.public_ip6
            for net in (r.lan_net6, r.outside_net6) if net]
    if six:
        hostnet.check_overlap6(six, hostnet.host_usage6(), where=topo.source)


def _state_path(tag: str) -> Path:
    return COMPOSE_STATE / f"{tag}.json"


def _write_state(tag: str, run_dir: Path) -> None:
    COMPOSE_STATE.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"pid": os.getpid(), "start": process_start(os.getpid()), "dir": str(run_dir)}
    # the host's IPv6 forwarding before dockerd makes an IPv6 network: a killed run's clean-up
    # puts it back (hostnet.BridgeGuard does at the end of a run that ends)
    state["forwarding6"] = {}
    for path in hostnet.BridgeGuard.FORWARDING6:
        with contextlib.suppress(OSError):
            state["forwarding6"][str(path)] = path.read_text().strip()
    tmp = COMPOSE_STATE / f".{tag}.tmp"
    tmp.write_text(json.dumps(state))
    tmp.replace(_state_path(tag))


def _states() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if COMPOSE_STATE.is_dir():
        for path in COMPOSE_STATE.glob("nk*.json"):
            try:
                out[path.stem] = dict(json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                out[path.stem] = {}
    return out


def _networks(api: DockerAPI, tag: str) -> list[dict[str, Any]]:
    found = api.networks(f"{model.LABEL}={tag}") + api.networks(f"com.docker.compose.project={tag}")
    return list({str(n["Id"]): n for n in found}.values())


def _release(api: DockerAPI, tag: str) -> list[str]:
    """Every container of run ``tag`` off its networks, one endpoint at a time per network,
    before anything stops or removes them (:meth:`DockerAPI.release_endpoints`: else the
    daemon may keep a network it counts an endpoint too many on)."""
    return api.release_endpoints([str(n["Id"]) for n in _networks(api, tag)])


def _remove_objects(api: DockerAPI, tag: str, failed: list[str] | None = None) -> list[str]:
    """Remove the containers and networks of run ``tag``; what was there. Networks the daemon
    would not remove are added to ``failed`` with its reason."""
    removed = []
    _release(api, tag)
    for c in api.containers(f"{model.LABEL}={tag}") + api.containers(f"com.docker.compose.project={tag}"):
        api.remove_container(str(c["Id"]))
        removed.append(f"container {(c.get('Names') or [c['Id'][:12]])[0].lstrip('/')}")
    for n in _networks(api, tag):
        why = api.remove_network(str(n["Id"]))
        if why is not None and failed is not None:
            failed.append(f"network {n.get('Name')} ({why})")
        removed.append(f"network {n.get('Name')}")
    return list(dict.fromkeys(removed))


def cleanup_leftovers(api: DockerAPI | None = None, *, force: bool = False) -> list[str]:
    """Remove what Compose runs that no longer live left behind (``force``: also live runs');
    what was removed. This process's own runs are never touched."""
    api = api or check_daemon()
    states = _states()
    tags: set[str] = set(states)
    for obj in api.containers(model.LABEL) + api.networks(model.LABEL):
        tag = (obj.get("Labels") or {}).get(model.LABEL)
        if isinstance(tag, str) and tag.startswith("nk"):
            tags.add(tag)
    for _, spec in hostnet.lab_rules():
        tags.add(spec.split(f"{hostnet.COMMENT} ", 1)[1].split('"')[0].split()[0])
    removed: list[str] = []
    for tag in sorted(tags):
        state = states.get(tag)
        if state is not None and state.get("pid") == os.getpid():
            continue
        if state is not None and owner_alive(state) and not force:
            continue
        removed += _remove_objects(api, tag)
        removed += [f"rule {r}" for r in hostnet.remove_rules(tag)]
        for path, value in ((state or {}).get("forwarding6") or {}).items():
            if Path(path) in hostnet.BridgeGuard.FORWARDING6 and value in ("0", "1"):
                with contextlib.suppress(OSError):
                    if Path(path).read_text().strip() != value:
                        Path(path).write_text(value)
                        removed.append(f"IPv6 forwarding change ({path} back to {value})")
        scratch = (state or {}).get("dir")
        if isinstance(scratch, str) and Path(scratch).name.startswith(f"natkit-compose-{tag}-"):
            shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(OSError):
            _state_path(tag).unlink()
    return removed


# -- what the image runs ---------------------------------------------------------------------------

# Where a --peer command finds programs of the image itself (not the host's).
IMAGE_DIRS = ("/usr/", "/bin/", "/sbin/", "/opt/natkit/")


def stack_unavailable(name: str) -> str | None:
    """Why the built-in or registered stack ``name`` cannot run in the lab's image, or None.
    The image carries aiortc (a dependency), the compiled peers built on this host (the pion
    peer: :func:`natkit.lab.engines.image.host_programs`), any ``--peer`` command, and, when a
    run names one of them, the stacks that are Debian packages (Chromium, Firefox, libnice:
    :data:`natkit.lab.engines.image.STACK_PACKAGES`, in a flavour of the image of their own)."""
    from natkit.lab import stacks

    if name == "pion":
        from natkit.lab.engines.image import host_programs
        from natkit.lab.stacks.build import BUILD_COMMAND, PION_PROGRAM

        if not any(p.name == PION_PROGRAM for p in host_programs()):
            return f"the image carries the pion peer built on this host, and there is none: {BUILD_COMMAND}"
        return None
    if name not in stacks.STACKS:
        return "no such stack"
    return None


def check_peers_mounted(peers: Sequence[str], mounts: Sequence[str]) -> None:
    """ConfigError(param="peer") when a ``--peer`` command names a file of this host that no
    ``--mount`` brings into the containers (it would not be there)."""
    for spec in peers:
        peer = CommandPeer.from_spec(spec)
        for word in peer.argv:
            if not (os.path.isabs(word) and os.path.exists(word)) or word.startswith(IMAGE_DIRS):
                continue
            if not any(word == m or word.startswith(m.rstrip("/") + "/") for m in mounts):
                raise ConfigError(
                    f"{peer.name}: {word} is on this host, not in the Compose lab's containers; add "
                    f"--mount {os.path.dirname(word) if os.path.isfile(word) else word} (read-only, same path, "
                    "in the runner and every peer)", param="peer")


# -- one run ------------------------------------------------------------------------------------


def _compose(run: _Run, *args: str, timeout: float = UP_TIMEOUT_S) -> None:
    res = run.tool.run(run.tag, str(run.file), *args, timeout=timeout)
    if res.returncode != 0:
        lines = [ln for ln in (res.stderr or res.stdout).splitlines() if ln.strip()]
        raise PrerequisiteError(f"{run.tool.name} {args[0]} failed: {' / '.join(lines[-3:])[:500]}")


def _container(run: _Run, service: str) -> dict[str, Any]:
    for c in run.api.containers(f"com.docker.compose.project={run.tag}"):
        if (c.get("Labels") or {}).get("com.docker.compose.service") == service:
            return c
    raise PrerequisiteError(f"{run.tool.name} made no {service} container")


def _settle(api: DockerAPI, ident: str, timeout: float = 15.0) -> None:
    """Wait until the daemon has released the networks of a container that exited by itself.

    Docker 20.10 can keep a stale endpoint, and then a network that cannot be removed until
    the daemon restarts, when a container is removed while the daemon still handles its exit
    (moby/moby#42119, #43286); the runner is the one container that exits on its own."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            info = api.container(ident)
        except (OSError, DockerError):
            return
        nets = (info.get("NetworkSettings") or {}).get("Networks") or {}
        if not info.get("State", {}).get("Running") and not any(n.get("EndpointID") for n in nets.values()):
            return
        time.sleep(0.2)


def _exited(run: _Run) -> str:
    """The lab containers (not the runner) that stopped by themselves, with their last line
    (a router whose set-up failed leaves its peers unconnected: this says which and why)."""
    out = []
    with contextlib.suppress(OSError, DockerError, ValueError):
        for c in run.api.containers(f"com.docker.compose.project={run.tag}"):
            service = (c.get("Labels") or {}).get("com.docker.compose.service", "")
            if service == "runner" or c.get("State") == "running":
                continue
            tail = b"".join(chunk for _, chunk in run.api.logs(str(c["Id"]), tail="3", timeout=10))
            last = next((ln for ln in reversed(tail.decode(errors="replace").splitlines()) if ln.strip()), "no output")
            out.append(f"{service} exited: {last.strip()[:200]}")
    return f" ({'; '.join(out[:5])})" if out else ""


def _teardown(run: _Run) -> list[str]:
    """Down, then whatever is still there, the rules, the directory; the problems."""
    problems: list[str] = []
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if threading.current_thread() is threading.main_thread() else None
    try:
        if run.capture is not None:
            run.capture.close()
        down = ""
        with contextlib.suppress(OSError, DockerError):
            _release(run.api, run.tag)
        try:
            res = run.tool.run(run.tag, str(run.file), "down", "--volumes", "--remove-orphans", "--timeout", "3",
                               timeout=DOWN_TIMEOUT_S)
            if res.returncode != 0:
                down = " / ".join(ln for ln in res.stderr.splitlines() if ln.strip())[-300:]
        except (OSError, subprocess.TimeoutExpired) as exc:
            down = str(exc)
        try:
            failed: list[str] = []
            _remove_objects(run.api, run.tag, failed)
            if failed:
                problems.append(
                    f"the Docker daemon kept {', '.join(failed)}; its bridge has no address or route of "
                    "the host, and a daemon restart followed by 'natkit lab clean --engine compose' removes it"
                )
        except OSError as exc:
            problems.append(f"the Docker daemon did not answer while removing the lab: {exc}")
        if down:
            print(f"natkit lab: {run.tool.name} down: {down}", file=sys.stderr)
        if run.guard is not None:
            run.guard.remove()
        shutil.rmtree(run.dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            _state_path(run.tag).unlink()
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
    return problems


@contextlib.contextmanager
def _signals() -> Iterator[None]:
    """SIGTERM and SIGHUP end the run like Ctrl-C does: through the teardown."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    old = {sig: signal.signal(sig, on_term) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _follow(run: _Run, runner_id: str, topo: Topology, plan: Plan, cases: Sequence[Case], notify: Progress) -> threading.Thread:
    """Follow the runner's log in a thread: progress events to ``notify``, other lines kept."""
    by_id = {c.id: c for c in cases}
    lock = threading.Lock()

    def handle(line: str) -> None:
        if not line.startswith(model.PROGRESS_PREFIX):
            if line.strip():
                run.log_tail[:] = [*run.log_tail[-19:], line.rstrip()]
            return
        try:
            ev = json.loads(line[len(model.PROGRESS_PREFIX):])
            kind = ev["kind"]
            if kind == "case":
                rep = ev["case"]
                case = case_result(topo, plan, by_id[rep["id"]], rep["caller"], rep["callee"])
                info: dict[str, Any] = {"case": case, "done": ev["done"], "total": ev["total"], "tally": Tally(*ev["tally"])}
            elif kind == "probe":
                info = {"probe": ProbeResult.from_json(ev["probe"])}
            else:
                info = {"text": f"runner: {ev.get('text', '')}"}
        except (ValueError, KeyError, TypeError):
            return
        with lock:
            notify(kind, info)

    def target() -> None:
        buf = b""
        with contextlib.suppress(Exception):
            for _, chunk in run.api.logs(runner_id, follow=True, timeout=None):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    handle(line.decode(errors="replace"))
        if buf:
            handle(buf.decode(errors="replace"))

    th = threading.Thread(target=target, name=f"natkit-compose-{run.tag}-log", daemon=True)
    th.start()
    return th


def run(
    topo: Topology,
    *,
    cases: list[Case] | None = None,
    turn_engine: str | None = None,
    parallel: int | None = None,
    capture: bool = True,
    progress: Progress | None = None,
    keep_capture: str | None = None,
    base: str | None = None,
    selection: Selection | None = None,
    shard: Shard | None = None,
    peers: Sequence[str] = (),
    mounts: Sequence[str] = (),
    peer_caps: Sequence[str] = (),
    browser: bool = False,
) -> LabResult:
    """Run the lab of ``topo`` under Docker Compose (see the module docstring); the typed
    result, as :func:`natkit.lab.runner.run` gives it for the netns engine (``cases``,
    ``selection``, ``shard`` and ``browser``, the Chromium cases, as there).

    ``peers``: the ``--peer NAME=COMMAND`` stacks the cases may name (registered in this
    process already: :func:`natkit.lab.choose.register_peers`); their commands run inside the
    peers' containers, so what they need must be in the image or under ``mounts`` (host paths
    bind-mounted read-only at the same path into the runner and every peer container);
    ``peer_caps``: their ``--peer-caps NAME=LIST`` (the runner derives expectations from them)."""
    from natkit.lab.runner import describe_run, finish, run_cases

    t0 = time.monotonic()
    notify = progress or (lambda kind, info: None)
    engine = turn_engine or topo.servers.turn_engine
    if engine not in TURN_ENGINES:  # coturn is in the image: the host needs none
        raise ConfigError(f"{engine}: choose {' or '.join(TURN_ENGINES)}", param="turn_engine")
    api, tool = check(capture=capture)
    topo, left_out = model.compose_scope(topo)
    for what, why in left_out:
        notify("stage", {"text": f"left out under Compose: {what}: {why}"})
    ctopo = topo.for_compose()
    cases = model.in_scope(ctopo, run_cases(ctopo, cases, selection, shard, browser=browser))
    if not cases:
        raise ConfigError("no case of this run can run under the Compose engine "
                          f"({'; '.join(w for w, _ in left_out) or 'none selected'}); use --engine netns", param="engine")
    for name in sorted({s for c in cases for s in c.stacks}, key=lambda n: (n != "aiortc", n)):
        missing = stack_unavailable(name)
        if missing is not None:
            raise PrerequisiteError(f"the {name} stack cannot run under the Compose engine: {missing}")
    mounts = [model.check_mount(m) for m in mounts]
    # the containers run the commands elsewhere: their relative paths made absolute here
    peers = [CommandPeer.from_spec(spec).spec for spec in peers]
    check_peers_mounted(peers, mounts)
    check_stacks(cases, on_this_host=False)  # they run in the image (stack_unavailable above)
    plan = ctopo.plan(cases)
    for gone in cleanup_leftovers(api):
        notify("stage", {"text": f"removed a killed run's {gone}"})
    _check_subnets(ctopo, plan, api.networks())
    notify("stage", {"text": f"Compose engine: {tool.describe()}"})
    run_stacks = sorted({s for c in cases for s in c.stacks})
    image: ImageInfo = ensure_image(api, base, lambda text: notify("stage", {"text": text}), stacks=run_stacks)
    how = f"built in {image.seconds:.0f} s" if image.built else "cached"
    notify("stage", {"text": f"image {image.tag} on {image.base} ({how})"})
    tag = "nk" + secrets.token_hex(3)
    run_dir = Path(tempfile.mkdtemp(prefix=f"natkit-compose-{tag}-"))
    _write_state(tag, run_dir)
    owner = f"{os.getpid()} {process_start(os.getpid())}"
    options = model.RunOptions(tag, image.tag, str(run_dir), owner, tuple(cases), topo.case_deadline_s, parallel,
                               tuple(peers), tuple(mounts), tuple(peer_caps))
    (run_dir / model.CASES_FILE).write_text(json.dumps(model.cases_to_json(cases)))
    text = model.render_compose(topo, turn_engine=engine, run=options)
    services = list(model.compose_model(topo, turn_engine=engine, run=options)["services"])
    run = _Run(tag, api, tool, run_dir, run_dir / "compose.yaml", services)
    run.file.write_text(text)
    timings: dict[str, float] = {"image_s": image.seconds}
    errors: list[str] = []
    with _signals():
        try:
            result = _run_up(run, ctopo, plan, cases, engine, capture, notify, keep_capture, t0, timings, finish)
            result.browser = browser
        finally:
            t_down = time.monotonic()
            errors += _teardown(run)
            timings["teardown_s"] = time.monotonic() - t_down
    result.errors += errors
    result.timings = {**timings, **result.timings, "teardown_s": timings["teardown_s"]}
    result.duration_s = time.monotonic() - t0
    result.compose = {"tool": tool.describe(), "project": tag, "image": image.to_json(),
                      "bridges": sorted(model.bridge_names(plan, tag).values()), "mounts": list(mounts),
                      "left_out": [{"what": w, "why": y} for w, y in left_out]}
    describe_run(result, selection, shard)
    return result


def _run_up(
    run: _Run, topo: Topology, plan: Plan, cases: list[Case], engine: str, capture: bool, notify: Progress,
    keep_capture: str | None, t0: float, timings: dict[str, float], finish: Callable[..., LabResult],
) -> LabResult:
    bridges = model.bridge_names(plan, run.tag)
    run.guard = hostnet.BridgeGuard(run.tag, list(bridges.values()))
    run.guard.install()
    t1 = time.monotonic()
    services = run.services
    notify("stage", {"text": f"creating {len(services)} containers and {len(bridges)} networks ({run.tag})", "tag": run.tag})
    _compose(run, "up", "--no-start")
    missing = run.guard.seal()
    if missing:
        raise PrerequisiteError(f"{run.tool.name} made no bridge {', '.join(missing)}: the Docker daemon ignored the bridge names")
    notify("stage", {"text": "starting routers, peers and servers"})
    _compose(run, "start", *(s for s in services if s != "runner"))
    if capture:
        srv = run.api.container(str(_container(run, "servers")["Id"]))
        pid = int(srv.get("State", {}).get("Pid") or 0)
        if not pid:
            raise PrerequisiteError(f"the servers' container is not running{_exited(run) or ': see its log (docker logs)'}")
        run.capture = Capture(None, "", bridges["internet"], run.dir / "internet.pcap", f"/proc/{pid}/ns/net",
                              plan.routers[0].public_ip)
        run.capture.start()
    runner = _container(run, "runner")
    _compose(run, "start", "runner")
    timings["build_s"] = time.monotonic() - t0
    timings["up_s"] = time.monotonic() - t1
    follower = _follow(run, str(runner["Id"]), topo, plan, cases, notify)
    bound = RUNNER_BASE_S + RUNNER_PER_CASE_S * len(cases) + topo.case_deadline_s
    try:
        status = run.api.wait(str(runner["Id"]), timeout=bound)
    except OSError:
        raise PrerequisiteError(f"the Compose lab's runner did not finish within {bound:g} s") from None
    follower.join(10)
    _settle(run.api, str(runner["Id"]))
    out = run.dir / "orchestration.json"
    if status != 0 or not out.is_file():
        why = next((ln for ln in reversed(run.log_tail) if "error" in ln.lower()), "")
        if not why:  # the follower may not have read the last lines yet: ask for them
            with contextlib.suppress(OSError, ValueError):
                tail = b"".join(chunk for _, chunk in run.api.logs(str(runner["Id"]), tail="20", timeout=10))
                why = next((ln for ln in reversed(tail.decode(errors="replace").splitlines()) if "error" in ln.lower()), "")
        if not why and status > 128:
            why = f"killed by signal {status - 128} (the Docker daemon, the OOM killer or docker kill)"
        why = why or (run.log_tail[-1] if run.log_tail else "no output")
        raise PrerequisiteError(f"the Compose lab's runner exited with status {status}: {why[:400]}{_exited(run)}")
    try:
        orch = Orchestration.from_json(json.loads(out.read_text()), topo, plan, cases)
    except ValueError as exc:
        raise PrerequisiteError(f"the Compose lab's runner wrote no usable result: {exc}") from None
    return finish(ComposeBuiltLab(run.tag, run.capture), topo, plan, orch, turn_engine=engine, started=t0,
                  progress=notify, keep_capture=keep_capture)
