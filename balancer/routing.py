"""Which agents a request should try, best first.  Framework-free.

The Lua claim in ``registry`` takes the first candidate that still has a free
slot, so this order is a preference, and the claim is the authority.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    agent_id: str
    slots_total: int
    slots_busy: int

    @property
    def load(self) -> float:
        return self.slots_busy / self.slots_total if self.slots_total else 1.0


def order_candidates(candidates: list[Candidate]) -> list[str]:
    """Least busy first; among equals, the agent with more free slots."""
    usable = [c for c in candidates if c.slots_total > 0]
    usable.sort(key=lambda c: (c.load, -(c.slots_total - c.slots_busy), c.agent_id))
    return [c.agent_id for c in usable]
