"""The request log: one record per finished request, newest first, in Redis.

Written once, by the web process that relayed the request (``write``), and read
back here only (``read_newest``, ``read_since``), so its shape is declared in
one place: ``RequestRecord``.  Every web replica pushes to the same list, which
keeps the newest ``PADDLER_REQUEST_LOG_SIZE`` records for the panel.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, TypedDict, cast

import redis
import redis.asyncio as aioredis

from balancer import keys
from balancer.pools import DEFAULT_POOL

logger = logging.getLogger(__name__)

# The log is read in pages of this many records.
PAGE = 200


class RequestRecord(TypedDict):
    """Where a request went, why, and how it went."""

    id: str
    # A chunk of an embedding batch: the batch's request id.
    parent_id: str | None
    kind: str
    # The model pool that served it.
    pool: str
    agent_id: str
    agent: str
    slot: int | None
    # How many prefix blocks of the request the chosen slot held, and the
    # routing policy's reason for that agent, in words.
    matched_prefix_blocks: int
    why: str
    retried: bool
    prompt_tokens: int
    cached_prompt_tokens: int
    generated_tokens: int
    queue_wait_ms: float
    time_to_first_token_ms: float | None
    tokens_per_second: float | None
    duration_ms: float
    # "done", an HTTP status ("503", "504", ...), "cancelled", or a variant.
    outcome: str
    # Unix time.
    finished_at: float


def log_line(record: RequestRecord) -> None:
    """The record as one line of the web process's own log."""
    logger.info(
        "request %s %s -> agent %s slot %s (%s); cached %s/%s prompt tokens; "
        "waited %sms; outcome %s",
        record["id"],
        record["kind"],
        record["agent"] or "-",
        record["slot"],
        record["why"] or "-",
        record["cached_prompt_tokens"],
        record["prompt_tokens"],
        record["queue_wait_ms"],
        record["outcome"],
    )


def write(pipe: Any, record: RequestRecord, *, size: int) -> None:
    """Queue the record's push on ``pipe`` (a Redis pipeline the caller runs
    with its other writes), keeping the newest ``size`` records."""
    write_many(pipe, [record], size=size)


def write_many(pipe: Any, records: list[RequestRecord], *, size: int) -> None:
    """``write`` for records in the order they ended, in one push."""
    if size > 0 and records:
        # LPUSH puts its values at the head one after another: the last,
        # newest record ends up first, as with one push per record.
        pipe.lpush(keys.request_log(), *(json.dumps(record) for record in records))
        pipe.ltrim(keys.request_log(), 0, size - 1)


def _decode(raw: bytes | str) -> RequestRecord | None:
    """A stored record, or None for one that is not a record (a foreign write)."""
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict):
        return None
    # Written before pools existed: the default pool served it.
    record.setdefault("pool", DEFAULT_POOL)
    if not RequestRecord.__required_keys__ <= set(record):
        return None
    return cast(RequestRecord, record)


def read_newest(client: redis.Redis, *, limit: int) -> list[RequestRecord]:
    """The newest ``limit`` records, newest first."""
    if limit < 1:
        return []
    raw = client.lrange(keys.request_log(), 0, limit - 1)
    return [record for item in raw if (record := _decode(item)) is not None]


async def read_since(
    client: aioredis.Redis, *, since: float, limit: int
) -> list[RequestRecord]:
    """The records of requests that finished after ``since`` (a Unix time),
    newest first, at most ``limit``.

    The log is newest first, so reading stops at the first older record;
    replicas push as their requests end, so the order is only nearly exact,
    which is close enough for charts.
    """
    records: list[RequestRecord] = []
    offset = 0
    while offset < limit:
        raw = await client.lrange(
            keys.request_log(), offset, min(offset + PAGE, limit) - 1
        )
        for item in raw:
            record = _decode(item)
            if record is None:
                continue
            if record["finished_at"] < since:
                return records
            records.append(record)
        if len(raw) < PAGE:
            break
        offset += PAGE
    return records


# Outcomes that are no error: everything else ("503", "504", "502", a variant
# such as "GrammarSyntaxError") counts under the filter "errors".
NOT_ERRORS = ("done", "cancelled")


@dataclass(frozen=True)
class Filter:
    """Which records a reader wants; an empty field matches everything."""

    # "done", "cancelled", "errors", or an exact outcome ("504").
    outcome: str = ""
    # An agent's id or name.
    agent: str = ""
    kind: str = ""
    pool: str = ""

    def matches(self, record: RequestRecord) -> bool:
        outcome = str(record["outcome"])
        if self.outcome == "errors":
            if outcome in NOT_ERRORS:
                return False
        elif self.outcome and outcome != self.outcome:
            return False
        if self.agent and self.agent not in (record["agent_id"], record["agent"]):
            return False
        if self.pool and record["pool"] != self.pool:
            return False
        return not self.kind or record["kind"] == self.kind


@dataclass(frozen=True)
class Position:
    """Where a page ended: its last record's id and finish time."""

    id: str
    finished_at: float


def read_page(
    client: redis.Redis, *, wanted: Filter, after: Position | None, limit: int
) -> tuple[list[RequestRecord], Position | None]:
    """Up to ``limit`` matching records, newest first, that come after
    ``after`` in the log; and the position to read the next page from (None
    when this page reached the end).

    The position is a record, not an index: new records push the older ones
    down the list between two pages.  Should the record have left the log
    meanwhile (it keeps only the newest ``PADDLER_REQUEST_LOG_SIZE``), the
    page goes on from the first record that finished before it.
    """
    raw = client.lrange(keys.request_log(), 0, -1)
    records = [record for item in raw if (record := _decode(item)) is not None]
    start = 0
    if after is not None:
        ids = [record["id"] for record in records]
        if after.id in ids:
            start = ids.index(after.id) + 1
        else:
            start = next(
                (
                    index
                    for index, record in enumerate(records)
                    if record["finished_at"] < after.finished_at
                ),
                len(records),
            )
    page: list[RequestRecord] = []
    for index in range(start, len(records)):
        record = records[index]
        if not wanted.matches(record):
            continue
        if len(page) == limit:
            last = page[-1]
            return page, Position(last["id"], last["finished_at"])
        page.append(record)
    return page, None
