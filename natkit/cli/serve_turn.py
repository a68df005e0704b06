"""`natkit serve turn`."""

from __future__ import annotations

import argparse
from typing import Any

from natkit.cli._common import not_built


def register(sub: Any) -> None:
    help_text = "run the TURN relay (RFC 8656), safe by default"
    parser: argparse.ArgumentParser = sub.add_parser("turn", help=help_text, description=help_text)
    parser.set_defaults(func=not_built("serve turn"))
