"""natkit.lab.choose: --peer-caps declares what a user's peer supports, and the run follows."""

from __future__ import annotations

import pytest

from natkit.errors import ConfigError
from natkit.lab import stacks
from natkit.lab.choose import choose, peer_capabilities
from natkit.lab.topology import DEFAULT_TOPOLOGY, load

TRUE = "/bin/true"


@pytest.fixture(autouse=True)
def forget_peers() -> object:
    before = dict(stacks.STACKS)
    yield
    for name in set(stacks.STACKS) - set(before):
        del stacks.STACKS[name]
        stacks._cache.pop(name, None)


def test_peer_caps_must_name_a_peer_once() -> None:
    with pytest.raises(ConfigError, match="no --peer of that name"):
        peer_capabilities(["other=ipv6"], ["mine"])
    with pytest.raises(ConfigError, match="given twice"):
        peer_capabilities(["mine=ipv6", "mine=idle"], ["mine"])
    with pytest.raises(ConfigError, match="expected NAME=LIST"):
        peer_capabilities(["mine"], ["mine"])


def test_a_peer_declared_without_idle_has_no_longevity_cases_and_gets_derived_expectations() -> None:
    topo = load(DEFAULT_TOPOLOGY)
    plain = choose(topo, peers=[f"mine={TRUE}"], full=True, only=["longevity"])
    assert any("mine" in c.stacks for c in plain.cases)  # unknown: it is trusted to idle
    stacks.STACKS.pop("mine")
    stacks._cache.pop("mine")
    sel = choose(topo, peers=[f"mine={TRUE}"], peer_caps=["mine=relay-udp,relay-tcp,keepalive=5"], full=True)
    assert not any(c.path == "longevity" and "mine" in c.stacks for c in sel.cases)
    assert any(c.path == "longevity" for c in sel.cases)  # the reference's own stay
    caps = stacks.capabilities_of("mine")
    assert caps.known and caps.turn == ("udp", "tcp") and caps.ipv6 is False and caps.keepalive_s == 5.0


def test_with_keeps_the_cases_a_stack_takes_part_in_and_only_those() -> None:
    """--full --peer mine=... --with mine: every case of the peer (as caller and as callee,
    with the reference and with itself), none of the reference with itself."""
    topo = load(DEFAULT_TOPOLOGY)
    whole = choose(topo, peers=[f"mine={TRUE}"], full=True, only=["srflx,relay"])
    stacks.STACKS.pop("mine")
    stacks._cache.pop("mine")
    mine = choose(topo, peers=[f"mine={TRUE}"], full=True, only=["srflx,relay"], with_stacks=["mine"])
    assert [c for c in whole.cases if "mine" in c.stacks] == list(mine.cases)  # same cases, same order
    assert {c.stacks for c in mine.cases} == {("aiortc", "mine"), ("mine", "aiortc"), ("mine", "mine")}
    assert 0 < len(mine.cases) < len(whole.cases) and any(c.stacks == ("aiortc", "aiortc") for c in whole.cases)
    assert mine.id != whole.id and mine.kind == "full" and mine.stacks == whole.stacks  # shards of it agree
    # every NAT of the matrix, the peer behind it as caller and as callee
    rows = {n.name for n in topo.matrix_nats}
    for i in (0, 1):
        assert {c.nats[i] for c in mine.cases if c.stacks[i] == "mine"} >= rows
    # of the default selection too; two stacks named: either one
    default = choose(topo, stack_names=["aiortc,pion"], with_stacks=["pion"])
    assert default.cases and all("pion" in c.stacks for c in default.cases)
    both = choose(topo, stack_names=["aiortc,pion"], with_stacks=["pion,aiortc"])
    assert len(both.cases) == len(choose(topo, stack_names=["aiortc,pion"]).cases)


@pytest.mark.parametrize(("with_stacks", "what"), [
    (["libnice"], "libnice is not among the run's stacks (aiortc,pion)"),
    (["nope"], "nope is not among the run's stacks"),
    ([","], "name at least one stack"),
])
def test_with_names_stacks_of_the_run(with_stacks: list[str], what: str) -> None:
    with pytest.raises(ConfigError, match=what.replace("(", r"\(").replace(")", r"\)")) as err:
        choose(load(DEFAULT_TOPOLOGY), stack_names=["aiortc,pion"], with_stacks=with_stacks)
    assert err.value.param == "with_stacks"


def test_with_a_stack_no_case_of_the_plan_has_stops() -> None:
    with pytest.raises(ConfigError, match="no case of the plan has pion taking part"):
        choose(load(DEFAULT_TOPOLOGY), stack_names=["aiortc,pion"], only=["longevity"], with_stacks=["pion"])


def test_an_engine_with_an_image_of_its_own_decides_which_stacks_run_not_this_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under Compose the browsers run in the image's flavour: a host without Chromium still
    runs its cases there (the engine's ``unavailable`` is the word), and the netns engine
    (no ``unavailable``) leaves it out with the host's reason."""
    from natkit.errors import PrerequisiteError
    from natkit.lab.orchestrate import check_stacks

    def missing() -> None:
        raise PrerequisiteError("chromium is not installed on this host")

    monkeypatch.setattr(stacks.get("chromium"), "check", missing)
    topo = load(DEFAULT_TOPOLOGY)
    here = choose(topo)  # the default stacks: those this host can run
    assert ("chromium", "chromium is not installed on this host") in here.skipped
    assert not any("chromium" in c.stacks for c in here.cases)
    image = choose(topo, unavailable=lambda name: None)
    assert not image.skipped and any("chromium" in c.stacks for c in image.cases)
    named = choose(topo, stack_names=["aiortc", "chromium"], unavailable=lambda name: None)
    check_stacks(named.cases, on_this_host=False)  # the roles only
    with pytest.raises(PrerequisiteError):
        check_stacks(named.cases)
    gone = choose(topo, unavailable=lambda name: "not in the image" if name == "chromium" else None)
    assert ("chromium", "not in the image") in gone.skipped
