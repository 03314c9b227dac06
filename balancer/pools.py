"""Model pools: their names, and how a request's model finds its pool.

A pool is a group of agents that apply one desired state of their own; the
fleet serves as many models as it has pools.  The pool ``default`` always
exists: Paddler's own API and every agent started without ``--pool`` use it.
This module is framework-free: agents and the web tier share it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

DEFAULT_POOL = "default"

# Pool names are part of Redis keys and channel-layer group names.
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# An alias is what a client sends as ``model``: the names OpenAI clients use
# (``gpt-4o-mini``, ``org/model:tag``) but nothing that could hide in a log.
_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")


class PoolError(ValueError):
    """A pool name or alias that cannot be used, and why."""


def check_pool_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PoolError(
            f"pool name {name!r} must be 1 to 63 lowercase letters, digits, "
            "'-' or '_', starting with a letter or digit"
        )
    return name


def check_alias(alias: object) -> str:
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
        raise PoolError(
            f"alias {alias!r} must be 1 to 128 letters, digits or . _ : / @ + -, "
            "starting with a letter or digit"
        )
    return alias


def pool_for_model(model: str, names: Mapping[str, Iterable[str]]) -> str | None:
    """The pool that serves ``model``: a pool's own name, then an alias.

    ``names`` maps each pool to its aliases.  With the default pool as the
    only one, every model name lands there, as it did before pools existed:
    a one-model platform does not make its clients spell the model right.
    """
    if model in names:
        return model
    for pool, aliases in names.items():
        if model in aliases:
            return pool
    if set(names) == {DEFAULT_POOL}:
        return DEFAULT_POOL
    return None
