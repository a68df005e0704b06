"""The capture on the internet segment: markers bracket what the file holds."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from natkit.errors import PrerequisiteError
from natkit.lab import capture

pytestmark = pytest.mark.timeout(60)

needs_root = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("dumpcap") is None,
    reason="needs root on Linux (namespaces, nftables) and dumpcap",
)


def test_missing_dumpcap_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    with pytest.raises(PrerequisiteError, match="apt-get install tshark"):
        capture.check_dumpcap()


@pytest.mark.root
@needs_root
def test_capture_marker_waits_until_the_file_holds_everything_sent_before_it(tmp_path: Path) -> None:
    # dumpcap stopped right after traffic drops what libpcap has not handed it yet; the marker
    # sync is what makes the evidence complete.
    from scapy.layers.inet import UDP
    from scapy.utils import rdpcap

    from natkit.lab.netns import NetnsLab

    with NetnsLab() as lab:
        hub, a, b = lab.add_ns("hub"), lab.add_ns("a"), lab.add_ns("b")
        lab.add_bridge(hub, "br0")
        lab.add_veth(a, "eth0", hub, "pa", master="br0")
        lab.add_veth(b, "eth0", hub, "pb", master="br0")
        lab.add_addr(a, "eth0", "203.0.113.1/24")
        lab.add_addr(b, "eth0", "203.0.113.2/24")
        pcap = tmp_path / "bridge.pcapng"
        dumpcap = lab.popen(
            hub, ["dumpcap", "-q", "-i", "br0", "-f", "udp", "-w", str(pcap)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        capture.wait_capture(pcap, dumpcap)
        sent = [b"datagram %d" % i for i in range(300)]
        with capture.CaptureMarker(lab, a, ("203.0.113.2", capture.MARKER_PORT)) as marker, lab.socket(a) as s:
            assert marker.sync(pcap, dumpcap)  # the capture is live (and ARP resolved)
            for payload in sent:
                s.sendto(payload, ("203.0.113.2", 7))
            assert marker.sync(pcap, dumpcap)
        dumpcap.send_signal(signal.SIGINT)
        dumpcap.wait(5)
    got = [bytes(p[UDP].payload) for p in rdpcap(str(pcap)) if UDP in p and p[UDP].dport == 7]
    assert got == sent
