"""The NAT lab: real Linux NATs, real ICE stacks, a matrix against what the NAT types predict.

Library entry points (``natkit lab run`` is a thin shell over them)::

    import natkit.lab
    topo = natkit.lab.load("configs/lab/default.toml")      # or natkit.lab.load() for the default
    result = natkit.lab.run(topo)                            # a natkit.lab.LabResult
    print(result.passed, result.to_json()["cases"][0])
    result = natkit.lab.run_compose(topo)                    # the same under Docker Compose

The package, by job:

* ``topology`` (the TOML model and its address plan), ``cases`` (which cases a run holds);
* ``nats/`` (one module per NAT kind: RFC 4787 model + nftables recipe), ``expect`` (the
  outcome each case should have, derived from the models);
* ``stacks/`` (one adapter per ICE stack behind the ``Peer`` protocol), ``signaling``;
* ``engines/`` (``netns``; ``compose`` with ``compose_lab``, ``container``, ``image``,
  ``docker``, ``hostnet``), ``netns`` (the namespace toolkit), ``capture``;
* ``agents`` (the RPC to the agents in the nodes), ``servers`` (STUN, TURN, signaling),
  ``orchestrate`` (the one API every engine drives), ``runner`` (a whole run);
* ``results`` (typed results, JSON at the edge), ``evidence`` (packet evidence), ``report``
  and ``html`` (terminal and HTML reports), ``up`` (``natkit lab up/shell/down``).
"""

from __future__ import annotations

from natkit.lab.cases import browser_cases, select_cases
from natkit.lab.orchestrate import Orchestration, orchestrate
from natkit.lab.results import SCHEMA_VERSION, CaseResult, Evidence, LabResult, ProbeResult
from natkit.lab.runner import finish, run
from natkit.lab.topology import Case, Plan, Topology, load, loads


def run_compose(topo: Topology, **kwargs: object) -> LabResult:
    """:func:`natkit.lab.engines.compose_lab.run`: the lab under Docker Compose (imported on use)."""
    from natkit.lab.engines.compose_lab import run as compose_run

    return compose_run(topo, **kwargs)  # type: ignore[arg-type]

__all__ = [
    "SCHEMA_VERSION",
    "Case",
    "CaseResult",
    "Evidence",
    "LabResult",
    "Orchestration",
    "Plan",
    "ProbeResult",
    "Topology",
    "browser_cases",
    "finish",
    "load",
    "loads",
    "orchestrate",
    "run",
    "run_compose",
    "select_cases",
]
