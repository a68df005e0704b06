"""The ``iceServers`` configuration: read it, and validate it exactly as a browser does.

The URL rules follow the W3C webrtc-pc "validate an ICE server URL" algorithm; each problem
names the DOMException a browser would throw and the JSON path of the offending value
(``iceServers[1].urls[0]``). Host and port are then split per RFC 7064/7065.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

import netaddr  # type: ignore[import-untyped]

from natkit import errors
from natkit.ice.jsonsafe import loads_strict, read_text_file, read_text_input

__all__ = [
    "DEFAULT_PORT",
    "SCHEMES",
    "ConfigError",
    "IceConfig",
    "IceConfigError",
    "IceServer",
    "IceUrl",
    "Problem",
    "coerce_config",
    "config_from_data",
    "config_from_urls",
    "load_config",
    "parse_config",
    "parse_ice_url",
    "read_text_file",
    "rest_expiry",
    "rest_timestamp_in_ms",
    "unwrap_envelope",
    "with_rest_credentials",
]

SCHEMES = ("stun", "stuns", "turn", "turns")
DEFAULT_PORT = {"stun": 3478, "turn": 3478, "stuns": 5349, "turns": 5349}


@dataclass(frozen=True)
class Problem:
    path: str  # JSON path, e.g. iceServers[1].urls[0]
    error: str  # the browser's exception name: SyntaxError, InvalidAccessError, TypeError...
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.error}: {self.message}"

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "error": self.error, "message": self.message}


class IceConfigError(errors.ConfigError):
    """An iceServers configuration a browser would reject (exit 2). ``problems`` lists all;
    ``where`` is the source and the JSON path of the first."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        first = problems[0]
        super().__init__(f"{first.error}: {first.message}{more}",
                         where=f"{source}: {first.path}" if source else first.path)


ConfigError = IceConfigError  # the name this module has always used


@dataclass(frozen=True)
class IceUrl:
    """One validated STUN/TURN URL."""

    url: str
    scheme: str
    host: str  # IPv6 without brackets
    port: int | None  # as written; None means SRV lookup, then the default port
    transport: str  # "udp" | "tcp" (stuns/turns: TLS over TCP)
    explicit_transport: bool
    path: str

    @property
    def is_turn(self) -> bool:
        return self.scheme in ("turn", "turns")

    @property
    def secure(self) -> bool:
        return self.scheme in ("stuns", "turns")

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else DEFAULT_PORT[self.scheme]

    @property
    def protocol(self) -> str:
        """Transport to the server as a user thinks of it: udp, tcp or tls."""
        return "tls" if self.secure else self.transport

    @property
    def host_is_ip(self) -> bool:
        return _is_ip(self.host)


@dataclass
class IceServer:
    urls: list[IceUrl]
    username: str | None
    credential: str | None
    path: str


@dataclass
class IceConfig:
    servers: list[IceServer]
    source: str = "<config>"
    warnings: list[str] = field(default_factory=list)

    def urls(self) -> list[tuple[IceServer, IceUrl]]:
        return [(server, url) for server in self.servers for url in server.urls]


# -- URL validation -----------------------------------------------------------------------

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_C0_OR_SPACE = "".join(chr(c) for c in range(0x21))


def parse_ice_url(url: str, path: str = "url") -> IceUrl:
    """Validate one URL like a browser. Raises ConfigError with the browser's error name."""
    problem = _url_problem(url)
    if isinstance(problem, str):
        raise ConfigError("", [Problem(path, "SyntaxError", problem)])
    scheme, opaque, query = problem
    try:
        host, port = _split_host_port(opaque, scheme)
    except ValueError as exc:
        raise ConfigError("", [Problem(path, "SyntaxError", f"'{_clip(url)}': {exc}")]) from None
    if query is not None:
        transport, explicit = query.split("=", 1)[1], True
    else:
        transport, explicit = ("tcp" if scheme in ("stuns", "turns") else "udp"), False
    return IceUrl(url, scheme, host, port, transport, explicit, path)


