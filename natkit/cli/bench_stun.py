"""`natkit bench stun`."""

from __future__ import annotations

import argparse
from typing import Any

from natkit.cli._common import not_built


def register(sub: Any) -> None:
    help_text = "Binding responses/s of natkit vs coturn, per core"
    parser: argparse.ArgumentParser = sub.add_parser("stun", help=help_text, description=help_text)
    parser.set_defaults(func=not_built("bench stun"))
