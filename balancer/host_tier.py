"""What an agent reports of its host-memory KV tier, read on the web tier.

Agents (``agents.host_cache``) put a ``host_cache`` object in their status:
entries, bytes, the byte budget, lookups and hits, and the routing hashes of
what it holds.  The panel and the metrics show the figures; routing reads the
hashes (``balancer.dispatch``).
"""

from __future__ import annotations

from typing import Any, TypedDict


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


def host_prefixes(report: dict[str, Any]) -> frozenset[str]:
    """The routing hashes an agent's tier holds (see ``balancer.routing``)."""
    raw = report.get("host_cache")
    if not isinstance(raw, dict):
        return frozenset()
    return frozenset(str(value) for value in raw.get("prefixes", []))
