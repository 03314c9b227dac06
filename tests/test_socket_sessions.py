"""The inference socket reads the Django session for its handshake and sends
its messages with the server's own ``send`` (``paddler_project.socket_sessions``).
``tests/test_security.py`` admits a staff session over a running daphne."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.sessions.backends.db import SessionStore

from paddler_project.socket_sessions import socket_session_stack
from tests.support.processes import web_process_prints
from tests.support.redis_server import RedisServer


@pytest.mark.django_db(transaction=True)
async def test_the_consumer_gets_the_session_and_the_servers_send() -> None:
    def stored() -> str:
        session = SessionStore()
        session["marker"] = "from the cookie"
        session.save()
        assert session.session_key is not None
        return session.session_key

    key = await sync_to_async(stored)()
    seen: dict[str, Any] = {}

    async def consumer(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen["marker"] = await sync_to_async(scope["session"].get)("marker")
        seen["send"] = send

    async def server_send(message: dict[str, Any]) -> None:
        raise AssertionError("nothing is sent in this test")

    scope = {
        "type": "websocket",
        "path": "/api/v1/inference_socket",
        "headers": [(b"cookie", f"sessionid={key}".encode())],
    }
    await socket_session_stack(consumer)(scope, None, server_send)
    assert seen["marker"] == "from the cookie"
    # channels' SessionMiddlewareStack hands on a wrapper of its own.
    assert seen["send"] is server_send


def test_the_web_process_uses_it_for_the_inference_socket(
    redis_server: RedisServer,
) -> None:
    """Checked in a process of its own: loading the application here would
    change this test process for the others."""
    check = (
        "from paddler_project.asgi import application; "
        "from paddler_project.socket_sessions import SocketSessionMiddleware; "
        "stack = application.app.application_mapping['websocket']; "
        "print(isinstance(stack.inner, SocketSessionMiddleware))"
    )
    assert web_process_prints(check, redis_server.url) == "True"
