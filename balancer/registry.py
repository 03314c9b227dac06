"""The agent registry, slot claims and the buffer, all kept in Redis.

Several web replicas share one Redis, so every decision that could over-commit
an agent runs as one Lua script: Redis runs scripts one at a time, so two
replicas can never both take an agent's last free slot.

The buffer.  A request that finds no free slot waits in its pool's buffer, a
sorted set scored by arrival time, first come first served: only as many of
the oldest waiters as there are free slots may claim, each the first of its
candidates with a free slot.

Holdouts (cache affinity).  A buffered request whose conversation's KV cache
is on agent A (a slot or host-tier match) gains nothing from a slot on B but
a full prefill, and its cache on A is wasted.  So it holds out for A:

- it waits in the pool's holdout set (``keys.buffer_holdouts``) instead of
  the buffer, and in A's (``keys.agent_holdouts``), both scored by arrival;
- it claims a slot of A; a slot freed elsewhere goes to the waiters behind
  it, which do not count it ahead of them;
- a slot of A goes to A's holdouts first: every younger waiter sees A's free
  slots less the live holdouts for A older than itself.  A waiter older than
  a holdout keeps its turn, so a stream of holdouts cannot starve it;
- once it has held out ``hold_ms`` (``PADDLER_ROUTING_CACHE_WAIT_MS``) it
  also takes a spare slot of another candidate: one that no plain waiter
  and none of that agent's own holdouts wants, which would otherwise stay
  idle (the oldest such holdouts first).  So no slot idles while requests
  wait, and under load, when every freed slot is wanted, a conversation
  keeps going to the agent that holds it for as long as it waits;
- when A is gone (or the caller stops naming it), it moves back to the
  buffer with its arrival time, and takes the first free slot of its
  candidates.

One script does all of it, so no slot is ever promised twice.  Holdouts count
against ``max_buffered``; the holdouts of a replica that died age out as its
buffered requests do; and ``leave_buffer`` removes a request from all three
sets.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, NamedTuple, TypedDict

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
            pipe.delete(keys.agent_claims(agent_id), keys.agent_holdouts(agent_id))
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


class StatusWritten(NamedTuple):
    """What Redis held of an agent when its report was written."""

    # The agent was in the agents set: False when Redis forgot it (restarted
    # empty) or a web process dropped it after its report lapsed; its group
    # membership in the channel layer may be gone with it.
    known: bool
    # Its model metadata was there (its TTL renewed by this write).
    metadata_held: bool


async def publish_status(
    redis: aioredis.Redis,
    *,
    agent_id: str,
    report: dict[str, Any],
    changed: bool,
    ttl_ms: int,
) -> StatusWritten:
    """Write an agent's report (``report["seq"]`` numbers it) with its TTL,
    and tell the web processes: the whole report when it ``changed``, else
    only that the agent lives.

    Returns what Redis still held of the agent (``StatusWritten``): Redis can
    lose it without a command failing (a key lapsed after a late heartbeat,
    or Redis restarted empty behind a command the client retried), and the
    agent then writes again what only it knows."""
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
        metadata_renewed = len(pipe)  # the places of their answers
        pipe.pexpire(keys.agent_metadata(agent_id), ttl_ms)
        added = len(pipe)
        pipe.sadd(keys.agents_set(), agent_id)
        pipe.publish(keys.agent_changes(), json.dumps(change))
        results = await pipe.execute()
    # SADD answers 1 for a member it did not have.
    written = StatusWritten(
        known=not results[added], metadata_held=bool(results[metadata_renewed])
    )
    if not changed and not results[0]:
        # The report expired meanwhile (or Redis restarted empty): write it.
        again = await publish_status(
            redis, agent_id=agent_id, report=report, changed=True, ttl_ms=ttl_ms
        )
        return written._replace(metadata_held=again.metadata_held)
    return written


def announce_gone(pipe: Any, agent_id: str) -> None:
    """Queue, on a pipeline, the notice that an agent deregistered."""
    change: AgentChange = {"id": agent_id, "seq": 0, "report": None, "gone": True}
    pipe.publish(keys.agent_changes(), json.dumps(change))


async def agent_is_alive(redis: aioredis.Redis, agent_id: str) -> bool:
    return bool(await redis.exists(keys.agent_status(agent_id)))


# KEYS[1] = the pool's buffer, KEYS[2] = its holdouts, then per candidate
#   agent: slots key, claims key, holdouts key.
# ARGV = request id, now (ms), lease end (ms), max buffered, buffer cut-off (ms),
#        hold (ms), the candidate to hold out for (1-based; 0: none),
#        then the candidate agent ids, in order of preference.
# Returns {"claimed", agent id} | {"holding", agent id} | {"buffered"} |
#         {"waiting"} | {"overflow"}.
_ACQUIRE = """
local buffer = KEYS[1]
local holdouts = KEYS[2]
local request_id = ARGV[1]
local now = tonumber(ARGV[2])
local lease_end = tonumber(ARGV[3])
local max_buffered = tonumber(ARGV[4])
local cutoff = tonumber(ARGV[5])
-- A holdout that arrived at or before this may take a spare slot elsewhere.
local hold_cut = now - tonumber(ARGV[6])
local hold = tonumber(ARGV[7])
local candidates = #ARGV - 7
local hold_key = nil
if hold >= 1 and hold <= candidates then
  hold_key = KEYS[3 * hold + 2]
