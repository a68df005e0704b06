"""Codec microbenchmarks: ``python -m tests.stun.bench_codec`` (figures in docs/benchmarks.md).

Times decode and encode of typical messages with timeit, best of five repeats, in µs per call.
"""

from __future__ import annotations

import json
import sys
import timeit

from natkit.stun import Attr, Class, Message, Method, decode, short_term_key, verify_integrity
from tests.stun import vectors as v

BINDING_REQUEST = Message(Method.BINDING).encode()
KEY = short_term_key(v.PASSWORD)


def _cases() -> dict[str, object]:
    resp = Message(Method.BINDING, Class.SUCCESS).add(Attr.XOR_MAPPED_ADDRESS, ("192.0.2.1", 3))
    return {
        "decode binding request (20 B)": lambda: decode(BINDING_REQUEST),
        "decode RFC 5769 request (108 B)": lambda: decode(v.REQUEST),
        "decode + verify RFC 5769 request": lambda: verify_integrity(decode(v.REQUEST), KEY),
        "encode binding success (XOR-MAPPED-ADDRESS)": resp.encode,
        "encode + MI + FINGERPRINT": lambda: resp.encode(key=KEY, fingerprint=True),
    }


def run(number: int = 20000) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, fn in _cases().items():
        best = min(timeit.repeat(fn, number=number, repeat=5))  # type: ignore[arg-type]
        out[name] = round(best / number * 1e6, 2)
    return out


if __name__ == "__main__":
    results = run(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
    if "--json" in sys.argv:
        print(json.dumps(results, indent=2))
    else:
        for name, us in results.items():
            print(f"{us:8.2f} µs  {name}")
