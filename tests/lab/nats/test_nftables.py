"""The NAT kinds' models and the nftables recipes generated for them (sans-IO), plus ``nft -c``."""

from __future__ import annotations

import os
import sys

import pytest

from natkit.errors import UsageError
from natkit.lab import nats
from natkit.lab.nat import PRESETS
from natkit.lab.nats import Filtering, Mapping, NatBehaviour, RouterSide, router_sysctls

NEW_KINDS = [k.model for k in nats.kinds() if k.model.name not in PRESETS]
ARGS6 = {"inside_net6": "2001:db8:1:1::/64", "outside_net6": "2001:db8:2:1::/64"}

ARGS = {
    "inside_if": "lan",
    "outside_if": "wan",
    "public_ip": "203.0.113.1",
    "inside_net": "10.0.0.0/24",
}


def nat_ruleset(b: NatBehaviour, *, table: str = "natkit", **kw: str) -> str:
    return nats.recipe(b, RouterSide(table=table, **kw)).nft  # type: ignore[arg-type]


def rules(b: NatBehaviour) -> str:
    return nat_ruleset(b, **ARGS)


def test_presets_have_the_classic_meanings() -> None:
    got = {n: (b.mapping, b.filtering, b.block_udp) for n, b in PRESETS.items()}
    eim, apdm = Mapping.ENDPOINT_INDEPENDENT, Mapping.ADDRESS_AND_PORT_DEPENDENT
    assert got == {
        "open": (None, None, False),
        "full-cone": (eim, Filtering.ENDPOINT_INDEPENDENT, False),
        "restricted-cone": (eim, Filtering.ADDRESS_DEPENDENT, False),
        "port-restricted": (eim, Filtering.ADDRESS_AND_PORT_DEPENDENT, False),
        "symmetric": (apdm, Filtering.ADDRESS_AND_PORT_DEPENDENT, False),
        "udp-blocked": (eim, Filtering.ADDRESS_AND_PORT_DEPENDENT, True),
    }
    assert all(b.name == n for n, b in PRESETS.items())
    assert not PRESETS["open"].nat and PRESETS["symmetric"].nat


def test_preset_overrides() -> None:
    b = NatBehaviour.preset("full-cone", hairpinning=True, udp_timeout=5)
    assert (b.name, b.hairpinning, b.udp_timeout) == ("full-cone", True, 5)
    assert PRESETS["full-cone"].hairpinning is False  # the preset itself is untouched


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: NatBehaviour.preset("cone"), ["unknown NAT type", "full-cone"]),
        (lambda: NatBehaviour.preset("open", colour=1), ["unknown setting", "colour"]),
        (lambda: NatBehaviour("x", Mapping.ENDPOINT_INDEPENDENT, None), ["both"]),
        (lambda: NatBehaviour.preset("symmetric", udp_timeout=0), ["udp_timeout"]),
        (
            lambda: nat_ruleset(PRESETS["open"], **{**ARGS, "inside_if": "a-very-long-ifname"}),
            ["interface name"],
        ),
        (lambda: nat_ruleset(PRESETS["open"], **{**ARGS, "outside_if": "lan"}), ["both"]),
        (lambda: nat_ruleset(PRESETS["open"], **{**ARGS, "public_ip": "203.0.113"}), ["IPv4"]),
        (lambda: nat_ruleset(PRESETS["open"], **ARGS, table="bad table"), ["table"]),
    ],
)
def test_bad_input_is_a_usage_error(call: object, words: list[str]) -> None:
    with pytest.raises(UsageError) as err:
        call()  # type: ignore[operator]
    assert all(w in str(err.value) for w in words), str(err.value)


def test_port_restricted_is_plain_masquerade() -> None:
    text = rules(PRESETS["port-restricted"])
    assert 'oifname "wan" masquerade\n' in text
    assert "fully-random" not in text and "@mappings" not in text and "@peers" not in text


def test_symmetric_draws_random_ports() -> None:
    assert 'oifname "wan" masquerade fully-random' in rules(PRESETS["symmetric"])


def test_full_cone_forwards_any_sender_to_the_mapping_owner() -> None:
    text = rules(PRESETS["full-cone"])
    assert (
        'iifname "wan" ip daddr 203.0.113.1 meta l4proto udp dnat ip to udp dport map @mappings'
        in text
    )
    assert "update @mappings { ct reply proto-dst timeout 30s" in text
    assert "@peers" not in text


def test_restricted_cone_forwards_only_known_remote_ips() -> None:
    text = rules(PRESETS["restricted-cone"])
    assert "udp dport . ip saddr @peers dnat ip to udp dport map @mappings" in text
    assert "update @peers { ct reply proto-dst . ip daddr timeout 30s }" in text


def test_udp_blocked_drops_forwarded_udp() -> None:
    text = rules(PRESETS["udp-blocked"])
    assert "meta l4proto udp drop" in text and "masquerade" in text


def test_open_only_routes() -> None:
    text = rules(PRESETS["open"])
    assert "nat hook" not in text and "drop" not in text


