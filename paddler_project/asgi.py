"""The ASGI application: HTTP (inference, management, panel) and WebSocket."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "paddler_project.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

from balancer.sse import EndStreamsOnCancel  # noqa: E402

# At shutdown, event streams end their responses instead of being cut off.
application = ProtocolTypeRouter({"http": EndStreamsOnCancel(django_asgi_app)})
