"""The agent process: hosts an engine and talks to the web tier through Redis.

Control messages (inference requests, cancellations, desired-state changes)
arrive on the agent's own channel of the Channels layer.  Output goes back on a
Redis list per web process, one push per destination and decode step.  Status
goes to Redis as a heartbeat with a TTL: an agent that stops beating disappears
from the registry by itself.  The agent never touches the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings

from agents.disk_cache import DiskCache, llama_runtime
from agents.engine import Engine
from agents.host_cache import HostCache
from agents.jobs import EmbeddingJob, EngineProtocol, ModelLoadError, Output
from agents.messages import job_from_request, output_batches, refusal
from agents.model_source import (
    ModelSourceError,
    paddler_model_path,
    resolve_model_path,
)
from agents.multimodal import ProjectionLoadFailed
from agents.push_connection import PushConnection
from agents.status import AgentStatus, engine_issue
from agents.synthetic import SyntheticEngine, step_seconds_from_env
from balancer import keys, redis_connection, registry
from balancer.chat_template import ChatTemplateError, compile_template
from balancer.desired_state import DesiredState, DesiredStateError
from balancer.events import AgentMessage, InferenceRequestEvent
from balancer.model_offer import model_offer
from balancer.pools import DEFAULT_POOL, check_pool_name

logger = logging.getLogger(__name__)

# A web process whose heartbeat key has been missing this long is dead.  It
# renews the key every second (balancer.background.web_heartbeat), so after
# a Redis restart a live one's key is back well within this.
WEB_GONE_AFTER_S = 3.0

# A web process that died leaves no inbox behind for long: its list gets a
# TTL.  Not with every push (that was a second Redis command per decode step,
# and a web process that reads its inbox empty deletes the list, TTL and all,
# so most pushes make a new list): a push sets it when its web process is
# missing (``_webs_missing_since``: it may be dead, nobody may read the list
# again), and otherwise at most every INBOX_TTL_RENEW_S; the orphan check
# sets it on the inbox of a web process it finds dead.  A live web process
# reads its inbox empty within moments, so its list needs no TTL.
INBOX_TTL_S = 60
INBOX_TTL_RENEW_S = 10.0

# The relay reads Redis's replies to a push before it writes the next one
# (``_settle``); when no push follows for this long, it reads them anyway, so
# that a push Redis refused stops its requests within moments.
REPLY_READ_IDLE_S = 0.05

# How long the relay drops the output of a request whose loss it told the
# web tier of: the engine stops it at its next step, and what it made until
# then is in the relay's queue.
TOLD_LOST_KEEP_S = 60.0

# After applying a desired state failed unexpectedly (status
# AttemptedAndRetrying), the pause before the next attempt; a module
# constant so that tests can shorten it.
APPLY_RETRY_S = 5.0


def name_os_thread(name: str) -> None:
    """Name the calling thread for the system too (``top -H``,
    ``/proc/<pid>/task/<tid>/comm``), where Python 3.11 leaves every
    thread named after the process: the benchmarks tell the relay's CPU
    time from the engine's by it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


PR_SET_NAME = 15


@dataclass
class WrittenPush:
    """A push written to Redis whose replies are not read yet, and what
    ``_settle`` makes of them: the push's output lost, or taken."""

    outputs: list[Output]
    # The requests whose error item it carries (``_undelivered``).
    lost: list[str]
    # The inboxes whose TTL it sets, and when it was written (monotonic).
    expiring: list[str]
    written_at: float


