"""`natkit bench stun|turn|probe`: each benchmark lives in bench_<name>.py."""

from __future__ import annotations

import argparse
from typing import Any

from natkit.cli import bench_probe, bench_stun, bench_turn
from natkit.cli._common import examples


def register(sub: Any, verb: str, help_text: str) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        verb, help=help_text, description=help_text,
        epilog=examples(
            "natkit bench stun --seconds 3 --rounds 1    # Binding responses/s, natkit / coturn / ceiling",
            "natkit bench turn --json > turn.json        # relay rates, natkit vs coturn",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    benches = parser.add_subparsers(dest="bench", metavar="BENCH", parser_class=type(parser))
    benches.required = True
    bench_stun.register(benches)
    bench_turn.register(benches)
    bench_probe.register(benches)
