"""The host's side of the Compose lab's networks: what the host talks to, and the scoped
firewall exception the lab's bridges need.

**What the host uses** (:func:`host_usage`): a Docker bridge network is a bridge *on the host*,
with an address and a route, so a lab subnet that overlaps something the host talks to cuts
the host off from it while the lab runs (a package registry inside the netns lab's
203.0.113.0/24, a VPN or office route). The routing table alone does not show all of it (a
registry reached through the default route has no route of its own), so the host's use is
collected from its addresses and non-default routes, the DNS servers of ``/etc/resolv.conf``,
the addresses of ``/etc/hosts``, the resolved hosts of the apt and pip sources and of proxy
variables, the peers of established connections, and the subnets of Docker's other networks.
:func:`check_overlap` names the first clash and the topology key that moves the lab.
Nothing is sent anywhere but to the host's resolver, for the names the host's own package
sources already use.

**The exception** (:class:`BridgeGuard`): with ``br_netfilter`` loaded
(``net.bridge.bridge-nf-call-iptables=1``, which dockerd itself sets) every frame bridged
between two containers passes the host's ``FORWARD`` chain, where Docker's isolation rules for
``internal`` networks drop what is not addressed inside the network's own subnet: a peer's
packets to its router (bound elsewhere) and the open LAN's packets on the internet bridge.
The guard inserts, for each of the lab's bridges only, ``-i BR -o BR -j ACCEPT`` into
``DOCKER-USER`` (frames that stay on that one bridge; nothing routed by the host), tagged
with the lab's comment, and removes them with the lab (:func:`remove_rules` also removes those
of a killed run). It also takes the host's own address off each lab bridge (no host route,
no path between the lab and the host) and turns IPv6 off on the host side of it.
"""

from __future__ import annotations

import concurrent.futures
import configparser
import contextlib
import ipaddress
import os
import re
import shutil
import socket
import subprocess
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from natkit.errors import ConfigError, PrerequisiteError

__all__ = ["BridgeGuard", "Use", "check_overlap", "host_usage", "lab_rules", "remove_rules"]

COMMENT = "natkit-lab"  # every rule the lab adds carries "natkit-lab <tag>"
RESOLVE_TIMEOUT_S = 3.0  # for all the names together


@dataclass(frozen=True)
class Use:
    """Something the host uses: a network (an address is a /32) and what it is."""

    net: ipaddress.IPv4Network
    what: str


def _run(argv: Sequence[str], timeout: float = 20) -> str:
    try:
        res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return res.stdout if res.returncode == 0 else ""


def _net(text: str) -> ipaddress.IPv4Network | None:
    try:
        return ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        return None


def _addresses_and_routes(ignore_ifaces: Iterable[str]) -> list[Use]:
    skip = set(ignore_ifaces)
    uses: list[Use] = []
    for line in _run(["ip", "-o", "-4", "addr", "show"]).splitlines():
        parts = line.split()
        if "inet" not in parts or parts[1] in skip:
            continue
        cidr = parts[parts.index("inet") + 1]
        net = _net(cidr)
        if net is not None and not net.is_loopback:
            uses.append(Use(net, f"the host's address {cidr} on {parts[1]}"))
    for line in _run(["ip", "-4", "route", "show", "table", "all"]).splitlines():
        parts = line.split()
        if not parts or parts[0] in ("default", "broadcast", "local", "multicast", "unreachable", "prohibit", "blackhole", "throw"):
            if not parts or parts[0] not in ("unreachable", "prohibit", "blackhole", "throw"):
                continue
            parts = parts[1:]
        dev = parts[parts.index("dev") + 1] if "dev" in parts else ""
        net = _net(parts[0])
        if net is None or net.prefixlen == 0 or net.is_loopback or dev in skip:
            continue
        uses.append(Use(net, f"the host's route {' '.join(line.split()[:5])}"))
    return uses


def _resolv_conf(path: Path = Path("/etc/resolv.conf")) -> list[Use]:
    uses = []
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split()
            net = _net(parts[1]) if len(parts) >= 2 and parts[0] == "nameserver" else None
            if net is not None and not net.is_loopback:
                uses.append(Use(net, f"the DNS server {parts[1]} ({path})"))
    return uses


