"""Suite-wide guards: nothing a test starts may outlive the run.

Under CI (``CI=true``) the run fails when network namespaces named with natkit's prefix,
coturn processes or Compose lab containers and networks started by the tests are still there
at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from natkit.lab.netns import STATE_DIR, owner_alive

PREFIX = "nk"


def _namespaces() -> set[str]:
    try:
        out = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)}


def _parent(pid: int) -> int | None:
    try:
        # The command name may hold spaces and parentheses: fields after the last ")".
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _someone_elses(ns: str) -> bool:
    """Whether namespace ``ns`` belongs to a live run this session did not start (another
    pytest or ``natkit lab run`` on the same machine): its run's state file names a live
    process that is not this process or one of its descendants."""
    try:
        state = json.loads((STATE_DIR / f"{ns.split('-', 1)[0]}.json").read_text())
    except (OSError, ValueError):
        return False
    pid = state.get("pid") if isinstance(state, dict) else None
    if not isinstance(pid, int) or not owner_alive(state):
        return False
    for _ in range(64):  # a bounded walk up the process tree
        if pid == os.getpid():
            return False
        if pid is None or pid <= 1:
            return True
        pid = _parent(pid)
    return True


def _turnservers() -> set[str]:
    try:
        out = subprocess.run(
            ["pgrep", "-x", "turnserver"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return set(out.split())


COMPOSE_LAB_TESTS = "tests/lab/engines/test_compose_lab.py"
# Tests that compare two readings of the host's own addresses and routes: a Compose run beside
# them adds and removes bridges with addresses on the host. They run after the Compose tests.
HOST_READING_TESTS = "tests/lab/engines/test_hostnet.py"
# Where the Compose run may start (tests/lab/background.py): only beside the netns lab's tests,
# which make everything inside their namespaces and read nothing of the host's.
LAB_TESTS = "tests/lab/"


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """The Compose lab's tests run at the end of tests/lab (last when nothing comes after),
    followed by the tests that read the host's addresses, and the lab image's build starts
    now, in the background, so that it overlaps everything before them (the build is mostly
    waiting on I/O). The Compose run itself is a background job too (tests/lab/background.py):
    it starts with the first test of tests/lab, once the image is there, and the Compose tests
    read it; nothing after them sees Docker's bridges come and go."""
    compose = [i for i in items if i.nodeid.startswith(COMPOSE_LAB_TESTS)]
    if not compose:
        return
    host = [i for i in items if i.nodeid.startswith(HOST_READING_TESTS)]
    rest = [i for i in items if i not in compose and i not in host]
    last_lab = max((k for k, i in enumerate(rest) if i.nodeid.startswith(LAB_TESTS)), default=len(rest) - 1)
    items[:] = rest[: last_lab + 1] + compose + host + rest[last_lab + 1 :]
    from tests.lab.engines.docker_lab import STACKS_TEST, start_image_build

    start_image_build(stacks=any(STACKS_TEST in i.nodeid for i in compose))


@pytest.hookimpl(tryfirst=True)  # before the test's fixtures: the Compose tests' own wait on it
def pytest_runtest_setup(item: pytest.Item) -> None:
    """The first test of tests/lab lets the Compose run start (tests/lab/background.py)."""
    import sys

    background = sys.modules.get("tests.lab.background")
    if background is not None and item.nodeid.startswith(LAB_TESTS):
        background.open_gate(LAB_TESTS)


def pytest_collection_finish(session: pytest.Session) -> None:
    """The long lab runs the collected tests read start now, in the background
    (tests/lab/background.py): they overlap each other and the tests before theirs."""
    import sys

    background = sys.modules.get("tests.lab.background")  # loaded with tests/lab's conftest
    if background is None or session.config.option.collectonly or not session.items:
        return
    from tests.lab.conftest import lab_root_reason

    if lab_root_reason() is None:
        background.start(session, session.config._tmp_path_factory.mktemp)  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The background lab runs' own times (their tests only wait for them: ``--durations``
    shows the wait, not the run)."""
    import sys

    background = sys.modules.get("tests.lab.background")
    lines = background.report() if background is not None else []
    if lines:
        terminalreporter.write_sep("=", "lab runs in the background (tests/lab/background.py)")
        for line in lines:
            terminalreporter.write_line(line)


def _docker_objects() -> set[str]:
    """Containers and networks of Compose labs (label org.natkit.lab), if a daemon answers."""
    if not os.path.exists("/var/run/docker.sock") and not os.environ.get("DOCKER_HOST"):
        return set()
    try:
        from natkit.lab.engines.docker import DockerAPI

        api = DockerAPI(timeout=10)
        api.ping(5)
        return {f"container {c['Id'][:12]}" for c in api.containers("org.natkit.lab")} | {
            f"network {n['Name']}" for n in api.networks("org.natkit.lab")
        }
    except Exception:
        return set()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config._natkit_before = (_namespaces(), _turnservers(), _docker_objects())  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import sys

    background = sys.modules.get("tests.lab.background")
    if background is not None:
        background.stop()  # what no test waited for (-x, Ctrl-C), before the leak check
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        return  # fixtures of an interrupted run may not be torn down yet
    before_ns, before_ts, before_docker = getattr(session.config, "_natkit_before", (set(), set(), set()))
    leaked_ns = {ns for ns in _namespaces() - before_ns if not _someone_elses(ns)}
    leaked_ts = _turnservers() - before_ts
    leaked_docker = _docker_objects() - before_docker
    if not (leaked_ns or leaked_ts or leaked_docker):
        return
    message = f"left behind: namespaces {sorted(leaked_ns)}, turnserver pids {sorted(leaked_ts)}"
    if leaked_docker:
        message += f", Compose lab objects {sorted(leaked_docker)}"
    print(f"\nnatkit: {message}")
    if os.environ.get("CI") == "true" and session.exitstatus == 0:
        session.exitstatus = 1


def _children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and _parent(int(d.name)) == pid:
            kids.append(int(d.name))
    return kids


def pytest_unconfigure(config: pytest.Config) -> None:
    """A session that ends early (``-x``, a failed collection) must not leave the lab image's
    background build running: its mmdebstrap is a child of this process, which the build
    thread's end does not stop."""
    import signal
    import time

    builds = [p for p in _children(os.getpid()) if _comm(p) == "mmdebstrap"]
    for pid in builds:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)  # mmdebstrap removes its scratch directory on TERM
    deadline = time.monotonic() + 15
    while builds and time.monotonic() < deadline:
        builds = [p for p in builds if _comm(p) == "mmdebstrap"]
        time.sleep(0.2)
    for pid in builds:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
