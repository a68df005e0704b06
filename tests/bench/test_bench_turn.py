"""A short smoke run of `natkit bench turn`: the driver, both engines, the report's keys."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from natkit.bench.turn import _limits, driver_command, run
from natkit.cli import main
from natkit.cli.bench_turn import format_report
from tests._native import need
from tests.bench._docs import undocumented

pytestmark = [
    pytest.mark.timeout(300),  # the shared run of both engines is set up inside the first test
    pytest.mark.coturn,
    pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn is not installed"),
    pytest.mark.usefixtures("driver_built"),
]

SHORT = {"seconds": 0.5, "allocations": 300, "clients": 4, "window": 8}


@pytest.fixture
def driver_built() -> None:
    """The driver is the extension module natkit.bench._turnload (required in CI)."""
    need("natkit.bench._turnload")


def check_engine(figures: dict, allocations: int) -> None:
    a = figures["allocations"]
    assert a["allocated"] == allocations and a["failed"] == 0
    assert a["refreshed"] == allocations  # every allocation still known after the hold
    assert a["released"] == allocations
    assert a["per_s"] > 0 and a["bytes_per_allocation"] > 0
    # CPU time is counted in clock ticks: 300 allocations may take less than one
    assert a["server_cpu"] >= 0 and (a["per_cpu_second"] is None or a["per_cpu_second"] > 0)
    for section in ("channel_data", "send_indication"):
        f = figures[section]
        assert f["relayed_per_s"] > 0 and f["received"] > 0
        assert f["received"] <= f["sent"]
        assert 0 <= f["loss"] < 0.05, f  # loopback, closed loop: next to nothing is lost
        assert 0 < f["server_cpu"] <= 1.5 and 0 < f["driver_cpu"] <= 1.5


@pytest.fixture(scope="module")
def both() -> dict:
    """One short two-round run of both engines with the self-test (the null relay), shared by
    the tests that read its report: one engine start each instead of one per test."""
    need("natkit.bench._turnload")
    return run(engines=("natkit", "coturn"), rounds=2, **SHORT)


def test_both_engines_and_the_null_relay(both: dict) -> None:
    for engine in ("natkit", "coturn"):
        check_engine(both["engines"][engine], 300)
        assert len(both["runs"][engine]) == 2
    assert both["engines"]["coturn"]["version"].startswith("4.")
    # the driver self-test ran the same traffic against the C null relay
    for section in ("channel_data", "send_indication"):
        assert both["self_test"][section]["received"] > 0
    assert 0 < both["driver_max_cpu"] <= 1.5
    assert set(both["limits"]) == {
        f"{e}.{s}" for e in ("natkit", "coturn") for s in ("channel_data", "send_indication")
    }
    assert set(both["limits"].values()) <= {"server", "driver", "both", "neither"}


def test_ratios_per_round_and_their_median(both: dict) -> None:
    """Each round's ratio is natkit's figure over coturn's in that round; the report's ratio
    is the median of the rounds' (two rounds: their mean), and the floors list the rounds."""
    assert (both["schema_version"], both["kind"]) == (2, "bench-turn")
    per_round = both["ratios_per_round"]
    assert len(per_round) == 2
    key = "channel_data.relayed_per_s"
    for i, ratios in enumerate(per_round):
        n, c = both["runs"]["natkit"][i], both["runs"]["coturn"][i]
        assert ratios[key] == pytest.approx(
            n["channel_data"]["relayed_per_s"] / c["channel_data"]["relayed_per_s"], rel=0.01, abs=5e-4
        )
    assert set(both["ratios"]) >= {key, "allocations.bytes_per_allocation"}
    floors = both["target"]["floors"]
    assert floors["channel_data.relayed_per_s_vs_coturn"]["floor"] == 2.0
    assert floors["allocations.per_s_vs_coturn"]["rounds"] == [
        r["allocations.per_s"] for r in per_round
    ]
    assert undocumented(both, ("channel_data", "send_indication", "allocations")) == set()


