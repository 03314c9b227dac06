"""The model pool the panel shows: one for the whole session, picked in the
top bar (``?pool=NAME`` on any page) and kept until another is picked."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from balancer.pools import DEFAULT_POOL
from balancer.services import pool_names

SESSION_KEY = "panel_pool"


def chosen_pool(request: HttpRequest, names: list[str] | None = None) -> str:
    """The pool the request's page is about: ``?pool=``, else the session's,
    else the default; one that no longer exists falls back to the default.
    ``names`` are the pools, when the caller has read them already."""
    names = pool_names() if names is None else names
    wanted = request.GET.get("pool") or request.session.get(SESSION_KEY)
    pool = wanted if wanted in names else DEFAULT_POOL
    if request.session.get(SESSION_KEY) != pool:
        request.session[SESSION_KEY] = pool
    return pool


def pool_context(request: HttpRequest) -> dict[str, Any]:
    """Template context: the pools for the switcher, and the chosen one."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not user.is_staff:
        return {}
    names = pool_names()
    return {"pools": names, "chosen_pool": chosen_pool(request, names)}
