"""What a peer signals on each path: one answer for every stack (command peers, browsers, the retry)."""

from __future__ import annotations

import pytest

from natkit.errors import ConfigError
from natkit.lab.stacks import browser, command
from natkit.lab.stacks.base import candidate_types
from natkit.lab.topology import PATHS


def test_every_path_of_the_lab_has_its_types() -> None:
    assert {p: candidate_types(p) for p in PATHS} == {
        "host": ["host"], "srflx": ["srflx"], "relay": ["relay"], "relay-tls": ["relay"], "longevity": ["srflx"]}


def test_the_stacks_share_one_answer() -> None:
    assert command.candidate_types is candidate_types and browser.candidate_types is candidate_types


def test_an_unknown_path_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown path 'tcp'"):
        candidate_types("tcp")
