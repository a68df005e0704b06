"""The Docker host as the Compose engine sees it: the API client against a fake daemon on a
unix socket, and each missing prerequisite as one line with exit status 2."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from natkit.errors import PrerequisiteError
from natkit.lab.engines import docker
from natkit.lab.engines.docker import DockerAPI, DockerError, check_daemon

ROOT = Path(__file__).resolve().parents[3]


class FakeDaemon:
    """Answers HTTP/1.1 requests on a unix socket from a table: path prefix -> (status, body)."""

    def __init__(self, path: Path, routes: dict[str, tuple[int, Any]]) -> None:
        self.path, self.routes, self.seen = path, routes, []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                head, _, rest = data.partition(b"\r\n\r\n")
                length = next((int(ln.split(b":", 1)[1]) for ln in head.split(b"\r\n")
                               if ln.lower().startswith(b"content-length:")), 0)
                while len(rest) < length:  # the whole body, before the answer closes the connection
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    rest += chunk
                line = data.split(b"\r\n", 1)[0].decode()
                method, target, _ = line.split(" ", 2)
                self.seen.append((method, target))
                status, body = self._answer(method, target.split("?")[0])
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(raw)}\r\nApi-Version: 1.41\r\nConnection: close\r\n\r\n"
                conn.sendall(head.encode() + raw)

    def _answer(self, method: str, path: str) -> tuple[int, Any]:
        """A key "METHOD /suffix" answers that method only; a list value answers in turn
        (its last answer from then on)."""
        for key, value in self.routes.items():
            want, _, suffix = key.rpartition(" ")
            if path.endswith(suffix) and want in ("", method):
                if isinstance(value, list):
                    return value.pop(0) if len(value) > 1 else value[0]
                return value
        return 404, {"message": "no such thing"}

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Any]:
    made: list[FakeDaemon] = []

    def make(routes: dict[str, tuple[int, Any]]) -> FakeDaemon:
        d = FakeDaemon(tmp_path / "docker.sock", routes)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


def test_ping_negotiates_and_calls_answer_json(daemon: Any) -> None:
    d = daemon({"/_ping": (200, b"OK"), "/info": (200, {"Driver": "overlay2"}),
                "/images/natkit-base%3Ax/json": (200, {"Id": "sha256:ab"})})
    api = DockerAPI(str(d.path))
    check_daemon(api)
    assert api.version == "1.41"
    assert api.image("natkit-base:x") == {"Id": "sha256:ab"}
    assert api.image("missing:tag") is None  # a 404 is "no such image"
    assert ("GET", "/v1.41/info") in d.seen


def test_a_copying_storage_driver_is_one_line(daemon: Any) -> None:
    d = daemon({"/_ping": (200, b"OK"), "/info": (200, {"Driver": "vfs"})})
    with pytest.raises(PrerequisiteError) as err:
        check_daemon(DockerAPI(str(d.path)))
    text = str(err.value)
    assert "vfs" in text and "--storage-driver=overlay2" in text and "\n" not in text


def test_no_daemon_is_one_line_saying_how_to_start_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docker, "_engine_installed", lambda: True)
    with pytest.raises(PrerequisiteError) as err:
        check_daemon(DockerAPI(str(tmp_path / "none.sock")))
    assert "not running" in str(err.value) and "dockerd --storage-driver=overlay2" in str(err.value)
    monkeypatch.setattr(docker, "_engine_installed", lambda: False)
    with pytest.raises(PrerequisiteError, match=r"apt-get install docker\.io"):
        check_daemon(DockerAPI(str(tmp_path / "none.sock")))
    # a socket nobody listens on
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(tmp_path / "dead.sock"))
    dead.close()
    with pytest.raises(PrerequisiteError, match="does not answer"):
        check_daemon(DockerAPI(str(tmp_path / "dead.sock")))


def test_docker_host_over_tcp_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    with pytest.raises(PrerequisiteError, match="unix socket"):
        docker.socket_path()


def test_streams_yield_each_object(daemon: Any) -> None:
    body = b'{"stream":"Step 1/4"}\r\n{"stream":"ok"}\r\n{"error":"boom"}\r\n'
    d = daemon({"/build": (200, body)})
    events = list(DockerAPI(str(d.path)).stream("POST", "/build", body=b""))
    assert events == [{"stream": "Step 1/4"}, {"stream": "ok"}, {"error": "boom"}]


def test_the_cli_says_it_in_one_line_and_exits_2(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock", "HOME": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "natkit", "lab", "run", "--engine", "compose"],
                         capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert "needs root" in lines[0] or "Docker" in lines[0], lines


def test_the_compose_tool_is_chosen_and_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "docker-compose"
    fake.write_text("#!/bin/sh\n[ \"$1\" = version ] && echo 1.29.2\n")
    fake.chmod(0o755)
    monkeypatch.setenv("NATKIT_COMPOSE", str(fake))
    tool = docker.compose_tool()
    assert tool.describe() == "docker-compose 1.29.2" and tool.argv == (str(fake),)
    monkeypatch.setenv("NATKIT_COMPOSE", str(tmp_path / "nothing"))
    with pytest.raises(PrerequisiteError, match="NATKIT_COMPOSE"):
        docker.compose_tool()


def test_a_network_with_stale_endpoints_is_disconnected_by_force_and_removed(daemon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Docker 20.10 can keep endpoints of containers already removed ("has active endpoints")."""
    monkeypatch.setattr(docker.time, "sleep", lambda s: None)
    stale = "error while removing network: network nk1_internet id abc has active endpoints"
    d = daemon({
        "/_ping": (200, b"OK"),
        "DELETE /networks/abc": [(403, {"message": stale}), (204, b"")],
        "GET /networks/abc": (200, {"Id": "abc", "Containers": {"ep-1": {"Name": "nk1_srv_1"}}}),
        "POST /networks/abc/disconnect": [(404, {"message": "no such container"}), (200, b"")],
    })
    assert DockerAPI(str(d.path)).remove_network("abc") is None
    calls = [(m, t.split("/", 2)[-1]) for m, t in d.seen if t != "/_ping"]
    assert calls == [("DELETE", "networks/abc"), ("GET", "networks/abc"), ("POST", "networks/abc/disconnect"),
                     ("POST", "networks/abc/disconnect"), ("DELETE", "networks/abc")]


