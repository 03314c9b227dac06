"""The work a web process does in the background, beside its requests.

Each function is one loop that runs as long as the process's ``Dispatcher``:
reading the inbox agents push output to, renewing the slot claims of running
requests, telling agents this process lives, cancelling streams nobody reads,
and putting the desired state back into a Redis that lost it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any, cast

import redis.asyncio as aioredis
from asgiref.sync import sync_to_async

from balancer import keys, redis_connection, registry
from balancer.events import OutputBatch, expand_item
from balancer.services import desired_state_revision_current, pool_names

if TYPE_CHECKING:
    from balancer.dispatch import Dispatcher

logger = logging.getLogger(__name__)

# The most batches one read of the inbox takes.
INBOX_READ_COUNT = 256
# How long a read of the inbox blocks in Redis when nothing comes: an idle
# process wakes this often for it (every second, before).
INBOX_BLOCK_S = 10
# A read that has not come back long after that is a lost connection.
INBOX_READ_TIMEOUT_S = 30.0
# A claim outlives a silent web replica by at most this long.
CLAIM_LEASE_MS = 15_000
# A stream whose consumer has not read for this long is cancelled.
ABANDONED_S = 5.0
# A web process silent this long is taken for dead by the agents (they wait
# as long again: agents.worker.WEB_GONE_AFTER_S).
WEB_HEARTBEAT_TTL_MS = 4_000
# How often a web process checks that Redis still holds the desired state.
DESIRED_STATE_CHECK_S = 2.0


async def read_inbox(dispatcher: Dispatcher) -> None:
    """Hand each item in the process's inbox to the stream it belongs to.

    One connection of its own, held for good and spoken to directly: BLMPOP
    blocks it while it waits, and at one stream every token is a read of its
    own, where the client's per-command work (taking a connection from the
    pool and giving it back, the retry wrapper) was a fifth of the web
    process's CPU per token.  A read that fails drops the connection; the
    next read takes a new one.
    """
    # No socket timeout for the client's own use: redis-py would send each
    # command from a task of its own, to time it out; the read below has its
    # timeout, and a write of a few bytes on a live connection does not wait.
    client = redis_connection.async_client(socket_timeout=None)
    pool = client.connection_pool
    connection: Any = None
    read: Any = None
    while True:
        try:
            if connection is None:
                connection = await pool.get_connection()  # type: ignore[no-untyped-call]
                # Every batch waiting, up to INBOX_READ_COUNT, in one round
                # trip: when the agents push faster than this process reads,
                # it reads them in fewer commands, not one command a batch.
                # The same command every time: packed once.
                read = connection.pack_command(
                    "BLMPOP",
                    INBOX_BLOCK_S,
                    1,
                    dispatcher.inbox,
                    "LEFT",
                    "COUNT",
                    INBOX_READ_COUNT,
                )
            await connection.send_packed_command(read, check_health=False)
            popped = await connection.read_response(timeout=INBOX_READ_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("reading the inbox failed; retrying", exc_info=True)
            if connection is not None:
                await connection.disconnect()
                await pool.release(connection)
                connection = None
            await asyncio.sleep(0.5)
            continue
        if popped is None:
            continue
        # [the list's name, [the batches, oldest first]]
        for raw in cast(list[bytes], popped[1]):
            deliver_batch(dispatcher, json.loads(raw))


def deliver_batch(dispatcher: Dispatcher, batch: OutputBatch) -> None:
    """Put each item of an agent's batch on the queue of its stream."""
    streams = dispatcher.streams
    agent_id = batch["agent_id"]
    for raw in batch["items"]:
        item = expand_item(raw)
        stream = streams.get(item["request_id"])
        # A request moved to another agent (its first one went silent
        # before any output) may still hear from the first, if that one
        # lives on and Redis let its output through later: that output
        # is not this stream's any more, and would double its tokens.
        if stream is not None and stream.agent_id == agent_id:
            stream.queue.put_nowait(item)


async def keep_desired_state(redis: aioredis.Redis) -> None:
    """Put each pool's desired state back into Redis if Redis lost it (a
    restart).

    Agents read it from there when they start; the database stays the
    source of truth.  SET NX: a newer state written meanwhile wins.
    """
    while True:
        try:
            for pool in await sync_to_async(pool_names)():
                if await redis.exists(keys.desired_state(pool)):
                    continue
                revision = await sync_to_async(desired_state_revision_current)(
                    pool=pool
                )
                if revision is not None:
                    state = json.dumps(revision.to_state().to_json())
                    await redis.set(keys.desired_state(pool), state, nx=True)
        except Exception:
            logger.warning("could not check the desired state", exc_info=True)
        await asyncio.sleep(DESIRED_STATE_CHECK_S)


async def reap(dispatcher: Dispatcher) -> None:
    """Cancel streams that nobody reads any more.

    A client that went away before its response started leaves a stream
    whose generator never runs, so no ``finally`` of it ever frees the
    slot; and a consumer that stopped reading holds a slot for nothing.
    Either way the agent is told to stop and the claim is released, and a
    reader that comes back finds an error at the end of its stream.
    """
    while True:
        if not dispatcher.streams:
            # Nothing to reap until a stream is placed: no wake-up a second.
            dispatcher.stream_placed.clear()
            await dispatcher.stream_placed.wait()
        await asyncio.sleep(1.0)
        now = time.monotonic()
        for stream in list(dispatcher.streams.values()):
            if stream.reading or now - stream.last_read_at < ABANDONED_S:
                continue
            logger.warning(
                "request %s: nobody read its output for %.0fs; cancelling",
                stream.request_id,
                now - stream.last_read_at,
            )
            try:
                await dispatcher.finish(stream)
            except Exception:
                logger.warning("cancelling an abandoned stream failed", exc_info=True)
            stream.queue.put_nowait(
                stream.end_with(408, "The client stopped reading its stream")
            )


async def web_heartbeat(redis: aioredis.Redis, web_id: str) -> None:
    """Tell agents this process is alive: they stop generating for the
    streams of a web process that died (see agents.worker)."""
    while True:
        try:
            await redis.set(keys.web_alive(web_id), 1, px=WEB_HEARTBEAT_TTL_MS)
        except Exception:
            logger.warning("web heartbeat failed", exc_info=True)
        await asyncio.sleep(WEB_HEARTBEAT_TTL_MS / 4000)


async def renew_leases(dispatcher: Dispatcher) -> None:
    """Keep the claims of this process's running requests from lapsing."""
    while True:
        await asyncio.sleep(CLAIM_LEASE_MS / 3000)
        claims = {rid: s.agent_id for rid, s in dispatcher.streams.items()}
        try:
            await registry.renew_claims(dispatcher.redis, claims, CLAIM_LEASE_MS)
        except Exception:
            logger.warning("renewing slot claims failed", exc_info=True)
