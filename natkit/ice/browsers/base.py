"""The shape of a gathering run by a real browser: per URL, the candidates it produced and the
``icecandidateerror`` events it fired, next to natkit's own verdict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class BrowserUrlResult:
    url: str
    path: str
    candidates: list[dict[str, Any]] = field(default_factory=list)  # type, address, port, ...
    errors: list[dict[str, Any]] = field(default_factory=list)  # errorCode, errorText, ...
    exception: str | None = None  # the RTCPeerConnection constructor threw (name: message)
    complete: bool = False  # gathering reached "complete" within the time allowed

    @property
    def produced(self) -> list[str]:
        """Candidate types this URL gave (srflx for STUN, relay for TURN)."""
        return sorted({c.get("type", "?") for c in self.candidates if c.get("type") != "host"})

    @property
    def expected(self) -> str:
        """The candidate type the URL exists for: relay (turn:, turns:) or srflx."""
        return "relay" if self.url.lower().startswith("turn") else "srflx"

    @property
    def verdict(self) -> str:
        """What the URL did in this browser: produced (its candidate type), error (an
        icecandidateerror and no such candidate), nothing (silently), rejected (threw)."""
        if self.exception:
            return "rejected"
        if self.expected in self.produced:
            return "produced"
        return "error" if self.errors else "nothing"

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "path": self.path, "verdict": self.verdict,
                "expected": self.expected,
                "produced": self.produced, "candidates": self.candidates,
                "errors": self.errors, "exception": self.exception, "complete": self.complete}


@dataclass
class BrowserGathering:
    browser: str
    version: str | None = None
    urls: list[BrowserUrlResult] = field(default_factory=list)
    config_exception: str | None = None  # the whole configuration threw
    error: str | None = None  # the browser could not be run (not installed, crashed)
    duration_s: float = 0.0

    def for_path(self, path: str) -> BrowserUrlResult | None:
        return next((u for u in self.urls if u.path == path), None)

    def as_dict(self) -> dict[str, Any]:
        return {"browser": self.browser, "version": self.version,
                "config_exception": self.config_exception, "error": self.error,
                "duration_s": round(self.duration_s, 3),
                "urls": [u.as_dict() for u in self.urls]}


@dataclass(frozen=True)
class BrowserServer:
    """One URL to gather from, with the credentials of its RTCIceServer."""

    url: str
    path: str
    username: str | None
    credential: str | None

    def ice_server(self) -> dict[str, Any]:
        out: dict[str, Any] = {"urls": [self.url]}
        if self.username is not None:
            out["username"] = self.username
        if self.credential is not None:
            out["credential"] = self.credential
        return out


class IceBrowser(Protocol):
    """A browser that gathers candidates from iceServers (one RTCPeerConnection per URL)."""

    name: str

    async def gather(self, servers: Sequence[BrowserServer], ice_servers: list[dict[str, Any]],
                     *, timeout: float) -> BrowserGathering:
        """Gather from each of ``servers`` on its own and try the whole ``ice_servers`` list
        in one constructor; every browser process and file is gone when this returns."""
        ...
