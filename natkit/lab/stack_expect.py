"""Expectations that depend on the ICE stacks as well as the NATs (sans-IO).

:func:`natkit.lab.expect.expect` plays ICE over the NATs' models. The stacks change that in two
ways, both read from each adapter's :class:`~natkit.lab.stacks.capabilities.Capabilities`
(never from a table of outcomes):

* **inside ICE** (:func:`side_of` -> :class:`~natkit.lab.expect.Side`, played by the model):
  whether it dials ("active") or listens on ("passive") ICE-TCP host candidates (RFC 6544,
  the host path: a UDP-blocking firewall still lets TCP out to a listener without NAT),
  which TURN transports the stack can allocate over (a ``turns:`` URL with an IP address is
  dropped by a stack without ``turn_tls_ip_literal``), whether behind no NAT it signals a srflx
  candidate equal to its host address (RFC 8445 §5.1.3 lets it drop it), and whether it gives
  up at once when the other side signals no candidate at all;
* **after ICE** (:func:`after_ice`): DTLS. The offerer (the caller) is the DTLS server and the
  answerer the client (``a=setup:active``, what every stack here answers); the handshake fails
  when the client's suites do not take the server's certificate type (webrtcbin's RSA
  certificate against aiortc's ECDSA-only client: OpenSSL's "no shared cipher").

Before either: a stack that does not gather IPv6 (``ipv6`` False, as a ``--peer-caps``
declaration without ``ipv6`` says) cannot connect an IPv6 case, nor a NAT64 one as the
IPv6-only side. A stack with unknown capabilities (a user's ``--peer`` without
``--peer-caps``) gets the NATs' expectation, and the reason says so.
"""

from __future__ import annotations

from natkit.lab.expect import Expectation, Side, expect
from natkit.lab.nats import NatBehaviour
from natkit.lab.stacks.capabilities import Capabilities

__all__ = ["after_ice", "expect_stacks", "side_of"]

# The transports a path's TURN URLs use, by how the lab writes them (turn:...?transport=udp,
# ...tcp, turns:...). A path's own list comes from the topology.
TLS = "tls"


def side_of(name: str, caps: Capabilities, role: str, *, turn_is_ip: bool = True) -> Side:
    """The ICE model's view of stack ``name`` (capabilities ``caps``) taking ``role``."""
    if not caps.known:
        return Side(name)
    turn = caps.turn
    if turn is not None and turn_is_ip and caps.turn_tls_ip_literal is False:
        turn = tuple(t for t in turn if t != TLS)
    return Side(
        name,
        redundant_srflx=caps.redundant_srflx is not False,
        gives_up_without_candidates=role in (caps.gives_up_without_candidates or ()),
        turn=turn,
        keepalive_s=caps.keepalive_s,
        tcp=caps.tcp_candidates,
    )


def after_ice(names: tuple[str, str], caller: Capabilities, callee: Capabilities) -> str | None:
    """Why the caller's and callee's stacks cannot finish DTLS once ICE has connected, or None."""
    cert, suites = caller.dtls_certificate, callee.dtls_client_suites
    if cert is None or suites is None or cert in suites:
        return None
    return (
        f"DTLS cannot complete: {names[0]} (the offerer, so the DTLS server) has only an {cert.upper()} "
        f"certificate and {names[1]}'s DTLS client offers only {'/'.join(s.upper() for s in suites)} "
        "cipher suites (no shared cipher)"
    )


def expect_stacks(
    caller: NatBehaviour,
    callee: NatBehaviour,
    path: str,
    *,
    stacks: tuple[str, str],
    capabilities: tuple[Capabilities, Capabilities],
    same_lan: bool = False,
    turn_transports: tuple[str, ...] = ("udp", "tcp"),
    turn_is_ip: bool = True,
    family: str = "ipv4",
) -> Expectation:
    """The expectation of a case between stacks ``stacks`` (caller, callee) with
    ``capabilities``: the NATs' model played with what each stack does, then DTLS."""
    a, b = capabilities
    for name, caps, beh in zip(stacks, capabilities, (caller, callee), strict=True):
        if caps.ipv6 is False and (family == "ipv6" or (family == "nat64" and not beh.ipv4)):
            return Expectation(False, None, f"{name} does not gather IPv6 candidates (declared); needs IPv6 in the stack", "stacks")
    sides = (side_of(stacks[0], a, "caller", turn_is_ip=turn_is_ip), side_of(stacks[1], b, "callee", turn_is_ip=turn_is_ip))
    exp = expect(caller, callee, path, same_lan=same_lan, turn_transports=turn_transports, sides=sides, family=family)
    unknown = [n for n, c in zip(stacks, capabilities, strict=True) if not c.known]
    if exp.connected:
        why = after_ice(stacks, a, b)
        if why is not None:
            return Expectation(False, None, why, "stacks")
    if unknown:
        note = f"nothing is known of {' or '.join(dict.fromkeys(unknown))}'s ICE stack: this is what the NATs predict"
        return Expectation(exp.connected, exp.route, f"{exp.reason} ({note})", exp.decided_by)
    return exp
