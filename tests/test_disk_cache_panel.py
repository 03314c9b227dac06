"""The disk tier on the web tier: the dashboard (in Chromium), a Prometheus
scrape of ``/metrics`` and StatsD on a real UDP socket show what a real agent
started with ``--cache-dir`` reports of its disk tier, and show no disk tier
for an agent without one.

One fleet for the module: a web tier that sends StatsD, an agent of one slot
whose host tier holds one conversation's state (1 MiB) over a disk tier whose
directory held a corrupt file when it started, and an agent with no disk
tier.  Three conversations through the one slot push the first out of host
memory (every stored state is written to disk too); its next turn has the
state read back from its file: a disk hit.
"""

from __future__ import annotations

import ctypes
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser
from playwright.sync_api import expect as page_expect
from prometheus_client.parser import text_string_to_metric_families

from agents.worker import AgentWorker
from balancer.host_tier import disk_tier, host_tier
from tests.support.constants import AUTH
from tests.support.fleet import Fleet
from tests.support.kv_tiers import (
    agent_reports,
    chat,
    disk_report,
    wait_for_idle,
    wait_ready,
)
from tests.support.processes import wait_until
from tests.support.statsd import StatsdListener
from tests.support.web import WebServer
from tests.test_panel import Tab, browser
from tests.test_panel_images import add_operator, operator_tab

__all__ = ["browser"]  # the browser fixture, shared with test_panel

# Names without characters StatsD names replace.
DISKED = "disked"
PLAIN = "plain"
DISK_MB = 64
# About 40 tokens a state: with the F16 cache of the tests' desired state
# (18 KiB a token on the demo model) one state fits 1 MiB of host memory, two
# do not.
QUESTIONS = (
    "My bicycle chain keeps slipping whenever I pedal hard up a steep hill on the"
    " way to work. What should I check first?",
    "The rear brake of my old bicycle squeaks loudly every time I ride in the rain"
    " on the way home. How do I quiet it?",
    "The front tyre of my bicycle loses air slowly over a few days, but I cannot"
    " see any hole in it. How do I find the leak?",
)


@dataclass
class DiskFleet:
    fleet: Fleet
    web: WebServer
    statsd: StatsdListener


@pytest.fixture(scope="module")
def disk_fleet(
    tmp_path_factory: pytest.TempPathFactory, greedy_state: dict[str, Any]
) -> Iterator[DiskFleet]:
    tmp = tmp_path_factory.mktemp("disk-panel")
    statsd = StatsdListener()
    built = Fleet(tmp, greedy_state)
    try:
        web = built.web(
            PADDLER_STATSD_ADDR=statsd.address,
            PADDLER_STATSD_INTERVAL_MS="200",
            PADDLER_STATSD_PREFIX="fleet",
        )
        add_operator(web)
        directory = tmp / "kv"
        directory.mkdir()
        # A file a bad disk mangled: the agent deletes it when it starts.
        (directory / f"{'0' * 32}.kv").write_bytes(b"PADDLER-KV but no header")
        disked = built.agent(
            DISKED,
            1,
            "--cache-dir",
            str(directory),
            "--cache-disk-mb",
            str(DISK_MB),
            "--cache-ram-mb",
            "1",
        )
        wait_ready(web, disked, 1)
        read_a_conversation_back_from_disk(built, web, directory)
        plain = built.agent(PLAIN, 1, env={"PADDLER_AGENT_CACHE_DIR": ""})
        wait_ready(web, plain, 2)
        yield DiskFleet(built, web, statsd)
    finally:
        built.stop()
        statsd.close()


