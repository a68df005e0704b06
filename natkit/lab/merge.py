"""``natkit lab merge``: the reports of a run's shards (``--shard K/N``) joined into one.

Every shard's report carries the plan's id (:attr:`natkit.lab.matrix.Selection.id`), its shard
``{"index", "count"}`` and each case's ``index`` in the plan. :func:`merge` checks that the
reports are the N shards of one plan, each once, and returns one report of the same shape as an
unsharded run's: the cases in the plan's order, each NAT's probe once (a NAT probed by several
shards passes only if every probe did), the routers every shard built, every shard's errors, the
stack pairs counted again, and one verdict. ``merged`` lists the shards (host, start, duration).

A report is untrusted input: a file that is not a shard's report of this schema, however it is
broken (not JSON, nested too deep, wrong types, huge), stops the merge with one line naming it.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from typing import Any

from natkit.errors import ConfigError
from natkit.lab.results import SCHEMA_VERSION
from natkit.lab.summary import stack_pairs

__all__ = ["MAX_REPORT_BYTES", "load_reports", "merge"]

MAX_REPORT_BYTES = 512 << 20


def _fail(where: str, what: str) -> ConfigError:
    return ConfigError(what, param="reports", where=where)


def load_reports(paths: Sequence[str | os.PathLike[str]]) -> list[tuple[str, dict[str, Any]]]:
    """Read each path as a shard's JSON report: [(path, document)]."""
    out = []
    for p in paths:
        where = str(p)
        try:
            info = os.stat(p)
            if not stat.S_ISREG(info.st_mode):  # /dev/zero, a FIFO: never read to the end
                raise _fail(where, "not a regular file (a directory, device or FIFO); give a lab report")
            if info.st_size > MAX_REPORT_BYTES:
                raise _fail(where, f"{info.st_size} bytes: larger than any lab report ({MAX_REPORT_BYTES >> 20} MiB)")
            with open(p, "rb") as f:
                data = f.read(MAX_REPORT_BYTES + 1)  # a file that grows while read stays bounded
            if len(data) > MAX_REPORT_BYTES:
                raise _fail(where, f"larger than any lab report ({MAX_REPORT_BYTES >> 20} MiB)")
            doc = json.loads(data)
        except ConfigError:
            raise
        except OSError as exc:
            raise _fail(where, f"cannot read: {exc.strerror or exc}") from None
        except RecursionError:
            raise _fail(where, "not a lab report: JSON nested too deep") from None
        except ValueError as exc:
            raise _fail(where, f"not JSON: {exc}") from None
        out.append((where, _checked(where, doc)))
    return out


def _checked(where: str, doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict) or "schema_version" not in doc:
        raise _fail(where, "not a natkit lab run report (no schema_version)")
    if doc["schema_version"] != SCHEMA_VERSION:
        raise _fail(where, f"schema_version {doc['schema_version']!r}; this natkit merges version {SCHEMA_VERSION}")
    shard, plan = doc.get("shard"), doc.get("plan")
    if not isinstance(shard, dict) or not isinstance(plan, dict):
        raise _fail(where, "not a shard's report: run it with natkit lab run --shard K/N --json FILE")
    k, n = shard.get("index"), shard.get("count")
    if not (isinstance(k, int) and isinstance(n, int) and 1 <= k <= n) or not isinstance(plan.get("id"), str):
        raise _fail(where, "its 'shard' or 'plan' is malformed")
    for key in ("cases", "probes", "errors"):
        if not isinstance(doc.get(key), list):
            raise _fail(where, f"its {key!r} is not a list")
    for i, c in enumerate(doc["cases"]):
        if not isinstance(c, dict) or not isinstance(c.get("index"), int) or isinstance(c.get("index"), bool):
            raise _fail(where, f"cases[{i}] has no integer 'index'")
        nats = c.get("nats")
        if not (isinstance(nats, list) and len(nats) == 2 and all(isinstance(n, str) for n in nats)):
            raise _fail(where, f"cases[{i}].nats is not two NAT names")
        for key in ("path", "expected", "observed", "caller_stack", "callee_stack"):
            if not isinstance(c.get(key), str):
                raise _fail(where, f"cases[{i}].{key} is not a string")
        if not isinstance(c.get("pass"), bool):
            raise _fail(where, f"cases[{i}].pass is not true or false")
    for i, p in enumerate(doc["probes"]):
        if not isinstance(p, dict) or not isinstance(p.get("nat"), str):
            raise _fail(where, f"probes[{i}] has no 'nat'")
        if not isinstance(p.get("expected"), dict) or not isinstance(p.get("observed"), dict):
            raise _fail(where, f"probes[{i}] has no 'expected' and 'observed' objects")
    return doc