def test_per_round_null_relay_ratios(both: dict) -> None:
    """With the self-test on, each round runs the null relay too, and natkit's rates are
    read against it round by round."""
    assert len(both["runs"]["null"]) == 2 and len(both["null_ratios_per_round"]) == 2
    first = both["null_ratios_per_round"][0]["channel_data.relayed_per_s"]
    natkit = both["runs"]["natkit"][0]["channel_data"]["relayed_per_s"]
    null = both["runs"]["null"][0]["channel_data"]["relayed_per_s"]
    # the report rounds ratios to 3 decimals: on a loaded box this ratio can be 0.04
    assert first == pytest.approx(natkit / null, rel=0.01, abs=5e-4)


def test_the_table_shows_both_engines_and_the_ratios(both: dict) -> None:
    out = format_report(both)
    assert "ChannelData relayed packets/s" in out and "memory per idle allocation" in out
    assert "300/300" in out  # allocations held after refresh
    assert "natkit" in out and "coturn" in out


def test_cli_json_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """The verb end to end, kept small (natkit alone, no self-test); bad options exit 2."""
    code = main(["bench", "turn", "--json", "--engines", "natkit", "--seconds", "0.5", "--no-self-test",
                 "--allocations", "50", "--clients", "2", "--window", "4"])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    check_engine(report["engines"]["natkit"], 50)
    assert "ratios" not in report and "self_test" not in report
    assert main(["bench", "turn", "--engines", "natkit,squid"]) == 2
    assert "--engines: natkit,squid: choose from natkit,coturn" in capsys.readouterr().err
    assert main(["bench", "turn", "--seconds", "0"]) == 2


def test_limits_read_the_cores_not_the_processes() -> None:
    """The verdict comes from each pinned core's busy fraction (softirq included): a server
    process at 40 % of its core whose core was full is the limit; process CPU only stands in
    when nothing was pinned."""
    pinned = {
        "server_cpu": 0.4,
        "driver_cpu": 0.3,
        "server_core_busy": 0.97,
        "driver_core_busy": 0.5,
    }
    unpinned = {"server_cpu": 0.95, "driver_cpu": 0.3}
    both = {"server_cpu": 0.5, "driver_cpu": 0.5, "server_core_busy": 0.9, "driver_core_busy": 0.92}
    idle = {
        "server_cpu": 0.95,
        "driver_cpu": 0.95,
        "server_core_busy": 0.6,
        "driver_core_busy": 0.5,
    }
    engines = {e: {"channel_data": f} for e, f in
               (("a", pinned), ("b", unpinned), ("c", both), ("d", idle))}  # fmt: skip
    assert _limits(engines, sections=("channel_data",)) == {
        "a.channel_data": "server", "b.channel_data": "server",
        "c.channel_data": "both", "d.channel_data": "neither",
    }  # fmt: skip


