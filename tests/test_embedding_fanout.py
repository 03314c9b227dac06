"""Embedding batches fan out across agents in chunks and come back as one stream.

Real Redis, daphne and agents serving the demo model; the merge itself is
unit-tested in ``test_fanout``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from balancer import keys
from tests.support.constants import AUTH
from tests.support.fleet import Fleet, request_log
from tests.support.processes import wait_until
from tests.support.streams import read_ndjson
from tests.support.web import WebServer

TOPICS = [
    "The cat sat on the mat.",
    "A kitten slept on the rug.",
    "Stock markets fell sharply today.",
    "The central bank raised interest rates.",
    "Rain is expected over the weekend.",
    "A warm front brings sunshine on Monday.",
    "The striker scored twice in the final.",
    "The goalkeeper saved a late penalty.",
    "Bake the bread for forty minutes.",
    "Whisk the eggs with a pinch of salt.",
    "The rocket reached orbit after launch.",
    "Astronauts docked with the space station.",
]
DOCUMENTS = [{"id": f"doc-{i}", "content": text} for i, text in enumerate(TOPICS)]


def embedding_state(greedy_state: dict[str, Any]) -> dict[str, Any]:
    return {
        **greedy_state,
        "inference_parameters": {
            **greedy_state["inference_parameters"],
            "enable_embeddings": True,
            "embedding_batch_size": 64,
            "pooling_type": "Mean",
        },
    }


def post_batch(web: WebServer, documents: list[dict[str, str]]) -> httpx.Response:
    return httpx.post(
        f"{web.url}/api/v1/generate_embedding_batch",
        json={"input_batch": documents, "normalization_method": "L2"},
        timeout=120,
    )


def embed(web: WebServer, documents: list[dict[str, str]]) -> list[dict[str, Any]]:
    response = post_batch(web, documents)
    assert response.status_code == 200, response.text
    return read_ndjson(response)


def vectors(lines: list[dict[str, Any]]) -> dict[str, list[float]]:
    return {
        p["Embedding"]["source_document_id"]: p["Embedding"]["embedding"]
        for p in (line["Response"]["response"]["Embedding"] for line in lines)
        if isinstance(p, dict) and "Embedding" in p
    }


def assert_one_stream(lines: list[dict[str, Any]], expected_ids: list[str]) -> None:
    """Every document once, one Done at the very end, one request id."""
    embedded = [
        line["Response"]["response"]["Embedding"]["Embedding"]["source_document_id"]
        for line in lines[:-1]
    ]
    assert Counter(embedded) == Counter(expected_ids)
    assert lines[-1]["Response"]["response"]["Embedding"] == "Done"
    assert len({line["Response"]["request_id"] for line in lines}) == 1


def clear_request_log(fleet: Fleet) -> None:
    client = fleet.client()
    client.delete(keys.request_log())
    client.close()


def chunk_records(fleet: Fleet) -> list[dict[str, Any]]:
    return [r for r in request_log(fleet) if r["kind"] == "embeddings"]


def claims_and_buffer(fleet: Fleet) -> int:
    """Slot claims on every agent ever seen, plus buffered requests."""
    client = fleet.client()
    try:
        held = sum(
            int(client.zcard(key)) for key in client.scan_iter(keys.agent_claims("*"))
        )
        return held + int(client.zcard(keys.buffer()))
    finally:
        client.close()


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, greedy_state: dict[str, Any]
) -> Iterator[tuple[Fleet, WebServer, dict[str, list[float]]]]:
    """Two agents of two slots, and the vectors of ``DOCUMENTS`` embedded
    unsplit, by the first agent alone, before the second one joined."""
    fleet = Fleet(tmp_path_factory.mktemp("fanout"), embedding_state(greedy_state))
    try:
        web = fleet.web()
        fleet.agent("left")
        web.wait_for_ready_agents(1)
        lines = embed(web, DOCUMENTS)
        assert {line["Response"]["generated_by"] for line in lines} == {"left"}
        unsplit = vectors(lines)
        fleet.agent("right")
        web.wait_for_ready_agents(2)
        yield fleet, web, unsplit
    finally:
        fleet.stop()


def test_a_batch_over_two_agents_is_embedded_by_both_as_one_stream(
    pair: tuple[Fleet, WebServer, dict[str, list[float]]],
) -> None:
    fleet, web, unsplit = pair
    clear_request_log(fleet)
    lines = embed(web, DOCUMENTS)
    assert_one_stream(lines, [d["id"] for d in DOCUMENTS])
    by_agent = Counter(line["Response"]["generated_by"] for line in lines[:-1])
    assert set(by_agent) == {"left", "right"}
    # The same vectors as unsplit: documents are embedded one sequence each,
    # whatever else shares their decode.
    split = vectors(lines)
    for document_id, vector in unsplit.items():
        assert split[document_id] == pytest.approx(vector, rel=1e-3, abs=1e-4)
    # One request-log record per chunk, on both agents, under the batch's id.
    request_id = lines[0]["Response"]["request_id"]
    records = chunk_records(fleet)
    assert {r["parent_id"] for r in records} == {request_id}
    assert {r["agent"] for r in records} == {"left", "right"}
    assert all(r["outcome"] == "done" for r in records)
    assert request_id not in {r["id"] for r in records}
    wait_until(lambda: claims_and_buffer(fleet) == 0, 10, "every slot free")


def test_a_document_too_long_fails_alone_while_the_other_chunks_complete(
    pair: tuple[Fleet, WebServer, dict[str, list[float]]],
) -> None:
    _, web, _ = pair
    documents = [*DOCUMENTS[:6], {"id": "huge", "content": "word " * 200}]
    lines = embed(web, documents)
    failed = [
        line for line in lines if "Error" in line["Response"]["response"]["Embedding"]
    ]
    assert len(failed) == 1
    assert "huge" in failed[0]["Response"]["response"]["Embedding"]["Error"]
    embedded = [line for line in lines if line not in failed]
    assert_one_stream(embedded, [d["id"] for d in DOCUMENTS[:6]])


def test_openai_embeddings_over_two_agents_come_back_in_input_order(
    pair: tuple[Fleet, WebServer, dict[str, list[float]]],
) -> None:
    fleet, web, unsplit = pair
    clear_request_log(fleet)
    with openai.OpenAI(
        base_url=f"{web.url}/v1", api_key="unused", max_retries=0
    ) as client:
        response = client.embeddings.create(
            model="any", input=TOPICS, encoding_format="float"
        )
    assert [item.index for item in response.data] == list(range(len(TOPICS)))
    for item in response.data:
        assert item.embedding == pytest.approx(
            unsplit[f"doc-{item.index}"], rel=1e-3, abs=1e-4
        )
    records = chunk_records(fleet)
    assert len({r["parent_id"] for r in records}) == 1
    assert {r["agent"] for r in records} == {"left", "right"}
    # The usage adds up what every chunk's agent read.
    assert response.usage.prompt_tokens == sum(r["prompt_tokens"] for r in records)
    assert response.usage.prompt_tokens > len(TOPICS)


def test_an_agent_killed_mid_batch_ends_the_stream_with_502_and_frees_every_slot(
    fleet: Fleet, greedy_state: dict[str, Any]
) -> None:
    fleet.state = embedding_state(greedy_state)
    web = fleet.web(PADDLER_EMBEDDING_CHUNK_SIZE="20")
    steady = fleet.agent("steady")
    victim = fleet.agent("victim")
    web.wait_for_ready_agents(2)
    # About 50 tokens each: one document per decode of the 64-token batch, so
    # a chunk of 20 takes the victim many decodes, and it dies in the middle.
    documents = [
        {"id": f"d{i}", "content": f"Document {i}. " + " ".join(TOPICS[:4])}
        for i in range(80)
    ]
    lines: list[dict[str, Any]] = []
    killed_at = 0.0
    with httpx.stream(
        "POST",
        f"{web.url}/api/v1/generate_embedding_batch",
        json={"input_batch": documents, "normalization_method": "L2"},
        timeout=120,
    ) as response:
        assert response.status_code == 200
        for raw in response.iter_lines():
            line = json.loads(raw)
            lines.append(line)
            if not killed_at and line.get("Response", {}).get("generated_by") == (
                "victim"
            ):
                victim.process.kill()
                killed_at = time.monotonic()
    print(f"502 line {time.monotonic() - killed_at:.1f}s after the kill")
    assert killed_at, "the victim embedded nothing"
    assert lines[-1]["Error"]["error"]["code"] == 502
    assert "victim" in lines[-1]["Error"]["error"]["description"]
    assert not any(
        line.get("Response", {}).get("response") == {"Embedding": "Done"}
        for line in lines
    )
    request_id = lines[0]["Response"]["request_id"]
    assert lines[-1]["Error"]["request_id"] == request_id
    # The victim's claims go with it; the steady agent's chunk was cancelled
    # or done: nothing stays claimed, nothing stays buffered.
    wait_until(
        lambda: [a["name"] for a in web.agents()] == ["steady"], 10, "victim dropped"
    )
    wait_until(lambda: claims_and_buffer(fleet) == 0, 10, "every slot free")
    records = chunk_records(fleet)
    assert {r["parent_id"] for r in records} == {request_id}
    assert "502" in {r["outcome"] for r in records if r["agent"] == "victim"}
    # The steady agent serves the next batch at once.
    after = embed(web, DOCUMENTS[:2])
    assert_one_stream(after, ["doc-0", "doc-1"])
    assert steady.process.poll() is None


def test_a_batch_waits_for_the_first_agent_and_is_served_in_chunks(
    fleet: Fleet, greedy_state: dict[str, Any]
) -> None:
    fleet.state = embedding_state(greedy_state)
    web = fleet.web(
        PADDLER_EMBEDDING_CHUNK_SIZE="4", PADDLER_BUFFERED_REQUEST_TIMEOUT_MS="90000"
    )
    results: dict[str, httpx.Response] = {}

    def run() -> None:
        results["response"] = post_batch(web, DOCUMENTS[:10])

    thread = threading.Thread(target=run)
    thread.start()

    def buffered() -> int:
        response = httpx.get(
            f"{web.url}/api/v1/buffered_requests", headers=AUTH, timeout=10
        )
        count: int = response.json()["buffered_requests_current"]
        return count

    # Only the first chunk waits: the buffer is shared and small.
    wait_until(lambda: buffered() == 1, 10, "the first chunk to be buffered")
    time.sleep(0.5)
    assert buffered() == 1
    fleet.agent("late")
    thread.join()
    response = results["response"]
    assert response.status_code == 200, response.text
    lines = read_ndjson(response)
    assert_one_stream(lines, [d["id"] for d in DOCUMENTS[:10]])
    records = chunk_records(fleet)
    assert len(records) == 3  # 4 + 4 + 2 documents
    assert len({r["parent_id"] for r in records}) == 1
    assert buffered() == 0


def test_a_batch_that_cannot_start_gets_the_http_status(
    quiet_web: WebServer,
) -> None:
    # No agent on this Redis, and a 2 s buffer timeout.
    response = post_batch(quiet_web, DOCUMENTS)
    assert response.status_code == 504
    assert "timed out" in response.json()["error"]["description"]
