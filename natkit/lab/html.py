"""The lab's report as one self-contained HTML file (``natkit lab run --html FILE``).

:func:`render_html` turns the lab's JSON result (:meth:`natkit.lab.results.LabResult.to_json`)
and the :class:`~natkit.lab.topology.Topology` into a page people can look at and share: when,
where and with which natkit it ran, a summary in plain words (how many NAT pairs need TURN,
where TURN over TCP or TLS on 443 is needed, which calls survived idling past the mapping
lifetime), the matrix as a coloured NAT × NAT grid per address family (IPv4, IPv6, NAT64) and
path (host / srflx / relay / relay-tls / longevity), each with only the NATs that have a case
there, with expected vs observed in every cell (relay cells say UDP, TCP or TLS), a detail
panel (and a hover title) with the selected pair, RTT, time to connect, the expectation's
reason and the packet evidence, the browser cases, the probe results per NAT, the topology (a
diagram and a table) and the run's timing.

Everything is inline (CSS, a few lines of JavaScript, an SVG, the data as JSON): the file
fetches nothing, so it opens from disk, from a mail attachment or in a CI artifact viewer.

Cell colours (``class`` names in parentheses): green = connected as expected (``ok-connected``),
grey = failed as expected (``ok-failed``), red = observed differs from expected (``mismatch``),
amber = the outcome matches but the route or the packet evidence contradicts it (``suspect``).
"""

from __future__ import annotations

import html
import json
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from natkit.errors import ConfigError

__all__ = ["GENERATOR", "cell_state", "plain_summary", "relay_transports", "render_html", "write_html"]

# The mark by which natkit recognises its own report (it then may overwrite the file).
GENERATOR = '<meta name="generator" content="natkit">'

PATHS = ("host", "srflx", "relay", "relay-tls", "longevity")
_PATH_TITLES = {
    "host": "host: no ICE servers, host candidates only",
    "srflx": "srflx: STUN only, server-reflexive candidates signaled",
    "relay": "relay: TURN only (UDP and TCP), relay policy",
    "relay-tls": "relay-tls: TURN over TLS on port 443 only (turns:)",
    "longevity": "longevity: srflx, then idle past the NATs' UDP mapping lifetime, then echo again",
}
FAMILIES = ("ipv4", "ipv6", "nat64")
_FAMILY_TITLES = {
    "ipv4": "IPv4",
    "ipv6": "IPv6 (both peers have it)",
    "nat64": "IPv6-only peer (NAT64) against a peer without IPv6",
}
_FAMILY_SHORT = {"ipv4": "", "ipv6": " over IPv6", "nat64": " across NAT64 (IPv6-only × IPv4-only)"}
_SYMBOL = {"connected": "✓", "failed": "✗"}


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _family(case: Mapping[str, Any]) -> str:
    return str(case.get("family") or "ipv4")  # documents before issue 10 carry no family


def cell_state(case: Mapping[str, Any]) -> str:
    """``ok-connected`` | ``ok-failed`` | ``mismatch`` | ``suspect`` (see the module doc)."""
    expected, observed = case.get("expected"), case.get("observed")
    if expected != observed:
        return "mismatch"
    if case.get("pass") is False:
        return "suspect"
    if observed == "connected":
        ev = case.get("evidence")
        if isinstance(ev, Mapping) and ev.get("consistent") is False:
            return "suspect"
        if case.get("expected_route") and case.get("route") and case["route"] != case["expected_route"]:
            return "suspect"
        return "ok-connected"
    return "ok-failed"


def _endpoint(c: Any) -> str:
    if not isinstance(c, Mapping):
        return "?"
    kind = c.get("type", "?")
    proto = c.get("relay_transport") or c.get("relay_protocol") or c.get("protocol")
    addr = f"{c.get('address', '?')}:{c.get('port', '?')}"
    return f"{kind} {addr}" + (f" ({proto})" if proto and kind == "relay" else "")


def _relay_proto(sel: Any) -> str | None:
    """UDP or TCP: how a peer reaches the TURN server for its selected relay candidate."""
    if not isinstance(sel, Mapping) or not isinstance(sel.get("local"), Mapping):
        return None
    local = sel["local"]
    if local.get("type") != "relay":
        return None
    proto = local.get("relay_transport") or local.get("relay_protocol")
    return str(proto).upper() if proto else None


