"""Prometheus metrics for the TURN relay and the STUN responder (opt-in: ``--metrics
HOST:PORT``).

Values are read from the server's counters when Prometheus scrapes, so the data path pays
nothing for them. An exporter knows nothing of its server but its ``stats()`` function (the
keys of :meth:`natkit.server.turn.TurnServer.stats` / :meth:`natkit.server.stun.StunServer.stats`).
Labels take bounded values only: refusal reasons (natkit.turn.policy.reason_label), drop
reasons (natkit.server._stream.DROP_REASONS), TLS failure kinds
(natkit.server._tls.FAILURE_KINDS), error codes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from natkit.errors import ConfigError
from natkit.server._tls import FAILURE_KINDS

Stats = Callable[[], dict[str, Any]]


class _Collector:
    """A prometheus-client collector over one server's ``stats()`` (described on scrape)."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def describe(self) -> list[Any]:
        return []


class TurnCollector(_Collector):
    """The relay's metrics."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.stats()
        for name, help_text in (
            ("allocations", "Allocations currently held"),
            ("permissions", "Permissions currently installed"),
            ("channels", "Channel bindings currently installed"),
            ("relay_sockets", "Relay sockets open"),
            ("connections", "TCP/TLS client connections open"),
        ):
            yield GaugeMetricFamily(f"natkit_turn_{name}", help_text, value=stats[name])
        for name, help_text in (
            ("allocations_created", "Allocations created"),
            ("allocations_expired", "Allocations that expired without a refresh"),
            ("auth_failures", "Failed authentications"),
            (
                "auth_blocked",
                "Requests dropped because their source failed authentication too often",
            ),
            ("quota_refusals", "Requests refused by a quota (486/508)"),
            (
                "rate_limited_responses",
                "Error responses to unauthenticated UDP sources not sent (per-source budget)",
            ),
            ("from_own_relay", "Requests that came from the relay's own relayed addresses"),
            ("bad_packets", "Malformed packets from clients"),
            ("dropped_packets", "Relayed packets dropped (no permission/channel, cap, send error)"),
            ("bugs", "Internal errors (bugs): logged with their traceback, answered 500"),
        ):
            yield CounterMetricFamily(f"natkit_turn_{name}", help_text, value=stats[name])
        packets = CounterMetricFamily(
            "natkit_turn_relayed_packets", "Packets relayed", labels=["direction"]
        )
        packets.add_metric(["to_peer"], stats["to_peer_packets"])
        packets.add_metric(["to_client"], stats["to_client_packets"])
        yield packets
        sent = CounterMetricFamily(
            "natkit_turn_relayed_bytes", "Payload bytes relayed", labels=["direction"]
        )
        sent.add_metric(["to_peer"], stats["to_peer_bytes"])
        sent.add_metric(["to_client"], stats["to_client_bytes"])
        yield sent
        errors = CounterMetricFamily(
            "natkit_turn_error_responses", "Error responses sent", labels=["code"]
        )
        for code, count in sorted(stats["errors"].items()):
            errors.add_metric([str(code)], count)
        yield errors
        yield _labelled(
            "natkit_turn_refused_peers",
            "Peers refused (403), by reason",
            "reason",
            stats["refused_by_reason"],
        )
        yield from _stream_metrics("natkit_turn", stats["stream"])


def _labelled(name: str, help_text: str, label: str, values: dict[str, int]) -> Any:
    from prometheus_client.core import CounterMetricFamily

    family = CounterMetricFamily(name, help_text, labels=[label])
    for value, count in sorted(values.items()):
        family.add_metric([value], count)
    return family


def _stream_metrics(prefix: str, stream: dict[str, Any]) -> Iterator[Any]:
    yield _labelled(
        f"{prefix}_connections_dropped",
        "TCP/TLS connections refused or closed by the stream limits, by reason",
        "reason",
        stream["dropped"],
    )
    yield _labelled(
        f"{prefix}_tls_handshake_failures",
        "Failed TLS handshakes, by kind",
        "kind",
        {kind: stream["tls_failures"].get(kind, 0) for kind in FAILURE_KINDS},
    )


class StunCollector(_Collector):
    """The STUN responder's metrics."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.stats()
        udp, stream = stats["udp"], stats["stream"]
        responses = CounterMetricFamily(
            "natkit_stun_responses", "Responses sent", labels=["transport"]
        )
        responses.add_metric(["udp"], udp["responses"])
        responses.add_metric(["stream"], stream["responses"])
        yield responses
        dropped = CounterMetricFamily(
            "natkit_stun_udp_dropped", "UDP datagrams not answered, by reason", labels=["reason"]
        )
        for reason in ("garbage", "ignored", "dropped", "rate_limited", "errors"):
            dropped.add_metric([reason], udp[reason])
        yield dropped
        yield GaugeMetricFamily(
            "natkit_stun_connections", "TCP/TLS connections open", value=stream["open"]
        )
        yield CounterMetricFamily(
            "natkit_stun_change_requests_without_rfc5780",
            "CHANGE-REQUESTs received without RFC 5780 mode (answered 420)",
            value=stats["change_requests_without_rfc5780"],
        )
        yield from _stream_metrics("natkit_stun", stream)


class MetricsEndpoint:
    """The HTTP endpoint; ``shutdown()`` stops it."""

    def __init__(self, httpd: Any, thread: Any) -> None:
        self.httpd = httpd
        self.thread = thread
        self.address = httpd.server_address[:2]

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(2.0)


def start_metrics(
    stats: Stats,
    host: str,
    port: int,
    *,
    collector: Callable[[Stats], Any] = TurnCollector,
    param: str = "metrics",
) -> MetricsEndpoint:
    """Serve ``/metrics`` from ``stats()`` on ``host:port`` in a background thread."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(collector(stats))
    try:
        httpd, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; pick another address",
            param=param,
        ) from None
    return MetricsEndpoint(httpd, thread)
