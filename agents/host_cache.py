"""The host-memory tier of an agent's KV cache: sequence states that outlive
their slot.

A slot's KV cache lives only until the slot is taken by another conversation.
Before that happens the engine saves the slot's sequence state (llama.cpp's
``llama_state_seq_get_data``) here, keyed by the tokens it holds; when a later
prompt extends a stored prefix further than any free slot's own cache does,
the engine restores the state into the chosen slot and evaluates only the
rest.  This module is the store: plain Python, no llama.cpp, no framework; the
engine does the copies.

Keys.  An entry belongs to a *namespace* naming the model file and every
parameter that shapes the state (context size, cache types): a state is only
ever found under the namespace it was saved in, so it is never restored into
another model or another context layout.  The worker empties the store when
the model or its parameters change.

Budget.  Entries are held up to ``budget_bytes`` in all; the least recently
used go first.  A budget of 0 turns the tier off.

Sliding windows.  For a model with sliding-window attention layers (Gemma 3:
a window of 512 tokens on five layers of six), llama.cpp saves only the last
``window`` positions of those layers, whatever the cache keeps.  Such a state
of more than ``window`` tokens can only be restored whole, or cut back by the
one token a prompt equal to it needs evaluated again: cut back further, its
window layers would miss the positions just before the cut.  ``usable`` says
which lengths of an entry may be kept.

Each state lives in one place.  An entry restored whole leaves the store (its
slot holds it now, and is saved again when another conversation takes it);
a saved state drops the entries it covers when it can stand in for them
(restoring it and cutting it back gives theirs, see ``usable``), and a state
already covered by an entry is not saved again.  A system prompt shared by
many conversations is not stored once, though: llama.cpp saves a sequence
whole, so its bytes are held once per stored conversation.

Disk.  With a disk tier attached (``agents.disk_cache``), every stored state
is written there too, by the disk tier's own thread; a prompt that a file
extends further than anything here has the file read back into this store
(``prefetch``, on the preparer's thread) before the engine looks.

Thread safety: the engine thread writes; the preparer's thread may insert
states read from disk; status reports on other threads read ``stats`` and
``fingerprints``.  One lock guards the entries.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agents.disk_cache import DiskCache

# States of fewer tokens are not worth a copy: re-evaluating them is cheap.
MIN_TOKENS = 16
# A slot is saved before a prompt that keeps all but fewer than this many of
# its tokens: fewer is the same conversation's next turn, whose re-rendered
# answer differs from the generated one by a token or two.
MIN_LOST_TOKENS = 8
# At most this many routing hashes are reported with the agent's status.
MAX_REPORTED_HASHES = 256
# Buffers of states restored whole, kept for the next saves to write into.
SPARE_BUFFERS = 4
# Fresh buffers get an eighth more than their state, in whole 64 KiB: a
# conversation's state grows by a few hundred KiB a turn, so a buffer its
# last state (or a longer conversation's) left often holds the next one.
BUFFER_HEADROOM = 8
BUFFER_GRANULE = 2**16


def buffer_size(size: int) -> int:
    """The bytes to allocate for a state of ``size`` bytes."""
    wanted = size + size // BUFFER_HEADROOM
    return -(-wanted // BUFFER_GRANULE) * BUFFER_GRANULE


def common_prefix(left: Sequence[int], right: Sequence[int]) -> int:
    """The length of the common prefix of two token sequences.

    A binary search over slice comparisons (done in C) rather than a Python
    loop over tokens: the engine calls this on its decode thread for every
    stored entry, and prompts run to thousands of tokens.
    """
    low, high = 0, min(len(left), len(right))
    left_list, right_list = list(left[:high]), list(right[:high])
    if left_list == right_list:
        return high
    # Invariant: the first ``low`` tokens match, the first ``high`` do not.
    while high - low > 1:
        middle = (low + high) // 2
        if left_list[:middle] == right_list[:middle]:
            low = middle
        else:
            high = middle
    return low


@dataclass
class Entry:
    """One saved sequence state."""

    namespace: str
    tokens: tuple[int, ...]
    # The bytes llama.cpp wrote (any object exposing the buffer protocol,
    # typically the ctypes array it wrote into: no second copy).
    state: Any
    size: int
    # The routing hashes of what the state holds (see balancer.routing).
    prefix: list[str] = field(default_factory=list)
    # The model's attention window, 0 for none (see the module's note).
    window: int = 0
    used: int = 0
    # Bytes of memory the state's buffer holds: ``size`` or more (a reused
    # buffer, see ``HostCache.take_buffer``).
    held: int = 0
    # Queued for the disk tier's writer, which reads ``state`` until done:
    # its buffer is not reused meanwhile.
    writing: bool = False

    def usable(self, keep: int) -> bool:
        """Whether restoring this state and keeping its first ``keep``
        tokens gives the sequence evaluating them would."""
        length = len(self.tokens)
        return keep <= length and (
            not self.window or length <= self.window or keep >= length - 1
        )


@dataclass(frozen=True)
class HostCacheStats:
    entries: int
    bytes: int
    budget_bytes: int
    lookups: int
    hits: int
    saves: int
    evictions: int
    restored_tokens: int
    # The slowest copy so far, each way, in milliseconds.
    save_ms_max: float
    restore_ms_max: float
    # States read back from the disk tier.
    disk_hits: int = 0
    # All copies so far, each way, in milliseconds (the decode loop's time
    # spent on the tier).
    save_ms_total: float = 0.0
    restore_ms_total: float = 0.0
    # Saves that wrote into a buffer a restored state left.
    buffers_reused: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0


class HostCache:
    """Sequence states by token prefix, within a byte budget, LRU."""

    def __init__(self, budget_bytes: int, *, min_tokens: int = MIN_TOKENS) -> None:
        if budget_bytes < 0:
            raise ValueError("the host cache budget cannot be negative")
        self.budget_bytes = budget_bytes
        self.min_tokens = min_tokens
        self._entries: list[Entry] = []
        self._bytes = 0
        self._clock = 0
        self._lock = threading.Lock()
        self._lookups = 0
        self._hits = 0
        self._saves = 0
        self._evictions = 0
        self._restored_tokens = 0
        self._save_ms_max = 0.0
        self._restore_ms_max = 0.0
        self._disk_hits = 0
        self._spare: list[Any] = []
        self._buffers_reused = 0
        self._save_ms_total = 0.0
        self._restore_ms_total = 0.0
        # The disk tier below this one, if any (``attach_disk``).
        self.disk: DiskCache | None = None

    def attach_disk(self, disk: DiskCache | None) -> None:
        self.disk = disk

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def worth_saving(self, namespace: str, tokens: Sequence[int], size: int) -> bool:
        """Whether a state of ``tokens`` (``size`` bytes) should be stored:
        long enough, within the budget, and not covered by an entry already
        (which is then marked used, as a save would have)."""
        if not self.enabled or len(tokens) < self.min_tokens:
            return False
        if size > self.budget_bytes:
            return False
        with self._lock:
            for entry in self._entries:
                if (
                    entry.namespace == namespace
                    and len(entry.tokens) >= len(tokens)
                    and common_prefix(entry.tokens, tokens) == len(tokens)
                ):
                    entry.used = self._tick()
                    return False
        return True

    def put(
        self,
        namespace: str,
        tokens: Sequence[int],
        state: Any,
        size: int,
        prefix: list[str],
        *,
        window: int = 0,
        elapsed_ms: float = 0.0,
    ) -> bool:
        """Store a state; False when it is not worth storing (see
        ``worth_saving``).  Entries it covers are dropped, then the least
        recently used ones until the budget holds."""
        if not self.worth_saving(namespace, tokens, size):
            return False
        entry = Entry(namespace, tuple(tokens), state, size, list(prefix), window)
        entry.held = max(size, memoryview(state).nbytes)
        self._store(entry)
        with self._lock:
            self._saves += 1
            self._save_ms_max = max(self._save_ms_max, elapsed_ms)
            self._save_ms_total += elapsed_ms
        if self.disk is not None:
            self.disk.write_later(entry)
        return True

    def _store(self, entry: Entry) -> None:
        """Hold ``entry``: drop the entries it covers, then the least
        recently used ones until the budget holds."""
        with self._lock:
            covered = [
                old
                for old in self._entries
                if old.namespace == entry.namespace
                and len(old.tokens) <= len(entry.tokens)
                and common_prefix(old.tokens, entry.tokens) == len(old.tokens)
                and entry.usable(len(old.tokens) - 1)
            ]
            for old in covered:
                self._remove(old)
            entry.used = self._tick()
            entry.held = max(entry.held, entry.size)
            self._entries.append(entry)
            self._bytes += entry.held
            while self._bytes > self.budget_bytes:
                oldest = min(self._entries, key=lambda e: e.used)
                self._remove(oldest)
                self._evictions += 1

    def prefetch(self, namespace: str, prompt: Sequence[int], *, held: int = 0) -> bool:
        """Read back from the disk tier the state that extends ``prompt``
        furthest, when it shares a good many tokens (``min_tokens``) more
        than this store's best entry and than ``held`` (what a slot holds
        already); whether one was read.  Called on the preparer's thread,
        before the engine looks for the prompt: reading and checking a file
        takes milliseconds the decode loop does not wait for."""
        disk = self.disk
        if disk is None or not self.enabled or len(prompt) <= self.min_tokens:
            return False
        best = held
        with self._lock:
            for entry in self._entries:
                if entry.namespace != namespace:
                    continue
                shared = common_prefix(entry.tokens, prompt)
                if entry.usable(min(shared, len(prompt) - 1)):
                    best = max(best, shared)
        found = disk.best(namespace, prompt, min_tokens=best + self.min_tokens)
        if found is None or found[0].size > self.budget_bytes:
            return False
        loaded = disk.load(found[0])
        if loaded is None:
            return False
        self._store(loaded)
        with self._lock:
            self._disk_hits += 1
        return True

    def _remove(self, entry: Entry) -> None:
        self._entries.remove(entry)
        self._bytes -= entry.held

    def take_buffer(self, size: int) -> Any | None:
        """A buffer of at least ``size`` bytes that a restored state left,
        for a save to write into; None when none is spare.

        A fresh buffer costs the save a page fault per 4 KiB page it writes
        (the kernel zeroes each on first touch), on the engine thread; a
        reused one is written at memory speed.  (``bench.kv_state``.)
        """
        with self._lock:
            fitting = [b for b in self._spare if memoryview(b).nbytes >= size]
            if not fitting:
                return None
            buffer = min(fitting, key=lambda b: memoryview(b).nbytes)
            self._spare.remove(buffer)
            self._buffers_reused += 1
            return buffer

    def find(self, namespace: str, prompt: Sequence[int]) -> tuple[Entry, int] | None:
        """The entry sharing the longest usable prefix with ``prompt``, and
        how many tokens it shares; None when none shares ``min_tokens``.
        Counted as a lookup; the engine calls ``restored`` when it used the
        entry.  (One token of a prompt is always evaluated, for its logits:
        an entry must be usable cut back to ``len(prompt) - 1``.)"""
        if not self.enabled:
            return None
        best: tuple[Entry, int] | None = None
        with self._lock:
            self._lookups += 1
            for entry in self._entries:
                if entry.namespace != namespace or entry.tokens[:1] != tuple(
                    prompt[:1]
                ):
                    continue
                shared = common_prefix(entry.tokens, prompt)
                if not entry.usable(min(shared, len(prompt) - 1)):
                    continue
                if shared >= self.min_tokens and (best is None or shared > best[1]):
                    best = (entry, shared)
        return best

    def restored(self, entry: Entry, tokens: int, *, elapsed_ms: float) -> None:
        """``entry`` was restored and ``tokens`` of it kept: a hit.  Kept
        whole (all but the token evaluated again at most), the entry leaves
        the store, as the slot it went to holds it now; cut back (another
        branch of the conversation), it stays, most recently used."""
        with self._lock:
            if tokens >= len(entry.tokens) - 1:
                if entry in self._entries:
                    self._remove(entry)
                    # Its bytes are in the slot now: the next save may write
                    # into its buffer, unless the disk tier still reads it.
                    # (Only here, on the engine thread, after the restore:
                    # an entry evicted on another thread may be the one the
                    # engine is about to restore.)
                    if not entry.writing:
                        self._spare.append(entry.state)
                        del self._spare[:-SPARE_BUFFERS]
            else:
                entry.used = self._tick()
            self._hits += 1
            self._restored_tokens += tokens
            self._restore_ms_max = max(self._restore_ms_max, elapsed_ms)
            self._restore_ms_total += elapsed_ms

    def discard(self, entry: Entry) -> None:
        """Drop an entry llama.cpp would not restore."""
        with self._lock:
            if entry in self._entries:
                self._remove(entry)

    def clear(self) -> None:
        """Empty the store (the model or its parameters changed)."""
        with self._lock:
            self._entries.clear()
            self._spare.clear()
            self._bytes = 0

    def stats(self) -> HostCacheStats:
        with self._lock:
            return HostCacheStats(
                entries=len(self._entries),
                bytes=self._bytes,
                budget_bytes=self.budget_bytes,
                lookups=self._lookups,
                hits=self._hits,
                saves=self._saves,
                evictions=self._evictions,
                restored_tokens=self._restored_tokens,
                save_ms_max=self._save_ms_max,
                restore_ms_max=self._restore_ms_max,
                disk_hits=self._disk_hits,
                save_ms_total=self._save_ms_total,
                restore_ms_total=self._restore_ms_total,
                buffers_reused=self._buffers_reused,
            )

    def fingerprints(self, limit: int = MAX_REPORTED_HASHES) -> list[str]:
        """The routing hashes of what the store holds, at most ``limit``: each
        hash covers a whole prefix of a conversation (or raw prompt), so a
        request whose chain holds one of them can restore at least that much
        here.

        Every entry's deepest hash comes first (most recently used entries
        first): it is the one a conversation's next turn matches.  The
        shallower ones, which only a branch of a conversation matches, fill
        what the limit leaves.
        """
        with self._lock:
            ordered = [
                entry.prefix for entry in sorted(self._entries, key=lambda e: -e.used)
            ]
        # The disk tier's files after host memory's states: a restore from
        # there costs a file read more.
        if self.disk is not None:
            ordered += self.disk.fingerprints()
        deepest = [prefix[-1:] for prefix in ordered]
        shallower = [prefix[:-1] for prefix in ordered]
        hashes: list[str] = []
        seen: set[str] = set()
        for group in (deepest, shallower):
            for values in group:
                for value in values:
                    if value not in seen:
                        seen.add(value)
                        hashes.append(value)
                        if len(hashes) >= limit:
                            return hashes
        return hashes

    def report(self) -> dict[str, Any]:
        """What the agent's status says of its host tier."""
        stats = self.stats()
        report: dict[str, Any] = {
            "entries": stats.entries,
            "bytes": stats.bytes,
            "budget_bytes": stats.budget_bytes,
            "lookups": stats.lookups,
            "hits": stats.hits,
            "restored_tokens": stats.restored_tokens,
            "save_ms_max": round(stats.save_ms_max, 2),
            "restore_ms_max": round(stats.restore_ms_max, 2),
            "save_ms_total": round(stats.save_ms_total, 1),
            "restore_ms_total": round(stats.restore_ms_total, 1),
            "buffers_reused": stats.buffers_reused,
            "prefixes": self.fingerprints(),
        }
        if self.disk is not None:
            disk = self.disk.stats()
            report["disk"] = {
                "files": disk.files,
                "bytes": disk.bytes,
                "budget_bytes": disk.budget_bytes,
                "hits": stats.disk_hits,
                "writes": disk.writes,
                # What an operator acts on: files found corrupt (deleted),
                # files of another model or runtime met (left alone: a
                # directory shared with another agent), and states not
                # written because the writer fell behind (a slow disk).
                "corrupt": disk.corrupt,
                "foreign": disk.foreign,
                "dropped_writes": disk.dropped_writes,
            }
        return report


def cache_namespace(
    model_path: str, *, context_size: int, k_cache_dtype: str, v_cache_dtype: str
) -> str:
    """The namespace of states saved from a model and context of this shape.

    The model file is named by its real path, size and modification time:
    another file at the same path (a model swapped on disk) is another model.
    The context size and cache types shape the state's bytes.
    """
    real = os.path.realpath(model_path)
    stat = os.stat(real)
    return "|".join(
        (
            real,
            str(stat.st_size),
            str(stat.st_mtime_ns),
            f"context={context_size}",
            f"k={k_cache_dtype}",
            f"v={v_cache_dtype}",
        )
    )
