"""The token path's mechanisms: the agent's pushes, the web process's inbox
reads, the output splitter's plain fast path, and every token of many
coalesced streams reaching its client in order, exactly once, on each
surface."""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio
from django.test import override_settings
from websockets.asyncio.client import connect

from agents import worker as worker_module
from agents.jobs import Generation, Output
from agents.output_split import OutputSplitter, splitter_for
from agents.synthetic import SyntheticEngine
from agents.worker import AgentWorker
from balancer import background
from balancer.contract import (
    RawPromptParams,
    content_token_item,
    content_token_text,
    done_item,
    error_item,
)
from balancer.dispatch import Dispatcher
from balancer.events import OutputBatch, compact_item, expand_item
from balancer.stream import Stream
from inference.envelopes import paddler_envelope, socket_message
from inference.openai.output import TextPiece, read_generation_item
from inference.openai.responses import Reply, TextEvents, sse
from tests.support.constants import GREEDY_PARAMETERS
from tests.support.fleet import running_platform
from tests.support.processes import stop_process, wait_until
from tests.support.redis_server import RedisServer, start_redis
from tests.support.web import WebServer, socket_url

INBOX = "paddler:test:token-path-inbox"
PROMPT: RawPromptParams = {"raw_prompt": "Hi", "max_tokens": 1, "grammar": None}
SYNTHETIC_SLOTS = 24


def command_calls(client: redis.Redis, command: str) -> int:
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


# ------------------------------------------------------ the web's inbox reads
def token_batch(request_id: str, texts: list[str]) -> str:
    batch: OutputBatch = {
        "agent_id": "agent",
        "agent_name": "agent",
        "items": [compact_item(content_token_item(request_id, t)) for t in texts],
    }
    return json.dumps(batch)


async def test_batches_waiting_in_the_inbox_are_read_in_few_commands_in_order(
    redis_server: RedisServer,
) -> None:
    # Agents pushed 40 batches while this process was busy: it takes them
    # all in one read (not one command a batch), and every token reaches
    # its stream once, in the order pushed.
    dispatcher = object.__new__(Dispatcher)  # only what the inbox reader uses
    dispatcher.inbox = "paddler:test:token-path-reads"
    dispatcher.streams = {}
    streams = {
        rid: Stream(rid, "raw_prompt", PROMPT, dispatcher, agent_id="agent")
        for rid in ("a", "b")
    }
    dispatcher.streams.update(streams)
    client = redis.Redis.from_url(redis_server.url)
    client.delete(dispatcher.inbox)
    for number in range(40):
        client.rpush(
            dispatcher.inbox,
            token_batch("a", [f"a{number}"]),
            token_batch("b", [f"b{number}.0", f"b{number}.1"]),
        )
    client.config_resetstat()
    with override_settings(REDIS_URL=redis_server.url):
        reader = asyncio.create_task(
            background.read_inbox(dispatcher), context=contextvars.Context()
        )
        await asyncio.sleep(0)
    try:
        received: dict[str, list[str]] = {"a": [], "b": []}
        for rid, count in (("a", 40), ("b", 80)):
            for _ in range(count):
                item = await asyncio.wait_for(streams[rid].queue.get(), timeout=5)
                text = content_token_text(item)
                assert text is not None
                received[rid].append(text)
        await asyncio.sleep(0.2)
        assert all(stream.queue.empty() for stream in streams.values())
        assert received["a"] == [f"a{n}" for n in range(40)]
        assert received["b"] == [f"b{n}.{i}" for n in range(40) for i in (0, 1)]
        reads = command_calls(client, "blmpop") + command_calls(client, "blpop")
        assert reads <= 3, f"{reads} reads for 80 batches"
    finally:
        reader.cancel()
        client.close()


# --------------------------------------------------------- the agent's pushes
@pytest.fixture
async def agent(isolated_redis: redis.Redis) -> AsyncIterator[AgentWorker]:
    isolated_redis.delete(INBOX)
    built = AgentWorker(name="token-path", slots=2, backend="synthetic")
    await built.connect()
    yield built
    await built.shutdown()
    await built.disconnect()
    isolated_redis.delete(INBOX)


def token_outputs(request_id: str, count: int) -> list[Output]:
    return [
        Output(INBOX, content_token_item(request_id, f" t{n}")) for n in range(count)
    ]


