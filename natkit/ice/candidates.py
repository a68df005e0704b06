"""ICE candidate lines: parse, validate, classify and write back (RFC 8839 §5.1, RFC 6544).

A :class:`Candidate` keeps every name/value pair after ``typ`` in the order it was written,
unknown extensions included, so ``Candidate.parse(line).to_line()`` gives the line back.
:func:`natkit.ice.pasted.parse_candidates` reads whatever a user pastes (bare lines, an SDP,
browser JSON) into a :class:`CandidateSet`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from natkit.ice.classify import (
    address_scope,
    decode_priority,
    ip_version,
    relay_protocol_from_priority,
)

CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay")
TCP_TYPES = ("active", "passive", "so")
_ICE_CHARS = re.compile(r"^[A-Za-z0-9+/]{1,32}$")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`{|}~A-Za-z0-9]+$")
# Names with a meaning in the core grammar: kept out of ``extensions``.
_CORE_PAIRS = ("raddr", "rport", "tcptype")


class CandidateSyntaxError(ValueError):
    """A candidate line that does not follow the grammar."""


@dataclass
class Candidate:
    foundation: str
    component: int
    transport: str
    priority: int
    address: str
    port: int
    type: str
    related_address: str | None = None
    related_port: int | None = None
    tcptype: str | None = None
    # Every pair after ``typ X`` in written order (raddr/rport/tcptype included), for round-trip.
    pairs: list[tuple[str, str]] = field(default_factory=list)
    # Where it came from (SDP m-line, JSON fields); not part of the line.
    mid: str | None = None
    mline_index: int | None = None
    ufrag: str | None = None
    source_line: int | None = None
    # Set by the gatherer when it knows which TURN transport produced a relay candidate.
    relay_protocol: str | None = None
    url: str | None = None

    # -- parsing / writing -------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> Candidate:
        """Parse one candidate, with or without ``a=`` and ``candidate:``."""
        body = strip_prefix(text)
        tokens = body.split()
        if len(tokens) < 8:
            raise CandidateSyntaxError(
                f"expected at least 8 fields (foundation component transport priority address "
                f"port typ TYPE), got {len(tokens)}"
            )
        foundation, comp, transport, prio, address, port, typ_kw, ctype = tokens[:8]
        if typ_kw != "typ":
            raise CandidateSyntaxError(f"expected 'typ' as the 7th field, got '{typ_kw}'")
        component = _int_field("component", comp, 3)
        priority = _int_field("priority", prio, 10)
        port_n = _int_field("port", port, 5)
        rest = tokens[8:]
        if len(rest) % 2:
            raise CandidateSyntaxError(f"extension '{rest[-1]}' has no value")
        pairs = [(rest[i], rest[i + 1]) for i in range(0, len(rest), 2)]
        cand = cls(foundation, component, transport, priority, address, port_n, ctype, pairs=pairs)
        for name, value in pairs:
            if name == "raddr":
                cand.related_address = value
            elif name == "rport":
                cand.related_port = _int_field("rport", value, 5)
            elif name == "tcptype":
                cand.tcptype = value
        return cand

    def to_line(self, prefix: str = "candidate:") -> str:
        """The candidate as written in SDP (``prefix='a=candidate:'``) or in
        ``RTCIceCandidate.candidate`` (the default)."""
        parts = [
            f"{prefix}{self.foundation}",
            str(self.component),
            self.transport,
            str(self.priority),
            self.address,
            str(self.port),
            "typ",
            self.type,
        ]
        current = {
            "raddr": self.related_address,
            "rport": None if self.related_port is None else str(self.related_port),
            "tcptype": self.tcptype,
        }
        written: set[str] = set()
        for name, value in self.pairs:
            if name in current:
                if current[name] is None:
                    continue
                value = current[name]  # type: ignore[assignment]
                written.add(name)
            parts += [name, value]
        # Core pairs set after parsing go where RFC 8839 puts them: right after typ.
        missing: list[str] = []
        for name in _CORE_PAIRS:
            if current[name] is not None and name not in written:
                missing += [name, current[name]]  # type: ignore[list-item]
        if missing:
            parts[8:8] = missing
        return " ".join(parts)

    # -- derived views ---------------------------------------------------------------------

    @property
    def extensions(self) -> dict[str, str]:
        """The extension pairs (generation, ufrag, network-id, network-cost, unknown ones)."""
        return {k: v for k, v in self.pairs if k not in _CORE_PAIRS}

    @property
    def scope(self) -> str:
        return address_scope(self.address)

    @property
    def ip_version(self) -> int | None:
        return ip_version(self.address)

    @property
    def relay_transport(self) -> str | None:
        """TURN client-to-server transport of a relay candidate: as the gatherer or the JSON
        (``relayProtocol``) said, from a ``relay-protocol`` extension, else guessed from the
        priority's type preference (libwebrtc: 2 UDP, 1 TCP, 0 TLS)."""
        if self.type != "relay":
            return None
        return self.relay_transport_source[0]

    @property
    def relay_transport_source(self) -> tuple[str | None, str | None]:
        """(relay transport, where it came from: "given", "extension" or "priority")."""
        if self.type != "relay":
            return None, None
        if self.relay_protocol:
            return self.relay_protocol, "given"
        ext = self.extensions.get("relay-protocol", "").lower()
        if ext in ("udp", "tcp", "tls", "dtls"):
            return ext, "extension"
        guess = relay_protocol_from_priority(self.priority)
        return guess, ("priority" if guess else None)

    def validate(self) -> tuple[list[str], list[str]]:
        """(errors, warnings): errors break RFC 8839/8445/6544 rules, warnings are odd."""
        errors: list[str] = []
        warnings: list[str] = []
        if not _ICE_CHARS.match(self.foundation):
            errors.append(
                f"foundation '{self.foundation}' must be 1-32 characters of A-Z a-z 0-9 + /"
            )
        if not 1 <= self.component <= 256:
            errors.append(f"component {self.component} out of range 1-256")
        transport = self.transport.lower()
        if not _TOKEN.match(self.transport):
            errors.append(f"transport '{self.transport}' is not a token")
        elif transport not in ("udp", "tcp"):
            warnings.append(f"transport '{self.transport}' is neither UDP nor TCP")
        if not 1 <= self.priority <= 2**31 - 1:
            errors.append(f"priority {self.priority} out of range 1-2147483647")
        elif decode_priority(self.priority).component != self.component:
            warnings.append(
                f"priority encodes component {decode_priority(self.priority).component}, "
                f"but the candidate is component {self.component}"
            )
        if not 0 <= self.port <= 65535:
            errors.append(f"port {self.port} out of range 0-65535")
        scope = self.scope
        if scope == "hostname" and not _is_fqdn(self.address):
            looks_v4 = re.fullmatch(r"[0-9]+(\.[0-9]+){3}", self.address) is not None
            errors.append(f"address '{self.address}' is neither an IP address nor a hostname"
                          + (" (an IPv4 address has four numbers 0-255)" if looks_v4 else ""))
        if self.type not in CANDIDATE_TYPES:
            errors.append(f"type '{self.type}' is not one of {', '.join(CANDIDATE_TYPES)}")
        if self.type in ("srflx", "prflx", "relay"):
            if self.related_address is None:
                errors.append(f"raddr missing: required on a {self.type} candidate")
            if self.related_port is None:
                errors.append(f"rport missing: required on a {self.type} candidate")
        if (self.related_address is None) != (self.related_port is None):
            errors.append("raddr and rport must appear together")
        if self.related_address is not None and address_scope(self.related_address) == (
            "hostname"
        ) and not _is_fqdn(self.related_address):
            errors.append(f"raddr '{self.related_address}' is not an address")
        if self.related_port is not None and not 0 <= self.related_port <= 65535:
            errors.append(f"rport {self.related_port} out of range 0-65535")
        if transport == "tcp":
            if self.tcptype is None:
                errors.append("tcptype missing: required on a TCP candidate (RFC 6544)")
            elif self.tcptype not in TCP_TYPES:
                errors.append(f"tcptype '{self.tcptype}' is not one of active, passive, so")
            elif self.tcptype == "active" and self.port not in (0, 9):
                warnings.append(f"tcptype active with port {self.port}: RFC 6544 uses port 9")
        elif self.tcptype is not None:
            errors.append(f"tcptype on a {self.transport} candidate (only TCP has one)")
        elif transport == "udp" and self.port == 0:
            errors.append("port 0 on a UDP candidate")
        names = [k for k, _ in self.pairs]
        for name in set(names):
            if names.count(name) > 1:
                warnings.append(f"'{name}' appears {names.count(name)} times")
        ext = self.extensions
        if "generation" in ext and not ext["generation"].isdigit():
            warnings.append(f"generation '{ext['generation']}' is not a number")
        if "network-cost" in ext and not ext["network-cost"].isdigit():
            warnings.append(f"network-cost '{ext['network-cost']}' is not a number")
        if scope == "multicast":
            errors.append(f"multicast address {self.address} cannot be a candidate")
        return errors, warnings

    def as_dict(self) -> dict[str, Any]:
        errors, warnings = self.validate()
        return {
            "foundation": self.foundation,
            "component": self.component,
            "transport": self.transport.lower(),
            "priority": self.priority,
            "address": self.address,
            "port": self.port,
            "type": self.type,
            "related_address": self.related_address,
            "related_port": self.related_port,
            "tcptype": self.tcptype,
            "scope": self.scope,
            "ip_version": self.ip_version,
            "priority_parts": decode_priority(self.priority).as_dict(),
            "relay_protocol": self.relay_transport,
            "relay_protocol_source": self.relay_transport_source[1],
            "extensions": self.extensions,
            "mid": self.mid,
            "mline_index": self.mline_index,
            "ufrag": self.ufrag if self.ufrag is not None else self.extensions.get("ufrag"),
            "url": self.url,
            "line": self.to_line(),
            "valid": not errors,
            "errors": errors,
            "warnings": warnings,
        }


