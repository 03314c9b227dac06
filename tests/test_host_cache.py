"""The host-memory tier's store (``agents.host_cache``): keys, budget, LRU,
sliding windows, and what an agent reports of it.  Plain Python: states are
byte strings here; ``test_host_cache_engine`` runs it on llama.cpp."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from pytest_django.fixtures import Settings

from agents.host_cache import HostCache, cache_namespace, common_prefix
from agents.worker import AgentWorker

MODEL = "model|context=1024"
OTHER_MODEL = "model|context=2048"


def tokens(start: int, count: int) -> list[int]:
    return list(range(start, start + count))


def test_common_prefix_counts_the_shared_leading_tokens() -> None:
    assert common_prefix([1, 2, 3, 4], [1, 2, 9]) == 2
    assert common_prefix([1, 2, 3], [1, 2, 3, 4]) == 3
    assert common_prefix([], [1]) == 0
    assert common_prefix([5], [6]) == 0
    long = tokens(0, 5000)
    assert common_prefix(long, [*long[:4321], -1]) == 4321


def test_the_longest_shared_prefix_is_found_in_its_namespace_only() -> None:
    cache = HostCache(1000)
    cache.put(MODEL, tokens(0, 40), b"a" * 100, 100, ["h1"])
    cache.put(MODEL, [*tokens(0, 20), *tokens(500, 30)], b"b" * 100, 100, ["h2"])
    prompt = [*tokens(0, 40), 7, 7]
    found = cache.find(MODEL, prompt)
    assert found is not None
    entry, shared = found
    assert (entry.state, shared) == (b"a" * 100, 40)
    # A state saved under another model or context size is never found.
    assert cache.find(OTHER_MODEL, prompt) is None


def test_too_short_a_match_is_no_hit() -> None:
    cache = HostCache(1000)
    cache.put(MODEL, tokens(0, 40), b"a", 1, [])
    assert cache.find(MODEL, [*tokens(0, 10), -1, -1]) is None


def test_least_recently_used_states_go_first_to_keep_the_budget() -> None:
    cache = HostCache(250)
    for first in (0, 1000, 2000):
        cache.put(MODEL, tokens(first, 30), b"x" * 100, 100, [])
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.evictions) == (2, 200, 1)
    # The oldest (tokens from 0) went; finding one makes it the most recent.
    assert cache.find(MODEL, tokens(0, 31)) is None
    assert cache.worth_saving(MODEL, tokens(1000, 30), 100) is False  # covered
    cache.put(MODEL, tokens(3000, 30), b"x" * 100, 100, [])
    assert cache.find(MODEL, tokens(1000, 31)) is not None
    assert cache.find(MODEL, tokens(2000, 31)) is None


def test_a_state_larger_than_the_budget_is_not_kept() -> None:
    cache = HostCache(100)
    assert not cache.put(MODEL, tokens(0, 30), b"x" * 101, 101, [])
    assert cache.stats().entries == 0


def test_a_budget_of_zero_turns_the_tier_off() -> None:
    cache = HostCache(0)
    assert not cache.enabled
    assert not cache.put(MODEL, tokens(0, 30), b"x", 1, [])
    assert cache.find(MODEL, tokens(0, 30)) is None
    assert cache.stats().lookups == 0
    with pytest.raises(ValueError, match="negative"):
        HostCache(-1)


def test_a_state_restored_whole_leaves_the_store_and_counts_as_a_hit() -> None:
    cache = HostCache(1000)
    cache.put(MODEL, tokens(0, 30), b"x" * 10, 10, [])
    found = cache.find(MODEL, tokens(0, 40))
    assert found is not None
    cache.restored(found[0], 30, elapsed_ms=1.5)
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.hits, stats.lookups) == (0, 0, 1, 1)
    assert (stats.restored_tokens, stats.restore_ms_max, stats.hit_rate) == (
        30,
        1.5,
        1.0,
    )


def test_a_state_restored_in_part_stays_in_the_store() -> None:
    """Its slot keeps only a branch of it: the whole stays for its own turn."""
    cache = HostCache(1000)
    cache.put(MODEL, tokens(0, 40), b"x" * 10, 10, [])
    found = cache.find(MODEL, [*tokens(0, 25), -1])
    assert found is not None
    cache.restored(found[0], 25, elapsed_ms=1.0)
    assert cache.stats().entries == 1
    again = cache.find(MODEL, tokens(0, 50))
    assert again is not None and again[1] == 40


def test_a_longer_state_of_the_same_conversation_replaces_the_shorter() -> None:
    cache = HostCache(1000)
    cache.put(MODEL, tokens(0, 30), b"x" * 100, 100, ["a"])
    cache.put(MODEL, tokens(0, 50), b"y" * 150, 150, ["a", "b"])
    stats = cache.stats()
    assert (stats.entries, stats.bytes) == (1, 150)
    found = cache.find(MODEL, [*tokens(0, 30), -1])
    assert found is not None and found[1] == 30


def test_a_windowed_state_is_only_restored_whole() -> None:
    """With sliding-window layers, llama.cpp saves only the window's last
    positions of them: a longer state cut back would miss positions."""
    cache = HostCache(10_000)
    cache.put(MODEL, tokens(0, 40), b"s" * 100, 100, [], window=16)
    # Extends the whole state: usable.
    assert cache.find(MODEL, [*tokens(0, 40), 1, 2]) is not None
    # Equal to it: one token is evaluated again, still within the window.
    assert cache.find(MODEL, tokens(0, 40)) is not None
    # Parts from it earlier: not usable.
    assert cache.find(MODEL, [*tokens(0, 30), -1, -1]) is None
    # And a longer windowed state does not replace a shorter one.
    cache.put(MODEL, tokens(0, 60), b"t" * 100, 100, [], window=16)
    assert cache.stats().entries == 2
    found = cache.find(MODEL, [*tokens(0, 40), -1])
    assert found is not None and found[1] == 40


def test_the_reported_fingerprints_are_bounded_deepest_first() -> None:
    """Every entry's deepest hash (its next turn's match) makes the cut
    before any entry's shallower ones."""
    cache = HostCache(10_000)
    cache.put(MODEL, tokens(0, 30), b"x", 1, ["old-1", "old-2"])
    cache.put(MODEL, tokens(1000, 30), b"x", 1, ["new-1", "new-2", "new-3"])
    assert cache.fingerprints() == ["new-3", "old-2", "new-1", "new-2", "old-1"]
    assert cache.fingerprints(limit=3) == ["new-3", "old-2", "new-1"]
    report = cache.report()
    assert report["entries"] == 2
    assert report["bytes"] == 2
    assert report["budget_bytes"] == 10_000
    assert report["prefixes"][0] == "new-3"


