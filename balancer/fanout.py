"""An embedding batch, split into chunks that agents embed in parallel.

Framework-free: the dispatcher places each chunk as a request of its own (its
own slot claim, its own request-log record); this module decides the chunks
and merges their outputs into one stream, with the batch's own request id and
one final ``{"Embedding": "Done"}``.  Documents come back in the order their
chunks produce them, not in input order.

At most ``max_in_flight`` chunks are placed at once (one per agent: an agent
embeds one request at a time, so more would only wait there, or fill the
buffer that every replica shares); the next chunk is placed when one ends.
Chunks are placed one after another, never two at once, so each placement
knows where the previous ones landed and can prefer another agent.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

from balancer.contract import (
    EmbeddingDocument,
    EmbeddingDone,
    OutputItem,
    Usage,
    embedding_done_item,
    error_item,
    read_output,
)

Document = EmbeddingDocument


def chunk_size(documents: int, *, largest: int, agents: int) -> int:
    """Documents per chunk: at most ``largest``, and small enough that the
    batch spreads over every agent present (with none yet, ``largest``)."""
    spread = math.ceil(documents / agents) if agents > 0 else documents
    return max(1, min(largest, spread))


def split_batch(documents: list[Document], size: int) -> list[list[Document]]:
    return [documents[start : start + size] for start in range(0, len(documents), size)]


class ChunkStream(Protocol):
    """What the merge needs of a chunk's request (``dispatch.Stream``)."""

    request_id: str
    agent_id: str
    agent_name: str
    usage: Usage

    def batches(self) -> AsyncGenerator[list[OutputItem]]: ...

    async def close(self) -> None: ...


# Places a chunk, preferring agents other than those it is told already serve
# the batch (asked again whenever the placement retries).  Returns the chunk's
# stream, or, when it could not be placed (buffer full, waited too long), the
# error item to end the batch with.
OpenChunk = Callable[
    [list[Document], Callable[[], Collection[str]]],
    Awaitable["ChunkStream | OutputItem"],
]


def _is_done(item: OutputItem) -> bool:
    return isinstance(read_output(item), EmbeddingDone)


@dataclass(eq=False)
class _Chunk:
    stream: ChunkStream
    batches: AsyncGenerator[list[OutputItem]]


