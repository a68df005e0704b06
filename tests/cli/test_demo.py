from __future__ import annotations

import json
import subprocess
import sys


def test_demo_probes_the_local_responder_and_finds_no_nat() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "natkit", "demo", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["nat_type"] == "open"
    assert data["public"]["ip"] == "127.0.0.1"
    assert data["servers"][0]["rfc5780"] is True