def _etc_hosts(path: Path = Path("/etc/hosts")) -> list[Use]:
    uses = []
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split("#", 1)[0].split()
            if len(parts) >= 2 and (net := _net(parts[0])) is not None and not net.is_loopback:
                uses.append(Use(net, f"{parts[1]} ({parts[0]} in {path})"))
    return uses


def _apt_hosts() -> list[tuple[str, str]]:
    """(host, what) of every apt source."""
    found: list[tuple[str, str]] = []
    root = Path("/etc/apt")
    files = [root / "sources.list", *sorted((root / "sources.list.d").glob("*.list")),
             *sorted((root / "sources.list.d").glob("*.sources"))]
    uri = re.compile(r"\b(?:https?|ftp)://([^/\s:]+)")
    for f in files:
        with contextlib.suppress(OSError):
            for line in f.read_text(errors="replace").splitlines():
                line = line.split("#", 1)[0]
                for host in uri.findall(line):
                    found.append((host, f"an apt source ({f})"))
    return found


def _pip_hosts() -> list[tuple[str, str]]:
    """(host, what) of pip's index, extra indexes and find-links, from its config and env."""
    urls: list[tuple[str, str]] = []
    files = [os.environ.get("PIP_CONFIG_FILE", ""), "/etc/pip.conf", "/etc/xdg/pip/pip.conf",
             str(Path.home() / ".pip/pip.conf"), str(Path.home() / ".config/pip/pip.conf")]
    index_set = False
    for f in (x for x in files if x):
        cfg = configparser.ConfigParser(interpolation=None)
        with contextlib.suppress(OSError, configparser.Error):
            cfg.read(f)
            for section in cfg.sections():
                for key in ("index-url", "extra-index-url", "find-links", "index_url", "extra_index_url"):
                    if cfg.has_option(section, key):
                        index_set |= key.startswith("index")
                        urls += [(u, f"a pip source ({f})") for u in cfg.get(section, key).split()]
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"):
        if os.environ.get(var):
            index_set |= var == "PIP_INDEX_URL"
            urls += [(u, f"a pip source (${var})") for u in os.environ[var].split()]
    if not index_set:
        urls += [("https://pypi.org/simple", "pip's default index"), ("https://files.pythonhosted.org/", "pip's default index")]
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        if os.environ.get(var):
            urls.append((os.environ[var], f"the proxy ${var}"))
    out = []
    for u, what in urls:
        host = urllib.parse.urlsplit(u if "://" in u else f"//{u}").hostname
        if host:
            out.append((host, what))
    return out


def _resolve(names: Sequence[tuple[str, str]]) -> list[Use]:
    """The IPv4 addresses of ``names`` (bounded: names that take too long are left out)."""
    uses: list[Use] = []
    todo = list(dict.fromkeys(names))
    plain = [(h, w) for h, w in todo if _net(h) is not None]
    uses += [Use(_net(h), f"{h}, {w}") for h, w in plain]  # type: ignore[arg-type]
    hosts = list(dict.fromkeys(h for h, _ in todo if _net(h) is None and h != "localhost"))
    if not hosts:
        return uses
    what = {h: w for h, w in reversed(todo)}

    def look(host: str) -> list[str]:
        with contextlib.suppress(OSError, UnicodeError):
            return sorted({str(ai[4][0]) for ai in socket.getaddrinfo(host, None, socket.AF_INET)})
        return []

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(hosts)))
    futures = {pool.submit(look, h): h for h in hosts}
    with contextlib.suppress(concurrent.futures.TimeoutError):
        for fut in concurrent.futures.as_completed(futures, timeout=RESOLVE_TIMEOUT_S):
            host = futures[fut]
            for ip in fut.result():
                net = _net(ip)
                if net is not None and not net.is_loopback:
                    uses.append(Use(net, f"{host} ({ip}, {what[host]})"))
    pool.shutdown(wait=False, cancel_futures=True)
    return uses


