"""Sends requests to agents and relays their output, inside one web process.

Each web process has one ``Dispatcher`` (per event loop).  It picks an agent
(``routing``), claims one of its slots in Redis (``registry``; buffering while
none is free anywhere; a buffered request whose conversation's cache is on one
agent holds out a while for a slot there, see ``registry``), sends the request
to the agent's channel, and reads the
process's own Redis inbox, where agents push the output of every stream bound
here, one batch per decode step.  When a request ends, a record of it (where it
went and why, how long it waited, how fast it ran, how it ended) goes to the
request log.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
import uuid
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass

import redis.asyncio as aioredis
from channels.exceptions import ChannelFull
from django.conf import settings
from redis.exceptions import RedisError

from balancer import (
    background,
    fanout,
    keys,
    metrics,
    redis_connection,
    registry,
    request_log,
    services,
)
from balancer.agent_channel import send_to_agent
from balancer.background import CLAIM_LEASE_MS
from balancer.contract import (
    EmbeddingDocument,
    EmbeddingParams,
    OutputItem,
    RequestKind,
    RequestParams,
    error_item,
)
from balancer.desired_state import InferenceParameters
from balancer.events import InferenceCancelEvent, InferenceRequestEvent
from balancer.host_tier import host_prefixes
from balancer.images import has_images
from balancer.pools import DEFAULT_POOL, pool_for_model
from balancer.prompt_limits import PromptTooLarge, check_prompt_bounds
from balancer.registry_view import RegistryView
from balancer.request_log import RequestRecord
from balancer.routing import (
    Candidate,
    Decision,
    NoAgentServesImages,
    decide,
    request_prefix,
    serving_images,
)
from balancer.shared_read import SharedRead
from balancer.stream import (
    GenerationRefused,
    InferenceFailure,
    Stream,
    redis_failure,
)

logger = logging.getLogger(__name__)

# How often buffered requests look for a free slot anywhere in the fleet.
BUFFER_POLL_S = 0.05
# How old the registry read that routes a request may be, when the registry
# view (``registry_view``) is not fresh and the registry is read from Redis.
AGENTS_CACHE_S = 0.05
# How many agents, best first, a claim is offered: the Lua claim looks at
# each, so offering the whole fleet would make every claim cost Redis a step
# per agent.  When none of them has a free slot but the view knows of others
# that do, the claim is tried again with those (``Dispatcher._acquire``).
CLAIM_CANDIDATES = 8
# How old the context size that bounds prompts may be.
CONTEXT_SIZE_CACHE_S = 1.0
# How old the pools' names and aliases that route requests may be: a new
# pool or alias takes effect within this.
POOLS_CACHE_S = 1.0


def _images_refused() -> GenerationRefused:
    """A request with images, and agents ready, none of which serves
    images: waiting would not help (``routing.serving_images``)."""
    return GenerationRefused(
        400,
        "MultimodalNotSupported",
        "the request holds images, and no agent serving this pool "
        "has a multimodal projection loaded",
    )


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


@dataclass
class _Hold:
    """A buffered request's wait for the agent that holds its cache
    (``registry``'s holdouts)."""

    agent_id: str
    decision: Decision  # the one that found its cache there
    since: float | None = None  # when it began holding out
    ended: float | None = None  # when the claim said it no longer does

    @property
    def active(self) -> bool:
        return self.ended is None


def _hold_for(stream: Stream, decision: Decision) -> _Hold | None:
    """What the request would hold out for if it has to wait: the agent
    whose slot or host tier holds its conversation.  Not a decision without
    a cache match, nor a chunk of an embedding batch (it wants to be away
    from its batch, not near a cache)."""
    if (
        settings.PADDLER_ROUTING_CACHE_WAIT_MS <= 0
        or stream.avoid is not None
        or decision.matched <= 0
        or not decision.order
    ):
        return None
    return _Hold(decision.order[0], decision)


def _explained(decision: Decision, agent_id: str, hold: _Hold | None) -> Decision:
    """``decision`` as the request log tells it, for a claim on ``agent_id``."""
    if hold is not None and hold.since is not None:
        now = time.monotonic()
        if agent_id == hold.agent_id:
            return Decision(
                decision.order,
                hold.decision.matched,
                f"{hold.decision.why}; waited {now - hold.since:.2f} s for its agent",
            )
        held = (hold.ended or now) - hold.since
        return Decision(
            decision.order,
            0,
            f"first free slot (waited {held:.2f} s for the preferred agent)",
        )
    if not decision.order or agent_id != decision.order[0]:
        return Decision(decision.order, 0, "first free slot (preferred was full)")
    return decision


class Dispatcher:
    """Places the requests of one web process and relays their output.

    It owns the process's streams (``streams``, by request id); the loops of
    ``background`` run beside it for as long as the process does.
    """

    def __init__(self) -> None:
        self.web_id = uuid.uuid4().hex
        self.inbox = keys.web_inbox(self.web_id)
        self.redis: aioredis.Redis = redis_connection.async_client()
        # The registry as the agents' notifications keep it, for routing.
        self.view = RegistryView(
            self.redis,
            redis_connection.async_client(retries=False),
            ttl_ms=settings.PADDLER_AGENT_TTL_MS,
            on_redis_replaced=self._redis_replaced,
        )
        self.streams: dict[str, Stream] = {}
        # Set when a stream is placed: the reaper waits on it while there is
        # none (``background.reap``).
        self.stream_placed = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._cleanups: set[asyncio.Future[None]] = set()
        self._turn = 0
        self._statsd = metrics.statsd_client()
        self._agents_task: asyncio.Future[list[registry.AgentRecord]] | None = None
        self._agents_read_at = 0.0
        # Pool -> (context size, when read).
        self._context_sizes: dict[str, tuple[int, float]] = {}
        self._pool_routes = SharedRead(services.pool_routes, POOLS_CACHE_S)
        # Finished requests' records waiting for ``_write_records``.
        self._records: list[tuple[RequestRecord, asyncio.Future[None]]] = []
        self._records_writer: asyncio.Task[None] | None = None

    async def agents(self) -> list[registry.AgentRecord]:
        """The registry: the view's while it is fresh, else read from Redis
        at most every ``AGENTS_CACHE_S``.

        Many requests arrive at once under load; one read of the registry
        serves them all.  Staleness is harmless: the Lua claim checks the
        agents' slots itself, so a stale list can only order badly, never
        over-commit.
        """
        if self.view.fresh():
            return self.view.index.records()
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

    async def pool_routes(self) -> dict[str, list[str]]:
        """Every pool's name and aliases, from the database at most every
        ``POOLS_CACHE_S``, one read for all the requests meanwhile."""
        return await self._pool_routes.get()

    async def pool_named(self, name: str | None) -> str:
        """The pool a Paddler request names (the default when it names
        none); ``InferenceFailure`` 404 for one that does not exist."""
        if name is None or name == DEFAULT_POOL:
            return DEFAULT_POOL
        if name not in await self.pool_routes():
            raise InferenceFailure(404, f"No pool named {name!r}")
        return name

    async def pool_for_model(self, model: str) -> str | None:
        """The pool serving an OpenAI request's ``model`` (see
        ``pools.pool_for_model``), or None."""
        return pool_for_model(model, await self.pool_routes())

    def _ensure_started(self) -> None:
        if self._tasks:
            return
        work = {
            "paddler-inbox": background.read_inbox(self),
            "paddler-registry-view": self.view.run(),
            "paddler-leases": background.renew_leases(self),
            "paddler-web-heartbeat": background.web_heartbeat(self.redis, self.web_id),
            "paddler-reaper": background.reap(self),
            "paddler-desired-state": background.keep_desired_state(self.redis),
            "paddler-fleet-gauges": metrics.report_fleet(self.redis, self.web_id),
        }
        # Started inside the first request, these outlive it: each gets an
        # empty context, not a copy of that request's (whose sync_to_async
        # executor is gone once the request ends).
        self._tasks = [
            asyncio.create_task(coroutine, name=name, context=contextvars.Context())
            for name, coroutine in work.items()
        ]

    async def open_stream(
        self,
        kind: RequestKind,
        params: RequestParams,
        *,
        pool: str = DEFAULT_POOL,
        parent_id: str | None = None,
        avoid: Callable[[], Collection[str]] | None = None,
    ) -> Stream:
        """Claim a slot of one of ``pool``'s agents (waiting in the pool's
        buffer if need be) and send the request.

        Raises ``InferenceFailure`` (503 buffer full, 504 waited too long).
        """
        stream = Stream(
            uuid.uuid4().hex,
            kind,
            params,
            self,
            pool=pool,
            parent_id=parent_id,
            avoid=avoid,
        )
        try:
            try:
                await self._check_prompt_size(kind, params, pool)
                await self._place(stream, exclude=set())
            except RedisError as error:
                raise redis_failure(error) from None
        except InferenceFailure as failure:
            stream.outcome = str(failure.code)
            stream.ended_at = time.monotonic()
            await self._log(stream)
            raise
        return stream

    async def _check_prompt_size(
        self, kind: RequestKind, params: RequestParams, pool: str
    ) -> None:
        """413 for a prompt that cannot fit in the desired state's context,
        before it takes a slot or an agent spends time tokenizing it."""
        if kind == "embeddings":
            return
        try:
            check_prompt_bounds(params, context_size=await self._context_size(pool))
        except PromptTooLarge as error:
            raise InferenceFailure(413, str(error)) from None

    async def _context_size(self, pool: str) -> int:
        """The pool's desired context size, read from Redis at most every
        ``CONTEXT_SIZE_CACHE_S``, not once per request (the state holds the
        whole chat template).  A bound a moment stale is harmless: agents
        check the exact one of their model."""
        now = time.monotonic()
        size, read_at = self._context_sizes.get(pool, (0, -CONTEXT_SIZE_CACHE_S))
        if now - read_at >= CONTEXT_SIZE_CACHE_S:
            raw = await self.redis.get(keys.desired_state(pool))
            parameters = json.loads(raw).get("inference_parameters") if raw else None
            read = (
                parameters.get("context_size") if isinstance(parameters, dict) else None
            )
            size = read if isinstance(read, int) and read > 0 else 0
            size = size or InferenceParameters.context_size
            self._context_sizes[pool] = (size, now)
        return size

    async def open_embedding_batch(
        self, params: EmbeddingParams, *, pool: str = DEFAULT_POOL
    ) -> fanout.FanOut:
        """Split the batch into chunks that agents embed in parallel, each a
        request of its own, and merge their outputs (see ``fanout``).

        The first chunk is placed before this returns, so a batch that cannot
        start raises ``InferenceFailure`` as ``open_stream`` does; a later
        chunk that cannot be placed waits for another chunk of its batch to
        end, or, with none running, ends the merged stream with its error.
        """
        documents = params["input_batch"]
        try:
            fleet = await self.agents()
        except RedisError as error:
            raise redis_failure(error) from None
        agents = sum(1 for a in fleet if a.slots_total > 0 and a.pool == pool)
        size = fanout.chunk_size(
            len(documents),
            largest=settings.PADDLER_EMBEDDING_CHUNK_SIZE,
            agents=agents,
        )
        first, *rest = fanout.split_batch(documents, size)
        batch_id = uuid.uuid4().hex

        def chunk_params(chunk: list[EmbeddingDocument]) -> EmbeddingParams:
            return {
                "input_batch": chunk,
                "normalization_method": params["normalization_method"],
            }

        async def open_chunk(
            chunk: list[EmbeddingDocument], avoid: Callable[[], Collection[str]]
        ) -> Stream | OutputItem:
            try:
                return await self.open_stream(
                    "embeddings",
                    chunk_params(chunk),
                    pool=pool,
                    parent_id=batch_id,
                    avoid=avoid,
                )
            except InferenceFailure as failure:
                return error_item(batch_id, failure.code, failure.description)

        opened = await self.open_stream(
            "embeddings", chunk_params(first), pool=pool, parent_id=batch_id
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
        self.streams.pop(stream.request_id, None)
        self.view.index.claimed(stream.agent_id, -1)
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
        self.streams[stream.request_id] = stream
        self.stream_placed.set()
        event: InferenceRequestEvent = {
            "type": "inference.request",
            "request_id": stream.request_id,
            "reply_to": self.inbox,
            "kind": stream.kind,
            "params": stream.params,
        }
        try:
            await send_to_agent(agent.channel, dict(event))
        except ChannelFull:
            await self.finish(stream)
            raise InferenceFailure(
                503, f"Agent {agent.name} is not reading its requests"
            ) from None
        except BaseException:
            await self.finish(stream)
            raise

    def _decide(
        self, agents: list[registry.AgentRecord], prefix: list[str], *, images: bool
    ) -> Decision:
        """Order ``agents`` for a request; with ``images``, only those that
        serve images (``GenerationRefused`` when none of those ready does)."""
        candidates = [
            Candidate(
                agent.id,
                agent.slots_total,
                agent.slots_busy,
                [s["prefix"] for s in agent.report.get("slots", []) if not s["busy"]],
                host_prefixes(agent.report),
                # Agents from before images report nothing: they serve none.
                serves_images=agent.report.get("serves_images") is True,
            )
            for agent in agents
        ]
        if images:
            try:
                candidates = serving_images(candidates)
            except NoAgentServesImages:
                raise _images_refused() from None
        self._turn += 1
        return decide(
            candidates,
            prefix,
            policy=settings.PADDLER_ROUTING_POLICY,
            max_load_gap=settings.PADDLER_ROUTING_MAX_LOAD_GAP,
            turn=self._turn,
        )

    def _decide_from_view(
        self, stream: Stream, prefix: list[str], exclude: set[str], *, images: bool
    ) -> Decision:
        """``_decide`` from the registry view, cut to ``CLAIM_CANDIDATES``:
        its cost does not grow with the fleet (``agent_index``)."""
        self._turn += 1
        try:
            return self.view.index.decide(
                stream.pool,
                prefix,
                policy=settings.PADDLER_ROUTING_POLICY,
                max_load_gap=settings.PADDLER_ROUTING_MAX_LOAD_GAP,
                turn=self._turn,
                exclude=exclude,
                avoid=set(stream.avoid()) if stream.avoid is not None else (),
                limit=CLAIM_CANDIDATES,
                images=images,
            )
        except NoAgentServesImages:
            raise _images_refused() from None

    async def _acquire(
        self,
        stream: Stream,
        candidates: list[str],
        exclude: set[str],
        *,
        view: bool,
        hold: str | None,
        new: bool,
        images: bool,
    ) -> registry.Acquisition:
        """Claim a slot of the first agent in ``candidates`` with one free,
        or wait (holding out for ``hold``, see ``registry``).

        From the view, the candidates are the best few agents only.  When
        none of them had a free slot after all (the view is a few
        milliseconds behind the other replicas' claims), the claim is tried
        once more with every agent the view believes has one, rather than
        wait in the buffer while a slot is free elsewhere.  A request new to
        the buffer starts holding out only at that second try: one that a
        free slot elsewhere can take did not have to wait.
        """

        async def acquire(
            offered: list[str], hold_for: str | None
        ) -> registry.Acquisition:
            return await registry.acquire_slot(
                self.redis,
                request_id=stream.request_id,
                candidates=offered,
                lease_ms=CLAIM_LEASE_MS,
                max_buffered=settings.PADDLER_MAX_BUFFERED_REQUESTS,
                buffer_timeout_ms=settings.PADDLER_BUFFERED_REQUEST_TIMEOUT_MS,
                pool=stream.pool,
                hold_for=hold_for,
                hold_ms=settings.PADDLER_ROUTING_CACHE_WAIT_MS,
            )

        acquisition = await acquire(candidates, None if view and new else hold)
        if acquisition.outcome in ("claimed", "holding") or not view:
            return acquisition
        offered = set(candidates)
        wider = [
            agent_id
            for agent_id in self.view.index.with_free_slots(
                stream.pool, exclude, images=images
            )
            if agent_id not in offered
        ]
        if not wider and not (new and hold is not None):
            return acquisition
        return await acquire([*candidates, *wider], hold)

    async def _claim(
        self, stream: Stream, exclude: set[str]
    ) -> tuple[registry.AgentRecord, Decision]:
        timeout_ms = settings.PADDLER_BUFFERED_REQUEST_TIMEOUT_MS
        deadline = time.monotonic() + timeout_ms / 1000
        prefix = request_prefix(stream.params)
        images = "conversation_history" in stream.params and has_images(
            stream.params["conversation_history"]
        )
        buffered = False
        # Chosen by the first decision, the one the request arrived with.
        hold: _Hold | None = None
        decided = False
        try:
            while True:
                view = self.view.fresh()
                agents: dict[str, registry.AgentRecord] = {}
                if view:
                    decision = self._decide_from_view(
                        stream, prefix, exclude, images=images
                    )
                else:
                    agents = {
                        a.id: a
                        for a in await self.agents()
                        if a.pool == stream.pool and a.id not in exclude
                    }
                    decision = self._decide(
                        list(agents.values()), prefix, images=images
                    )
                    if stream.avoid is not None:
                        decision = _spread(decision, set(stream.avoid()))
                if not decided:
                    decided = True
                    hold = _hold_for(stream, decision)
                hold_agent = hold.agent_id if hold is not None and hold.active else None
                candidates = decision.order
                if hold_agent is not None and hold_agent not in candidates:
                    # A later decision may rank it lower (or cut it): the
                    # claim must still see the agent it holds out for.
                    candidates = [*candidates, hold_agent]
                acquisition = await self._acquire(
                    stream,
                    candidates,
                    exclude,
                    view=view,
                    hold=hold_agent,
                    new=not buffered,
                    images=images,
                )
                if acquisition.outcome == "claimed":
                    assert acquisition.agent_id is not None
                    buffered = False
                    agent = agents.get(acquisition.agent_id) or self.view.index.get(
                        acquisition.agent_id
                    )
                    if agent is None:
                        # The agent left the view since it was chosen.
                        agent = await registry.read_agent(
                            self.redis, acquisition.agent_id
                        )
                    if agent is None:
                        # Gone for good: its claim holds nothing; try again.
                        await registry.release_slot(
                            self.redis, acquisition.agent_id, stream.request_id
                        )
                        exclude = {*exclude, acquisition.agent_id}
                        continue
                    self.view.index.claimed(agent.id, +1)
                    return agent, _explained(decision, agent.id, hold)
                if acquisition.outcome == "overflow":
                    raise InferenceFailure(503, "Buffered requests overflow")
                buffered = True
                if hold is not None and hold.active:
                    if acquisition.outcome == "holding":
                        if hold.since is None:
                            hold.since = time.monotonic()
                    else:
                        # Its agent left (or it never could hold out): the
                        # first free slot will do.
                        hold.ended = time.monotonic()
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
                await registry.leave_buffer(
                    self.redis,
                    stream.request_id,
                    stream.pool,
                    held_for=hold.agent_id if hold is not None else None,
                )

    async def finish(self, stream: Stream) -> None:
        """Free the stream's slot (telling the agent to stop if unfinished)
        and log the request.

        The clean-up runs as a task of its own, shielded: the caller is often
        the reader of a client that just hung up, and Django cancels it at
        once.  Cancelled halfway (between taking the stream out of
        ``_streams`` and freeing its claim), the claim would hold the slot
        until its lease ran out, with nothing left to renew or reap it.
        """
        if self.streams.pop(stream.request_id, None) is None:
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
            self.view.index.claimed(stream.agent_id, -1)
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
        agent = self.view.index.get(stream.agent_id) if self.view.fresh() else None
        if agent is None:
            agents = {a.id: a for a in await self.agents()}
            agent = agents.get(stream.agent_id)
        if agent is not None:
            # If this message is lost, the agent generates up to max_tokens for
            # nobody; its slot comes back then, and the claim is already free.
            try:
                await send_to_agent(agent.channel, dict(cancel))
            except ChannelFull:
                logger.warning(
                    "request %s: agent %s reads no requests; could not cancel",
                    stream.request_id,
                    agent.name,
                )

    def _redis_replaced(self, lost_at: float) -> None:
        """Redis is another server than the one the running requests were
        placed on (a restart, or a failover to a replica: ``registry_view``).
        Output the old one took but did not pass on is gone, so a request
        running since before it was lost ends now with an error, not with a
        hole in its stream; its clean-up tells its agent to stop."""
        for stream in list(self.streams.values()):
            if stream.finished or not stream.claimed_at or stream.claimed_at > lost_at:
                continue
            logger.warning(
                "request %s: Redis failed over mid-stream; ending it",
                stream.request_id,
            )
            task = asyncio.create_task(
                self._end_lost(stream), context=contextvars.Context()
            )
            self._cleanups.add(task)
            task.add_done_callback(self._cleanups.discard)

    async def _end_lost(self, stream: Stream) -> None:
        # Freed first (while unfinished, so the agent is told to stop), then
        # the error for the reader, as the reaper does.
        await self.finish(stream)
        stream.queue.put_nowait(
            stream.end_with(502, "Redis failed over mid-stream: output may be lost")
        )

    async def _log(self, stream: Stream) -> None:
        """Log the request and add it to the request log and the counters in
        Redis; returns once they hold it.

        One write at a time per process: the records of requests that end
        while a write is in flight go together in the next one, whose
        counter increments are merged (``metrics.store_requests``, one
        command for the batch).
        """
        record = stream.record()
        request_log.log_line(record)
        if self._statsd is not None:
            metrics.send_request(self._statsd, record)
        written = asyncio.get_running_loop().create_future()
        self._records.append((record, written))
        if self._records_writer is None or self._records_writer.done():
            self._records_writer = asyncio.create_task(
                self._write_records(), context=contextvars.Context()
            )
        await asyncio.shield(written)

    async def _write_records(self) -> None:
        while self._records:
            batch, self._records = self._records, []
            try:
                await metrics.store_requests(
                    self.redis,
                    [record for record, _ in batch],
                    log_size=settings.PADDLER_REQUEST_LOG_SIZE,
                )
            except Exception:
                logger.warning(
                    "could not record %d requests", len(batch), exc_info=True
                )
            for _, written in batch:
                if not written.done():
                    written.set_result(None)


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
