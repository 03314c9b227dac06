"""Embeddings end to end, on an agent that generates at the same time."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest
from paddler_client.client_inference import ClientInference
from paddler_client.embedding_input_document import EmbeddingInputDocument
from paddler_client.embedding_normalization_method import (
    EmbeddingNormalizationMethod,
)
from paddler_client.generate_embedding_batch_params import (
    GenerateEmbeddingBatchParams,
)
from paddler_client.inference_message import InferenceMessageKind

from tests.support.streams import read_ndjson
from tests.support.web import WebServer


def embed(web: WebServer, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream(
        "POST", f"{web.url}/api/v1/generate_embedding_batch", json=body, timeout=60
    ) as response:
        assert response.status_code == 200, response.read()
        return read_ndjson(response)


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_each_document_gets_a_vector_tagged_with_its_id(
    embedding_platform: WebServer,
) -> None:
    lines = embed(
        embedding_platform,
        {
            "input_batch": [
                {"id": "cat", "content": "The cat sat on the mat."},
                {"id": "kitten", "content": "A kitten sat on the rug."},
                {"id": "stocks", "content": "Stock markets fell sharply today."},
            ],
            "normalization_method": "L2",
        },
    )
    payloads = [line["Response"]["response"]["Embedding"] for line in lines]
    assert payloads[-1] == "Done"
    vectors = {
        p["Embedding"]["source_document_id"]: p["Embedding"]["embedding"]
        for p in payloads[:-1]
    }
    assert set(vectors) == {"cat", "kitten", "stocks"}
    for vector in vectors.values():
        assert len(vector) == 640  # Gemma 3 270M's embedding width
        assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, rel_tol=1e-4)
    assert payloads[0]["Embedding"]["pooling_type"] == "Mean"
    # Related sentences are closer than unrelated ones.
    assert cosine(vectors["cat"], vectors["kitten"]) > cosine(
        vectors["cat"], vectors["stocks"]
    )


def test_normalizations_scale_the_same_vector(embedding_platform: WebServer) -> None:
    document = {"id": "d", "content": "Normalize me."}

    def vector(method: Any) -> list[float]:
        lines = embed(
            embedding_platform,
            {"input_batch": [document], "normalization_method": method},
        )
        return list(
            lines[0]["Response"]["response"]["Embedding"]["Embedding"]["embedding"]
        )

    raw = vector("None")
    l2 = vector("L2")
    rms = vector({"RmsNorm": {"epsilon": 1e-6}})
    norm = math.sqrt(sum(v * v for v in raw))
    assert norm > 1.5  # raw vectors are not unit length
    assert l2 == pytest.approx([v / norm for v in raw], rel=1e-3, abs=1e-5)
    scale = math.sqrt(sum(v * v for v in raw) / len(raw) + 1e-6)
    assert rms == pytest.approx([v / scale for v in raw], rel=1e-3, abs=1e-5)


def test_document_larger_than_the_batch_gets_an_error_and_others_still_embed(
    embedding_platform: WebServer,
) -> None:
    lines = embed(
        embedding_platform,
        {
            "input_batch": [
                {"id": "huge", "content": "word " * 200},
                {"id": "small", "content": "Short text."},
            ]
        },
    )
    payloads = [line["Response"]["response"]["Embedding"] for line in lines]
    assert "huge" in payloads[0]["Error"]
    assert "embedding batch of 64" in payloads[0]["Error"]
    assert payloads[1]["Embedding"]["source_document_id"] == "small"
    assert payloads[-1] == "Done"


async def test_official_client_embeds_while_the_agent_generates(
    embedding_platform: WebServer,
) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        generation = http.build_request(
            "POST",
            f"{embedding_platform.url}/api/v1/continue_from_raw_prompt",
            json={"raw_prompt": "Count to ten:", "max_tokens": 40},
        )
        streaming = await http.send(generation, stream=True)
        client = ClientInference(embedding_platform.url)
        params = GenerateEmbeddingBatchParams(
            input_batch=[
                EmbeddingInputDocument(id=str(i), content=f"document {i}")
                for i in range(5)
            ],
            normalization_method=EmbeddingNormalizationMethod.l2(),
        )
        kinds = [m.kind async for m in client.generate_embedding_batch(params)]
        await client.close()
        generated = [line async for line in streaming.aiter_lines()]
        await streaming.aclose()
    assert kinds.count(InferenceMessageKind.EMBEDDING) == 5
    assert kinds[-1] == InferenceMessageKind.EMBEDDING_DONE
    assert '"Done"' in generated[-1]


def test_embeddings_need_enable_embeddings(platform: WebServer) -> None:
    lines = embed(platform, {"input_batch": [{"id": "a", "content": "text"}]})
    assert lines[-1]["Error"]["error"]["code"] == 400
    assert "enable_embeddings" in lines[-1]["Error"]["error"]["description"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"input_batch": []}, "input_batch"),
        ({"input_batch": [{"id": 1, "content": "x"}]}, "input_batch[0].id"),
        (
            {"input_batch": [{"id": "a", "content": "x"}, {"id": "a", "content": "y"}]},
            "input_batch[1].id",
        ),
        (
            {
                "input_batch": [{"id": "a", "content": "x"}],
                "normalization_method": "L3",
            },
            "normalization_method",
        ),
    ],
)
def test_invalid_embedding_request_gets_400(
    web: WebServer, body: dict[str, Any], field: str
) -> None:
    response = httpx.post(f"{web.url}/api/v1/generate_embedding_batch", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["description"].startswith(f"{field}:")
