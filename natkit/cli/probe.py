"""`natkit probe`."""

from __future__ import annotations

import argparse
from typing import Any

from natkit.cli._common import not_built


def register(sub: Any, verb: str, help_text: str) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(verb, help=help_text, description=help_text)
    parser.set_defaults(func=not_built(verb))
