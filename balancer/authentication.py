"""Who is an operator: the management token's holder, or a staff user.

The one place both are checked.  The management API takes either: its DRF
views through ``balancer.api.authentication``, its streams and metrics (plain
async views that only read) through ``operator_required``.  The panel's pages
and the inference socket take a staff session, judged by ``is_staff_user``.
(Inference API keys are the client tier's: ``inference.access``.)
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable, Coroutine
from typing import Any, Literal

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.decorators import user_passes_test
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, HttpResponseBase, JsonResponse

View = Callable[..., Coroutine[Any, Any, HttpResponseBase]]
Access = Literal["token", "session"]

AUTHENTICATION_REQUIRED = (
    "authentication required: send 'Authorization: Bearer "
    "<PADDLER_MANAGEMENT_TOKEN>' or log in as staff"
)


def is_staff_user(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Whether ``user`` (a session's user) may act as staff.

    An anonymous user is neither active nor staff; a deactivated account is
    refused even while an old session of it lingers.  (``AbstractBaseUser``
    declares no ``is_staff``; a user model without it is never staff.)
    """
    return bool(getattr(user, "is_active", False) and getattr(user, "is_staff", False))


# The panel's pages: anyone else goes to the login page.
staff_required = user_passes_test(is_staff_user)


def token_matches(header: str | None) -> bool:
    token = settings.PADDLER_MANAGEMENT_TOKEN
    if not token or not header or not header.startswith("Bearer "):
        return False
    # As bytes: compare_digest refuses str with non-ASCII characters (a
    # TypeError, so a 500), and a header may carry any byte (read as Latin-1).
    sent = header[len("Bearer ") :].strip().encode("utf-8", "surrogateescape")
    return hmac.compare_digest(sent, token.encode("utf-8", "surrogateescape"))


async def operator_access(request: HttpRequest) -> Access | None:
    """How the caller proves to be an operator, or None if it does not.

    A logged-in user who is not staff is no operator: 401, like a stranger.
    """
    if token_matches(request.headers.get("Authorization")):
        return "token"
    if is_staff_user(await request.auser()):
        return "session"
    return None


async def is_operator(request: HttpRequest) -> bool:
    return await operator_access(request) is not None


def operator_required(view: View) -> View:
    """401 unless the caller has the management token or a staff session.

    For views that only read: changes go through the DRF views, whose
    session authentication checks CSRF.
    """

    @functools.wraps(view)
    async def wrapper(
        request: HttpRequest, *args: Any, **kwargs: Any
    ) -> HttpResponseBase:
        if await operator_access(request) is None:
            response = JsonResponse({"error": AUTHENTICATION_REQUIRED}, status=401)
            response["WWW-Authenticate"] = 'Bearer realm="paddler-management"'
            return response
        return await view(request, *args, **kwargs)

    return wrapper
