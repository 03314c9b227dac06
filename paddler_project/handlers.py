"""Two Django handlers: the inference endpoints on a short middleware stack.

The panel and the management API need the whole stack (sessions, CSRF, the
logged-in user, messages).  The inference endpoints need none of it: callers
authenticate with an API key, send JSON and never a form, and get no cookie.
They are the hot path: every middleware of the whole stack that runs on a
worker thread (``paddler_project.middleware``) adds to a request's first
token.  So requests for them go to a handler built with
``settings.INFERENCE_MIDDLEWARE``; the URLs and views are the same.
"""

from __future__ import annotations

from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.test.utils import override_settings

# The Paddler-compatible and OpenAI-compatible inference endpoints, and the
# health check.  The inference WebSocket is not Django's (asgi.py).
INFERENCE_PATHS = (
    "/api/v1/continue_from_raw_prompt",
    "/api/v1/continue_from_conversation_history",
    "/api/v1/generate_embedding_batch",
    "/v1/",
    "/health",
)


def is_inference_path(path: str) -> bool:
    return path.startswith(INFERENCE_PATHS)


class InferenceHandler(ASGIHandler):
    """Django's ASGI handler with ``INFERENCE_MIDDLEWARE`` as its middleware."""

    def load_middleware(self, is_async: bool = False) -> None:
        # Django builds the chain from settings.MIDDLEWARE, once, here.
        with override_settings(MIDDLEWARE=settings.INFERENCE_MIDDLEWARE):
            super().load_middleware(is_async=is_async)


class ByPath:
    """ASGI: inference paths to one application, every other to another."""

    def __init__(self, inference: ASGIHandler, everything_else: ASGIHandler) -> None:
        self.inference = inference
        self.everything_else = everything_else

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        path = scope["path"].removeprefix(scope.get("root_path") or "")
        if is_inference_path(path):
            await self.inference(scope, receive, send)
        else:
            await self.everything_else(scope, receive, send)
