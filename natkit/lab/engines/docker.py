"""The Docker host, as the Compose engine needs it: the daemon's API, the Compose tool.

The daemon is reached over its API socket (``DOCKER_HOST=unix://...`` or
``/var/run/docker.sock``) with a small HTTP/1.1 client of our own, so nothing depends on which
``docker`` client is first on PATH or on its version (the API version is negotiated with
``/_ping``). Compose itself runs as a program: the ``docker compose`` v2 plugin when a ``docker``
client has it, else Debian's ``docker-compose`` (1.29); :func:`compose_tool` says which, and
``NATKIT_COMPOSE`` (``docker compose`` | ``docker-compose``, or a path) chooses.

:func:`check_daemon` turns every missing prerequisite into one
:class:`~natkit.errors.PrerequisiteError` line: no engine installed, a daemon that is not
running (with the command that starts one), a storage driver that copies whole images per
container (vfs).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from natkit.errors import PrerequisiteError

__all__ = [
    "DOCKERD_HINT",
    "ComposeTool",
    "DockerAPI",
    "DockerError",
    "check_daemon",
    "compose_tool",
    "socket_path",
]

DEFAULT_SOCKET = "/var/run/docker.sock"
MIN_API = "1.40"  # Docker 19.03: everything below exists there
# What to do when no daemon answers (the machine has no init system that starts one).
DOCKERD_HINT = (
    "start one, e.g. 'dockerd --storage-driver=overlay2 >/var/log/dockerd.log 2>&1 &' as root "
    "(or 'service docker start' where an init system runs it)"
)
# Storage drivers that copy the whole image into every container: 30+ lab containers x ~400 MB.
COPYING_DRIVERS = ("vfs",)


class DockerError(Exception):
    """The daemon answered an API call with an error (status and its message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def socket_path() -> str:
    """The daemon's API socket: ``DOCKER_HOST`` (unix:// only) or the default."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host:
        return DEFAULT_SOCKET
    if host.startswith("unix://"):
        return host[len("unix://"):]
    raise PrerequisiteError(
        f"DOCKER_HOST={host}: the Compose lab talks to a local daemon over its unix socket; "
        "unset DOCKER_HOST or give unix:///path/to/docker.sock"
    )


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class DockerAPI:
    """The few Engine API calls the lab makes; every call is bounded by ``timeout``."""

    def __init__(self, path: str | None = None, timeout: float = 60.0) -> None:
        self.path = path or socket_path()
        self.timeout = timeout
        self.version = MIN_API

    # -- transport ---------------------------------------------------------------------------

    def _request(
        self, method: str, url: str, *, body: bytes | BinaryIO | None = None,
        headers: dict[str, str] | None = None, timeout: float | None = None, query: dict[str, Any] | None = None,
    ) -> tuple[_UnixConnection, http.client.HTTPResponse]:
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        conn = _UnixConnection(self.path, timeout if timeout is not None else self.timeout)
        try:
            conn.request(method, f"/v{self.version}{url}" if url != "/_ping" else url, body=body, headers=headers or {})
            return conn, conn.getresponse()
        except BaseException:
            conn.close()
            raise

    def call(self, method: str, url: str, **kw: Any) -> Any:
        """One call; its JSON answer (None when empty). :class:`DockerError` on an error status."""
        conn, resp = self._request(method, url, **kw)
        try:
            data = resp.read()
        finally:
            conn.close()
        if resp.status >= 400:
            raise DockerError(resp.status, _message(data))
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return data.decode(errors="replace")

    def stream(self, method: str, url: str, **kw: Any) -> Iterator[dict[str, Any]]:
        """A call whose answer is a stream of JSON objects (build, import): each object."""
        conn, resp = self._request(method, url, **kw)
        try:
            if resp.status >= 400:
                raise DockerError(resp.status, _message(resp.read()))
            while line := resp.readline(1 << 20):
                if line.strip():
                    with contextlib.suppress(ValueError):
                        yield json.loads(line)
        finally:
            conn.close()

    # -- calls -------------------------------------------------------------------------------

    def ping(self, timeout: float = 5.0) -> None:
        """Raise OSError when no daemon answers; negotiate the API version."""
        conn, resp = self._request("GET", "/_ping", timeout=timeout)
        try:
            resp.read()
            api = resp.getheader("API-Version")
        finally:
            conn.close()
        if resp.status != 200:
            raise OSError(f"the daemon answered {resp.status} to /_ping")
        if api and _ver(api) >= _ver(MIN_API):
            self.version = api if _ver(api) < _ver("1.43") else "1.43"

    def info(self) -> dict[str, Any]:
        return dict(self.call("GET", "/info"))

    def image(self, ref: str) -> dict[str, Any] | None:
        """The image's inspect data, or None when there is no such image."""
        try:
            return dict(self.call("GET", f"/images/{urllib.parse.quote(ref, safe='')}/json"))
        except DockerError as exc:
            if exc.status == 404:
                return None
            raise

    def containers(self, label: str) -> list[dict[str, Any]]:
        """Every container (running or not) with ``label`` (``key`` or ``key=value``)."""
        return list(self.call("GET", "/containers/json", query={"all": 1, "filters": json.dumps({"label": [label]})}))

    def networks(self, label: str | None = None) -> list[dict[str, Any]]:
        query = {"filters": json.dumps({"label": [label]})} if label else None
        return list(self.call("GET", "/networks", query=query))

    def container(self, ident: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/containers/{ident}/json"))

    def remove_container(self, ident: str) -> None:
        with contextlib.suppress(DockerError):
            self.call("DELETE", f"/containers/{ident}", query={"force": 1, "v": 1})

    def remove_network(self, ident: str, tries: int = 5) -> str | None:
        """Remove a network; None, or why it could not be (after ``tries`` a second apart: the
        daemon may still be releasing an endpoint of a container just removed). Endpoints it
        still lists once their containers are gone ("has active endpoints") are taken off by
        force between the tries; a count with no endpoint behind it
        (:meth:`release_endpoints`) only a daemon restart mends."""
        for attempt in range(tries):
            try:
                self.call("DELETE", f"/networks/{ident}")
                return None
            except DockerError as exc:
                if exc.status == 404:
                    return None
                if attempt == tries - 1:
                    return exc.message
                if "active endpoints" in exc.message:
                    self.release_endpoints([ident], timeout=10.0)
                time.sleep(1.0)
        return None

    def disconnect(self, network: str, container: str) -> None:
        """Take ``container`` off ``network`` by force; its endpoint is gone when this returns."""
        self.call("POST", f"/networks/{network}/disconnect",
                  body=json.dumps({"Container": container, "Force": True}).encode(),
                  headers={"Content-Type": "application/json"})

    def release_endpoints(self, networks: Sequence[str], timeout: float = 120.0) -> list[str]:
        """Take every container off ``networks``: one endpoint at a time on each network, the
        networks side by side. What could not be taken off (network: container: why).

        Docker 20.10 keeps a count of each network's endpoints that concurrent endpoint changes
        can leave one too high, and the network then 'has active endpoints' with none left until
        the daemon restarts (moby/moby#42119; seen here after Compose's down, which stops and
        removes containers in parallel). Taken off one at a time first, the containers leave
        down nothing on the networks to race on."""
        end = time.monotonic() + timeout
        problems: list[str] = []

        def one(network: str) -> None:
            try:
                held = list((self.call("GET", f"/networks/{network}").get("Containers") or {}).items())
            except (OSError, DockerError) as exc:
                problems.append(f"{network}: {exc}")
                return
            for key, ep in held:
                if time.monotonic() > end:
                    problems.append(f"{network}: not done within {timeout:g} s")
                    return
                name = str((ep or {}).get("Name") or key)
                # by container id; an endpoint whose container is gone is listed as "ep-<id>",
                # and the daemon finds it by its name only
                for who in dict.fromkeys([key, name]):
                    try:
                        self.disconnect(network, who)
                        break
                    except DockerError as exc:
                        if exc.status != 404:
                            problems.append(f"{network}: {name}: {exc.message}")
                            break
                    except OSError as exc:
                        problems.append(f"{network}: {name}: {exc}")
                        break

        threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in dict.fromkeys(networks)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, end - time.monotonic()) + 1.0)
        return problems

    def wait(self, ident: str, timeout: float) -> int:
        """Block until the container exits (at most ``timeout`` s); its exit status."""
        res = self.call("POST", f"/containers/{ident}/wait", timeout=timeout)
        return int(res.get("StatusCode", -1)) if isinstance(res, dict) else -1

    def logs(self, ident: str, *, follow: bool = False, tail: str = "all", timeout: float | None = None) -> Iterator[tuple[int, bytes]]:
        """(stream, bytes) chunks of a container's output (1 stdout, 2 stderr; no TTY)."""
        conn, resp = self._request(
            "GET", f"/containers/{ident}/logs", timeout=timeout,
            query={"stdout": 1, "stderr": 1, "follow": int(follow), "tail": tail},
        )
        try:
            if resp.status >= 400:
                raise DockerError(resp.status, _message(resp.read()))
            while True:
                head = resp.read(8)
                if len(head) < 8:
                    return
                kind, size = head[0], struct.unpack(">I", head[4:8])[0]
                yield kind, resp.read(size)
        finally:
            conn.close()


