"""The Binding responder's general path: any request, decoded with natkit.stun.

Pure computation (bytes and addresses in, a reply out), shared by the UDP threads and the
TCP/TLS streams. The UDP fast path (_fastpath.py) answers plain Binding requests itself and
must produce exactly the bytes built here.

Amplification guard: a UDP peer has proved nothing about its source address, so a UDP reply is
never larger than ``max(request size, the plain Binding response)`` (the plain response is a
fixed set of address attributes: 56 bytes for IPv4 in RFC 5780 mode, plus SOFTWARE if set and
FINGERPRINT if asked): PADDING only fills what the request's own size leaves (and is left out
when none is left), error reasons are short. TCP/TLS peers completed a handshake and get the
PADDING they asked for (capped).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from natkit.stun import (
    CHANGE_IP,
    CHANGE_PORT,
    Attr,
    Class,
    ErrorCode,
    Message,
    Method,
    StunParseError,
    decode,
)

Address = tuple[str, int]

# Attributes we never act on even though the codec knows them: RFC 3489's reflection to a third
# address is an attack vector, so it is "not understood" (420), as RFC 5780 servers do.
_NEVER = frozenset({Attr.RESPONSE_ADDRESS})
_RFC5780 = frozenset({Attr.CHANGE_REQUEST, Attr.RESPONSE_PORT, Attr.PADDING})
_PADDING_CAP_STREAM = 1500


@dataclass(frozen=True, slots=True)
class Reply:
    """What to send: ``data`` to ``dst`` from the socket that differs from the receiving one
    by ``change_ip`` / ``change_port`` (RFC 5780 CHANGE-REQUEST)."""

    data: bytes
    dst: Address
    change_ip: bool = False
    change_port: bool = False


# (change_ip, change_port) -> the address of that socket, in RFC 5780 mode.
SocketLookup = Callable[[bool, bool], Address]


class Verdict:
    """Why a datagram got no reply (for the counters)."""

    GARBAGE = "garbage"
    IGNORED = "ignored"


class BindingResponder:
    """Builds replies to STUN requests: Binding success, 420, 400."""

    def __init__(self, *, rfc5780: bool = False, software: str | None = None) -> None:
        self.rfc5780 = rfc5780
        self.software = software

    def fast_extra(self, other: Address | None) -> bytes:
        """The attributes the fast path appends after RESPONSE-ORIGIN (same order as here)."""
        msg = Message(Method.BINDING, Class.SUCCESS, b"\0" * 12)
        if self.rfc5780 and other is not None:
            msg.add(Attr.OTHER_ADDRESS, other)
        if self.software:
            msg.add(Attr.SOFTWARE, self.software)
        return msg.encode()[20:]

    def respond(
        self,
        data: bytes,
        src: Address,
        local: Address,
        *,
        stream: bool = False,
        other: Address | None = None,
        lookup: SocketLookup | None = None,
    ) -> Reply | str:
        """The reply to ``data`` received from ``src`` on ``local``, or a Verdict string.

        ``other`` is this socket's OTHER-ADDRESS and ``lookup`` finds the sockets CHANGE-REQUEST
        names (both RFC 5780 mode, UDP only)."""
        try:
            req = decode(data, allow_legacy=True)
        except StunParseError:
            return Verdict.GARBAGE
        if req.cls != Class.REQUEST:
            return Verdict.IGNORED
        fingerprint = Attr.FINGERPRINT in req
        if req.method != Method.BINDING:
            return self._error(req, src, 400, None, fingerprint)  # short: no amplification
        unknown = self._not_understood(req, stream)
        if unknown:
            err = req.error(420)
            err.add(Attr.UNKNOWN_ATTRIBUTES, tuple(unknown))
            return Reply(err.encode(fingerprint=fingerprint), src)

        change_ip = change_port = False
        dst = src
        origin = local
        if self.rfc5780 and not stream:
            flags = req.get(Attr.CHANGE_REQUEST, 0)
            change_ip, change_port = bool(flags & CHANGE_IP), bool(flags & CHANGE_PORT)
            if (change_ip or change_port) and lookup is not None:
                origin = lookup(change_ip, change_port)
            elif change_ip or change_port:  # no alternate sockets known: cannot do it
                return self._error(req, src, 420, None, fingerprint, (Attr.CHANGE_REQUEST,))
            port = req.get(Attr.RESPONSE_PORT)
            if port is not None:
                dst = (src[0], port)
        elif self.rfc5780 and (req.get(Attr.CHANGE_REQUEST, 0) or Attr.RESPONSE_PORT in req):
            return self._error(
                req, src, 400, "CHANGE-REQUEST and RESPONSE-PORT need UDP", fingerprint
            )

        resp = req.response()
        if req.legacy:
            # RFC 3489 clients read MAPPED-ADDRESS, SOURCE-ADDRESS and CHANGED-ADDRESS.
            resp.add(Attr.MAPPED_ADDRESS, src)
            resp.add(Attr.SOURCE_ADDRESS, origin)
            if self.rfc5780 and other is not None:
                resp.add(Attr.CHANGED_ADDRESS, other)
        else:
            resp.add(Attr.XOR_MAPPED_ADDRESS, src)
            resp.add(Attr.RESPONSE_ORIGIN, origin)
            if self.rfc5780 and other is not None:
                resp.add(Attr.OTHER_ADDRESS, other)
        if self.software:
            resp.add(Attr.SOFTWARE, self.software)
        if self.rfc5780 and Attr.PADDING in req:
            asked = len(req.get(Attr.PADDING))
            if stream:
                size = min(asked, _PADDING_CAP_STREAM)
            else:
                base = len(resp.encode(fingerprint=fingerprint)) + 4
                room = len(data) - base
                size = min(asked, room) & ~3 if room >= 0 else -1
            if size >= 0:  # over UDP: left out when even an empty one would exceed the request
                resp.add(Attr.PADDING, b"\0" * size)
        return Reply(resp.encode(fingerprint=fingerprint), dst, change_ip, change_port)

    def _not_understood(self, req: Message, stream: bool) -> list[int]:
        unknown = req.unknown_required()
        for t, _ in req.attributes:
            if t in _NEVER or (t in _RFC5780 and not self.rfc5780):
                unknown.append(t)
        return list(dict.fromkeys(unknown))

    @staticmethod
    def _error(
        req: Message,
        src: Address,
        code: int,
        reason: str | None,
        fingerprint: bool,
        unknown: tuple[int, ...] = (),
    ) -> Reply:
        err = req.error(code, reason)
        if unknown:
            err.add(Attr.UNKNOWN_ATTRIBUTES, unknown)
        return Reply(err.encode(fingerprint=fingerprint), src)


__all__ = ["Address", "BindingResponder", "ErrorCode", "Reply", "Verdict"]
