"""The C fast paths, built by setuptools as CPython extension modules at install time.

Everything else about the project is in pyproject.toml. Each module uses only the limited API
(Py_LIMITED_API 3.11), so a wheel is tagged cp311-abi3-<platform> and serves every CPython
from 3.11 on. They are Linux code (recvmmsg/sendmmsg, epoll, UDP GSO): elsewhere, or with
NATKIT_NO_CEXT=1 set while building, none is built and natkit runs its pure-Python paths.
A failed build is an error, not a silent pure-Python install: it needs gcc, the libc
headers, libcrypto's headers and Python.h (Debian: gcc libc6-dev libssl-dev python3.11-dev;
.ci/bootstrap installs them).
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup

LIMITED_API = ("Py_LIMITED_API", "0x030B0000")
# The UDP GSO probe, one header shared by the modules that send with GSO (in the sdist too).
GSO_PROBE = "natkit/server/_gso_probe.h"
GSO_PROBE_USERS = {"natkit.server._turnfast", "natkit.bench._turnload", "natkit.bench._stunload"}


def _extension(
    name: str, *sources: str, libraries: tuple[str, ...] = (), depends: tuple[str, ...] = ()
) -> Extension:
    return Extension(
        name,
        sources=list(sources),
        libraries=list(libraries),
        # headers: rebuilt when they change, shipped in the sdist
        depends=[*depends, *([GSO_PROBE] if name in GSO_PROBE_USERS else [])],
        define_macros=[LIMITED_API],
        py_limited_api=True,
        extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Werror=implicit-function-declaration"],
    )


def _wanted() -> bool:
    if os.environ.get("NATKIT_NO_CEXT", "") not in ("", "0"):
        return False
    return sys.platform.startswith("linux")


EXTENSIONS = [
    # The STUN responder's Binding fast path (natkit/server/_fastpath.py loads it).
    _extension("natkit.server._stunfast", "natkit/server/_stunfast.c"),
    # The TURN relay's ChannelData/Send data path (natkit/server/_turn_fast.py loads it) and
    # its control fast path (_turnctl.c: the 401 challenge; HMAC-SHA256 from libcrypto).
    _extension(
        "natkit.server._turnfast",
        "natkit/server/_turnfast.c",
        "natkit/server/_turnctl.c",
        libraries=("crypto",),
        depends=("natkit/server/_turnctl.h",),
    ),
    # The benchmarks' load generators: the TURN driver, the STUN flood and the bare reflector
    # (run through natkit/bench/loadgen.py, each in its own pinned process).
    _extension("natkit.bench._turnload", "natkit/bench/_turnload.c"),
    _extension("natkit.bench._stunload", "natkit/bench/_stunload.c"),
]

setup(
    ext_modules=EXTENSIONS if _wanted() else [],
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