def test_a_network_that_stays_says_why(daemon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docker.time, "sleep", lambda s: None)
    d = daemon({"/_ping": (200, b"OK"), "DELETE /networks/abc": (403, {"message": "has active endpoints"}),
                "GET /networks/abc": (200, {"Id": "abc", "Containers": {}})})
    assert DockerAPI(str(d.path)).remove_network("abc", tries=3) == "has active endpoints"
    assert [m for m, t in d.seen if t != "/_ping"].count("DELETE") == 3


def _releasing(monkeypatch: pytest.MonkeyPatch, held: dict[str, dict[str, Any]], fail: dict[str, DockerError] | None = None,
               pause: float = 0.02) -> tuple[DockerAPI, list[tuple[str, str]], dict[str, int]]:
    """A DockerAPI whose networks hold ``held`` and whose disconnects are timed: what was taken
    off, in order, and the most disconnects at once per network ("*": on all of them)."""
    api = DockerAPI("/nonexistent.sock")
    lock = threading.Lock()
    now: dict[str, int] = {}
    peak: dict[str, int] = {}
    done: list[tuple[str, str]] = []

    def call(method: str, url: str, **kw: Any) -> Any:
        assert method == "GET"
        return {"Id": url.rsplit("/", 1)[-1], "Containers": held[url.rsplit("/", 1)[-1]]}

    def disconnect(network: str, container: str) -> None:
        with lock:
            for key in (network, "*"):
                now[key] = now.get(key, 0) + 1
                peak[key] = max(peak.get(key, 0), now[key])
        time.sleep(pause)
        with lock:
            for key in (network, "*"):
                now[key] -= 1
            done.append((network, container))
        if fail and container in fail:
            raise fail[container]

    monkeypatch.setattr(api, "call", call)
    monkeypatch.setattr(api, "disconnect", disconnect)
    return api, done, peak


def test_endpoints_are_released_one_at_a_time_per_network_the_networks_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    """Docker 20.10 miscounts a network's endpoints when they change concurrently (moby/moby#42119)."""
    held = {"inet": {f"c{i}": {"Name": f"nk1_r{i}_1"} for i in range(6)}, "lan": {"c0": {}, "c1": {}}}
    api, done, peak = _releasing(monkeypatch, held)
    assert api.release_endpoints(["inet", "lan", "inet"]) == []
    assert sorted(done) == sorted((n, c) for n, cs in held.items() for c in cs)
    assert peak["inet"] == 1 and peak["lan"] == 1 and peak["*"] == 2


def test_an_endpoint_that_will_not_go_is_named_and_a_gone_one_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    held = {"inet": {"c0": {"Name": "nk1_srv_1"}, "c1": {"Name": "nk1_r_1"}, "c2": {}}}
    gone = DockerError(404, "no such container")
    fail = {"c0": DockerError(500, "driver failed"), "c1": gone, "nk1_r_1": gone}
    api, done, _ = _releasing(monkeypatch, held, fail)
    assert api.release_endpoints(["inet"]) == ["inet: nk1_srv_1: driver failed"]
    assert [c for _, c in done] == ["c0", "c1", "nk1_r_1", "c2"]  # a 404 by id: by name once more


def test_releasing_endpoints_is_bounded_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    held = {"inet": {f"c{i}": {} for i in range(50)}}
    api, done, _ = _releasing(monkeypatch, held, pause=0.05)
    t0 = time.monotonic()
    assert api.release_endpoints(["inet"], timeout=0.3) == ["inet: not done within 0.3 s"]
    assert time.monotonic() - t0 < 2.0 and 3 <= len(done) < 50
