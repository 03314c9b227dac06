"""Sends requests to agents and relays their output, inside one web process.

Each web process has one ``Dispatcher`` (per event loop).  It picks an agent
(``routing``), claims one of its slots in Redis (``registry``; buffering while
none is free anywhere), sends the request to the agent's channel, and reads the
process's own Redis inbox, where agents push the output of every stream bound
here, one batch per decode step.  When a request ends, a record of it (where it
went and why, how long it waited, how fast it ran, how it ended) goes to the
request log.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import json
import logging
import time
import uuid
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError

from balancer import fanout, keys, metrics, registry
from balancer.events import (
    InferenceCancelEvent,
    InferenceRequestEvent,
    OutputItem,
    error_item,
    expand_item,
)
from balancer.routing import Candidate, Decision, decide, request_prefix
from inference.desired_state import InferenceParameters
from inference.validation import PromptTooLarge, check_prompt_bounds

logger = logging.getLogger(__name__)

# A claim outlives a silent web replica by at most this long.
CLAIM_LEASE_MS = 15_000
# How often buffered requests look for a free slot anywhere in the fleet.
BUFFER_POLL_S = 0.05
# How often a stream waiting for output checks that its agent is alive.
LIVENESS_CHECK_S = 1.0
# A stream whose consumer has not read for this long is cancelled.
ABANDONED_S = 5.0
# A web process silent this long is taken for dead by the agents.
WEB_HEARTBEAT_TTL_MS = 4_000
# How old the registry read that routes a request may be.
AGENTS_CACHE_S = 0.05
# How often a web process checks that Redis still holds the desired state.
DESIRED_STATE_CHECK_S = 2.0


class InferenceFailure(Exception):
    """A request failed before its stream started; ``code`` is the HTTP status."""

    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


def _redis_failure(error: RedisError) -> InferenceFailure:
    logger.warning("Redis failed: %s", error)
    return InferenceFailure(503, f"The balancer cannot reach Redis: {error}")


def _outcome(item: OutputItem) -> str:
    """How a request ended, from its final item: done, a status, or a variant."""
    if item["error"] is not None:
        return str(item["error"].get("code", "error"))
    response = item["response"]
    if isinstance(response, dict):
        generated = response.get("GeneratedToken")
        if isinstance(generated, dict):
            return "done" if "Done" in generated else next(iter(generated), "error")
        if response.get("Embedding") == "Done":
            return "done"
    return "error"


@dataclass
class Stream:
    """The output of one request, on the agent that serves it."""

    request_id: str
    kind: str
    params: dict[str, Any]
    dispatcher: Dispatcher
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
    usage: dict[str, Any] = field(default_factory=dict)
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
                    # Not asyncio.wait_for: on Python 3.11 it swallows a
                    # cancellation that comes as the item arrives, and the
                    # request of a client that went away would run on.
                    async with asyncio.timeout(min(LIVENESS_CHECK_S, timeout_s)):
                        first = await self.queue.get()
                except TimeoutError:
                    if time.monotonic() - last_item_at >= timeout_s:
                        yield [
                            self._end_with(504, "Timed out waiting for the next token")
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
                    if item["response"] is None and item["error"] is None:
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
        error = item["error"]
        return (
            self.received == 0
            and not self.retried
            and error is not None
            and error.get("code") == 503
        )

    async def _move_or_fail(self, description: str | None) -> OutputItem | None:
        """Move to another agent if nothing was sent yet; else a 502 item."""
        if self.received == 0 and not self.retried:
            self.retried = True
            try:
                await self.dispatcher.reroute(self)
                return None
            except InferenceFailure as failure:
                return self._end_with(failure.code, failure.description)
            except RedisError as error:
                lost = _redis_failure(error)
                return self._end_with(lost.code, lost.description)
        # Not marked finished: closing the stream tells the agent to stop, in
        # case it lives on (its heartbeat may have lapsed in a Redis outage).
        return self._end_with(502, description or "Agent refused the request")

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
            self.outcome = _outcome(item)
            response = item["response"]
            if isinstance(response, dict):
                done = response.get("GeneratedToken", {})
                if isinstance(done, dict) and "Done" in done:
                    self.usage = done["Done"].get("usage", {})

    def _end_with(self, code: int, description: str) -> OutputItem:
        item = error_item(self.request_id, code, description)
        self.outcome = str(code)
        self.ended_at = time.monotonic()
        return item

    async def close(self) -> None:
        """Release the slot; cancel on the agent if the output is unfinished."""
        await self.dispatcher.finish(self)

    def record(self) -> dict[str, Any]:
        """The request log record: where it went, why, and how it went."""
        end = self.ended_at or time.monotonic()
        generated = int(self.usage.get("content_tokens", 0))
        generating_s = end - self.first_item_at if self.first_item_at else 0.0
        return {
            "id": self.request_id,
            "parent_id": self.parent_id,
            "kind": self.kind,
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


def _spread(decision: Decision, avoid: set[str]) -> Decision:
    """The same order, but with the agents in ``avoid`` last.

    Chunks of one batch should land on different agents.  The registry read
    is up to ``AGENTS_CACHE_S`` old, so it may not show the slot the previous
    chunk took a moment ago, and the Lua claim takes the first candidate with
    a free slot: without this both chunks would go to the same least busy
    agent, one after the other.
    """
    if not avoid.intersection(decision.order):
        return decision
    order = [a for a in decision.order if a not in avoid] + [
        a for a in decision.order if a in avoid
    ]
    return Decision(order, decision.matched, f"{decision.why}; away from its batch")


class Dispatcher:
    def __init__(self) -> None:
        # Everything loaded so far (Django, the apps) lives as long as the
        # process: keep it out of the garbage collector's full passes, which
        # the relay's many short-lived token dicts would otherwise trigger
        # over all of it (about 12% more tokens/s relayed, bench.dispatch).
        gc.freeze()
        self.web_id = uuid.uuid4().hex
        self.inbox = keys.web_inbox(self.web_id)
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            settings.REDIS_URL, **settings.REDIS_OPTIONS
        )
        self._streams: dict[str, Stream] = {}
        self._slot_freed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._cleanups: set[asyncio.Future[None]] = set()
        self._turn = 0
        self._statsd = metrics.statsd_client()
        self._agents_task: asyncio.Future[list[registry.AgentRecord]] | None = None
        self._agents_read_at = 0.0

    async def agents(self) -> list[registry.AgentRecord]:
        """The registry, at most ``AGENTS_CACHE_S`` old.

        Many requests arrive at once under load; one read of the registry
        serves them all.  Staleness is harmless: the Lua claim checks the
        agents' slots itself, so a stale list can only order badly, never
        over-commit.
        """
        now = time.monotonic()
        if self._agents_task is None or (
            self._agents_task.done() and now - self._agents_read_at > AGENTS_CACHE_S
        ):
            self._agents_read_at = now
            self._agents_task = asyncio.ensure_future(registry.list_agents(self.redis))
        try:
            return await asyncio.shield(self._agents_task)
        except Exception:
            self._agents_task = None  # read again next time
            raise

    def _ensure_started(self) -> None:
        if self._tasks:
            return
        work = {
            "paddler-inbox": self._read_inbox(),
            "paddler-leases": self._renew_leases(),
            "paddler-web-heartbeat": self._heartbeat(),
            "paddler-reaper": self._reap(),
            "paddler-desired-state": self._keep_desired_state(),
            "paddler-fleet-gauges": metrics.report_fleet(self.redis, self.web_id),
        }
        # Started inside the first request, these outlive it: each gets an
        # empty context, not a copy of that request's (whose sync_to_async
        # executor is gone once the request ends).
        self._tasks = [
            asyncio.create_task(coroutine, name=name, context=contextvars.Context())
            for name, coroutine in work.items()
        ]

    # ------------------------------------------------------------- requests
    async def open_stream(
        self,
        kind: str,
        params: dict[str, Any],
        *,
        parent_id: str | None = None,
        avoid: Callable[[], Collection[str]] | None = None,
    ) -> Stream:
        """Claim a slot (waiting in the buffer if need be) and send the request.

        Raises ``InferenceFailure`` (503 buffer full, 504 waited too long).
        """
        stream = Stream(
            uuid.uuid4().hex, kind, params, self, parent_id=parent_id, avoid=avoid
        )
        try:
            try:
                await self._check_prompt_size(kind, params)
                await self._place(stream, exclude=set())
            except RedisError as error:
                raise _redis_failure(error) from None
        except InferenceFailure as failure:
            stream.outcome = str(failure.code)
            stream.ended_at = time.monotonic()
            await self._log(stream)
            raise
        return stream

    async def _check_prompt_size(self, kind: str, params: dict[str, Any]) -> None:
        """413 for a prompt that cannot fit in the desired state's context,
        before it takes a slot or an agent spends time tokenizing it."""
        if kind not in ("raw_prompt", "conversation"):
            return
        raw = await self.redis.get(keys.desired_state())
        parameters = json.loads(raw).get("inference_parameters") if raw else None
        context_size = (
            parameters.get("context_size") if isinstance(parameters, dict) else None
        )
        if not isinstance(context_size, int) or context_size < 1:
            context_size = InferenceParameters.context_size
        try:
            check_prompt_bounds(kind, params, context_size=context_size)
        except PromptTooLarge as error:
            raise InferenceFailure(413, str(error)) from None

    async def open_embedding_batch(self, params: dict[str, Any]) -> fanout.FanOut:
        """Split the batch into chunks that agents embed in parallel, each a
        request of its own, and merge their outputs (see ``fanout``).

        The first chunk is placed before this returns, so a batch that cannot
        start raises ``InferenceFailure`` as ``open_stream`` does; a later
        chunk that cannot be placed waits for another chunk of its batch to
        end, or, with none running, ends the merged stream with its error.
        """
        documents: list[fanout.Document] = params["input_batch"]
        try:
            fleet = await self.agents()
        except RedisError as error:
            raise _redis_failure(error) from None
        agents = sum(1 for agent in fleet if agent.slots_total > 0)
        size = fanout.chunk_size(
            len(documents),
            largest=settings.PADDLER_EMBEDDING_CHUNK_SIZE,
            agents=agents,
        )
        first, *rest = fanout.split_batch(documents, size)
        batch_id = uuid.uuid4().hex

        async def open_chunk(
            chunk: list[fanout.Document], avoid: Callable[[], Collection[str]]
        ) -> Stream | OutputItem:
            try:
                return await self.open_stream(
                    "embeddings",
                    {**params, "input_batch": chunk},
                    parent_id=batch_id,
                    avoid=avoid,
                )
            except InferenceFailure as failure:
                return error_item(batch_id, failure.code, failure.description)

        opened = await self.open_stream(
            "embeddings", {**params, "input_batch": first}, parent_id=batch_id
        )
        return fanout.FanOut(
            batch_id,
            first=opened,
            rest=rest,
            open_chunk=open_chunk,
            # One chunk per agent: an agent embeds one request at a time.  With
            # no agent yet (scale from zero) the chunks go one after another.
            max_in_flight=agents,
        )

    async def reroute(self, stream: Stream) -> None:
        """Move a request that got no output to another agent."""
        self._streams.pop(stream.request_id, None)
        await registry.release_slot(self.redis, stream.agent_id, stream.request_id)
        logger.warning(
            "request %s: agent %s lost before the first token; moving it",
            stream.request_id,
            stream.agent_name,
        )
        await self._place(stream, exclude={stream.agent_id})

    async def _place(self, stream: Stream, exclude: set[str]) -> None:
        agent, decision = await self._claim(stream, exclude)
        stream.agent_id, stream.agent_name = agent.id, agent.name
        stream.decision = decision
        stream.claimed_at = time.monotonic()
        # Time spent in the buffer is not time its reader neglected it: the
        # reaper counts from now, or a request that waited longer than
        # ABANDONED_S would be cancelled before its reader could start.
        stream.last_read_at = stream.claimed_at
        self._streams[stream.request_id] = stream
        event: InferenceRequestEvent = {
            "type": "inference.request",
            "request_id": stream.request_id,
            "reply_to": self.inbox,
            "kind": stream.kind,
            "params": stream.params,
        }
        layer = get_channel_layer()
        assert layer is not None
        try:
            await layer.send(agent.channel, dict(event))
        except BaseException:
            await self.finish(stream)
            raise

    def _decide(
        self, agents: list[registry.AgentRecord], prefix: list[str]
    ) -> Decision:
        candidates = [
            Candidate(
                agent.id,
                agent.slots_total,
                agent.slots_busy,
                [s["prefix"] for s in agent.report.get("slots", []) if not s["busy"]],
            )
            for agent in agents
        ]
        self._turn += 1
        return decide(
            candidates,
            prefix,
            policy=settings.PADDLER_ROUTING_POLICY,
            max_load_gap=settings.PADDLER_ROUTING_MAX_LOAD_GAP,
            turn=self._turn,
        )

    async def _claim(
        self, stream: Stream, exclude: set[str]
    ) -> tuple[registry.AgentRecord, Decision]:
        timeout_ms = settings.PADDLER_BUFFERED_REQUEST_TIMEOUT_MS
        deadline = time.monotonic() + timeout_ms / 1000
        prefix = request_prefix(stream.kind, stream.params)
        buffered = False
        try:
            while True:
                agents = {a.id: a for a in await self.agents() if a.id not in exclude}
                decision = self._decide(list(agents.values()), prefix)
                if stream.avoid is not None:
                    decision = _spread(decision, set(stream.avoid()))
                acquisition = await registry.acquire_slot(
                    self.redis,
                    request_id=stream.request_id,
                    candidates=decision.order,
                    lease_ms=CLAIM_LEASE_MS,
                    max_buffered=settings.PADDLER_MAX_BUFFERED_REQUESTS,
                    buffer_timeout_ms=timeout_ms,
                )
                if acquisition.outcome == "claimed":
                    assert acquisition.agent_id is not None
                    buffered = False
                    if acquisition.agent_id != decision.order[0]:
                        decision = Decision(
                            decision.order, 0, "first free slot (preferred was full)"
                        )
                    return agents[acquisition.agent_id], decision
                if acquisition.outcome == "overflow":
                    raise InferenceFailure(503, "Buffered requests overflow")
                buffered = True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise InferenceFailure(504, "Waiting for available slot timed out")
                self._slot_freed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(BUFFER_POLL_S, remaining)):
                        await self._slot_freed.wait()
        finally:
            if buffered:
                # Timed out, or the client went away while waiting.
                await registry.leave_buffer(self.redis, stream.request_id)

    async def finish(self, stream: Stream) -> None:
        """Free the stream's slot (telling the agent to stop if unfinished)
        and log the request.

        The clean-up runs as a task of its own, shielded: the caller is often
        the reader of a client that just hung up, and Django cancels it at
        once.  Cancelled halfway (between taking the stream out of
        ``_streams`` and freeing its claim), the claim would hold the slot
        until its lease ran out, with nothing left to renew or reap it.
        """
        if self._streams.pop(stream.request_id, None) is None:
            return
        cleanup = asyncio.create_task(
            self._clean_up(stream), context=contextvars.Context()
        )
        self._cleanups.add(cleanup)  # the loop keeps only a weak reference
        cleanup.add_done_callback(self._cleanups.discard)
        await asyncio.shield(cleanup)

    async def _clean_up(self, stream: Stream) -> None:
        try:
            if not stream.finished:
                stream.ended_at = stream.ended_at or time.monotonic()
                await self._cancel_on_agent(stream)
            await registry.release_slot(self.redis, stream.agent_id, stream.request_id)
        except RedisError:
            # The claim lapses with its lease (CLAIM_LEASE_MS) instead.
            logger.warning(
                "request %s: could not free its slot", stream.request_id, exc_info=True
            )
        self._slot_freed.set()
        await self._log(stream)

    async def _cancel_on_agent(self, stream: Stream) -> None:
        cancel: InferenceCancelEvent = {
            "type": "inference.cancel",
            "request_id": stream.request_id,
        }
        layer = get_channel_layer()
        assert layer is not None
        agents = {a.id: a for a in await self.agents()}
        agent = agents.get(stream.agent_id)
        if agent is not None:
            # If this message is lost, the agent generates up to max_tokens for
            # nobody; its slot comes back then, and the claim is already free.
            await layer.send(agent.channel, dict(cancel))

    async def _log(self, stream: Stream) -> None:
        record = stream.record()
        logger.info(
            "request %s %s -> agent %s slot %s (%s); cached %s/%s prompt tokens; "
            "waited %sms; outcome %s",
            record["id"],
            record["kind"],
            record["agent"] or "-",
            record["slot"],
            record["why"] or "-",
            record["cached_prompt_tokens"],
            record["prompt_tokens"],
            record["queue_wait_ms"],
            record["outcome"],
        )
        if self._statsd is not None:
            self._statsd.send(metrics.request_lines(record))
        size = settings.PADDLER_REQUEST_LOG_SIZE
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                metrics.count_request(pipe, record)
                if size > 0:
                    pipe.lpush(keys.request_log(), json.dumps(record))
                    pipe.ltrim(keys.request_log(), 0, size - 1)
                await pipe.execute()
        except Exception:
            logger.warning("could not record the request", exc_info=True)

    # ------------------------------------------------------ background work
    async def _read_inbox(self) -> None:
        # A dedicated connection: BLPOP holds it while it waits.
        reader = aioredis.Redis.from_url(settings.REDIS_URL, **settings.REDIS_OPTIONS)
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
            for raw in batch["items"]:
                item = expand_item(raw)
                stream = self._streams.get(item["request_id"])
                if stream is not None:
                    stream.queue.put_nowait(item)

    async def _keep_desired_state(self) -> None:
        """Put the desired state back into Redis if Redis lost it (a restart).

        Agents read it from there when they start; the database stays the
        source of truth.  SET NX: a newer state written meanwhile wins.
        """
        from asgiref.sync import sync_to_async

        from balancer.services import desired_state_revision_current

        while True:
            try:
                if not await self.redis.exists(keys.desired_state()):
                    revision = await sync_to_async(desired_state_revision_current)()
                    if revision is not None:
                        state = json.dumps(revision.to_state().to_json())
                        await self.redis.set(keys.desired_state(), state, nx=True)
            except Exception:
                logger.warning("could not check the desired state", exc_info=True)
            await asyncio.sleep(DESIRED_STATE_CHECK_S)

    async def _reap(self) -> None:
        """Cancel streams that nobody reads any more.

        A client that went away before its response started leaves a stream
        whose generator never runs, so no ``finally`` of it ever frees the
        slot; and a consumer that stopped reading holds a slot for nothing.
        Either way the agent is told to stop and the claim is released, and a
        reader that comes back finds an error at the end of its stream.
        """
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for stream in list(self._streams.values()):
                if stream.reading or now - stream.last_read_at < ABANDONED_S:
                    continue
                logger.warning(
                    "request %s: nobody read its output for %.0fs; cancelling",
                    stream.request_id,
                    now - stream.last_read_at,
                )
                try:
                    await self.finish(stream)
                except Exception:
                    logger.warning(
                        "cancelling an abandoned stream failed", exc_info=True
                    )
                stream.queue.put_nowait(
                    stream._end_with(408, "The client stopped reading its stream")
                )

    async def _heartbeat(self) -> None:
        """Tell agents this process is alive: they stop generating for the
        streams of a web process that died (see agents.worker)."""
        while True:
            try:
                await self.redis.set(
                    keys.web_alive(self.web_id), 1, px=WEB_HEARTBEAT_TTL_MS
                )
            except Exception:
                logger.warning("web heartbeat failed", exc_info=True)
            await asyncio.sleep(WEB_HEARTBEAT_TTL_MS / 4000)

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
    dispatcher._ensure_started()
    return dispatcher