else
  hold = 0
end
local function forget()
  redis.call('ZREM', buffer, request_id)
  redis.call('ZREM', holdouts, request_id)
  if hold_key then redis.call('ZREM', hold_key, request_id) end
end
local function claim(i)
  redis.call('ZADD', KEYS[3 * i + 1], lease_end, request_id)
  forget()
  return {'claimed', ARGV[7 + i]}
end
-- Entries of replicas that died while buffering age out.
redis.call('ZREMRANGEBYSCORE', buffer, '-inf', cutoff)
redis.call('ZREMRANGEBYSCORE', holdouts, '-inf', cutoff)
local slots = {}
local free = {}
for i = 1, candidates do
  slots[i] = tonumber(redis.call('GET', KEYS[3 * i]) or '0')
  local claims = KEYS[3 * i + 1]
  redis.call('ZREMRANGEBYSCORE', claims, '-inf', now)
  redis.call('ZREMRANGEBYSCORE', KEYS[3 * i + 2], '-inf', cutoff)
  -- Already claimed: this is the client retrying a call whose answer was
  -- lost (a dropped connection); a second claim would hold a slot for
  -- nobody until its lease ran out.
  if redis.call('ZSCORE', claims, request_id) then
    forget()
    return {'claimed', ARGV[7 + i]}
  end
  free[i] = slots[i] - redis.call('ZCARD', claims)
end
-- An agent gone (or loading a model) is nothing to hold out for.
if hold > 0 and slots[hold] <= 0 then hold = 0 end
-- Where the request waits: a holdout, a plain waiter, or not yet at all.
local arrived = redis.call('ZSCORE', holdouts, request_id)
local held = arrived ~= false
-- (Told no agent to hold out for, it leaves the holdouts; an entry it left
-- in an agent's set ages out with the buffer's cut-off.)
if held and hold == 0 then
  redis.call('ZREM', holdouts, request_id)
  if hold_key then redis.call('ZREM', hold_key, request_id) end
  redis.call('ZADD', buffer, arrived, request_id)
  held = false
end
local waiting = held
if not held then
  arrived = redis.call('ZSCORE', buffer, request_id)
  waiting = arrived ~= false
  -- A waiter told to hold out (its first call may have offered it fewer
  -- agents, see Dispatcher._acquire) holds out from its arrival.
  if waiting and hold > 0 then
    redis.call('ZREM', buffer, request_id)
    redis.call('ZADD', holdouts, arrived, request_id)
    held = true
  end
end
if held then redis.call('ZADD', hold_key, arrived, request_id) end
-- First come, first served: only as many of the oldest waiters as there are
-- free slots may claim; a newcomer counts as behind every waiter.  Plain
-- waiters take any free slot, so each one older counts; a holdout takes
-- its agent's slots, so it counts only there, and only against the waiters
-- younger than itself.  Arrival times are in milliseconds: of a holdout and
-- a plain waiter that arrived in the same one, the holdout goes first
-- (counted up to ``arrived``, plain waiters before it).
local older = '+inf'
local reserved_until = '+inf'
if waiting then
  older = '(' .. arrived
  reserved_until = arrived
end
local position
if waiting and not held then
  position = redis.call('ZRANK', buffer, request_id)
else
  position = redis.call('ZCOUNT', buffer, '-inf', older)
end
local free_total = 0
local first_free = nil
for i = 1, candidates do
  local reserved
  if held and i == hold then
    reserved = redis.call('ZRANK', KEYS[3 * i + 2], request_id)
  else
    reserved = redis.call('ZCOUNT', KEYS[3 * i + 2], '-inf', reserved_until)
  end
  local open = free[i] - reserved
  if open > 0 then
    free_total = free_total + open
    if first_free == nil and (not held or i == hold) then first_free = i end
  end