def read_a_conversation_back_from_disk(
    fleet: Fleet, web: WebServer, directory: Path
) -> None:
    histories = [[{"role": "user", "content": question}] for question in QUESTIONS]
    first_prompt = 0
    for history in histories:
        answer = chat(web, history, max_tokens=6)
        first_prompt = first_prompt or answer.usage["prompt_tokens"]
        history.append({"role": "assistant", "content": answer.text})
        wait_for_idle(web)
    # The third conversation took the slot: the second is saved, and the
    # first, saved when the second took it, leaves host memory for it.
    wait_until(
        lambda: disk_report(fleet, DISKED)["writes"] == 2, 30, "two states on disk"
    )
    assert agent_reports(fleet)[DISKED]["host_cache"]["entries"] == 1
    first = [*histories[0], {"role": "user", "content": "And what will it cost?"}]
    answer = chat(web, first, max_tokens=6)
    # Restored: the first turn's prompt is not evaluated again.
    assert answer.usage["cached_prompt_tokens"] >= first_prompt, answer.usage
    # The third conversation's state, saved before the first took the slot.
    wait_until(
        lambda: (
            (disk_report(fleet, DISKED)["hits"], disk_report(fleet, DISKED)["writes"])
            == (1, 3)
        ),
        30,
        "a state read back from disk, and the third conversation's written",
    )
    assert len(list(directory.glob("*.kv"))) == 3


def test_an_agents_report_reads_as_its_disk_tiers_figures(tmp_path: Path) -> None:
    """The report as ``AgentWorker.snapshot`` builds it over a real directory;
    no model, no web tier."""
    (tmp_path / f"{'0' * 32}.kv").write_bytes(b"not a state")
    worker = AgentWorker(
        name=DISKED, slots=1, cache_ram_mb=1, cache_dir=str(tmp_path), cache_disk_mb=1
    )
    host = worker.host_cache
    state = (ctypes.c_uint8 * 500).from_buffer_copy(bytes(range(250)) * 2)
    assert host.put("model", list(range(40)), state, 500, ["deep"])
    assert host.disk is not None and host.disk.flush(10)
    # Host memory emptied (as by a restart): the state comes back from disk.
    host.clear()
    prompt = [*range(40), 7]
    assert host.prefetch("model", prompt)
    assert host.find("model", prompt) is not None
    (written,) = tmp_path.glob("*.kv")
    assert disk_tier(worker.snapshot()) == {
        "files": 1,
        "bytes": written.stat().st_size,
        "budget_bytes": 2**20,
        "hits": 1,
        "hit_rate": 1.0,
        "writes": 1,
        "corrupt": 1,
        "foreign": 0,
        "dropped_writes": 0,
    }
    # An agent without a disk tier reports its host tier only.
    plain = AgentWorker(name=PLAIN, slots=1, cache_dir="")
    assert host_tier(plain.snapshot()) is not None
    assert disk_tier(plain.snapshot()) is None
    assert disk_tier({}) is None


def megabytes(count: int) -> str:
    """What the dashboard writes for ``count`` bytes (``megabytes`` in
    dashboard.js: one decimal at most, thousands separated)."""
    text = f"{count / 1e6:,.1f}"
    return f"{text.removesuffix('.0')} MB"


@pytest.fixture
def tab(browser: Browser, disk_fleet: DiskFleet) -> Iterator[Tab]:
    yield from operator_tab(browser, disk_fleet.web)


def test_the_dashboard_shows_the_disk_tier_of_the_agent_that_has_one(
    tab: Tab, disk_fleet: DiskFleet
) -> None:
    report = agent_reports(disk_fleet.fleet)[DISKED]["host_cache"]
    disk = report["disk"]
    assert disk["corrupt"] == 1
    page = tab.page
    page_expect(page.locator("#live")).to_have_text("Live")
    cards = page.locator("#agents .agent")
    disked = cards.filter(has_text=DISKED)
    tier = disked.locator(".disk-tier")
    page_expect(tier).to_be_visible()
    page_expect(disked.locator(".disk-tier-value")).to_have_text(
        f"3 files · {megabytes(disk['bytes'])} of {megabytes(DISK_MB * 2**20)}"
    )
    rate = math.floor(100 * disk["hits"] / report["lookups"] + 0.5)
    page_expect(disked.locator(".disk-tier-hits")).to_have_text(
        f"hit rate {rate}% (1 state read back) · 3 states written"
    )
    page_expect(disked.locator(".disk-tier-problems")).to_have_text(
        "1 corrupt file deleted"
    )
    # The bar shows the budget's share in use.
    bar = disked.locator(".disk-tier .meter > span")
    width = bar.evaluate("span => parseFloat(span.style.width)")
    assert width == pytest.approx(100 * disk["bytes"] / (DISK_MB * 2**20), abs=0.06)
    assert disked.get_attribute("data-disk-tier") == "on"
    # The host tier above it, as before: its 1 MiB budget.
    page_expect(disked.locator(".host-tier-value")).to_contain_text("of 1 MB")

    plain = cards.filter(has_text=PLAIN)
    page_expect(plain.locator(".host-tier")).to_be_visible()
    page_expect(plain.locator(".disk-tier")).to_be_hidden()
    assert plain.get_attribute("data-disk-tier") is None
    tab.screenshot("dashboard-disk-tier")


