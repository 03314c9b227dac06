"""A client that never reads its stream is cut off after a bounded buffer.

daphne has no backpressure: without ``paddler_project.connections`` a stalled
reader's stream piles up in the web process until the generation ends, and
its slot generates for nobody meanwhile.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import MutableMapping
from typing import Any

import pytest
from twisted.internet import abstract
from twisted.internet.error import ConnectionDone
from twisted.python import failure

from paddler_project import connections
from paddler_project.connections import backlog_bytes
from tests.support.constants import AUTH, ENDLESS_PROMPT
from tests.support.fleet import Fleet, request_log
from tests.support.processes import wait_until
from tests.support.raw_clients import (
    SMALL_RECEIVE_BUFFER,
    RawWebSocket,
    connect,
    drain,
    http_post,
    raw_prompt_request,
)
from tests.support.slots import claimed_slots
from tests.support.streams import raw_prompt_stream, read_ndjson, stream_text
from tests.support.twisted_connections import server_connection
from tests.support.web import WebServer

# The smallest limit allowed: a stalled reader passes it after a few dozen
# tokens (the kernel's send queue counts; the reader's receive buffer is tiny).
LIMIT = 4096
# Ample for that at a few tokens a second on a loaded machine.
# Uncut, the request would generate to the end of its context (2048 tokens)
# and end "done", not "cancelled".
CUTOFF_BUDGET_S = 50.0


def cancelled(fleet: Fleet) -> list[dict[str, object]]:
    return [r for r in request_log(fleet) if r["outcome"] == "cancelled"]


def held_at_cutoff(web: WebServer) -> list[int]:
    """Bytes the web process held for each client it cut off (its log)."""
    return [int(n) for n in re.findall(r"left (\d+) bytes unread", web.log.read_text())]


def wait_until_idle(fleet: Fleet, web: WebServer) -> None:
    wait_until(lambda: claimed_slots(fleet.redis) == 0, 5, "no claims")
    wait_until(lambda: web.agents()[0]["slots_processing"] == 0, 10, "idle slots")


@pytest.fixture
def small_buffer_web(fleet: Fleet) -> WebServer:
    web = fleet.web(PADDLER_MAX_CLIENT_BUFFER_BYTES=str(LIMIT))
    fleet.agent("patient", slots=2)
    web.wait_for_ready_agents(1)
    return web


def test_a_reader_that_stalls_is_cut_off_and_frees_its_slot(
    fleet: Fleet, small_buffer_web: WebServer
) -> None:
    web = small_buffer_web
    started = time.monotonic()
    slow = connect(web, receive_buffer=SMALL_RECEIVE_BUFFER)
    slow.sendall(
        http_post(
            web,
            "/api/v1/continue_from_raw_prompt",
            {"raw_prompt": ENDLESS_PROMPT, "max_tokens": 100_000},
        )
    )
    # A normal client on the other slot, streaming meanwhile, is served in full.
    with raw_prompt_stream(web, "Once upon a time", 40, timeout=60) as response:
        lines = read_ndjson(response)
    assert "Done" in lines[-1]["Response"]["response"]["GeneratedToken"]
    assert stream_text(lines)

    records = wait_until(
        lambda: cancelled(fleet), CUTOFF_BUDGET_S, "the stalled request's end"
    )
    cut_after = time.monotonic() - started
    assert [r["kind"] for r in records] == ["raw_prompt"]
    (held,) = held_at_cutoff(web)
    assert held > LIMIT
    wait_until_idle(fleet, web)
    received, ending = drain(slow)
    print(
        f"\nstalled HTTP reader cut off after {cut_after:.1f}s holding {held} "
        f"bytes (limit {LIMIT}); {received} bytes had reached it; then {ending}"
    )
    assert ending in ("reset", "closed")


def test_a_socket_that_stalls_is_cut_off_and_cancels_its_requests(
    fleet: Fleet, small_buffer_web: WebServer
) -> None:
    web = small_buffer_web
    started = time.monotonic()
    slow = RawWebSocket(web, receive_buffer=SMALL_RECEIVE_BUFFER)
    for request_id in ("a", "b"):
        slow.send_json(raw_prompt_request(request_id, ENDLESS_PROMPT, 100_000))
    # ... and nothing is read from here on.
    records = wait_until(
        lambda: (found := cancelled(fleet)) and len(found) == 2 and found,
        CUTOFF_BUDGET_S,
        "both of the socket's requests to end",
    )
    cut_after = time.monotonic() - started
    assert len(records) == 2
    (held,) = held_at_cutoff(web)
    assert held > LIMIT
    wait_until_idle(fleet, web)
    received, ending = drain(slow.sock)
    print(
        f"\nstalled socket cut off after {cut_after:.1f}s holding {held} bytes "
        f"(limit {LIMIT}); {received} bytes had reached it; then {ending}"
    )
    assert ending in ("reset", "closed")


def test_a_large_response_of_known_length_is_not_cut(fleet: Fleet) -> None:
    """Non-streaming responses are finite and already in memory: a reader that
    takes its time gets all of one, though it is many times the limit."""
    web = fleet.web(PADDLER_MAX_CLIENT_BUFFER_BYTES=str(LIMIT))
    state = {**fleet.state, "default_system_prompt": "Be brief. " * 30_000}
    web.put_desired_state(state)
    slow = connect(web, receive_buffer=SMALL_RECEIVE_BUFFER)
    slow.sendall(
        f"GET /api/v1/balancer_desired_state?extensions=true HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{web.url.rsplit(':', 1)[1]}\r\n"
        f"Authorization: {AUTH['Authorization']}\r\nConnection: close\r\n\r\n".encode()
    )
    time.sleep(1.0)  # the reader dawdles; Django sent everything meanwhile
    slow.settimeout(10)
    response = b""
    while chunk := slow.recv(65536):
        response += chunk
    slow.close()
    head, body = response.split(b"\r\n\r\n", 1)
    assert b" 200 " in head.split(b"\r\n", 1)[0]
    assert len(body) > 10 * LIMIT
    assert json.loads(body)["default_system_prompt"] == state["default_system_prompt"]
    assert not held_at_cutoff(web)


def test_a_connection_already_lost_has_no_backlog() -> None:
    # A client that hangs up as its last line arrives: Django still sends the
    # response's closing (empty) message, on a Twisted connection that has
    # dropped its socket.  The backlog check must not raise there (it did,
    # and daphne logged "Exception inside application" for the request).
    ours, theirs = socket.socketpair()
    connection = server_connection(ours)
    assert backlog_bytes(connection) == 0
    connection.connectionLost(failure.Failure(ConnectionDone()))  # type: ignore[no-untyped-call]
    with pytest.raises(AttributeError):
        connection.getHandle()  # what Twisted does once a connection is lost
    assert backlog_bytes(connection) == 0
    theirs.close()


async def test_the_backlog_is_measured_once_per_eighth_of_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Measuring the kernel's queue is a system call: before every message
    it was one per token.  Measured once an eighth of the limit has gone out,
    a client that does not read is still cut off, at most that much late."""
    ours, theirs = socket.socketpair()
    connection = server_connection(ours)
    measured: list[int] = []
    real = connections._kernel_unacked

    def counted(transport: object) -> int:
        measured.append(1)
        return real(transport)

    monkeypatch.setattr(connections, "_kernel_unacked", counted)
    aborted: list[bool] = []
    monkeypatch.setattr(connection, "abortConnection", lambda: aborted.append(True))

    async def daphne_send(message: MutableMapping[str, Any]) -> None:
        # What daphne does with a body once the kernel takes no more of it:
        # into Twisted's buffer, sent on a later turn of the reactor (which
        # never turns here).
        abstract.FileDescriptor.write(connection, message.get("body", b""))

    limit = 64 * 1024
    send = connections._BoundedSend(daphne_send, connection, limit, {"type": "http"})
    await send({"type": "http.response.start", "status": 200, "headers": []})
    sent = 0
    while not aborted and sent < 10_000:
        await send(
            {"type": "http.response.body", "body": b"t" * 100, "more_body": True}
        )
        sent += 1
    assert aborted
    # Cut off at most an eighth of the limit (and a message) past it ...
    assert limit < sent * 100 <= limit + limit // 8 + 100
    # ... after a handful of measurements, not one per message.
    assert len(measured) <= 10
    theirs.close()
    ours.close()
