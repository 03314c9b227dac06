"""What the panel reads from Redis about the agents: their models.

(The request log has its own reader, ``balancer.request_log``.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from balancer import keys
from balancer.services import sync_redis


def _decode(raw: bytes | str) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


@dataclass(frozen=True)
class AgentModel:
    """An agent's model as the agent reports it: its file and own template."""

    agent_name: str
    model_path: str | None
    chat_template: str | None
    # What the model offers (``balancer.model_offer.ModelOffer`` as JSON):
    # its templates, special tokens, context, the formats detected.
    offer: dict[str, Any] | None = None


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
                offer=offer if isinstance(offer := meta.get("offer"), dict) else None,
            )
        )
    return models
