"""natkit/ice/browsers/process.py: a browser's scratch directory (profile, HOME, TMPDIR) and
every process it started are gone after close, and after natkit itself is killed."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from natkit.ice.browsers.process import BrowserProcess, group_alive

pytestmark = pytest.mark.timeout(60)

needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None,
                                    reason="Chromium is not installed (apt-get install chromium)")

# A stand-in browser: writes into its TMPDIR and HOME, starts a helper in a session of its
# own (as Chromium's crash handler does) that names the scratch directory, then waits.
_FAKE = r"""
import os, subprocess, sys, time
open(os.path.join(os.environ["TMPDIR"], "org.chromium.Chromium.x"), "w").write("x")
open(os.path.join(os.environ["HOME"], "cache"), "w").write("x")
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", sys.argv[1]],
                 start_new_session=True)
print("up", flush=True)
time.sleep(60)
"""


def _fake(profile: Path) -> list[str]:
    return [sys.executable, "-c", _FAKE, str(profile)]


def _helpers_of(root: Path) -> list[int]:
    from natkit.ice.browsers.process import _processes_naming

    return _processes_naming(root)


def _wait_up(proc: BrowserProcess) -> None:
    end = time.monotonic() + 10
    while "up" not in proc.log() and time.monotonic() < end:
        time.sleep(0.02)
    assert "up" in proc.log(), proc.log()


async def test_close_removes_the_scratch_and_every_process() -> None:
    proc = BrowserProcess.spawn("fake", _fake)
    _wait_up(proc)
    assert proc.root.name.startswith("natkit-fake-") and proc.profile.parent == proc.root
    assert (proc.tmp / "org.chromium.Chromium.x").exists()  # its TMPDIR is in the scratch
    assert len(_helpers_of(proc.root)) >= 2  # the browser, its own-session helper (+ reaper)
    await proc.close()
    assert not proc.root.exists()
    assert not group_alive(proc.process.pid)
    assert _helpers_of(proc.root) == []


_OWNER = """
import sys, time
from natkit.ice.browsers.process import BrowserProcess
fake = sys.argv[1]
proc = BrowserProcess.spawn("fake", lambda p: [sys.executable, "-c", fake, str(p)])
while "up" not in proc.log():
    time.sleep(0.02)
print(proc.process.pid, proc.root, flush=True)
time.sleep(60)
"""


async def test_a_killed_owner_leaves_nothing_behind() -> None:
    """kill -9 of natkit: no clean-up code runs; the reaper does it."""
    owner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _OWNER, _FAKE, stdout=asyncio.subprocess.PIPE)
    assert owner.stdout is not None
    pid_text, root_text = (await asyncio.wait_for(owner.stdout.readline(), 20)).decode().split()
    pid, root = int(pid_text), Path(root_text)
    assert root.is_dir() and group_alive(pid)
    owner.kill()
    await owner.wait()
    end = time.monotonic() + 10
    while (root.exists() or group_alive(pid) or _helpers_of(root)) and time.monotonic() < end:
        await asyncio.sleep(0.05)
    leftovers = _helpers_of(root)
    for p in leftovers:
        os.kill(p, 9)
    shutil.rmtree(root, ignore_errors=True)
    assert not leftovers and not group_alive(pid)
    assert not root.exists(), "the scratch directory outlived a killed owner"


async def test_a_browser_that_cannot_start_leaves_no_scratch() -> None:
    before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("natkit-nosuch-*"))
    with pytest.raises(OSError):
        BrowserProcess.spawn("nosuch", lambda p: ["/nonexistent/browser"])
    assert set(Path(os.environ.get("TMPDIR", "/tmp")).glob("natkit-nosuch-*")) == before


_HOLD_CHROMIUM = """
import asyncio
from natkit.ice.browsers.chromium import ChromiumBrowser
async def main():
    b = await ChromiumBrowser.launch()
    print(b.process.process.pid, b.process.root, flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


@needs_chromium
async def test_chromium_and_its_tmpdir_go_with_a_killed_natkit() -> None:
    owner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLD_CHROMIUM, stdout=asyncio.subprocess.PIPE)
    assert owner.stdout is not None
    pid_text, root_text = (await asyncio.wait_for(owner.stdout.readline(), 30)).decode().split()
    pid, root = int(pid_text), Path(root_text)
    end = time.monotonic() + 10
    while not any((root / "tmp").glob("org.chromium.Chromium.*")) and time.monotonic() < end:
        await asyncio.sleep(0.05)
    # Chromium's own temporary directories are inside the scratch, not in /tmp.
    assert any((root / "tmp").glob("org.chromium.Chromium.*")), list((root / "tmp").iterdir())
    owner.kill()
    await owner.wait()
    end = time.monotonic() + 10
    while (root.exists() or group_alive(pid)) and time.monotonic() < end:
        await asyncio.sleep(0.05)
    alive = group_alive(pid)
    if alive:
        os.killpg(pid, 9)
    shutil.rmtree(root, ignore_errors=True)
    assert not alive, "Chromium outlived the natkit process that started it"
    assert not root.exists()
    assert _helpers_of(root) == []


def test_bound_runs_the_browser_in_a_mount_namespace_of_its_own(tmp_path: Path) -> None:
    """The bind mounts reach only the process (its own mount namespace) and keep its argv."""
    import subprocess

    from natkit.ice.browsers.process import bound, private_mounts

    (tmp_path / "hosts").write_text("192.0.2.9 turn.lab.natkit\n")
    argv = bound(["cat", "/etc/hosts"], {"/etc/hosts": tmp_path / "hosts"})
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"] and argv[-2:] == ["cat", "/etc/hosts"]
    if not private_mounts():
        pytest.skip("needs root and unshare (util-linux)")
    before = Path("/etc/hosts").read_text()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout
    assert out == "192.0.2.9 turn.lab.natkit\n"
    assert Path("/etc/hosts").read_text() == before


def test_in_a_lab_container_the_private_files_are_written_in_place(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    """Where no mount namespace can be made (a container without CAP_SYS_ADMIN), the lab image's
    own filesystem takes the files in place: a file over its target (its content, the same
    inode: a container's /etc/hosts is a bind mount), a directory's files into the target
    directory beside what it held."""
    import os

    from natkit.ice.browsers import process

    src, dst = tmp_path / "scratch", tmp_path / "root"
    (src / "distribution").mkdir(parents=True)
    (src / "hosts").write_text("192.0.2.9 turn.lab.natkit\n")
    (src / "distribution" / "policies.json").write_text("{}")
    (dst / "distribution").mkdir(parents=True)
    (dst / "distribution" / "searchplugins").mkdir()
    (dst / "hosts").write_text("127.0.0.1 localhost\n")
    inode = (dst / "hosts").stat().st_ino
    process.install_in_place({str(dst / "hosts"): src / "hosts", str(dst / "distribution"): src / "distribution"})
    assert (dst / "hosts").read_text() == "192.0.2.9 turn.lab.natkit\n" and (dst / "hosts").stat().st_ino == inode
    assert sorted(p.name for p in (dst / "distribution").iterdir()) == ["policies.json", "searchplugins"]
    # only the lab image says its filesystem is its own (and only root writes there)
    monkeypatch.delenv(process.OWN_FILESYSTEM_ENV, raising=False)
    assert process.own_filesystem() is False
    monkeypatch.setenv(process.OWN_FILESYSTEM_ENV, "1")
    assert process.own_filesystem() is (os.geteuid() == 0)
