"""Conversations over the Paddler HTTP API, and the agents' reports of their
KV tiers, for the tests of the host-memory and disk tiers end to end."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from balancer import keys
from tests.support.fleet import Agent, Fleet
from tests.support.processes import wait_until
from tests.support.web import WebServer

# Loading the demo model on a busy 2-core machine takes a while.
AGENT_READY_S = 120


@dataclass
class Answer:
    # The ContentToken pieces, in order: equal pieces are equal tokens.
    pieces: list[str]
    usage: dict[str, Any]

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def chat(web: WebServer, history: list[dict[str, str]], max_tokens: int) -> Answer:
    """One turn of a conversation, answered in full."""
    response = httpx.post(
        f"{web.url}/api/v1/continue_from_conversation_history",
        json={"conversation_history": history, "max_tokens": max_tokens},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    lines = [json.loads(line) for line in response.text.splitlines() if line]
    assert all("Response" in line for line in lines), lines[-1]
    generated = [line["Response"]["response"]["GeneratedToken"] for line in lines]
    *tokens, done = generated
    assert "Done" in done, done
    return Answer([token["ContentToken"] for token in tokens], done["Done"]["usage"])


def agent_reports(fleet: Fleet) -> dict[str, dict[str, Any]]:
    """Every live agent's last status report, by agent name."""
    client = fleet.client()
    try:
        members: set[bytes] = client.smembers(keys.agents_set())  # type: ignore[assignment]
        reports: dict[str, dict[str, Any]] = {}
        for member in members:
            raw: bytes | None = client.get(keys.agent_status(member.decode()))  # type: ignore[assignment]
            if raw is not None:
                report = json.loads(raw)
                reports[report["name"]] = report
        return reports
    finally:
        client.close()


def disk_report(fleet: Fleet, name: str) -> dict[str, Any]:
    """What the agent ``name`` last reported of its disk tier."""
    disk: dict[str, Any] = agent_reports(fleet)[name]["host_cache"]["disk"]
    return disk


def wait_ready(web: WebServer, agent: Agent, count: int) -> None:
    """Until ``count`` agents serve; the log of ``agent`` if they do not."""
    try:
        web.wait_for_ready_agents(count, timeout=AGENT_READY_S)
    except TimeoutError:
        raise RuntimeError(agent.log.read_text()[-3000:]) from None


def wait_for_idle(web: WebServer) -> None:
    """Until the agents report every slot idle."""
    wait_until(
        lambda: all(a["slots_processing"] == 0 for a in web.agents()),
        30,
        "idle agents",
    )
