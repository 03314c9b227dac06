"""What an agent reports of its host-memory and disk KV tiers, read on the
web tier.

Agents (``agents.host_cache``) put a ``host_cache`` object in their status:
entries, bytes, the byte budget, lookups and hits, and the routing hashes of
what it holds; an agent with a disk tier (``agents.disk_cache``) nests a
``disk`` object in it: files, bytes, the byte budget, states read back, and
what went wrong (corrupt files, foreign files, writes dropped).  The panel
and the metrics show the figures; routing reads the hashes
(``balancer.dispatch``).
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict


class HostTier(TypedDict):
    entries: int
    bytes: int
    budget_bytes: int
    lookups: int
    hits: int
    # hits / lookups, 0 before the first lookup.
    hit_rate: float


def host_tier(report: dict[str, Any]) -> HostTier | None:
    """The figures of an agent's status report; None for an agent that
    reports no tier (an older agent, or one with no engine yet)."""
    raw = report.get("host_cache")
    if not isinstance(raw, dict):
        return None
    lookups = int(raw.get("lookups", 0))
    hits = int(raw.get("hits", 0))
    return {
        "entries": int(raw.get("entries", 0)),
        "bytes": int(raw.get("bytes", 0)),
        "budget_bytes": int(raw.get("budget_bytes", 0)),
        "lookups": lookups,
        "hits": hits,
        "hit_rate": hits / lookups if lookups else 0.0,
    }


class DiskTier(TypedDict):
    files: int
    bytes: int
    budget_bytes: int
    # States read back from a file into host memory.
    hits: int
    # hits / the host tier's lookups: the share of looked-up prompts that a
    # file served.  Every disk read starts from a lookup; the disk tier keeps
    # no lookup count of its own.
    hit_rate: float
    writes: int
    # Since the agent started: files found corrupt (deleted), files of
    # another model, context shape or runtime met when loading (left alone),
    # and states not written because the writer fell behind.
    corrupt: int
    foreign: int
    dropped_writes: int


# The figures of ``DiskTier``, by name.
DiskFigure = Literal[
    "files",
    "bytes",
    "budget_bytes",
    "hits",
    "hit_rate",
    "writes",
    "corrupt",
    "foreign",
    "dropped_writes",
]


def disk_tier(report: dict[str, Any]) -> DiskTier | None:
    """The disk tier's figures of an agent's status report; None for an
    agent without one (no ``--cache-dir``, or an older agent)."""
    host = report.get("host_cache")
    if not isinstance(host, dict) or not isinstance(host.get("disk"), dict):
        return None
    raw = host["disk"]
    lookups = int(host.get("lookups", 0))
    hits = int(raw.get("hits", 0))
    return {
        "files": int(raw.get("files", 0)),
        "bytes": int(raw.get("bytes", 0)),
        "budget_bytes": int(raw.get("budget_bytes", 0)),
        "hits": hits,
        "hit_rate": hits / lookups if lookups else 0.0,
        "writes": int(raw.get("writes", 0)),
        "corrupt": int(raw.get("corrupt", 0)),
        "foreign": int(raw.get("foreign", 0)),
        "dropped_writes": int(raw.get("dropped_writes", 0)),
    }


def host_prefixes(report: dict[str, Any]) -> frozenset[str]:
    """The routing hashes an agent's tier holds (see ``balancer.routing``)."""
    raw = report.get("host_cache")
    if not isinstance(raw, dict):
        return frozenset()
    return frozenset(str(value) for value in raw.get("prefixes", []))
