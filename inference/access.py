"""Who may call the inference APIs: the one check of an inference API key.

Every caller of the Paddler HTTP endpoints, the OpenAI API and the inference
socket is let in by ``inference_access_allowed``; the HTTP views through
``api_key_required``, the socket through ``inference.socket_admission``.

The database keys are read once for all the requests of a moment, not once
per request (``balancer.shared_read``): at most every ``KEYS_CACHE_S``, so a
key made or revoked by another process (another replica's panel,
``manage.py revoke_api_key``) counts within that time; in the process that
made or revoked it, at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase

from balancer.shared_read import SharedRead
from inference.api_keys import bearer_token, digest_matches, key_prefix, matches_any
from inference.models import InferenceApiKey

# How old the active keys a request is checked against may be.
KEYS_CACHE_S = 1.0


@dataclass(frozen=True)
class ActiveKeys:
    """The active database keys: prefix -> (salt, digest)."""

    by_prefix: dict[str, tuple[str, str]]

    def matches(self, token: str) -> bool:
        prefix = key_prefix(token)
        stored = self.by_prefix.get(prefix) if prefix is not None else None
        return stored is not None and digest_matches(token, *stored)


def _read_active_keys() -> ActiveKeys:
    rows = InferenceApiKey.objects.active().values_list("prefix", "salt", "digest")
    return ActiveKeys({prefix: (salt, digest) for prefix, salt, digest in rows})


_keys = SharedRead(_read_active_keys, KEYS_CACHE_S)


def forget_keys() -> None:
    """The next check reads the keys again (a key was made or revoked)."""
    _keys.forget()


View = Callable[..., Coroutine[Any, Any, HttpResponseBase]]

UNAUTHORIZED = (
    "a valid inference API key is required: send 'Authorization: Bearer <key>'"
)
# Sent with every 401 for a missing or wrong inference key, socket included.
WWW_AUTHENTICATE = 'Bearer realm="paddler-inference"'


async def inference_access_allowed(*, token: str | None) -> bool:
    """Whether a caller presenting ``token`` (or none) may use inference.

    With no key configured (neither ``PADDLER_INFERENCE_API_KEYS`` nor an
    active key in the database) the APIs are open, whatever token is sent:
    OpenAI clients always send one.
    """
    configured: list[str] = settings.PADDLER_INFERENCE_API_KEYS
    if token is not None and configured and matches_any(token, configured):
        return True
    active = await _keys.get()
    if token is not None and active.matches(token):
        return True
    if configured:
        return False
    return not active.by_prefix


def api_key_required(deny: Callable[[str], HttpResponseBase]) -> Callable[[View], View]:
    """401 (shaped by ``deny``) unless the request carries an accepted key."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        async def wrapper(
            request: HttpRequest, *args: Any, **kwargs: Any
        ) -> HttpResponseBase:
            token = bearer_token(request.headers.get("Authorization"))
            if not await inference_access_allowed(token=token):
                response = deny(UNAUTHORIZED)
                response["WWW-Authenticate"] = WWW_AUTHENTICATE
                return response
            return await view(request, *args, **kwargs)

        return wrapper

    return decorate
