"""natkit probe against a NAT discovery tool natkit did not write: coturn's
``turnutils_natdiscovery`` (RFC 5780 mapping, filtering, hairpinning and mapping lifetime
tests) run from inside every NAT of the default lab, against the lab's own RFC 5780 responder.
Both must name the same mapping and filtering behaviour, and that behaviour must be the one
the topology builds. Needs root, namespaces and coturn's tools."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

pytestmark = [
    pytest.mark.root,
    pytest.mark.timeout(240),
    pytest.mark.skipif(os.geteuid() != 0, reason="the netns lab needs root"),
    pytest.mark.skipif(shutil.which("turnutils_natdiscovery") is None,
                       reason="turnutils_natdiscovery is missing (apt-get install coturn)"),
]

BEHAVIOUR = {
    "Endpoint Independent": "endpoint-independent",
    "Address Dependent": "address-dependent",
    "Address and Port Dependent": "address-and-port-dependent",
}
AT_ONCE = 4  # tools at a time: their filtering verdicts are timed silences on a shared box


def _natdiscovery(ns: str, server: str, *args: str) -> str:
    out = subprocess.run(["ip", "netns", "exec", ns, "turnutils_natdiscovery", *args, "-p", "3478", server],
                         capture_output=True, text=True, timeout=90)
    return out.stdout + out.stderr


def _verdicts(text: str) -> dict[str, str | None]:
    """natdiscovery's "NAT with X Mapping!" / "NAT with X Filtering!" lines, in natkit's words
    (None: no verdict, as when UDP does not get out)."""
    found: dict[str, str | None] = {"mapping": None, "filtering": None}
    for m in re.finditer(r"NAT with (.+?) (Mapping|Filtering)!", text):
        found[m.group(2).lower()] = BEHAVIOUR[m.group(1)]
    return found


def _alive_after(text: str, seconds: int) -> bool:
    """natdiscovery -t -T N: the binding still answered after N idle seconds (its report after
    the timer names the reflexive address again; a dead one ends in a receive timeout)."""
    return any(line.startswith(f"{seconds}:") and "reflexive addr" in line for line in text.splitlines())


def _natkit_probe(ns: str, server: str, port: int) -> dict[str, Any]:
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "natkit", "probe", "--server",
                          f"stun:{server}:{port}", "--json"], capture_output=True, text=True, timeout=60)
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def test_natkit_probe_and_turnutils_natdiscovery_agree_inside_every_nat(nat_lab: Any) -> None:
    """In the session's default lab (the ``nat_lab`` fixture: built once, shared)."""
    from natkit.lab.expect import expected_probe
    from natkit.lab.servers import WEB_PORT

    topo = nat_lab.topology
    server = topo.servers.stun_addresses[0]
    first = {n.name: n for n in topo.nats}  # every NAT, from its first router's first peer
    nses = {name: nat_lab.namespace(name) for name in first}
    short = next(name for name, n in first.items() if n.behaviour.udp_timeout <= 30 and not n.behaviour.block_udp)
    timeout = first[short].behaviour.udp_timeout
    with ThreadPoolExecutor(AT_ONCE) as pool, ThreadPoolExecutor(2) as idle:
        # the lifetime checks mostly idle, beside the rest, each from its own socket
        alive = idle.submit(_natdiscovery, nses[short], server, "-t", "-T", str(timeout - 5))
        dead = idle.submit(_natdiscovery, nses[short], server, "-t", "-T", str(timeout + 5))
        tool = {n: pool.submit(_natdiscovery, ns, server, "-m", "-f") for n, ns in nses.items()}
        hairpin = {n: pool.submit(_natdiscovery, ns, server, "-H") for n, ns in nses.items()}
        tool_out = {n: f.result() for n, f in tool.items()}
        hairpin_out = {n: f.result() for n, f in hairpin.items()}
        # natkit after the tools, not beside them (its negative results are timed too)
        # (behind an egress firewall over the one port its TCP may reach, as the lab does)
        ours = {n: pool.submit(_natkit_probe, ns, server,
                               3478 if first[n].behaviour.egress_tcp_ports is None else WEB_PORT)
                for n, ns in nses.items()}
        probes = {n: f.result() for n, f in ours.items()}
        alive_out, dead_out = alive.result(), dead.result()
    disagree = []
    for name, nat in first.items():
        b = nat.behaviour
        want = expected_probe(b)
        theirs, ours = _verdicts(tool_out[name]), probes[name]
        if b.block_udp:
            # no UDP out: natdiscovery gets no answer, natkit says so
            assert theirs == {"mapping": None, "filtering": None}, (name, tool_out[name][-300:])
            assert ours["nat_type"] == "udp-blocked", (name, ours)
            continue
        # natkit names "no NAT" (the address is unchanged) where natdiscovery sees an identity
        # mapping, which is endpoint-independent
        mapping = "endpoint-independent" if ours["mapping"] == "none" else ours["mapping"]
        if (theirs["mapping"], theirs["filtering"]) != (mapping, ours["filtering"]):
            disagree.append(f"{name}: natdiscovery {theirs}, natkit {ours['mapping']}/{ours['filtering']}")
        assert (ours["mapping"], ours["filtering"]) == (want["mapping"], want["filtering"]), (name, ours)
        # Hairpinning, natdiscovery's way: a Binding from a second socket to the first one's
        # mapped address. Behind two NATs (a carrier NAT's subscriber) that packet also meets
        # the home NAT's address-and-port-dependent filter, which natkit's same-socket test
        # does not: compared behind one NAT only.
        if b.inner is None:
            theirs_hp = "Received a request (maybe a successful hairpinning)" in hairpin_out[name]
            if theirs_hp != bool(ours["hairpinning"]):
                disagree.append(f"{name}: hairpinning natdiscovery {theirs_hp}, natkit {ours['hairpinning']}")
    assert not disagree, "\n".join(disagree)
    # the claimed mapping lifetime, by natdiscovery's own timer: alive 5 s before, dead 5 s after
    assert _alive_after(alive_out, timeout - 5), alive_out[-400:]
    assert not _alive_after(dead_out, timeout + 5), dead_out[-400:]
