"""A topology asking for what the host lacks stops before anything is built, in one line."""

from __future__ import annotations

import pytest

from natkit.errors import PrerequisiteError
from natkit.lab import prereqs
from natkit.lab.topology import loads

TOPO = """
[internet]
subnet = "203.0.113.0/24"
subnet6 = "2001:db8::/64"
[stun]
addresses = ["203.0.113.2", "203.0.113.3"]
[turn]
address = "203.0.113.4"
[signaling]
address = "203.0.113.4"
[[nat]]
name = "mobile"
type = "nat64"
"""


def test_a_missing_tool_names_the_nat_and_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prereqs, "missing", lambda need: need == "tayga")
    with pytest.raises(PrerequisiteError) as err:
        prereqs.check_kinds(loads(TOPO))
    text = str(err.value)
    assert "'mobile' (nat64)" in text and "apt-get install tayga" in text and "\n" not in text


def test_an_ipv6_kind_on_an_ipv4_internet_is_a_config_error() -> None:
    from natkit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"internet\.subnet6"):
        loads(TOPO.replace('subnet6 = "2001:db8::/64"\n', ""))
