"""What the panel reads from Redis: the request log and the agents' models."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from balancer import keys
from balancer.services import sync_redis

# The request log is read in pages of this many records.
PAGE = 200


def _decode(raw: bytes | str) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def request_log(*, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` finished requests, newest first."""
    if limit < 1:
        return []
    raw = sync_redis().lrange(keys.request_log(), 0, limit - 1)
    return [record for item in raw if (record := _decode(item)) is not None]


async def requests_since(
    redis: aioredis.Redis, *, since: float, limit: int
) -> list[dict[str, Any]]:
    """The requests that finished after ``since`` (a Unix time), newest first.

    The log is newest first, so reading stops at the first older record;
    replicas push as their requests end, so the order is only nearly exact,
    which is close enough for charts.
    """
    records: list[dict[str, Any]] = []
    offset = 0
    while offset < limit:
        raw = await redis.lrange(
            keys.request_log(), offset, min(offset + PAGE, limit) - 1
        )
        for item in raw:
            record = _decode(item)
            if record is None:
                continue
            finished = record.get("finished_at")
            if isinstance(finished, (int, float)) and finished < since:
                return records
            records.append(record)
        if len(raw) < PAGE:
            break
        offset += PAGE
    return records


@dataclass(frozen=True)
class AgentModel:
    """An agent's model as the agent reports it: its file and own template."""

    agent_name: str
    model_path: str | None
    chat_template: str | None


def agent_models() -> list[AgentModel]:
    """The models of the agents with a live heartbeat and a loaded model."""
    client = sync_redis()
    ids = sorted(
        m.decode() if isinstance(m, bytes) else str(m)
        for m in client.smembers(keys.agents_set())
    )
    if not ids:
        return []
    statuses = client.mget([keys.agent_status(agent_id) for agent_id in ids])
    metadata = client.mget([keys.agent_metadata(agent_id) for agent_id in ids])
    models: list[AgentModel] = []
    for raw_status, raw_metadata in zip(statuses, metadata, strict=True):
        status = _decode(raw_status) if raw_status is not None else None
        meta = _decode(raw_metadata) if raw_metadata is not None else None
        if status is None or meta is None:
            continue
        # "chat_template" is the one the agent uses (maybe the override); the
        # model's own is in its GGUF metadata.
        gguf = meta.get("metadata")
        template = (
            gguf.get("tokenizer.chat_template") if isinstance(gguf, dict) else None
        )
        models.append(
            AgentModel(
                agent_name=str(status.get("name", "")),
                model_path=status.get("model_path"),
                chat_template=template if isinstance(template, str) else None,
            )
        )
    return models
