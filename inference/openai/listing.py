"""The models the API lists: their ids, and which ones the fleet serves.

A model's id is its file name without ``.gguf``, as the agents report it or
the desired state names it.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

from balancer import keys, registry
from balancer.dispatch import get_dispatcher


def model_id(path_or_url: str) -> str:
    """The name clients use for a model: its file name without ``.gguf``."""
    name = PurePosixPath(path_or_url.rstrip("/")).name or path_or_url
    return name.removesuffix(".gguf")


def model_id_of_source(source: Any) -> str | None:
    """The model id of a desired-state model source (Paddler's serde form)."""
    if not isinstance(source, dict) or len(source) != 1:
        return None
    ((kind, value),) = source.items()
    if kind == "LocalToAgent" and isinstance(value, str):
        return model_id(value)
    if kind == "HuggingFace" and isinstance(value, dict):
        return model_id(str(value.get("filename", ""))) or None
    if kind == "Url" and isinstance(value, dict):
        return model_id(str(value.get("url", ""))) or None
    return None


def model_object(identifier: str) -> dict[str, Any]:
    # Agents do not report when their model was made; 0 is "unknown".
    return {"id": identifier, "object": "model", "created": 0, "owned_by": "paddler"}


def models_list(identifiers: list[str]) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(i) for i in identifiers]}


async def served_model_ids() -> list[str]:
    """The models the fleet serves now, else the one it is told to serve.

    With no agent up (a fleet scaled to zero) requests still wait in the
    buffer, so the desired model is listed rather than nothing.
    """
    redis = get_dispatcher().redis
    paths = {
        str(agent.report["model_path"])
        for agent in await registry.list_agents(redis)
        if agent.report.get("model_path")
    }
    if paths:
        return sorted({model_id(path) for path in paths})
    raw = await redis.get(keys.desired_state())
    desired = model_id_of_source(json.loads(raw).get("model")) if raw else None
    return [desired] if desired else []
