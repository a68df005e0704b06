"""Fixtures the lab's tests share: the suite's long `natkit lab run`s (the default one, read by
every test that only reads what it reports: its JSON, HTML page and text; the internet
topology's; the `--peer` commands'; the shards'; the Go peer's), each run once per session in
the background from the start of the session (tests/lab/background.py) and awaited by the
tests that read it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.lab import background

NATKIT = [sys.executable, "-m", "natkit"]
ROOT = Path(__file__).resolve().parents[2]
# What the whole default run may take on a loaded 2-core box (it takes about a minute quiet).
DEFAULT_RUN_TIMEOUT = 360
# A test that reads the shared run may wait for it: its own budget, the run's and the runs'
# queued before it in the background.
DEFAULT_RUN_TEST_TIMEOUT = DEFAULT_RUN_TIMEOUT + 60 + background.QUEUE_WAIT_S


@dataclass(frozen=True)
class LabRun:
    """One `natkit lab run` as a subprocess: its exit, its text, its reports, how long it took."""

    argv: list[str]
    proc: subprocess.CompletedProcess[str]
    data: dict[str, Any]
    json_path: Path
    html_path: Path | None
    took: float

    def explain(self) -> str:
        """The tail of its output, for an assertion's message."""
        return self.proc.stdout[-3000:] + self.proc.stderr[-2000:]


def lab_root_reason() -> str | None:
    """Why this machine cannot run a netns lab with a capture (None: it can)."""
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("dumpcap") is None:
        return "needs root on Linux (namespaces, nftables) and dumpcap"
    return None


def lab_run(args: list[str], out: Path, timeout: float, *, html: bool = False, name: str = "lab") -> LabRun:
    """``natkit lab run ARGS --json OUT/NAME.json`` (and ``--html``), timed, as a :class:`LabRun`."""
    json_path = out / f"{name}.json"
    html_path = out / f"{name}.html" if html else None
    argv = [*NATKIT, "lab", "run", *args, "--json", str(json_path), *(["--html", str(html_path)] if html_path else [])]
    t0 = time.monotonic()
    proc = background.run(argv, timeout, cwd=ROOT)
    took = time.monotonic() - t0
    data = json.loads(json_path.read_text()) if json_path.exists() else {}
    return LabRun(argv, proc, data, json_path, html_path, took)


def _session_run(request: pytest.FixtureRequest, name: str) -> Any:
    why = lab_root_reason()
    if why is not None:
        pytest.skip(why)
    factory = request.config._tmp_path_factory  # type: ignore[attr-defined]
    return background.result(name, factory.mktemp)


@background.job("default_run", estimate_s=65)
def _default_run(out: Path) -> LabRun:
    return lab_run([], out, DEFAULT_RUN_TIMEOUT, html=True)


@pytest.fixture(scope="session")
def default_run(request: pytest.FixtureRequest) -> LabRun:
    """`natkit lab run --json FILE --html FILE` with nothing else: the default topology, every
    built-in stack, the default selection of cases, the packet capture on."""
    run: LabRun = _session_run(request, "default_run")
    return run


INTERNET_RUN_TIMEOUT = 400


@background.job("internet_run", estimate_s=55)
def _internet_run(out: Path) -> LabRun:
    return lab_run([str(ROOT / "configs/lab/internet.toml"), "--stacks", "aiortc"], out, INTERNET_RUN_TIMEOUT)


@pytest.fixture(scope="session")
def internet_run(request: pytest.FixtureRequest) -> LabRun:
    """`natkit lab run configs/lab/internet.toml --stacks aiortc --json FILE`: the reference
    stack over the internet topology (IPv6, NAT64, the port-allocation NATs), every case."""
    run: LabRun = _session_run(request, "internet_run")
    return run


# -- the runs of tests/lab/test_stack_runs.py ------------------------------------------------------