def _ver(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split("."))
    except ValueError:
        return (0,)


def _message(data: bytes) -> str:
    try:
        return str(json.loads(data).get("message", data.decode(errors="replace")))
    except (ValueError, AttributeError):
        return data.decode(errors="replace").strip()[:300]


def _engine_installed() -> bool:
    return any(shutil.which(x) for x in ("dockerd", "docker")) or os.path.exists("/usr/sbin/dockerd")


def check_daemon(api: DockerAPI | None = None) -> DockerAPI:
    """A :class:`DockerAPI` to a running daemon that can hold the lab, or PrerequisiteError
    with one line saying what to install or do."""
    api = api or DockerAPI()
    try:
        api.ping()
    except FileNotFoundError:
        if not _engine_installed():
            raise PrerequisiteError(
                "the Compose engine needs Docker: apt-get install docker.io docker-compose "
                "(or use the netns engine: natkit lab run)"
            ) from None
        raise PrerequisiteError(f"the Docker daemon is not running (no {api.path}): {DOCKERD_HINT}") from None
    except PermissionError:
        raise PrerequisiteError(f"cannot use the Docker daemon at {api.path}: permission denied; run as root") from None
    except OSError as exc:
        raise PrerequisiteError(
            f"the Docker daemon does not answer at {api.path} ({exc.strerror or exc}): {DOCKERD_HINT}"
        ) from None
    driver = str(api.info().get("Driver", ""))
    if driver in COPYING_DRIVERS:
        raise PrerequisiteError(
            f"the Docker daemon uses the {driver} storage driver, which copies the whole image into "
            "each of the lab's 30+ containers; restart it with 'dockerd --storage-driver=overlay2'"
        )
    return api


