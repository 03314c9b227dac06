"""DRF authentication of management callers: the token, or a staff session.

The rules of who is an operator stay in ``balancer.authentication``; these
classes only hand DRF its answer.  A caller neither authenticates gets 401
with a ``WWW-Authenticate`` header (DRF asks the first class for it).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser
from rest_framework.authentication import BaseAuthentication, SessionAuthentication
from rest_framework.request import Request

from balancer.authentication import is_staff_user, token_matches


class ManagementToken:
    """``request.auth`` of a caller that sent the management token.

    The caller is nobody in the database: ``request.user`` stays anonymous, so
    a revision it makes has no author, and it holds every permission.
    """

    def __repr__(self) -> str:
        return "ManagementToken()"


MANAGEMENT_TOKEN = ManagementToken()


class ManagementTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer <PADDLER_MANAGEMENT_TOKEN>``, as Paddler's clients
    send it.  Any other bearer is not refused here, only not accepted: the
    staff session may still stand in for it, and the answer is 401 if not."""

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        if token_matches(request.headers.get("Authorization")):
            return AnonymousUser(), MANAGEMENT_TOKEN
        return None

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="paddler-management"'


class StaffSessionAuthentication(SessionAuthentication):
    """A logged-in staff user's session, with DRF's CSRF check for changes.

    A session of a user who is not (or no longer) staff does not
    authenticate: the caller gets 401, like a stranger, not 403.
    """

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        user = getattr(request._request, "user", None)
        if user is None or not is_staff_user(user):
            return None
        # A browser sends the session cookie with any cross-site form post:
        # a change made on the strength of a session must carry the CSRF token.
        self.enforce_csrf(request)
        return user, None
