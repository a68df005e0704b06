"""natkit: STUN/TURN and NAT-traversal toolkit.

Every command line verb is a library call first. The names are async first; each has a
``_sync`` twin for callers without an event loop (a script, a REPL)::

    import asyncio
    import natkit

    async def main() -> None:
        async with natkit.StunServer(listen=[("127.0.0.1", 0)], alternate_ip="127.0.0.2") as s:
            result = await natkit.probe([f"stun:127.0.0.1:{s.addresses_of('udp')[0][1]}"])
            print(result.to_json()["nat_type"])

    asyncio.run(main())
    report = natkit.check_sync({"iceServers": []})

Servers
    :class:`StunServer` (RFC 8489 responder, RFC 5780 with ``alternate_ip``) and
    :class:`TurnServer` (RFC 8656 relay), both ``async with``.
Probe (``natkit probe``)
    :func:`probe` / :func:`probe_sync` → :class:`ProbeResult`: public address, mapping and
    filtering behaviour, hairpinning, what it means for ICE.
Check an iceServers configuration (``natkit check``)
    :func:`check` / :func:`check_sync` → :class:`CheckReport`, per URL and resolved address.
Gather candidates per server (``natkit gather``)
    :func:`gather` / :func:`gather_sync` → :class:`GatherResult`.
Candidates (``natkit candidates``)
    :func:`parse_candidates` (lines, SDP or browser JSON) → :class:`CandidateSet`;
    :class:`Candidate`.
Errors (:mod:`natkit.errors`)
    :class:`NatkitError` and its kinds: :class:`UsageError`, :class:`ConfigError` (names the
    parameter), :class:`PrerequisiteError`, :class:`ProtocolError`.
The NAT lab
    :mod:`natkit.lab`, imported on first use (``natkit.lab.run(...)``).
The sans-IO core
    :mod:`natkit.stun` (codec) and :mod:`natkit.turn` (relay logic).
"""

from __future__ import annotations

import importlib
from typing import Any

from natkit.errors import ConfigError, NatkitError, PrerequisiteError, ProtocolError, UsageError
from natkit.ice.candidates import Candidate, CandidateSet
from natkit.ice.check import CheckReport, check, check_sync
from natkit.ice.gather import GatherResult, gather, gather_sync
from natkit.ice.pasted import parse_candidates
from natkit.nat.probe import ProbeResult, probe, probe_sync
from natkit.server.stun import StunServer
from natkit.server.turn import TurnServer

__version__ = "0.1.0"

__all__ = [
    "Candidate",
    "CandidateSet",
    "CheckReport",
    "ConfigError",
    "GatherResult",
    "NatkitError",
    "PrerequisiteError",
    "ProbeResult",
    "ProtocolError",
    "StunServer",
    "TurnServer",
    "UsageError",
    "__version__",
    "check",
    "check_sync",
    "gather",
    "gather_sync",
    "parse_candidates",
    "probe",
    "probe_sync",
]

# Subpackages reached as attributes without an import of their own (``natkit.lab.run``); the
# lab pulls in aiortc and friends, so it loads on first use only.
_LAZY_MODULES = ("lab", "bench", "cli", "stun", "turn", "client", "server", "nat", "ice")


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return importlib.import_module(f"natkit.{name}")
    raise AttributeError(f"module 'natkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_MODULES})
