"""The optional disk tier of an agent's KV cache: sequence states in files.

Below the host-memory tier (``agents.host_cache``), for agents with a fast
local disk: every state the host tier stores is also written here, by a
writer thread of its own (never the decode thread), so it outlives both its
eviction from host memory and the agent process.  A prompt that a file
extends further than anything in host memory has the file read back, on the
preparer's thread, into the host tier, from where the engine restores it as
usual.

Keys.  The same as the host tier's: a namespace naming the model file and
the context's shape, and the tokens the state holds.  A file also names the
llama.cpp runtime that wrote it (its state layout is that runtime's), and
counts as foreign under another namespace or runtime: it is never loaded.

Files.  One per state, ``<blake2b of key>.kv``: a magic string, a JSON
header (namespace, runtime, token count, state size, sliding window, routing
hashes, checksum), the tokens as little-endian int32, then the state's bytes.
The checksum (BLAKE2b) covers tokens and state and is checked before a state
leaves the file: a corrupt file (bad magic, header, size or checksum) is
deleted, never loaded.  Files are written to a temporary name and renamed,
so a crash mid-write leaves no half file under a real name.

Budget.  Files are held up to ``budget_bytes`` in all (every file in the
directory counts, foreign ones too: give each agent a directory of its own);
the least recently used go first, by modification time, which a hit renews,
so the order survives a restart.  A state covered by a newer one of the same
conversation is deleted when that one is written, as in host memory.

Thread safety: the writer thread writes and evicts, the preparer's thread
reads and renews; one lock guards the index.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import json
import logging
import os
import queue
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.host_cache import Entry, common_prefix

logger = logging.getLogger(__name__)

MAGIC = b"PADDLER-KV\x01\n"
FORMAT = 1
SUFFIX = ".kv"
# States waiting for the writer beyond this many are not written (counted):
# a disk slower than the saves must not hold their memory without bound.
MAX_QUEUED_WRITES = 16


def llama_runtime() -> str:
    """The llama.cpp runtime whose state layout files hold: the installed
    llama-cpp-python release (it pins its llama.cpp)."""
    try:
        return f"llama-cpp-python {importlib.metadata.version('llama_cpp_python')}"
    except importlib.metadata.PackageNotFoundError:
        return "llama-cpp-python unknown"


def file_name(namespace: str, tokens: Sequence[int]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(namespace.encode())
    digest.update(b"\x00")
    digest.update(_token_bytes(tokens))
    return digest.hexdigest() + SUFFIX


def _token_bytes(tokens: Sequence[int]) -> bytes:
    return struct.pack(f"<{len(tokens)}i", *tokens)


def _checksum(token_bytes: bytes, state: Any, size: int) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(token_bytes)
    digest.update(memoryview(state).cast("B")[:size])
    return digest.hexdigest()


class CorruptFile(Exception):
    pass


@dataclass
class DiskEntry:
    """What the index knows of one file (its header)."""

    path: Path
    namespace: str
    runtime: str
    tokens: tuple[int, ...]
    size: int
    file_bytes: int
    window: int
    prefix: list[str] = field(default_factory=list)
    checksum: str = ""
    used: float = 0.0

    def usable(self, keep: int) -> bool:
        # The same rule as a host entry's (see agents.host_cache).
        length = len(self.tokens)
        return keep <= length and (
            not self.window or length <= self.window or keep >= length - 1
        )


@dataclass(frozen=True)
class DiskCacheStats:
    files: int
    bytes: int
    budget_bytes: int
    writes: int
    loads: int
    # Files found corrupt (deleted) since start, and files of another
    # model, context shape or runtime met when loading (left alone).
    corrupt: int
    foreign: int
    dropped_writes: int


class DiskCache:
    """Sequence states in files of one directory, LRU by bytes."""

    def __init__(self, directory: Path | str, budget_bytes: int, *, runtime: str):
        if budget_bytes < 0:
            raise ValueError("the disk cache budget cannot be negative")
        self.directory = Path(directory)
        self.budget_bytes = budget_bytes
        self.runtime = runtime
        self._lock = threading.Lock()
        self._index: dict[str, DiskEntry] = {}
        self._bytes = 0
        self._writes = 0
        self._loads = 0
        self._corrupt = 0
        self._foreign = 0
        self._dropped = 0
        self._queue: queue.Queue[Entry | None] = queue.Queue()
        self._writer: threading.Thread | None = None
        self.directory.mkdir(parents=True, exist_ok=True)
        self.scan()

    # Reading the directory ---------------------------------------------------

    def scan(self) -> None:
        """Index the directory's files from their headers; delete leftovers
        of interrupted writes and files that are not ours to read."""
        index: dict[str, DiskEntry] = {}
        for path in self.directory.iterdir():
            if path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
                continue
            if not path.name.endswith(SUFFIX):
                continue
            try:
                entry = self._read_header(path)
            except (CorruptFile, OSError) as error:
                logger.warning("disk KV tier: %s is corrupt (%s); deleted", path, error)
                self._corrupt += 1
                path.unlink(missing_ok=True)
                continue
            index[path.name] = entry
        with self._lock:
            self._index = index
            self._bytes = sum(e.file_bytes for e in index.values())
        self._evict()

    def _read_header(self, path: Path) -> DiskEntry:
        with path.open("rb") as file:
            entry, _ = self._header(file, path)
        return entry

    def _header(self, file: Any, path: Path) -> tuple[DiskEntry, bytes]:
        """The file's header and its token bytes; ``file`` is left at the
        start of the state."""
        if file.read(len(MAGIC)) != MAGIC:
            raise CorruptFile("not a KV state file")
        (length,) = struct.unpack("<I", _exactly(file, 4))
        if length > 1 << 24:
            raise CorruptFile("header too long")
        try:
            header = json.loads(_exactly(file, length))
            count = int(header["tokens"])
            size = int(header["size"])
            window = int(header["window"])
            namespace, runtime = str(header["namespace"]), str(header["runtime"])
            checksum = str(header["checksum"])
            prefix = [str(value) for value in header["prefix"]]
            if header["format"] != FORMAT or count < 0 or size < 0:
                raise ValueError("unknown format")
        except (ValueError, KeyError, TypeError) as error:
            raise CorruptFile(f"bad header: {error}") from None
        token_bytes = _exactly(file, 4 * count)
        expected = len(MAGIC) + 4 + length + 4 * count + size
        stat = os.fstat(file.fileno())
        if stat.st_size != expected:
            raise CorruptFile(f"{stat.st_size} bytes, the header says {expected}")
        tokens = struct.unpack(f"<{count}i", token_bytes)
        entry = DiskEntry(
            path=path,
            namespace=namespace,
            runtime=runtime,
            tokens=tokens,
            size=size,
            file_bytes=stat.st_size,
            window=window,
            prefix=prefix,
            checksum=checksum,
            used=stat.st_mtime,
        )
        return entry, token_bytes

    # Finding and loading -----------------------------------------------------

    def best(
        self, namespace: str, prompt: Sequence[int], *, min_tokens: int
    ) -> tuple[DiskEntry, int] | None:
        """The file of ``namespace`` (and this runtime) sharing the longest
        usable prefix with ``prompt``, and how many tokens it shares."""
        best: tuple[DiskEntry, int] | None = None
        with self._lock:
            for entry in self._index.values():
                if entry.namespace != namespace or entry.runtime != self.runtime:
                    continue
                if entry.tokens[:1] != tuple(prompt[:1]):
                    continue
                shared = common_prefix(entry.tokens, prompt)
                if not entry.usable(min(shared, len(prompt) - 1)):
                    continue
                if shared >= min_tokens and (best is None or shared > best[1]):
                    best = (entry, shared)
        return best

    def load(self, found: DiskEntry) -> Entry | None:
        """The state of ``found`` read back, checked, as a host-tier entry;
        None (the file deleted) when it is corrupt, or foreign after all."""
        try:
            with found.path.open("rb") as file:
                entry, token_bytes = self._header(file, found.path)
                if entry.namespace != found.namespace or entry.runtime != self.runtime:
                    with self._lock:
                        self._foreign += 1
                    return None
                state = (ctypes.c_uint8 * entry.size)()
                if file.readinto(state) != entry.size:
                    raise CorruptFile("state cut short")
            if _checksum(token_bytes, state, entry.size) != entry.checksum:
                raise CorruptFile("checksum mismatch")
        except FileNotFoundError:
            self._forget(found)
            return None
        except (CorruptFile, OSError) as error:
            logger.warning(
                "disk KV tier: %s is corrupt (%s); deleted", found.path, error
            )
            with self._lock:
                self._corrupt += 1
            self._delete(found)
            return None
        now = time.time()
        os.utime(found.path, (now, now))
        with self._lock:
            found.used = now
            self._loads += 1
        return Entry(
            entry.namespace,
            entry.tokens,
            state,
            entry.size,
            list(entry.prefix),
            entry.window,
        )

    # Writing -------------------------------------------------------------------

    def write_later(self, entry: Entry) -> None:
        """Have the writer thread write ``entry`` (its state is not changed
        after a save, so it is safe to read there)."""
        if self.budget_bytes == 0 or entry.size > self.budget_bytes:
            return
        if self._queue.qsize() >= MAX_QUEUED_WRITES:
            with self._lock:
                self._dropped += 1
            return
        entry.writing = True
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_loop, name="paddler-kv-disk", daemon=True
                )
                self._writer.start()
        self._queue.put(entry)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued state is written; whether they were."""
        done = threading.Event()

        def wait() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        return done.wait(timeout)

    def _write_loop(self) -> None:
        while True:
            entry = self._queue.get()
            try:
                if entry is None:
                    return
                self.write(entry)
            except Exception:
                logger.warning("disk KV tier: a write failed", exc_info=True)
            finally:
                if entry is not None:
                    entry.writing = False
                self._queue.task_done()

    def write(self, entry: Entry) -> None:
        """Write ``entry`` to its file, drop the files it covers, and keep the
        budget."""
        token_bytes = _token_bytes(entry.tokens)
        header = json.dumps(
            {
                "format": FORMAT,
                "namespace": entry.namespace,
                "runtime": self.runtime,
                "tokens": len(entry.tokens),
                "size": entry.size,
                "window": entry.window,
                "prefix": entry.prefix,
                "checksum": _checksum(token_bytes, entry.state, entry.size),
            }
        ).encode()
        path = self.directory / file_name(entry.namespace, entry.tokens)
        temporary = path.with_name(path.name + ".tmp")
        with temporary.open("wb") as file:
            file.write(MAGIC)
            file.write(struct.pack("<I", len(header)))
            file.write(header)
            file.write(token_bytes)
            file.write(memoryview(entry.state).cast("B")[: entry.size])
        os.replace(temporary, path)
        written = self._read_header(path)
        with self._lock:
            old = self._index.pop(path.name, None)
            if old is not None:
                self._bytes -= old.file_bytes
            self._index[path.name] = written
            self._bytes += written.file_bytes
            self._writes += 1
            covered = [
                other
                for other in self._index.values()
                if other is not written
                and other.namespace == written.namespace
                and other.runtime == written.runtime
                and len(other.tokens) <= len(written.tokens)
                and common_prefix(other.tokens, written.tokens) == len(other.tokens)
                and written.usable(len(other.tokens) - 1)
            ]
        for other in covered:
            self._delete(other)
        self._evict()

    def _evict(self) -> None:
        while True:
            with self._lock:
                if self._bytes <= self.budget_bytes or not self._index:
                    return
                oldest = min(self._index.values(), key=lambda e: e.used)
            self._delete(oldest)

    def _delete(self, entry: DiskEntry) -> None:
        entry.path.unlink(missing_ok=True)
        self._forget(entry)

    def _forget(self, entry: DiskEntry) -> None:
        with self._lock:
            if self._index.get(entry.path.name) is entry:
                del self._index[entry.path.name]
                self._bytes -= entry.file_bytes

    def fingerprints(self) -> list[list[str]]:
        """The routing hashes of this runtime's files, most recently used
        first (see ``HostCache.fingerprints``)."""
        with self._lock:
            ordered = sorted(self._index.values(), key=lambda e: -e.used)
            return [e.prefix for e in ordered if e.runtime == self.runtime]

    def stats(self) -> DiskCacheStats:
        with self._lock:
            return DiskCacheStats(
                files=len(self._index),
                bytes=self._bytes,
                budget_bytes=self.budget_bytes,
                writes=self._writes,
                loads=self._loads,
                corrupt=self._corrupt,
                foreign=self._foreign,
                dropped_writes=self._dropped,
            )


def _exactly(file: Any, count: int) -> bytes:
    data: bytes = file.read(count)
    if len(data) != count:
        raise CorruptFile("file cut short")
    return data
