"""The inference handler serves a request on the event loop, with no thread.

Django's ``ASGIHandler`` starts a thread for every request and sends the
request signals and closes the response there (``paddler_project.handlers``);
the inference handler does neither, and still sends the signals, cancels a
response whose client went away, and answers what Django answers.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.core import signals
from django.http import HttpRequest, StreamingHttpResponse
from django.urls import path

from paddler_project.handlers import InferenceHandler

pytestmark = pytest.mark.django_db(transaction=True)

streamed: dict[str, Any] = {}


async def _endless(request: HttpRequest) -> StreamingHttpResponse:
    async def lines() -> Any:
        try:
            while True:
                streamed["lines"] = streamed.get("lines", 0) + 1
                yield b"line\n"
                await asyncio.sleep(0.01)
        finally:
            streamed["closed"] = True

    return StreamingHttpResponse(lines(), content_type="application/x-ndjson")


urlpatterns = [path("health", _endless)]


def scope(path_: str, method: str = "GET") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path_,
        "raw_path": path_.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }


class Client:
    """The ASGI server's side of one request: what was sent, and a disconnect
    the test triggers."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.gone = asyncio.Event()
        self.requested = False

    async def receive(self) -> dict[str, Any]:
        if not self.requested:
            self.requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def status(self) -> int:
        return int(self.sent[0]["status"])

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])


@pytest.fixture
def thread_starts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    started: list[str] = []
    start = threading.Thread.start

    def counted(self: threading.Thread) -> None:
        started.append(self.name)
        start(self)

    monkeypatch.setattr(threading.Thread, "start", counted)
    yield started


@pytest.fixture
def signals_sent() -> Iterator[list[str]]:
    sent: list[str] = []

    def started(**kwargs: Any) -> None:
        sent.append("started")

    def finished(**kwargs: Any) -> None:
        sent.append("finished")

    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    yield sent
    signals.request_started.disconnect(started)
    signals.request_finished.disconnect(finished)


async def test_a_request_starts_no_thread_and_still_sends_the_signals(
    thread_starts: list[str], signals_sent: list[str]
) -> None:
    handler = InferenceHandler()
    for _ in range(3):
        client = Client()
        await handler(scope("/health"), client.receive, client.send)
        assert client.status() == 200
        assert client.body() == b"OK"
    # Django's own handler starts one per request (its ThreadSensitiveContext)
    # to send the signals and close the response on.
    assert thread_starts == []
    assert signals_sent == ["started", "finished"] * 3


async def test_a_client_that_goes_away_cancels_its_stream(
    settings: Any, signals_sent: list[str]
) -> None:
    settings.ROOT_URLCONF = __name__
    streamed.clear()
    handler = InferenceHandler()
    client = Client()
    serving = asyncio.ensure_future(
        handler(scope("/health"), client.receive, client.send)
    )
    for _ in range(200):
        if streamed.get("lines", 0) >= 3:
            break
        await asyncio.sleep(0.01)
    client.gone.set()
    await asyncio.wait_for(serving, 5)
    assert client.status() == 200
    assert client.body().startswith(b"line\nline\n")
    assert streamed["closed"] is True
    lines = streamed["lines"]
    await asyncio.sleep(0.1)
    assert streamed["lines"] == lines  # nothing streams for nobody
    assert signals_sent == ["started", "finished"]


def test_a_synchronous_middleware_gives_each_request_its_thread_again(
    settings: Any,
) -> None:
    """django-statsd's middleware (StatsD on) runs on a worker thread and
    waits there for the view: on one shared thread, a request waiting in the
    buffer would hold up every other (tests/test_metrics.py)."""
    assert InferenceHandler().on_loop
    settings.INFERENCE_MIDDLEWARE = [
        "django_statsd.middleware.StatsdMiddleware",
        *settings.INFERENCE_MIDDLEWARE,
    ]
    assert not InferenceHandler().on_loop
