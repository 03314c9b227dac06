"""Reading the Paddler HTTP API's NDJSON streams."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from tests.support.web import WebServer


@contextmanager
def raw_prompt_stream(
    web: WebServer, prompt: str, max_tokens: int, timeout: float = 120
) -> Iterator[httpx.Response]:
    """A streamed ``/api/v1/continue_from_raw_prompt`` request, answered 200."""
    with httpx.stream(
        "POST",
        f"{web.url}/api/v1/continue_from_raw_prompt",
        json={"raw_prompt": prompt, "max_tokens": max_tokens},
        timeout=timeout,
    ) as response:
        assert response.status_code == 200, response.read()
        yield response


def read_ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.iter_lines() if line.strip()]


def stream_text(lines: list[dict[str, Any]]) -> str:
    return "".join(
        line["Response"]["response"]["GeneratedToken"].get("ContentToken", "")
        for line in lines
        if "Response" in line
    )
