"""Payloads exchanged between the web tier and agents.

Control messages (an inference request, a cancellation, a desired-state change)
travel on the Channels layer.  Token batches travel on a Redis list per web
process (see ``keys.web_inbox``): one push per decode step and destination
carries the new output of every stream bound there, so the message rate does
not grow with the token rate.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

from balancer.contract import (
    OutputItem,
    RequestKind,
    RequestParams,
    content_token_item,
    content_token_text,
)


class InferenceRequestEvent(TypedDict):
    type: Literal["inference.request"]
    request_id: str
    # Redis list the agent pushes this request's output to.
    reply_to: str
    kind: RequestKind
    params: RequestParams


class InferenceCancelEvent(TypedDict):
    type: Literal["inference.cancel"]
    request_id: str


class DesiredStateChangedEvent(TypedDict):
    type: Literal["desired_state.changed"]
    state: dict[str, Any]


# What arrives on an agent's own channel; ``type`` says which.
AgentMessage = InferenceRequestEvent | InferenceCancelEvent | DesiredStateChangedEvent


# A content token, the bulk of all output, travels as [request_id, text]
# instead of a whole OutputItem: smaller to send, faster to parse.
CompactToken = list[str]


class OutputBatch(TypedDict):
    agent_id: str
    agent_name: str
    items: list[OutputItem | CompactToken]


def compact_item(item: OutputItem) -> OutputItem | CompactToken:
    if not item["final"] and item["meta"] is None:
        text = content_token_text(item)
        if text is not None:
            return [item["request_id"], text]
    return item


def expand_item(raw: OutputItem | CompactToken) -> OutputItem:
    if isinstance(raw, list):
        return content_token_item(raw[0], raw[1])
    return raw
