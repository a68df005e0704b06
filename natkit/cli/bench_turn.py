"""`natkit bench turn`."""

from __future__ import annotations

import argparse
from typing import Any

from natkit.cli._common import not_built


def register(sub: Any) -> None:
    help_text = "TURN relay throughput and allocations, natkit vs coturn"
    parser: argparse.ArgumentParser = sub.add_parser("turn", help=help_text, description=help_text)
    parser.set_defaults(func=not_built("bench turn"))
