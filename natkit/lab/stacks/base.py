"""What every ICE stack adapter of the lab implements: the :class:`Peer` protocol.

A case puts one peer (the caller, controlling) behind one NAT and another (the callee) behind
another; each is an adapter of this package, run by the agent inside the peer's namespace:

    result = await peer.start(role, config)     # role: "caller" | "callee"

``config`` (:class:`PeerConfig`) is everything the peer gets: the signaling server and room,
the ``iceServers`` list (W3C ``RTCIceServer`` shape), the path under test (which decides the ICE
transport policy and which candidate types are signaled) and the deadline. The peer joins the
room, does offer/answer, proves the path with a data-channel echo and returns a
:class:`PeerResult`; it never raises for a failed case.

The signaling messages every stack speaks (relayed by :mod:`natkit.lab.signaling`, inside
``{"type": "relay", "data": ...}``): ``{"type": "offer", "sdp"}`` from the caller,
``{"type": "answer", "sdp"}`` from the callee (candidates inside the SDP, filtered to the path's
type), ``{"type": "done"}`` from the caller after its echo, and ``{"type": "bye"}`` from the
callee once it has ``done``, after which the caller may close.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from natkit.errors import ConfigError

__all__ = ["ROLES", "Peer", "PeerConfig", "PeerResult", "candidate_types"]

ROLES = ("caller", "callee")


@dataclass
class PeerConfig:
    """One side of one case, as the agent hands it to a stack."""

    room: str
    path: str  # "host" | "srflx" | "relay" | "relay-tls" | "longevity"
    signaling: tuple[str, int]
    ice_servers: list[dict[str, Any]] = field(default_factory=list)
    deadline_s: float = 10.0
    # The case's address family: only candidates of it are signaled ("ipv4", "ipv6"; "nat64":
    # each side its own, the IPv6-only one reaching IPv4 servers by name).
    family: str = "ipv4"
    # A DNS server ([ip, port]) for the ICE servers' names (the NAT64 LAN's DNS64 resolver).
    resolver: tuple[str, int] | None = None
    # The lab CA's certificate (PEM) that turns: servers' certificates are checked against.
    ca_pem: str | None = None
    # longevity: after the echo, idle this long (only ICE keepalives), then echo again.
    idle_s: float = 0.0
    # The lab zone's names (name -> IPv4 address) for a stack that resolves them itself (a
    # browser, whose ``turns:`` URL names the TURN server: it drops IP literals there).
    hosts: dict[str, str] = field(default_factory=dict)

    @property
    def candidate_type(self) -> str:
        """The candidate type the path signals."""
        return {"relay-tls": "relay", "longevity": "srflx"}.get(self.path, self.path)

    def to_json(self) -> dict[str, Any]:
        out = {**asdict(self), "signaling": list(self.signaling)}
        if self.resolver is not None:
            out["resolver"] = list(self.resolver)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PeerConfig:
        host, port = data["signaling"]
        res = data.get("resolver")
        return cls(str(data["room"]), str(data["path"]), (str(host), int(port)), list(data.get("ice_servers", [])),
                   float(data.get("deadline_s", 10.0)), str(data.get("family", "ipv4")),
                   (str(res[0]), int(res[1])) if res else None, data.get("ca_pem"), float(data.get("idle_s", 0.0)),
                   {str(k): str(v) for k, v in dict(data.get("hosts") or {}).items()})


@dataclass
class PeerResult:
    """What a peer reports.

    ``selected`` is the candidate pair the stack selected (``{"local": {type, address, port,
    ...}, "remote": {...}}``), as the stack itself reports it. ``relays`` lists the TURN
    allocations the stack made (``{"transport", "relayed": [ip, port], "mapped": [ip, port]}``),
    or is None for a stack that cannot say (the packet evidence then finds them in the capture).
    ``report`` is the stack's own whole report (Chromium's getStats summary), if any.
    """

    role: str
    path: str
    stack: str = "aiortc"
    outcome: str = "failed"  # "connected" | "failed"
    error: str | None = None
    t_connect_ms: float | None = None
    rtt_ms: float | None = None
    selected: dict[str, Any] | None = None
    signaled: list[str] = field(default_factory=list)
    relays: list[dict[str, Any]] | None = field(default_factory=list)
    report: dict[str, Any] | None = None

    @property
    def connected(self) -> bool:
        return self.outcome == "connected"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], *, role: str = "", path: str = "", stack: str = "") -> PeerResult:
        """A result read back from an agent (tolerant: an agent's error is ``{"error": ...}``)."""
        known = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        known.setdefault("role", role)
        known.setdefault("path", path)
        known.setdefault("stack", stack)
        return cls(**known)


@runtime_checkable
class Peer(Protocol):
    """An ICE stack behind the lab's signaling: one instance per stack, many cases at once.

    ``name`` is what ``Case.stacks`` holds; ``roles`` the roles it can take; ``heavy`` stacks
    (a browser) run after the others, at most ``parallel`` connecting cases at a time;
    ``start_s`` is how long it may take to start, added to the other side's deadline.
    """

    name: str  # (a class attribute of the built-in stacks, an instance's of a --peer command)
    roles: ClassVar[tuple[str, ...]]
    heavy: ClassVar[bool]
    parallel: ClassVar[int]
    start_s: float

    def check(self) -> None:
        """Raise PrerequisiteError naming what to install if the stack cannot run here."""

    def max_duration_s(self, config: PeerConfig) -> float:
        """The longest :meth:`start` may take with ``config``, cleanup included."""

    async def start(self, role: str, config: PeerConfig) -> PeerResult:
        """Run one side of a case; never raises for a failed case."""


def candidate_types(path: str) -> list[str]:
    """The candidate types a peer signals on ``path``: ``relay-tls`` and kin are relays;
    ``longevity`` connects over srflx and then idles (NATKIT_IDLE_S)."""
    if path == "longevity":
        return ["srflx"]
    base = path.split("-", 1)[0]
    if base not in ("host", "srflx", "relay"):
        raise ConfigError(f"unknown path {path!r}; expected host, srflx, relay[-...] or longevity", param="path")
    return [base]