def _clip(text: str, limit: int = 80) -> str:
    """A user's text as it may appear in a one-line message: hostile input is huge."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"


def _url_problem(url: str) -> str | tuple[str, str, str | None]:
    """The W3C checks. Returns a message, or (scheme, opaque path, query)."""
    shown = _clip(url)
    # The URL parser strips leading/trailing C0 controls and spaces, and drops tabs/newlines.
    text = url.strip(_C0_OR_SPACE).replace("\t", "").replace("\n", "").replace("\r", "")
    if not text:
        return "empty URL"
    match = _SCHEME_RE.match(text)
    if not match:
        return f"'{shown}' is not a URL (expected stun:, stuns:, turn: or turns:HOST[:PORT])"
    scheme = match.group(1).lower()
    if scheme not in SCHEMES:
        return f"'{shown}': scheme '{_clip(scheme)}' is not stun, stuns, turn or turns"
    rest = text[match.end():]
    if rest.startswith("/"):
        return (
            f"'{shown}': no '//' after '{scheme}:' (write {scheme}:HOST:PORT, "
            f"not {scheme}://HOST:PORT)"
        )
    rest, hash_mark, _fragment = rest.partition("#")
    if hash_mark:
        return f"'{shown}' has a fragment ('#...'); remove it"
    opaque, qmark, query = rest.partition("?")
    if "/" in opaque or "@" in opaque:
        bad = "@" if "@" in opaque else "/"
        extra = " (put the username in the 'username' field)" if bad == "@" else ""
        return f"'{shown}' contains '{bad}'{extra}"
    if qmark and scheme in ("stun", "stuns"):
        return f"'{shown}': {scheme}: URLs take no query ('?{_clip(query)}'); remove it"
    if qmark and query not in ("transport=udp", "transport=tcp"):
        return (
            f"'{shown}': the only query a {scheme}: URL takes is ?transport=udp or "
            f"?transport=tcp, not '?{query}'"
        )
    return scheme, opaque, (query if qmark else None)


def _split_host_port(opaque: str, scheme: str) -> tuple[str, int | None]:
    if opaque.startswith("["):
        end = opaque.find("]")
        if end < 0:
            raise ValueError("missing ']' after the IPv6 address")
        host, tail = opaque[1:end], opaque[end + 1 :]
        if not _is_ip(host) or ":" not in host:
            raise ValueError(f"'[{_clip(host)}]' is not an IPv6 address")
        if tail and not tail.startswith(":"):
            raise ValueError(f"unexpected '{_clip(tail)}' after ']'")
        port_text = tail[1:] if tail else None
    else:
        host, colon, port_text_raw = opaque.partition(":")
        port_text = port_text_raw if colon else None
        if ":" in port_text_raw:
            raise ValueError("bare IPv6 address: put it in brackets, e.g. stun:[2001:db8::1]:3478")
        if not host:
            raise ValueError("no host")
        if not re.match(r"^[A-Za-z0-9\-._~%!$&'()*+,;=]+$", host):
            raise ValueError(f"'{_clip(host)}' is not a valid host name")
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or not port_text.isascii():
            raise ValueError(f"port '{_clip(port_text)}' is not a number")
        # Length first: a 5,000-digit port must not reach int() (Python caps digit strings).
        port = int(port_text) if len(port_text.lstrip("0")) <= 5 else 65536
        if not 1 <= port <= 65535:
            raise ValueError(f"port {_clip(port_text)} out of range 1-65535")
    return host, port


def _is_ip(host: str) -> bool:
    try:
        netaddr.IPAddress(host)
    except (netaddr.AddrFormatError, ValueError):
        return False
    return bool(re.match(r"^[0-9a-fA-F:.]+$", host)) and (":" in host or host.count(".") == 3)


# -- whole configurations -----------------------------------------------------------------


EXPECTED = '{"iceServers": [...]} or a list of RTCIceServer objects'


def load_json(path: str) -> tuple[Any, str]:
    """(decoded JSON, source) of an iceServers file ('-' for stdin), strictly and within
    bounds. Raises UsageError."""
    text, source = read_text_input(path, "an iceServers JSON file")
    return loads_strict(text.lstrip("\ufeff"), source, EXPECTED), source


def load_config(path: str, *, rest_secret: str | None = None, rest_user: str = "natkit-check",
                rest_ttl: float = 3600.0) -> IceConfig:
    """Read and validate an iceServers file ('-' for stdin). Raises UsageError/ConfigError.
    With ``rest_secret``, TURN credentials are minted as a TURN REST backend would (see
    :func:`with_rest_credentials`)."""
    data, source = load_json(path)
    return config_from_data(data, source, rest_secret=rest_secret, rest_user=rest_user,
                            rest_ttl=rest_ttl)


def parse_config(text: str, source: str = "<config>") -> IceConfig:
    return config_from_data(loads_strict(text.lstrip("\ufeff"), source, EXPECTED), source)


def coerce_config(config: Any) -> IceConfig:
    """An :class:`IceConfig` from itself, a file path or decoded JSON."""
    if isinstance(config, IceConfig):
        return config
    if isinstance(config, (str, os.PathLike)):
        return load_config(os.fspath(config))
    return config_from_data(config)


def unwrap_envelope(data: Any, source: str = "<config>") -> tuple[Any, list[str]]:
    """The RTCConfiguration inside a TURN provider's response envelope (Xirsys:
    ``{"v": {"iceServers": ...}, "s": "ok"}``, or ``{"d": {...}}``), with a warning saying
    what was unwrapped; the data unchanged when there is no envelope. An envelope that holds
    an error (``"s": "error"``) is a ConfigError."""
    if not isinstance(data, dict) or "iceServers" in data:
        return data, []
    for key in ("v", "d"):
        inner = data.get(key)
        if isinstance(inner, dict) and "iceServers" in inner:
            return inner, [f"{key}: a provider's response envelope; checked {key}.iceServers "
                           "(give RTCPeerConnection the inner {\"iceServers\": [...]})"]
    if data.get("s") == "error" or (set(data) <= {"s", "v", "d"} and "s" in data):
        detail = data.get("v") if isinstance(data.get("v"), str) else json.dumps(data)[:200]
        raise ConfigError(source, [Problem("$", "TypeError",
                                           f"the provider answered with an error: {detail}")])
    return data, []


def with_rest_credentials(data: Any, secret: str, user: str = "natkit-check",
                          ttl: float = 3600.0, now: float | None = None) -> tuple[Any, list[str]]:
    """``data`` with the username/credential of every server that has a TURN URL replaced by
    TURN REST API credentials (draft-uberti-behave-turn-rest: username ``expiry:user``,
    password base64(HMAC-SHA1(secret, username))), as a credential backend would mint them;
    and a warning per server saying so."""
    from natkit.turn.auth import rest_credentials

    if not secret:
        raise errors.ConfigError("the TURN REST secret is empty", param="rest_secret")
    if ":" in user:
        raise errors.ConfigError(f"user {user!r} contains ':' (the REST username separator)",
                                 param="rest_user")
    if not 0 < ttl <= 7 * 86400:
        raise errors.ConfigError(f"expected 1 s to 7 days, got {ttl:g} s", param="rest_ttl")
    data, _ = unwrap_envelope(data)
    items = data.get("iceServers") if isinstance(data, dict) else data
    if not isinstance(items, list):
        return data, []
    username, password = rest_credentials(secret, ttl, time.time() if now is None else now, user)
    base = "iceServers" if isinstance(data, dict) else ""
    warnings: list[str] = []
    out = []
    for i, item in enumerate(items):
        urls = item.get("urls", item.get("url")) if isinstance(item, dict) else None
        urls = [urls] if isinstance(urls, str) else urls if isinstance(urls, list) else []
        if any(isinstance(u, str) and u.lower().startswith(("turn:", "turns:")) for u in urls):
            item = {**item, "username": username, "credential": password}
            warnings.append(f"{base}[{i}]: credentials minted from the TURN REST secret "
                            f"(username {username}, valid {ttl:g} s)")
        out.append(item)
    return ({**data, "iceServers": out} if isinstance(data, dict) else out), warnings


def config_from_data(data: Any, source: str = "<config>", *, rest_secret: str | None = None,
                     rest_user: str = "natkit-check", rest_ttl: float = 3600.0) -> IceConfig:
    """Validate already-decoded JSON: an RTCConfiguration or a bare list of RTCIceServer (a
    provider's envelope is unwrapped, with a warning)."""
    problems: list[Problem] = []
    data, warnings = unwrap_envelope(data, source)
    if rest_secret is not None:
        data, minted = with_rest_credentials(data, rest_secret, rest_user, rest_ttl)
        warnings += minted
    if isinstance(data, dict):
        if "iceServers" not in data:
            raise ConfigError(source, [Problem(
                "$", "TypeError", "no 'iceServers' member; expected {\"iceServers\": [...]}"
            )])
        items, base = data["iceServers"], "iceServers"
        if isinstance(items, dict) and ("urls" in items or "url" in items):
            raise ConfigError(source, [Problem(
                "iceServers", "TypeError", "iceServers is one RTCIceServer object, not a list: "
                "wrap it in [...] (a browser throws TypeError; Xirsys answers in this shape)")])
    elif isinstance(data, list):
        items, base = data, ""
    else:
        raise ConfigError(source, [Problem(
            "$", "TypeError",
            f"expected an object with 'iceServers' or a list, got {_json_type(data)}",
        )])
    if not isinstance(items, list):
        raise ConfigError(source, [Problem(
            base or "$", "TypeError", f"expected a list of RTCIceServer, got {_json_type(items)}"
        )])
    servers: list[IceServer] = []
    for i, item in enumerate(items):
        path = f"{base}[{i}]"
        server = _server(item, path, problems, warnings)
        if server is not None:
            servers.append(server)
    if problems:
        raise ConfigError(source, problems)
    seen: dict[str, str] = {}
    for server in servers:
        for url in server.urls:
            if url.url in seen:
                warnings.append(f"{url.path}: '{url.url}' repeats {seen[url.url]}")
            seen.setdefault(url.url, url.path)
    if not servers:
        warnings.append("iceServers is empty: only host candidates will be gathered")
    turn = [u for s in servers for u in s.urls if u.is_turn]
    if turn and all(u.protocol == "udp" for u in turn):
        warnings.append(
            "TURN only over UDP: clients behind firewalls that block UDP get no relay; add "
            "turn:HOST:PORT?transport=tcp and turns:HOST:443?transport=tcp"
        )
    return IceConfig(servers, source, warnings)


def _server(item: Any, path: str, problems: list[Problem], warnings: list[str]) -> IceServer | None:
    if not isinstance(item, dict):
        problems.append(Problem(path, "TypeError", f"expected an object, got {_json_type(item)}"))
        return None
    if "urls" in item:
        raw_urls, urls_key = item["urls"], "urls"
    elif "url" in item:
        raw_urls, urls_key = item["url"], "url"
        warnings.append(f"{path}.url is deprecated; rename it to 'urls'")
    else:
        problems.append(Problem(path, "TypeError", "required member 'urls' is missing"))
        return None
    for key in ("username", "credential"):
        if key in item and not isinstance(item[key], str):
            problems.append(Problem(
                f"{path}.{key}", "TypeError", f"expected a string, got {_json_type(item[key])}"
            ))
    ctype = item.get("credentialType", "password")
    if ctype != "password":
        problems.append(Problem(
            f"{path}.credentialType", "NotSupportedError"
            if isinstance(ctype, str) else "TypeError",
            f"credentialType {json.dumps(ctype)} is not supported; use \"password\"",
        ))
    known = {"urls", "url", "username", "credential", "credentialType"}
    for key in item:
        if key not in known:
            warnings.append(f"{path}.{key}: unknown member, ignored by browsers")
    if isinstance(raw_urls, str):
        url_items: list[tuple[str, Any]] = [(f"{path}.{urls_key}", raw_urls)]
    elif isinstance(raw_urls, list):
        url_items = [(f"{path}.{urls_key}[{j}]", u) for j, u in enumerate(raw_urls)]
        if not raw_urls:
            problems.append(Problem(f"{path}.{urls_key}", "SyntaxError", "urls is an empty list"))
    else:
        problems.append(Problem(
            f"{path}.{urls_key}", "TypeError",
            f"expected a string or a list of strings, got {_json_type(raw_urls)}",
        ))
        return None
    username = item.get("username") if isinstance(item.get("username"), str) else None
    credential = item.get("credential") if isinstance(item.get("credential"), str) else None
    urls: list[IceUrl] = []
    for upath, raw in url_items:
        if not isinstance(raw, str):
            problems.append(Problem(upath, "TypeError", f"expected a string, got {_json_type(raw)}"))
            continue
        try:
            url = parse_ice_url(raw, upath)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if url.is_turn:
            missing = [k for k in ("username", "credential") if k not in item]
            if missing:
                problems.append(Problem(
                    upath, "InvalidAccessError",
                    f"'{raw}' is a TURN URL but the server has no "
                    f"{' or '.join(missing)}; add them to {path}",
                ))
                continue
        urls.append(url)
    if username is not None and not any(u.is_turn for u in urls) and urls:
        warnings.append(f"{path}: username/credential given but only STUN URLs: they are unused")
    if username is not None and any(u.is_turn for u in urls):
        ms = rest_timestamp_in_ms(username)
        if ms is not None:
            warnings.append(f"{path}.username: {MS_TIMESTAMP.format(stamp=ms)}")
        expiry = rest_expiry(username)
        if expiry is not None and expiry < time.time():
            warnings.append(
                f"{path}.username: REST credential expired "
                f"{_ago(time.time() - expiry)} ago (timestamp {int(expiry)}); fetch a fresh one"
            )
    return IceServer(urls, username, credential, path)


def rest_expiry(username: str) -> float | None:
    """The expiry of a TURN REST API username (``timestamp:user`` or ``user:timestamp``,
    draft-uberti-behave-turn-rest), or None when the username has no timestamp."""
    parts = username.split(":")
    for part in (parts[0], parts[-1]) if len(parts) > 1 else (parts[0],):
        if part.isascii() and part.isdigit() and 9 <= len(part) <= 11:
            return float(part)
    return None


MS_TIMESTAMP = ("the REST timestamp {stamp} is in milliseconds (JavaScript's Date.now()); "
                "TURN REST usernames carry UNIX seconds: Math.floor(Date.now() / 1000) + ttl")


def rest_timestamp_in_ms(username: str) -> int | None:
    """The timestamp of a REST username written in milliseconds (13 digits that make a
    plausible date as ms), or None."""
    parts = username.split(":")
    for part in (parts[0], parts[-1]) if len(parts) > 1 else (parts[0],):
        if (part.isascii() and part.isdigit() and 12 <= len(part) <= 14
                and 946684800 <= int(part) / 1000 <= 32503680000):  # 2000 .. 3000
            return int(part)
    return None


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def config_from_urls(
    stun: list[str] | None = None,
    turn: list[str] | None = None,
    username: str | None = None,
    credential: str | None = None,
) -> IceConfig:
    """A configuration from command-line URLs (``--stun``/``--turn``)."""
    servers: list[dict[str, Any]] = []
    if stun:
        servers.append({"urls": list(stun)})
    if turn:
        entry: dict[str, Any] = {"urls": list(turn)}
        if username is not None:
            entry["username"] = username
        if credential is not None:
            entry["credential"] = credential
        servers.append(entry)
    return config_from_data({"iceServers": servers}, "command line")
