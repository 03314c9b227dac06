"""StatsD lines on a real UDP socket, and /metrics, against the fleet's state."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.constants import AUTH, ENDLESS_PROMPT
from tests.support.fleet import Fleet
from tests.support.processes import wait_until
from tests.support.statsd import StatsdListener
from tests.support.web import WebServer


@pytest.fixture
def statsd() -> Iterator[StatsdListener]:
    listener = StatsdListener()
    yield listener
    listener.close()


def statsd_web(fleet: Fleet, statsd: StatsdListener, **env: str) -> WebServer:
    return fleet.web(
        PADDLER_STATSD_ADDR=statsd.address,
        PADDLER_STATSD_INTERVAL_MS="200",
        PADDLER_STATSD_PREFIX="fleet",
        **env,
    )


def start_request(
    web: WebServer, max_tokens: int, results: list[Any]
) -> threading.Thread:
    def run() -> None:
        results.append(
            httpx.post(
                f"{web.url}/api/v1/continue_from_raw_prompt",
                # Greedy, this prompt does not end before max_tokens.
                json={"raw_prompt": ENDLESS_PROMPT, "max_tokens": max_tokens},
                timeout=600,
            )
        )

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_gauges_follow_the_fleet_state(fleet: Fleet, statsd: StatsdListener) -> None:
    # The second request waits in the buffer until the first ends: however
    # slow the machine, it must not time out there.
    web = statsd_web(fleet, statsd, PADDLER_BUFFERED_REQUEST_TIMEOUT_MS="600000")
    fleet.agent("gauged", slots=1)
    web.wait_for_ready_agents(1)
    wait_until(lambda: statsd.latest("fleet.slots_total") == "1|g", 10, "slots_total")
    assert statsd.latest("fleet.slots_processing") == "0|g"
    assert statsd.latest("fleet.agent.gauged.slots_total") == "1|g"
    results: list[Any] = []
    running = start_request(web, 100, results)
    wait_until(
        lambda: statsd.latest("fleet.slots_processing") == "1|g", 10, "processing"
    )
    waiting = start_request(web, 2, results)
    wait_until(
        lambda: statsd.latest("fleet.requests_buffered") == "1|g", 10, "buffered"
    )
    running.join()
    waiting.join()
    wait_until(lambda: statsd.latest("fleet.requests_buffered") == "0|g", 10, "empty")
    wait_until(lambda: statsd.latest("fleet.slots_processing") == "0|g", 10, "idle")
    assert [r.status_code for r in results] == [200, 200]
    # Each request is counted once, with its timings and tokens.
    done = [
        line for _, line in statsd.lines if line == "fleet.requests.raw_prompt.done:1|c"
    ]
    assert len(done) == 2
    names = {line.split(":")[0] for _, line in statsd.lines}
    assert {
        "fleet.queue_wait",
        "fleet.time_to_first_token",
        "fleet.duration",
        "fleet.tokens.generated",
        "fleet.tokens.prompt",
    } <= names
    # django-statsd times the HTTP views too.
    assert any(name.startswith("fleet.http.") for name in names)


def test_two_replicas_do_not_double_the_fleet_gauges(
    fleet: Fleet, statsd: StatsdListener
) -> None:
    first = statsd_web(fleet, statsd)
    second = statsd_web(fleet, statsd)
    fleet.agent("counted")
    first.wait_for_ready_agents(1)
    second.wait_for_ready_agents(1)
    time.sleep(1)
    start = time.monotonic()
    time.sleep(3)
    window = [
        line
        for at, line in statsd.lines
        if start <= at < start + 3 and line.startswith("fleet.slots_total:")
    ]
    # One reporter sends every 200 ms: about 15; two would send about 30.
    assert 10 <= len(window) <= 18
    assert set(window) == {"fleet.slots_total:2|g"}


def test_prometheus_metrics_count_requests_and_tokens(fleet: Fleet) -> None:
    web = fleet.web()
    fleet.agent("scraped")
    web.wait_for_ready_agents(1)
    for _ in range(3):
        response = httpx.post(
            f"{web.url}/api/v1/continue_from_raw_prompt",
            json={"raw_prompt": "Hello", "max_tokens": 4},
            timeout=60,
        )
        assert response.status_code == 200
    text = httpx.get(f"{web.url}/metrics", headers=AUTH).text
    assert 'paddler_requests_total{kind="raw_prompt",outcome="done"} 3' in text
    assert 'paddler_tokens_total{type="generated"} 12' in text
    assert "paddler_slots_total 2" in text
    assert 'paddler_agent_slots_total{agent="scraped"} 2' in text
    assert "paddler_time_to_first_token_milliseconds_count 3" in text
    assert "paddler_requests_buffered 0" in text


# Every family /metrics exposes: (type, help text).  The parser names a counter
# family without its ``_total`` suffix.
FAMILIES = {
    "paddler_slots_processing": (
        "gauge",
        "Slots generating right now, fleet-wide.",
    ),
    "paddler_slots_total": ("gauge", "Slots that accept work, fleet-wide."),
    "paddler_requests_buffered": (
        "gauge",
        "Requests waiting for a free slot, fleet-wide.",
    ),
    "paddler_agents": ("gauge", "Agents with a live heartbeat."),
    "paddler_agent_slots_processing": ("gauge", "Slots generating, per agent."),
    "paddler_agent_slots_total": ("gauge", "Slots that accept work, per agent."),
    "paddler_agent_host_cache_entries": (
        "gauge",
        "KV cache states held in the agent's host-memory tier.",
    ),
    "paddler_agent_host_cache_bytes": (
        "gauge",
        "Bytes the agent's host-memory tier holds.",
    ),
    "paddler_agent_host_cache_budget_bytes": (
        "gauge",
        "The byte budget of the agent's host-memory tier (0: off).",
    ),
    "paddler_agent_host_cache_hit_rate": (
        "gauge",
        "Share of the tier's lookups that restored a state.",
    ),
    "paddler_agent_host_cache_lookups": (
        "counter",
        "Prompts the agent looked up in its host-memory tier.",
    ),
    "paddler_agent_host_cache_hits": (
        "counter",
        "Lookups that restored a state from the host-memory tier.",
    ),
    # The disk tier's: typed and described, with no sample here (the agent
    # has no disk tier; tests/test_disk_cache_panel.py checks their values).
    "paddler_agent_disk_cache_files": (
        "gauge",
        "KV cache states held in the agent's disk tier.",
    ),
    "paddler_agent_disk_cache_bytes": (
        "gauge",
        "Bytes the files of the agent's disk tier hold.",
    ),
    "paddler_agent_disk_cache_budget_bytes": (
        "gauge",
        "The byte budget of the agent's disk tier (0: nothing is written).",
    ),
    "paddler_agent_disk_cache_hit_rate": (
        "gauge",
        "Share of the host tier's lookups that a file of the disk tier served.",
    ),
    "paddler_agent_disk_cache_hits": (
        "counter",
        "States read back from the agent's disk tier.",
    ),
    "paddler_agent_disk_cache_writes": (
        "counter",
        "States written to the agent's disk tier.",
    ),
    "paddler_agent_disk_cache_corrupt": (
        "counter",
        "Files of the agent's disk tier found corrupt, and deleted.",
    ),
    "paddler_agent_disk_cache_foreign": (
        "counter",
        "Files of another model, context shape or runtime met, left alone.",
    ),
    "paddler_agent_disk_cache_dropped_writes": (
        "counter",
        "States not written because the disk tier's writer fell behind.",
    ),
    "paddler_requests": ("counter", "Finished requests by kind and outcome."),
    "paddler_tokens": ("counter", "Tokens: prompt, cached_prompt, generated."),
    # The same by model pool (tests/test_pools.py checks their values).
    "paddler_pool_agents": ("gauge", "Agents with a live heartbeat, per pool."),
    "paddler_pool_slots_total": ("gauge", "Slots that accept work, per pool."),
    "paddler_pool_slots_processing": (
        "gauge",
        "Slots generating right now, per pool.",
    ),
    "paddler_pool_requests_buffered": (
        "gauge",
        "Requests waiting for a free slot, per pool.",
    ),
    "paddler_pool_requests": (
        "counter",
        "Finished requests by pool, kind and outcome.",
    ),
    "paddler_pool_tokens": (
        "counter",
        "Tokens by pool: prompt, cached_prompt, generated.",
    ),
    "paddler_queue_wait_milliseconds": (
        "histogram",
        "Request queue wait in milliseconds.",
    ),
    "paddler_time_to_first_token_milliseconds": (
        "histogram",
        "Request time to first token in milliseconds.",
    ),
    "paddler_duration_milliseconds": (
        "histogram",
        "Request duration in milliseconds.",
    ),
}
# The ``le`` labels as they read today (``5``, not ``5.0``).
BUCKET_BOUNDS = ["5", "10", "25", "50", "100", "250", "500", "1000", "2500"]
BUCKET_BOUNDS += ["5000", "10000", "30000", "+Inf"]
# An agent's name is free text (``run_agent --name``); a quote or a backslash
# in a label value must be escaped, or the whole scrape fails to parse.
NAME_TO_ESCAPE = 'rack "7" \\ east'


def test_metrics_parse_as_prometheus_text_with_every_family_typed(
    fleet: Fleet,
) -> None:
    web = fleet.web()
    fleet.agent(NAME_TO_ESCAPE)
    web.wait_for_ready_agents(1)
    response = httpx.post(
        f"{web.url}/api/v1/continue_from_raw_prompt",
        json={"raw_prompt": "Hello", "max_tokens": 4},
        timeout=60,
    )
    assert response.status_code == 200
    text = httpx.get(f"{web.url}/metrics", headers=AUTH).text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert {
        name: (family.type, family.documentation) for name, family in families.items()
    } == FAMILIES

    def samples(name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for s in families[name].samples
        }

    assert samples("paddler_slots_total") == {("paddler_slots_total", ()): 2}
    assert samples("paddler_agents") == {("paddler_agents", ()): 1}
    agent = (("agent", NAME_TO_ESCAPE),)
    assert samples("paddler_agent_slots_total") == {
        ("paddler_agent_slots_total", agent): 2
    }
    assert samples("paddler_agent_slots_processing") == {
        ("paddler_agent_slots_processing", agent): 0
    }
    assert samples("paddler_requests") == {
        ("paddler_requests_total", (("kind", "raw_prompt"), ("outcome", "done"))): 1
    }
    tokens = samples("paddler_tokens")
    assert tokens[("paddler_tokens_total", (("type", "generated"),))] == 4
    assert {labels for _, labels in tokens} == {
        (("type", name),) for name in ("prompt", "cached_prompt", "generated")
    }
    for name, (kind, _) in FAMILIES.items():
        if kind != "histogram":
            continue
        histogram = samples(name)
        assert [
            dict(labels)["le"]
            for sample, labels in histogram
            if sample.endswith("_bucket")
        ] == BUCKET_BOUNDS
        assert histogram[(f"{name}_bucket", (("le", "+Inf"),))] == 1
        assert histogram[(f"{name}_count", ())] == 1
        assert histogram[(f"{name}_sum", ())] >= 0
