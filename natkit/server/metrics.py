"""Prometheus metrics for the TURN relay (opt-in: ``--metrics HOST:PORT``).

Values are read from the server's counters when Prometheus scrapes, so the relay's data path
pays nothing for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from natkit.errors import UsageError

if TYPE_CHECKING:
    from natkit.server.turn import TurnServer


class TurnCollector:
    """A prometheus-client collector over one TurnServer."""

    def __init__(self, server: TurnServer) -> None:
        self.server = server

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.server.stats()
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


def start_metrics(server: TurnServer, host: str, port: int) -> MetricsEndpoint:
    """Serve ``/metrics`` for ``server`` on ``host:port`` in a background thread."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(TurnCollector(server))
    try:
        httpd, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise UsageError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; pick another --metrics HOST:PORT"
        ) from None
    return MetricsEndpoint(httpd, thread)
