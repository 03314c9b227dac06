"""Cross-origin access (CORS) for browser applications on other origins.

Each surface has its own list of origins: the inference and OpenAI APIs
(``PADDLER_CORS_ALLOWED_ORIGINS``), on the inference handler's stack, and the
management API (``PADDLER_MANAGEMENT_CORS_ALLOWED_ORIGINS``), on the full
stack.  Both are empty by default: a browser then refuses every cross-origin
answer, as before.  django-cors-headers does the protocol (preflight answers,
the ``Access-Control-*`` headers); these classes say which origins and paths.

Cookies never count across origins (no ``Access-Control-Allow-Credentials``):
a page on another origin authenticates with a bearer key or the management
token, never with an operator's session, so CSRF stays out of reach.
"""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

from corsheaders.middleware import CorsMiddleware
from django.conf import settings
from django.http import HttpRequest

# Management paths a page on an allowed origin may call (the panel is not
# among them: its pages are this site's own).
MANAGEMENT_PREFIXES = ("/api/v1/", "/metrics", "/api/schema/")


class SurfaceCorsMiddleware(CorsMiddleware):
    """CORS for the paths of one surface, with that surface's origins."""

    origins_setting = ""

    def origins(self) -> list[str]:
        origins: list[str] = getattr(settings, self.origins_setting)
        return origins

    def covers(self, path: str) -> bool:
        return True

    def is_enabled(self, request: HttpRequest) -> bool:
        return bool(self.origins()) and self.covers(request.path_info)

    def origin_found_in_white_lists(self, origin: str, url: SplitResult) -> bool:
        allowed = self.origins()
        if "*" in allowed:
            return True
        return any(
            (entry.scheme, entry.netloc) == (url.scheme, url.netloc)
            for entry in map(urlsplit, allowed)
        )


class InferenceCorsMiddleware(SurfaceCorsMiddleware):
    """On the inference handler's stack, which serves only inference paths."""

    origins_setting = "PADDLER_CORS_ALLOWED_ORIGINS"


class ManagementCorsMiddleware(SurfaceCorsMiddleware):
    origins_setting = "PADDLER_MANAGEMENT_CORS_ALLOWED_ORIGINS"

    def covers(self, path: str) -> bool:
        return path.startswith(MANAGEMENT_PREFIXES)
