"""The ASGI application: HTTP (inference, management, panel) and WebSocket."""

from __future__ import annotations

import gc
import logging
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "paddler_project.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import path  # noqa: E402

from balancer.sse import EndStreamsOnCancel  # noqa: E402
from inference.consumers import InferenceSocketConsumer  # noqa: E402
from paddler_project import eager_writes, websocket_frames  # noqa: E402
from paddler_project.connections import GuardedConnections  # noqa: E402
from paddler_project.handlers import ByPath, InferenceHandler  # noqa: E402
from paddler_project.request_limits import install  # noqa: E402
from paddler_project.socket_sessions import socket_session_stack  # noqa: E402

# daphne reads a request whole before any of the application runs: the body
# size and read time are bounded there, at 413 and 408 (request_limits.py).
install(
    max_body_bytes=settings.PADDLER_MAX_REQUEST_BYTES,
    read_timeout_s=settings.PADDLER_REQUEST_READ_TIMEOUT_MS / 1000,
)
# Responses and socket messages go to the kernel as they are written, not on
# the event loop's next turn (eager_writes.py).
eager_writes.install()
# A WebSocket frame goes out without building a debug line nobody logs
# (websocket_frames.py).
websocket_frames.install()

# Here, not in the settings: every manage.py command and agent reads those, and
# only the web tier (daphne, runserver) signs sessions.
if not settings.PADDLER_SECRET_KEY_IS_SET:
    logging.getLogger("paddler.web").warning(
        "PADDLER_SECRET_KEY is not set, so this web process signs sessions with "
        "a random key of its own: logins will not survive a restart and will "
        "not work on a second web replica. Set PADDLER_SECRET_KEY to one secret "
        "value, the same on every replica, to keep them."
    )

# The socket authenticates with an API key sent by the client (header or
# ``token`` parameter), or with the panel's staff session.  The session is read
# only when no key is accepted, and counts only from a page of this host
# (``inference.socket_admission.staff_session``), so key callers need no origin check.
#
# daphne buffers whatever it is sent, without limit: a client that does not
# read its stream is cut off once it leaves PADDLER_MAX_CLIENT_BUFFER_BYTES
# unread, which cancels its requests; and a socket that breaks the WebSocket
# protocol is closed with a code and a reason (paddler_project.connections).
application = GuardedConnections(
    ProtocolTypeRouter(
        {
            # Inference requests skip the panel's middleware.  At shutdown,
            # the management API's event streams end their responses instead
            # of being cut off (the inference endpoints have none).
            "http": ByPath(InferenceHandler(), EndStreamsOnCancel(django_asgi_app)),
            # The session only admits a staff member at the handshake: the
            # messages go out with the server's own send (socket_sessions.py).
            "websocket": socket_session_stack(
                URLRouter(
                    [path("api/v1/inference_socket", InferenceSocketConsumer.as_asgi())]
                )
            ),
        }
    ),
    max_unread_bytes=settings.PADDLER_MAX_CLIENT_BUFFER_BYTES,
)

# Everything loaded so far (Django, the apps, the application above) lives as
# long as the web process: keep it out of the garbage collector's full passes,
# which the relay's many short-lived token dicts would otherwise trigger over
# all of it (about 12% more tokens/s relayed, bench.dispatch).
gc.freeze()