def _connections() -> list[Use]:
    """Peers of the host's established TCP connections and connected UDP sockets."""
    uses: list[Use] = []
    for proto, path in (("tcp", "/proc/net/tcp"), ("udp", "/proc/net/udp")):
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines()[1:]:
                parts = line.split()
                if len(parts) < 4 or parts[3] != "01":  # ESTABLISHED (a connected UDP socket too)
                    continue
                hexip, _, hexport = parts[2].partition(":")
                ip = ipaddress.IPv4Address(int.from_bytes(bytes.fromhex(hexip), "little"))
                if ip.is_loopback or ip.is_unspecified:
                    continue
                uses.append(Use(ipaddress.IPv4Network(f"{ip}/32"), f"a {proto} connection of the host to {ip}:{int(hexport, 16)}"))
    return uses


def _docker_networks(networks: Iterable[dict[str, object]]) -> list[Use]:
    uses = []
    for n in networks:
        ipam = n.get("IPAM") or {}
        for cfg in (ipam.get("Config") or []) if isinstance(ipam, dict) else []:
            net = _net(str(cfg.get("Subnet", ""))) if isinstance(cfg, dict) else None
            if net is not None:
                uses.append(Use(net, f"the Docker network {n.get('Name')} ({net})"))
    return uses


def host_usage(*, docker_networks: Iterable[dict[str, object]] = (), ignore_ifaces: Iterable[str] = ()) -> list[Use]:
    """Everything the host is seen to use (see the module docstring)."""
    uses = _addresses_and_routes(ignore_ifaces)
    uses += _resolv_conf()
    uses += _etc_hosts()
    uses += _resolve(_apt_hosts() + _pip_hosts())
    uses += _connections()
    uses += _docker_networks(docker_networks)
    return uses


def check_overlap(lab: Sequence[tuple[str, str]], uses: Iterable[Use], *, where: str) -> None:
    """ConfigError naming the first clash of a lab subnet with ``uses``.

    ``lab``: (subnet, the topology key that moves it), e.g. ``("198.19.113.0/24",
    "compose.internet_subnet")``; ``where``: the topology file.
    """
    uses = list(uses)
    for subnet, key in lab:
        net = ipaddress.IPv4Network(subnet)
        for use in uses:
            if net.overlaps(use.net):
                raise ConfigError(
                    f"key '{key}': the lab's subnet {net} overlaps {use.what}; a Docker bridge on it "
                    f"would cut the host off from that; set [compose] {key.split('.', 1)[1]} in the "
                    "topology to a range the host does not use",
                    param=key, where=where,
                )


def host_usage6(ignore_ifaces: Iterable[str] = ()) -> list[tuple[ipaddress.IPv6Network, str]]:
    """The host's global IPv6 addresses and routes (not the default route, link-local,
    multicast or loopback): what an IPv6 lab bridge must not overlap."""
    skip = set(ignore_ifaces)
    out: list[tuple[ipaddress.IPv6Network, str]] = []
    for line in _run(["ip", "-o", "-6", "addr", "show"]).splitlines():
        parts = line.split()
        if "inet6" in parts and parts[1] not in skip:
            cidr = parts[parts.index("inet6") + 1]
            out.append((ipaddress.IPv6Network(cidr, strict=False), f"the host's address {cidr} on {parts[1]}"))
    for line in _run(["ip", "-6", "route", "show", "table", "all"]).splitlines():
        parts = line.split()
        if parts and parts[0] in ("unreachable", "prohibit", "blackhole", "throw"):
            parts = parts[1:]
        if not parts or parts[0] in ("default", "local", "multicast", "broadcast", "anycast"):
            continue
        dev = parts[parts.index("dev") + 1] if "dev" in parts else ""
        try:
            net = ipaddress.IPv6Network(parts[0], strict=False)
        except ValueError:
            continue
        if dev not in skip and net.prefixlen:
            out.append((net, f"the host's route {' '.join(line.split()[:5])}"))
    return [(n, w) for n, w in out if not (n.is_link_local or n.is_multicast or n.is_loopback)]


def check_overlap6(lab: Sequence[tuple[str, str]], uses: Iterable[tuple[ipaddress.IPv6Network, str]], *,
                   where: str) -> None:
    """ConfigError naming the first clash of a lab IPv6 prefix (prefix, what sets it) with ``uses``."""
    uses = list(uses)
    for prefix, key in lab:
        net = ipaddress.IPv6Network(prefix)
        for use, what in uses:
            if net.overlaps(use):
                raise ConfigError(
                    f"{key}: the lab's IPv6 prefix {net} overlaps {what}; a Docker bridge on it would "
                    "shadow that on the host; run this topology with --engine netns or free that prefix",
                    param="internet.subnet6", where=where,
                )


