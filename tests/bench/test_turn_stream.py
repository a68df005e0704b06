"""A short run of `natkit bench turn --transport tcp|tls`: the stream driver against both
engines, the report's keys and the floor."""

from __future__ import annotations

import json
import shutil

import pytest

from natkit.bench.turn import run_stream
from natkit.cli import main
from natkit.errors import UsageError

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
