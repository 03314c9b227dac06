"""Who may open the inference socket: its Host, its page's origin, its key or
staff session.

The key is judged as for HTTP (``inference.access``), the staff session as for
the panel (``balancer.authentication``); what is the socket's own is where
they are read from (the handshake's headers and query string) and the
same-site rule for a session.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

from channels.auth import get_user
from django.conf import settings
from django.http.request import split_domain_port, validate_host

from balancer.authentication import is_staff_user
from inference.access import inference_access_allowed
from inference.api_keys import bearer_token

logger = logging.getLogger(__name__)


def socket_token(scope: dict[str, Any]) -> str | None:
    """The API key of a socket: the bearer header, or the ``token`` parameter.

    Browsers cannot set headers on a WebSocket, hence the query parameter.
    """
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            token = bearer_token(value.decode("latin-1"))
            if token is not None:
                return token
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    tokens = query.get("token")
    return tokens[0] if tokens else None


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def host_allowed(host: str | None) -> bool:
    """Whether ``host`` (a ``Host`` header) is one Django would serve.

    As ``HttpRequest.get_host`` decides it: ``ALLOWED_HOSTS``, or the
    loopback names under ``DEBUG`` with none configured.
    """
    if not host:
        return False
    domain, _port = split_domain_port(host)
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    return bool(domain) and validate_host(domain, allowed)


def origin_allowed(scope: dict[str, Any]) -> bool:
    """Whether the page that opened the socket, if any, may use it.

    A socket without ``Origin`` comes from a program (paddler-client,
    websockets, curl), not a browser: browsers always send one.  A browser's
    page may use the socket when it is of this site (its origin names the
    ``Host``, which is allowed), or listed in ``PADDLER_ALLOWED_ORIGINS``.
    """
    origin = _header(scope, b"origin")
    if origin is None:
        return True
    allowed: list[str] = settings.PADDLER_ALLOWED_ORIGINS
    if "*" in allowed or origin in allowed:
        return True
    return same_site(scope)


def same_site(scope: dict[str, Any]) -> bool:
    """Whether the page that opened the socket is on this site.

    As Django's CSRF check decides for forms: the ``Origin`` names this very
    host, or one of ``CSRF_TRUSTED_ORIGINS`` (a proxy that rewrites the Host
    header needs it there).
    """
    origin, host = _header(scope, b"origin"), _header(scope, b"host")
    if not origin:
        return False
    if origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    return host is not None and urlsplit(origin).netloc == host


async def staff_session(scope: dict[str, Any]) -> bool:
    """Whether the socket comes from a staff user logged in to the panel.

    The panel's playground has no API key; it has the session cookie, which a
    browser sends along with a handshake from any site.  So a session counts
    only from a page of this site (else a page elsewhere could use the
    operator's login: cross-site WebSocket hijacking).
    """
    if "session" not in scope or not same_site(scope):
        return False
    return is_staff_user(await get_user(scope))


async def socket_admitted(scope: dict[str, Any]) -> bool:
    """Whether this socket may be opened; logs why not.

    A socket is a browser's way around CORS: any page may open one to any
    address, its user's loopback included.  So with no API key required
    (the open default), only pages of this site, or listed ones, get in.
    A key is proof enough, whatever the page: a page elsewhere cannot know
    it.  The ``Host`` is checked first, as Django checks it for HTTP: a
    page of an attacker's domain that resolves to 127.0.0.1 (DNS
    rebinding) is "same-origin" with the socket, but names its own host.
    """
    host = _header(scope, b"host")
    # Browsers always send Host; a client without one is a program (or an
    # in-process test), which no rebinding can steer.
    if host is not None and not host_allowed(host):
        logger.warning(
            "inference socket refused: Host %r is not in PADDLER_ALLOWED_HOSTS",
            (host or "")[:200],
        )
        return False
    token = socket_token(scope)
    if await inference_access_allowed(token=None):
        # Open: no key exists, so whatever token came proves nothing.
        if origin_allowed(scope):
            return True
        logger.warning(
            "inference socket refused: Origin %r is neither this site nor in "
            "PADDLER_ALLOWED_ORIGINS",
            (_header(scope, b"origin") or "")[:200],
        )
        return False
    if token is not None and await inference_access_allowed(token=token):
        return True
    return await staff_session(scope)
