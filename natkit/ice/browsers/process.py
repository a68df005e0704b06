"""A headless browser as a process that leaves nothing behind.

Every browser natkit starts gets a scratch directory of its own (``natkit-<name>-*`` in the
system temporary directory) holding its profile, its ``HOME``, its ``TMPDIR`` (where Chromium
puts its ``org.chromium.Chromium.*`` directories and Firefox its temporary files) and its log.
The browser runs in a process group of its own, so its helper processes go with it, and gets
SIGKILL when the thread that started it dies (``PR_SET_PDEATHSIG``).

:meth:`BrowserProcess.close` kills the group and removes the scratch directory. If natkit
itself is killed (``kill -9``: no clean-up code runs), a small reaper process started next to
the browser sees its pipe from natkit close without the word ``done``, kills the group and
removes the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["BrowserProcess", "bound", "die_with_parent", "group_alive", "install_in_place", "own_filesystem",
           "private_mounts"]

LOG_NAME = "browser.log"
GROUP_EXIT_S = 3.0  # helpers die a moment after the leader

# Runs in its own session: it outlives a killed natkit for as long as the clean-up takes.
_REAPER = r"""
import os, shutil, signal, sys, time
pgid, root = int(sys.argv[1]), sys.argv[2]
said = sys.stdin.buffer.read()
if said != b"done":
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if root.encode() in f.read() and int(pid) != os.getpid():
                    os.kill(int(pid), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    def alive():  # a member of the group that is not a zombie
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] not in "ZX":
                return True
        return False
    end = time.monotonic() + 5
    while time.monotonic() < end and alive():
        time.sleep(0.05)
    shutil.rmtree(root, ignore_errors=True)
"""


def die_with_parent() -> None:
    """In a child before exec: SIGKILL when the thread that forked it dies, even by ``kill -9``."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@functools.cache
def private_mounts() -> bool:
    """Whether this process may give a child a mount namespace of its own (root with
    CAP_SYS_ADMIN and util-linux's ``unshare``; a container without it may not): without,
    :meth:`BrowserProcess.spawn` starts the browser without its ``binds``."""
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", "--mount", "--", "true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


OWN_FILESYSTEM_ENV = "NATKIT_CONTAINER"  # set by the lab image (configs/docker/Dockerfile)


def own_filesystem() -> bool:
    """Whether this process's filesystem is the lab's alone (a container of the lab image,
    whose Dockerfile sets ``NATKIT_CONTAINER=1``), as root: then a browser's ``binds`` may be
    written in place where no private mount namespace can be made (a container has no
    CAP_SYS_ADMIN), since nothing else sees them."""
    return os.environ.get(OWN_FILESYSTEM_ENV) == "1" and os.geteuid() == 0


def install_in_place(binds: Mapping[str, Path]) -> None:
    """Write each file of ``binds`` over its target (a directory: each file in it into the
    target directory, which keeps its other files). The in-place counterpart of
    :func:`bound`, for :func:`own_filesystem` only; in place, not renamed over, since a
    container's ``/etc/hosts`` is itself a bind mount."""
    for target, src in binds.items():
        if src.is_dir():
            Path(target).mkdir(parents=True, exist_ok=True)
            for item in sorted(src.iterdir()):
                if item.is_file():
                    shutil.copyfile(item, Path(target) / item.name)
        else:
            shutil.copyfile(src, target)


def bound(argv: Sequence[str], binds: Mapping[str, Path]) -> list[str]:
    """``argv`` run in a private mount namespace where each path of ``binds`` shows its file
    (a bind mount; ``unshare`` of util-linux, root only). The browser keeps the process id."""
    mounts = " && ".join(f"mount --bind {shlex.quote(str(src))} {shlex.quote(target)}" for target, src in binds.items())
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", f'{mounts} && exec "$@"', "sh", *argv]


def _processes_naming(root: Path) -> list[int]:
    """Processes whose command line holds ``root`` (a unique scratch path: only ours)."""
    needle = str(root).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as f:
            if needle in f.read():
                found.append(int(entry))
    return found


