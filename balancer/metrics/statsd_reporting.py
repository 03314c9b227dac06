"""StatsD: each request's figures, and the fleet gauges from one replica.

Sent with python-statsd, the client django-statsd times the HTTP views with,
to the same address (``STATSD_HOST``/``STATSD_PORT``, from
``PADDLER_STATSD_ADDR``).  UDP, fire and forget: a lost line is acceptable.
"""

from __future__ import annotations

import asyncio
import logging
import re

import redis.asyncio as aioredis
import statsd
from django.conf import settings

from balancer import keys, registry
from balancer.host_tier import disk_tier, host_tier
from balancer.metrics.counters import timings, token_counts
from balancer.metrics.fleet import fleet_pools
from balancer.request_log import RequestRecord

logger = logging.getLogger(__name__)


def _metric_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


def statsd_client() -> statsd.Client | None:
    """A client named by ``PADDLER_STATSD_PREFIX``, or None with StatsD off."""
    if not settings.PADDLER_STATSD_ADDR:
        return None
    try:
        connection = statsd.Connection(settings.STATSD_HOST, settings.STATSD_PORT)
    except OSError:
        # The connection resolves the host once, here; a name that does not
        # resolve turns this process's StatsD off rather than its requests.
        logger.warning(
            "StatsD address %s does not resolve: not sending metrics",
            settings.PADDLER_STATSD_ADDR,
            exc_info=True,
        )
        return None
    # Sent from the event loop: a full socket buffer drops the line instead of
    # blocking every request on this replica.
    connection.udp_sock.setblocking(False)
    return statsd.Client(settings.PADDLER_STATSD_PREFIX, connection)


def send_request(client: statsd.Client, record: RequestRecord) -> None:
    """A finished request: its outcome, timings and tokens."""
    kind, outcome = _metric_name(record["kind"]), _metric_name(record["outcome"])
    pool = _metric_name(record["pool"])
    client.get_counter("requests").increment(f"{kind}.{outcome}")
    client.get_counter(f"pool.{pool}.requests").increment(f"{kind}.{outcome}")
    timer = client.get_timer()
    for name, value in timings(record).items():
        if value is not None:
            timer.send(name, value / 1000)  # seconds, sent as ms
    tokens = client.get_counter("tokens")
    pool_tokens = client.get_counter(f"pool.{pool}.tokens")
    for name, count in token_counts(record).items():
        if count:
            tokens.increment(name, count)
            pool_tokens.increment(name, count)


def send_fleet_gauges(
    client: statsd.Client,
    agents: list[registry.AgentRecord],
    buffered: dict[str, int],
) -> None:
    """The fleet's totals, then each pool's (``pool.<name>.*``), then each
    agent's; ``buffered`` is by pool."""
    gauge = client.get_gauge()
    gauge.send("slots_processing", sum(a.slots_processing for a in agents))
    gauge.send("slots_total", sum(a.slots_total for a in agents))
    gauge.send("requests_buffered", sum(buffered.values()))
    gauge.send("agents", len(agents))
    for pool, count in sorted(buffered.items()):
        members = [a for a in agents if a.pool == pool]
        per_pool = client.get_gauge(f"pool.{_metric_name(pool)}")
        per_pool.send("slots_processing", sum(a.slots_processing for a in members))
        per_pool.send("slots_total", sum(a.slots_total for a in members))
        per_pool.send("requests_buffered", count)
        per_pool.send("agents", len(members))
    for agent in agents:
        per_agent = client.get_gauge(f"agent.{_metric_name(agent.name or agent.id)}")
        per_agent.send("slots_processing", agent.slots_processing)
        per_agent.send("slots_total", agent.slots_total)
        tier = host_tier(agent.report)
        if tier is not None:
            per_agent.send("host_cache_entries", tier["entries"])
            per_agent.send("host_cache_bytes", tier["bytes"])
            per_agent.send("host_cache_budget_bytes", tier["budget_bytes"])
            per_agent.send("host_cache_hit_rate", round(tier["hit_rate"], 4))
            per_agent.send("host_cache_lookups", tier["lookups"])
            per_agent.send("host_cache_hits", tier["hits"])
        disk = disk_tier(agent.report)
        if disk is not None:
            per_agent.send("disk_cache_files", disk["files"])
            per_agent.send("disk_cache_bytes", disk["bytes"])
            per_agent.send("disk_cache_budget_bytes", disk["budget_bytes"])
            per_agent.send("disk_cache_hit_rate", round(disk["hit_rate"], 4))
            per_agent.send("disk_cache_hits", disk["hits"])
            per_agent.send("disk_cache_writes", disk["writes"])
            per_agent.send("disk_cache_corrupt", disk["corrupt"])
            per_agent.send("disk_cache_foreign", disk["foreign"])
            per_agent.send("disk_cache_dropped_writes", disk["dropped_writes"])


async def report_fleet(redis: aioredis.Redis, web_id: str) -> None:
    """Send the fleet gauges every interval, while this replica holds the lease."""
    client = statsd_client()
    if client is None:
        return
    interval_ms = settings.PADDLER_STATSD_INTERVAL_MS
    while True:
        try:
            lease = keys.statsd_reporter()
            # Take the lease if nobody holds it; keep it if we do.
            await redis.set(lease, web_id, nx=True, px=interval_ms * 3)
            holder = await redis.get(lease)
            if holder in (web_id.encode(), web_id):  # bytes unless decoded
                await redis.pexpire(lease, interval_ms * 3)
                agents = await registry.list_agents(redis)
                buffered = await registry.buffered_counts(
                    redis,
                    settings.PADDLER_BUFFERED_REQUEST_TIMEOUT_MS,
                    await fleet_pools(agents),
                )
                send_fleet_gauges(client, agents, buffered)
        except Exception:
            logger.warning("sending fleet gauges failed", exc_info=True)
        await asyncio.sleep(interval_ms / 1000)