def relay_transports(case: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(caller's, callee's) transport to the TURN server in a connected relay case."""
    return _relay_proto(case.get("selected")), _relay_proto(case.get("callee_selected"))


def _pair_text(sel: Any) -> str:
    if not isinstance(sel, Mapping):
        return "none"
    return f"{_endpoint(sel.get('local'))} → {_endpoint(sel.get('remote'))}"


def _ms(value: Any) -> str:
    if not isinstance(value, int | float):
        return "–"
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def _case_title(case: Mapping[str, Any]) -> str:
    a, b = [*case.get("nats", ()), "?", "?"][:2]
    fam = _FAMILY_SHORT.get(_family(case), f" over {_family(case)}")
    lines = [f"{a} → {b} over {case.get('path')}{fam}" + (" (same LAN)" if case.get("same_lan") else "")]
    route = f" via {case['expected_route']}" if case.get("expected_route") else ""
    lines.append(f"expected: {case.get('expected')}{route}")
    route = f" via {case['route']}" if case.get("route") else ""
    lines.append(f"observed: {case.get('observed')}{route}")
    if case.get("observed") == "connected":
        lines.append(f"selected: {_pair_text(case.get('selected'))}"
                     + (f" ({case['selected_family']})" if case.get("selected_family") else ""))
        if case.get("callee_selected"):
            lines.append(f"callee selected: {_pair_text(case.get('callee_selected'))}")
        lines.append(f"connect {_ms(case.get('t_connect_ms'))}, RTT {_ms(case.get('rtt_ms'))}")
    ev = case.get("evidence")
    if isinstance(ev, Mapping):
        verdict = "agrees" if ev.get("consistent") else "CONTRADICTS"
        lines.append(f"evidence {verdict}: {ev.get('detail', '')}")
    if case.get("reason"):
        lines.append(f"why: {case['reason']}")
    if case.get("error") and case.get("observed") != "connected":
        lines.append(f"error: {case['error']}")
    return "\n".join(lines)


# -- pieces of the page -------------------------------------------------------------------------


def _nat_order(results: Mapping[str, Any], topology: Any) -> tuple[list[str], list[str]]:
    """(matrix NATs, same-LAN NATs) in topology order, else in order of appearance."""
    # Only the NATs this run used (a run with --only uses a part of the topology).
    used = {n for c in results.get("cases", []) for n in c.get("nats", [])}
    if topology is not None:
        matrix = [n.name for n in topology.nats if not n.same_lan and n.name in used]
        lan = [n.name for n in topology.nats if n.same_lan and n.name in used]
    else:
        matrix, lan = [], []
    for c in results.get("cases", []):
        names = list(c.get("nats", []))
        target = lan if c.get("same_lan") else matrix
        for n in names:
            if n not in matrix and n not in lan:
                target.append(n)
    return matrix, lan


def _cell(case: Mapping[str, Any] | None, index: int | None) -> str:
    if case is None or index is None:
        return '<td class="cell none" title="not run">·</td>'
    state = cell_state(case)
    observed = str(case.get("observed"))
    symbol = _SYMBOL.get(observed, "?")
    sub = []
    if case.get("observed") == "connected":
        route = case.get("route") or ""
        if route == "relay":
            a, b = relay_transports(case)
            if a or b:
                route = f"relay {a or '?'}/{b or '?'}" if a != b else f"relay {a}"
        sub.append(f'<span class="route">{_e(route)}</span>')
        if isinstance(case.get("rtt_ms"), int | float):
            sub.append(f'<span class="rtt">{_e(_ms(case["rtt_ms"]))}</span>')
    if state == "mismatch":
        sub.append(f'<span class="exp">expected {_e(_SYMBOL.get(str(case.get("expected")), "?"))}</span>')
    elif state == "suspect":
        sub.append('<span class="exp">evidence?</span>')
    return (
        f'<td class="cell {state}" data-case="{index}" data-expected="{_e(case.get("expected"))}" '
        f'data-observed="{_e(observed)}" title="{_e(_case_title(case))}" tabindex="0">'
        f'<span class="sym">{symbol}</span>{"".join(sub)}</td>'
    )


def _legacy_browser(c: Mapping[str, Any]) -> bool:
    """A browser case of a report made before every case named its stacks."""
    return "browser" in c and "caller_stack" not in c


def _pair_of(c: Mapping[str, Any]) -> tuple[str, str]:
    if _legacy_browser(c):
        return ("chromium", "aiortc")
    return str(c.get("caller_stack", "aiortc")), str(c.get("callee_stack", "aiortc"))


def _grid(
    path: str, family: str, cases: Sequence[Mapping[str, Any]], matrix: list[str], lan: list[str],
    pair: tuple[str, str] = ("aiortc", "aiortc"), anchor: str = "",
) -> str:
    """One NAT x NAT grid: the cases of stack ``pair`` over ``path`` and ``family``, rows and
    columns only for the NATs that have a case there (an IPv6 grid has the dual-stack NATs, a
    longevity grid the NATs with a longevity case); ordered (caller rows, callee columns) for
    two different stacks."""
    index: dict[tuple[str, str], int] = {}
    lan_index: dict[str, int] = {}
    ordered = pair[0] != pair[1]  # two stacks: who is behind which NAT matters
    for i, c in enumerate(cases):
        if c.get("path") != path or _legacy_browser(c) or _pair_of(c) != pair or _family(c) != family:
            continue
        nats = list(c.get("nats", []))
        if len(nats) != 2:
            continue
        if c.get("same_lan"):
            lan_index[nats[0]] = i
        else:
            index[(nats[0], nats[1])] = i
            if not ordered:
                index.setdefault((nats[1], nats[0]), i)
    if not index and not lan_index:
        return ""
    used = {n for k in index for n in k}
    rows_of = cols_of = [n for n in matrix if n in used] + sorted(used - set(matrix))
    if ordered:
        rows_of = [n for n in rows_of if any(k[0] == n for k in index)]
        cols_of = [n for n in cols_of if any(k[1] == n for k in index)]
    counts = {"pass": 0, "total": 0}
    for i in [*set(index.values()), *lan_index.values()]:
        counts["total"] += 1
        counts["pass"] += cell_state(cases[i]) in ("ok-connected", "ok-failed")
    head = "".join(f'<th class="col" scope="col"><span>{_e(n)}</span></th>' for n in cols_of)
    rows = []
    for row, a in enumerate(rows_of):
        cells = []
        for col, b in enumerate(cols_of):
            if col < row and not ordered:  # one cell per unordered pair: the upper triangle
                cells.append('<td class="cell lower"></td>')
                continue
            at = index.get((a, b))
            cells.append(_cell(cases[at] if at is not None else None, at))
        rows.append(f'<tr><th class="row" scope="row">{_e(a)}</th>{"".join(cells)}</tr>')
    for name in [*lan, *sorted(set(lan_index) - set(lan))]:
        at = lan_index.get(name)
        if at is None:
            continue
        rows.append(
            f'<tr class="lanrow"><th class="row" scope="row">{_e(name)}</th>{_cell(cases[at], at)}'
            f'<td class="lannote" colspan="{max(1, len(cols_of) - 1)}">two peers on one LAN '
            "behind one NAT</td></tr>"
        )
    ok = counts["pass"] == counts["total"]
    sid = f"path-{anchor}{path}" if family == "ipv4" else f"path-{anchor}{path}-{family}"
    title = _PATH_TITLES.get(path, path)
    return (
        f'<section class="path" id="{_e(sid)}"><h3>{_e(title)} '
        f'<span class="count {"good" if ok else "bad"}">{counts["pass"]}/{counts["total"]} as '
        "expected</span></h3>"
        f'<table class="grid" data-path="{_e(path)}" data-family="{_e(family)}" '
        f'data-pair="{_e(pair[0])}→{_e(pair[1])}"><thead><tr><th class="corner">caller ↓ '
        f"callee →</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def _grids(cases: Sequence[Mapping[str, Any]], matrix: list[str], lan: list[str],
           pair: tuple[str, str] = ("aiortc", "aiortc"), anchor: str = "") -> str:
    """Every grid of stack ``pair``: per address family (a heading each when the run has more
    than IPv4), per path; paths or families no case of the pair has are left out."""
    grid_cases = [c for c in cases if not _legacy_browser(c) and _pair_of(c) == pair]
    families = [f for f in FAMILIES if any(_family(c) == f for c in grid_cases)]
    families += sorted({_family(c) for c in grid_cases} - set(families))
    paths = _paths_of(grid_cases)
    out = []
    for family in families:
        grids = "".join(_grid(p, family, cases, matrix, lan, pair, anchor) for p in paths)
        if not grids:
            continue
        n = sum(_family(c) == family for c in grid_cases)
        heading = (f'<h3 class="family" id="family-{anchor}{_e(family)}">{_e(_FAMILY_TITLES.get(family, family))} '
                   f'<span class="muted">({n} cases)</span></h3>') if families != ["ipv4"] else ""
        out.append(f'{heading}<div class="paths" data-family="{_e(family)}">{grids}</div>')
    return "".join(out)


def _fmt_probe(value: Any) -> str:
    if isinstance(value, Mapping):
        if set(value) == {"ip", "port"}:
            return f"{value['ip']}:{value['port']}"
        return ", ".join(f"{k}: {_fmt_probe(v)}" for k, v in value.items()) or "–"
    return "–" if value is None else str(value)


def _probes(probes: Iterable[Mapping[str, Any]]) -> str:
    rows = []
    for p in probes:
        good = bool(p.get("pass"))
        rows.append(
            f'<tr class="probe {"ok" if good else "bad"}" data-nat="{_e(p.get("nat"))}">'
            f"<td>{_e(p.get('nat'))}</td><td>{_e(p.get('type', ''))}</td>"
            f"<td>{_e(_fmt_probe(p.get('expected')))}</td>"
            f"<td>{_e(_fmt_probe(p.get('observed')))}</td>"
            f'<td class="verdict">{"✓ pass" if good else "✗ FAIL"}</td></tr>'
        )
    if not rows:
        return '<p class="muted">No probes in this run.</p>'
    return (
        '<table class="probes"><thead><tr><th>NAT</th><th>type</th><th>expected</th>'
        f"<th>observed (natkit probe)</th><th></th></tr></thead><tbody>{''.join(rows)}"
        "</tbody></table>"
    )


def _browser_cases(cases: Sequence[Mapping[str, Any]], only: set[int]) -> str:
    rows = []
    for i, c in enumerate(cases):
        b = c.get("browser")
        if i not in only:
            continue
        b = b if isinstance(b, Mapping) else {}
        state = cell_state(c) if c.get("expected") else (
            "ok-connected" if c.get("observed") == "connected" else "mismatch"
        )
        nats = " → ".join(str(n) for n in c.get("nats", [])) or "–"
        types = f"local {', '.join(b.get('local_types', [])) or '–'}; remote {', '.join(b.get('remote_types', [])) or '–'}"
        rows.append(
            f'<tr class="bcase {state}" data-case="{i}"><td>{_e(nats)}</td><td>{_e(c.get("path"))}</td>'
            f"<td>{_e(c.get('expected', '–'))}</td>"
            f'<td class="obs">{_e(_SYMBOL.get(str(c.get("observed")), "?"))} {_e(c.get("observed"))}</td>'
            f"<td>{_e(_pair_text(b.get('selected')))}</td><td>{_e(types)}</td>"
            f'<td class="num">{_e(_ms(c.get("rtt_ms")))}</td><td class="ev">{_e(_evidence_text(c))}</td>'
            f'<td>{_e(b.get("error") or c.get("error") or "")}</td></tr>'
        )
    if not rows:
        return ""
    return (
        '<section id="browser"><h2>Browser cases (headless Chromium ↔ aiortc)</h2>'
        '<p class="muted">What Chromium itself reports through getStats(): the selected pair and '
        "the candidate types it gathered and received, next to what the capture on the internet "
        "segment shows of that pair.</p>"
        '<table class="probes"><thead><tr><th>NATs (Chromium → aiortc)</th><th>path</th>'
        "<th>expected</th><th>observed</th><th>Chromium's selected pair</th><th>candidate types</th>"
        f"<th>RTT</th><th>packet evidence</th><th>error</th></tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def _paths_of(cases: Iterable[Mapping[str, Any]]) -> list[str]:
    seen = list(dict.fromkeys(str(c.get("path")) for c in cases))
    return [p for p in PATHS if p in seen] + [p for p in seen if p not in PATHS]


def _slug(pair: tuple[str, str]) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in f"{pair[0]}--{pair[1]}")


def _pair_grids(
    results: Mapping[str, Any], cases: Sequence[Mapping[str, Any]], skip: set[int], matrix: list[str], lan: list[str],
) -> str:
    """The stack × stack summary (each cell links to its pair), then per stack pair its NAT
    grids: the reference stack with itself open, every other pair folded unless something in
    it went wrong."""
    from natkit.lab.summary import stack_pairs

    grid_cases = [c for i, c in enumerate(cases) if i not in skip]
    pairs = list(dict.fromkeys(_pair_of(c) for c in grid_cases))
    reference = str((results.get("plan") or {}).get("reference") or "aiortc")
    pairs.sort(key=lambda k: k != (reference, reference))
    if len(pairs) <= 1:
        pair = pairs[0] if pairs else ("aiortc", "aiortc")
        return _grids(cases, matrix, lan, pair)
    rows = {(r["caller_stack"], r["callee_stack"]): r for r in stack_pairs(
        [{**c, "caller_stack": _pair_of(c)[0], "callee_stack": _pair_of(c)[1]} for c in grid_cases])}
    order = [str(s.get("name")) for s in results.get("stacks") or [] if isinstance(s, Mapping)]
    for a, b in pairs:
        order += [n for n in (a, b) if n not in order]
    callers = [n for n in order if any(k[0] == n for k in rows)]
    callees = [n for n in order if any(k[1] == n for k in rows)]
    head = "".join(f'<th class="col" scope="col"><span>{_e(n)}</span></th>' for n in callees)
    body = []
    for a in callers:
        cells = []
        for b in callees:
            r = rows.get((a, b))
            if r is None:
                cells.append('<td class="cell none">·</td>')
                continue
            state = "ok-connected" if r["pass"] else "mismatch"
            title = (f"{a} → {b}: {r['as_expected']} of {r['cases']} cases as expected; {r['connected']} connected "
                     f"({r['expected_connected']} expected to); {r['by_stacks']} decided by the stacks")
            cells.append(
                f'<td class="cell stackcell {state}" title="{_e(title)}"><a href="#pair-{_slug((a, b))}">'
                f'<span class="sym">{r["as_expected"]}/{r["cases"]}</span>'
                f'<span class="route">{r["connected"]} up</span></a></td>'
            )
        body.append(f'<tr><th class="row" scope="row">{_e(a)}</th>{"".join(cells)}</tr>')
    summary = (
        '<section id="stacks"><h3>Stacks: cases as expected per caller and callee stack '
        '(click a cell for its NAT grids)</h3><table class="grid stacks"><thead><tr>'
        f'<th class="corner">caller ↓ callee →</th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></section>'
    )
    sections = []
    for pair in pairs:
        r = rows[pair]
        sub = [c for c in grid_cases if _pair_of(c) == pair]
        reasons: dict[str, int] = {}
        for c in sub:
            if c.get("decided_by") == "stacks":
                reasons[str(c.get("reason"))] = reasons.get(str(c.get("reason")), 0) + 1
        why = "".join(f"<li>{n} × {_e(t)}</li>" for t, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
        grids = _grids(cases, matrix, lan, pair, anchor=f"{_slug(pair)}-")
        opened = " open" if pair == (reference, reference) or not r["pass"] else ""
        sections.append(
            f'<details class="pair" id="pair-{_slug(pair)}"{opened}><summary><strong>{_e(pair[0])} → {_e(pair[1])}</strong> '
            f'<span class="count {"good" if r["pass"] else "bad"}">{r["as_expected"]}/{r["cases"]} as expected</span> '
            f'<span class="muted">{r["connected"]} connected</span></summary>'
            + (f'<ul class="why">{why}</ul>' if why else "")
            + f'{grids}</details>'
        )
    return summary + "".join(sections)


def _evidence_text(case: Mapping[str, Any]) -> str:
    """The packet evidence of a case in one cell: verdict and what the capture shows."""
    ev = case.get("evidence")
    if isinstance(ev, Mapping):
        verdict = "agrees" if ev.get("consistent") else "CONTRADICTS"
        return f"{verdict}: {ev.get('detail', '')}"
    return "none (no capture)" if case.get("observed") == "connected" else "–"


def _link(link: Any) -> str:
    if link is None or not getattr(link, "shaped", False):
        return "–"
    parts = []
    if link.delay_ms:
        parts.append(f"{link.delay_ms:g} ms")
    if link.jitter_ms:
        parts.append(f"±{link.jitter_ms:g} ms")
    if link.loss_pct:
        parts.append(f"{link.loss_pct:g}% loss")
    return ", ".join(parts)


def _svg(topology: Any) -> str:
    """A small diagram: servers and routers on the internet segment, peers behind routers."""
    nats = list(topology.nats)
    s = topology.servers
    col = 150
    width = max(640, 40 + col * max(len(nats), 1))
    parts = [
        f'<svg class="diagram" viewBox="0 0 {width} 250" width="{width}" height="250" '
        'role="img" aria-label="lab topology">',
        f'<rect x="10" y="70" width="{width - 20}" height="8" rx="4" class="wire"/>',
        f'<text x="14" y="64" class="lbl">internet {_e(topology.internet_net)}</text>',
    ]
    servers = [
        ("STUN", f"{s.stun_addresses[0]} / {s.stun_addresses[1]}"),
        (f"TURN ({s.turn_engine})", f"{s.turn_address}:{s.turn_port}"),
        ("signaling", f"{s.signaling_address}:{s.signaling_port}"),
    ]
    x = width - 20 - 3 * 190
    for name, addr in servers:
        parts.append(f'<line x1="{x + 85}" y1="40" x2="{x + 85}" y2="70" class="link"/>')
        parts.append(f'<rect x="{x}" y="8" width="170" height="34" rx="6" class="srv"/>')
        parts.append(f'<text x="{x + 85}" y="22" class="c b">{_e(name)}</text>')
        parts.append(f'<text x="{x + 85}" y="36" class="c s">{_e(addr)}</text>')
        x += 190
    for i, n in enumerate(nats):
        cx = 20 + col * i + col // 2
        parts.append(f'<line x1="{cx}" y1="78" x2="{cx}" y2="110" class="link"/>')
        parts.append(f'<rect x="{cx - 65}" y="110" width="130" height="44" rx="6" class="rtr {_e(n.type)}"/>')
        parts.append(f'<text x="{cx}" y="128" class="c b">{_e(n.name)}</text>')
        parts.append(f'<text x="{cx}" y="145" class="c s">{_e(n.type)}</text>')
        for k in range(n.peers):
            px = cx + (k - (n.peers - 1) / 2) * 50
            parts.append(f'<line x1="{cx}" y1="154" x2="{px}" y2="190" class="link"/>')
            parts.append(f'<circle cx="{px}" cy="204" r="14" class="peer"/>')
            parts.append(f'<text x="{px}" y="208" class="c s">p{k + 1}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _families_text(b: Any) -> str:
    """The LAN's address families and how IPv6 leaves it."""
    six = getattr(b, "ipv6", None)
    parts = ["IPv4"] if getattr(b, "ipv4", True) else []
    if six is not None:
        how = "prefix-translated" if six.mapping is not None else "routed"
        parts.append(f"IPv6 ({how}, filters {six.filtering.value if six.filtering else 'nothing'})")
    if getattr(b, "nat64", False):
        parts.append("NAT64 + DNS64 to IPv4")
    return ", ".join(parts) or "–"


def _inner_text(b: Any) -> str:
    inner = getattr(b, "inner", None)
    if inner is None:
        return "–"
    return f"{inner.name}: {inner.mapping.value if inner.mapping else 'no NAT'} / {inner.filtering.value if inner.filtering else '–'} on {b.inner_net}"


def _blocked_text(b: Any) -> str:
    ports = getattr(b, "egress_tcp_ports", None)
    if ports is not None:
        return "all but TCP to " + "/".join(str(p) for p in ports)
    return "UDP" if b.block_udp else "no"


def _topology(topology: Any, results: Mapping[str, Any]) -> str:
    if topology is None:
        src = results.get("topology")
        return f'<p class="muted">Topology file: {_e(src or "unknown")}</p>'
    s = topology.servers
    rows = []
    for n in topology.nats:
        b = n.behaviour
        rows.append(
            f'<tr data-nat="{_e(n.name)}"><td>{_e(n.name)}</td><td>{_e(n.type)}</td>'
            f"<td>{_e(b.mapping.value if b.mapping else 'none')}</td>"
            f"<td>{_e(b.filtering.value if b.filtering else 'none')}</td>"
            f"<td>{_e(_families_text(b))}</td><td>{_e(_inner_text(b))}</td>"
            f"<td>{_e(_blocked_text(b))}</td><td>{'yes' if b.hairpinning else 'no'}</td>"
            f"<td>{b.udp_timeout} s</td><td>{_e(_link(n.wan))}</td><td>{_e(_link(n.lan))}</td>"
            f"<td>{n.peers}{' (same LAN)' if n.same_lan else ''}</td></tr>"
        )
    engine = results.get("turn_engine") or s.turn_engine
    return (
        _svg(topology)
        + '<dl class="facts">'
        f"<dt>file</dt><dd>{_e(topology.source)}</dd>"
        f"<dt>internet</dt><dd>{_e(topology.internet_net)}"
        f"{_e(', ' + topology.internet_net6) if getattr(topology, 'internet_net6', None) else ''} "
        f"(links: {_e(_link(topology.internet_link))})</dd>"
        f"<dt>STUN (RFC 5780)</dt><dd>{_e(s.stun_addresses[0])}, {_e(s.stun_addresses[1])} ports "
        f"{s.stun_port}/{s.stun_alt_port}</dd>"
        f"<dt>TURN</dt><dd>{_e(engine)} at {_e(s.turn_address)}:{s.turn_port} over "
        f"{_e(', '.join(s.turn_transports))}"
        f"{_e(f', TLS on {s.turn_tls_port}') if getattr(s, 'turn_tls_port', None) else ''}"
        f"{_e(f', also {s.turn_address6}') if getattr(s, 'turn_address6', None) else ''}, realm {_e(s.turn_realm)}</dd>"
        f"<dt>signaling</dt><dd>{_e(s.signaling_address)}:{s.signaling_port}</dd>"
        f"<dt>case deadline</dt><dd>{topology.case_deadline_s:g} s</dd></dl>"
        '<table class="probes"><thead><tr><th>NAT</th><th>type</th><th>mapping</th>'
        "<th>filtering</th><th>families</th><th>behind it</th><th>blocked</th><th>hairpin</th><th>UDP timeout</th><th>WAN</th>"
        f"<th>LAN</th><th>peers</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _pair_key(c: Mapping[str, Any]) -> tuple[str, ...]:
    nats = [str(n) for n in c.get("nats", [])]
    return (nats[0], "same LAN") if c.get("same_lan") and nats else tuple(sorted(nats))


def plain_summary(results: Mapping[str, Any]) -> list[str]:
    """What the matrix means, in sentences: per address family which NAT pairs need TURN (and
    which only TURN over TLS on 443 saves), which connect directly; where TURN has to run
    over TCP; which calls survived idling past the mapping lifetime; what did not go as
    expected."""
    every = [c for c in results.get("cases", []) if not _legacy_browser(c)]
    reference = str((results.get("plan") or {}).get("reference") or "aiortc")
    pairs = list(dict.fromkeys(_pair_of(c) for c in every))
    ref = (reference, reference) if (reference, reference) in pairs else (pairs[0] if pairs else ("aiortc", "aiortc"))
    cases = [c for c in every if _pair_of(c) == ref]  # the NATs' question: one stack pair
    out: list[str] = []

    def up(c: Mapping[str, Any] | None) -> bool:
        return c is not None and c.get("observed") == "connected"

    def names(keys: Iterable[tuple[str, ...]]) -> str:
        return ", ".join(" × ".join(k) if k[-1] != "same LAN" else f"{k[0]} (same LAN)" for k in keys)

    def grouped(keys: list[tuple[str, ...]], among: Iterable[tuple[str, ...]]) -> str:
        """``keys`` in words: "every pair with X" for a NAT all of whose pairs (of ``among``)
        are in ``keys``, then the other pairs one by one."""
        pairs = [k for k in among if k[-1] != "same LAN"]
        nats = list(dict.fromkeys(n for k in pairs for n in k))
        whole = [n for n in nats if len([k for k in pairs if n in k]) > 1 and all(k in keys for k in pairs if n in k)]
        rest = [k for k in keys if not any(n in k for n in whole)]
        parts = [f"every pair with {n} ({sum(n in k for k in pairs)})" for n in whole]
        return ", ".join([*parts, *([names(rest)] if rest else [])])

    families = [f for f in FAMILIES if any(_family(c) == f for c in cases)]
    said_partial = False
    for family in families:
        by_pair: dict[tuple[str, ...], dict[str, Mapping[str, Any]]] = {}
        for c in cases:
            if _family(c) == family and c.get("path") != "longevity":
                by_pair.setdefault(_pair_key(c), {})[str(c.get("path"))] = c
        full = {k: v for k, v in by_pair.items() if {"host", "srflx", "relay"} <= set(v)}
        where = _FAMILY_SHORT.get(family, f" over {family}")
        if not full:
            if not said_partial:
                out.append("Not every path ran for any NAT pair (--only), so no pair can be said to need TURN.")
                said_partial = True
            continue
        direct = [k for k, v in full.items() if up(v.get("host")) or up(v.get("srflx"))]
        turn = [k for k, v in full.items() if k not in direct and (up(v.get("relay")) or up(v.get("relay-tls")))]
        tls_only = [k for k in turn if not up(full[k].get("relay"))]
        none = [k for k in full if k not in direct and k not in turn]
        out.append(f"{len(turn)} of {len(full)} NAT pairs{where} need TURN" + (f": {grouped(turn, full)}." if turn else "."))
        out.append(f"{len(direct)} of {len(full)} pairs{where} connect without a relay (host or server-reflexive candidates).")
        if tls_only:
            out.append(f"Only TURN over TLS on port 443 connects {grouped(tls_only, full)}: nothing else gets out there.")
        if none:
            out.append(f"{len(none)} pairs{where} do not connect even through TURN: {names(none)}.")
    # TURN over TCP: NATs whose relay cases connected only with a TCP allocation on their side.
    tcp_only: dict[str, list[bool]] = {}
    for c in cases:
        if c.get("path") != "relay" or not up(c):
            continue
        sides = zip(c.get("nats", []), relay_transports(c), strict=False)
        for nat, proto in sides:
            tcp_only.setdefault(str(nat), []).append(proto == "TCP")
    # (an egress firewall blocks UDP too, but also TURN over TCP: its sentence is the TLS one)
    blocked = {n.get("name") for n in (results.get("lab") or {}).get("nats", [])
               if n.get("block_udp") and not n.get("egress_tcp_ports")}
    need_tcp = sorted(n for n, seen in tcp_only.items() if seen and all(seen) and (n in blocked or not blocked))
    if need_tcp:
        out.append(f"Relay over TCP needed for {', '.join(need_tcp)}: UDP does not get out there, "
                   "so only TURN over TCP (or TLS) connects.")
    elif blocked:
        out.append(f"UDP is blocked at {', '.join(sorted(str(b) for b in blocked))}; no relay case behind it connected over TCP.")
    # Mapping expiry mid-call: which calls still echoed after idling past the mapping lifetime.
    idle = [c for c in cases if c.get("path") == "longevity"]
    kept = [_pair_key(c) for c in idle if up(c)]
    lost = [_pair_key(c) for c in idle if not up(c)]
    if kept:
        out.append(f"Calls that idled past the NAT's UDP mapping lifetime and still echoed: {names(kept)}.")
    if lost:
        out.append(f"Calls that lost their path while idle (the mapping expired): {names(lost)}.")
    bad = [c for c in cases if c.get("pass") is False]
    who = f" of {ref[0]} with itself" if len(pairs) > 1 and ref[0] == ref[1] else ""
    if bad:
        out.append(f"{len(bad)} of {len(cases)} cases{who} did not go as the NAT types predict (red or amber cells).")
    else:
        out.append(f"All {len(cases)} cases{who} went as the NAT types predict.")
    if len(pairs) > 1:
        from natkit.lab.summary import stack_pairs

        rows = stack_pairs([{**c, "caller_stack": _pair_of(c)[0], "callee_stack": _pair_of(c)[1]} for c in every])
        good = sum(r["pass"] for r in rows)
        out.append(f"{good} of {len(rows)} stack pairs went as expected in every case ({len(every)} cases in all).")
        never = [f"{r['caller_stack']} → {r['callee_stack']}" for r in rows if r["connected"] == 0 and r["expected_connected"] == 0]
        if never:
            out.append(f"Never connect, as their capabilities predict: {', '.join(never)}.")
    return out


def _timing(results: Mapping[str, Any]) -> str:
    cases = [c for c in results.get("cases", []) if not _legacy_browser(c)]
    timings = results.get("timings") or {}
    total = results.get("duration_s")
    bars = []
    scale = max([float(total or 0), *[float(v) for v in timings.values() if isinstance(v, int | float)], 1e-9])
    for name, value in [("whole run", total), *timings.items()]:
        if not isinstance(value, int | float):
            continue
        label = name.removesuffix("_s")
        pct = max(0.5, 100 * float(value) / scale)
        bars.append(
            f'<div class="bar"><span class="bl">{_e(label)}</span><span class="bt">'
            f'<span class="bf" style="width:{pct:.1f}%"></span></span>'
            f'<span class="bv">{float(value):.2f} s</span></div>'
        )
    rows = []
    for path in PATHS:
        t = [c["t_connect_ms"] for c in cases if c.get("path") == path and isinstance(c.get("t_connect_ms"), int | float)]
        r = [c["rtt_ms"] for c in cases if c.get("path") == path and isinstance(c.get("rtt_ms"), int | float)]
        n = sum(1 for c in cases if c.get("path") == path)
        if not n:
            continue
        rows.append(
            f"<tr><td>{path}</td><td>{n}</td><td>{len(t)}</td>"
            f"<td>{_ms(statistics.median(t)) if t else '–'}</td><td>{_ms(max(t)) if t else '–'}</td>"
            f"<td>{_ms(statistics.median(r)) if r else '–'}</td></tr>"
        )
    return (
        f'<div class="bars">{"".join(bars)}</div>'
        '<table class="probes"><thead><tr><th>path</th><th>cases</th><th>connected</th>'
        "<th>median time to connect</th><th>slowest</th><th>median echo RTT</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


_CSS = """
:root{--ok:#2e9e4f;--okf:#d5d9df;--bad:#d93b3b;--sus:#f0a202;--ink:#1d2330;--mut:#667085;--bg:#f6f7f9}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);background:var(--bg)}
header{padding:20px 28px;background:#1d2330;color:#fff;display:flex;gap:24px;align-items:center;flex-wrap:wrap}
header h1{margin:0;font-size:22px;font-weight:600}header .meta{color:#c9d0dc;font-size:13px}
.badge{font-weight:700;font-size:18px;padding:6px 14px;border-radius:8px}.badge.pass{background:var(--ok)}.badge.fail{background:var(--bad)}
main{padding:8px 28px 40px;max-width:1400px}h2{margin:28px 0 8px;font-size:18px}h3{margin:18px 0 8px;font-size:15px;font-weight:600}
.muted{color:var(--mut)}.count{font-weight:600;font-size:12px;padding:2px 8px;border-radius:10px;margin-left:8px}
.count.good{background:#dcf1e2;color:#17692f}.count.bad{background:#fadcdc;color:#9b1c1c}
.paths{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}
table.grid{border-collapse:separate;border-spacing:3px}
.grid th{font-weight:600;font-size:12px;color:#344054}.grid th.row{text-align:right;padding-right:8px;white-space:nowrap}
.grid th.col{height:96px;vertical-align:bottom;padding:0 0 6px}.grid th.col span{display:inline-block;writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap}
.grid th.corner{font-size:11px;color:var(--mut);vertical-align:bottom;text-align:right;padding:0 8px 6px 0;white-space:nowrap}
td.cell{width:64px;height:52px;text-align:center;border-radius:6px;cursor:pointer;vertical-align:middle;padding:2px}
td.cell .sym{display:block;font-size:20px;font-weight:700;line-height:1.1}
td.cell span.route,td.cell span.rtt,td.cell span.exp{display:block;font-size:10px;line-height:1.2}
td.ok-connected{background:var(--ok);color:#fff}td.ok-failed{background:var(--okf);color:#475467}
td.mismatch{background:var(--bad);color:#fff;outline:2px solid #7a1010}td.suspect{background:var(--sus);color:#2b1a00}
td.lower{background:transparent}td.none{background:#eef0f3;color:#98a2b3;cursor:default}
td.cell:hover,td.cell:focus,td.cell.sel{outline:3px solid #1d2330;outline-offset:1px}
td.lannote{font-size:11px;color:var(--mut);text-align:left;padding-left:8px}
.legend{display:flex;gap:18px;flex-wrap:wrap;font-size:12px;margin:6px 0 4px}.legend i{display:inline-block;width:14px;height:14px;border-radius:3px;vertical-align:-2px;margin-right:6px}
#detail{position:sticky;top:8px;background:#fff;border:1px solid #d0d5dd;border-radius:10px;padding:12px 16px;min-height:60px;margin:14px 0;box-shadow:0 1px 3px rgba(16,24,40,.08)}
#detail pre{margin:6px 0 0;white-space:pre-wrap;font:12px/1.45 ui-monospace,SFMono-Regular,Menlo,monospace;max-height:260px;overflow:auto;background:#f9fafb;padding:8px;border-radius:6px}
table.probes{border-collapse:collapse;background:#fff;border:1px solid #e4e7ec;border-radius:8px;overflow:hidden;margin:6px 0}
table.probes th,table.probes td{padding:6px 12px;border-bottom:1px solid #eef0f3;text-align:left;font-size:13px}
table.probes th{background:#f2f4f7;font-weight:600}
td.verdict{white-space:nowrap}tr.ok td.verdict{color:var(--ok);font-weight:700}tr.bad td.verdict{color:var(--bad);font-weight:700}tr.bad{background:#fff1f1}
tr.bcase td.obs,tr.bcase td.num{white-space:nowrap}tr.bcase.ok-connected td.obs{color:var(--ok);font-weight:700}tr.bcase.mismatch td.obs,tr.bcase.suspect td.obs{color:var(--bad);font-weight:700}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:10px 0}dl.facts dt{color:var(--mut)}dl.facts dd{margin:0}
svg.diagram{background:#fff;border:1px solid #e4e7ec;border-radius:8px;max-width:100%;height:auto}
svg .wire{fill:#98a2b3}svg .link{stroke:#98a2b3;stroke-width:2}svg .srv{fill:#e0ecff;stroke:#3b6fd8}
svg .rtr{fill:#fff4e0;stroke:#c77d05}svg .rtr.open{fill:#e8f6ec;stroke:#2e9e4f}svg .peer{fill:#eef0f3;stroke:#667085}
svg text{font:12px system-ui,sans-serif;fill:#1d2330}svg .c{text-anchor:middle}svg .b{font-weight:600}svg .s{font-size:10px;fill:#475467}svg .lbl{font-size:11px;fill:#475467}
.bars{max-width:720px;margin:8px 0 12px}.bar{display:flex;align-items:center;gap:10px;margin:4px 0}
.bl{width:110px;text-align:right;color:var(--mut);font-size:12px}.bt{flex:1;background:#e4e7ec;height:14px;border-radius:7px;overflow:hidden}
.bf{display:block;height:100%;background:#3b6fd8}.bv{width:70px;font-variant-numeric:tabular-nums;font-size:12px}
details.pair{margin:10px 0;background:#fff;border:1px solid #e4e7ec;border-radius:8px;padding:6px 12px}
details.pair summary{cursor:pointer;font-size:15px}ul.why{margin:6px 0;font-size:13px;color:#475467}
td.stackcell a{color:inherit;text-decoration:none;display:block}
ul.errors{color:var(--bad)}ul.plain{margin:6px 0 0;padding-left:20px;font-size:15px}ul.plain li{margin:3px 0}
"""

_JS = """
(function(){
  var data = JSON.parse(document.getElementById('lab-data').textContent);
  var panel = document.getElementById('detail-body');
  var title = document.getElementById('detail-title');
  function show(el){
    document.querySelectorAll('.sel').forEach(function(x){x.classList.remove('sel');});
    el.classList.add('sel');
    var c = data.cases[+el.getAttribute('data-case')];
    title.textContent = el.getAttribute('title').split('\\n')[0];
    panel.textContent = el.getAttribute('title') + '\\n\\n' + JSON.stringify(c, null, 2);
  }
  document.querySelectorAll('[data-case]').forEach(function(el){
    el.addEventListener('click', function(){show(el);});
    el.addEventListener('mouseenter', function(){show(el);});
    el.addEventListener('keydown', function(ev){ if (ev.key === 'Enter') show(el); });
  });
})();
"""


def render_html(results: Mapping[str, Any], topology: Any = None) -> str:
    """One self-contained HTML page for a lab run (``results``: the run's ``--json`` output)."""
    # Every case names its stacks and sits in the grids of its stack pair; a browser case of an
    # older report (no caller_stack) only in the browser table, as does "browser_cases".
    cases = list(results.get("cases", []))
    ids = {c.get("id") for c in cases if c.get("id")}
    extra = [c for c in results.get("browser_cases", []) if not c.get("id") or c.get("id") not in ids]
    listed = {c.get("id") for c in results.get("browser_cases", []) if c.get("id")}  # --browser's own table
    table = [i for i, c in enumerate(cases) if _legacy_browser(c) or c.get("id") in listed]
    table += list(range(len(cases), len(cases) + len(extra)))
    cases += extra
    probes = list(results.get("probes", []))
    matrix, lan = _nat_order(results, topology)
    passed = bool(results.get("pass"))
    grid_cases = [c for i, c in enumerate(cases) if i not in set(table)]
    n_ok = sum(cell_state(c) in ("ok-connected", "ok-failed") for c in grid_cases)
    p_ok = sum(bool(p.get("pass")) for p in probes)
    name = getattr(topology, "name", None) or "lab"
    duration = results.get("duration_s")
    engine = results.get("turn_engine") or (topology.servers.turn_engine if topology else "?")
    grids = _pair_grids(results, cases, set(table), matrix, lan)
    errors = results.get("errors") or []
    # Inline JSON: '</' would end the script element early.
    blob = json.dumps({"cases": cases}, default=str).replace("</", "<\\/")
    summary = (
        f"{n_ok}/{len(grid_cases)} cases and {p_ok}/{len(probes)} probes as expected · "
        f"{_e(f'{duration:.1f}') if isinstance(duration, int | float) else '?'} s · "
        f"TURN engine {_e(engine)}"
    )
    when = results.get("started_at") or "unknown time"
    where = results.get("host") or "unknown host"
    version = results.get("natkit_version") or "unknown"
    provenance = (
        f'<span id="started">{_e(when)}</span> on <span id="host">{_e(where)}</span> · natkit '
        f'<span id="version">{_e(version)}</span> · {_e(results.get("engine") or "netns")} engine'
    )
    sentences = "".join(f"<li>{_e(t)}</li>" for t in plain_summary(results))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{GENERATOR}
<title>natkit lab {_e(name)}: {"PASS" if passed else "FAIL"}</title>
<style>{_CSS}</style></head>
<body>
<header><span class="badge {"pass" if passed else "fail"}" id="verdict">{"PASS" if passed else "FAIL"}</span>
<div><h1>natkit NAT lab — {_e(name)}</h1><div class="meta" id="summary">{summary}</div>
<div class="meta" id="provenance">{provenance}</div></div></header>
<main>
<h2>In short</h2>
<ul class="plain" id="plain-summary">{sentences}</ul>
{f'<ul class="errors">{"".join(f"<li>{_e(e)}</li>" for e in errors)}</ul>' if errors else ""}
<h2>Which paths connect</h2>
<p class="muted">Each cell is one case: a caller behind the row's NAT, a callee behind the column's
(a NAT paired with itself is two NATs of that kind). ✓ connected, ✗ failed; the small text is the
route the packets took and the echo RTT. Hover or click a cell for the selected candidate pair,
timings, the reason for the expectation and the packet evidence.</p>
<div class="legend"><span><i style="background:var(--ok)"></i>connected, as expected</span>
<span><i style="background:var(--okf)"></i>failed, as expected</span>
<span><i style="background:var(--bad)"></i>differs from the expectation</span>
<span><i style="background:var(--sus)"></i>outcome as expected, route or evidence not</span></div>
<div id="detail"><strong id="detail-title">Details</strong><pre id="detail-body">Hover or click a cell.</pre></div>
{grids}
{_browser_cases(cases, set(table))}
<h2>Probes: what natkit probe saw from behind every NAT</h2>
{_probes(probes)}
<h2>Topology</h2>
{_topology(topology, results)}
<h2>Timing</h2>
{_timing(results)}
</main>
<script type="application/json" id="lab-data">{blob}</script>
<script>{_JS}</script>
</body></html>
"""


def write_html(path: str | os.PathLike[str], results: Mapping[str, Any], topology: Any = None) -> None:
    """Write :func:`render_html` to ``path`` atomically (``natkit lab run --html FILE``)."""
    from natkit.lab.output import write_atomic

    try:
        write_atomic(path, render_html(results, topology))
    except OSError as exc:
        raise ConfigError(f"cannot write: {exc.strerror or exc}", param="html", where=str(path)) from None
