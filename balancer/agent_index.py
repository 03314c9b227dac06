"""The fleet as one web process sees it, indexed for routing.  Framework-free.

``routing.decide`` orders every agent for every request: it builds a
candidate per agent, sorts them all, and compares the request's prefix chain
with every idle slot's.  Its cost grows with the fleet.  This index keeps the
same facts arranged so that a decision costs the same at 10 agents as at
1,000:

- per pool, the usable agents (``slots_total > 0``) in ``routing``'s
  least-busy order, kept sorted as reports come in (one ``bisect`` per
  change), so the least busy agents are the first entries;
- per pool, a second such order of only the agents that serve images
  (their report's ``serves_images`` is True; one that reports nothing
  serves none), so a request with images is decided the same way over them;
- per pool, which agents' idle slots and host tiers hold each prefix hash,
  so the longest cache match is found by looking the request's own hashes
  up, deepest first, instead of scanning every slot.

``decide`` gives the decision ``routing.decide`` gives over the same agents,
cut to the first ``limit`` agents: the Lua claim (``registry.acquire_slot``)
takes the first of them with a free slot, and passing it the whole fleet
would make each claim cost Redis a step per agent.

Each hash of a chain covers the whole chain before it (``routing._chain``),
so a request's hash at depth ``d`` found in a slot's chain means the first
``d + 1`` entries agree: the same match length ``routing.matched_length``
counts.

Busy slots: the larger of what the agent last reported and the claims this
process holds on it (``claimed``).  Claims other web replicas made show once
the agent reports them, a few milliseconds later; until then the Lua claim,
which counts every replica's claims, is the authority and only the order can
be slightly off.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from balancer.host_tier import host_prefixes
from balancer.registry import AgentRecord
from balancer.routing import Decision, NoAgentServesImages

# (load, -free slots, -empty slots, agent id): routing._least_busy's key.
SortKey = tuple[float, int, int, str]


@dataclass
class _Entry:
    record: AgentRecord
    seq: int
    heard_at: float
    key: SortKey | None  # None: not usable (no slots), so not in the order
    serves_images: bool
    slot_hashes: frozenset[str]
    host_hashes: frozenset[str]


def _sort_key(record: AgentRecord, own_claims: int) -> SortKey | None:
    if record.slots_total <= 0:
        return None
    busy = max(record.slots_busy, own_claims)
    idle = [s for s in record.report.get("slots", []) if not s.get("busy")]
    empty = sum(1 for slot in idle if not slot.get("prefix"))
    return (
        busy / record.slots_total,
        -(record.slots_total - busy),
        -empty,
        record.id,
    )


def _serves_images(record: AgentRecord) -> bool:
    # Agents from before images report nothing: they serve none.
    return record.report.get("serves_images") is True


def _idle_hashes(record: AgentRecord) -> frozenset[str]:
    return frozenset(
        str(value)
        for slot in record.report.get("slots", [])
        if not slot.get("busy")
        for value in slot.get("prefix", [])
    )


class _Pool:
    """One pool's agents in least-busy order (all of them, and those that
    serve images), and its prefix indexes."""

    def __init__(self) -> None:
        self.order: list[SortKey] = []
        # The entries of ``order`` whose agent serves images, in that order.
        self.images: list[SortKey] = []
        self.in_slots: dict[str, set[str]] = {}
        self.in_host: dict[str, set[str]] = {}

    def place(
        self,
        old: SortKey | None,
        new: SortKey | None,
        *,
        old_images: bool,
        new_images: bool,
    ) -> None:
        """Move an agent from ``old`` to ``new`` in the orders; ``None`` is
        out of them, and only agents serving images are in ``images``."""
        self._move(self.order, old, new)
        self._move(
            self.images, old if old_images else None, new if new_images else None
        )

    @staticmethod
    def _move(order: list[SortKey], old: SortKey | None, new: SortKey | None) -> None:
        if old == new:
            return
        if old is not None:
            index = bisect.bisect_left(order, old)
            if index < len(order) and order[index] == old:
                del order[index]
        if new is not None:
            bisect.insort(order, new)

    @staticmethod
    def reindex(
        index: dict[str, set[str]],
        agent_id: str,
        old: frozenset[str],
        new: frozenset[str],
    ) -> None:
        for value in old - new:
            holders = index.get(value)
            if holders is not None:
                holders.discard(agent_id)
                if not holders:
                    del index[value]
        for value in new - old:
            index.setdefault(value, set()).add(agent_id)

    def empty(self) -> bool:
        return not self.order and not self.in_slots and not self.in_host


class AgentIndex:
    """Agent records by id, kept in routing order per pool."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._pools: dict[str, _Pool] = {}
        # This process's claims per agent (see the module's docstring).
        self._own: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._entries

    def get(self, agent_id: str) -> AgentRecord | None:
        entry = self._entries.get(agent_id)
        return entry.record if entry is not None else None

    def seq(self, agent_id: str) -> int | None:
        entry = self._entries.get(agent_id)
        return entry.seq if entry is not None else None

    def records(self) -> list[AgentRecord]:
        return [entry.record for entry in self._entries.values()]

    def ids(self) -> set[str]:
        return set(self._entries)

    def update(self, record: AgentRecord, *, seq: int, now: float) -> bool:
        """Take an agent's report; False (and nothing changed) when it is
        older than the one held (``seq`` counts an agent's reports)."""
        entry = self._entries.get(record.id)
        if entry is not None and seq < entry.seq:
            return False
        if entry is not None and entry.record.pool != record.pool:
            self.remove(record.id)
            entry = None
        pool = self._pools.setdefault(record.pool, _Pool())
        key = _sort_key(record, self._own.get(record.id, 0))
        images = _serves_images(record)
        slot_hashes = _idle_hashes(record)
        host_hashes = host_prefixes(record.report)
        if entry is None:
            entry = _Entry(record, seq, now, None, False, frozenset(), frozenset())
            self._entries[record.id] = entry
        pool.place(entry.key, key, old_images=entry.serves_images, new_images=images)
        pool.reindex(pool.in_slots, record.id, entry.slot_hashes, slot_hashes)
        pool.reindex(pool.in_host, record.id, entry.host_hashes, host_hashes)
        entry.record, entry.seq, entry.heard_at, entry.key = record, seq, now, key
        entry.serves_images = images
        entry.slot_hashes, entry.host_hashes = slot_hashes, host_hashes
        return True

    def touch(self, agent_id: str, *, seq: int, now: float) -> bool:
        """An agent said it lives and that its report is unchanged since
        ``seq``.  False when that is not the report held here (it was missed,
        or this process never saw the agent): the caller reads it."""
        entry = self._entries.get(agent_id)
        if entry is None or entry.seq < seq:
            return False
        entry.heard_at = now
        return True

    def remove(self, agent_id: str) -> None:
        entry = self._entries.pop(agent_id, None)
        if entry is None:
            return
        pool = self._pools.get(entry.record.pool)
        if pool is None:
            # Its pool's index is gone already: nothing left to unplace.
            return
        pool.place(entry.key, None, old_images=entry.serves_images, new_images=False)
        pool.reindex(pool.in_slots, agent_id, entry.slot_hashes, frozenset())
        pool.reindex(pool.in_host, agent_id, entry.host_hashes, frozenset())
        if pool.empty():
            del self._pools[entry.record.pool]

    def expire(self, heard_before: float) -> list[str]:
        """Drop the agents not heard from since ``heard_before``: their
        heartbeat key has expired in Redis too (a lost 'gone' notification
        cannot keep an agent here)."""
        stale = [i for i, e in self._entries.items() if e.heard_at < heard_before]
        for agent_id in stale:
            self.remove(agent_id)
        return stale

    def oldest_heard_at(self) -> float | None:
        """When the agent heard from longest ago was last heard from."""
        return min((e.heard_at for e in self._entries.values()), default=None)

    def claimed(self, agent_id: str, delta: int) -> None:
        """This process took (+1) or gave back (-1) a slot on ``agent_id``."""
        count = max(0, self._own.get(agent_id, 0) + delta)
        if count:
            self._own[agent_id] = count
        else:
            self._own.pop(agent_id, None)
        entry = self._entries.get(agent_id)
        if entry is not None:
            key = _sort_key(entry.record, count)
            pool = self._pools.get(entry.record.pool)
            if pool is not None:
                pool.place(
                    entry.key,
                    key,
                    old_images=entry.serves_images,
                    new_images=entry.serves_images,
                )
            entry.key = key

    def busy(self, agent_id: str) -> int:
        """Busy slots as this process counts them (see ``claimed``)."""
        entry = self._entries.get(agent_id)
        if entry is None:
            return 0
        return max(entry.record.slots_busy, self._own.get(agent_id, 0))

    def usable(self, pool: str) -> int:
        """How many of ``pool``'s agents take work (have slots)."""
        found = self._pools.get(pool)
        return len(found.order) if found is not None else 0

    def with_free_slots(
        self, pool: str, exclude: Collection[str] = (), *, images: bool = False
    ) -> list[str]:
        """``pool``'s agents that have a free slot as far as this process
        knows, least busy first; with ``images``, only those serving images."""
        found = self._pools.get(pool)
        if found is None:
            return []
        return [
            key[3]
            for key in (found.images if images else found.order)
            if key[1] < 0 and key[3] not in exclude  # key[1] = -free slots
        ]

    def decide(
        self,
        pool: str,
        prefix: list[str],
        *,
        policy: str = "prefix",
        max_load_gap: float = 0.5,
        turn: int = 0,
        exclude: Collection[str] = (),
        avoid: Collection[str] = (),
        limit: int = 8,
        images: bool = False,
    ) -> Decision:
        """``routing.decide`` over ``pool``'s agents but those in ``exclude``,
        cut to ``limit`` agents; agents in ``avoid`` come after the others.

        With ``images``, over those of them that serve images only, as
        ``routing.serving_images`` has it: ``NoAgentServesImages`` when agents
        with slots are there and none of them does (waiting would not help),
        no agent at all when none has slots (the request waits).
        """
        found = self._pools.get(pool)
        if found is None:
            return Decision([], 0, "no agent has slots")
        order = found.images if images else found.order
        if not any(key[3] not in exclude for key in order[: len(exclude) + 1]):
            if images and any(
                key[3] not in exclude for key in found.order[: len(exclude) + 1]
            ):
                raise NoAgentServesImages
            return Decision([], 0, "no agent has slots")
        if policy == "round_robin":
            ring = sorted(key[3] for key in order if key[3] not in exclude)
            start = turn % len(ring)
            rotated = ring[start:] + ring[:start]
            return Decision(
                self._cut(iter(rotated), (), avoid, limit), 0, "round robin"
            )
        by_load = (key[3] for key in order)
        if policy == "least_busy" or not prefix:
            return Decision(self._cut(by_load, exclude, avoid, limit), 0, "least busy")
        best, length, in_slot = self._best_match(found, prefix, exclude, images)
        if best is None:
            return Decision(
                self._cut(by_load, exclude, avoid, limit),
                0,
                "least busy (no cache match)",
            )
        least = next(key for key in order if key[3] not in exclude)
        best_key = self._entries[best].key
        assert best_key is not None
        if best_key[0] - least[0] > max_load_gap:
            return Decision(
                self._cut(by_load, exclude, avoid, limit),
                0,
                f"least busy (cache match on {best} skipped: load "
                f"{best_key[0]:.2f} vs {least[0]:.2f})",
            )
        rest = self._cut(by_load, {*exclude, best}, avoid, limit - 1)
        where = "slot" if in_slot else "host-tier"
        return Decision(
            [best, *rest], length, f"{where} cache match of {length} prefix blocks"
        )

    def _best_match(
        self, pool: _Pool, prefix: list[str], exclude: Collection[str], images: bool
    ) -> tuple[str | None, int, bool]:
        """The agent with the longest match for ``prefix`` (a slot's before
        a host tier's of the same length, then the least busy), its length,
        and whether it is a slot's; with ``images``, among those serving
        images only."""
        for depth in range(len(prefix) - 1, -1, -1):
            value = prefix[depth]
            for index, in_slot in ((pool.in_slots, True), (pool.in_host, False)):
                keys = [
                    entry.key
                    for agent_id in index.get(value, ())
                    if agent_id not in exclude
                    and (entry := self._entries[agent_id]).key is not None
                    and (entry.serves_images or not images)
                ]
                if keys:
                    return min(keys)[3], depth + 1, in_slot
        return None, 0, False

    @staticmethod
    def _cut(
        ordered: Iterator[str],
        exclude: Collection[str],
        avoid: Collection[str],
        limit: int,
    ) -> list[str]:
        """The first ``limit`` of ``ordered`` not in ``exclude``, those in
        ``avoid`` last."""
        chosen: list[str] = []
        avoided: list[str] = []
        for agent_id in ordered:
            if len(chosen) >= limit:
                break
            if agent_id in exclude:
                continue
            if agent_id in avoid:
                avoided.append(agent_id)
            else:
                chosen.append(agent_id)
        return chosen + avoided
