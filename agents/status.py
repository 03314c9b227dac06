"""What an agent reports about itself: its status and the engine watchdog."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from agents.jobs import EngineProtocol

# An engine loop that has not gone round for this long is stalled: one decode
# step takes well under a second, a few seconds on an overloaded machine.
ENGINE_STALL_S = 30.0


@dataclass
class Download:
    current: int = 0
    total: int = 0
    filename: str | None = None
    indeterminate: bool = False


@dataclass
class AgentStatus:
    state_application_status: str = "Fresh"
    issues: list[Any] = field(default_factory=list)
    model_path: str | None = None
    uses_chat_template_override: bool = False
    download: Download = field(default_factory=Download)


def engine_issue(
    engine: EngineProtocol, thread: threading.Thread
) -> dict[str, Any] | None:
    """The watchdog: an issue when the engine loop has ended or stalled.

    Requests sent to an agent whose loop is gone would wait for their 504;
    reporting zero slots sends them elsewhere (or to the buffer), and the
    issue shows in the agents list why.
    """
    if not thread.is_alive():
        failure = engine.failure or "it returned"
        return {"EngineStopped": {"error": f"the engine loop ended: {failure}"}}
    stalled_s = time.monotonic() - engine.beat
    if stalled_s > ENGINE_STALL_S:
        return {
            "EngineStalled": {
                "error": f"the engine loop has not gone round for {stalled_s:.0f} s"
            }
        }
    return None
