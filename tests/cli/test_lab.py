"""`natkit lab` verbs: output files never replace an input, --json everywhere it reports, help
with examples, and lab up / shell / down (also after a killed `lab up`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from natkit.lab.topology import DEFAULT_TOPOLOGY
from tests.lab.topologies import small_topology

pytestmark = pytest.mark.timeout(120)

NATKIT = [sys.executable, "-m", "natkit"]
needs_root = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0 or shutil.which("nft") is None,
    reason="needs root on Linux (namespaces, nftables)",
)
SMALL = small_topology("open", "symmetric", deadline=6)


def _natkit(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NATKIT, *args], capture_output=True, text=True, timeout=100, **kw)  # type: ignore[call-overload, no-any-return]


def _refused(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.toml"
    path.write_text(DEFAULT_TOPOLOGY.read_text())
    return path


# -- P1: no option writes over an input or a file that is not natkit's own --------------------


def test_json_file_swallowing_the_topology_never_overwrites_it(victim: Path) -> None:
    before = victim.read_bytes()
    proc = _natkit("lab", "run", "--stacks", "aiortc", "--json", str(victim), "--only", "symmetric:symmetric")
    _refused(proc, "--json", str(victim), "refusing to overwrite")
    assert victim.read_bytes() == before


@pytest.mark.parametrize("flag", ["--html", "--pcap"])
def test_html_and_pcap_never_overwrite_the_topology_or_a_foreign_file(victim: Path, flag: str) -> None:
    before = victim.read_bytes()
    _refused(_natkit("lab", "run", str(victim), flag, str(victim)), flag, "input")
    foreign = victim.with_name("notes.txt")
    foreign.write_text("mine\n")
    _refused(_natkit("lab", "run", str(victim), flag, str(foreign)), flag, "refusing to overwrite")
    assert victim.read_bytes() == before and foreign.read_text() == "mine\n"


def test_two_outputs_into_one_file_and_pcap_without_capture(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _refused(_natkit("lab", "run", "--json", str(out), "--html", str(out)), "--html", "--json writes that file too")
    _refused(_natkit("lab", "run", "--pcap", str(tmp_path / "x.pcapng"), "--no-capture"), "--no-capture")


def test_natkit_may_replace_its_own_reports(tmp_path: Path) -> None:
    from natkit.cli._common import check_output
    from natkit.lab.html import render_html

    html = tmp_path / "lab.html"
    html.write_text(render_html({"cases": [], "probes": []}))
    assert check_output("--html", str(html), kind="html") == html
    pcap = tmp_path / "lab.pcapng"
    pcap.write_bytes(b"\x0a\x0d\x0d\x0a" + bytes(60))
    assert check_output("--pcap", str(pcap), kind="pcap") == pcap


def test_compose_output_never_replaces_the_topology(victim: Path, tmp_path: Path) -> None:
    before = victim.read_bytes()
    _refused(_natkit("lab", "compose", str(victim), "-o", str(victim)), "--output", "input")
    other = tmp_path / "other.toml"
    other.write_text("x = 1\n")
    _refused(_natkit("lab", "compose", str(victim), "-o", str(other)), "--output", "refusing")
    assert victim.read_bytes() == before
    out = tmp_path / "compose.yaml"
    assert _natkit("lab", "compose", str(victim), "-o", str(out)).returncode == 0
    again = _natkit("lab", "compose", str(victim), "-o", str(out), "--json")  # its own file: replaced
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["schema_version"] == 1 and doc["output"] == str(out) and "compose" not in doc
    # the Compose engine's own subnet (Docker's bridges live on the host), not the netns one
    assert "runner" in doc["services"] and doc["networks"]["internet"] == "198.19.113.0/24"


def test_compose_json_alone_carries_the_yaml() -> None:
    proc = _natkit("lab", "compose", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["output"] is None and doc["compose"].startswith("# natkit NAT lab under Docker Compose")


# -- help: a description and an example for every lab command ---------------------------------


@pytest.mark.parametrize("cmd", [[], ["run"], ["compose"], ["up"], ["down"], ["shell"], ["clean"]])
def test_every_lab_help_has_a_description_and_an_example(cmd: list[str]) -> None:
    proc = _natkit("lab", *cmd, "--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    _usage, _, rest = text.partition("\n\n")
    assert rest.strip() and not rest.lstrip().startswith(("positional", "options")), text
    assert "examples:\n  natkit lab" in text, text


# -- --json with schema_version -----------------------------------------------------------------


@needs_root
def test_clean_and_down_report_as_json() -> None:
    proc = _natkit("lab", "clean", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema_version"] == 1 and isinstance(doc["removed"], list)
    from natkit.lab.up import read_up_state

    if read_up_state(alive=False) is None:
        _refused(_natkit("lab", "down", "--json"), "no lab is up")


@needs_root
def test_run_json_to_stdout_and_html_with_provenance(tmp_path: Path) -> None:
    topo = tmp_path / "small.toml"
    topo.write_text(SMALL)
    page = tmp_path / "lab.html"
    proc = _natkit("lab", "run", str(topo), "--stacks", "aiortc", "--only", "open:open", "--no-capture", "--json", "--html", str(page))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)  # stdout is only the JSON; the matrix went to stderr
    assert doc["schema_version"] == 1 and doc["pass"] and doc["engine"] == "netns"
    assert {"started_at", "natkit_version", "host"} <= set(doc)
    assert [c["caller_stack"] for c in doc["cases"]] == ["aiortc"] * 3
    assert "matrix (rows" in proc.stderr and "PASS: 3 cases: 3 connected" in proc.stderr
    html = page.read_text()
    assert doc["host"] in html and doc["started_at"] in html and "0 of 1 NAT pairs need TURN." in html
    # the same command again replaces natkit's own HTML
    again = _natkit("lab", "run", str(topo), "--stacks", "aiortc", "--only", "open:open,host", "--no-capture", "--html", str(page))
    assert again.returncode == 0, again.stderr


# -- lab up / shell / down ----------------------------------------------------------------------


def _namespaces(tag: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(tag + "-")]


def _start_up(topo: Path, nodes: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*NATKIT, "lab", "up", str(topo), "--json", str(nodes)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    end = time.monotonic() + 60
    while time.monotonic() < end and not nodes.exists():
        if proc.poll() is not None:
            pytest.fail(f"lab up exited: {proc.communicate()}")
        time.sleep(0.1)
    assert nodes.exists(), "lab up did not come up"
    return proc


@needs_root
def test_up_shell_down_and_down_after_a_killed_up(tmp_path: Path) -> None:
    from natkit.lab.up import read_up_state

    if read_up_state() is not None:
        pytest.skip("another 'natkit lab up' is running on this host")
    topo = tmp_path / "small.toml"
    topo.write_text(SMALL)
    nodes = tmp_path / "nodes.json"
    proc = _start_up(topo, nodes)
    try:
        doc = json.loads(nodes.read_text())
        assert doc["schema_version"] == 1 and doc["pid"] == proc.pid
        names = {n["node"] for n in doc["nodes"]}
        assert {"inet", "srv", "symmetric-1", "symmetric-1-p1", "open-1-p1"} <= names
        # natkit inside a node without the venv on PATH (the interpreter's bin dir is put first)
        env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
        shell = subprocess.run(
            [*NATKIT, "lab", "shell", "symmetric-1-p1", "natkit", "--version"],
            capture_output=True, text=True, timeout=30, env=env,
        )
        assert shell.returncode == 0 and shell.stdout.startswith("natkit"), shell.stdout + shell.stderr
        ip = subprocess.run([*NATKIT, "lab", "shell", "symmetric-1-p1", "--", "ip", "-4", "-o", "addr"],
                            capture_output=True, text=True, timeout=30)
        assert "10.64.2.10/24" in ip.stdout, ip.stdout + ip.stderr
        down = _natkit("lab", "down", "--json")
        assert down.returncode == 0, down.stderr
        rep = json.loads(down.stdout)
        assert rep["how"] == "stopped" and rep["tag"] == doc["tag"] and rep["schema_version"] == 1
        proc.wait(20)
        assert not _namespaces(doc["tag"])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    # A killed `lab up` leaves its namespaces; `lab down` finds and removes them.
    nodes.unlink()
    proc = _start_up(topo, nodes)
    doc = json.loads(nodes.read_text())
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    left = _namespaces(doc["tag"])
    assert len(left) == len(doc["nodes"]), left
    gone = _natkit("lab", "shell", "srv", "true")
    _refused(gone, "killed 'natkit lab up'", "natkit lab down")
    down = _natkit("lab", "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert f"lab {doc['tag']} was left by a killed 'natkit lab up'" in down.stdout
    assert not _namespaces(doc["tag"]) and read_up_state(alive=False) is None
    _refused(_natkit("lab", "down"), "no lab is up")
