"""Prometheus metrics for the TURN relay (opt-in: ``--metrics HOST:PORT``).

Values are read from the server's counters when Prometheus scrapes, so the relay's data path
pays nothing for them. The exporter knows nothing of the server but its ``stats()`` function
(the keys of :meth:`natkit.server.turn.TurnServer.stats`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from natkit.errors import ConfigError

Stats = Callable[[], dict[str, Any]]


class TurnCollector:
    """A prometheus-client collector over one relay's ``stats()``."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def describe(self) -> list[Any]:
        return []

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
            ("refused_peers", "Peer addresses refused by the peer policy (403)"),
            ("quota_refusals", "Requests refused by a quota (486/508)"),
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


def start_metrics(stats: Stats, host: str, port: int) -> MetricsEndpoint:
    """Serve ``/metrics`` from ``stats()`` on ``host:port`` in a background thread."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(TurnCollector(stats))
    try:
        httpd, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; pick another address",
            param="metrics",
        ) from None
    return MetricsEndpoint(httpd, thread)
