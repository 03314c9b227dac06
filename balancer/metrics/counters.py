"""Tier-wide request counters in one Redis hash: the writer and the reader.

Every web replica adds its finished requests here, so ``/metrics`` on any
replica shows the whole tier; per-process counters would show one replica's
share.  Fields: ``requests|<kind>|<outcome>``, ``tokens|<type>``, and per
timing ``in|<name>|<bound>`` (requests whose value falls in that bucket;
the reader makes them cumulative, as Prometheus wants them) and
``sum|<name>``: the fleet's totals; and per model pool
``pool_requests|<pool>|<kind>|<outcome>`` and ``pool_tokens|<pool>|<type>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from balancer import keys
from balancer.request_log import RequestRecord

# Upper bounds (ms) of the latency histograms.
BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)
# The metric names of a request's timings and token counts (see ``timings``
# and ``token_counts``, which read them from its record).
TIMINGS = ("queue_wait", "time_to_first_token", "duration")
TOKENS = ("prompt", "cached_prompt", "generated")


def timings(record: RequestRecord) -> dict[str, float | None]:
    """The record's timings (ms), by metric name; None where unknown."""
    return {
        "queue_wait": record["queue_wait_ms"],
        "time_to_first_token": record["time_to_first_token_ms"],
        "duration": record["duration_ms"],
    }


def token_counts(record: RequestRecord) -> dict[str, int]:
    """The record's token counts, by metric name."""
    return {
        "prompt": record["prompt_tokens"],
        "cached_prompt": record["cached_prompt_tokens"],
        "generated": record["generated_tokens"],
    }


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def count_request(pipe: Any, record: RequestRecord) -> None:
    """Add a finished request to the tier-wide counters behind /metrics.

    ``pipe`` is a Redis pipeline: the caller sends these with its own writes.
    """
    count_requests(pipe, [record])


def count_requests(pipe: Any, records: list[RequestRecord]) -> None:
    """Add finished requests to the counters, one command per field they
    touch: a batch of many requests costs Redis about what one does."""
    counts, sums = _changes(records)
    counters = keys.metrics_counters()
    for field, count in counts.items():
        pipe.hincrby(counters, field, count)
    for field, total in sums.items():
        pipe.hincrbyfloat(counters, field, total)


def _changes(records: list[RequestRecord]) -> tuple[dict[str, int], dict[str, float]]:
    """What finished requests add to the counters: the counts and the sums."""
    counts: dict[str, int] = {}
    sums: dict[str, float] = {}

    def add(field: str, count: int) -> None:
        counts[field] = counts.get(field, 0) + count

    for record in records:
        kind, outcome, pool = record["kind"], record["outcome"], record["pool"]
        add(f"requests|{kind}|{outcome}", 1)
        add(f"pool_requests|{pool}|{kind}|{outcome}", 1)
        for name, count in token_counts(record).items():
            add(f"tokens|{name}", int(count or 0))
            add(f"pool_tokens|{pool}|{name}", int(count or 0))
        for name, value in timings(record).items():
            if value is None:
                continue
            # The one bucket the value falls in; the reader adds them up.
            bound = next((b for b in BUCKETS_MS if value <= b), "+Inf")
            add(f"in|{name}|{bound}", 1)
            sums[f"sum|{name}"] = sums.get(f"sum|{name}", 0.0) + float(value)
    return counts, sums


# KEYS: the counters, the request log.  ARGV: the log's size, the number of
# counts and then field, count pairs, the number of sums and field, sum pairs,
# then the records (JSON), oldest first.
_STORE = """
local size = tonumber(ARGV[1])
local at = 2
local n = tonumber(ARGV[at])
for i = at + 1, at + 2 * n, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
at = at + 2 * n + 1
n = tonumber(ARGV[at])
for i = at + 1, at + 2 * n, 2 do
  redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1])
end
at = at + 2 * n + 1
if size > 0 and at <= #ARGV then
  -- LPUSH puts its values at the head one after another: the newest ends
  -- up first.  In pieces: Lua's unpack has a limit.
  for i = at, #ARGV, 1000 do
    redis.call('LPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
  redis.call('LTRIM', KEYS[2], 0, size - 1)
end
return 1
"""


async def store_requests(
    redis: aioredis.Redis, records: list[RequestRecord], *, log_size: int
) -> None:
    """Add finished requests to the counters and to the request log (keeping
    its newest ``log_size``) in one command.

    As a pipeline of ``count_requests`` and ``request_log.write_many`` this
    was some sixteen commands for one request, each packed, sent and its
    reply parsed by the web process: a tenth of its CPU per short request.
    """
    counts, sums = _changes(records)
    args: list[Any] = [log_size, len(counts)]
    for field, count in counts.items():
        args += [field, count]
    args.append(len(sums))
    for field, total in sums.items():
        args += [field, repr(total)]
    args += [json.dumps(record) for record in records]
    await redis.eval(_STORE, 2, keys.metrics_counters(), keys.request_log(), *args)


@dataclass(frozen=True)
class Histogram:
    # (upper bound as the ``le`` label reads, cumulative count), ``+Inf`` last.
    buckets: list[tuple[str, float]]
    sum: float


@dataclass(frozen=True)
class Counters:
    """The counters as read at one moment; absent fields read as zero."""

    requests: dict[tuple[str, str], float]  # (kind, outcome) -> count
    tokens: dict[str, float]  # every name in TOKENS
    histograms: dict[str, Histogram]  # every name in TIMINGS
    pool_requests: dict[tuple[str, str, str], float]  # (pool, kind, outcome)
    pool_tokens: dict[tuple[str, str], float]  # (pool, name in TOKENS)


async def read_counters(redis: aioredis.Redis) -> Counters:
    raw = await redis.hgetall(keys.metrics_counters())
    fields = {_text(k): float(_text(v)) for k, v in raw.items()}
    requests: dict[tuple[str, str], float] = {}
    pool_requests: dict[tuple[str, str, str], float] = {}
    pool_tokens: dict[tuple[str, str], float] = {}
    for field, value in fields.items():
        if field.startswith("requests|"):
            _, kind, outcome = field.split("|", 2)
            requests[kind, outcome] = value
        elif field.startswith("pool_requests|"):
            _, pool, kind, outcome = field.split("|", 3)
            pool_requests[pool, kind, outcome] = value
        elif field.startswith("pool_tokens|"):
            _, pool, name = field.split("|", 2)
            pool_tokens[pool, name] = value
    return Counters(
        requests=requests,
        pool_requests=pool_requests,
        pool_tokens=pool_tokens,
        tokens={name: fields.get(f"tokens|{name}", 0) for name in TOKENS},
        histograms={
            name: Histogram(
                buckets=_cumulative(fields, name), sum=fields.get(f"sum|{name}", 0)
            )
            for name in TIMINGS
        },
    )


def _cumulative(fields: dict[str, float], name: str) -> list[tuple[str, float]]:
    """Prometheus's cumulative buckets of one timing.

    Requests are counted in the one bucket their value falls in
    (``in|<name>|<bound>``: one command per timing); counters written before
    that hold cumulative counts (``bucket|<name>|<bound>``), which still add
    up with them.
    """
    buckets: list[tuple[str, float]] = []
    below = 0.0
    for bound in (*BUCKETS_MS, "+Inf"):
        below += fields.get(f"in|{name}|{bound}", 0)
        buckets.append((str(bound), below + fields.get(f"bucket|{name}|{bound}", 0)))
    return buckets
