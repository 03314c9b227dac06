"""Sends requests to agents and relays their output, inside one web process.

Each web process has one ``Dispatcher`` (per event loop).  It claims a slot
(buffering while none is free), sends the request to the agent's channel, and
reads the process's own Redis inbox, where agents push the output of every
stream bound here, one batch per decode step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from channels.layers import get_channel_layer
from django.conf import settings

from balancer import keys, registry
from balancer.events import InferenceCancelEvent, InferenceRequestEvent, OutputItem
from balancer.routing import Candidate, order_candidates

logger = logging.getLogger(__name__)

# A claim outlives a silent web replica by at most this long.
CLAIM_LEASE_MS = 15_000
# How often buffered requests look for a free slot anywhere in the fleet.
BUFFER_POLL_S = 0.05
# How often a stream waiting for output checks that its agent is alive.
LIVENESS_CHECK_S = 1.0


class InferenceFailure(Exception):
    """A request failed before its stream started; ``code`` is the HTTP status."""

    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


@dataclass
class Stream:
    """The output of one request on one agent."""

    request_id: str
    agent_id: str
    agent_name: str
    dispatcher: Dispatcher
    queue: asyncio.Queue[OutputItem] = field(default_factory=asyncio.Queue)
    finished: bool = False

    async def items(self) -> AsyncIterator[OutputItem]:
        """Yield the output until its final item; never hangs.

        No output for ``PADDLER_INFERENCE_ITEM_TIMEOUT_MS`` ends the stream
        with a 504 item; an agent whose heartbeat lapsed ends it with a 502.
        """
        timeout_s = settings.PADDLER_INFERENCE_ITEM_TIMEOUT_MS / 1000
        last_item_at = time.monotonic()
        try:
            while True:
                wait = min(LIVENESS_CHECK_S, timeout_s)
                try:
                    item = await asyncio.wait_for(self.queue.get(), wait)
                except TimeoutError:
                    if time.monotonic() - last_item_at >= timeout_s:
                        yield self._failure(504, "Timed out waiting for the next token")
                        return
                    if not await registry.agent_is_alive(
                        self.dispatcher.redis, self.agent_id
                    ):
                        yield self._failure(
                            502, f"Agent {self.agent_name} disappeared mid-stream"
                        )
                        self.finished = True  # nobody is left to cancel
                        return
                    continue
                last_item_at = time.monotonic()
                if item["final"]:
                    self.finished = True
                yield item
                if item["final"]:
                    return
        finally:
            await self.close()

    def _failure(self, code: int, description: str) -> OutputItem:
        return {
            "request_id": self.request_id,
            "response": None,
            "error": {"code": code, "description": description},
            "final": True,
        }

    async def close(self) -> None:
        """Release the slot; cancel on the agent if the output is unfinished."""
        await self.dispatcher.finish(self)


class Dispatcher:
    def __init__(self) -> None:
        self.web_id = uuid.uuid4().hex
        self.inbox = keys.web_inbox(self.web_id)
        self.redis: aioredis.Redis = aioredis.Redis.from_url(settings.REDIS_URL)
        self._streams: dict[str, Stream] = {}
        self._slot_freed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def _ensure_started(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._read_inbox(), name="paddler-inbox"),
                asyncio.create_task(self._renew_leases(), name="paddler-leases"),
            ]

    # ------------------------------------------------------------- requests
    async def open_stream(self, kind: str, params: dict[str, Any]) -> Stream:
        """Claim a slot (waiting in the buffer if need be) and send the request.

        Raises ``InferenceFailure`` (503 buffer full, 504 waited too long).
        """
        self._ensure_started()
        request_id = uuid.uuid4().hex
        agent = await self._claim(request_id)
        stream = Stream(request_id, agent.id, agent.name, self)
        self._streams[request_id] = stream
        event: InferenceRequestEvent = {
            "type": "inference.request",
            "request_id": request_id,
            "reply_to": self.inbox,
            "kind": kind,
            "params": params,
        }
        layer = get_channel_layer()
        assert layer is not None
        try:
            await layer.send(agent.channel, dict(event))
        except BaseException:
            await self.finish(stream)
            raise
        return stream

    async def _claim(self, request_id: str) -> registry.AgentRecord:
        timeout_ms = settings.PADDLER_BUFFERED_REQUEST_TIMEOUT_MS
        deadline = time.monotonic() + timeout_ms / 1000
        buffered = False
        try:
            while True:
                agents = {a.id: a for a in await registry.list_agents(self.redis)}
                candidates = order_candidates(
                    [
                        Candidate(a.id, a.slots_total, a.slots_processing)
                        for a in agents.values()
                    ]
                )
                acquisition = await registry.acquire_slot(
                    self.redis,
                    request_id=request_id,
                    candidates=candidates,
                    lease_ms=CLAIM_LEASE_MS,
                    max_buffered=settings.PADDLER_MAX_BUFFERED_REQUESTS,
                    buffer_timeout_ms=timeout_ms,
                )
                if acquisition.outcome == "claimed":
                    assert acquisition.agent_id is not None
                    buffered = False
                    return agents[acquisition.agent_id]
                if acquisition.outcome == "overflow":
                    raise InferenceFailure(503, "Buffered requests overflow")
                buffered = True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise InferenceFailure(504, "Waiting for available slot timed out")
                self._slot_freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._slot_freed.wait(), min(BUFFER_POLL_S, remaining)
                    )
        finally:
            if buffered:
                # Timed out, or the client went away while waiting.
                await registry.leave_buffer(self.redis, request_id)

    async def finish(self, stream: Stream) -> None:
        if self._streams.pop(stream.request_id, None) is None:
            return
        if not stream.finished:
            cancel: InferenceCancelEvent = {
                "type": "inference.cancel",
                "request_id": stream.request_id,
            }
            layer = get_channel_layer()
            assert layer is not None
            agents = {a.id: a for a in await registry.list_agents(self.redis)}
            agent = agents.get(stream.agent_id)
            if agent is not None:
                await layer.send(agent.channel, dict(cancel))
        await registry.release_slot(self.redis, stream.agent_id, stream.request_id)
        self._slot_freed.set()

    # ------------------------------------------------------ background work
    async def _read_inbox(self) -> None:
        # A dedicated connection: BLPOP holds it while it waits.
        reader = aioredis.Redis.from_url(settings.REDIS_URL)
        while True:
            try:
                popped = await reader.blpop([self.inbox], timeout=1)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("reading the inbox failed; retrying", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            if popped is None:
                continue
            batch = json.loads(popped[1])
            for item in batch["items"]:
                stream = self._streams.get(item["request_id"])
                if stream is not None:
                    stream.queue.put_nowait(item)

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(CLAIM_LEASE_MS / 3000)
            claims = {rid: s.agent_id for rid, s in self._streams.items()}
            try:
                await registry.renew_claims(self.redis, claims, CLAIM_LEASE_MS)
            except Exception:
                logger.warning("renewing slot claims failed", exc_info=True)


_dispatchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Dispatcher] = (
    weakref.WeakKeyDictionary()
)


def get_dispatcher() -> Dispatcher:
    """The dispatcher of the running event loop (one per web process)."""
    loop = asyncio.get_running_loop()
    dispatcher = _dispatchers.get(loop)
    if dispatcher is None:
        dispatcher = Dispatcher()
        _dispatchers[loop] = dispatcher
    return dispatcher