class FanOut:
    """The merged output of a batch's chunks.

    ``first`` is already placed: the caller places it before answering, so
    that a batch refused at once (503, 504) gets that HTTP status.
    """

    def __init__(
        self,
        request_id: str,
        *,
        first: ChunkStream,
        rest: list[list[Document]],
        open_chunk: OpenChunk,
        max_in_flight: int,
    ) -> None:
        self.request_id = request_id
        self._waiting = deque(rest)
        self._open_chunk = open_chunk
        self._max_in_flight = max(1, max_in_flight)
        # Chunks placed and not yet ended.
        self._running = [_Chunk(first, first.batches())]
        # The read waiting for each running chunk's next batch.  A chunk whose
        # batch the client has not taken yet has none: the merge reads no
        # further ahead than the client, so a slow client slows the agents
        # instead of filling this process's memory.
        self._reads: dict[asyncio.Future[list[OutputItem]], _Chunk] = {}
        self._opening: asyncio.Future[ChunkStream | OutputItem] | None = None
        self._opening_documents: list[Document] = []
        # A chunk could not be placed while others of the batch ran: it waits
        # for one of them to end, and the slot that frees, before it tries
        # again (buffer full and 503 is immediate: no retrying in a loop).
        self._held_back = False
        self._closed = False
        # Tokens the agents read, over every chunk that is done.
        self.prompt_tokens = 0

    def serving(self) -> set[str]:
        """The agents that hold one of this batch's chunks now."""
        return {c.stream.agent_id for c in self._running if c.stream.agent_id}

    async def items(self) -> AsyncGenerator[OutputItem]:
        batches = self.agent_batches()
        try:
            async for _, batch in batches:
                for item in batch:
                    yield item
        finally:
            await batches.aclose()

    async def agent_batches(self) -> AsyncGenerator[tuple[str, list[OutputItem]]]:
        """Each batch of output with the name of the agent that produced it.

        Ends with the batch's one ``{"Embedding": "Done"}`` once every chunk
        is done, or with the first chunk failure (an error item), after which
        the other chunks are cancelled and their slots freed.  A chunk that
        cannot be placed (buffer full, waited too long) is a failure only when
        no other chunk of the batch runs.  Per-document errors
        (``{"Embedding": {"Error": ...}}``) are relayed like vectors.
        """
        last_agent = ""
        try:
            for chunk in self._running:
                self._read(chunk)
            while self._reads or self._waiting or self._opening is not None:
                self._open_next()
                pending: set[asyncio.Future[Any]] = set(self._reads)
                if self._opening is not None:
                    pending.add(self._opening)
                done, _ = await asyncio.wait(
                    pending, return_when=asyncio.FIRST_COMPLETED
                )
                if self._opening is not None and self._opening in done:
                    opened = self._opening.result()
                    self._opening = None
                    if not isinstance(opened, dict):
                        chunk = _Chunk(opened, opened.batches())
                        self._running.append(chunk)
                        self._read(chunk)
                    elif self._running:
                        self._waiting.appendleft(self._opening_documents)
                        self._held_back = True
                    else:
                        # Nothing of the batch runs, so nothing of it would
                        # free a slot for this chunk: the batch fails.
                        yield "", [self._own(opened)]
                        return
                for read in done & set(self._reads):
                    chunk = self._reads.pop(read)
                    name = chunk.stream.agent_name
                    try:
                        batch = read.result()
                    except StopAsyncIteration:
                        batch = [self._failure(chunk.stream)]
                    relayed: list[OutputItem] = []
                    ended = False
                    for item in batch:
                        if item["final"] and _is_done(item):
                            ended = True  # the batch's own Done comes last
                            continue
                        relayed.append(self._own(item))
                        if item["final"]:
                            yield name, relayed
                            return
                    if ended:
                        self.prompt_tokens += int(
                            chunk.stream.usage.get("prompt_tokens", 0)
                        )
                        # Free its slot now: the next chunk may need it.
                        await self._end(chunk)
                        last_agent = name
                    if relayed:
                        yield name, relayed
                    if not ended:
                        self._read(chunk)
            yield last_agent, [embedding_done_item(self.request_id)]
        finally:
            await self.close()

    def _read(self, chunk: _Chunk) -> None:
        self._reads[asyncio.ensure_future(anext(chunk.batches))] = chunk

    def _open_next(self) -> None:
        in_flight = len(self._running) + (self._opening is not None)
        if (
            self._opening is None
            and self._waiting
            and not self._held_back
            and in_flight < self._max_in_flight
        ):
            self._opening_documents = self._waiting.popleft()
            self._opening = asyncio.ensure_future(
                self._open_chunk(self._opening_documents, self.serving)
            )

    def _own(self, item: OutputItem) -> OutputItem:
        """The item under the batch's request id, not its chunk's."""
        item["request_id"] = self.request_id
        return item

    def _failure(self, stream: ChunkStream) -> OutputItem:
        return error_item(
            self.request_id, 502, f"chunk {stream.request_id} ended without a result"
        )

    async def _end(self, chunk: _Chunk) -> None:
        self._running.remove(chunk)
        self._held_back = False
        # Runs the generator's ``finally``, which releases the chunk's slot
        # (and cancels it on its agent if it is unfinished); ``close`` also
        # covers a generator that never started.
        await chunk.batches.aclose()
        await chunk.stream.close()

    async def close(self) -> None:
        """Cancel every chunk still running (the client went away, or one
        failed) and free their slots; a chunk being placed is given up."""
        if self._closed:
            return
        self._closed = True
        self._waiting.clear()
        tasks: list[asyncio.Future[Any]] = list(self._reads)
        if self._opening is not None:
            tasks.append(self._opening)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled():
                task.exception()  # retrieved: a failure here is moot now
        self._reads.clear()
        opening, self._opening = self._opening, None
        if (
            opening is not None
            and not opening.cancelled()
            and opening.exception() is None
        ):
            # Placed just before the cancellation could stop it.
            opened = opening.result()
            if not isinstance(opened, dict):
                self._running.append(_Chunk(opened, opened.batches()))
        for chunk in list(self._running):
            await self._end(chunk)
