"""Splitting embedding batches and merging their chunks, without Redis.

The chunks here are stand-ins for ``dispatch.Stream`` whose output the test
feeds; end-to-end fan-out over real agents is in ``test_embedding_fanout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import pytest

from balancer.contract import OutputItem, Usage
from balancer.fanout import Document, FanOut, chunk_size, split_batch


def vector(document_id: str) -> OutputItem:
    return {
        "request_id": "chunk",
        "response": {
            "Embedding": {
                "Embedding": {
                    "embedding": [1.0],
                    "normalization_method": "None",
                    "pooling_type": "Mean",
                    "source_document_id": document_id,
                }
            }
        },
        "error": None,
        "final": False,
        "meta": None,
    }


def done() -> OutputItem:
    return {
        "request_id": "chunk",
        "response": {"Embedding": "Done"},
        "error": None,
        "final": True,
        "meta": None,
    }


def error(code: int, description: str) -> OutputItem:
    return {
        "request_id": "chunk",
        "response": None,
        "error": {"code": code, "description": description},
        "final": True,
        "meta": None,
    }


@dataclass(eq=False)
class FakeChunk:
    """A placed chunk whose output the test sends with ``send``."""

    request_id: str
    agent_id: str
    agent_name: str
    documents: list[Document]
    outputs: asyncio.Queue[list[OutputItem]] = field(default_factory=asyncio.Queue)
    closed: bool = False
    usage: Usage = field(default_factory=Usage)

    def send(self, *items: OutputItem) -> None:
        self.outputs.put_nowait(list(items))

    def finish(self) -> None:
        # As dispatch.Stream does when its Done arrives: 5 tokens a document.
        self.usage = {"prompt_tokens": 5 * len(self.documents)}
        self.send(*(vector(d["id"]) for d in self.documents), done())

    async def batches(self) -> AsyncGenerator[list[OutputItem]]:
        try:
            while True:
                batch = await self.outputs.get()
                yield batch
                if batch[-1]["final"]:
                    return
        finally:
            self.closed = True

    async def close(self) -> None:
        self.closed = True


class Placer:
    """Places chunks on agents in turn, and remembers what it was asked.

    The first ``refusals`` placements fail with ``refusal``.
    """

    def __init__(
        self, agents: list[str], refusal: OutputItem | None = None, refusals: int = 0
    ) -> None:
        self.agents = agents
        self.refusal = refusal
        self.refusals = refusals
        self.placed: list[FakeChunk] = []
        self.avoided: list[set[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    def chunk(self, documents: list[Document]) -> FakeChunk:
        agent = self.agents[len(self.placed) % len(self.agents)]
        placed = FakeChunk(f"chunk-{len(self.placed)}", agent, agent, documents)
        self.placed.append(placed)
        return placed

    async def __call__(
        self, documents: list[Document], avoid: Any
    ) -> FakeChunk | OutputItem:
        self.avoided.append(set(avoid()))
        await self.gate.wait()
        if self.refusal is not None and self.refusals > 0:
            self.refusals -= 1
            return dict(self.refusal)  # type: ignore[return-value]
        return self.chunk(documents)


def document_ids(items: list[OutputItem]) -> list[str]:
    payloads: list[Any] = [item["response"] for item in items]
    return [p["Embedding"]["Embedding"]["source_document_id"] for p in payloads]


def documents(count: int) -> list[Document]:
    return [{"id": str(i), "content": f"document {i}"} for i in range(count)]


def fan_out(placer: Placer, count: int, size: int, in_flight: int) -> FanOut:
    first, *rest = split_batch(documents(count), size)
    return FanOut(
        "batch",
        first=placer.chunk(first),
        rest=rest,
        open_chunk=placer,
        max_in_flight=in_flight,
    )


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


@pytest.mark.parametrize(
    ("documents", "largest", "agents", "expected"),
    [
        (100, 32, 2, 32),  # the setting caps it
        (12, 32, 2, 6),  # a small batch still spreads over both agents
        (12, 32, 5, 3),
        (5, 32, 8, 1),  # never empty chunks
        (12, 32, 0, 12),  # no agent yet: one chunk of up to the setting
        (100, 32, 0, 32),
        (1, 1, 1, 1),
    ],
)
def test_chunk_size_spreads_a_batch_over_the_agents_up_to_the_setting(
    documents: int, largest: int, agents: int, expected: int
) -> None:
    assert chunk_size(documents, largest=largest, agents=agents) == expected


def test_split_batch_keeps_every_document_once_in_order() -> None:
    batch = documents(10)
    chunks = split_batch(batch, 4)
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert [d for c in chunks for d in c] == batch


async def test_chunks_merge_into_one_stream_with_one_done_under_the_batch_id() -> None:
    placer = Placer(["a", "b"])
    batch = fan_out(placer, 6, 3, in_flight=2)
    lines = batch.agent_batches()
    first = placer.placed[0]
    first.send(vector("0"))
    assert await anext(lines) == ("a", [vector("0") | {"request_id": "batch"}])
    await settle()
    second = placer.placed[1]
    second.finish()
    agent, items = await anext(lines)
    assert agent == "b"
    assert document_ids(items) == ["3", "4", "5"]
    assert second.closed  # its slot went back as soon as it was done
    first.send(vector("1"), vector("2"), done())
    assert (await anext(lines))[0] == "a"
    agent, items = await anext(lines)
    assert (agent, items) == ("a", [done() | {"request_id": "batch"}])
    with pytest.raises(StopAsyncIteration):
        await anext(lines)
    assert all(chunk.closed for chunk in placer.placed)


async def test_chunks_in_flight_are_bounded_and_placed_away_from_their_siblings() -> (
    None
):
    placer = Placer(["a", "b"])
    batch = fan_out(placer, 8, 2, in_flight=2)  # four chunks, two at a time
    lines = batch.agent_batches()
    placer.placed[0].finish()
    assert (await anext(lines))[0] == "a"
    await settle()
    assert len(placer.placed) == 2
    assert placer.avoided == [{"a"}]
    reading = asyncio.ensure_future(anext(lines))
    await settle()
    # The first chunk ended: a third takes its place, away from "b".
    assert len(placer.placed) == 3
    assert placer.avoided[-1] == {"b"}
    assert sum(not chunk.closed for chunk in placer.placed) == 2
    finished = {placer.placed[0].request_id}
    most_in_flight = 0

    async def agents() -> None:
        # The agents embed whatever chunk they are given, at once.
        nonlocal most_in_flight
        while True:
            running = [chunk for chunk in placer.placed if not chunk.closed]
            most_in_flight = max(most_in_flight, len(running))
            for chunk in running:
                if chunk.request_id not in finished:
                    finished.add(chunk.request_id)
                    chunk.finish()
            await asyncio.sleep(0)

    working = asyncio.ensure_future(agents())
    received = list((await reading)[1])
    async for _, items in lines:
        received += items
    working.cancel()
    assert most_in_flight == 2
    assert received[-1]["response"] == {"Embedding": "Done"}
    # Chunk a's two documents were read first; then six and the one Done.
    assert len(received) == 7
    assert len(placer.placed) == 4
    assert all(chunk.closed for chunk in placer.placed)


async def test_chunks_are_placed_one_after_another() -> None:
    placer = Placer(["a", "b", "c"])
    placer.gate.clear()  # the second chunk waits in the buffer
    batch = fan_out(placer, 9, 3, in_flight=3)
    reading = asyncio.ensure_future(anext(batch.agent_batches()))
    await settle()
    # The third is not placed while the second still waits for its slot.
    assert len(placer.avoided) == 1
    placer.gate.set()
    await settle()
    assert len(placer.avoided) == 2
    assert placer.avoided[1] == {"a", "b"}
    reading.cancel()
    await asyncio.gather(reading, return_exceptions=True)


async def test_a_failing_chunk_ends_the_batch_and_cancels_the_others() -> None:
    placer = Placer(["a", "b"])
    batch = fan_out(placer, 9, 3, in_flight=2)
    lines = batch.agent_batches()
    placer.placed[0].send(vector("0"))
    await anext(lines)
    placer.placed[1].send(error(502, "Agent b disappeared mid-stream"))
    _, items = await anext(lines)
    assert items == [
        error(502, "Agent b disappeared mid-stream") | {"request_id": "batch"}
    ]
    with pytest.raises(StopAsyncIteration):
        await anext(lines)
    assert all(chunk.closed for chunk in placer.placed)
    assert len(placer.placed) == 2  # the third chunk was never placed


async def test_a_chunk_that_cannot_be_placed_waits_for_a_sibling_to_end() -> None:
    full = error(503, "Buffered requests overflow")
    placer = Placer(["a", "b"], refusal=full, refusals=1)
    batch = fan_out(placer, 4, 2, in_flight=2)
    lines = batch.items()
    reading = asyncio.ensure_future(anext(lines))
    await settle()
    # Refused while the first chunk runs: not tried again until it ends.
    assert len(placer.avoided) == 1
    assert not reading.done()
    placer.placed[0].finish()
    received = [await reading, await anext(lines)]
    reading = asyncio.ensure_future(anext(lines))
    await settle()
    assert len(placer.avoided) == 2
    placer.placed[1].finish()
    received += [await reading] + [item async for item in lines]
    assert sorted(document_ids(received[:-1])) == ["0", "1", "2", "3"]
    assert received[-1]["response"] == {"Embedding": "Done"}


async def test_a_chunk_that_cannot_be_placed_with_none_running_ends_the_batch() -> None:
    timed_out = error(504, "Waiting for available slot timed out")
    placer = Placer(["a"], refusal=timed_out, refusals=2)
    batch = fan_out(placer, 4, 2, in_flight=2)
    lines = batch.items()
    reading = asyncio.ensure_future(anext(lines))
    await settle()
    placer.placed[0].finish()
    received = [await reading]
    received += [item async for item in lines]
    assert received[-1]["error"] == {
        "code": 504,
        "description": "Waiting for available slot timed out",
    }
    assert received[-1]["request_id"] == "batch"
    assert len(placer.avoided) == 2
    assert placer.placed[0].closed


async def test_a_document_error_is_relayed_and_the_batch_goes_on() -> None:
    placer = Placer(["a", "b"])
    batch = fan_out(placer, 2, 1, in_flight=2)
    lines = batch.items()
    too_long: OutputItem = {
        "request_id": "chunk",
        "response": {"Embedding": {"Error": "document 0 is too long"}},
        "error": None,
        "final": False,
        "meta": None,
    }
    placer.placed[0].send(too_long, done())
    assert (await anext(lines))["response"] == too_long["response"]
    await settle()
    placer.placed[1].finish()
    rest = [item async for item in lines]
    assert [i["final"] for i in rest] == [False, True]
    assert rest[-1]["response"] == {"Embedding": "Done"}


async def test_closing_early_cancels_every_chunk_and_the_one_being_placed() -> None:
    placer = Placer(["a", "b", "c"])
    batch = fan_out(placer, 9, 3, in_flight=3)
    lines = batch.agent_batches()
    placer.placed[0].send(vector("0"))
    await anext(lines)
    await settle()
    placer.gate.clear()
    placer.placed[1].send(vector("3"))
    await anext(lines)
    await settle()
    assert len(placer.avoided) == 2  # the third is being placed
    await lines.aclose()
    assert all(chunk.closed for chunk in placer.placed)
    assert len(placer.placed) == 2


async def test_a_batch_closed_before_it_was_read_frees_its_first_chunk() -> None:
    placer = Placer(["a"])
    batch = fan_out(placer, 2, 2, in_flight=1)
    await batch.close()
    assert placer.placed[0].closed


async def test_the_batch_counts_the_tokens_of_every_chunk() -> None:
    placer = Placer(["a", "b"])
    batch = fan_out(placer, 5, 2, in_flight=2)  # chunks of 2, 2 and 1

    async def finish_every_chunk() -> None:
        while True:
            for chunk in placer.placed:
                if not chunk.usage:
                    chunk.finish()
            await asyncio.sleep(0)

    finisher = asyncio.create_task(finish_every_chunk())
    async for _ in batch.agent_batches():
        pass
    finisher.cancel()
    assert len(placer.placed) == 3
    assert batch.prompt_tokens == 5 * 5
