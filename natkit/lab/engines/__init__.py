"""The lab's engines: what builds a topology and puts an agent in every node.

An engine turns a :class:`~natkit.lab.topology.Topology` and its
:class:`~natkit.lab.topology.Plan` into running nodes (routers applying their NAT kind's recipe,
peers, the servers' node) and gives the orchestrator a :class:`BuiltLab`: one connected agent
socket per node (``"srv"`` and every peer id) and, where it can, a packet capture of the
internet segment. Both engines are driven by the same public API,
:func:`natkit.lab.orchestrate.orchestrate` and :func:`natkit.lab.runner.finish`; neither
reaches into the other.

* ``netns`` (:mod:`natkit.lab.engines.netns`): network namespaces on this host;
  :func:`natkit.lab.runner.run` uses it.
* ``compose`` (:mod:`natkit.lab.engines.compose`): the Compose file of a topology, and the
  containers' side (routers, agents, and a runner container that calls the same API).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Protocol

from natkit.lab.capture import Capture

__all__ = ["ENGINES", "BuiltLab"]

ENGINES = ("netns", "compose")


class BuiltLab(Protocol):
    """A topology an engine has built, with an agent in every node.

    ``agents``: agent name (``"srv"``, peer ids of the plan) -> connected stream socket;
    ``capture``: the internet segment's capture, or None where the engine has none;
    ``stop_agents()``: make every agent exit (before the capture is finished and the nodes go).
    """

    engine: str
    tag: str
    capture: Capture | None

    @property
    def agents(self) -> Mapping[str, socket.socket]: ...

    def stop_agents(self) -> None: ...