REFERENCE_PEER = ROOT / "examples" / "lab-peer" / "peer.py"
GO_PEER = ROOT / "examples" / "lab-peer-go" / "main.go"
# The default selection over aiortc and pion cut down to what a merge must get right: cases
# of every stack pair (pion x pion too), connected and failed as expected (symmetric x
# symmetric over srflx), over the two paths that differ between stacks, probes of two NATs.
# (Not port-restricted: its 20 s mapping lifetime is measured in every run that has it, and a
# run this small would wait for that.)
SHARD_ARGS = ["--stacks", "aiortc,pion", "--only", "full-cone,symmetric", "--only", "srflx,relay", "--deadline", "6"]
STACK_RUN_TIMEOUT = 200  # s for each of the small runs (shards, --peer commands)
GO_PEER_RUN_TIMEOUT = 400


@background.job("shard_runs", estimate_s=30)
def _shard_runs(out: Path) -> dict[str, LabRun]:
    """The small aiortc x pion plan whole, then as shard 1/2 and shard 2/2."""
    runs = {"whole": lab_run(SHARD_ARGS, out, STACK_RUN_TIMEOUT, name="all")}
    for k in (1, 2):
        runs[f"s{k}"] = lab_run([*SHARD_ARGS, "--shard", f"{k}/2"], out, STACK_RUN_TIMEOUT, name=f"s{k}")
    return runs


@pytest.fixture(scope="session")
def shard_runs(request: pytest.FixtureRequest) -> dict[str, LabRun]:
    runs: dict[str, LabRun] = _session_run(request, "shard_runs")
    return runs


@background.job("peer_commands_run", estimate_s=47)
def _peer_commands_run(out: Path) -> LabRun:
    """The reference peer and three that misbehave (exits at once, hangs, prints garbage)."""
    py = sys.executable
    return lab_run([
        "--peer", f"ref={py} {REFERENCE_PEER}",
        "--peer", "dies=sh -c 'echo dying >&2; exit 3'",
        "--peer", "hangs=sleep 600",
        "--peer", "garbage=sh -c 'echo \"{not json\"; exit 1'",
        "--stacks", "aiortc,ref,dies,hangs,garbage",
        "--only", "full-cone,symmetric", "--only", "srflx",
        "--deadline", "5",
    ], out, STACK_RUN_TIMEOUT, name="peers")


@pytest.fixture(scope="session")
def peer_commands_run(request: pytest.FixtureRequest) -> LabRun:
    run: LabRun = _session_run(request, "peer_commands_run")
    return run


def build_go_peer(out: Path) -> Path:
    """Compile examples/lab-peer-go offline (GOPATH mode over Debian's Go sources)."""
    from natkit.lab.stacks.build import GOCODE, link_major_versions

    if shutil.which("go") is None or not (GOCODE / "github.com/pion/webrtc").is_dir():
        pytest.fail("the Go peer needs golang-go and golang-github-pion-webrtc.v3-dev (.ci/bootstrap installs them)")
    src = out / "src"
    link_major_versions(src, GOCODE)
    main = src / "labpeergo"
    main.mkdir(parents=True)
    shutil.copyfile(GO_PEER, main / "main.go")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(out), "GO111MODULE": "off",
           "GOPATH": f"{out}{os.pathsep}{GOCODE.parent}", "GOCACHE": str(out / "cache"), "GOFLAGS": "",
           "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    binary = out / "lab-peer-go"
    proc = background.run(["go", "build", "-o", str(binary), "."], 600, cwd=main, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return binary


@background.job("go_peer_run", estimate_s=170)
def _go_peer_run(out: Path) -> LabRun:
    """examples/lab-peer-go built, then as --peer with what it declares, --full over the
    paths it declares, only its own cases (aiortc's with itself say nothing of it)."""
    binary = build_go_peer(out / "build")
    return lab_run(["--peer", f"gopeer={binary}", "--peer-caps", "gopeer=relay-udp,relay-tcp,relay-tls,idle,keepalive=2,dtls=ecdsa",
                    "--stacks", "aiortc,gopeer", "--full", "--with", "gopeer", "--only", "srflx,relay,relay-tls,longevity",
                    "--deadline", "8"], out, GO_PEER_RUN_TIMEOUT, name="go")


@pytest.fixture(scope="session")
def go_peer_run(request: pytest.FixtureRequest) -> LabRun:
    run: LabRun = _session_run(request, "go_peer_run")
    return run
