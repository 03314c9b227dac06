"""Agents' records as the registry holds them, for routing tests without
agents or Redis."""

from __future__ import annotations

from typing import Any

from balancer.registry import AgentRecord
from balancer.routing import conversation_prefix


def record(
    agent_id: str,
    *,
    slots_total: int = 4,
    processing: int = 0,
    idle: list[list[str]] | None = None,
    host: list[str] | None = None,
    images: bool | None = None,
    pool: str = "default",
    seq: int = 1,
) -> AgentRecord:
    """An agent's record: ``processing`` busy slots, one idle slot per
    prefix in ``idle``, its host tier holding ``host``; ``images=None``
    reports nothing about images, as agents from before images do."""
    slots: list[dict[str, Any]] = [
        {"busy": True, "prefix": []} for _ in range(processing)
    ]
    slots += [{"busy": False, "prefix": prefix} for prefix in idle or []]
    report: dict[str, Any] = {
        "name": agent_id,
        "channel": f"channel-{agent_id}",
        "pool": pool,
        "slots_total": slots_total,
        "slots_processing": processing,
        "slots": slots,
        "seq": seq,
    }
    if host is not None:
        report["host_cache"] = {"prefixes": host}
    if images is not None:
        report["serves_images"] = images
    return AgentRecord.from_report(agent_id, report)


def chain(words: list[str]) -> list[str]:
    """The prefix chain of a conversation of one user message per word."""
    return conversation_prefix([{"role": "user", "content": w} for w in words])
