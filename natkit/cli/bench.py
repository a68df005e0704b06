"""`natkit bench stun|turn|probe`: each benchmark lives in bench_<name>.py."""

from __future__ import annotations

from typing import Any

from natkit.cli import bench_probe, bench_stun, bench_turn
from natkit.cli._common import verb_parser


def register(sub: Any, verb: str, help_text: str) -> None:
    parser = verb_parser(sub, verb, help_text, help_text, [
        "natkit bench stun --seconds 3 --rounds 1    # Binding responses/s, natkit / coturn / ceiling",
        "natkit bench turn --json > turn.json        # relay rates, natkit vs coturn",
    ])
    benches = parser.add_subparsers(dest="bench", metavar="BENCH", parser_class=type(parser))
    benches.required = True
    bench_stun.register(benches)
    bench_turn.register(benches)
    bench_probe.register(benches)
