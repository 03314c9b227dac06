"""Hostile input on the inference socket, against daphne and a real agent.

What a client gets for each kind of bad input, and that it harms nothing
else: a bad message gets an ``Error`` envelope and its socket stays open for
the requests in flight on it; a frame that breaks the WebSocket protocol
itself (a text frame that is not UTF-8, a message above daphne's size limit,
a reserved opcode) closes that socket only, with the close code RFC 6455
gives it, and the other sockets stream on.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

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
from tests.support.web import WebServer

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