# -- the firewall exception -------------------------------------------------------------------


def _iptables() -> list[str]:
    """The iptables that holds Docker's chains (nft or legacy backend), or PrerequisiteError."""
    found = [x for x in ("iptables", "iptables-nft", "iptables-legacy") if shutil.which(x)]
    if not found:
        raise PrerequisiteError("the Compose lab needs iptables (Docker's firewall chains): apt-get install iptables")
    for tool in found:
        res = subprocess.run([tool, "-w", "5", "-S", "DOCKER-USER"], capture_output=True, text=True, timeout=20)
        if res.returncode == 0:
            return [tool, "-w", "5"]
    return [found[0], "-w", "5"]


def _chain(ipt: Sequence[str]) -> str:
    res = subprocess.run([*ipt, "-S", "DOCKER-USER"], capture_output=True, text=True, timeout=20)
    return "DOCKER-USER" if res.returncode == 0 else "FORWARD"


def lab_rules(tag: str | None = None) -> list[tuple[str, str]]:
    """(chain, rule spec) of the lab's rules (of ``tag``, or of every lab)."""
    ipt = _iptables()
    out = []
    for chain in ("DOCKER-USER", "FORWARD"):
        for line in _run([*ipt, "-S", chain]).splitlines():
            m = re.search(rf'--comment "?{COMMENT} (nk[0-9a-f]{{6}})"?', line)
            if line.startswith(f"-A {chain} ") and m and (tag is None or m.group(1) == tag):
                out.append((chain, line[len(f"-A {chain} "):]))
    return out


def remove_rules(tag: str | None = None) -> list[str]:
    """Delete the lab's rules (of ``tag``, or of every lab); what was removed."""
    ipt = _iptables()
    removed = []
    for chain, spec in lab_rules(tag):
        import shlex

        if subprocess.run([*ipt, "-D", chain, *shlex.split(spec)], capture_output=True, timeout=20).returncode == 0:
            removed.append(f"{chain} {spec}")
    return removed


class BridgeGuard:
    """The scoped exception for the bridges of one lab (see the module docstring)."""

    def __init__(self, tag: str, bridges: Sequence[str]) -> None:
        self.tag = tag
        self.bridges = list(bridges)
        self._ipt = _iptables()
        self._chain = _chain(self._ipt)
        self._forwarding6: dict[Path, str] = {}

    # Creating a network with IPv6, dockerd turns the host's IPv6 forwarding on; the lab's
    # bridges are internal (frames are bridged, nothing is routed by the host): put it back.
    FORWARDING6 = (Path("/proc/sys/net/ipv6/conf/all/forwarding"), Path("/proc/sys/net/ipv6/conf/default/forwarding"))

    def install(self) -> None:
        """Insert the ACCEPT rules (before the bridges exist: a rule names an interface)."""
        for path in self.FORWARDING6:
            with contextlib.suppress(OSError):
                self._forwarding6[path] = path.read_text().strip()
        for br in self.bridges:
            res = subprocess.run(
                [*self._ipt, "-I", self._chain, "-i", br, "-o", br, "-m", "comment", "--comment",
                 f"{COMMENT} {self.tag}", "-j", "ACCEPT"], capture_output=True, text=True, timeout=20,
            )
            if res.returncode != 0:
                raise PrerequisiteError(f"cannot add the lab's firewall exception: {res.stderr.strip()[:200]}; run as root")

    def seal(self) -> list[str]:
        """Take the host's addresses (and so its routes) off the lab's bridges and turn IPv6 off
        there; the bridges that are not there (yet)."""
        missing = []
        for br in self.bridges:
            if not Path(f"/sys/class/net/{br}").exists():
                missing.append(br)
                continue
            with contextlib.suppress(OSError):
                Path(f"/proc/sys/net/ipv6/conf/{br}/disable_ipv6").write_text("1")
            subprocess.run(["ip", "-4", "addr", "flush", "dev", br], capture_output=True, timeout=20)
        return missing

    def remove(self) -> None:
        remove_rules(self.tag)
        for path, value in self._forwarding6.items():
            with contextlib.suppress(OSError):
                if path.read_text().strip() != value:
                    path.write_text(value)
