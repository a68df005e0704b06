"""A short run of `natkit bench turn --transport tcp|tls`: the stream driver against both
engines, the report's keys and the floor."""

from __future__ import annotations

import json
import shutil
import socket
import threading

import pytest

from natkit.bench.turn import run_stream
from natkit.cli import main
from natkit.errors import UsageError
from tests._native import need
from tests.bench._docs import undocumented

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.coturn,
    pytest.mark.skipif(
        shutil.which("turnserver") is None or shutil.which("turnutils_peer") is None,
        reason="coturn (turnserver, turnutils_peer) is not installed",
    ),
]
SHORT = {"seconds": 0.5, "clients": 2, "window": 4}


def test_tcp_both_engines_with_ratio_and_floor() -> None:
    report = run_stream(transport="tcp", **SHORT)
    assert (report["schema_version"], report["kind"]) == (2, "bench-turn")
    assert report["settings"]["transport"] == "tcp"
    for engine in ("natkit", "coturn"):
        f = report["engines"][engine]["channel_data"]
        assert f["relayed_per_s"] > 0 and 0 < f["received"] <= f["sent"]
        assert f["loss"] == 0  # a stream loses nothing: what was sent came back (drained)
    n, c = (report["engines"][e]["channel_data"]["relayed_per_s"] for e in ("natkit", "coturn"))
    assert report["ratios"]["channel_data.relayed_per_s"] == pytest.approx(n / c, rel=0.01)
    floor = report["target"]["floors"]["channel_data.relayed_per_s_vs_coturn"]
    assert floor["floor"] == 1.0 and floor["rounds"] == [report["ratios"]["channel_data.relayed_per_s"]]
    assert set(report["limits"]) == {"natkit.channel_data", "coturn.channel_data"}
    # over TCP the driver's C loop is the peer too: no turnutils_peer
    assert "C loop" in report["settings"]["driver"] and report["settings"]["peer"].startswith("the driver")
    assert all(report["engines"][e]["channel_data"]["driver_dropped"] == 0 for e in ("natkit", "coturn"))
    assert undocumented(report, ("channel_data",)) == set()


def test_the_c_loop_answers_every_complete_frame() -> None:
    """natkit.bench._turnload.stream against an echo that returns bytes in odd-sized pieces:
    frames split across reads are counted once complete and each is answered with one new
    frame until the deadline, so no more than the windows are ever in flight."""
    lib = need("natkit.bench._turnload")
    pairs = [socket.socketpair() for _ in range(2)]
    stop = threading.Event()

    def echo(sock: socket.socket) -> None:
        sock.settimeout(0.05)
        while not stop.is_set():
            try:
                data = sock.recv(37)  # never a whole number of 24-byte frames
            except TimeoutError:
                continue
            if not data:
                return
            sock.sendall(data)

    threads = [threading.Thread(target=echo, args=(b,), daemon=True) for _, b in pairs]
    for t in threads:
        t.start()
    try:
        r = lib.stream([a.fileno() for a, _ in pairs], -1, 24, 3, 0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(2)
        for a, b in pairs:
            a.close()
            b.close()
    # windows refilled; never more than the windows (2 x 3) in flight, none counted twice
    assert 2 * 3 < r["received"] <= r["sent"] <= r["received"] + 2 * 3
    assert r["seconds"] >= 0.29 and r["received_at_deadline"] <= r["received"]
    assert (r["peer_rx"], r["peer_lost"]) == (0, 0)


def test_tls_natkit_from_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "turn", "--transport", "tls", "--engines", "natkit", "--json",
                 "--seconds", "0.5", "--clients", "2", "--window", "4"])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    f = report["engines"]["natkit"]["channel_data"]
    assert report["settings"]["transport"] == "tls" and f["received"] > 0 and f["loss"] == 0
    assert "ratios" not in report


def test_payload_must_fit_the_stream_framing() -> None:
    with pytest.raises(UsageError, match="multiple of 4"):
        run_stream(transport="tcp", payload=101, **SHORT)