end
if first_free ~= nil and position < free_total then return claim(first_free) end
-- A holdout that has held out long enough takes a spare slot elsewhere: free,
-- and wanted neither by a plain waiter (each takes any slot) nor by a
-- holdout for that agent.  The older of such holdouts go first.
if held and tonumber(arrived) <= hold_cut then
  local spare_total = -redis.call('ZCARD', buffer)
  local first_spare = nil
  local ahead = redis.call('ZCOUNT', holdouts, '-inf', older)
  for i = 1, candidates do
    if i ~= hold then
      local wanting = redis.call('ZCARD', KEYS[3 * i + 2])
      local spare = free[i] - wanting
      -- Holdouts older than this one that want this agent were counted
      -- in ``wanting``: not twice.
      ahead = ahead - redis.call('ZCOUNT', KEYS[3 * i + 2], '-inf', older)
      if spare > 0 then
        spare_total = spare_total + spare
        if first_spare == nil then first_spare = i end
      end
    end
  end
  if first_spare ~= nil and ahead < spare_total then return claim(first_spare) end
end
if held then return {'holding', ARGV[7 + hold]} end
if waiting then return {'waiting'} end
local buffered = redis.call('ZCARD', buffer) + redis.call('ZCARD', holdouts)
if buffered >= max_buffered then return {'overflow'} end
if hold > 0 then
  redis.call('ZADD', holdouts, now, request_id)
  redis.call('ZADD', hold_key, now, request_id)
  return {'holding', ARGV[7 + hold]}
end
redis.call('ZADD', buffer, now, request_id)
return {'buffered'}
"""


@dataclass(frozen=True)
class Acquisition:
    # "claimed" (``agent_id`` the agent), "holding" (buffered, holding out
    # for ``agent_id``), "buffered" (just now), "waiting" or "overflow".
    outcome: str
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
    hold_for: str | None = None,
    hold_ms: int = 0,
) -> Acquisition:
    """Claim a slot on the first candidate with one free, or wait in the
    pool's buffer.  Each pool has a buffer of its own: a full pool never
    delays another pool's requests.

    ``hold_for``: one of ``candidates``, the agent that holds the request's
    cache.  Once it has to wait, the request holds out for a slot of that
    agent, and from ``hold_ms`` after its arrival also takes a spare slot of
    another candidate (see the module's docstring); pass the same agent on
    every call while it holds out.  ``hold_ms`` 0: it never holds out.
    """
    now = now_ms()
    script_keys = [keys.buffer(pool), keys.buffer_holdouts(pool)]
    for agent_id in candidates:
        script_keys += [
            keys.agent_slots(agent_id),
            keys.agent_claims(agent_id),
            keys.agent_holdouts(agent_id),
        ]
    # The script takes the agent to hold out for by its place (1-based).
    hold = 0
    if hold_for is not None and hold_for in candidates and hold_ms > 0:
        hold = candidates.index(hold_for) + 1
    result = await redis.eval(
        _ACQUIRE,
        len(script_keys),
        *script_keys,
        request_id,
        now,
        now + lease_ms,
        max_buffered,
        now - buffer_timeout_ms - 5_000,
        hold_ms,
        hold,
        *candidates,
    )
    outcome: str = result[0].decode()
    if len(result) > 1:
        return Acquisition(outcome, result[1].decode())
    return Acquisition(outcome)


async def leave_buffer(
    redis: aioredis.Redis,
    request_id: str,
    pool: str = DEFAULT_POOL,
    *,
    held_for: str | None = None,
) -> None:
    """Take a request out of the buffer, and out of the holdouts for
    ``held_for`` (the agent it was told to hold out for, if any)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zrem(keys.buffer(pool), request_id)
        pipe.zrem(keys.buffer_holdouts(pool), request_id)
        if held_for is not None:
            pipe.zrem(keys.agent_holdouts(held_for), request_id)
        await pipe.execute()


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
    counts = await buffered_counts(redis, buffer_timeout_ms, [pool])
    return counts[pool]


async def buffered_counts(
    redis: aioredis.Redis, buffer_timeout_ms: int, pools: list[str]
) -> dict[str, int]:
    """Buffered requests per pool (holdouts included), in one round trip."""
    cutoff = now_ms() - buffer_timeout_ms - 5_000
    async with redis.pipeline(transaction=False) as pipe:
        for pool in pools:
            pipe.zcount(keys.buffer(pool), cutoff, "+inf")
            pipe.zcount(keys.buffer_holdouts(pool), cutoff, "+inf")
        counts = await pipe.execute()
    return {
        pool: int(counts[2 * n]) + int(counts[2 * n + 1])
        for n, pool in enumerate(pools)
    }