def group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` has a member that is not a zombie (orphaned helpers
    wait as zombies until the system's init reaps them, which can take seconds)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


class BrowserProcess:
    """A running browser: its process (the leader of its group) and its scratch directory.

    ``root`` is the scratch directory; ``profile`` and ``tmp`` are inside it.
    """

    def __init__(self, name: str, root: Path, proc: subprocess.Popen[bytes],
                 reaper: subprocess.Popen[bytes] | None, log: int) -> None:
        self.name = name
        self.root = root
        self.profile = root / "profile"
        self.tmp = root / "tmp"
        self.process = proc
        self._reaper = reaper
        self._log = log
        self.closed = False

    @classmethod
    def spawn(
        cls,
        name: str,
        argv_of: Callable[[Path], Sequence[str]],
        *,
        netns: str | None = None,
        child_fds: Mapping[int, int] | None = None,
        prepare: Callable[[Path], None] | None = None,
        env: Mapping[str, str] | None = None,
        binds: Mapping[str, str] | None = None,
    ) -> BrowserProcess:
        """Start ``argv_of(profile)`` in a fresh scratch directory (in namespace ``netns`` if
        given, through ``ip netns exec``). ``child_fds`` maps descriptor numbers in the
        browser to ours (``{3: r, 4: w}`` for a DevTools pipe); ``prepare(profile)`` writes
        the profile before the start. ``binds`` maps a path of this host to a file or
        directory of the scratch directory (relative to it, written by ``prepare``) that the
        browser sees there instead: it runs in a mount namespace of its own (``unshare``), so
        nothing changes for other processes and nothing is left to undo (where this process
        may not make one, :func:`private_mounts`, without them, or in a lab container,
        :func:`own_filesystem`, written in place). OSError if the browser cannot be started."""
        root = Path(tempfile.mkdtemp(prefix=f"natkit-{name}-"))
        try:
            for sub in ("profile", "tmp", "home"):
                (root / sub).mkdir()
            if prepare is not None:
                prepare(root / "profile")
            argv = list(argv_of(root / "profile"))
            if binds and private_mounts():
                argv = bound(argv, {target: root / source for target, source in binds.items()})
            elif binds and own_filesystem():
                install_in_place({target: root / source for target, source in binds.items()})
            if netns is not None:
                argv = ["ip", "netns", "exec", netns, *argv]
            fds = dict(child_fds or {})
            home = str(root / "home")
            child_env = {
                **os.environ, "HOME": home, "TMPDIR": str(root / "tmp"),
                "XDG_CONFIG_HOME": f"{home}/.config", "XDG_CACHE_HOME": f"{home}/.cache",
                "XDG_DATA_HOME": f"{home}/.local/share", "XDG_RUNTIME_DIR": str(root / "tmp"),
                **(env or {}),
            }
            child_env.pop("DISPLAY", None)
            child_env.pop("WAYLAND_DISPLAY", None)
            log = os.open(root / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise

        def child() -> None:  # in the child, before exec
            for target, ours in fds.items():
                os.dup2(ours, target)  # dup2 clears close-on-exec on the copy
            die_with_parent()

        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=root,
                close_fds=not fds,  # our own descriptors are close-on-exec anyway (PEP 446)
                preexec_fn=child, start_new_session=True, env=child_env,
            )
        except BaseException:
            os.close(log)
            shutil.rmtree(root, ignore_errors=True)
            raise
        reaper = None
        with contextlib.suppress(OSError):
            reaper = subprocess.Popen(
                [sys.executable, "-I", "-c", _REAPER, str(proc.pid), str(root)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, cwd="/",
            )
        return cls(name, root, proc, reaper, log)

    # -- what it says

    def log(self) -> str:
        try:
            return (self.root / LOG_NAME).read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 5) -> str:
        return "\n".join(self.log().strip().splitlines()[-lines:])

    def alive(self) -> bool:
        return not self.closed and self.process.poll() is None

    # -- the end

    def kill(self) -> None:
        """Kill the browser's group now, and the helpers that left it (Chromium's crash
        handlers start sessions of their own; their command lines name the scratch directory).
        Synchronous; :meth:`close` also waits and cleans up."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        reaper = self._reaper.pid if self._reaper is not None else None
        for pid in _processes_naming(self.root):
            if pid == reaper:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    async def close(self) -> None:
        """Kill the browser and its helpers, wait for them, remove the scratch directory."""
        if self.closed:
            return
        self.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(self.process.wait, 5)
        end = time.monotonic() + GROUP_EXIT_S
        while time.monotonic() < end and group_alive(self.process.pid):
            await asyncio.sleep(0.03)
        self._finish()

    def close_now(self) -> None:
        """:meth:`close` without an event loop (atexit, a synchronous caller)."""
        if self.closed:
            return
        self.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        self._finish()

    def _finish(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            os.close(self._log)
        shutil.rmtree(self.root, ignore_errors=True)
        if self._reaper is not None and self._reaper.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                self._reaper.stdin.write(b"done")
                self._reaper.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._reaper.wait(2)
