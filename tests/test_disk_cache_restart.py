"""The disk tier across a restart of the agent process: a conversation whose
state went to disk is routed back to the restarted agent, restored from its
file, and answered as a fresh evaluation answers it, token for token.

Real processes: Redis, daphne and ``manage.py run_agent`` serving the demo
model greedily (the tests' desired state), one slot, ``--cache-dir`` on a
temporary directory.  A second conversation taking the slot saves the first
to host memory and writes it to disk; SIGTERM lets pending writes land; a new
agent process over the same directory reports the file's routing hashes.
"""

from __future__ import annotations

import signal
from pathlib import Path

from tests.support.fleet import Agent, Fleet, request_log
from tests.support.kv_tiers import (
    Answer,
    agent_reports,
    chat,
    disk_report,
    wait_for_idle,
    wait_ready,
)
from tests.support.processes import wait_until
from tests.support.web import WebServer

NAME = "keeper"
MAX_TOKENS = 8
QUESTION = "I want to ride my bicycle to the coast this weekend. How should I prepare?"
OTHER_QUESTION = "Which houseplants grow well in a dark flat with a north window?"


def start_keeper(fleet: Fleet, directory: Path) -> Agent:
    agent = fleet.agent(NAME, 1, "--cache-dir", str(directory), "--cache-disk-mb", "64")
    wait_ready(fleet.webs[0], agent, 1)
    return agent


def stop(fleet: Fleet, agent: Agent) -> None:
    """SIGTERM, as a supervisor stops it; gone from the registry after."""
    agent.stop(signal.SIGTERM)
    assert agent.process.returncode == 0, agent.log.read_text()[-3000:]
    wait_until(lambda: NAME not in agent_reports(fleet), 30, "the agent to deregister")


def latest_record(fleet: Fleet) -> dict[str, object]:
    return max(request_log(fleet), key=lambda r: r["finished_at"])


def agent_id(web: WebServer) -> str:
    (agent,) = web.agents()
    return str(agent["id"])


def test_a_conversation_comes_back_from_disk_after_the_agent_restarts(
    fleet: Fleet, tmp_path: Path
) -> None:
    web = fleet.web()
    directory = tmp_path / "kv"
    first_agent = start_keeper(fleet, directory)
    history = [{"role": "user", "content": QUESTION}]
    first = chat(web, history, MAX_TOKENS)
    wait_for_idle(web)
    # The other conversation takes the one slot: the first is saved.
    chat(web, [{"role": "user", "content": OTHER_QUESTION}], MAX_TOKENS)
    # Stopped at once: the write may still be queued, and must land anyway.
    stop(fleet, first_agent)
    assert list(directory.glob("*.kv")), "no state on disk"

    restarted = start_keeper(fleet, directory)
    restarted_id = agent_id(web)
    assert disk_report(fleet, NAME)["files"] >= 1
    next_turn = [
        *history,
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "And what should I eat on the way?"},
    ]
    restored = chat(web, next_turn, MAX_TOKENS)
    record = latest_record(fleet)
    # Routed by the file's hashes the new process reported, restored from it:
    # the first turn's prompt is not evaluated again.
    assert record["agent_id"] == restarted_id
    assert str(record["why"]).startswith("host-tier cache match"), record["why"]
    assert restored.usage["cached_prompt_tokens"] >= first.usage["prompt_tokens"]
    assert record["cached_prompt_tokens"] == restored.usage["cached_prompt_tokens"]
    wait_until(
        lambda: disk_report(fleet, NAME)["hits"] == 1, 30, "the disk hit reported"
    )
    stop(fleet, restarted)

    # The same turn on an agent with no KV tier at all: evaluated afresh.
    fresh_agent = fleet.agent(NAME, 1, "--cache-ram-mb", "0", "--cache-dir", "")
    wait_ready(web, fresh_agent, 1)
    fresh: Answer = chat(web, next_turn, MAX_TOKENS)
    assert fresh.usage["cached_prompt_tokens"] <= 1, fresh.usage
    assert fresh.usage["prompt_tokens"] == restored.usage["prompt_tokens"]
    assert restored.pieces == fresh.pieces
    assert len(fresh.pieces) > 1