def strip_prefix(text: str) -> str:
    body = text.strip()
    if body[:2].lower() == "a=":
        body = body[2:]
    if body[:10].lower() == "candidate:":
        body = body[10:]
    return body


def _int_field(name: str, text: str, max_digits: int) -> int:
    if not text.isdigit() or not text.isascii():
        raise CandidateSyntaxError(f"{name} '{text}' is not a number")
    if len(text) > max_digits:
        raise CandidateSyntaxError(f"{name} '{text}' has more than {max_digits} digits")
    return int(text)


def _is_fqdn(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    # RFC 1123 §2.1 / RFC 3696 §2: a top-level label is never all digits, so 999.168.1.23
    # is a broken IPv4 address, not a host name.
    if labels and labels[-1].isdigit():
        return False
    return bool(name) and all(
        re.match(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$", label) for label in labels
    )


# -- whole inputs --------------------------------------------------------------------------


@dataclass
class Malformed:
    """An input line that looked like a candidate but did not parse."""

    text: str
    error: str
    source_line: int | None = None
    mid: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.text, "error": self.error, "source_line": self.source_line,
                "mid": self.mid}


@dataclass
class Section:
    """One SDP media section (or the whole input, for bare lines / JSON)."""

    index: int | None
    media: str | None = None
    mid: str | None = None
    ufrag: str | None = None
    pwd: str | None = None
    end_of_candidates: bool = False
    candidates: list[Candidate] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mline_index": self.index,
            "media": self.media,
            "mid": self.mid,
            "ice_ufrag": self.ufrag,
            "ice_pwd_present": self.pwd is not None,
            "end_of_candidates": self.end_of_candidates,
            "candidates": len(self.candidates),
        }


@dataclass
class CandidateSet:
    format: str  # "lines" | "sdp" | "json"
    candidates: list[Candidate] = field(default_factory=list)
    malformed: list[Malformed] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    end_of_candidates: bool = False

    def add_line(self, section: Section, line: str, number: int | None) -> Candidate | None:
        """Parse one candidate line into ``section`` (or record it as malformed)."""
        try:
            cand = Candidate.parse(line)
        except CandidateSyntaxError as exc:
            self.malformed.append(Malformed(line, str(exc), number, section.mid))
            return None
        cand.source_line = number
        cand.mid = section.mid
        cand.mline_index = section.index
        cand.ufrag = section.ufrag
        section.candidates.append(cand)
        self.candidates.append(cand)
        return cand


