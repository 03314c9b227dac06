"""The agent registry, slot claims and the buffer, all kept in Redis.

Several web replicas share one Redis, so every decision that could over-commit
an agent runs as one Lua script: Redis runs scripts one at a time, so two
replicas can never both take an agent's last free slot.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, TypedDict

import redis.asyncio as aioredis

from balancer import keys
from balancer.pools import DEFAULT_POOL


@dataclass(frozen=True)
class AgentRecord:
    """What an agent last reported about itself."""

    id: str
    name: str
    channel: str
    slots_total: int
    slots_processing: int
    # Requests the web tier has put on the agent: ahead of its own report,
    # which is up to a heartbeat old.
    slots_claimed: int
    report: dict[str, Any]

    @property
    def pool(self) -> str:
        """The pool it serves (agents from before pools serve the default)."""
        return str(self.report.get("pool") or DEFAULT_POOL)

    @property
    def serves_images(self) -> bool:
        """Whether it reads images (agents from before issue 16 do not)."""
        return bool(self.report.get("serves_images", False))

    @property
    def slots_busy(self) -> int:
        return max(self.slots_processing, self.slots_claimed)

    @classmethod
    def from_report(
        cls, agent_id: str, report: dict[str, Any], *, claimed: int = 0
    ) -> AgentRecord:
        return cls(
            id=agent_id,
            name=report.get("name", ""),
            channel=report.get("channel", ""),
            slots_total=int(report.get("slots_total", 0)),
            slots_processing=int(report.get("slots_processing", 0)),
            slots_claimed=claimed,
            report=report,
        )

    @property
    def seq(self) -> int:
        """The number of the report (see ``publish_status``); 0 for an agent
        from before reports were numbered."""
        return int(self.report.get("seq", 0))

    def public_snapshot(self) -> dict[str, Any]:
        """The agent as the management API shows it (Paddler's fields)."""
        fields = (
            "id",
            "name",
            "slots_total",
            "slots_processing",
            "desired_slots_total",
            "model_path",
            "download_current",
            "download_total",
            "download_filename",
            "download_indeterminate",
            "issues",
            "state_application_status",
            "uses_chat_template_override",
        )
        return {name: self.report.get(name) for name in fields}


async def list_agents(redis: aioredis.Redis) -> list[AgentRecord]:
    members = await redis.smembers(keys.agents_set())
    ids = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
    if not ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        pipe.mget([keys.agent_status(agent_id) for agent_id in ids])
        for agent_id in ids:
            pipe.zcard(keys.agent_claims(agent_id))
        raw_reports, *claims = await pipe.execute()
    agents: list[AgentRecord] = []
    gone: list[str] = []
    for agent_id, raw, claimed in zip(ids, raw_reports, claims, strict=True):
        if raw is None:
            gone.append(agent_id)
            continue
        agents.append(
            AgentRecord.from_report(agent_id, json.loads(raw), claimed=int(claimed))
        )
    if gone:
        await forget_agents(redis, gone)
    return agents


async def forget_agents(redis: aioredis.Redis, agent_ids: list[str]) -> None:
    """Drop agents whose heartbeat lapsed, with the claims they held."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.srem(keys.agents_set(), *agent_ids)
        for agent_id in agent_ids:
            pipe.delete(keys.agent_claims(agent_id))
        await pipe.execute()


async def read_agent(redis: aioredis.Redis, agent_id: str) -> AgentRecord | None:
    """One agent's latest report, or None when its heartbeat has lapsed."""
    raw = await redis.get(keys.agent_status(agent_id))
    return None if raw is None else AgentRecord.from_report(agent_id, json.loads(raw))


class AgentChange(TypedDict):
    """What an agent publishes on ``keys.agent_changes()`` at each heartbeat.

    ``report``: its new report, or None when nothing changed since report
    ``seq`` (a heartbeat only); ``gone``: it deregistered.  Pub/sub delivers
    at most once: a web process that misses a report learns of it at the
    agent's next heartbeat (its ``seq`` is newer than the one held) or at its
    periodic full read of the registry (``balancer.registry_view``).
    """

    id: str
    seq: int
    report: dict[str, Any] | None
    gone: bool


async def publish_status(
    redis: aioredis.Redis,
    *,
    agent_id: str,
    report: dict[str, Any],
    changed: bool,
    ttl_ms: int,
) -> None:
    """Write an agent's report (``report["seq"]`` numbers it) with its TTL,
    and tell the web processes: the whole report when it ``changed``, else
    only that the agent lives."""
    seq = int(report.get("seq", 0))
    change: AgentChange = {
        "id": agent_id,
        "seq": seq,
        "report": report if changed else None,
        "gone": False,
    }
    async with redis.pipeline(transaction=True) as pipe:
        if changed:
            pipe.set(keys.agent_status(agent_id), json.dumps(report), px=ttl_ms)
            pipe.set(keys.agent_slots(agent_id), report["slots_total"], px=ttl_ms)
        else:
            # Unchanged: only the TTLs move; the report is not sent again.
            pipe.pexpire(keys.agent_status(agent_id), ttl_ms)
            pipe.pexpire(keys.agent_slots(agent_id), ttl_ms)
        pipe.pexpire(keys.agent_metadata(agent_id), ttl_ms)
        pipe.sadd(keys.agents_set(), agent_id)
        pipe.publish(keys.agent_changes(), json.dumps(change))
        results = await pipe.execute()
    if not changed and not results[0]:
        # The report expired meanwhile (or Redis restarted empty): write it.
        await publish_status(
            redis, agent_id=agent_id, report=report, changed=True, ttl_ms=ttl_ms
        )


def announce_gone(pipe: Any, agent_id: str) -> None:
    """Queue, on a pipeline, the notice that an agent deregistered."""
    change: AgentChange = {"id": agent_id, "seq": 0, "report": None, "gone": True}
    pipe.publish(keys.agent_changes(), json.dumps(change))


async def agent_is_alive(redis: aioredis.Redis, agent_id: str) -> bool:
    return bool(await redis.exists(keys.agent_status(agent_id)))


# KEYS[1] = buffer, then per candidate agent: slots key, claims key.
# ARGV = request id, now (ms), lease end (ms), max buffered, buffer cut-off (ms),
#        then the candidate agent ids, in order of preference.
# Returns {"claimed", agent id} | {"buffered"} | {"waiting"} | {"overflow"}.
_ACQUIRE = """
local buffer = KEYS[1]
local request_id = ARGV[1]
local now = tonumber(ARGV[2])
local lease_end = tonumber(ARGV[3])
local max_buffered = tonumber(ARGV[4])
local cutoff = tonumber(ARGV[5])
-- Entries of replicas that died while buffering age out.
redis.call('ZREMRANGEBYSCORE', buffer, '-inf', cutoff)
local free_total = 0
local first_free = nil
local candidates = #ARGV - 5
for i = 1, candidates do
  local slots = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
  local claims = KEYS[2 * i + 1]
  redis.call('ZREMRANGEBYSCORE', claims, '-inf', now)
  -- Already claimed: this is the client retrying a call whose answer was
  -- lost (a dropped connection); a second claim would hold a slot for
  -- nobody until its lease ran out.
  if redis.call('ZSCORE', claims, request_id) then
    redis.call('ZREM', buffer, request_id)
    return {'claimed', ARGV[5 + i]}
  end
  local free = slots - redis.call('ZCARD', claims)
  if free > 0 then
    free_total = free_total + free
    if first_free == nil then first_free = i end
  end
end
-- First come, first served: only as many of the oldest waiters as there are
-- free slots may claim; a newcomer counts as behind every buffered request.
local position = redis.call('ZRANK', buffer, request_id)
local in_buffer = position ~= false
if not in_buffer then position = redis.call('ZCARD', buffer) end
if first_free ~= nil and position < free_total then
  redis.call('ZADD', KEYS[2 * first_free + 1], lease_end, request_id)
  redis.call('ZREM', buffer, request_id)
  return {'claimed', ARGV[5 + first_free]}
end
if in_buffer then return {'waiting'} end
if redis.call('ZCARD', buffer) >= max_buffered then return {'overflow'} end
redis.call('ZADD', buffer, now, request_id)
return {'buffered'}
"""


@dataclass(frozen=True)
class Acquisition:
    outcome: str  # "claimed", "buffered", "waiting" or "overflow"
    agent_id: str | None = None


def now_ms() -> int:
    return int(time.time() * 1000)


async def acquire_slot(
    redis: aioredis.Redis,
    *,
    request_id: str,
    candidates: list[str],
    lease_ms: int,
    max_buffered: int,
    buffer_timeout_ms: int,
    pool: str = DEFAULT_POOL,
) -> Acquisition:
    """Claim a slot on the first candidate with one free, or wait in the
    pool's buffer.  Each pool has a buffer of its own: a full pool never
    delays another pool's requests."""
    now = now_ms()
    script_keys = [keys.buffer(pool)]
    for agent_id in candidates:
        script_keys += [keys.agent_slots(agent_id), keys.agent_claims(agent_id)]
    result = await redis.eval(
        _ACQUIRE,
        len(script_keys),
        *script_keys,
        request_id,
        now,
        now + lease_ms,
        max_buffered,
        now - buffer_timeout_ms - 5_000,
        *candidates,
    )
    outcome: str = result[0].decode()
    if len(result) > 1:
        return Acquisition(outcome, result[1].decode())
    return Acquisition(outcome)


async def leave_buffer(
    redis: aioredis.Redis, request_id: str, pool: str = DEFAULT_POOL
) -> None:
    await redis.zrem(keys.buffer(pool), request_id)


async def release_slot(redis: aioredis.Redis, agent_id: str, request_id: str) -> None:
    await redis.zrem(keys.agent_claims(agent_id), request_id)


async def renew_claims(
    redis: aioredis.Redis, claims: dict[str, str], lease_ms: int
) -> None:
    """Extend the leases of the claims this replica holds (request -> agent)."""
    if not claims:
        return
    lease_end = now_ms() + lease_ms
    async with redis.pipeline(transaction=False) as pipe:
        for request_id, agent_id in claims.items():
            pipe.zadd(keys.agent_claims(agent_id), {request_id: lease_end}, xx=True)
        await pipe.execute()


async def buffered_count(
    redis: aioredis.Redis, buffer_timeout_ms: int, pool: str = DEFAULT_POOL
) -> int:
    cutoff = now_ms() - buffer_timeout_ms - 5_000
    return int(await redis.zcount(keys.buffer(pool), cutoff, "+inf"))


async def buffered_counts(
    redis: aioredis.Redis, buffer_timeout_ms: int, pools: list[str]
) -> dict[str, int]:
    """Buffered requests per pool, in one round trip."""
    cutoff = now_ms() - buffer_timeout_ms - 5_000
    async with redis.pipeline(transaction=False) as pipe:
        for pool in pools:
            pipe.zcount(keys.buffer(pool), cutoff, "+inf")
        counts = await pipe.execute()
    return {pool: int(count) for pool, count in zip(pools, counts, strict=True)}
