"""/v1/embeddings with the official client, on an agent with embeddings on."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.constants import MODEL_PATH
from tests.support.streams import read_ndjson
from tests.support.web import WebServer

TEXTS = ["The cat sat on the mat.", "A kitten sat on the rug.", "Stocks fell."]


@pytest.fixture(scope="module")
def client(embedding_platform: WebServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{embedding_platform.url}/v1", api_key="unused", max_retries=0
    ) as client:
        yield client


def paddler_vectors(web: WebServer, texts: list[str]) -> dict[str, list[float]]:
    body = {
        "input_batch": [{"id": str(i), "content": t} for i, t in enumerate(texts)],
        "normalization_method": "L2",
    }
    with httpx.stream(
        "POST", f"{web.url}/api/v1/generate_embedding_batch", json=body, timeout=60
    ) as response:
        lines = read_ndjson(response)
    return {
        p["Embedding"]["source_document_id"]: p["Embedding"]["embedding"]
        for p in (line["Response"]["response"]["Embedding"] for line in lines[:-1])
    }


def token_count(text: str) -> int:
    """Tokens of ``text`` as an agent reads it for an embedding (with BOS)."""
    import llama_cpp

    vocab = llama_cpp.Llama(str(MODEL_PATH), vocab_only=True, verbose=False)
    try:
        return len(vocab.tokenize(text.encode(), add_bos=True))
    finally:
        vocab.close()


def test_embeddings_are_the_paddler_l2_vectors_in_input_order(
    embedding_platform: WebServer, client: openai.OpenAI
) -> None:
    # Without encoding_format the client asks for base64 and decodes it.
    response = client.embeddings.create(model="any", input=TEXTS)
    expected = paddler_vectors(embedding_platform, TEXTS)
    assert [item.index for item in response.data] == [0, 1, 2]
    assert response.model == "any"
    assert response.usage is not None
    assert response.usage.prompt_tokens == sum(map(token_count, TEXTS))
    assert response.usage.total_tokens == response.usage.prompt_tokens
    for item in response.data:
        assert len(item.embedding) == 640
        norm = math.sqrt(sum(v * v for v in item.embedding))
        assert norm == pytest.approx(1.0, rel=1e-4)
        # float32 on the wire: equal to about seven digits.
        assert item.embedding == pytest.approx(
            expected[str(item.index)], rel=1e-5, abs=1e-6
        )


def test_float_and_base64_encodings_carry_the_same_vector(
    client: openai.OpenAI,
) -> None:
    as_floats = client.embeddings.create(
        model="any", input=TEXTS[0], encoding_format="float"
    )
    as_base64 = client.embeddings.create(model="any", input=TEXTS[0])
    assert len(as_floats.data) == 1
    assert as_base64.data[0].embedding == pytest.approx(
        as_floats.data[0].embedding, rel=1e-5, abs=1e-6
    )


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": "word " * 200}, "input"),
        ({"input": [[1, 2, 3]]}, "input"),
        ({"input": []}, "input"),
        ({"input": "x", "dimensions": 64}, "dimensions"),
    ],
)
def test_bad_embedding_request_gets_400(
    client: openai.OpenAI, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model="any", **fields)
    assert raised.value.param == param
