"""The benchmarks' C load generators as processes of their own (to pin each to a core).

``python -m natkit.bench.loadgen TOOL ARGS...`` runs one tool of the extension modules built
at install time (nothing is compiled at run time), its loop in C with the GIL released:

- ``turn MODE SERVER_IP PORT USER KEYHEX [options]``: the TURN load driver, and
  ``turn null IP PORT [MAX_SECONDS]`` its null relay (see natkit/bench/_turnload.c);
- ``stun-flood IP PORT SECONDS SOCKETS WINDOW``: the STUN Binding load generator; prints one
  ``key=value`` line (responses, other, sent, refills, send_errors, seconds, rate, cpu, gso);
- ``stun-reflect IP PORT [MAX_SECONDS]``: the bare C Binding reflector (the ceiling).

The tools have no pure-Python fallback, so ``NATKIT_NO_CEXT`` (which picks the servers' paths)
does not stop them.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

from natkit.server import _native

TOOLS = {
    "turn": "natkit.bench._turnload",
    "stun-flood": "natkit.bench._stunload",
    "stun-reflect": "natkit.bench._stunload",
}


def command(tool: str) -> list[str]:
    """The command line that starts ``tool`` (arguments follow)."""
    return [sys.executable, "-m", "natkit.bench.loadgen", tool]


def missing(tool: str) -> str:
    """Why ``tool`` cannot run here ("" when it can), with what to do about it."""
    module, why = _native.load(TOOLS[tool], honour_env=False)
    if module is not None:
        return ""
    return (
        f"the benchmark's C load generator is not available ({why}): reinstall natkit where "
        "gcc and the Python headers are installed (bash .ci/bootstrap does), "
        "without NATKIT_NO_CEXT set while it builds"
    )


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] not in TOOLS:
        print(f"usage: loadgen {{{'|'.join(TOOLS)}}} ARGS...", file=sys.stderr)
        return 2
    tool, args = argv[0], list(argv[1:])
    why = missing(tool)
    if why:
        print(f"loadgen: {why}", file=sys.stderr)
        return 2
    module, _ = _native.load(TOOLS[tool], honour_env=False)
    assert module is not None
    # The loop runs in C without returning to Python: Ctrl-C must end it, not wait for it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        if tool == "turn":
            return int(module.main(["turnload", *args]))
        if tool == "stun-flood":
            ip, port, seconds, sockets, window = args
            r = module.flood(ip, int(port), float(seconds), int(sockets), int(window))
            rate = r["responses"] / r["seconds"] if r["seconds"] > 0 else 0.0
            print(
                f"responses={r['responses']} other={r['other']} sent={r['sent']} "
                f"refills={r['refills']} send_errors={r['send_errors']} "
                f"seconds={r['seconds']:.3f} rate={rate:.0f} cpu={r['cpu_seconds']:.3f} "
                f"gso={int(r['gso'])}",
                flush=True,
            )
            return 0
        ip, port, *rest = args
        module.reflect(ip, int(port), float(rest[0]) if rest else 600.0)
        return 0
    except ValueError as exc:  # bad arguments (the C side checks ranges too)
        print(f"loadgen {tool}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"loadgen {tool}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
