"""Login attempts, limited per username and per client address.

The counts live in Redis, so that every web replica sees the same ones: an
attacker spreading guesses over replicas (the proxy does it for them) gets no
more.  Each attempt that would check a password counts, before the password is
checked; a successful login clears both counts.  Once either count is above
``PADDLER_LOGIN_MAX_FAILURES``, attempts are refused without a password check
until the window that began with the first of them ends
(``PADDLER_LOGIN_FAILURE_WINDOW_S``): a fixed window, so refused attempts do
not extend it.

A username can be locked out by anyone who guesses at it: for at most one
window, and staff who know their password lose a few minutes, against an
attacker who would otherwise try thousands of passwords a minute.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from typing import Any

from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.http import HttpRequest
from redis.exceptions import RedisError

from balancer import keys
from balancer.services import sync_redis

# KEYS: the username's and the address's counters.  ARGV: the most attempts
# allowed in a window, and the window in ms.  Counts this attempt in both and
# returns the ms until the later window ends of those whose count is now above
# the limit, or 0 when the attempt may go on.  One script: attempts that
# arrive together on several replicas are counted one by one, so that no more
# than the limit get through.
_ATTEMPT = """
local wait = 0
for _, key in ipairs(KEYS) do
  local count = redis.call('INCR', key)
  -- A counter without expiry (a new one) gets its window.
  if redis.call('PTTL', key) < 0 then
    redis.call('PEXPIRE', key, ARGV[2])
  end
  if count > tonumber(ARGV[1]) then
    wait = math.max(wait, redis.call('PTTL', key))
  end
end
return wait
"""


def client_address(request: HttpRequest | None) -> str:
    """The client's address as daphne reports it (behind a proxy, from the
    X-Forwarded-For that the proxy sets, with ``daphne --proxy-headers``)."""
    if request is None:
        return ""
    return str(request.META.get("REMOTE_ADDR") or "")


def _counters(*, username: str, address: str) -> list[str]:
    # Digests: a username or forwarded address may be long or odd; case is
    # folded so that "Admin" and "admin" share one count.
    def digest(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    return [
        keys.login_attempts("username", digest(username.casefold())),
        keys.login_attempts("address", digest(address)),
    ]


def login_attempt_begin(*, username: str, address: str) -> int:
    """Count an attempt to log in; 0 if it may go on, else the seconds to wait.

    Raises ``redis.RedisError`` when Redis cannot be reached.
    """
    wait_ms: Any = sync_redis().eval(
        _ATTEMPT,
        2,
        *_counters(username=username, address=address),
        settings.PADDLER_LOGIN_MAX_FAILURES,
        settings.PADDLER_LOGIN_FAILURE_WINDOW_S * 1000,
    )
    return 0 if int(wait_ms) <= 0 else max(1, math.ceil(int(wait_ms) / 1000))


def login_attempts_clear(*, username: str, address: str) -> None:
    """After a successful login: both counts start again."""
    sync_redis().delete(*_counters(username=username, address=address))


class LimitedAuthenticationForm(AuthenticationForm):
    """A login form that refuses attempts beyond the limit, unchecked.

    ``refused_for`` is then the seconds to wait, for the view's Retry-After.
    """

    refused_for = 0
    unavailable = False

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if not username or not password:
            # No password is checked: the form only asks for what is missing.
            return super().clean()
        address = client_address(self.request)
        try:
            wait = login_attempt_begin(username=username, address=address)
        except RedisError:
            # Without the counts, no password is checked: none is ever tried
            # beyond the limit.
            self.unavailable = True
            raise ValidationError(
                "Logging in is unavailable for now: the balancer cannot reach "
                "Redis. Try again in a minute.",
                code="unavailable",
            ) from None
        if wait:
            self.refused_for = wait
            raise ValidationError(
                "Too many failed logins for this username or from this "
                f"address: try again in {wait} s.",
                code="too_many_attempts",
            )
        data = super().clean()
        # Should Redis be gone now, the counts lapse with their window.
        with contextlib.suppress(RedisError):
            login_attempts_clear(username=username, address=address)
        return data