def test_driver_rejects_wrong_credentials() -> None:
    """The driver really authenticates: a wrong key gets 401s and no allocation."""
    from natkit.server.coturn import CoturnServer

    driver = driver_command()
    with CoturnServer([("127.0.0.1", 0)], users={"bench": "right"}, realm="r") as turn:
        ip, port = turn.addresses_of("udp")[0]
        done = subprocess.run(
            [*driver, "channel", ip, str(port), "bench", "00" * 16, "-n", "2", "-s", "0.5"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert done.returncode == 1
    assert "first_error=401" in done.stdout


@pytest.mark.parametrize(("mode", "payload"), [("channel", 100), ("send", 101)])
def test_driver_batched_sends_arrive_as_separate_packets(mode: str, payload: int) -> None:
    """Every packet of the driver's batched (GSO) sends, and of the null relay's, arrives as
    its own well-formed datagram (odd payload: the Data indications' padding too)."""
    from natkit.bench.turn import USER, null_relay

    driver = driver_command()
    with null_relay(None, driver) as ((ip, port), _pid):
        done = subprocess.run(
            [*driver, mode, ip, str(port), USER, "00" * 16, "-n", "4", "-w", "16",
             "-b", str(payload), "-s", "0.5"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = next(line for line in done.stdout.splitlines() if line.startswith("result"))
    fields = dict(kv.split("=", 1) for kv in result.split()[1:])
    assert fields["allocations"] == "4" and fields["bad"] == "0"
    assert int(fields["client_rx"]) > 1000  # many windows went round, not just the first
    assert int(fields["peer_rx"]) >= int(fields["client_rx"])
    assert float(fields["loss"]) < 0.05
    assert fields["gso"] in ("0", "1")


def test_workers_section() -> None:
    """--workers 2: ChannelData against natkit with 1 and 2 processes, relayed per busy
    server core for both and their ratio (the per-worker efficiency)."""
    from natkit.bench.turn import Bench, _workers_summary

    bench = Bench(
        seconds=0.5, allocations=1, clients=8, window=8, payload=100, server_cpu=1,
        driver_cpu=0, driver=driver_command(),
    )  # fmt: skip
    run_ = bench.workers_run(2, "1")
    for n in ("1", "2"):
        f = run_[n]
        assert f["relayed_per_s"] > 0 and f["loss"] < 0.05 and f["per_cpu_second"] > 0
        assert 1 <= len(f["process_cpu"]) <= 3  # the workers (and an idle helper at most)
    assert run_["efficiency"] == pytest.approx(
        run_["2"]["per_cpu_second"] / run_["1"]["per_cpu_second"], rel=0.01
    )
    w = _workers_summary([run_], 2, "1")
    assert (w["workers"], w["cpus"], w["efficiency_per_round"]) == (2, "1", [run_["efficiency"]])
    assert w["median"]["2"]["relayed_per_s"] == run_["2"]["relayed_per_s"]
    assert main(["bench", "turn", "--workers", "0"]) == 2
    assert main(["bench", "turn", "--workers", "2", "--worker-cpus", "1-x"]) == 2


def test_allocation_plan_fits_the_descriptor_limit() -> None:
    """Where one process cannot hold the count (RLIMIT_NOFILE), natkit runs as workers and the
    driver as several processes; relay IPs cover the count (each holds one per relay port)."""
    from natkit.bench.turn import AllocationPlan

    small = AllocationPlan.make(10_000, fd_limit=20_000)
    assert (small.workers, small.drivers, small.coturn, small.relay_ips) == (
        1, 1, 10_000, ("127.0.0.1",)
    )  # fmt: skip
    assert small.driver_sources(0) == [] and small.driver_counts(10_000) == [10_000]
    big = AllocationPlan.make(100_000, fd_limit=20_000)
    assert (big.workers, big.drivers, big.coturn, len(big.relay_ips)) == (6, 6, 18_500, 6)
    assert sum(big.driver_counts(100_000)) == 100_000 and max(big.driver_counts(100_000)) < 18_500
    assert {ip for n in range(6) for ip in big.driver_sources(n)} == {
        f"127.0.3.{n}" for n in range(1, 7)
    }
    roomy = AllocationPlan.make(100_000, fd_limit=1 << 18)
    assert (roomy.workers, roomy.coturn, len(roomy.relay_ips)) == (1, 100_000, 5)


def test_driver_binds_its_sources() -> None:
    """-a: the driver's client sockets come from the given source IPs, in turn."""
    import asyncio

    from natkit.bench.turn import PASSWORD, REALM, USER
    from natkit.server.turn import TurnServer
    from natkit.stun import long_term_key

    key = long_term_key(USER, REALM, PASSWORD).hex()

    async def main() -> set[str]:
        async with TurnServer([("127.0.0.1", 0)], users={USER: PASSWORD}, realm=REALM) as turn:
            ip, port = turn.addresses_of("udp")[0]
            proc = await asyncio.create_subprocess_exec(
                *driver_command(), "alloc", ip, str(port), USER, key, "-n", "6",
                "-a", "127.0.3.1,127.0.3.2", "-t", "10",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert proc.stdout is not None and proc.stdin is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert b"ok=6" in line, line
            # the C thread answers an Allocate first and hands the allocation to the engine
            # after (its queue, drained by the event loop): wait for all six, bounded
            for _ in range(100):
                if len(turn.engine.allocations) >= 6:
                    break
                await asyncio.sleep(0.05)
            sources = {a.client_addr[0] for a in turn.engine.allocations.values()}
            proc.stdin.write(b"go\n")
            await asyncio.wait_for(proc.communicate(), 20)
            return sources

    assert asyncio.run(main()) == {"127.0.3.1", "127.0.3.2"}