def merge(reports: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """One report from the shards' ``reports`` ([(where, document)], e.g. :func:`load_reports`)."""
    if not reports:
        raise ConfigError("give the shards' reports", param="reports")
    first_where, first = reports[0]
    plan_id, count = first["plan"]["id"], first["shard"]["count"]
    seen: dict[int, str] = {}
    for where, doc in reports:
        if doc["plan"]["id"] != plan_id:
            raise _fail(where, f"another plan ({doc['plan']['id']}) than {first_where} ({plan_id}): "
                        "shards must come from one topology, stacks and options")
        if doc["shard"]["count"] != count:
            raise _fail(where, f"shard of {doc['shard']['count']}, {first_where} of {count}")
        k = doc["shard"]["index"]
        if k in seen:
            raise _fail(where, f"shard {k}/{count} again (also {seen[k]})")
        seen[k] = where
    missing = [str(k) for k in range(1, count + 1) if k not in seen]
    if missing:
        raise ConfigError(f"shard(s) {', '.join(missing)} of {count} missing; give every shard's report", param="reports")

    cases: dict[int, dict[str, Any]] = {}
    probes: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    routers: dict[str, Any] = {}
    stacks: dict[str, Any] = {}
    merged = []
    for where, doc in sorted(reports, key=lambda r: r[1]["shard"]["index"]):
        tag = f"shard {doc['shard']['index']}/{count}"
        for c in doc["cases"]:
            if c["index"] in cases:
                raise _fail(where, f"case {c['index']} ({c.get('id')}) is in another shard too")
            cases[c["index"]] = c
        for p in doc["probes"]:
            kept = probes.get(p["nat"])
            if kept is None or (kept.get("pass") and not p.get("pass")):
                probes[p["nat"]] = p
        errors += [f"{tag}: {e}" for e in doc["errors"]]
        found = doc.get("lab")
        lab: dict[str, Any] = found if isinstance(found, dict) else {}
        for r in lab.get("routers", []) if isinstance(lab.get("routers"), list) else []:
            if isinstance(r, dict) and isinstance(r.get("id"), str):
                routers.setdefault(r["id"], r)
        for s in doc.get("stacks") or []:
            if isinstance(s, dict) and isinstance(s.get("name"), str):
                stacks.setdefault(s["name"], s)
        merged.append({"shard": doc["shard"], "report": where, "host": doc.get("host"),
                       "started_at": doc.get("started_at"), "duration_s": doc.get("duration_s"),
                       "cases": len(doc["cases"]), "pass": doc.get("pass")})
    total = first["plan"].get("cases")
    if isinstance(total, int) and len(cases) != total and not any(d.get("browser") for _, d in reports):
        errors.append(f"the shards hold {len(cases)} cases; the plan has {total}")
    ordered = [cases[i] for i in sorted(cases)]
    probe_list = list(probes.values())
    out: dict[str, Any] = {k: v for k, v in first.items() if k not in ("cases", "probes", "errors", "shard")}
    lab = dict(first.get("lab") or {})
    lab["routers"] = sorted(routers.values(), key=lambda r: r["id"])
    durations = [d["duration_s"] for d in merged if isinstance(d["duration_s"], int | float)]
    timings: dict[str, float] = {}
    for _, doc in reports:
        for k, v in (doc.get("timings") or {}).items() if isinstance(doc.get("timings"), dict) else ():
            if isinstance(v, int | float) and not isinstance(v, bool):
                timings[str(k)] = max(timings.get(str(k), 0.0), float(v))
    out.update({
        "pass": not errors and all(c.get("pass") is True for c in ordered) and all(p.get("pass") is True for p in probe_list),
        "duration_s": max(durations, default=0.0),
        "timings": timings,
        "lab": lab,
        "cases": ordered,
        "probes": probe_list,
        "errors": errors,
        "shard": None,
        "stacks": list(stacks.values()),
        "stack_pairs": stack_pairs(ordered),
        "merged": merged,
    })
    return out
