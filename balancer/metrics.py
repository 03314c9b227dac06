"""Fleet and request metrics: StatsD over UDP and the Prometheus text format.

Fleet gauges (slots, buffer, per agent) describe shared state, so with several
web replicas only one of them sends them at a time: the one holding a short
Redis lease.  Request counters and timings are each replica's own: every
replica sends its requests' figures to StatsD, and adds them to counters in
Redis, which ``/metrics`` reads, so any replica answers for the whole tier.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from django.conf import settings

from balancer import keys, registry

logger = logging.getLogger(__name__)

# Upper bounds (ms) of the latency histograms in /metrics.
BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)
TIMINGS = {
    "queue_wait_ms": "queue_wait",
    "time_to_first_token_ms": "time_to_first_token",
    "duration_ms": "duration",
}
TOKENS = {
    "prompt_tokens": "prompt",
    "cached_prompt_tokens": "cached_prompt",
    "generated_tokens": "generated",
}


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def _metric_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


@dataclass
class StatsdClient:
    """Fire-and-forget StatsD lines over UDP (losing one is acceptable)."""

    host: str
    port: int
    prefix: str

    def __post_init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.setblocking(False)

    def send(self, lines: list[str]) -> None:
        if not lines:
            return
        payload = "\n".join(f"{self.prefix}.{line}" for line in lines).encode()
        try:
            self._socket.sendto(payload, (self.host, self.port))
        except OSError:
            logger.debug("statsd send failed", exc_info=True)


def statsd_client() -> StatsdClient | None:
    address = settings.PADDLER_STATSD_ADDR
    if not address:
        return None
    host, _, port = address.rpartition(":")
    return StatsdClient(host, int(port), settings.PADDLER_STATSD_PREFIX)


def fleet_gauges(agents: list[registry.AgentRecord], buffered: int) -> list[str]:
    lines = [
        f"slots_processing:{sum(a.slots_processing for a in agents)}|g",
        f"slots_total:{sum(a.slots_total for a in agents)}|g",
        f"requests_buffered:{buffered}|g",
        f"agents:{len(agents)}|g",
    ]
    for agent in agents:
        name = _metric_name(agent.name or agent.id)
        lines += [
            f"agent.{name}.slots_processing:{agent.slots_processing}|g",
            f"agent.{name}.slots_total:{agent.slots_total}|g",
        ]
    return lines


def request_lines(record: Mapping[str, Any]) -> list[str]:
    kind, outcome = _metric_name(record["kind"]), _metric_name(record["outcome"])
    lines = [f"requests.{kind}.{outcome}:1|c"]
    for field, name in TIMINGS.items():
        if record.get(field) is not None:
            lines.append(f"{name}:{record[field]}|ms")
    for field, name in TOKENS.items():
        if record.get(field):
            lines.append(f"tokens.{name}:{record[field]}|c")
    return lines


def count_request(pipe: Any, record: Mapping[str, Any]) -> None:
    """Add a finished request to the tier-wide counters behind /metrics.

    ``pipe`` is a Redis pipeline: the caller sends these with its own writes.
    """
    counters = keys.metrics_counters()
    pipe.hincrby(counters, f"requests|{record['kind']}|{record['outcome']}", 1)
    for field, name in TOKENS.items():
        pipe.hincrby(counters, f"tokens|{name}", int(record.get(field) or 0))
    for field, name in TIMINGS.items():
        value = record.get(field)
        if value is None:
            continue
        for bound in BUCKETS_MS:
            if value <= bound:
                pipe.hincrby(counters, f"bucket|{name}|{bound}", 1)
        pipe.hincrby(counters, f"bucket|{name}|+Inf", 1)
        pipe.hincrbyfloat(counters, f"sum|{name}", float(value))


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
            if _text(holder) == web_id:
                await redis.pexpire(lease, interval_ms * 3)
                agents = await registry.list_agents(redis)
                buffered = await registry.buffered_count(
                    redis, settings.PADDLER_BUFFERED_REQUEST_TIMEOUT_MS
                )
                client.send(fleet_gauges(agents, buffered))
        except Exception:
            logger.warning("sending fleet gauges failed", exc_info=True)
        await asyncio.sleep(interval_ms / 1000)


async def prometheus_text(redis: aioredis.Redis) -> str:
    agents = await registry.list_agents(redis)
    buffered = await registry.buffered_count(
        redis, settings.PADDLER_BUFFERED_REQUEST_TIMEOUT_MS
    )
    raw = await redis.hgetall(keys.metrics_counters())
    counters = {_text(k): _text(v) for k, v in raw.items()}
    out = [
        "# HELP paddler_slots_processing Slots generating right now, fleet-wide.",
        "# TYPE paddler_slots_processing gauge",
        f"paddler_slots_processing {sum(a.slots_processing for a in agents)}",
        "# HELP paddler_slots_total Slots that accept work, fleet-wide.",
        "# TYPE paddler_slots_total gauge",
        f"paddler_slots_total {sum(a.slots_total for a in agents)}",
        "# HELP paddler_requests_buffered Requests waiting for a free slot.",
        "# TYPE paddler_requests_buffered gauge",
        f"paddler_requests_buffered {buffered}",
        "# HELP paddler_agents Agents with a live heartbeat.",
        "# TYPE paddler_agents gauge",
        f"paddler_agents {len(agents)}",
        "# HELP paddler_agent_slots_processing Slots generating, per agent.",
        "# TYPE paddler_agent_slots_processing gauge",
    ]
    out += [
        f'paddler_agent_slots_processing{{agent="{a.name}"}} {a.slots_processing}'
        for a in agents
    ]
    out += [
        "# HELP paddler_agent_slots_total Slots that accept work, per agent.",
        "# TYPE paddler_agent_slots_total gauge",
    ]
    out += [
        f'paddler_agent_slots_total{{agent="{a.name}"}} {a.slots_total}' for a in agents
    ]
    out += [
        "# HELP paddler_requests_total Finished requests by kind and outcome.",
        "# TYPE paddler_requests_total counter",
    ]
    for key, value in sorted(counters.items()):
        if key.startswith("requests|"):
            _, kind, outcome = key.split("|", 2)
            out.append(
                f'paddler_requests_total{{kind="{kind}",outcome="{outcome}"}} {value}'
            )
    out += [
        "# HELP paddler_tokens_total Tokens: prompt, cached_prompt, generated.",
        "# TYPE paddler_tokens_total counter",
    ]
    for name in TOKENS.values():
        out.append(
            f'paddler_tokens_total{{type="{name}"}} {counters.get(f"tokens|{name}", 0)}'
        )
    for name in TIMINGS.values():
        metric = f"paddler_{name}_milliseconds"
        out += [
            f"# HELP {metric} Request {name.replace('_', ' ')} in milliseconds.",
            f"# TYPE {metric} histogram",
        ]
        for bound in (*BUCKETS_MS, "+Inf"):
            count = counters.get(f"bucket|{name}|{bound}", 0)
            out.append(f'{metric}_bucket{{le="{bound}"}} {count}')
        out.append(f"{metric}_sum {counters.get(f'sum|{name}', 0)}")
        out.append(f"{metric}_count {counters.get(f'bucket|{name}|+Inf', 0)}")
    return "\n".join(out) + "\n"
