"""The host tier on the web tier: what the dashboard feed, Prometheus and
StatsD show of an agent's report.  An agent's status report as the worker
writes it (``AgentWorker.snapshot``); StatsD lines on a real UDP socket."""

from __future__ import annotations

import socket
from typing import Any

import statsd
from prometheus_client import CollectorRegistry, generate_latest

from agents.worker import AgentWorker
from balancer.host_tier import host_prefixes, host_tier
from balancer.metrics.counters import TIMINGS, TOKENS, Counters, Histogram
from balancer.metrics.prometheus import FleetCollector
from balancer.metrics.statsd_reporting import send_fleet_gauges
from balancer.panel.live import dashboard_agent
from balancer.registry import AgentRecord

MODEL = "model|context=1024"


def record(name: str, report: dict[str, Any]) -> AgentRecord:
    return AgentRecord(
        id=report["id"],
        name=name,
        channel="",
        slots_total=1,
        slots_processing=0,
        slots_claimed=0,
        report={**report, "name": name},
    )


def tiered_agent() -> AgentRecord:
    """An agent whose tier holds one state and restored one of two lookups."""
    worker = AgentWorker(name="tiered", slots=1, cache_ram_mb=2)
    tier = worker.host_cache
    tier.put(MODEL, list(range(30)), b"x" * 1000, 1000, ["a", "b"])
    tier.put(MODEL, list(range(100, 130)), b"y" * 500, 500, ["c"])
    assert tier.find(MODEL, [-1] * 20) is None
    found = tier.find(MODEL, list(range(40)))
    assert found is not None
    tier.restored(found[0], 30, elapsed_ms=1.0)
    return record("tiered", worker.snapshot())


def test_the_report_reads_as_figures_and_hashes() -> None:
    agent = tiered_agent()
    assert host_tier(agent.report) == {
        "entries": 1,
        "bytes": 500,
        "budget_bytes": 2 * 2**20,
        "lookups": 2,
        "hits": 1,
        "hit_rate": 0.5,
    }
    assert host_prefixes(agent.report) == frozenset({"c"})
    # An agent that reports no tier (older, or without an engine) has none.
    assert host_tier({}) is None
    assert host_prefixes({}) == frozenset()


def test_the_dashboard_shows_each_agents_host_tier() -> None:
    shown = dashboard_agent(tiered_agent())
    assert shown["host_cache"]["entries"] == 1
    assert shown["host_cache"]["bytes"] == 500
    assert shown["host_cache"]["budget_bytes"] == 2 * 2**20
    assert shown["host_cache"]["hit_rate"] == 0.5
    # The hashes are for routing, not for people.
    assert "prefixes" not in shown["host_cache"]
    assert shown["name"] == "tiered"


def test_prometheus_carries_each_agents_host_tier() -> None:
    collector = FleetCollector(
        agents=[tiered_agent()],
        buffered={"default": 0},
        counters=Counters(
            requests={},
            pool_requests={},
            pool_tokens={},
            tokens=dict.fromkeys(TOKENS, 0.0),
            histograms={
                name: Histogram(buckets=[("+Inf", 0.0)], sum=0.0) for name in TIMINGS
            },
        ),
    )
    scrape = CollectorRegistry()
    scrape.register(collector)
    text = generate_latest(scrape).decode()
    assert 'paddler_agent_host_cache_entries{agent="tiered"} 1.0' in text
    assert 'paddler_agent_host_cache_bytes{agent="tiered"} 500.0' in text
    assert 'paddler_agent_host_cache_budget_bytes{agent="tiered"} 2.097152e+06' in text
    assert 'paddler_agent_host_cache_hit_rate{agent="tiered"} 0.5' in text
    assert 'paddler_agent_host_cache_lookups_total{agent="tiered"} 2.0' in text
    assert 'paddler_agent_host_cache_hits_total{agent="tiered"} 1.0' in text


def test_statsd_carries_each_agents_host_tier() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(5)
    try:
        port = listener.getsockname()[1]
        client = statsd.Client("fleet", statsd.Connection("127.0.0.1", port))
        send_fleet_gauges(client, [tiered_agent()], {"default": 0})
        lines: set[str] = set()
        while (
            not {
                "fleet.agent.tiered.host_cache_hits:1|g",
                "fleet.agent.tiered.host_cache_lookups:2|g",
            }
            <= lines
        ):
            lines.update(listener.recv(65536).decode().splitlines())
    finally:
        listener.close()
    assert "fleet.agent.tiered.host_cache_entries:1|g" in lines
    assert "fleet.agent.tiered.host_cache_bytes:500|g" in lines
    assert "fleet.agent.tiered.host_cache_budget_bytes:2097152|g" in lines
    assert "fleet.agent.tiered.host_cache_hit_rate:0.5|g" in lines
