"""Payloads exchanged between the web tier and agents.

Control messages (an inference request, a cancellation, a desired-state change)
travel on the Channels layer.  Token batches travel on a Redis list per web
process (see ``keys.web_inbox``): one push per decode step and destination
carries the new output of every stream bound there, so the message rate does
not grow with the token rate.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict


class InferenceRequestEvent(TypedDict):
    type: Literal["inference.request"]
    request_id: str
    # Redis list the agent pushes this request's output to.
    reply_to: str
    # "raw_prompt", "conversation" or "embeddings".
    kind: str
    params: dict[str, Any]


class InferenceCancelEvent(TypedDict):
    type: Literal["inference.cancel"]
    request_id: str


class DesiredStateChangedEvent(TypedDict):
    type: Literal["desired_state.changed"]
    state: dict[str, Any]


class OutputItem(TypedDict):
    """One piece of a request's output, as the agent sends it back.

    ``response`` is the Paddler ``response`` payload (for instance
    ``{"GeneratedToken": {"ContentToken": "hi"}}``); ``error`` is an
    ``{"code", "description"}`` pair instead.  ``final`` marks the last item of
    a request, after which its slot is free again.
    """

    request_id: str
    response: dict[str, Any] | str | None
    error: dict[str, Any] | None
    final: bool
    # For the web tier only, never sent to clients: e.g. {"slot": 1}.
    meta: dict[str, Any] | None


# A content token, the bulk of all output, travels as [request_id, text]
# instead of a whole OutputItem: smaller to send, faster to parse.
CompactToken = list[str]


class OutputBatch(TypedDict):
    agent_id: str
    agent_name: str
    items: list[OutputItem | CompactToken]


def compact_item(item: OutputItem) -> OutputItem | CompactToken:
    response = item["response"]
    if not item["final"] and item["meta"] is None and isinstance(response, dict):
        generated = response.get("GeneratedToken")
        if isinstance(generated, dict) and len(generated) == 1:
            text = generated.get("ContentToken")
            if isinstance(text, str):
                return [item["request_id"], text]
    return item


def expand_item(raw: OutputItem | CompactToken) -> OutputItem:
    if isinstance(raw, list):
        return {
            "request_id": raw[0],
            "response": {"GeneratedToken": {"ContentToken": raw[1]}},
            "error": None,
            "final": False,
            "meta": None,
        }
    return raw


def error_item(request_id: str, code: int, description: str) -> OutputItem:
    """The final item of a request that ended with an error."""
    return {
        "request_id": request_id,
        "response": None,
        "error": {"code": code, "description": description},
        "final": True,
        "meta": None,
    }