class AgentWorker:
    def __init__(
        self,
        *,
        name: str,
        slots: int,
        n_threads: int | None = None,
        n_gpu_layers: int | None = None,
        shutdown_grace_s: float = 10.0,
        backend: str = "llama",
        pool: str = DEFAULT_POOL,
        cache_ram_mb: int | None = None,
        cache_dir: str | None = None,
        cache_disk_mb: int | None = None,
    ) -> None:
        self.agent_id = uuid.uuid4().hex
        self.name = name
        # The pool whose desired state this agent applies and whose requests
        # it serves; one pool per agent.
        self.pool = check_pool_name(pool)
        self.slots = slots
        self.n_threads = n_threads
        self.n_gpu_layers = n_gpu_layers
        self.shutdown_grace_s = shutdown_grace_s
        # "synthetic" emits tokens without a model: for benchmarks only.
        self.backend = backend
        self.status = AgentStatus()
        # The host-memory tier of the KV cache (agents.host_cache): it outlives
        # an engine restarted with the same model and parameters, and is
        # emptied when they change (``_keep_host_cache_for``).
        megabytes = (
            settings.PADDLER_AGENT_CACHE_RAM_MB
            if cache_ram_mb is None
            else cache_ram_mb
        )
        self.host_cache = HostCache(megabytes * 2**20)
        # The disk tier below it (agents.disk_cache), if a directory is set.
        directory = settings.PADDLER_AGENT_CACHE_DIR if cache_dir is None else cache_dir
        if directory and self.host_cache.enabled:
            disk_mb = (
                settings.PADDLER_AGENT_CACHE_DISK_MB
                if cache_disk_mb is None
                else cache_disk_mb
            )
            self.host_cache.attach_disk(
                DiskCache(directory, disk_mb * 2**20, runtime=llama_runtime())
            )
        self._host_cache_for: tuple[Any, ...] | None = None
        self.engine: EngineProtocol | None = None
        self._engine_thread: threading.Thread | None = None
        self._accepting = False
        self._applied_key: str | None = None
        self._lost_redis = False
        # When the agent last joined its pool's group (monotonic): the channel
        # layer drops a member older than its group expiry at the next group
        # message, so the heartbeat joins again well before (``_keep_group``).
        self._group_joined_at = 0.0
        # Whether the running engine's model metadata is in Redis: the
        # heartbeat stores it again if Redis lost it (``publish_status``).
        self._metadata_stored = False
        # The last report Redis took, and its number (``publish_status``).
        self._last_report: dict[str, Any] | None = None
        self._report_seq = 0
        # Inbox -> when its web process was first seen missing (monotonic).
        self._webs_missing_since: dict[str, float] = {}
        # Requests whose output Redis did not take: request id -> inbox.
        self._undelivered: dict[str, str] = {}
        # Requests whose loss the web tier has been told of -> when
        # (monotonic).  Their output still queued for the relay, made before
        # the engine stopped them, is dropped, not pushed after their error.
        self._told_lost: dict[str, float] = {}
        # Inbox -> when its TTL is next due to be set (monotonic).
        self._inbox_expires: dict[str, float] = {}
        self._system_prompt = ""
        # What the running engine was built from: model and parameters.
        self._engine_loaded_with: tuple[Any, ...] | None = None
        self._latest_state: dict[str, Any] | None = None
        self._apply_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._status_changed = asyncio.Event()
        # The relay thread's work: each decode step's outputs, and the refusals
        # the event loop answers requests with.  None is the sentinel that
        # ends the relay at shutdown.
        self._outputs: queue.SimpleQueue[list[Output] | None] = queue.SimpleQueue()
        # One push at a time, the relay thread's or ``send_outputs``'s, and
        # the reading of the replies owed for the last one: the two share
        # the connection, and read its replies in the order they are owed.
        self._push_lock = threading.Lock()
        # The relay's own connection, of a blocking client (``output_loop``).
        self._pushes: PushConnection | None = None
        # The last push, until its replies are read (``_settle``).
        self._unsettled: WrittenPush | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._redis: aioredis.Redis | None = None
        self._layer: BaseChannelLayer | None = None
        self.channel = ""

    def request_stop(self) -> None:
        """Thread- and signal-safe: ask the agent to drain and exit."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def run(self) -> None:
        """Serve until ``request_stop``: connect, take work, drain, leave."""
        await self.connect()
        assert self._redis is not None
        tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._receive_loop(), name="receive"),
        ]
        output_task = asyncio.create_task(self.output_loop(), name="output")
        raw = await self._redis.get(keys.desired_state(self.pool))
        if raw is not None:
            self._schedule_apply(json.loads(raw))
        try:
            await self._stop.wait()
            await self.shutdown()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Everything the engine said before it stopped goes out first.
            self._outputs.put(None)
            await asyncio.gather(output_task, return_exceptions=True)
            await self.disconnect()

    async def connect(self) -> None:
        """Open Redis and the channel layer, and join the agents group."""
        self._loop = asyncio.get_running_loop()
        self._redis = redis_connection.async_client()
        layer = get_channel_layer()
        assert layer is not None, "CHANNEL_LAYERS is not configured"
        self._layer = layer
        self.channel = await layer.new_channel("paddler.agent.")
        await self._join_group()
        logger.info(
            "agent %s (%s) registered in pool %s", self.name, self.agent_id, self.pool
        )

    async def disconnect(self) -> None:
        """Deregister and close Redis; the agent is gone from the registry."""
        assert self._redis is not None
        await self._deregister()
        await self._redis.aclose()
        if self._pushes is not None:
            await asyncio.to_thread(self._close_pushes)

    async def shutdown(self) -> None:
        """Stop taking work, let in-flight requests finish, fail the rest."""
        self._accepting = False
        await self.publish_status()
        deadline = time.monotonic() + self.shutdown_grace_s
        while (
            self.engine is not None
            and self.engine.slots_processing > 0
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.05)
        await self._stop_engine()

    async def _deregister(self) -> None:
        assert self._redis is not None
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(keys.agent_status(self.agent_id))
                pipe.delete(keys.agent_slots(self.agent_id))
                pipe.delete(keys.agent_metadata(self.agent_id))
                pipe.srem(keys.agents_set(), self.agent_id)
                registry.announce_gone(pipe, self.agent_id)
                await pipe.execute()
        except Exception:
            logger.warning("could not deregister from Redis", exc_info=True)
        if self._layer is not None:
            try:
                await self._layer.group_discard(
                    keys.agents_group(self.pool), self.channel
                )
            except Exception:
                logger.debug("could not leave the agents group", exc_info=True)

    def engine_issue(self) -> dict[str, Any] | None:
        """The watchdog's issue with the running engine, if any (see
        ``agents.status.engine_issue``); none while the agent takes no work."""
        engine, thread = self.engine, self._engine_thread
        if engine is None or thread is None or not self._accepting:
            return None
        return engine_issue(engine, thread)

    def snapshot(self) -> dict[str, Any]:
        engine_issue = self.engine_issue()
        healthy = engine_issue is None
        slots_total = self.slots if self._accepting and self.engine and healthy else 0
        issues = self.status.issues if healthy else [*self.status.issues, engine_issue]
        return {
            "id": self.agent_id,
            "name": self.name,
            "pool": self.pool,
            "channel": self.channel,
            "slots_total": slots_total,
            "desired_slots_total": self.slots,
            "slots_processing": self.engine.slots_processing if self.engine else 0,
            "slots": self.engine.slot_states() if self.engine else [],
            "model_path": self.status.model_path,
            "download_current": self.status.download.current,
            "download_total": self.status.download.total,
            "download_filename": self.status.download.filename,
            "download_indeterminate": self.status.download.indeterminate,
            "issues": issues,
            "state_application_status": self.status.state_application_status,
            "uses_chat_template_override": self.status.uses_chat_template_override,
            # Beyond Paddler's fields: whether requests with images can come
            # here (a vision projection is loaded), for routing and the panel.
            "serves_images": bool(
                self._accepting and self.engine and self.engine.serves_images
            ),
            # Beyond Paddler's fields: the host tier, for routing and the panel.
            "host_cache": self.host_cache.report(),
        }

    async def publish_status(self) -> None:
        """Report to the registry: the whole report when it changed since the
        last one Redis took, else a heartbeat that only renews its TTL (the
        web processes keep the report they have; ``registry.publish_status``)."""
        assert self._redis is not None
        snapshot = self.snapshot()
        changed = snapshot != self._last_report
        seq = self._report_seq + 1 if changed else self._report_seq
        written = await registry.publish_status(
            self._redis,
            agent_id=self.agent_id,
            report={**snapshot, "seq": seq},
            changed=changed,
            ttl_ms=settings.PADDLER_AGENT_TTL_MS,
        )
        # A report before this one that Redis took: the agent is not new to
        # it (after a failed heartbeat there is none, and the heartbeat loop
        # rejoins anyway).
        reported = self._last_report is not None
        # Only once Redis took it: a report lost with a failed write goes out
        # whole at the next heartbeat.
        self._last_report, self._report_seq = snapshot, seq
        if reported and not written.known:
            # Redis forgot the agent without a command failing (it restarted
            # empty behind a command the client retried, or the report lapsed
            # after a late heartbeat): its group membership may be gone too,
            # and with it the desired state's changes.  The heartbeat loop
            # rejoins, as after a heartbeat that failed.
            self._lost_redis = True
            return
        engine = self.engine
        if not written.metadata_held and engine is not None and self._metadata_stored:
            # Redis lost what this engine stored (the key lapsed): the model's
            # page and the management API read it from there.
            await self._store_metadata(engine)

    def _mark_changed(self) -> None:
        self._status_changed.set()

    async def _heartbeat_loop(self) -> None:
        interval = min(1.0, settings.PADDLER_AGENT_TTL_MS / 3000)
        backoff = 0.1
        while True:
            try:
                await self.publish_status()
                if self._lost_redis:
                    # Redis came back (maybe empty), or forgot this agent
                    # (``publish_status``): join the group again.
                    await self._rejoin()
                    self._lost_redis = False
                else:
                    await self._keep_group()
                await self._deliver_lost()
                backoff = 0.1
            except Exception:
                self._lost_redis = True
                # The Redis that answers next may be another (a failover) or
                # empty: the next report goes out whole.
                self._last_report = None
                # Redis is away: keep trying; the registry drops us meanwhile.
                logger.warning("heartbeat failed; retrying in %.1fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            try:
                await self._cancel_orphans()
            except Exception:
                logger.warning("checking web processes failed", exc_info=True)
            self._restart_dead_engine()
            self._status_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._status_changed.wait()

    async def _cancel_orphans(self) -> None:
        """Stop generating for web processes that died mid-stream.

        Nobody reads their output any more, and their slots would stay busy
        until max_tokens; the web process's claims lapse by themselves.
        """
        engine = self.engine
        if engine is None:
            return
        in_flight = engine.destinations()
        inboxes = sorted(set(in_flight.values()))
        if not inboxes:
            return
        assert self._redis is not None
        async with self._redis.pipeline(transaction=False) as pipe:
            for inbox in inboxes:
                pipe.exists(keys.web_alive_for_inbox(inbox))
            flags = await pipe.execute()
        # Dead only once missing for longer than a web process's heartbeat
        # lives: a Redis restart empties Redis for a moment, and the web
        # process writes its key again within a second of Redis coming back.
        # Counting checks instead of time cancelled the requests of a live
        # web process when two checks ran close together right after a
        # restart (each slot change wakes this loop).
        now = time.monotonic()
        missing = {
            inbox for inbox, alive in zip(inboxes, flags, strict=True) if not alive
        }
        self._webs_missing_since = {
            inbox: self._webs_missing_since.get(inbox, now) for inbox in missing
        }
        dead = {
            inbox
            for inbox, since in self._webs_missing_since.items()
            if now - since >= WEB_GONE_AFTER_S
        }
        if dead:
            # Nobody reads these lists again: what is pushed to them before
            # the cancellations land goes with them (see INBOX_TTL_S).
            async with self._redis.pipeline(transaction=False) as pipe:
                for inbox in dead:
                    pipe.expire(inbox, INBOX_TTL_S)
                await pipe.execute()
        for request_id, inbox in in_flight.items():
            if inbox in dead:
                logger.warning(
                    "request %s: its web process is gone; cancelling", request_id
                )
                engine.cancel(request_id)

    def _restart_dead_engine(self) -> None:
        """Load the engine again when its loop ended: the agent heals itself
        instead of waiting for an operator to notice the issue."""
        thread = self._engine_thread
        if (
            thread is not None
            and not thread.is_alive()
            and self._accepting
            and self._latest_state is not None
            and not self._apply_lock.locked()
        ):
            logger.error("the engine loop ended; loading the model again")
            self._schedule_apply(self._latest_state)

    async def _join_group(self) -> None:
        assert self._layer is not None
        await self._layer.group_add(keys.agents_group(self.pool), self.channel)
        self._group_joined_at = time.monotonic()

    async def _keep_group(self) -> None:
        """Join the pool's group again before the channel layer's group expiry
        (a day by default) drops the agent from it: a group message (a new
        desired state) would no longer reach an agent that has run that long."""
        assert self._layer is not None
        expiry = float(getattr(self._layer, "group_expiry", 86400))
        if time.monotonic() - self._group_joined_at >= expiry / 4:
            await self._join_group()

    async def _rejoin(self) -> None:
        await self._join_group()
        if self.engine is not None and self._metadata_stored:
            await self._store_metadata(self.engine)
        logger.info("agent %s registered again after losing Redis", self.name)

    async def _receive_loop(self) -> None:
        assert self._layer is not None
        while True:
            try:
                message = await self._layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The heartbeat loop rejoins the group once Redis answers.
                self._lost_redis = True
                logger.warning("channel layer receive failed; retrying")
                await asyncio.sleep(0.5)
                continue
            try:
                self.handle_message(message)
            except Exception as error:
                logger.exception("could not handle %s", message.get("type"))
                self._fail_request(message, error)

    def _fail_request(self, message: AgentMessage, error: Exception) -> None:
        """A request we could not hand to the engine ends with an error item,
        instead of waiting for its 504."""
        request_id, reply_to = message.get("request_id"), message.get("reply_to")
        if message.get("type") != "inference.request" or not (
            isinstance(request_id, str) and isinstance(reply_to, str)
        ):
            return
        self._outputs.put(
            [refusal(request_id, reply_to, 500, f"the agent failed: {error}")]
        )

    def handle_message(self, message: AgentMessage) -> None:
        # The channel layer carries the web tier's typed events as plain JSON;
        # a request's params were built and validated there, and are read as
        # they are.  A message that is not what its type says fails here and
        # ``_fail_request`` answers it.
        if message["type"] == "inference.request":
            self._handle_request(message)
        elif message["type"] == "inference.cancel":
            if self.engine is not None:
                self.engine.cancel(message["request_id"])
                # The engine frees the slot at its next step: report it then,
                # not at the next heartbeat.
                asyncio.get_running_loop().call_later(0.1, self._mark_changed)
        elif message["type"] == "desired_state.changed":
            self._schedule_apply(message["state"])

    def _handle_request(self, message: InferenceRequestEvent) -> None:
        if self.engine is None or not self._accepting:
            self._outputs.put(
                [
                    refusal(
                        message["request_id"],
                        message["reply_to"],
                        503,
                        "agent has no model loaded",
                    )
                ]
            )
            return
        # A web process that just sent a request lives, whatever Redis says.
        self._webs_missing_since.pop(message["reply_to"], None)
        job = job_from_request(message, system_prompt=self._system_prompt)
        if isinstance(job, Output):
            self._outputs.put([job])
            return
        if isinstance(job, EmbeddingJob):
            self.engine.submit_embeddings(job)
        else:
            self.engine.submit(job)
        self._mark_changed()

    def _on_engine_output(self, outputs: list[Output]) -> None:
        """Called from the engine thread once per step: straight to the relay
        thread, without waking the event loop."""
        self._outputs.put(outputs)

    async def output_loop(self) -> None:
        """Relay the engine's output to Redis until the ``None`` sentinel.

        The relay is a thread of its own with a blocking Redis connection,
        not a task of the event loop: a push is one write, where the event
        loop took a wake-up from the engine thread, a few turns of the loop
        and the asyncio client's own machinery for each step (and a
        heartbeat or a request being taken could hold the step's output
        back).  It does not wait for Redis's reply: it reads it before the
        next push (``_settle``).  Cancelling this coroutine ends the thread
        once it has pushed what it holds and read every reply owed.
        """
        loop = asyncio.get_running_loop()
        ended = loop.create_future()

        def end() -> None:
            if not ended.done():
                ended.set_result(None)

        def relay() -> None:
            name_os_thread("paddler-relay")
            try:
                self._relay()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop closed
                    loop.call_soon_threadsafe(end)

        self._open_pushes()
        threading.Thread(target=relay, name="paddler-relay", daemon=True).start()
        try:
            await asyncio.shield(ended)
        except asyncio.CancelledError:
            self._outputs.put(None)
            raise

    def _open_pushes(self) -> None:
        if self._pushes is None:
            self._pushes = PushConnection(
                redis_connection.sync_client(settings.REDIS_URL)
            )

    def _relay(self) -> None:
        finished = False
        while not finished:
            # ``_unsettled`` is read without the lock: should ``send_outputs``
            # settle it meanwhile, the read below finds nothing owed.
            idle_s = REPLY_READ_IDLE_S if self._unsettled is not None else None
            try:
                first = self._outputs.get(timeout=idle_s)
            except queue.Empty:
                with self._push_lock:
                    self._settle()
                continue
            if first is None:
                break
            outputs = list(first)
            # Steps that came while the last push was in flight go out
            # together: one push for all of them, never a wait for more.
            while True:
                try:
                    more = self._outputs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    finished = True
                    break
                outputs.extend(more)
            self._push(outputs)
        # Nothing pushed is left unread: a refusal still stops its requests.
        with self._push_lock:
            self._settle()

    async def send_outputs(self, outputs: list[Output]) -> None:
        """Push ``outputs`` to Redis now, from the event loop, and read the
        reply (the relay thread pushes the engine's; see ``_push``): once
        this returns, ``_undelivered`` says whether Redis took them."""
        self._open_pushes()
        await asyncio.to_thread(self._push, outputs, settle=True)

    def _push(self, outputs: list[Output], *, settle: bool = False) -> None:
        """Push ``outputs`` to Redis, one batch per inbox.  Should Redis not
        take them, their requests stop and end with an error at the next
        delivery (see ``_lose``); the relay learns it when it reads the
        reply, before its next push, or right away with ``settle``."""
        with self._push_lock:
            any_final = self._push_locked(outputs)
            if settle:
                self._settle()
        # As soon as written: Redis taking the push or not, the request
        # ended (with an error when it did not) and its slot is free.
        if any_final and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed
                self._loop.call_soon_threadsafe(self._mark_changed)

    def _push_locked(self, outputs: list[Output]) -> bool:
        assert self._pushes is not None
        # The last push's replies first: the requests it lost end with an
        # error in this one, and a refused EXPIRE is sent again.
        self._settle()
        if self._told_lost:
            outputs = self._without_told_lost(outputs)
        lost = dict(self._undelivered)
        batches = output_batches(
            outputs, agent_id=self.agent_id, agent_name=self.name, lost=lost
        )
        any_final = any(
            output.final for output in outputs if output.request_id not in lost
        )
        now = time.monotonic()
        missing = self._webs_missing_since
        expiring = [
            destination
            for destination in batches
            if destination in missing
            or self._inbox_expires.get(destination, 0.0) <= now
        ]
        # Once per decode step as a rule: one destination, one RPUSH.
        commands: list[tuple[Any, ...]] = [
            ("RPUSH", destination, json.dumps(batch))
            for destination, batch in batches.items()
        ]
        commands += [("EXPIRE", destination, INBOX_TTL_S) for destination in expiring]
        if not commands:
            return any_final
        try:
            self._pushes.write(commands)
        except Exception:
            logger.warning("could not deliver output", exc_info=True)
            self._lose(outputs)
        else:
            self._unsettled = WrittenPush(outputs, list(lost), expiring, now)
        return any_final

    def _settle(self) -> None:
        """Read Redis's replies to the last push, under ``_push_lock``.

        Redis refused a command of it, or the connection failed before all
        its replies came: its output may not have reached the inboxes, and
        its requests stop as if the write had failed (``_lose``).  Only a
        push that Redis took ends the loss of the requests whose error it
        carried, and renews the TTLs it set: were they renewed when written,
        an EXPIRE that was refused would not be sent again for
        INBOX_TTL_RENEW_S.
        """
        push, self._unsettled = self._unsettled, None
        if push is None:
            return
        assert self._pushes is not None
        try:
            self._pushes.read_owed()
        except Exception:
            logger.warning("could not deliver output", exc_info=True)
            self._lose(push.outputs)
            return
        for request_id in push.lost:
            self._undelivered.pop(request_id, None)
            self._told_lost[request_id] = push.written_at
        for destination in push.expiring:
            self._inbox_expires[destination] = push.written_at + INBOX_TTL_RENEW_S

    def _without_told_lost(self, outputs: list[Output]) -> list[Output]:
        """``outputs`` but those of requests whose loss was told (and past
        TOLD_LOST_KEEP_S, the requests are forgotten)."""
        since = time.monotonic() - TOLD_LOST_KEEP_S
        self._told_lost = {
            request_id: told
            for request_id, told in self._told_lost.items()
            if told > since
        }
        return [
            output for output in outputs if output.request_id not in self._told_lost
        ]

    def _close_pushes(self) -> None:
        """Read what Redis owes, give the connection back, close its client."""
        with self._push_lock:
            self._settle()
            if self._pushes is not None:
                self._pushes.close()
                self._pushes = None

    def _lose(self, outputs: list[Output]) -> None:
        """Stop the requests whose output could not be delivered; their error
        goes out with the next delivery (see ``_deliver_lost``)."""
        for output in outputs:
            if output.request_id in self._undelivered:
                continue
            self._undelivered[output.request_id] = output.destination
            if not output.final and self.engine is not None:
                self.engine.cancel(output.request_id)

    async def _deliver_lost(self) -> None:
        """Tell the web tier about lost output as soon as Redis answers again."""
        if self._undelivered:
            await self.send_outputs([])

    def _schedule_apply(self, state: dict[str, Any]) -> None:
        self._latest_state = state
        asyncio.get_running_loop().create_task(self._apply_latest())

    async def _apply_latest(self) -> None:
        async with self._apply_lock:
            state_json = self._latest_state
            if state_json is None:
                return
            try:
                await self.apply_state(state_json)
            except Exception:
                logger.exception("applying the desired state failed")
                self.status.state_application_status = "AttemptedAndRetrying"
                self._mark_changed()
                # The status promises another attempt: it comes after a
                # pause, unless a newer state has come meanwhile (that one's
                # attempt is under way already).
                asyncio.get_running_loop().call_later(
                    APPLY_RETRY_S, self._retry_apply, state_json
                )

    def _retry_apply(self, state_json: dict[str, Any]) -> None:
        if self._latest_state is state_json:
            self._schedule_apply(state_json)

    async def apply_state(self, state_json: dict[str, Any]) -> None:
        """Serve what ``state_json`` asks for; its issues go to the status."""
        fingerprint = json.dumps(state_json, sort_keys=True)
        # An engine whose loop ended is rebuilt even for the same state.
        healthy = self.engine is not None and self.engine_issue() is None
        if fingerprint == self._applied_key and healthy:
            return
        checked = self._check_state(state_json)
        if checked is None:
            return
        state, template = checked
        self._system_prompt = state.default_system_prompt
        loaded_with = (
            state.model,
            state.multimodal_projection,
            state.inference_parameters,
        )
        if (
            healthy
            and self.engine is not None
            and loaded_with == self._engine_loaded_with
        ):
            await self._change_template(self.engine, template, fingerprint)
            return
        await self._drain_engine()
        self.keep_host_cache_for(loaded_with)
        self.status.model_path = None
        self.status.uses_chat_template_override = template is not None
        if self.backend == "synthetic":
            self._start_engine(
                SyntheticEngine(
                    slots=self.slots,
                    on_output=self._on_engine_output,
                    step_s=step_seconds_from_env(),
                )
            )
            self._report_serving(fingerprint, loaded_with, issues=[])
            return
        if state.model.kind == "None":
            self._applied_key = fingerprint
            self._set_issues([], "Applied")
            return
        path = await self._resolve_model(state)
        if path is None:
            return
        found, projection_path = await self._resolve_projection(state)
        if not found:
            return
        engine = await self._load_engine(path, state, template, projection_path)
        if engine is None:
            return
        self._start_engine(engine)
        await asyncio.to_thread(engine.ready.wait)
        await self._store_metadata(engine)
        self.status.model_path = path
        self._report_serving(
            fingerprint, loaded_with, issues=self._template_issues(engine)
        )
        logger.info("agent %s serves %s with %d slots", self.name, path, self.slots)

    def keep_host_cache_for(self, loaded_with: tuple[Any, ...]) -> None:
        """Empty the host tier when the engine about to load has another model
        or parameters than the states it holds were saved under.

        Its entries are keyed by model and context shape anyway (a foreign
        one is never restored); emptying frees their memory for the new
        model's states.
        """
        if loaded_with != self._host_cache_for:
            self.host_cache.clear()
            self._host_cache_for = loaded_with

    def _check_state(
        self, state_json: dict[str, Any]
    ) -> tuple[DesiredState, str | None] | None:
        """The desired state and the template override it sets, or None (and
        the issue reported) when it cannot be applied."""
        try:
            state = DesiredState.from_json(state_json)
        except DesiredStateError as error:
            self._set_issues(
                [{"DesiredStateIsInvalid": str(error)}], "AttemptedAndNotAppliable"
            )
            return None
        template = (
            state.chat_template_override if state.use_chat_template_override else None
        )
        if template is not None:
            try:
                compile_template(template)
            except ChatTemplateError as error:
                model_path = {"model_path": paddler_model_path(state.model)}
                self._set_issues(
                    [
                        {
                            "ChatTemplateDoesNotCompile": {
                                "error": str(error),
                                "model_path": model_path,
                                "template_content": template,
                            }
                        }
                    ],
                    "AttemptedAndNotAppliable",
                )
                return None
        return state, template

    async def _change_template(
        self, engine: EngineProtocol, template: str | None, fingerprint: str
    ) -> None:
        """Only the template or the system prompt changed: the model, its
        slots and their caches stay, and no request is drained."""
        engine.use_chat_template(template)
        self.status.uses_chat_template_override = template is not None
        await self._store_metadata(engine)
        self._applied_key = fingerprint
        self._set_issues(self._template_issues(engine), "Applied")
        logger.info("agent %s applied a new template or system prompt", self.name)

    async def _drain_engine(self) -> None:
        """Stop taking work and let what is in flight finish, then stop the
        engine, before swapping in another."""
        self._accepting = False
        self.status.state_application_status = "Fresh"
        await self.publish_status()
        while self.engine is not None and self.engine.slots_processing > 0:
            await asyncio.sleep(0.05)
        await self._stop_engine()

    async def _resolve_model(self, state: DesiredState) -> str | None:
        """The local path of the state's model (downloaded if need be), or None
        (and the issue reported) when it cannot be had."""
        try:
            return await resolve_model_path(
                state.model, self.status.download, self._mark_changed
            )
        except ModelSourceError as error:
            self._set_issues([error.issue], "AttemptedAndNotAppliable")
            return None

    async def _resolve_projection(self, state: DesiredState) -> tuple[bool, str | None]:
        """The local path of the state's multimodal projection (downloaded
        like the model, with its progress), None when the state names none;
        (False, None) with the issue reported when it cannot be had.

        Issues as Paddler names them: a local file that does not exist is
        ``MultimodalProjectionCannotBeLoaded`` (as one libmtmd refuses); a
        download that fails is the model's issue for it (for example
        ``HuggingFaceModelDoesNotExist``), naming the projection.
        """
        source = state.multimodal_projection
        if source.kind == "None":
            return True, None
        try:
            path = await resolve_model_path(
                source, self.status.download, self._mark_changed
            )
        except ModelSourceError as error:
            issue = error.issue
            if isinstance(issue, dict) and "ModelFileDoesNotExist" in issue:
                issue = {
                    "MultimodalProjectionCannotBeLoaded": issue["ModelFileDoesNotExist"]
                }
            self._set_issues([issue], "AttemptedAndNotAppliable")
            return False, None
        return True, path

    async def _load_engine(
        self,
        path: str,
        state: DesiredState,
        template: str | None,
        projection_path: str | None = None,
    ) -> Engine | None:
        """The model at ``path`` (and its projection) loaded into a new engine
        (not yet running), or None (and the issue reported) when llama.cpp
        or libmtmd cannot load it."""
        try:
            return await asyncio.to_thread(
                Engine,
                model_path=path,
                slots=self.slots,
                parameters=state.inference_parameters,
                chat_template_override=template,
                on_output=self._on_engine_output,
                n_threads=self.n_threads,
                n_gpu_layers=self.n_gpu_layers,
                host_cache=self.host_cache,
                projection_path=projection_path,
            )
        except ProjectionLoadFailed as error:
            logger.warning(
                "agent %s cannot load the projection %s: %s",
                self.name,
                projection_path,
                error,
            )
            source = paddler_model_path(state.multimodal_projection)
            self._set_issues(
                [{"MultimodalProjectionCannotBeLoaded": {"model_path": source}}],
                "AttemptedAndNotAppliable",
            )
            return None
        except ModelLoadError as error:
            logger.warning("agent %s cannot load %s: %s", self.name, path, error)
            self._set_issues(
                [{"ModelCannotBeLoaded": {"model_path": path}}],
                "AttemptedAndNotAppliable",
            )
            return None

    def _report_serving(
        self, fingerprint: str, loaded_with: tuple[Any, ...], *, issues: list[Any]
    ) -> None:
        """The started engine takes work from now on."""
        self._applied_key = fingerprint
        self._engine_loaded_with = loaded_with
        self._accepting = True
        self._set_issues(issues, "Applied")

    def _template_issues(self, engine: EngineProtocol) -> list[Any]:
        if self.backend != "synthetic" and engine.chat_template is None:
            path = self.status.model_path or ""
            return [{"UnableToFindChatTemplate": {"model_path": path}}]
        return []

    def _start_engine(self, engine: EngineProtocol) -> None:
        self.engine = engine
        self._engine_thread = threading.Thread(
            target=engine.run, name="paddler-engine", daemon=True
        )
        self._engine_thread.start()

    async def _stop_engine(self) -> None:
        engine, thread = self.engine, self._engine_thread
        self.engine = None
        self._metadata_stored = False
        self._engine_loaded_with = None
        self._engine_thread = None
        if engine is None:
            return
        engine.stop()
        if thread is not None:
            await asyncio.to_thread(thread.join)
        await asyncio.to_thread(engine.close)
        if self.host_cache.disk is not None:
            # States saved last are still being written: let them land, so
            # that the next start (or the next model) finds them.
            await asyncio.to_thread(self.host_cache.disk.flush, 10.0)

    async def _store_metadata(self, engine: EngineProtocol) -> None:
        assert self._redis is not None
        template = engine.chat_template.source if engine.chat_template else None
        offer = model_offer(
            engine.metadata,
            template_in_use=template,
            uses_override=self.status.uses_chat_template_override,
            bos_token=engine.bos_token,
            eos_token=engine.eos_token,
        )
        payload = {
            "metadata": engine.metadata,
            "chat_template": template,
            # What the panel's model page shows (``balancer.model_offer``).
            "offer": offer.as_json(),
        }
        await self._redis.set(
            keys.agent_metadata(self.agent_id),
            json.dumps(payload),
            px=settings.PADDLER_AGENT_TTL_MS,
        )
        self._metadata_stored = True

    def _set_issues(self, issues: list[Any], status: str) -> None:
        self.status.issues = issues
        self.status.state_application_status = status
        self._mark_changed()
