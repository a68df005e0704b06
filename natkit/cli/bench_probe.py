"""`natkit bench probe`."""

from __future__ import annotations

import argparse
from typing import Any

from natkit.cli._common import not_built


def register(sub: Any) -> None:
    help_text = "probe time of natkit vs turnutils_natdiscovery on lab NATs"
    parser: argparse.ArgumentParser = sub.add_parser("probe", help=help_text, description=help_text)
    parser.set_defaults(func=not_built("bench probe"))