def test_clearing_empties_the_store() -> None:
    cache = HostCache(1000)
    cache.put(MODEL, tokens(0, 30), b"x", 1, ["a"])
    cache.clear()
    assert cache.stats().entries == 0
    assert cache.fingerprints() == []


def test_the_namespace_names_the_model_file_and_the_context(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    base = cache_namespace(
        str(model), context_size=1024, k_cache_dtype="F16", v_cache_dtype="F16"
    )
    assert base != cache_namespace(
        str(model), context_size=2048, k_cache_dtype="F16", v_cache_dtype="F16"
    )
    assert base != cache_namespace(
        str(model), context_size=1024, k_cache_dtype="Q8_0", v_cache_dtype="F16"
    )
    # Another file at the same path is another model.
    model.write_bytes(b"GGUF, another model")
    assert base != cache_namespace(
        str(model), context_size=1024, k_cache_dtype="F16", v_cache_dtype="F16"
    )


def test_an_agents_budget_comes_from_its_flag_or_the_setting(
    settings: Settings,
) -> None:
    settings.PADDLER_AGENT_CACHE_RAM_MB = 3
    assert AgentWorker(name="a", slots=1).host_cache.budget_bytes == 3 * 2**20
    flagged = AgentWorker(name="a", slots=1, cache_ram_mb=5)
    assert flagged.host_cache.budget_bytes == 5 * 2**20
    assert not AgentWorker(name="a", slots=1, cache_ram_mb=0).host_cache.enabled
    with pytest.raises(CommandError, match="--cache-ram-mb cannot be negative"):
        call_command("run_agent", "--name", "a", "--cache-ram-mb", "-1")


def test_an_agent_reports_its_host_tier_and_empties_it_for_another_model() -> None:
    worker = AgentWorker(name="a", slots=1, cache_ram_mb=1)
    worker.keep_host_cache_for(("model-a", 1024))
    worker.host_cache.put(MODEL, tokens(0, 30), b"x" * 10, 10, ["h"])
    report = worker.snapshot()["host_cache"]
    assert (report["entries"], report["bytes"], report["prefixes"]) == (1, 10, ["h"])
    # The same model and parameters again (an engine restarted): kept.
    worker.keep_host_cache_for(("model-a", 1024))
    assert worker.host_cache.stats().entries == 1
    worker.keep_host_cache_for(("model-a", 2048))
    assert worker.host_cache.stats().entries == 0
