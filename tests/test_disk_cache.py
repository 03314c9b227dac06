"""The disk tier's store (``agents.disk_cache``): files keyed like the host
tier, LRU by bytes, checksummed; corrupt and foreign files are never loaded.
Plain Python: states are byte strings here; ``test_disk_cache_engine`` runs
it on llama.cpp."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from pytest_django.fixtures import Settings

from agents.disk_cache import DiskCache, file_name
from agents.host_cache import Entry, HostCache
from agents.worker import AgentWorker

MODEL = "model|context=1024"
OTHER_MODEL = "model|context=2048"
RUNTIME = "llama-cpp-python 1.0"


def tokens(start: int, count: int) -> list[int]:
    return list(range(start, start + count))


def entry(
    toks: list[int], payload: bytes, namespace: str = MODEL, prefix: str = "h"
) -> Entry:
    state = (ctypes.c_uint8 * len(payload)).from_buffer_copy(payload)
    return Entry(namespace, tuple(toks), state, len(payload), [prefix])


def payload(seed: int, size: int = 1000) -> bytes:
    return bytes((seed * 7 + index) % 251 for index in range(size))


def state_bytes(loaded: Entry) -> bytes:
    return bytes(memoryview(loaded.state).cast("B"))


def test_a_written_state_reads_back_byte_for_byte(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path, 10**6, runtime=RUNTIME)
    disk.write(entry(tokens(0, 40), payload(1)))
    found = disk.best(MODEL, [*tokens(0, 40), 5, 5], min_tokens=16)
    assert found is not None
    assert found[1] == 40
    loaded = disk.load(found[0])
    assert loaded is not None
    assert loaded.tokens == tuple(tokens(0, 40))
    assert (loaded.size, state_bytes(loaded)) == (1000, payload(1))
    assert loaded.prefix == ["h"]


def test_the_index_survives_a_restart(tmp_path: Path) -> None:
    DiskCache(tmp_path, 10**6, runtime=RUNTIME).write(entry(tokens(0, 40), payload(2)))
    again = DiskCache(tmp_path, 10**6, runtime=RUNTIME)
    assert again.stats().files == 1
    found = again.best(MODEL, tokens(0, 50), min_tokens=16)
    assert found is not None
    loaded = again.load(found[0])
    assert loaded is not None and state_bytes(loaded) == payload(2)


def test_a_corrupt_file_is_skipped_and_deleted(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path, 10**6, runtime=RUNTIME)
    disk.write(entry(tokens(0, 40), payload(3)))
    path = tmp_path / file_name(MODEL, tokens(0, 40))
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte in the state
    path.write_bytes(bytes(data))
    found = disk.best(MODEL, tokens(0, 50), min_tokens=16)
    assert found is not None  # the header is fine: only the checksum tells
    assert disk.load(found[0]) is None
    assert not path.exists()
    assert disk.stats().corrupt == 1
    assert disk.best(MODEL, tokens(0, 50), min_tokens=16) is None


def test_a_truncated_or_alien_file_is_dropped_when_the_directory_is_read(
    tmp_path: Path,
) -> None:
    disk = DiskCache(tmp_path, 10**6, runtime=RUNTIME)
    disk.write(entry(tokens(0, 40), payload(4)))
    path = tmp_path / file_name(MODEL, tokens(0, 40))
    path.write_bytes(path.read_bytes()[:-1])
    (tmp_path / "junk.kv").write_bytes(b"not a state at all")
    (tmp_path / "half.kv.tmp").write_bytes(b"an interrupted write")
    again = DiskCache(tmp_path, 10**6, runtime=RUNTIME)
    assert again.stats().files == 0
    assert again.stats().corrupt == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_foreign_file_is_never_loaded(tmp_path: Path) -> None:
    """Another model or context shape (the namespace), or another llama.cpp
    runtime: never found, and left alone."""
    DiskCache(tmp_path, 10**6, runtime=RUNTIME).write(
        entry(tokens(0, 40), payload(5), namespace=OTHER_MODEL)
    )
    DiskCache(tmp_path, 10**6, runtime="llama-cpp-python 0.9").write(
        entry(tokens(0, 40), payload(6))
    )
    disk = DiskCache(tmp_path, 10**6, runtime=RUNTIME)
    assert disk.stats().files == 2
    assert disk.best(MODEL, tokens(0, 50), min_tokens=16) is None
    assert len(list(tmp_path.iterdir())) == 2


def test_a_file_renamed_over_another_key_is_not_loaded_as_it(
    tmp_path: Path,
) -> None:
    """The key is inside the file: a file copied under another's name is
    read as what it holds."""
    disk = DiskCache(tmp_path, 10**6, runtime=RUNTIME)
    disk.write(entry(tokens(0, 40), payload(7)))
    os.replace(
        tmp_path / file_name(MODEL, tokens(0, 40)),
        tmp_path / file_name(MODEL, tokens(100, 40)),
    )
    again = DiskCache(tmp_path, 10**6, runtime=RUNTIME)
    assert again.best(MODEL, tokens(100, 50), min_tokens=16) is None
    assert again.best(MODEL, tokens(0, 50), min_tokens=16) is not None


def test_least_recently_used_files_go_first_to_keep_the_budget(
    tmp_path: Path,
) -> None:
    disk = DiskCache(tmp_path, 10**6, runtime=RUNTIME)
    for index, first in enumerate((0, 1000, 2000)):
        disk.write(entry(tokens(first, 30), payload(index)))
        # Distinct times of use, older to newer.
        path = tmp_path / file_name(MODEL, tokens(first, 30))
        os.utime(path, (1000 + index, 1000 + index))
    # A hit makes the oldest the most recently used.
    again = DiskCache(tmp_path, 10**6, runtime=RUNTIME)
    oldest = again.best(MODEL, tokens(0, 31), min_tokens=16)
    assert oldest is not None and again.load(oldest[0]) is not None
    one_file = again.stats().bytes // 3
    tight = DiskCache(tmp_path, 2 * one_file + 10, runtime=RUNTIME)
    assert tight.stats().files == 2
    assert tight.stats().bytes <= 2 * one_file + 10
    assert tight.best(MODEL, tokens(1000, 31), min_tokens=16) is None
    assert tight.best(MODEL, tokens(0, 31), min_tokens=16) is not None
    assert tight.best(MODEL, tokens(2000, 31), min_tokens=16) is not None


def test_a_newer_state_of_a_conversation_replaces_the_files_it_covers(
    tmp_path: Path,
) -> None:
    disk = DiskCache(tmp_path, 10**6, runtime=RUNTIME)
    disk.write(entry(tokens(0, 30), payload(1)))
    disk.write(entry(tokens(0, 60), payload(2)))
    assert disk.stats().files == 1
    found = disk.best(MODEL, tokens(0, 70), min_tokens=16)
    assert found is not None and found[1] == 60


def test_the_host_tier_writes_through_and_reads_back_what_it_lacks(
    tmp_path: Path,
) -> None:
    disk = DiskCache(tmp_path, 10**6, runtime=RUNTIME)
    host = HostCache(10**6)
    host.attach_disk(disk)
    state = (ctypes.c_uint8 * 500).from_buffer_copy(payload(9, 500))
    assert host.put(MODEL, tokens(0, 40), state, 500, ["deep"])
    assert disk.flush(10)
    assert disk.stats().files == 1
    # A restarted agent: empty host memory, the same directory.
    restarted = HostCache(10**6)
    restarted.attach_disk(DiskCache(tmp_path, 10**6, runtime=RUNTIME))
    assert "deep" in restarted.fingerprints()
    prompt = [*tokens(0, 40), 3, 3]
    assert restarted.find(MODEL, prompt) is None
    # Nothing read for a prompt a slot holds already.
    assert not restarted.prefetch(MODEL, prompt, held=40)
    assert restarted.prefetch(MODEL, prompt)
    found = restarted.find(MODEL, prompt)
    assert found is not None and found[1] == 40
    assert bytes(memoryview(found[0].state).cast("B")) == payload(9, 500)
    assert restarted.stats().disk_hits == 1
    # Held in memory now: not read again.
    assert not restarted.prefetch(MODEL, prompt)


def test_a_state_restored_whole_leaves_its_buffer_for_the_next_save() -> None:
    host = HostCache(10**6)
    state = (ctypes.c_uint8 * 500).from_buffer_copy(payload(1, 500))
    host.put(MODEL, tokens(0, 40), state, 500, [])
    found = host.find(MODEL, [*tokens(0, 40), 1])
    assert found is not None
    assert host.take_buffer(400) is None  # still the stored state's
    host.restored(found[0], 40, elapsed_ms=1.0)
    assert host.take_buffer(600) is None  # too small for this save
    assert host.take_buffer(400) is state
    assert host.take_buffer(400) is None  # given out once
    assert host.stats().buffers_reused == 1


def test_a_buffer_the_disk_writer_still_reads_is_not_reused(tmp_path: Path) -> None:
    host = HostCache(10**6)
    disk = DiskCache(tmp_path, 10**6, runtime=RUNTIME)
    host.attach_disk(disk)
    state = (ctypes.c_uint8 * 500).from_buffer_copy(payload(2, 500))
    host.put(MODEL, tokens(0, 40), state, 500, [])
    assert disk.flush(10)
    found = host.find(MODEL, [*tokens(0, 40), 1])
    assert found is not None
    found[0].writing = True  # as while the writer has it queued
    host.restored(found[0], 40, elapsed_ms=1.0)
    assert host.take_buffer(400) is None


def test_a_reused_buffer_larger_than_the_state_writes_only_the_state(
    tmp_path: Path,
) -> None:
    disk = DiskCache(tmp_path, 10**6, runtime=RUNTIME)
    big = (ctypes.c_uint8 * 800).from_buffer_copy(payload(3, 500) + b"\xff" * 300)
    disk.write(Entry(MODEL, tuple(tokens(0, 40)), big, 500, []))
    found = disk.best(MODEL, tokens(0, 50), min_tokens=16)
    assert found is not None
    loaded = disk.load(found[0])
    assert loaded is not None and state_bytes(loaded) == payload(3, 500)


def test_the_disk_tier_comes_from_the_settings_or_the_command_line(
    settings: Settings, tmp_path: Path
) -> None:
    settings.PADDLER_AGENT_CACHE_DIR = ""
    assert AgentWorker(name="a", slots=1).host_cache.disk is None
    settings.PADDLER_AGENT_CACHE_DIR = str(tmp_path / "from-settings")
    settings.PADDLER_AGENT_CACHE_DISK_MB = 3
    disk = AgentWorker(name="a", slots=1).host_cache.disk
    assert disk is not None
    assert (disk.directory, disk.budget_bytes) == (
        tmp_path / "from-settings",
        3 * 2**20,
    )
    flagged = AgentWorker(
        name="a", slots=1, cache_dir=str(tmp_path / "flag"), cache_disk_mb=5
    ).host_cache.disk
    assert flagged is not None and flagged.budget_bytes == 5 * 2**20
    # No host tier, no disk tier: states reach the disk through host memory.
    assert AgentWorker(name="a", slots=1, cache_ram_mb=0).host_cache.disk is None
    with pytest.raises(CommandError, match="--cache-disk-mb cannot be negative"):
        call_command("run_agent", "--name", "a", "--cache-disk-mb", "-1")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(CommandError, match="--cache-dir"):
        call_command("run_agent", "--name", "a", "--cache-dir", str(blocker / "x"))
