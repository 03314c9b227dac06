"""OpenAI's response objects: completions, their stream chunks, embeddings.

Framework-free; the views write what these return, as JSON or as server-sent
events.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any

from inference.openai.output import Finished


@dataclass(frozen=True)
class Reply:
    """Identity of one response: every chunk of a stream repeats it."""

    id: str
    model: str
    created: int

    @classmethod
    def new(cls, prefix: str, model: str) -> Reply:
        return cls(f"{prefix}-{uuid.uuid4().hex}", model, int(time.time()))

    def chat_chunk(
        self,
        delta: dict[str, Any],
        finish_reason: str | None = None,
        *,
        with_usage: bool = False,
    ) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
        }
        if with_usage:
            chunk["usage"] = None
        return chunk

    def usage_chunk(self, kind: str, usage: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage,
        }

    def chat_completion(
        self, text: str, finished: Finished, max_tokens: int
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finished.finish_reason(max_tokens),
                }
            ],
            "usage": finished.openai_usage(),
        }

    def completion_chunk(
        self, text: str, finish_reason: str | None = None, *, with_usage: bool = False
    ) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
        }
        if with_usage:
            chunk["usage"] = None
        return chunk

    def completion(
        self, text: str, finished: Finished, max_tokens: int
    ) -> dict[str, Any]:
        response = self.completion_chunk(text, finished.finish_reason(max_tokens))
        response["usage"] = finished.openai_usage()
        return response


def sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"


def embedding_list(
    vectors: list[list[float]], model: str, encoding_format: str, prompt_tokens: int
) -> dict[str, Any]:
    """The embeddings response for ``vectors``, given in input order."""
    return {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": index,
                "embedding": encode_vector(vector, encoding_format),
            }
            for index, vector in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def encode_vector(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # OpenAI's base64 form: little-endian float32.
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector
