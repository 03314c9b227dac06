"""Each web process's view of the agent registry, kept current by the agents.

Agents publish each report, or at each heartbeat that nothing changed, on a
pub/sub channel (``registry.publish_status``).  The view follows that
channel, so a routing decision reads memory (``agent_index``) instead of
every agent's report in Redis.

Pub/sub delivers at most once, so nothing rests on one notification:

- a report this process missed is read from Redis at the agent's next
  heartbeat, whose number (``seq``) is then newer than the one held;
- a missed "gone" is made good by the TTL: an agent not heard from for
  ``PADDLER_AGENT_TTL_MS`` is dropped, as its key in Redis expires;
- every ``RESYNC_S`` the whole registry is read again, and whatever the view
  holds that Redis does not is dropped;
- while the subscription is down the view is not ``fresh`` and the
  dispatcher reads the registry from Redis itself, as it did before the view.

The view also notices when the Redis it talks to is another one than before
(a restart, or a Sentinel failover to a replica): Redis's ``run_id`` changed.
Output pushed to the old one may be lost (replication is asynchronous), so
the dispatcher ends the requests that were running then with an error rather
than let a stream go on with a hole in it (``on_redis_replaced``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from balancer import keys, registry
from balancer.agent_index import AgentIndex
from balancer.registry import AgentChange, AgentRecord

logger = logging.getLogger(__name__)

# How often the whole registry is read again.
RESYNC_S = 5.0
# An agent whose heartbeat lapsed is dropped this long after its deadline at
# most: the view wakes when the first agent it holds could lapse, not on a
# fixed tick (four wake-ups a second of every idle web process, before).
EXPIRE_SLACK_S = 0.05
# A view whose last full read is older than this is not used (its loop is
# stuck or failing); the dispatcher reads Redis instead.
FRESH_FOR_S = 2 * RESYNC_S


class RegistryView:
    """The agents as the channel of their notifications says they are.

    ``redis`` reads reports; ``listener`` holds the subscription and should
    not retry commands itself: a connection it lost must show here, or the
    notifications published meanwhile would go missing unnoticed.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        listener: aioredis.Redis,
        *,
        ttl_ms: int,
        on_redis_replaced: Callable[[float], None] | None = None,
    ) -> None:
        self.redis = redis
        self.listener = listener
        self.index = AgentIndex()
        self.ttl_s = ttl_ms / 1000
        self.on_redis_replaced = on_redis_replaced
        self.live = False
        self.synced_at = -FRESH_FOR_S
        self.resyncs = 0
        self.read_back = 0  # reports read because their notification was missed
        self._run_id: str | None = None
        self._lost_at: float | None = None

    def fresh(self) -> bool:
        """Whether routing may rely on the view now."""
        return self.live and time.monotonic() - self.synced_at < FRESH_FOR_S

    async def run(self) -> None:
        """Follow the notifications for as long as the process lives."""
        backoff = 0.05
        while True:
            pubsub = self.listener.pubsub(ignore_subscribe_messages=True)
            try:
                # Subscribed before the full read: a change made while it
                # runs is in the channel when it ends.
                await pubsub.subscribe(keys.agent_changes())
                await self.resync()
                self.live = True
                backoff = 0.05
                await self._follow(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception:
                if self.live:
                    logger.warning("lost the agents' notifications", exc_info=True)
                self.live = False
                if self._lost_at is None:
                    self._lost_at = time.monotonic()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _follow(self, pubsub: Any) -> None:
        now = time.monotonic()
        next_resync = now + RESYNC_S
        next_expiry = self._next_expiry(now)
        while True:
            wait = max(0.0, min(next_resync, next_expiry) - now)
            message = await pubsub.get_message(timeout=wait)
            now = time.monotonic()
            if message is not None:
                await self.apply(json.loads(message["data"]), now)
            if now >= next_expiry:
                self.index.expire(now - self.ttl_s)
                next_expiry = self._next_expiry(now)
            if now >= next_resync:
                await self.resync()
                next_resync = now + RESYNC_S

    def _next_expiry(self, now: float) -> float:
        """When the first agent held could lapse.  Notifications only move
        agents' deadlines later, and a new agent's comes a full TTL from
        now, so a time worked out once stays early enough until it comes."""
        oldest = self.index.oldest_heard_at()
        heard = now if oldest is None else oldest
        return heard + self.ttl_s + EXPIRE_SLACK_S

    async def apply(self, change: AgentChange, now: float) -> None:
        """Take one notification."""
        agent_id = change["id"]
        if change["gone"]:
            self.index.remove(agent_id)
            return
        report = change["report"]
        if report is not None:
            record = AgentRecord.from_report(agent_id, report)
            self.index.update(record, seq=change["seq"], now=now)
            return
        if self.index.touch(agent_id, seq=change["seq"], now=now):
            return
        # A report this process did not get: read it.
        self.read_back += 1
        read = await registry.read_agent(self.redis, agent_id)
        if read is not None and not self.index.update(read, seq=read.seq, now=now):
            # Redis holds an older report than the one held here (a failover
            # lost the newer): the agent lives all the same.
            self.index.touch(agent_id, seq=read.seq, now=now)

    async def resync(self) -> None:
        """Read the whole registry, and check that Redis is the same one."""
        await self._check_server()
        records = await registry.list_agents(self.redis)
        now = time.monotonic()
        for record in records:
            if not self.index.update(record, seq=record.seq, now=now):
                self.index.touch(record.id, seq=record.seq, now=now)
        for agent_id in self.index.ids() - {record.id for record in records}:
            self.index.remove(agent_id)
        self.synced_at = now
        self.resyncs += 1

    async def _check_server(self) -> None:
        info = await self.listener.info("server")
        run_id = str(info.get("run_id", ""))
        if self._run_id is not None and run_id != self._run_id:
            lost_at = self._lost_at or time.monotonic()
            logger.warning(
                "Redis is another server than before (restarted or failed over)"
            )
            if self.on_redis_replaced is not None:
                self.on_redis_replaced(lost_at)
        self._run_id = run_id
        self._lost_at = None
