"""The models the API lists: their ids, which ones the fleet serves, and the
model pool each id routes to.

A model's id is its file name without ``.gguf``, as the agents report it or
the desired state names it.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

from balancer import keys, registry
from balancer.dispatch import get_dispatcher
from balancer.pools import DEFAULT_POOL


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


async def served_model_ids(pool: str = DEFAULT_POOL) -> list[str]:
    """The models a pool's agents serve now, else the one it is told to serve.

    With no agent up (a pool scaled to zero) requests still wait in the
    buffer, so the desired model is listed rather than nothing.
    """
    redis = get_dispatcher().redis
    paths = {
        str(agent.report["model_path"])
        for agent in await registry.list_agents(redis)
        if agent.pool == pool and agent.report.get("model_path")
    }
    if paths:
        return sorted({model_id(path) for path in paths})
    raw = await redis.get(keys.desired_state(pool))
    desired = model_id_of_source(json.loads(raw).get("model")) if raw else None
    return [desired] if desired else []


async def listed_model_ids() -> list[str]:
    """What ``/v1/models`` lists: the default pool by the models it serves
    (as before pools existed), every other pool by its name; each pool's
    aliases too.  Each id routes to its pool (``model_pool``)."""
    routes = await get_dispatcher().pool_routes()
    ids: list[str] = []
    for pool, aliases in routes.items():
        ids += await served_model_ids() if pool == DEFAULT_POOL else [pool]
        ids += aliases
    return list(dict.fromkeys(ids))


async def model_pool(model: str) -> str | None:
    """The pool an OpenAI request for ``model`` goes to, or None (404).

    A pool's name or alias, else the default pool for the models it serves
    (see ``pools.pool_for_model`` for a fleet with one pool)."""
    pool = await get_dispatcher().pool_for_model(model)
    if pool is None and model in await served_model_ids():
        pool = DEFAULT_POOL
    return pool