# -- the Compose tool -------------------------------------------------------------------------


@dataclass(frozen=True)
class ComposeTool:
    """How to run Compose: ``argv`` before the subcommand; ``name`` and ``version`` to report."""

    argv: tuple[str, ...]
    name: str  # "docker compose" | "docker-compose"
    version: str

    def describe(self) -> str:
        return f"{self.name} {self.version}"

    def run(self, project: str, file: str, *args: str, timeout: float = 300, capture: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "COMPOSE_PROJECT_NAME": project}
        env.pop("DOCKER_BUILDKIT", None)
        env["DOCKER_HOST"] = "unix://" + socket_path()
        return subprocess.run(
            [*self.argv, "-p", project, "-f", file, *args], capture_output=capture, text=True,
            timeout=timeout, env=env, stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C is natkit's to handle: it takes the lab down
        )


def _version_of(argv: Sequence[str]) -> str | None:
    try:
        res = subprocess.run([*argv, "version", "--short"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = res.stdout.strip().splitlines()
    return out[0].lstrip("v") if res.returncode == 0 and out else None


def _docker_clients() -> list[str]:
    found = [shutil.which("docker"), "/usr/bin/docker", "/usr/local/bin/docker"]
    return list(dict.fromkeys(p for p in found if p and os.access(p, os.X_OK)))


def compose_tool() -> ComposeTool:
    """The Compose program to run (see the module docstring), or PrerequisiteError."""
    want = os.environ.get("NATKIT_COMPOSE", "").strip()
    candidates: list[tuple[tuple[str, ...], str]] = []
    if want:
        if want == "docker compose" or want.endswith("/docker compose"):
            candidates = [((c, "compose"), "docker compose") for c in _docker_clients()]
        else:
            path = shutil.which(want) or want
            candidates = [((path,), "docker-compose")]
    else:
        candidates = [((c, "compose"), "docker compose") for c in _docker_clients()]
        if (dc := shutil.which("docker-compose")) is not None:
            candidates.append(((dc,), "docker-compose"))
    for argv, name in candidates:
        started = time.monotonic()
        version = _version_of(argv)
        if version is not None and time.monotonic() - started < 30:
            return ComposeTool(argv, name, version)
    if want:
        raise PrerequisiteError(f"NATKIT_COMPOSE={want}: that Compose tool does not run here; unset it or install it")
    raise PrerequisiteError(
        "the Compose engine needs Docker Compose: apt-get install docker-compose (or the docker compose v2 plugin)"
    )