async def test_pushes_do_not_set_the_inbox_ttl_every_decode_step(
    agent: AgentWorker, isolated_redis: redis.Redis
) -> None:
    # One command a step, not two: the inbox's TTL is renewed now and then.
    isolated_redis.config_resetstat()
    for step in range(30):
        await agent.send_outputs(token_outputs(f"r{step}", 1))
    assert command_calls(isolated_redis, "rpush") == 30
    assert command_calls(isolated_redis, "expire") == 1
    assert isolated_redis.llen(INBOX) == 30
    assert 0 < isolated_redis.ttl(INBOX) <= worker_module.INBOX_TTL_S


async def test_pushes_to_a_missing_web_process_set_the_inbox_ttl(
    agent: AgentWorker, isolated_redis: redis.Redis
) -> None:
    await agent.send_outputs(token_outputs("r", 1))
    # Its web process read the list empty (which deletes it), then went
    # silent: what is pushed now may never be read, and must not stay.
    isolated_redis.delete(INBOX)
    agent._webs_missing_since[INBOX] = time.monotonic()
    await agent.send_outputs(token_outputs("r", 1))
    assert 0 < isolated_redis.ttl(INBOX) <= worker_module.INBOX_TTL_S


async def test_the_orphan_check_sets_a_ttl_on_a_dead_web_process_inbox(
    agent: AgentWorker,
    isolated_redis: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_module, "WEB_GONE_AFTER_S", 0.0)
    await agent.apply_state(
        {"model": "None", "inference_parameters": dict(GREEDY_PARAMETERS)}
    )
    assert agent.engine is not None
    agent.engine.submit(
        Generation(request_id="orphan", max_tokens=10**9, destination=INBOX)
    )
    # The list as a push after the TTL's renewal left it: no TTL.
    isolated_redis.rpush(INBOX, "{}")
    for _ in range(50):
        if agent.engine.destinations():
            break
        await asyncio.sleep(0.02)
    await agent._cancel_orphans()
    assert 0 < isolated_redis.ttl(INBOX) <= worker_module.INBOX_TTL_S


# ------------------------------------------------- the splitter's fast path
def general_path(splitter: OutputSplitter) -> OutputSplitter:
    splitter._plain = False
    return splitter


TEXTS = ["Hello", ",", " world", "", "<think>", "</think>", "\n", '{"a": 1}', "é"]


