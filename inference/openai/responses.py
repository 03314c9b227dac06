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


# Stands in for a text piece while a chunk's JSON is made once (see
# ``TextEvents``); it comes out of json.dumps as it is.
_TEXT_MARK = "@@text-piece@@"


class TextEvents:
    """The event of each piece of a stream's text, pre-encoded.

    A chunk that carries text differs from the stream's other text chunks
    only in the text: its JSON before and after the text is encoded once,
    and each piece costs one ``json.dumps`` of its text.  The bytes are those
    of ``sse(reply.chat_chunk({"content": text}, ...))`` (or
    ``completion_chunk``): json.dumps writes keys in order, with the same
    separators and escapes for the text alone as inside the chunk.
    """

    def __init__(self, reply: Reply, *, chat: bool, with_usage: bool) -> None:
        chunk = (
            reply.chat_chunk({"content": _TEXT_MARK}, with_usage=with_usage)
            if chat
            else reply.completion_chunk(_TEXT_MARK, with_usage=with_usage)
        )
        # The text comes after the id and the model (which a client may have
        # named with the mark in it): the last mark is the text's.
        before, _, after = sse(chunk).rpartition(json.dumps(_TEXT_MARK).encode())
        self.before = before
        self.after = after

    def event(self, text: str) -> bytes:
        return self.before + json.dumps(text).encode() + self.after


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
