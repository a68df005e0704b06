"""The HTML report: rendered from a run's JSON, opened in headless Chromium, looked at."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from natkit.lab.expect import expect, expected_probe
from natkit.lab.html import cell_state, render_html
from natkit.lab.topology import Topology, load

pytestmark = pytest.mark.timeout(60)

needs_chromium = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Chromium is not installed (apt-get install chromium)"
)

MISMATCH = 3  # index of the case made to differ from its expectation
SUSPECT_PATH = "relay"


def _expect(topo: Topology, plan: Any, case: Any) -> Any:
    from natkit.lab.orchestrate import path_transports

    (ra, _), (rb, _) = plan.peers_of(case)
    return expect(ra.nat.behaviour, rb.nat.behaviour, case.path, same_lan=case.same_lan,
                  turn_transports=path_transports(topo, case.path), family=case.family)


def _results(topo: Topology) -> dict[str, Any]:
    """A run's JSON as natkit.lab.runner writes it: every case of ``topo`` observed as the
    expectation model predicts, then one case flipped, one with contradicting evidence, one
    probe wrong and one browser case added."""
    plan = topo.plan()
    cases: list[dict[str, Any]] = []
    for i, case in enumerate(topo.cases()):
        (ra, _), (rb, _) = plan.peers_of(case)
        exp = _expect(topo, plan, case)
        up = exp.connected
        cases.append({
            "nats": list(case.nats), "path": case.path, "same_lan": case.same_lan, "family": case.family,
            "expected": exp.outcome, "observed": exp.outcome, "expected_route": exp.route,
            "route": exp.route if up else None, "reason": exp.reason,
            "selected": {
                "local": {"type": "relay" if case.path.startswith("relay") else "host",
                          "address": ra.public_ip, "port": 40000 + i},
                "remote": {"type": case.path, "address": rb.public_ip, "port": 50000 + i},
            } if up else None,
            "t_connect_ms": 100.0 + i if up else None, "rtt_ms": 10.0 + i % 5 if up else None,
            "error": None if up else "not connected within 10 s",
            "evidence": {"route": exp.route, "claimed": exp.route, "packets": 9,
                         "consistent": True, "detail": "9 DTLS packets"} if up else None,
            "pass": True,
        })
    flipped = cases[MISMATCH]
    flipped["observed"] = "failed" if flipped["expected"] == "connected" else "connected"
    flipped["pass"] = False
    flipped["reason"] = "a </script><b>tricky</b> reason & more"
    suspect = next(c for c in cases if c["path"] == SUSPECT_PATH and c["observed"] == "connected")
    suspect["evidence"] = {"route": "direct", "claimed": "relay", "packets": 0,
                           "consistent": False, "detail": "no DTLS records inside TURN"}
    suspect["pass"] = False
    probes = [
        {"nat": n.name, "type": n.type, "expected": expected_probe(n.behaviour),
         "observed": expected_probe(n.behaviour), "pass": True}
        for n in topo.nats
    ]
    probes[1]["observed"] = {"mapping": "address-dependent", "filtering": "address-dependent"}
    probes[1]["pass"] = False
    browser_cases = [{
        "nats": ["symmetric", "full-cone"], "path": "relay", "expected": "connected",
        "observed": "connected", "rtt_ms": 21.5, "t_connect_ms": 480.0, "pass": True,
        "browser": {"connected": True, "local_types": ["relay"], "remote_types": ["relay"],
                    "selected": {"local": {"type": "relay", "address": "203.0.113.4",
                                           "port": 41000, "relay_protocol": "udp"},
                                 "remote": {"type": "relay", "address": "203.0.113.4",
                                            "port": 41001}}},
        "evidence": {"route": "relay", "claimed": "relay", "packets": 33, "consistent": True,
                     "detail": "33 DTLS records inside TURN over udp between 203.0.113.18:28593 "
                               "and 203.0.113.4:3478"},
    }]
    cases.append({  # a browser case may also come inside "cases"
        "nats": ["udp-blocked", "full-cone"], "path": "srflx", "expected": "failed",
        "observed": "failed", "caller": "chromium", "pass": True, "error": "no srflx candidate",
        "browser": {"connected": False, "local_types": ["host"], "remote_types": [],
                    "error": "data channel open did not happen before the deadline"},
    })
    return {
        "topology": topo.source, "turn_engine": "natkit", "pass": False, "duration_s": 42.5,
        "timings": {"build_s": 2.0, "cases_s": 36.0, "evidence_s": 3.1, "teardown_s": 1.4},
        "cases": cases, "browser_cases": browser_cases, "probes": probes, "errors": [],
    }


class _Dom(HTMLParser):
    """Collects what the tests look at: cells, probe rows, text of ids, all src/href values."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict[str, str]] = []
        self.grid_of: list[tuple[str, str]] = []  # (path, family) of each cell's grid
        self.probes: list[dict[str, str]] = []
        self.links: list[str] = []
        self.ids: dict[str, str] = {}
        self._grid = ("", "")
        self._text_for: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.links += [a[k] for k in ("src", "href") if k in a]
        if tag == "table" and "grid" in a.get("class", ""):
            self._grid = (a.get("data-path", ""), a.get("data-family", ""))
        if tag == "td" and "data-case" in a and "cell" in a.get("class", ""):
            self.cells.append(a)
            self.grid_of.append(self._grid)
        if tag == "tr" and "probe" in a.get("class", "").split():
            self.probes.append(a)
        self._text_for.append(a.get("id", ""))
        if a.get("id"):
            self.ids.setdefault(a["id"], "")

    def handle_endtag(self, tag: str) -> None:
        if self._text_for:
            self._text_for.pop()

    def handle_data(self, data: str) -> None:
        for i in self._text_for:
            if i:
                self.ids[i] += data


