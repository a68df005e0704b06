"""The agent RPC: a --peer command reaches an agent that was not forked from the orchestrator
(a container's) with its case."""

from __future__ import annotations

import asyncio
import socket
import sys

import pytest

from natkit.lab import stacks
from natkit.lab.agents import AgentClient, serve
from natkit.lab.stacks import PeerConfig

pytestmark = pytest.mark.timeout(60)


def test_a_peer_spec_comes_with_its_case() -> None:
    name = "agent-test-peer"
    # the command exits 0 at once: a connected case as far as its exit status goes
    spec = f"{name}={sys.executable} -c 'print(1)'"
    stacks.STACKS.pop(name, None)

    async def main() -> dict:
        ours, theirs = socket.socketpair()
        server = asyncio.ensure_future(serve(theirs))
        client = AgentClient("p", ours)
        await client.start()
        cfg = PeerConfig("room", "host", ("127.0.0.1", 9), [], 5.0)
        res = await client.call(20, op="case", stack=name, role="caller", config=cfg.to_json(), peer=spec)
        await client.close()
        await asyncio.wait_for(server, 10)
        return res

    try:
        res = asyncio.run(main())
    finally:
        stacks.STACKS.pop(name, None)
        stacks._cache.pop(name, None)
    assert res["stack"] == name and res["outcome"] == "connected", res
    assert res["report"]["exit_status"] == 0 and "not JSON" not in " ".join(res["report"]["notes"])