def scrape(
    web: WebServer,
) -> tuple[dict[str, str], dict[str, dict[tuple[str, str], float]]]:
    """The ``paddler_agent_disk_cache_*`` families of a scrape: each one's
    type, and its samples (by sample name and agent, the value)."""
    text = httpx.get(f"{web.url}/metrics", headers=AUTH, timeout=10).text
    types: dict[str, str] = {}
    samples: dict[str, dict[tuple[str, str], float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("paddler_agent_disk_cache_"):
            types[family.name] = family.type
            samples[family.name] = {
                (sample.name, sample.labels["agent"]): sample.value
                for sample in family.samples
            }
    return types, samples


def test_prometheus_carries_the_disk_tier_of_each_agent_that_has_one(
    disk_fleet: DiskFleet,
) -> None:
    report = agent_reports(disk_fleet.fleet)[DISKED]["host_cache"]
    disk = report["disk"]
    types, samples = scrape(disk_fleet.web)
    name = "paddler_agent_disk_cache"
    gauges = {
        "files": 3,
        "bytes": disk["bytes"],
        "budget_bytes": DISK_MB * 2**20,
        "hit_rate": 1 / report["lookups"],
    }
    # Counted since the agent started.
    counters = {"hits": 1, "writes": 3, "corrupt": 1, "foreign": 0}
    counters["dropped_writes"] = 0
    assert types == {
        **{f"{name}_{figure}": "gauge" for figure in gauges},
        **{f"{name}_{figure}": "counter" for figure in counters},
    }
    # One sample each, the agent with a disk tier's: the plain agent has none.
    for figure, value in gauges.items():
        assert samples[f"{name}_{figure}"] == {(f"{name}_{figure}", DISKED): value}
    for figure, value in counters.items():
        assert samples[f"{name}_{figure}"] == {
            (f"{name}_{figure}_total", DISKED): value
        }


def test_statsd_carries_the_disk_tier_of_each_agent_that_has_one(
    disk_fleet: DiskFleet,
) -> None:
    statsd = disk_fleet.statsd
    report = agent_reports(disk_fleet.fleet)[DISKED]["host_cache"]
    disk = report["disk"]
    expected = {
        "files": "3|g",
        "bytes": f"{disk['bytes']}|g",
        "budget_bytes": f"{DISK_MB * 2**20}|g",
        "hit_rate": f"{round(1 / report['lookups'], 4)}|g",
        "hits": "1|g",
        "writes": "3|g",
        "corrupt": "1|g",
        "foreign": "0|g",
        "dropped_writes": "0|g",
    }
    prefix = f"fleet.agent.{DISKED}.disk_cache_"
    wait_until(
        lambda: all(
            statsd.latest(f"{prefix}{figure}") == value
            for figure, value in expected.items()
        ),
        10,
        "the disk tier's gauges",
    )
    # The agent without one sends its host tier's gauges, and no disk tier's.
    wait_until(
        lambda: statsd.latest(f"fleet.agent.{PLAIN}.host_cache_entries") == "0|g",
        10,
        "the plain agent's host tier gauges",
    )
    names = {line.split(":")[0] for _, line in statsd.lines}
    assert not [n for n in names if re.match(rf"fleet\.agent\.{PLAIN}\.disk_", n)]
