"""The inference socket end to end: daphne, Redis, a real agent, the real model.

Driven by the official ``paddler_client`` where it can express the case, and by
a bare ``websockets`` client for what it cannot (cancelling, duplicate ids,
malformed messages).

Hostile input: what a client gets for each kind of bad input, and that it
harms nothing else: a bad message gets an ``Error`` envelope and its socket
stays open for the requests in flight on it; a frame that breaks the WebSocket
protocol itself (a text frame that is not UTF-8, a message above daphne's size
limit, a reserved opcode) closes that socket only, with the close code RFC 6455
gives it, and the other sockets stream on (``tests.support.raw_clients``'
``RawWebSocket``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import httpx
import pytest
import websockets
from paddler_client.client_inference import ClientInference
from paddler_client.continue_from_conversation_history_params import (
    ContinueFromConversationHistoryParams,
)
from paddler_client.continue_from_raw_prompt_params import (
    ContinueFromRawPromptParams,
)
from paddler_client.conversation_message import ConversationMessage
from paddler_client.inference_message import InferenceMessage, InferenceMessageKind

from tests.support.constants import ENDLESS_PROMPT
from tests.support.raw_clients import (
    OP_BINARY,
    OP_CLOSE,
    OP_TEXT,
    RawWebSocket,
    is_final,
    raw_prompt_request,
    request_id_of,
)
from tests.support.redis_server import RedisServer
from tests.support.slots import (
    FIRST_TOKEN_BUDGET_S,
    REPORT_LAG_S,
    claimed_slots,
    seconds_to_first_token,
    wait_for_claims,
    wait_for_idle_slots,
)
from tests.support.streams import read_ndjson, stream_text
from tests.support.web import WebServer, socket_url


def http_lines(web: WebServer, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", f"{web.url}{path}", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        return read_ndjson(response)


def message_text(messages: list[InferenceMessage]) -> str:
    return "".join(m.token or "" for m in messages if m.is_token)


async def collect(stream: Any) -> list[InferenceMessage]:
    return [message async for message in stream]


def raw_request(request_id: str, prompt: str, max_tokens: int) -> str:
    return json.dumps(raw_prompt_request(request_id, prompt, max_tokens))


async def receive(socket: Any, timeout: float = 30) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(socket.recv(), timeout))
    return message


async def test_official_client_continues_a_conversation_over_the_socket_as_over_http(
    api_platform: WebServer,
) -> None:
    params = ContinueFromConversationHistoryParams(
        add_generation_prompt=True,
        conversation_history=[
            ConversationMessage(role="user", content="Name a fruit that is yellow.")
        ],
        enable_thinking=False,
        max_tokens=16,
    )
    async with ClientInference(api_platform.url) as client:
        # A first request puts the prompt in a slot's cache, so the two
        # compared below evaluate it the same way (a fresh prompt and a cached
        # one can differ in a greedy near-tie).
        warm = params.model_copy(update={"max_tokens": 1})
        _ = [m async for m in client.post_continue_from_conversation_history(warm)]
        over_socket = await collect(
            await client.continue_from_conversation_history(params)
        )
        over_http = [
            m async for m in client.post_continue_from_conversation_history(params)
        ]
    assert over_socket[-1].kind == InferenceMessageKind.DONE
    assert over_socket[-1].generated_by == "agent-api"
    assert over_socket[-1].summary is not None
    assert over_socket[-1].summary.usage.content_tokens == 16
    # Every envelope is keyed by the id the client chose, or the client would
    # not have routed it to this stream at all.
    assert len({m.request_id for m in over_socket}) == 1
    assert message_text(over_socket) == message_text(over_http)
    assert message_text(over_socket)


async def test_official_client_continues_a_raw_prompt_over_the_socket_as_over_http(
    api_platform: WebServer,
) -> None:
    prompt = "The three primary colors are"
    # As above: both requests compared find the prompt cached.
    http_lines(
        api_platform,
        "/api/v1/continue_from_raw_prompt",
        {"raw_prompt": prompt, "max_tokens": 1},
    )
    async with ClientInference(api_platform.url) as client:
        messages = await collect(
            await client.continue_from_raw_prompt(
                ContinueFromRawPromptParams(raw_prompt=prompt, max_tokens=12)
            )
        )
    lines = http_lines(
        api_platform,
        "/api/v1/continue_from_raw_prompt",
        {"raw_prompt": prompt, "max_tokens": 12},
    )
    assert messages[-1].kind == InferenceMessageKind.DONE
    assert message_text(messages) == stream_text(lines)


async def test_requests_are_multiplexed_on_one_socket(api_platform: WebServer) -> None:
    prompts = ["The capital of France is", "My favourite animal is the"]
    expected = [
        stream_text(
            http_lines(
                api_platform,
                "/api/v1/continue_from_raw_prompt",
                {"raw_prompt": prompt, "max_tokens": 10},
            )
        )
        for prompt in prompts
    ]
    # One socket for both: the pool's only connection.
    async with ClientInference(api_platform.url, socket_pool_size=1) as client:
        streams = [
            await client.continue_from_raw_prompt(
                ContinueFromRawPromptParams(raw_prompt=prompt, max_tokens=10)
            )
            for prompt in prompts
        ]
        results = await asyncio.gather(*(collect(stream) for stream in streams))
    assert [message_text(messages) for messages in results] == expected
    assert results[0][0].request_id != results[1][0].request_id


async def test_duplicate_in_flight_id_gets_400_and_the_first_request_goes_on(
    api_platform: WebServer,
) -> None:
    async with websockets.connect(socket_url(api_platform)) as socket:
        await socket.send(raw_request("same", "Once upon a time", 8))
        await socket.send(raw_request("same", "Something else", 8))
        envelopes = [await receive(socket)]
        while not (is_final(envelopes[-1]) and "Response" in envelopes[-1]):
            envelopes.append(await receive(socket))
    errors = [e["Error"] for e in envelopes if "Error" in e]
    assert errors == [
        {
            "request_id": "same",
            "error": {
                "code": 400,
                "description": "request 'same' is already in flight on this socket",
            },
        }
    ]
    done = envelopes[-1]["Response"]["response"]["GeneratedToken"]["Done"]
    assert done["usage"]["content_tokens"] == 8


async def test_an_id_can_be_reused_once_its_request_finished(
    api_platform: WebServer,
) -> None:
    async with websockets.connect(socket_url(api_platform)) as socket:
        for _ in range(2):
            await socket.send(raw_request("again", "Hello", 3))
            envelope = await receive(socket)
            while not is_final(envelope):
                envelope = await receive(socket)
            assert "Done" in str(envelope.get("Response")), envelope


async def start_long_requests(socket: Any, *ids: str) -> None:
    """Start one long request per id and wait until each has a token."""
    for index, request_id in enumerate(ids):
        await socket.send(raw_request(request_id, f"{ENDLESS_PROMPT} {index}", 2000))
    started: set[str] = set()
    while started != set(ids):
        started.add(request_id_of(await receive(socket)))


async def test_stop_responding_to_cancels_and_frees_the_slot(
    api_platform: WebServer, api_redis: RedisServer
) -> None:
    async with websockets.connect(socket_url(api_platform)) as socket:
        # Both slots busy: the next request is served only once one is freed.
        await start_long_requests(socket, "stopped", "kept")
        assert claimed_slots(api_redis) == 2
        await socket.send(json.dumps({"Notification": {"StopRespondingTo": "stopped"}}))
        stopped_at = time.monotonic()
        await asyncio.to_thread(wait_for_claims, api_redis, 1, 1.0)
        await socket.send(raw_request("next", "Hello", 3))
        seen: list[dict[str, Any]] = [await receive(socket)]
        while request_id_of(seen[-1]) != "next":
            seen.append(await receive(socket))
        assert time.monotonic() - stopped_at < FIRST_TOKEN_BUDGET_S
        while not (request_id_of(seen[-1]) == "next" and is_final(seen[-1])):
            seen.append(await receive(socket))
        assert "Done" in seen[-1]["Response"]["response"]["GeneratedToken"]
        # Nothing more for the stopped request; the other one goes on.
        late = [e for e in seen if request_id_of(e) == "stopped"]
        assert not [e for e in late if is_final(e)]
        assert request_id_of(await receive(socket)) == "kept"


async def test_closing_the_socket_cancels_everything_in_flight(
    api_platform: WebServer, api_redis: RedisServer
) -> None:
    async with websockets.connect(socket_url(api_platform)) as socket:
        await start_long_requests(socket, "one", "two")
        assert claimed_slots(api_redis) == 2
    await asyncio.to_thread(wait_for_claims, api_redis, 0, 1.0)
    # Both slots were busy; a new request is served at once.
    waited = await asyncio.to_thread(seconds_to_first_token, api_platform)
    assert waited < FIRST_TOKEN_BUDGET_S
    await asyncio.to_thread(wait_for_idle_slots, api_platform, REPORT_LAG_S)


@pytest.mark.parametrize(
    ("message", "request_id", "description"),
    [
        ("{not json", "", "message is not valid JSON"),
        ('["Request"]', "", "a message must be an object with one key"),
        ('{"Ping": {}}', "", "unknown message 'Ping'"),
        ('{"Notification": {"Pause": "x"}}', "", "Notification must be"),
        ('{"Request": {"request": {}}}', "", "Request.id must be a non-empty string"),
        (
            '{"Request": {"id": "r", "request": {"Translate": {}}}}',
            "r",
            "Request.request: unknown request 'Translate'",
        ),
        (
            '{"Request": {"id": "r", "request": {"ContinueFromRawPrompt":'
            ' {"raw_prompt": "x", "max_tokens": 0}}}}',
            "r",
            "max_tokens: must be between 1 and",
        ),
        (
            '{"Request": {"id": "r", "request": {"ContinueFromConversationHistory":'
            ' {"conversation_history": [], "max_tokens": 5}}}}',
            "r",
            "conversation_history: must not be empty",
        ),
    ],
)
async def test_a_bad_message_gets_a_400_envelope_and_the_socket_stays_open(
    api_platform: WebServer, message: str, request_id: str, description: str
) -> None:
    async with websockets.connect(socket_url(api_platform)) as socket:
        await socket.send(message)
        error = (await receive(socket))["Error"]
        assert error["request_id"] == request_id
        assert error["error"]["code"] == 400
        assert error["error"]["description"].startswith(description)
        await socket.send(raw_request("after", "Hello", 2))
        envelope = await receive(socket)
        assert request_id_of(envelope) == "after"
        assert "Response" in envelope


# daphne's message limit as paddler_project.request_limits raises it: twice
# PADDLER_MAX_REQUEST_BYTES (autobahn refuses larger messages before the
# application sees them; smaller ones over our limit get a 413 envelope).
DAPHNE_MAX_MESSAGE = 2 * 4 * 1024 * 1024


def nested(depth: int) -> str:
    return '{"a": ' * depth + "{}" + "}" * depth


def conversation(request_id: str, part: Any) -> dict[str, Any]:
    return {
        "Request": {
            "id": request_id,
            "request": {
                "ContinueFromConversationHistory": {
                    "conversation_history": [{"role": "user", "content": [part]}],
                    "max_tokens": 2,
                }
            },
        }
    }


def start_long_request(socket: RawWebSocket, request_id: str) -> None:
    """A request that streams on while the test goes on (a token takes from
    a tenth of a second to a second or more on a loaded machine)."""
    socket.send_json(raw_prompt_request(request_id, ENDLESS_PROMPT, 12))
    assert request_id_of(socket.receive_json()) == request_id


def finish(socket: RawWebSocket, request_id: str) -> dict[str, Any]:
    """Read until ``request_id`` ends; its final envelope."""
    while True:
        envelope: dict[str, Any] = socket.receive_json()
        if request_id_of(envelope) == request_id and is_final(envelope):
            return envelope


def assert_done(envelope: dict[str, Any]) -> None:
    assert "Done" in envelope["Response"]["response"]["GeneratedToken"], envelope


# What a message is, and the error envelope it gets: (request id, code, the
# start of the description).
BAD_MESSAGES: list[tuple[str, int, bytes, tuple[str, int, str]]] = [
    ("malformed JSON", OP_TEXT, b"{not json", ("", 400, "message is not valid JSON")),
    (
        "JSON nested beyond any use",
        OP_TEXT,
        b"[" * 100_000 + b"]" * 100_000,
        ("", 400, "message is nested too deeply"),
    ),
    ("binary, not UTF-8", OP_BINARY, b"\xff\xfe{}", ("", 400, "message is not UTF-8")),
    (
        "binary JSON with an unknown request",
        OP_BINARY,
        b'{"Request": {"id": "bin", "request": {"Translate": {}}}}',
        ("bin", 400, "Request.request: unknown request 'Translate'"),
    ),
    (
        "unknown message",
        OP_TEXT,
        b'{"Subscribe": {"id": "x"}}',
        ("", 400, "unknown message 'Subscribe'"),
    ),
    (
        "unknown notification",
        OP_TEXT,
        b'{"Notification": {"Pause": "long"}}',
        ("", 400, "Notification must be"),
    ),
    (
        "an id already in flight",
        OP_TEXT,
        json.dumps(raw_prompt_request("long", "Hi", 2)).encode(),
        ("long", 400, "request 'long' is already in flight on this socket"),
    ),
    (
        "a request without a prompt",
        OP_TEXT,
        b'{"Request": {"id": "empty", "request": {"ContinueFromRawPrompt": {}}}}',
        ("empty", 400, "max_tokens: is required"),
    ),
]


def test_bad_messages_get_error_envelopes_and_the_socket_streams_on(
    api_platform: WebServer,
) -> None:
    socket = RawWebSocket(api_platform)
    start_long_request(socket, "long")
    for _, opcode, payload, _ in BAD_MESSAGES:
        socket.send(opcode, payload)
    # A client's own error report, however deep or long, is only logged, and
    # only its start.
    socket.send_text(b'{"Error": ' + nested(500).encode() + b"}")
    socket.send_text(
        b'{"Error": {"request_id": "r", "padding": "' + b"x" * 50_000 + b'"}}'
    )
    # Deep but well within the parser's reach: served like any request.
    socket.send_json(
        conversation(
            "deep", {"type": "text", "text": "Hi", "x": json.loads(nested(400))}
        )
    )
    expected = Counter(error for _, _, _, error in BAD_MESSAGES)
    errors: Counter[tuple[str, int, str]] = Counter()
    finals: dict[str, dict[str, Any]] = {}
    while len(finals) < 2 or errors.total() < expected.total():
        envelope = socket.receive_json()
        if "Error" in envelope and envelope["Error"]["error"]["code"] == 400:
            error = envelope["Error"]
            description = error["error"]["description"]
            matched = [
                e
                for e in expected
                if e[0] == error["request_id"]
                and e[1] == error["error"]["code"]
                and description.startswith(e[2])
            ]
            assert matched, envelope
            errors[matched[0]] += 1
        elif is_final(envelope):
            finals[request_id_of(envelope)] = envelope
    assert errors == expected
    assert_done(finals["long"])
    assert_done(finals["deep"])
    socket.close()
    logged = [
        line
        for line in api_platform.log.read_text().splitlines()
        if "inference socket client reported" in line
    ]
    assert len(logged) >= 2
    assert all(len(line) < 1000 for line in logged)


@pytest.mark.parametrize(
    ("case", "frames", "close_code"),
    [
        # RFC 6455 5.6/8.1: a text message must be UTF-8; 1007 otherwise.
        (
            "text that is not UTF-8",
            [(OP_TEXT, b'{"Request": "\xff\xfe"}', True)],
            1007,
        ),
        # Above daphne's message limit: 1009, "too big".
        (
            "one frame over the size limit",
            [(OP_TEXT, b"x" * (DAPHNE_MAX_MESSAGE + 1), True)],
            1009,
        ),
        (
            "fragments that add up to over the limit",
            [
                (OP_TEXT, b"x" * (DAPHNE_MAX_MESSAGE // 2 + 1), False),
                (0x0, b"x" * (DAPHNE_MAX_MESSAGE // 2 + 1), True),
            ],
            1009,
        ),
        # A reserved opcode, a continuation with nothing to continue: 1002.
        ("a reserved opcode", [(0x3, b"{}", True)], 1002),
        ("a stray continuation frame", [(0x0, b"{}", True)], 1002),
    ],
)
def test_frames_that_break_the_protocol_close_only_their_own_socket(
    api_platform: WebServer,
    case: str,
    frames: list[tuple[int, bytes, bool]],
    close_code: int,
) -> None:
    bystander = RawWebSocket(api_platform)
    start_long_request(bystander, "bystander")
    offender = RawWebSocket(api_platform)
    for opcode, payload, fin in frames:
        offender.send(opcode, payload, fin=fin)
    closing = offender.receive()
    assert closing.opcode == OP_CLOSE, case
    assert closing.close_code == close_code, (case, closing.close_reason)
    offender.close()
    # The other socket's request streams to its end, and the server takes
    # new sockets.
    assert_done(finish(bystander, "bystander"))
    bystander.close()
    assert api_platform.process.poll() is None
    fresh = RawWebSocket(api_platform)
    fresh.send_text(b"{not json")
    assert fresh.receive_json()["Error"]["error"]["code"] == 400
    fresh.close()