def _dom(text: str) -> _Dom:
    d = _Dom()
    d.feed(text)
    return d


def _chromium(*args: str, timeout: float = 40) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="natkit-chromium-") as profile:
        return subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=timeout,
        )


def _png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGB(A) bytes of an 8-bit, non-interlaced PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, b"", b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            ihdr = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", ihdr)
    assert depth == 8 and ctype in (2, 6) and interlace == 0, (depth, ctype, interlace)
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for x in range(stride):
            left = line[x - bpp] if x >= bpp else 0
            up, ul = prev[x], prev[x - bpp] if x >= bpp else 0
            if f == 1:
                line[x] = (line[x] + left) & 0xFF
            elif f == 2:
                line[x] = (line[x] + up) & 0xFF
            elif f == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif f == 4:
                p = left + up - ul
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
                line[x] = (line[x] + (left if pa <= pb and pa <= pc else up if pb <= pc else ul)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return w, h, [b"".join(r[i : i + 3] for i in range(0, stride, bpp)) for r in rows]


# --------------------------------------------------------------------------------------------


def test_cell_states() -> None:
    ok = {"expected": "connected", "observed": "connected", "pass": True,
          "evidence": {"consistent": True}}
    assert cell_state(ok) == "ok-connected"
    assert cell_state({"expected": "failed", "observed": "failed"}) == "ok-failed"
    assert cell_state({"expected": "failed", "observed": "connected"}) == "mismatch"
    assert cell_state({**ok, "evidence": {"consistent": False}, "pass": None}) == "suspect"
    assert cell_state({**ok, "route": "direct", "expected_route": "relay"}) == "suspect"
    assert cell_state({**ok, "pass": False}) == "suspect"


def test_report_is_self_contained_and_shows_every_case() -> None:
    topo = load()
    results = _results(topo)
    page = render_html(results, topo)
    dom = _dom(page)
    # Nothing to fetch: no src/href at all, no CSS url(), no @import, no absolute URL.
    assert dom.links == []
    assert not re.search(r"url\(|@import|https?://", page)
    grid_cases = [c for c in results["cases"] if "browser" not in c]
    assert len(dom.cells) == len(grid_cases)
    assert sorted(int(c["data-case"]) for c in dom.cells) == list(range(len(grid_cases)))
    # The embedded data survives a "</script>" inside a reason.
    blob = page.split('<script type="application/json" id="lab-data">', 1)[1].split("</script>")[0]
    assert json.loads(blob)["cases"][MISMATCH]["reason"].startswith("a </script>")


@needs_chromium
def test_chromium_renders_the_report(tmp_path: Path) -> None:
    topo = load()
    results = _results(topo)
    report = tmp_path / "report.html"
    report.write_text(render_html(results, topo), encoding="utf-8")

    # What the page shows, as Chromium built it (after its script ran).
    res = _chromium("--dump-dom", report.as_uri())
    assert res.returncode == 0, res.stderr[-500:]
    dom = _dom(res.stdout)
    grid_cases = [c for c in results["cases"] if "browser" not in c]
    per_grid = Counter(dom.grid_of)
    assert per_grid == Counter((c["path"], c["family"]) for c in grid_cases), per_grid
    assert {p for p, _ in per_grid} == {"host", "srflx", "relay", "relay-tls", "longevity"}
    states = Counter(c["class"].split()[1] for c in dom.cells)
    assert states["mismatch"] == 1 and states["suspect"] == 1, states
    expected_ok = sum(c["expected"] == "connected" for c in grid_cases)
    assert states["ok-connected"] + states["ok-failed"] == len(grid_cases) - 2
    assert states["ok-connected"] in (expected_ok - 1, expected_ok - 2), (states, expected_ok)
    flipped = next(c for c in dom.cells if c["data-case"] == str(MISMATCH))
    assert "mismatch" in flipped["class"]
    assert flipped["data-expected"] == results["cases"][MISMATCH]["expected"]
    assert flipped["data-observed"] == results["cases"][MISMATCH]["observed"]
    assert "expected:" in flipped["title"] and "tricky" in flipped["title"]
    connected = next(c for c in dom.cells if "ok-connected" in c["class"])
    assert "selected:" in connected["title"] and "RTT" in connected["title"]
    assert "evidence agrees" in connected["title"]
    # Probes: one row per NAT, the wrong one marked.
    assert [p["data-nat"] for p in dom.probes] == [n.name for n in topo.nats]
    assert [p["class"].split()[1] for p in dom.probes].count("bad") == 1
    assert dom.ids["verdict"].strip() == "FAIL"
    assert "42.5 s" in dom.ids["summary"] and "TURN engine natkit" in dom.ids["summary"]
    # the browser cases' rows, with what Chromium reported
    assert "symmetric → full-cone" in res.stdout and "udp-blocked → full-cone" in res.stdout
    assert "relay 203.0.113.4:41000 (udp) → relay 203.0.113.4:41001" in res.stdout
    # next to the packet evidence (the failed one has none)
    assert "agrees: 33 DTLS records inside TURN over udp between 203.0.113.18:28593" in res.stdout
    assert "packet evidence</th>" in res.stdout
    assert "Hover or click a cell." in dom.ids["detail-body"]

    # And how it looks: a screenshot with the grid's colours in it.
    png = tmp_path / "report.png"
    res = _chromium(f"--screenshot={png}", "--window-size=1200,1600", report.as_uri())
    assert res.returncode == 0 and png.exists(), res.stderr[-500:]
    w, h, rows = _png_pixels(png)
    assert (w, h) == (1200, 1600)
    colours: Counter[bytes] = Counter()
    for row in rows[::4]:
        for x in range(0, len(row), 12):
            colours[row[x : x + 3]] += 1
    green, grey, red = bytes.fromhex("2e9e4f"), bytes.fromhex("d5d9df"), bytes.fromhex("d93b3b")
    header = bytes.fromhex("1d2330")
    sampled = sum(colours.values())
    assert colours[green] > 0.01 * sampled, colours.most_common(8)  # connected cells
    assert colours[grey] > 0.005 * sampled, colours.most_common(8)  # expected failures
    assert colours[red] > 0, colours.most_common(8)  # the FAIL badge and the mismatch
    assert colours[header] > 0.02 * sampled  # the header bar


def test_every_path_and_family_of_the_internet_topology_has_its_grid() -> None:
    from natkit.lab.html import plain_summary

    topo = load(Path(__file__).parents[2] / "configs" / "lab" / "internet.toml")
    results = _results(topo)
    dom = _dom(render_html(results, topo))
    grid_cases = [c for c in results["cases"] if "browser" not in c]
    # every case in exactly one cell, of the grid of its path and family
    assert sorted(int(c["data-case"]) for c in dom.cells) == list(range(len(grid_cases)))
    for cell, grid in zip(dom.cells, dom.grid_of, strict=True):
        c = grid_cases[int(cell["data-case"])]
        assert grid == (c["path"], c["family"]), (cell, grid)
    families = {f for _, f in dom.grid_of}
    assert families == {"ipv4", "ipv6", "nat64"}
    for fam in ("ipv4", "ipv6", "nat64"):
        assert f"family-{fam}" in dom.ids  # a heading per family
    assert "path-relay-tls" in dom.ids and "path-srflx-ipv6" in dom.ids and "path-relay-nat64" in dom.ids
    # the longevity grid holds only the NAT with a longevity case; the IPv6 grids only the
    # dual-stack and IPv6-only NATs
    longevity = [c for c, g in zip(dom.cells, dom.grid_of, strict=True) if g[0] == "longevity"]
    assert len(longevity) == 1 and "short-timeout" in longevity[0]["title"]
    six = {n for cell, g in zip(dom.cells, dom.grid_of, strict=True) if g == ("srflx", "ipv6")
           for n in grid_cases[int(cell["data-case"])]["nats"]}
    assert six == {"ipv6-firewall", "nptv6", "nat64"}
    ipv6_cell = next(c for c, g in zip(dom.cells, dom.grid_of, strict=True) if g[1] == "ipv6")
    assert " over IPv6" in ipv6_cell["title"].split("\n")[0]
    text = plain_summary(_as_observed(topo))
    assert "0 of 6 NAT pairs over IPv6 need TURN." in text, text
    assert "10 of 10 NAT pairs across NAT64 (IPv6-only × IPv4-only) need TURN: every pair with nat64 (10)." in text
    assert "Only TURN over TLS on port 443 connects egress-443 × nat64: nothing else gets out there." in text


def test_the_report_says_when_where_and_with_what_it_ran() -> None:
    from natkit.lab.html import GENERATOR

    topo = load()
    results = {**_results(topo), "started_at": "2024-05-01T10:20:30+00:00", "host": "ci-7",
               "natkit_version": "9.8.7", "engine": "netns"}
    page = render_html(results, topo)
    assert GENERATOR in page  # natkit may overwrite its own report (and nothing else)
    dom = _dom(page)
    assert dom.ids["started"] == "2024-05-01T10:20:30+00:00" and dom.ids["host"] == "ci-7"
    assert dom.ids["version"] == "9.8.7" and "netns engine" in dom.ids["provenance"]


def _as_observed(topo: Topology) -> dict[str, Any]:
    """Every case as the model predicts, with the TURN transports aiortc reports: TCP for a
    peer behind the UDP-blocking firewall, UDP elsewhere."""
    plan = topo.plan()
    blocked = {n.name for n in topo.nats if n.behaviour.block_udp}
    cases = []
    for case in topo.cases():
        exp = _expect(topo, plan, case)
        sel = callee_sel = None
        if exp.connected and case.path in ("relay", "relay-tls"):
            def relay(nat: str, path: str = case.path) -> dict[str, Any]:
                how = "tls" if path == "relay-tls" else "tcp" if nat in blocked else "udp"
                return {"type": "relay", "address": "203.0.113.4", "port": 5000, "relay_transport": how}
            sel = {"local": relay(case.nats[0]), "remote": {"type": "relay"}}
            callee_sel = {"local": relay(case.nats[1]), "remote": {"type": "relay"}}
        cases.append({"nats": list(case.nats), "path": case.path, "same_lan": case.same_lan,
                      "family": case.family, "expected": exp.outcome, "observed": exp.outcome, "expected_route": exp.route,
                      "route": exp.route, "selected": sel, "callee_selected": callee_sel, "pass": True})
    lab = {"nats": [{"name": n.name, "block_udp": n.behaviour.block_udp,
                     "egress_tcp_ports": n.behaviour.egress_tcp_ports} for n in topo.nats]}
    return {"cases": cases, "probes": [], "pass": True, "lab": lab, "turn_engine": "natkit"}


def test_a_plain_language_summary_of_the_matrix() -> None:
    from natkit.lab.html import plain_summary

    topo = load()
    text = plain_summary(_as_observed(topo))
    # 36 NAT pairs + the two same-LAN ones; TURN is the only way for every pair with the
    # UDP-blocking firewall (8) or the egress-443 office (8, one shared), and for symmetric
    # against symmetric, port-restricted and the carrier NAT's subscriber, which filters like it (3).
    assert text[0] == ("18 of 38 NAT pairs need TURN: every pair with udp-blocked (8), every pair with "
                       "egress-443 (8), port-restricted × symmetric, symmetric × symmetric, cgnat × symmetric."), text
    assert text[1] == "20 of 38 pairs connect without a relay (host or server-reflexive candidates)."
    assert text[2] == "Only TURN over TLS on port 443 connects every pair with egress-443 (8): nothing else gets out there."
    assert any(t.startswith("Relay over TCP needed for udp-blocked:") for t in text), text
    assert not any("UDP is blocked at" in t for t in text), text  # egress-443's sentence is the TLS one
    assert ("Calls that idled past the NAT's UDP mapping lifetime and still echoed: "
            "port-restricted × port-restricted.") in text
    assert text[-1] == "All 153 cases went as the NAT types predict."
    page = render_html(_as_observed(topo), topo)
    assert "18 of 38 NAT pairs need TURN" in _dom(page).ids["plain-summary"]
    # a run of one path cannot say which pairs need TURN
    only = _as_observed(topo)
    only["cases"] = [c for c in only["cases"] if c["path"] == "srflx"]
    assert "no pair can be said to need TURN" in plain_summary(only)[0]


def test_relay_cells_say_udp_or_tcp() -> None:
    topo = load()
    page = render_html(_as_observed(topo), topo)
    routes = re.findall(r'<span class="route">([^<]*)</span>', page)
    assert "relay UDP" in routes and "relay TCP" in routes and "relay UDP/TCP" in routes, Counter(routes)
    assert "relay" not in routes  # every relay cell names its transport