def test_timeout_and_hairpin_knobs() -> None:
    text = rules(NatBehaviour.preset("port-restricted", udp_timeout=7, hairpinning=True))
    assert "policy = { unreplied: 7, replied: 7 }" in text and "timeout 7s" in text
    assert 'iifname "lan" ip daddr 203.0.113.1 meta l4proto udp dnat' in text
    assert 'iifname "lan" oifname "lan" ct status dnat snat ip to 203.0.113.1' in text
    assert 'iifname "lan"' not in rules(PRESETS["port-restricted"])


def test_address_dependent_mapping_hashes_the_remote_ip_only() -> None:
    adm = rules(NatBehaviour("adm", Mapping.ADDRESS_DEPENDENT, Filtering.ADDRESS_DEPENDENT))
    assert "jhash ip saddr . th sport . ip daddr mod 65536" in adm
    apdm = rules(
        NatBehaviour(
            "h", Mapping.ADDRESS_AND_PORT_DEPENDENT, Filtering.ADDRESS_DEPENDENT, random_ports=False
        )
    )
    assert "jhash ip saddr . th sport . ip daddr . th dport mod 65536" in apdm


def test_pure_and_table_named() -> None:
    b = PRESETS["restricted-cone"]
    assert rules(b) == rules(b)
    text = nat_ruleset(b, **ARGS, table="nk_x")
    assert text.startswith("add table ip nk_x\ndelete table ip nk_x\ntable ip nk_x {")


def test_router_sysctls() -> None:
    assert router_sysctls(PRESETS["symmetric"])["net.ipv4.ip_forward"] == "1"
    assert nats.recipe(PRESETS["symmetric"], RouterSide(**ARGS)).sysctls == router_sysctls(PRESETS["symmetric"])


def test_the_earlier_module_gives_the_same_rules() -> None:
    # natkit.lab.nat stays for code outside the lab (natkit.bench.probe, the probe tests).
    from natkit.lab import nat

    assert set(nat.PRESETS) == set(PRESETS)
    for b in ALL_VARIANTS:
        assert nat.nat_ruleset(b, **ARGS) == rules(b)
    assert nat.router_sysctls(PRESETS["open"]) == router_sysctls(PRESETS["open"])


def test_a_ruleset_names_only_known_chains() -> None:
    from natkit.lab.nats.nftables import Ruleset

    rs = Ruleset("t")
    rs.rule("forward", "accept")
    assert "chain forward" in rs.text() and "chain input" not in rs.text()
    with pytest.raises(ValueError, match="unknown base chain"):
        rs.rule("postrouting", "accept")


ALL_VARIANTS = [
    *(NatBehaviour.preset(n, hairpinning=h) for n in PRESETS for h in (False, True)),
    *(
        NatBehaviour("custom", m, f, hairpinning=True, random_ports=r)
        for m in Mapping
        for f in Filtering
        for r in (False, True)
    ),
]


@pytest.mark.root
@pytest.mark.timeout(60)
@pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0, reason="needs root on Linux (namespaces)"
)
def test_nft_accepts_every_ruleset() -> None:
    from natkit.lab.netns import NetnsLab

    with NetnsLab() as lab:
        ns = lab.add_ns("nftc")
        for b in ALL_VARIANTS:
            lab.apply_nft(ns, rules(b), check=True)
        # ...and loads them for real, one after another (each replaces the last).
        for b in ALL_VARIANTS[:6]:
            lab.apply_nft(ns, rules(b))
        listing = lab.run(ns, ["nft", "list", "tables"]).stdout
        assert listing.strip() == "table ip natkit"


def test_nft_accepts_the_rulesets_of_the_new_kinds() -> None:
    # Two-stage kinds: each stage's recipe; IPv6 kinds: the ip6 table too (prefix NAT for NPTv6).
    from natkit.lab.netns import NetnsLab

    with NetnsLab() as lab:
        ns = lab.add_ns("nftn")
        for b in NEW_KINDS:
            for stage in (b, *((b.inner,) if b.inner else ())):
                text = nats.recipe(stage, RouterSide(**ARGS, **ARGS6)).nft  # type: ignore[arg-type]
                lab.apply_nft(ns, text, check=True)


def test_new_kinds_rules_say_what_they_do() -> None:
    by = {b.name: nats.recipe(b, RouterSide(**ARGS, **ARGS6)).nft for b in NEW_KINDS}  # type: ignore[arg-type]
    assert "tcp dport { 80, 443 } accept" in by["egress-443"] and "meta l4proto udp drop" in by["egress-443"]
    assert "jhash ip saddr . th sport mod 65536" in by["eim-no-preserve"]
    assert "numgen inc mod 256 << 8" in by["symmetric-sequential"]
    assert "snat ip6 prefix to 2001:db8:2:1::/64" in by["nptv6"] and "table ip6 natkit6" in by["nptv6"]
    assert "table ip6 natkit6" in by["ipv6-firewall"] and "prefix" not in by["ipv6-firewall"]
    plan = nats.recipe(nats.get("nat64").model, RouterSide(**ARGS, **ARGS6)).nat64  # type: ignore[arg-type]
    assert plan is not None and "prefix 2001:db8:64::/96" in plan.tayga_conf("/tmp/x")
