"""`natkit serve stun`."""

from __future__ import annotations

import argparse
from typing import Any

from natkit.cli._common import not_built


def register(sub: Any) -> None:
    help_text = "run the STUN responder (RFC 8489, RFC 5780 mode with --alternate-ip)"
    parser: argparse.ArgumentParser = sub.add_parser("stun", help=help_text, description=help_text)
    parser.set_defaults(func=not_built("serve stun"))
