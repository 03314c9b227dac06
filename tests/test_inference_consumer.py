"""The inference socket consumer in-process, with Channels' communicators.

What needs no agent: who may connect (an API key, or a staff session from a
page of this site), and answers to messages that never reach the dispatcher.
``test_inference_socket.py`` drives the rest end to end.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels.testing import ApplicationCommunicator, WebsocketCommunicator
from django.test import override_settings

from inference.consumers import InferenceSocketConsumer
from inference.socket_admission import same_site, socket_token, staff_session
from inference.socket_messages import (
    ClientError,
    InvalidSocketMessage,
    SocketRequest,
    StopRespondingTo,
    parse_socket_message,
    request_id_hint,
)

PATH = "/api/v1/inference_socket"
KEYS = ["socket-key"]


def test_token_comes_from_the_header_or_the_query() -> None:
    header = {"headers": [(b"authorization", b"Bearer from-header")]}
    assert socket_token(header) == "from-header"
    assert socket_token({"query_string": b"token=from-query&x=1"}) == "from-query"
    assert socket_token({"headers": [], "query_string": b""}) is None


@pytest.mark.django_db(transaction=True)
@override_settings(PADDLER_INFERENCE_API_KEYS=KEYS)
async def test_socket_without_a_key_is_refused() -> None:
    communicator = WebsocketCommunicator(InferenceSocketConsumer.as_asgi(), PATH)
    connected, _ = await communicator.connect()
    assert not connected


@pytest.mark.django_db(transaction=True)
@override_settings(PADDLER_INFERENCE_API_KEYS=KEYS)
async def test_refusal_is_a_401_where_the_server_can_send_one() -> None:
    scope = {
        "type": "websocket",
        "path": PATH,
        "headers": [],
        "query_string": b"token=wrong",
        "extensions": {"websocket.http.response": {}},
    }
    communicator = ApplicationCommunicator(InferenceSocketConsumer.as_asgi(), scope)
    await communicator.send_input({"type": "websocket.connect"})
    start = await communicator.receive_output(1)
    assert start["type"] == "websocket.http.response.start"
    assert start["status"] == 401
    body = await communicator.receive_output(1)
    assert json.loads(body["body"])["error"]["code"] == 401


@pytest.mark.django_db(transaction=True)
@override_settings(PADDLER_INFERENCE_API_KEYS=KEYS)
async def test_bad_messages_get_400_envelopes_on_an_open_socket() -> None:
    communicator = WebsocketCommunicator(
        InferenceSocketConsumer.as_asgi(), f"{PATH}?token={KEYS[0]}"
    )
    connected, _ = await communicator.connect()
    assert connected
    await communicator.send_to(text_data="[1, 2]")
    reply: dict[str, Any] = await communicator.receive_json_from()
    assert reply["Error"]["error"]["code"] == 400
    # A stop for an id that is not in flight is ignored: no answer at all.
    await communicator.send_to(
        text_data=json.dumps({"Notification": {"StopRespondingTo": "nobody"}})
    )
    assert await communicator.receive_nothing(0.2)
    await communicator.disconnect()


def test_requests_are_validated_like_the_http_endpoints() -> None:
    message = parse_socket_message(
        json.dumps(
            {
                "Request": {
                    "id": "a",
                    "request": {
                        "ContinueFromConversationHistory": {
                            "conversation_history": [{"role": "user", "content": "x"}],
                            "max_tokens": 3,
                            "tools": [],
                        }
                    },
                }
            }
        )
    )
    assert isinstance(message, SocketRequest)
    assert (message.id, message.kind) == ("a", "conversation")
    assert "conversation_history" in message.params
    assert message.params["add_generation_prompt"] is True
    stop = parse_socket_message('{"Notification": {"StopRespondingTo": "a"}}')
    assert stop == StopRespondingTo("a")
    error = parse_socket_message(
        '{"Error": {"request_id": "a", "error": {"code": 1, "description": "x"}}}'
    )
    assert isinstance(error, ClientError)
    assert error.request_id == "a"


@pytest.mark.parametrize(
    ("text", "request_id"),
    [
        ('{"Request": {"id": "a", "request": {}, "extra": 1}}', "a"),
        ('{"Request": {"id": 5, "request": {}}}', ""),
        ('{"Request": {"id": "b", "request": {"ContinueFromRawPrompt": 1}}}', "b"),
        ("null", ""),
    ],
)
def test_invalid_messages_keep_the_id_when_they_have_one(
    text: str, request_id: str
) -> None:
    with pytest.raises(InvalidSocketMessage) as raised:
        parse_socket_message(text)
    assert raised.value.request_id == request_id


def test_id_of_an_oversized_message_is_read_from_its_start() -> None:
    text = '{"Request": {"id": "big\\"one", "request": ' + "x" * 5000
    assert request_id_hint(text) == 'big"one'
    assert request_id_hint('{"Request": {"request": {"id": 5}}}') == ""


def scope(origin: str | None, host: str = "panel.example:8000") -> dict[str, Any]:
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return {"type": "websocket", "headers": headers}


def test_only_pages_of_this_site_count() -> None:
    assert same_site(scope("http://panel.example:8000"))
    assert same_site(scope("https://panel.example:8000"))
    assert not same_site(scope("http://elsewhere.example"))
    assert not same_site(scope("http://panel.example:9000"))
    assert not same_site(scope("http://panel.example"))
    assert not same_site(scope(None))


def test_a_trusted_origin_counts_behind_a_proxy_that_rewrites_the_host() -> None:
    proxied = scope("https://panel.example", host="web-1:8000")
    assert not same_site(proxied)
    with override_settings(CSRF_TRUSTED_ORIGINS=["https://panel.example"]):
        assert same_site(proxied)


async def test_without_a_session_nobody_is_staff() -> None:
    assert not await staff_session(scope("http://panel.example:8000"))
