"""The command adapter: the contract's environment, ``--peer NAME=COMMAND`` parsing, and bad
peers (exits at once, crashes, hangs, ignores SIGTERM, prints garbage, floods stdout, never
joins, leaves helpers behind): each ends in one clear per-case error within its bound.

The fake peers are tiny shell and Python programs; nothing here needs root or a network beyond
a signaling server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import pytest

from natkit.errors import ConfigError
from natkit.lab.stacks import PeerConfig
from natkit.lab.stacks import command as cmd
from natkit.lab.stacks.command import CommandPeer, contract_env, parse_result_line, run_command

pytestmark = pytest.mark.timeout(60)

PY = sys.executable
GOOD = {"natkit_peer": 1, "connected": True, "t_connect_ms": 12.5, "rtt_ms": 0.4,
        "selected": {"local": {"type": "relay", "address": "203.0.113.4", "port": 50000, "protocol": "udp"},
                     "remote": {"type": "prflx", "address": "203.0.113.9", "port": 40000, "protocol": "udp"}},
        "relay_protocol": "tcp", "error": None, "stack": "fake 1.0", "extra": {"kept": True}}


@pytest.fixture(autouse=True)
def short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    # The contract's 2 s + 3 s, shortened so the hanging peers below end quickly.
    monkeypatch.setattr(cmd, "TERM_AFTER_S", 0.4)
    monkeypatch.setattr(cmd, "KILL_AFTER_S", 0.6)


def config(path: str = "relay", deadline: float = 1.0) -> PeerConfig:
    ice = [{"urls": ["turn:203.0.113.4:3478?transport=udp"], "username": "u", "credential": "p"}]
    return PeerConfig("room-1", path, ("127.0.0.1", 9), ice, deadline)


def shell(script: str) -> CommandPeer:
    return CommandPeer("fake", ["sh", "-c", script])


def python(code: str) -> CommandPeer:
    return CommandPeer("fake", [PY, "-c", code])


def start(peer: CommandPeer, role: str = "caller", cfg: PeerConfig | None = None) -> tuple[object, float]:
    t0 = time.monotonic()
    res = asyncio.run(peer.start(role, cfg or config()))
    return res, time.monotonic() - t0


# -- the environment and the spec --------------------------------------------------------------


def test_contract_env_per_path() -> None:
    env = contract_env("mine", "callee", config("relay", 7.5))
    assert env["NATKIT_PEER_CONTRACT"] == "1" and env["NATKIT_ROLE"] == "callee"
    assert env["NATKIT_SIGNALING_URL"] == "ws://127.0.0.1:9/ws"
    assert env["NATKIT_ROOM"] == "room-1" and env["NATKIT_STACK"] == "mine"
    assert env["NATKIT_CANDIDATE_TYPES"] == "relay" and env["NATKIT_PATH"] == "relay"
    assert env["NATKIT_DEADLINE_S"] == "7.5"
    ice = json.loads(env["NATKIT_ICE_CONFIG"])
    assert ice["iceTransportPolicy"] == "relay" and ice["iceServers"][0]["username"] == "u"
    srflx = contract_env("mine", "caller", PeerConfig("r", "srflx", ("::1", 80), [{"urls": "stun:[::1]:3478"}]))
    assert srflx["NATKIT_CANDIDATE_TYPES"] == "srflx" and srflx["NATKIT_SIGNALING_URL"] == "ws://[::1]:80/ws"
    assert json.loads(srflx["NATKIT_ICE_CONFIG"])["iceTransportPolicy"] == "all"
    assert contract_env("m", "caller", config("relay-tls"))["NATKIT_CANDIDATE_TYPES"] == "relay"
    assert env["NATKIT_IDLE_S"] == "0"
    idle = contract_env("m", "caller", PeerConfig("r", "longevity", ("127.0.0.1", 9), [], 40.0, idle_s=25.0))
    assert idle["NATKIT_CANDIDATE_TYPES"] == "srflx" and idle["NATKIT_IDLE_S"] == "25" and idle["NATKIT_PATH"] == "longevity"


def test_the_lab_ca_reaches_the_peer_as_a_file_for_its_run_only(tmp_path: Path) -> None:
    dump = tmp_path / "ca.json"
    peer = CommandPeer("cadump", [PY, "-c", (
        "import json, os; f = os.environ['NATKIT_CA_FILE'];"
        f" json.dump({{'file': f, 'ssl': os.environ.get('SSL_CERT_FILE'), 'pem': open(f).read()}}, open({str(dump)!r}, 'w'))"
    )])
    cfg = config()
    cfg.ca_pem = "-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n"
    res, _ = start(peer, cfg=cfg)
    assert res.outcome == "connected", res.error
    seen = json.loads(dump.read_text())
    assert seen["pem"] == cfg.ca_pem and seen["ssl"] == seen["file"]
    assert not os.path.exists(seen["file"])  # removed with the run


def test_every_variable_reaches_the_peer_and_role_is_substituted(tmp_path: Path) -> None:
    dump = tmp_path / "env.json"
    peer = CommandPeer("envdump", [PY, "-c", (
        "import json, os, sys; json.dump({**{k: v for k, v in os.environ.items() if k.startswith('NATKIT_')},"
        " 'argv': sys.argv[1:], 'cwd': os.getcwd(), 'files': os.listdir('.'), 'stdin': sys.stdin.read()},"
        f" open({str(dump)!r}, 'w')); open('left-behind', 'w').write('x')"
    ), "--role", "{role}", "as-{role}"])
    res, _ = start(peer, "callee")
    assert res.outcome == "connected", res.error  # exit 0, no result line
    seen = json.loads(dump.read_text())
    assert seen["argv"] == ["--role", "callee", "as-callee"]
    assert seen["NATKIT_ROLE"] == "callee" and seen["NATKIT_STACK"] == "envdump"
    assert set(contract_env("x", "callee", config())) <= set(seen)
    assert seen["files"] == [] and seen["stdin"] == ""  # a fresh empty directory, stdin /dev/null
    assert not os.path.exists(seen["cwd"])  # removed afterwards, with what the peer left there


def test_from_spec() -> None:
    peer = CommandPeer.from_spec("mine=./bin/peer --role {role} 'two words'")
    assert peer.name == "mine"
    assert peer.argv[0] == os.path.join(os.getcwd(), "bin/peer")  # the peer runs in a fresh dir
    assert peer.argv[1:] == ["--role", "{role}", "two words"]
    assert peer.command("caller")[2] == "caller"
    assert CommandPeer.from_spec(peer.spec).argv == peer.argv
    here = Path(__file__).relative_to(Path.cwd()) if Path(__file__).is_relative_to(Path.cwd()) else None
    if here is not None:  # an existing relative file among the words is made absolute too
        assert CommandPeer.from_spec(f"p=python3 {here}").argv[1] == str(Path(__file__))
    assert CommandPeer.from_spec("p=python3 -u").argv == ["python3", "-u"]


@pytest.mark.parametrize(("spec", "says"), [
    ("nocommand", "expected NAME=COMMAND"),
    ("x=", "expected NAME=COMMAND"),
    ("=cmd", "the name must start with a letter"),
    ("1abc=cmd", "the name must start with a letter"),
    ("a b=cmd", "the name must start with a letter"),
    ("x" * 40 + "=cmd", "at most 32"),
    ("p=cmd 'unclosed", "cannot be split into words"),
    ("aiortc=cmd", "built-in stack"),
])
def test_from_spec_refuses(spec: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as err:
        CommandPeer.from_spec(spec, reserved=("aiortc", "pion"))
    assert err.value.param == "peer"
    assert "\n" not in str(err.value)


def test_check_names_a_missing_program(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not on PATH") as err:
        CommandPeer.from_spec("p=natkit-no-such-peer-program").check()
    assert err.value.param == "peer"
    (tmp_path / "data").write_text("")
    with pytest.raises(ConfigError, match="not an executable file"):
        CommandPeer("p", [str(tmp_path / "data")]).check()
    CommandPeer("p", ["sh"]).check()


# -- the result line -----------------------------------------------------------------------------


def test_parse_result_line_is_tolerant() -> None:
    assert parse_result_line("") == (None, [])
    assert parse_result_line("log\n" + json.dumps(GOOD) + "\n\n")[0] == GOOD
    for bad, note in [
        ("garbage {", "not JSON"),
        ("[1, 2]", "not an object"),
        ("[" * 30000 + "]" * 30000, "not JSON"),  # deeper than the parser goes
        ('{"a": "' + "x" * (cmd.RESULT_LINE_MAX + 1) + '"}', "longer than"),
    ]:
        value, notes = parse_result_line(bad)
        assert value is None and note in notes[0]
    value, notes = parse_result_line('{"natkit_peer": 7}')
    assert value == {"natkit_peer": 7} and "version 1" in notes[0]


def _gone(pid: int) -> bool:
    """``pid`` has exited (a zombie waiting for whoever inherited it counts as gone)."""
    for _ in range(50):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.02)
    return False


# -- bad peers -----------------------------------------------------------------------------------


def test_a_good_result_is_read_and_unknown_keys_kept() -> None:
    res, _ = start(python(f"import json; print('chatter'); print(json.dumps({GOOD!r}))"))
    assert res.outcome == "connected" and res.error is None
    assert res.selected["local"] == {**GOOD["selected"]["local"], "relay_protocol": "tcp"}
    assert res.selected["remote"]["type"] == "prflx"
    assert (res.t_connect_ms, res.rtt_ms) == (12.5, 0.4)
    assert res.report["result"]["extra"] == {"kept": True}
    assert res.report["stack_version"] == "fake 1.0" and res.relays is None


def test_hostile_result_fields_are_dropped_not_trusted() -> None:
    hostile = {"connected": True, "rtt_ms": "fast", "t_connect_ms": -1, "signaled": ["a", 3],
               "selected": {"local": {"type": "evil", "port": 99999, "address": ["x"]}, "remote": "no"}}
    res, _ = start(python(f"import json; print(json.dumps({hostile!r}))"))
    assert res.outcome == "connected"
    assert res.rtt_ms is None and res.t_connect_ms is None and res.signaled == ["a"]
    assert res.selected == {"local": {}, "remote": {}}


@pytest.mark.parametrize(("script", "outcome", "says"), [
    ("exit 1", "failed", "not connected (exit status 1)"),
    ("printf '%s\\n' '{\"connected\": false, \"error\": \"ICE failed\\n  after 3 s\"}'; exit 1", "failed", "ICE failed after 3 s"),
    ("echo boom >&2; exit 3", "failed", "peer error: exit status 3 (stderr: boom)"),
    ("kill -SEGV $$", "failed", "peer error: killed by SIGSEGV"),
    ('echo \'{"connected": false}\'; exit 0', "failed", "exit status 0, but its result says connected: false"),
    ('echo \'{"connected": true}\'; exit 1', "failed", "exit status 1, but its result says connected: true"),
])
def test_exit_status_mapping(script: str, outcome: str, says: str) -> None:
    res, took = start(shell(script))
    assert res.outcome == outcome and says in res.error
    assert took < 3


def test_garbage_on_stdout_is_a_note_not_a_failure() -> None:
    res, _ = start(shell("printf '\\x00\\xff not json at all\\n'; exit 0"))
    assert res.outcome == "connected"
    assert "not JSON" in res.report["notes"][0]


def test_a_program_that_does_not_exist() -> None:
    res, _ = start(CommandPeer("ghost", ["/nonexistent/natkit-peer"]))
    assert res.outcome == "failed"
    assert res.error.startswith("the peer command did not start: /nonexistent/natkit-peer:")
    assert res.report["status"] == "did not start"


def test_a_hanging_peer_is_terminated_at_its_deadline() -> None:
    res, took = start(shell("echo waiting >&2; sleep 30"), cfg=config(deadline=0.5))
    assert res.outcome == "failed"
    assert res.error.startswith("peer did not exit by its deadline (0.5 s): SIGTERM after 0.9 s")
    assert "SIGKILL" not in res.error and "(stderr: waiting)" in res.error
    assert 0.8 < took < 3


def test_a_peer_that_ignores_sigterm_is_killed() -> None:
    res, took = start(python("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(30)"),
                      cfg=config(deadline=0.5))
    assert res.error.startswith("peer did not exit by its deadline") and "SIGKILL 0.6 s later" in res.error
    assert 1.4 < took < 4


def test_a_flood_of_stdout_stops_the_peer_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cmd, "STDOUT_LIMIT", 4 << 20)
    res, took = start(shell("yes flood"), cfg=config(deadline=20))
    assert res.outcome == "failed" and res.error.startswith("peer flooded stdout")
    assert took < 10  # long before the deadline


def test_a_big_but_bounded_stdout_keeps_the_last_line() -> None:
    code = f"import json, sys; sys.stdout.write('x' * 3000000 + '\\n'); print(json.dumps({GOOD!r}))"
    res, _ = start(python(code))
    assert res.outcome == "connected" and res.report["result"]["stack"] == "fake 1.0"
    assert any("only the last" in n for n in res.report["notes"])


def test_helpers_left_behind_are_killed_and_do_not_hold_the_case(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    res, took = start(shell(f"sleep 30 & echo $! > {pidfile}; exit 0"))
    assert res.outcome == "connected" and took < 3
    assert _gone(int(pidfile.read_text()))


def test_cancellation_kills_the_peer(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"

    async def cancelled() -> None:
        task = asyncio.ensure_future(run_command(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"], dict(os.environ), 20))
        for _ in range(100):
            await asyncio.sleep(0.05)
            if pidfile.exists() and pidfile.read_text().strip():
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    t0 = time.monotonic()
    asyncio.run(cancelled())
    assert time.monotonic() - t0 < 5
    assert _gone(int(pidfile.read_text()))


def test_a_peer_that_never_joins_fails_both_sides_clearly() -> None:
    """The callee never joins the room: the aiortc caller fails at its deadline, the command
    side says it did not connect, and the case ends within its bound."""
    from natkit.lab.signaling import SignalingServer
    from natkit.lab.stacks.aiortc import run_peer

    async def case() -> tuple[object, object, float]:
        async with SignalingServer("127.0.0.1", 0) as sig:
            cfg = PeerConfig("lonely", "host", ("127.0.0.1", sig.port), [], 1.5)
            t0 = time.monotonic()
            idle = shell("echo 'I will not join' >&2; sleep 1; exit 1")
            caller, callee = await asyncio.gather(run_peer("caller", cfg), idle.start("callee", cfg))
            return caller, callee, time.monotonic() - t0

    caller, callee, took = asyncio.run(case())
    assert caller.outcome == "failed" and "within 1.5 s" in caller.error
    assert callee.outcome == "failed" and callee.error == "not connected (exit status 1) (stderr: I will not join)"
    assert took < 5


def test_max_duration_bounds_every_bad_peer() -> None:
    peer = shell("true")
    cfg = config(deadline=10)
    assert peer.max_duration_s(cfg) >= 10 + cmd.TERM_AFTER_S + cmd.KILL_AFTER_S
