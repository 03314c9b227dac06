"""What the panel says about agents and requests, in plain words.

Framework-free: agent issues and statuses are Paddler's serde values (see
PROTOCOL.md), request outcomes are those of the request log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from balancer.panel.stats import figure

STATUS_WORDS = {
    "Fresh": "Applying the desired state (draining, then loading the model)",
    "Applied": "Serving the desired state",
    "AttemptedAndRetrying": "Applying the desired state failed; retrying",
    "AttemptedAndNotAppliable": "Cannot apply the desired state, because:",
    "Stuck": "Stuck applying the desired state",
}


def explain_status(status: Any) -> str:
    if isinstance(status, str) and status in STATUS_WORDS:
        return STATUS_WORDS[status]
    return f"Unknown state: {status}"


def _text(value: Any) -> str:
    if isinstance(value, dict):
        if "error" in value:
            return str(value["error"])
        return ", ".join(f"{key} {item}" for key, item in value.items())
    return str(value)


def _path(value: Any) -> str:
    """The ``model_path`` of Paddler's ``ModelPath`` payload (or a bare one)."""
    if isinstance(value, dict) and "model_path" in value:
        return _path(value["model_path"])
    return str(value)


# Paddler's issues whose payload is only the model's path.
PATH_ISSUES = {
    "ModelFileDoesNotExist": "The model file {} does not exist on this agent.",
    "ModelCannotBeLoaded": "llama.cpp cannot load the model {} (the agent's "
    "log says why).",
    "MultimodalProjectionCannotBeLoaded": "The multimodal projection {} cannot "
    "be loaded (missing, not a projection, or made for another model; the "
    "agent's log says why): the agent serves nothing until it loads.",
    "UnableToFindChatTemplate": "The model {} has no chat template of its own: "
    "conversations fail until the desired state sets a chat template override.",
    "HuggingFaceModelDoesNotExist": "Hugging Face has no model {}.",
    "HuggingFacePermissions": "The Hugging Face token may not download {}.",
    "ModelDoesNotExistAtUrl": "There is no model at {}.",
    "DownloadServerDeniedAccess": "The server refused to let this agent download {}.",
    "DownloadServerErrored": "The server failed while sending {}.",
    "DownloadServerRejectedRequest": "The server rejected the download of {}.",
    "DownloadServerIsUnreachable": "The address of {} cannot be reached or is "
    "not allowed (the agent's log says why).",
    "DownloadUrlIsMalformed": "The URL {} is malformed or not http(s).",
    "DownloadInterrupted": "The download of {} was interrupted.",
    "CacheStorageIsFull": "The cache disk is full: {} cannot be stored.",
    "CacheDirectoryIsNotWritable": "The cache directory is not writable: {} "
    "cannot be stored.",
    "ModelCacheIsCorrupted": "The cached copy of {} cannot be used.",
}


def explain_issue(issue: Any) -> str:
    """One sentence an operator can act on, for one agent issue."""
    if issue == "UnableToFindChatTemplate":
        return PATH_ISSUES[issue].format("served")
    if not isinstance(issue, dict) or len(issue) != 1:
        return f"Unknown issue: {issue}"
    ((variant, value),) = issue.items()
    if variant in PATH_ISSUES:
        return PATH_ISSUES[variant].format(_path(value))
    if variant == "ChatTemplateDoesNotCompile":
        return f"The chat template does not compile: {_text(value)}."
    if variant == "ModelDownloadFailed":
        where = value.get("model_path", "?") if isinstance(value, dict) else value
        return f"Downloading the model {where} failed: {_text(value)}."
    if variant == "SlotCannotStart":
        return f"A slot cannot start: {_text(value)}."
    if variant == "DesiredStateIsInvalid":
        return f"The desired state is invalid: {_text(value)}."
    if variant == "EngineStopped":
        return (
            f"The agent's decode loop stopped ({_text(value)}): it takes no "
            "requests while it reloads the model."
        )
    if variant == "EngineStalled":
        return (
            f"The agent's decode loop is stuck ({_text(value)}): it takes no "
            "requests until the loop goes on."
        )
    if variant == "UnsupportedModelSource":
        return f"This agent cannot fetch models from a {value} source."
    return f"{variant}: {_text(value)}"


@dataclass(frozen=True)
class Outcome:
    """How a request ended, as a badge: its label, tone and explanation."""

    label: str
    tone: str  # "ok", "muted" or "error"
    title: str


OUTCOMES = {
    "done": Outcome("done", "ok", "Finished normally"),
    "cancelled": Outcome(
        "cancelled", "muted", "The client stopped it or went away before the end"
    ),
    "503": Outcome("503", "error", "Buffer full: no slot free and no room to wait"),
    "504": Outcome(
        "504", "error", "Timed out waiting for a free slot or for the next token"
    ),
    "502": Outcome("502", "error", "The agent serving it disappeared mid-stream"),
}


def outcome_badge(outcome: Any) -> Outcome:
    text = str(outcome)
    return OUTCOMES.get(text) or Outcome(text, "error", f"Ended with {text}")


def format_ms(value: Any) -> str:
    """A duration for people: "3.2 ms", "381 ms", "12.4 s"; a dash if unknown."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "\N{EN DASH}"
    if value >= 10_000:
        return f"{value / 1000:.1f} s"
    if value >= 100:
        return f"{value:.0f} ms"
    return f"{value:.1f} ms"


def request_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """A request log record with what the requests page shows beside it."""
    finished = record.get("finished_at")
    return {
        **record,
        "badge": outcome_badge(record.get("outcome")),
        "queue_wait": format_ms(record.get("queue_wait_ms")),
        "time_to_first_token": format_ms(record.get("time_to_first_token_ms")),
        "tokens_per_second": figure(record, "tokens_per_second"),
        "finished_at": (
            datetime.fromtimestamp(finished, tz=UTC)
            if isinstance(finished, (int, float))
            else None
        ),
    }


def outcome_matches(record: Mapping[str, Any], wanted: str) -> bool:
    """Whether a record belongs under the requests page's ``wanted`` filter."""
    if wanted == "errors":
        return outcome_badge(record.get("outcome")).tone == "error"
    if wanted in ("done", "cancelled"):
        return str(record.get("outcome")) == wanted
    return True
