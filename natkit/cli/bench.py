"""`natkit bench stun|turn|probe`: each benchmark lives in bench_<name>.py."""

from __future__ import annotations

import argparse
from typing import Any

from natkit.cli import bench_probe, bench_stun, bench_turn


def register(sub: Any, verb: str, help_text: str) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(verb, help=help_text, description=help_text)
    benches = parser.add_subparsers(dest="bench", metavar="BENCH", parser_class=type(parser))
    benches.required = True
    bench_stun.register(benches)
    bench_turn.register(benches)
    bench_probe.register(benches)
