"""The output of one request on its way from an agent to a client.

A ``Stream`` is what the client-facing views read: batches of output items
until a final one, with the clean-up (the slot freed, the agent told to stop,
the request logged) done by its ``Dispatcher`` when it ends, however it ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.conf import settings
from redis.exceptions import RedisError

from balancer import registry
from balancer.contract import (
    Done,
    Failure,
    GenerationErrorKind,
    OutputItem,
    RequestKind,
    RequestParams,
    Usage,
    carries_nothing,
    error_item,
    outcome_of,
    read_output,
)
from balancer.pools import DEFAULT_POOL
from balancer.request_log import RequestRecord
from balancer.routing import Decision

if TYPE_CHECKING:
    from balancer.dispatch import Dispatcher

logger = logging.getLogger(__name__)

# How often a stream waiting for output checks that its agent is alive.
LIVENESS_CHECK_S = 1.0


class InferenceFailure(Exception):
    """A request failed before its stream started; ``code`` is the HTTP status."""

    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


class GenerationRefused(InferenceFailure):
    """A request refused before streaming for what a GeneratedToken error
    variant names (``variant``, e.g. ``MultimodalNotSupported``): the APIs
    answer it as they answer that variant."""

    def __init__(self, code: int, variant: GenerationErrorKind, detail: str) -> None:
        super().__init__(code, f"{variant}: {detail}")
        self.variant = variant
        self.detail = detail


def redis_failure(error: RedisError) -> InferenceFailure:
    # The error names Redis's host and port ("Error 111 connecting to
    # 10.0.0.5:6379"): the operator's log gets it, the client only the fact.
    logger.warning("Redis failed: %s", error)
    return InferenceFailure(503, "The balancer cannot reach Redis")


@dataclass
class Stream:
    """The output of one request, on the agent that serves it."""

    request_id: str
    kind: RequestKind
    params: RequestParams
    dispatcher: Dispatcher
    # The model pool it is served by.
    pool: str = DEFAULT_POOL
    agent_id: str = ""
    agent_name: str = ""
    decision: Decision | None = None
    queue: asyncio.Queue[OutputItem] = field(default_factory=asyncio.Queue)
    finished: bool = False
    outcome: str = "cancelled"
    retried: bool = False
    received: int = 0
    created_at: float = field(default_factory=time.monotonic)
    claimed_at: float = 0.0
    first_item_at: float = 0.0
    ended_at: float = 0.0
    slot: int | None = None
    usage: Usage = field(default_factory=Usage)
    # Whether the consumer is waiting for output now, and when it last did:
    # a stream nobody reads any more is abandoned (see Dispatcher._reap).
    reading: bool = False
    last_read_at: float = field(default_factory=time.monotonic)
    # A chunk of an embedding batch: the batch's request id, and the agents
    # its other chunks are on now, which its placement tries last.
    parent_id: str | None = None
    avoid: Callable[[], Collection[str]] | None = None

    async def agent_batches(self) -> AsyncGenerator[tuple[str, list[OutputItem]]]:
        """``batches``, each with the name of the agent that produced it."""
        batches = self.batches()
        try:
            async for batch in batches:
                # Read after the batch came: a request moved to another agent
                # before its first output names the agent that produced it.
                yield self.agent_name, batch
        finally:
            await batches.aclose()

    async def items(self) -> AsyncIterator[OutputItem]:
        """The output one item at a time (see ``batches``)."""
        batches = self.batches()
        try:
            async for batch in batches:
                for item in batch:
                    yield item
        finally:
            # Release the slot now, not when the generator is collected.
            await batches.aclose()

    async def batches(self) -> AsyncGenerator[list[OutputItem]]:
        """Yield the output until its final item; never hangs.

        Each batch holds every item that arrived since the last one, so a
        client that reads slower than tokens come gets them in fewer, larger
        writes.  No output for ``PADDLER_INFERENCE_ITEM_TIMEOUT_MS`` ends the
        stream with a 504 item; an agent whose heartbeat lapsed ends it with a
        502, unless it had sent nothing yet: then the request moves, once, to
        another agent, and the client does not notice.
        """
        timeout_s = settings.PADDLER_INFERENCE_ITEM_TIMEOUT_MS / 1000
        last_item_at = time.monotonic()
        try:
            while True:
                self.reading = True
                try:
                    if not self.queue.empty():
                        # Output came while the last batch was being written:
                        # no timer to arm and cancel, no wait.
                        first = self.queue.get_nowait()
                    else:
                        # Not asyncio.wait_for: on Python 3.11 it swallows a
                        # cancellation that comes as the item arrives, and
                        # the request of a client that went away would run on.
                        async with asyncio.timeout(min(LIVENESS_CHECK_S, timeout_s)):
                            first = await self.queue.get()
                except TimeoutError:
                    if time.monotonic() - last_item_at >= timeout_s:
                        yield [
                            self.end_with(504, "Timed out waiting for the next token")
                        ]
                        return
                    redis = self.dispatcher.redis
                    try:
                        if await registry.agent_is_alive(redis, self.agent_id):
                            continue
                    except RedisError:
                        # Unknown while Redis is away: the item timeout
                        # still bounds the wait.
                        logger.warning("liveness check failed", exc_info=True)
                        continue
                    failure = await self._move_or_fail(
                        f"Agent {self.agent_name} disappeared mid-stream"
                    )
                    if failure is not None:
                        yield [failure]
                        return
                    last_item_at = time.monotonic()
                    continue
                finally:
                    self.reading = False
                    self.last_read_at = time.monotonic()
                pending = [first]
                while not self.queue.empty():
                    pending.append(self.queue.get_nowait())
                last_item_at = time.monotonic()
                batch: list[OutputItem] = []
                for item in pending:
                    if carries_nothing(item):
                        continue  # progress on a long prompt: nothing to send
                    if self._refused_before_start(item):
                        failure = await self._move_or_fail(None)
                        if failure is not None:
                            yield [*batch, failure]
                            return
                        break  # the request went to another agent
                    self._note(item)
                    batch.append(item)
                    if item["final"]:
                        yield batch
                        return
                if batch:
                    yield batch
        finally:
            await self.close()

    def _refused_before_start(self, item: OutputItem) -> bool:
        """The agent turned the request away (no model, shutting down)."""
        if self.received or self.retried or item["error"] is None:
            return False
        refusal = read_output(item)
        return isinstance(refusal, Failure) and refusal.code == 503

    async def _move_or_fail(self, description: str | None) -> OutputItem | None:
        """Move to another agent if nothing was sent yet; else a 502 item."""
        if self.received == 0 and not self.retried:
            self.retried = True
            try:
                await self.dispatcher.reroute(self)
                return None
            except InferenceFailure as failure:
                return self.end_with(failure.code, failure.description)
            except RedisError as error:
                lost = redis_failure(error)
                return self.end_with(lost.code, lost.description)
        # Not marked finished: closing the stream tells the agent to stop, in
        # case it lives on (its heartbeat may have lapsed in a Redis outage).
        return self.end_with(502, description or "Agent refused the request")

    def _note(self, item: OutputItem) -> None:
        now = time.monotonic()
        if self.received == 0:
            self.first_item_at = now
        self.received += 1
        meta = item.get("meta")
        item["meta"] = None  # for this process only, not for clients
        if meta:
            self.slot = meta.get("slot", self.slot)
            if "prompt_tokens" in meta:  # the tokens an embedding request read
                self.usage = {"prompt_tokens": meta["prompt_tokens"]}
        if item["final"]:
            self.finished = True
            self.ended_at = now
            self.outcome = outcome_of(item)
            output = read_output(item)
            if isinstance(output, Done):
                self.usage = output.usage

    def end_with(self, code: int, description: str) -> OutputItem:
        item = error_item(self.request_id, code, description)
        self.outcome = str(code)
        self.ended_at = time.monotonic()
        return item

    async def close(self) -> None:
        """Release the slot; cancel on the agent if the output is unfinished."""
        await self.dispatcher.finish(self)

    def record(self) -> RequestRecord:
        """The request log record: where it went, why, and how it went."""
        end = self.ended_at or time.monotonic()
        generated = int(self.usage.get("content_tokens", 0))
        generating_s = end - self.first_item_at if self.first_item_at else 0.0
        return {
            "id": self.request_id,
            "parent_id": self.parent_id,
            "kind": self.kind,
            "pool": self.pool,
            "agent_id": self.agent_id,
            "agent": self.agent_name,
            "slot": self.slot,
            "matched_prefix_blocks": self.decision.matched if self.decision else 0,
            "why": self.decision.why if self.decision else "",
            "retried": self.retried,
            "prompt_tokens": int(self.usage.get("prompt_tokens", 0)),
            "cached_prompt_tokens": int(self.usage.get("cached_prompt_tokens", 0)),
            "generated_tokens": generated,
            "queue_wait_ms": round(
                ((self.claimed_at or end) - self.created_at) * 1000, 1
            ),
            "time_to_first_token_ms": (
                round((self.first_item_at - self.created_at) * 1000, 1)
                if self.first_item_at
                else None
            ),
            "tokens_per_second": (
                round(generated / generating_s, 1) if generating_s > 0 else None
            ),
            "duration_ms": round((end - self.created_at) * 1000, 1),
            "outcome": self.outcome,
            "finished_at": time.time(),
        }