def test_a_plain_streams_tokens_go_out_without_the_marker_search(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    splitter = splitter_for(Generation(request_id="r", max_tokens=8, raw_prompt="x"))
    assert splitter.plain

    def searched(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a plain stream's token went through _split")

    monkeypatch.setattr(OutputSplitter, "_split", searched)
    items = [item for text in TEXTS for item in splitter.feed(text)]
    assert [i["response"] for i in items] == [
        {"GeneratedToken": {"ContentToken": t}} for t in TEXTS if t
    ]


def test_the_fast_path_gives_what_the_general_path_gives() -> None:
    fast = OutputSplitter("r", None)
    slow = general_path(OutputSplitter("r", None))
    for text in TEXTS:
        assert fast.feed(text) == slow.feed(text)
    assert fast.finish() == slow.finish()
    assert (fast.reasoning_tokens, fast.tool_call_tokens) == (
        slow.reasoning_tokens,
        slow.tool_call_tokens,
    )


def test_a_splitter_that_looks_for_markers_is_not_plain() -> None:
    assert not OutputSplitter("r", None, "think_tags").plain
    assert not OutputSplitter("r", "hermes").plain
    thinking = OutputSplitter("r", None, "think_tags", state="reasoning")
    assert [i["response"] for i in thinking.feed("hm</think>ok")] == [
        {"GeneratedToken": {"ReasoningToken": "hm"}},
        {"GeneratedToken": {"ContentToken": "ok"}},
    ]


# ------------------------------ many streams, coalesced, on every surface
@pytest.fixture(scope="module")
def synthetic_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    """A web process and a synthetic agent of many slots: its steps carry
    a token of every stream, and they pile up, so each push and each inbox
    read carries many tokens."""
    state = {"model": "None", "inference_parameters": dict(GREEDY_PARAMETERS)}
    with running_platform(
        tmp_path_factory.mktemp("token-path"),
        state,
        agent_name="synthetic",
        slots=SYNTHETIC_SLOTS,
        agent_args=("--backend", "synthetic"),
    ) as web:
        yield web


TOKENS = 300


def expected_texts() -> list[str]:
    return [f" t{n}" for n in range(TOKENS)]


async def ndjson_texts(http: httpx.AsyncClient, url: str) -> list[str]:
    texts: list[str] = []
    async with http.stream(
        "POST",
        f"{url}/api/v1/continue_from_raw_prompt",
        json={"raw_prompt": "x", "max_tokens": TOKENS},
    ) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line:
                continue
            generated = json.loads(line)["Response"]["response"]["GeneratedToken"]
            if "ContentToken" in generated:
                texts.append(generated["ContentToken"])
            else:
                assert generated["Done"]["usage"]["content_tokens"] == TOKENS
    return texts


async def sse_texts(http: httpx.AsyncClient, url: str) -> list[str]:
    texts: list[str] = []
    body = {"model": "m", "prompt": "x", "max_tokens": TOKENS, "stream": True}
    async with http.stream("POST", f"{url}/v1/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[len("data: ") :])["choices"]
            if choices and choices[0]["text"]:
                texts.append(choices[0]["text"])
    return texts


async def socket_texts(web: WebServer) -> dict[str, list[str]]:
    """Every stream on one socket at once, keyed by the client's ids."""
    texts: dict[str, list[str]] = {f"s{n}": [] for n in range(SYNTHETIC_SLOTS)}
    async with connect(socket_url(web), max_size=None) as socket:
        for request_id in texts:
            request = {"raw_prompt": "x", "max_tokens": TOKENS}
            await socket.send(
                json.dumps(
                    {
                        "Request": {
                            "id": request_id,
                            "request": {"ContinueFromRawPrompt": request},
                        }
                    }
                )
            )
        done = 0
        while done < len(texts):
            message = json.loads(await asyncio.wait_for(socket.recv(), 30))
            response = message["Response"]
            generated = response["response"]["GeneratedToken"]
            if "ContentToken" in generated:
                texts[response["request_id"]].append(generated["ContentToken"])
            else:
                assert "Done" in generated
                done += 1
    return texts


async def test_coalesced_tokens_reach_every_ndjson_client_in_order_once(
    synthetic_web: WebServer,
) -> None:
    limits = httpx.Limits(max_connections=SYNTHETIC_SLOTS * 2)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        results = await asyncio.gather(
            *(ndjson_texts(http, synthetic_web.url) for _ in range(SYNTHETIC_SLOTS))
        )
    assert all(texts == expected_texts() for texts in results)


async def test_coalesced_tokens_reach_every_sse_client_in_order_once(
    synthetic_web: WebServer,
) -> None:
    limits = httpx.Limits(max_connections=SYNTHETIC_SLOTS * 2)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        results = await asyncio.gather(
            *(sse_texts(http, synthetic_web.url) for _ in range(SYNTHETIC_SLOTS))
        )
    assert all(texts == expected_texts() for texts in results)


async def test_coalesced_tokens_reach_every_socket_request_in_order_once(
    synthetic_web: WebServer,
) -> None:
    results = await socket_texts(synthetic_web)
    assert all(texts == expected_texts() for texts in results.values())


async def cut_off_after(http: httpx.AsyncClient, url: str, lines: int) -> int:
    """Read ``lines`` lines of an endless stream, then go away."""
    read = 0
    async with http.stream(
        "POST",
        f"{url}/api/v1/continue_from_raw_prompt",
        json={"raw_prompt": "x", "max_tokens": 10**6},
    ) as response:
        async for _ in response.aiter_lines():
            read += 1
            if read == lines:
                break
    return read


async def test_a_cancel_between_coalesced_batches_frees_the_slot_for_the_next(
    synthetic_web: WebServer,
) -> None:
    # Clients that go away mid-stream, between two of their coalesced
    # batches: every slot comes back, and the requests after them get every
    # token, once, in order.
    limits = httpx.Limits(max_connections=SYNTHETIC_SLOTS * 2)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await asyncio.gather(
            *(
                cut_off_after(http, synthetic_web.url, 50)
                for _ in range(SYNTHETIC_SLOTS)
            )
        )
        wait_until(
            lambda: synthetic_web.agents()[0]["slots_processing"] == 0,
            10,
            "the cancelled requests' slots freed",
        )
        results = await asyncio.gather(
            *(ndjson_texts(http, synthetic_web.url) for _ in range(SYNTHETIC_SLOTS))
        )
    assert all(texts == expected_texts() for texts in results)


def test_paced_synthetic_steps_report_how_late_they_came_back() -> None:
    outputs: list[list[Output]] = []
    engine = SyntheticEngine(slots=2, on_output=outputs.append, step_s=0.001)
    engine.submit(Generation(request_id="r", max_tokens=20, destination=INBOX))
    thread = threading.Thread(target=engine.run)
    thread.start()
    try:
        for _ in range(200):
            if any(o.final for batch in outputs for o in batch):
                break
            time.sleep(0.01)
    finally:
        engine.stop()
        thread.join()
    assert len(engine.gil_waits) >= 20
    assert all(wait >= 0 for wait in engine.gil_waits)
    texts = [
        content_token_text(o.item) for batch in outputs for o in batch if not o.final
    ]
    assert texts == [f" t{n}" for n in range(20)]


# -------------------------------------------- pre-encoded client messages
AWKWARD = [
    "plain",
    'quote " and \\ slash',
    "line\nbreak\t",
    "é東京😀",
    "\x00\x1f",
    "@@text-piece@@",
]


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("with_usage", [True, False])
def test_pre_encoded_sse_text_events_are_the_chunks_bytes(
    chat: bool, with_usage: bool
) -> None:
    reply = Reply.new("chatcmpl", 'model "@@text-piece@@" é')
    events = TextEvents(reply, chat=chat, with_usage=with_usage)
    for text in AWKWARD:
        chunk = (
            reply.chat_chunk({"content": text}, with_usage=with_usage)
            if chat
            else reply.completion_chunk(text, with_usage=with_usage)
        )
        assert events.event(text) == sse(chunk)


def test_a_piece_of_the_answer_reads_as_the_full_reading_does() -> None:
    """The SSE stream reads a plain piece of the answer with
    ``content_token_text``, without ``read_generation_item``; every other
    item still goes through it."""
    for text in AWKWARD:
        item = content_token_item("r", text, slot=0)
        assert content_token_text(item) == text
        assert read_generation_item(item) == TextPiece(text)
    piece = content_token_item("r", "x")
    others: list[Any] = [
        {**piece, "response": {"GeneratedToken": {"ReasoningToken": "thought"}}},
        {**piece, "response": {"GeneratedToken": {"ToolCallToken": "{"}}},
        {**piece, "response": {"GeneratedToken": {"ContentToken": 7}}},
        done_item("r", {"prompt_tokens": 1}, slot=0),
        error_item("r", 502, "lost"),
    ]
    for item in others:
        # The full reading takes them (a number as text, leniently).
        assert content_token_text(item) is None


def test_pre_encoded_socket_messages_are_the_envelopes_json() -> None:
    for text in AWKWARD:
        item = content_token_item("dispatcher-id", text)
        for client_id in ("r1", 'id "quoted" é'):
            expected = json.dumps(paddler_envelope(item, 'agent "a" é', client_id))
            assert socket_message(item, 'agent "a" é', client_id) == expected
    done = done_item("dispatcher-id", {"prompt_tokens": 1}, slot=0)
    assert socket_message(done, "a", "r1") == json.dumps(
        paddler_envelope(done, "a", "r1")
    )


async def test_output_lost_while_redis_is_away_ends_its_request_with_502_after(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # The relay thread's push fails while Redis is down (after its retries):
    # the request stops, and once Redis answers the heartbeat's delivery
    # ends it with an explicit 502, never a silent gap.
    server = start_redis()
    port = server.port
    with override_settings(REDIS_URL=server.url):
        built = AgentWorker(name="lossy", slots=1, backend="synthetic")
        built._redis = redis.asyncio.Redis.from_url(server.url)
        await built.apply_state(
            {"model": "None", "inference_parameters": dict(GREEDY_PARAMETERS)}
        )
        relay = asyncio.create_task(built.output_loop())
        await asyncio.sleep(0.1)  # the relay thread starts
        try:
            assert built.engine is not None
            built.engine.submit(
                Generation(request_id="lost", max_tokens=10**9, destination=INBOX)
            )
            client = redis.Redis(port=port)
            await asyncio.to_thread(
                wait_until, lambda: client.llen(INBOX) > 0, 10, "first output"
            )
            client.close()
            server.process.kill()
            server.process.wait()
            await asyncio.to_thread(
                wait_until, lambda: "lost" in built._undelivered, 30, "the loss"
            )
            server = start_redis(port)
            await built._deliver_lost()
            assert "lost" not in built._undelivered
            client = redis.Redis(port=port)
            items = [
                item
                for raw in client.lrange(INBOX, 0, -1)
                for item in map(expand_item, json.loads(raw)["items"])
            ]
            client.close()
            assert items[-1]["request_id"] == "lost"
            assert items[-1]["error"] == {
                "code": 502,
                "description": "Output was lost while Redis was unreachable",
            }
            engine = built.engine
            await asyncio.to_thread(
                wait_until, lambda: engine.slots_processing == 0, 10, "slot freed"
            )
        finally:
            relay.cancel()
            await asyncio.gather(relay, return_exceptions=True)
            await built._stop_engine()
            stop_process(server.process)
