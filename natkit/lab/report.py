"""Terminal rendering of a lab run: progress lines, the matrix per path, probes, summary.

Cells of the matrix (row = caller's NAT, column = callee's NAT, upper triangle):

====  ==========================================================================
D     connected directly between the NATs' public addresses, as expected
R     connected through the TURN relay, as expected
L     connected over the LAN (host candidates), as expected
H     connected through the NAT's hairpin, as expected
.     failed, as expected
!C    connected although the NATs' behaviours say it cannot (unexpected)
!F    failed although it should connect
!E    connected as expected, but the packet evidence contradicts the selected pair
!R    connected as expected, but over another route than expected
====  ==========================================================================
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

__all__ = ["Progress", "case_line", "cell", "render"]

ROUTE_LETTER = {"direct": "D", "relay": "R", "lan": "L", "hairpin": "H"}
MATRIX_PATHS = ("host", "srflx", "relay", "relay-tls")
FAMILY_TITLE = {"ipv4": "IPv4", "ipv6": "IPv6", "nat64": "IPv6-only vs IPv4-only (NAT64)"}


def cell(case: dict[str, Any]) -> str:
    """The short text of one matrix cell."""
    if case["observed"] != case["expected"]:
        return "!C" if case["observed"] == "connected" else "!F"
    if case["observed"] != "connected":
        return "."
    ev = case.get("evidence")
    if ev is not None and not ev.get("consistent"):
        return "!E"
    if case.get("route") != case.get("expected_route"):
        return "!R"
    return ROUTE_LETTER.get(case.get("route") or "", "?")


def _matrix(result: dict[str, Any], path: str, names: list[str], family: str = "ipv4") -> list[str]:
    mine = [c for c in result["cases"] if c["path"] == path and c.get("family", "ipv4") == family]
    grid = {tuple(c["nats"]): cell(c) for c in mine if not c.get("same_lan")}
    if any(c.get("caller_stack", "aiortc") != c.get("callee_stack", "aiortc") for c in result["cases"]):
        return _ordered_matrix(mine, path, names, grid, family)
    rows = [n for n in names if any(n in k for k in grid)]
    if not rows:
        return []
    width = max(len(n) for n in rows)
    col = max(4, *(len(_short(n)) + 1 for n in rows))
    title = path if family == "ipv4" else f"{path} over {FAMILY_TITLE.get(family, family)}"
    lines = [f"  {title}", "  " + " " * width + "".join(_short(n).rjust(col) for n in rows)]
    for i, a in enumerate(rows):
        cells = []
        for j, b in enumerate(rows):
            text = grid.get((a, b)) or grid.get((b, a)) if j >= i else ""
            cells.append((text or ("" if j < i else " ")).rjust(col))
        lines.append("  " + a.ljust(width) + "".join(cells))
    for c in mine:
        if c.get("same_lan"):
            lines.append(f"  {c['nats'][0]} (two peers, one LAN): {cell(c)}")
    return lines


def _probe_value(key: str, value: Any) -> str:
    if key == "udp_lifetime_s":  # claimed: seconds; measured: the bracket it lies in
        if isinstance(value, dict):
            return f"lifetime {value.get('min')}..{value.get('max')} s"
        return f"lifetime {value} s"
    return str(value)


def _ordered_matrix(mine: list[dict[str, Any]], path: str, names: list[str], grid: dict[Any, str],
                    family: str = "ipv4") -> list[str]:
    """Rows: the callers' NATs, columns: the callees' NATs that occur (two different stacks:
    who is behind which NAT matters, so every cell is its own case)."""
    rows = [n for n in names if any(k[0] == n for k in grid)]
    cols = [n for n in names if any(k[1] == n for k in grid)]
    lines: list[str] = []
    if rows:
        width = max(len(n) for n in rows)
        col = max(4, *(len(_short(n)) + 1 for n in cols))
        title = path if family == "ipv4" else f"{path} over {FAMILY_TITLE.get(family, family)}"
        lines = [f"  {title}", "  " + " " * width + "".join(_short(n).rjust(col) for n in cols)]
        for a in rows:
            lines.append("  " + a.ljust(width) + "".join((grid.get((a, b)) or "").rjust(col) for b in cols))
    for c in mine:
        if c.get("same_lan"):
            lines = lines or [f"  {path}"]
            lines.append(f"  {c['nats'][0]} (two peers, one LAN): {cell(c)}")
    return lines


def _short(name: str) -> str:
    parts = name.split("-")
    return "".join(p[:4] for p in parts)[:8] if len(name) > 8 else name


def _paths(cases: list[dict[str, Any]]) -> list[str]:
    """The grid paths of ``cases``: the lab's own first, then any other (longevity cases get a
    line each, not a grid)."""
    seen = list(dict.fromkeys(str(c["path"]) for c in cases))
    return [p for p in MATRIX_PATHS if p in seen] + [p for p in seen if p not in (*MATRIX_PATHS, "longevity")]


def render(result: dict[str, Any], out: TextIO = sys.stdout) -> None:
    """Print the stack × stack summary, the NAT matrix of every path (for the reference stack
    with itself; for another stack pair when it has a mismatch), the probes, the mismatches and
    the summary."""
    from natkit.lab.stack_report import pair_key, render_stack_summary

    names: list[str] = []
    for c in result["cases"]:
        for n in c["nats"]:
            if n not in names and not c.get("same_lan"):
                names.append(n)
    w = out.write
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in result["cases"]:
        groups.setdefault(pair_key(c), []).append(c)
    reference = (result.get("plan") or {}).get("reference", "aiortc")
    shown = [k for k in groups if k == (reference, reference)] or list(groups)[:1]
    if len(groups) > 1:
        render_stack_summary(result, groups, out)
        shown += [k for k, v in groups.items() if k not in shown and not all(c.get("pass") for c in v)]
    for key in shown:
        sub = {**result, "cases": groups[key]}
        title = f"{key[0]} -> {key[1]}: " if len(groups) > 1 else ""
        w(f"\n{title}matrix (rows: caller's NAT, columns: callee's NAT)\n")
        for path in _paths(groups[key]):
            for family in FAMILY_TITLE:
                lines = _matrix(sub, path, names, family)
                if lines:
                    w("\n".join(lines) + "\n\n")
        for c in groups[key]:
            if c["path"] == "longevity":
                w(f"  longevity {c['nats'][0]} x {c['nats'][1]}: {cell(c)}  ({c['reason']})\n")
    for note in (result.get("lab") or {}).get("not_applied") or []:
        w(f"  not applied: {note}\n")
    w("  D direct  R relay  L LAN  H hairpin  . failed as expected\n")
    w("  !C/!F unexpectedly connected/failed  !E evidence contradicts  !R unexpected route\n\n")
    if result["probes"]:
        w("probes (natkit probe inside each NAT, against the lab's RFC 5780 responder)\n")
        width = max(len(p["nat"]) for p in result["probes"])
        for p in result["probes"]:
            obs = p["observed"]
            # the observed values of the expected keys, in their order
            got = " / ".join(_probe_value(k, obs.get(k)) for k in p["expected"])
            want = " / ".join(_probe_value(k, v) for k, v in p["expected"].items())
            mark = "ok " if p["pass"] else "BAD"
            w(f"  {mark} {p['nat'].ljust(width)}  expected {want:<58} observed {got}\n")
        w("\n")
    if result.get("browser_cases"):
        w("browser cases (headless Chromium calling the lab's aiortc peer; what getStats says)\n")
        for c in result["browser_cases"]:
            sel = c.get("selected") or {}
            via = ""
            if c["observed"] == "connected":
                local, remote = sel.get("local") or {}, sel.get("remote") or {}
                via = f" via {local.get('type')} -> {remote.get('type')}, RTT {c.get('rtt_ms')} ms"
            w(
                f"  {'ok ' if c['pass'] else 'BAD'} {c['nats'][0]} -> {c['nats'][1]} {c['path']}: "
                f"expected {c['expected']}, observed {c['observed']}{via}\n"
            )
            ev = c.get("evidence")
            if ev:
                verdict = "agrees" if ev.get("consistent") else "CONTRADICTS getStats"
                w(f"      evidence {verdict}: {ev.get('detail')}\n")
            elif c["observed"] == "connected":
                w("      evidence: none (no capture)\n")
            if c["observed"] != c["expected"] and c.get("error"):
                w(f"      error: {c['error']}\n")
        w("\n")
    bad = [c for c in result["cases"] if not c["pass"]]
    for c in bad:
        a, b = c["nats"]
        ev = c.get("evidence") or {}
        who = "" if pair_key(c) == ("aiortc", "aiortc") else f" [{c.get('caller_stack')} -> {c.get('callee_stack')}]"
        w(
            f"  MISMATCH {a} x {b} {c['path']}{who}: expected {c['expected']}"
            f"{' via ' + c['expected_route'] if c.get('expected_route') else ''}, observed {c['observed']}"
            f"{' via ' + c['route'] if c.get('route') else ''}"
            f"{'; ' + c['error'] if c.get('error') and c['observed'] != c['expected'] else ''}"
            f"{'; evidence: ' + ev['detail'] if ev and not ev.get('consistent') else ''}\n"
        )
    for e in result.get("errors", []):
        w(f"  ERROR {e}\n")
    # Cases that connected only on their second attempt: say so, with the first error (a
    # stack that fails now and then shows up here, not hidden by the verdict).
    again = [c for c in result["cases"] if c.get("attempts", 1) > 1]
    if again:
        ok = sum(c["pass"] for c in again)
        w(f"  {len(again)} cases expected to connect failed and ran again: {ok} passed on the second attempt\n")
        for c in again[:20]:
            a, b = c["nats"]
            w(f"    {'ok ' if c['pass'] else 'BAD'} {a} x {b} {c['path']} [{c.get('caller_stack')} -> "
              f"{c.get('callee_stack')}]: first {c.get('first_error')}"
              f"{''.join('; ' + str(n) for n in c.get('restarted') or [])}\n")
        if len(again) > 20:
            w(f"    ... and {len(again) - 20} more (--json: cases[].attempts, first_error)\n")
    n = len(result["cases"])
    conn = sum(c["observed"] == "connected" and c["pass"] for c in result["cases"])
    failed_ok = sum(c["observed"] != "connected" and c["pass"] for c in result["cases"])
    probes_ok = sum(p["pass"] for p in result["probes"])
    w(
        f"{'PASS' if result['pass'] else 'FAIL'}: {n} cases: {conn} connected, {failed_ok} failed as expected, "
        f"{len(bad)} unexpected; probes {probes_ok}/{len(result['probes'])}; "
        f"{result['duration_s']:.1f} s (turn engine: {result['turn_engine']})\n"
    )


class Progress:
    """Progress while running: one updating line on a terminal, plain lines otherwise.

    A callable for :data:`natkit.lab.orchestrate.Progress` events (stage, probe, case)."""

    def __init__(self, out: TextIO = sys.stderr) -> None:
        self.out = out
        self.tty = out.isatty()

    def __call__(self, kind: str, info: dict[str, Any]) -> None:
        if kind == "stage":
            self._line(info["text"], final=True)
        elif kind == "case":
            self._line(*case_line(info["case"], info["done"], info["total"], info["tally"]))
        elif kind == "retry":
            c = info["case"]
            a, b = c.case.nats
            self._line(f"again: {a} x {b} {c.case.path} [{c.case.stacks[0]} -> {c.case.stacks[1]}]: {c.observed}",
                       final=not c.as_expected)
        elif kind == "probe":
            p = info["probe"]
            obs = p.observed
            self._line(
                f"probe {p.nat}: {obs.get('nat_type')} ({obs.get('mapping')} / {obs.get('filtering')})"
                f"{'' if p.passed else '  MISMATCH'}",
                final=not p.passed,
            )

    def _line(self, text: str, final: bool) -> None:
        if self.tty:
            self.out.write("\r\x1b[K" + text + ("\n" if final else ""))
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.tty:
            self.out.write("\r\x1b[K")
            self.out.flush()


def case_line(case: Any, done: int, total: int, tally: Any) -> tuple[str, bool]:
    """The progress line of one finished case (a CaseResult) and whether it stays on screen
    (an unexpected outcome does). Expected failures are counted as such, never as failures."""
    a, b = case.case.nats
    stacks = "" if case.case.stacks == ("aiortc", "aiortc") else f" [{case.case.stacks[0]} -> {case.case.stacks[1]}]"
    if case.as_expected:
        what = case.observed if case.observed == "connected" else "failed as expected"
    else:
        what = f"{case.observed}, UNEXPECTED (expected {case.expected})"
    text = (
        f"[{done}/{total}] {a} x {b} {case.case.path}{stacks}: {what}  ({tally.connected} connected, "
        f"{tally.failed_as_expected} failed as expected, {tally.unexpected} unexpected)"
    )
    return text, not case.as_expected
