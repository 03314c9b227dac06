"""``/metrics``: the fleet's state and the tier-wide counters, as Prometheus text.

``prometheus_client`` renders them (names, escaping, types); the figures are
not its in-process metrics but what Redis holds for the whole tier, read once
per scrape and handed to a collector of our own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import redis.asyncio as aioredis
from django.conf import settings
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from balancer import registry
from balancer.host_tier import DiskFigure, disk_tier, host_tier
from balancer.metrics.counters import TIMINGS, TOKENS, Counters, read_counters
from balancer.metrics.fleet import fleet_pools


# eq=False: a registry keeps its collectors in a dict, by identity.
@dataclass(frozen=True, eq=False)
class FleetCollector(Collector):
    """The metric families of one scrape, from what was read for it.

    ``collect`` is synchronous and the web tier's Redis client is not, so the
    view reads first and the collector only shapes what was read.
    """

    agents: list[registry.AgentRecord]
    # Buffered requests by pool.
    buffered: dict[str, int]
    counters: Counters

    def collect(self) -> Iterator[Metric]:
        agents = self.agents
        yield GaugeMetricFamily(
            "paddler_slots_processing",
            "Slots generating right now, fleet-wide.",
            value=sum(a.slots_processing for a in agents),
        )
        yield GaugeMetricFamily(
            "paddler_slots_total",
            "Slots that accept work, fleet-wide.",
            value=sum(a.slots_total for a in agents),
        )
        yield GaugeMetricFamily(
            "paddler_requests_buffered",
            "Requests waiting for a free slot, fleet-wide.",
            value=sum(self.buffered.values()),
        )
        yield GaugeMetricFamily(
            "paddler_agents", "Agents with a live heartbeat.", value=len(agents)
        )
        processing = GaugeMetricFamily(
            "paddler_agent_slots_processing",
            "Slots generating, per agent.",
            labels=["agent"],
        )
        total = GaugeMetricFamily(
            "paddler_agent_slots_total",
            "Slots that accept work, per agent.",
            labels=["agent"],
        )
        for agent in agents:
            processing.add_metric([agent.name], agent.slots_processing)
            total.add_metric([agent.name], agent.slots_total)
        yield processing
        yield total
        yield from self._host_tiers()
        yield from self._disk_tiers()
        requests = CounterMetricFamily(
            "paddler_requests_total",
            "Finished requests by kind and outcome.",
            labels=["kind", "outcome"],
        )
        for (kind, outcome), count in sorted(self.counters.requests.items()):
            requests.add_metric([kind, outcome], count)
        yield requests
        tokens = CounterMetricFamily(
            "paddler_tokens_total",
            "Tokens: prompt, cached_prompt, generated.",
            labels=["type"],
        )
        for name in TOKENS:
            tokens.add_metric([name], self.counters.tokens[name])
        yield tokens
        yield from self._per_pool()
        for name in TIMINGS:
            histogram = self.counters.histograms[name]
            yield HistogramMetricFamily(
                f"paddler_{name}_milliseconds",
                f"Request {name.replace('_', ' ')} in milliseconds.",
                buckets=histogram.buckets,
                sum_value=histogram.sum,
            )

    def _per_pool(self) -> Iterator[Metric]:
        """The same figures by model pool: an autoscaler grows the pool
        whose buffer fills; the fleet totals above stay as they were."""
        labels = ["pool"]
        families = {
            name: GaugeMetricFamily(f"paddler_pool_{name}", text, labels=labels)
            for name, text in (
                ("agents", "Agents with a live heartbeat, per pool."),
                ("slots_total", "Slots that accept work, per pool."),
                ("slots_processing", "Slots generating right now, per pool."),
                ("requests_buffered", "Requests waiting for a free slot, per pool."),
            )
        }
        for pool, buffered in sorted(self.buffered.items()):
            members = [a for a in self.agents if a.pool == pool]
            families["agents"].add_metric([pool], len(members))
            families["slots_total"].add_metric(
                [pool], sum(a.slots_total for a in members)
            )
            families["slots_processing"].add_metric(
                [pool], sum(a.slots_processing for a in members)
            )
            families["requests_buffered"].add_metric([pool], buffered)
        yield from families.values()
        requests = CounterMetricFamily(
            "paddler_pool_requests_total",
            "Finished requests by pool, kind and outcome.",
            labels=["pool", "kind", "outcome"],
        )
        for (pool, kind, outcome), count in sorted(self.counters.pool_requests.items()):
            requests.add_metric([pool, kind, outcome], count)
        yield requests
        tokens = CounterMetricFamily(
            "paddler_pool_tokens_total",
            "Tokens by pool: prompt, cached_prompt, generated.",
            labels=["pool", "type"],
        )
        for (pool, name), count in sorted(self.counters.pool_tokens.items()):
            tokens.add_metric([pool, name], count)
        yield tokens

    def _host_tiers(self) -> Iterator[Metric]:
        """Per agent: its host-memory KV tier (see ``agents.host_cache``)."""
        families = {
            "entries": GaugeMetricFamily(
                "paddler_agent_host_cache_entries",
                "KV cache states held in the agent's host-memory tier.",
                labels=["agent"],
            ),
            "bytes": GaugeMetricFamily(
                "paddler_agent_host_cache_bytes",
                "Bytes the agent's host-memory tier holds.",
                labels=["agent"],
            ),
            "budget_bytes": GaugeMetricFamily(
                "paddler_agent_host_cache_budget_bytes",
                "The byte budget of the agent's host-memory tier (0: off).",
                labels=["agent"],
            ),
            "hit_rate": GaugeMetricFamily(
                "paddler_agent_host_cache_hit_rate",
                "Share of the tier's lookups that restored a state.",
                labels=["agent"],
            ),
        }
        lookups = CounterMetricFamily(
            "paddler_agent_host_cache_lookups",
            "Prompts the agent looked up in its host-memory tier.",
            labels=["agent"],
        )
        hits = CounterMetricFamily(
            "paddler_agent_host_cache_hits",
            "Lookups that restored a state from the host-memory tier.",
            labels=["agent"],
        )
        for agent in self.agents:
            tier = host_tier(agent.report)
            if tier is None:
                continue
            for field, family in families.items():
                family.add_metric([agent.name], float(tier[field]))  # type: ignore[literal-required]
            lookups.add_metric([agent.name], tier["lookups"])
            hits.add_metric([agent.name], tier["hits"])
        yield from families.values()
        yield lookups
        yield hits

    def _disk_tiers(self) -> Iterator[Metric]:
        """Per agent that has one: its disk KV tier (see ``agents.disk_cache``),
        as ``paddler_agent_disk_cache_<figure>``.  The families are there with
        no samples when no agent has a disk tier."""
        families: dict[DiskFigure, GaugeMetricFamily | CounterMetricFamily] = {}
        for figure, family, text in DISK_FAMILIES:
            families[figure] = family(
                f"paddler_agent_disk_cache_{figure}", text, labels=["agent"]
            )
        for agent in self.agents:
            tier = disk_tier(agent.report)
            if tier is None:
                continue
            for figure, metric in families.items():
                metric.add_metric([agent.name], float(tier[figure]))
        yield from families.values()


# The disk tier's families: the figure of ``DiskTier`` each shows, its type,
# its help text.  The counters count since the agent started.
DISK_FAMILIES: list[
    tuple[DiskFigure, type[GaugeMetricFamily] | type[CounterMetricFamily], str]
] = [
    ("files", GaugeMetricFamily, "KV cache states held in the agent's disk tier."),
    ("bytes", GaugeMetricFamily, "Bytes the files of the agent's disk tier hold."),
    (
        "budget_bytes",
        GaugeMetricFamily,
        "The byte budget of the agent's disk tier (0: nothing is written).",
    ),
    (
        "hit_rate",
        GaugeMetricFamily,
        "Share of the host tier's lookups that a file of the disk tier served.",
    ),
    ("hits", CounterMetricFamily, "States read back from the agent's disk tier."),
    ("writes", CounterMetricFamily, "States written to the agent's disk tier."),
    (
        "corrupt",
        CounterMetricFamily,
        "Files of the agent's disk tier found corrupt, and deleted.",
    ),
    (
        "foreign",
        CounterMetricFamily,
        "Files of another model, context shape or runtime met, left alone.",
    ),
    (
        "dropped_writes",
        CounterMetricFamily,
        "States not written because the disk tier's writer fell behind.",
    ),
]


async def prometheus_text(redis: aioredis.Redis) -> str:
    agents = await registry.list_agents(redis)
    collector = FleetCollector(
        agents=agents,
        buffered=await registry.buffered_counts(
            redis,
            settings.PADDLER_BUFFERED_REQUEST_TIMEOUT_MS,
            await fleet_pools(agents),
        ),
        counters=await read_counters(redis),
    )
    # A registry per scrape, never the process-wide default: it holds this
    # scrape's figures only, and none of the process's own metrics.
    scrape = CollectorRegistry()
    scrape.register(collector)
    return generate_latest(scrape).decode()
