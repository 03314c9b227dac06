"""Shared pieces of the benchmarks: the fleet they run on and how they report.

Benchmarks print their figures and write them as JSON and a Markdown table
under ``docs/benchmarks/``.  Every figure is compared with a baseline measured
in the same run, on the same machine and model.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "paddler_project.settings")

RESULTS = ROOT / "docs" / "benchmarks"
MODEL = ROOT / "var" / "models" / "gemma3-270m-q4_k_m.gguf"
MODEL_NAME = "Gemma 3 270M Q4_K_M (demo model)"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def goal(text: str, met: bool, figure: str) -> dict[str, Any]:
    """A goal of the issue, the figure that decides it, and whether it is met."""
    return {"goal": text, "met": met, "figure": figure}


def goal_line(entry: dict[str, Any]) -> str:
    verdict = "met" if entry["met"] else "NOT met"
    return f"Goal: {entry['goal']}: {verdict} ({entry['figure']})."


def report(
    name: str,
    *,
    title: str,
    columns: list[str],
    rows: list[list[Any]],
    notes: list[str],
    data: dict[str, Any],
    goals: list[dict[str, Any]] | None = None,
) -> None:
    """Print the table and write ``docs/benchmarks/<name>.{json,md}``.

    The JSON holds the table, the notes and the goals as well as the raw
    figures (``data``), so that ``bench.report`` can build the results page
    from the JSON files alone.
    """
    goals = goals or []
    document = {
        "name": name,
        "title": title,
        "machine": machine(),
        "model": MODEL_NAME,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "software": software(),
        "columns": columns,
        "rows": [[str(cell) for cell in row] for row in rows],
        "notes": notes,
        "goals": goals,
    }
    # A figure under one of the document's own keys would replace it: raw
    # medians under "rows" once replaced the dispatch table's cells.
    if clash := sorted(document.keys() & data.keys()):
        raise ValueError(f"data would replace the document's {', '.join(clash)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    markdown = (
        f"## {title}\n\n{context_line()}\n\n"
        + table(columns, rows)
        + "\n"
        + "".join(f"- {line}\n" for line in [*map(goal_line, goals), *notes])
    )
    print(markdown)
    (RESULTS / f"{name}.md").write_text(markdown)
    document.update(data)
    (RESULTS / f"{name}.json").write_text(json.dumps(document, indent=2) + "\n")


def software() -> str:
    return (
        f"Python {platform.python_version()}, "
        f"llama-cpp-python {metadata.version('llama-cpp-python')}"
    )


def context_line() -> str:
    return f"Machine: {machine()}. Model: {MODEL_NAME}."


def table(columns: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table: one cell per column in each row, in their order."""
    for row in rows:
        # A dict would give its keys as the cells.
        if isinstance(row, Mapping) or len(row) != len(columns):
            raise ValueError(f"not a row of {len(columns)} cells: {row!r}")
    header = f"| {' | '.join(columns)} |\n|{'---|' * len(columns)}\n"
    return header + "".join(
        f"| {' | '.join(str(cell) for cell in row)} |\n" for row in rows
    )


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    """The body of an HTTP/1.1 chunked response, its head already read.

    Joined before anything looks into it: a marker may straddle two chunks.
    For the bare clients of the benchmarks, which must cost the machine far
    less than the stack they measure (httpx does not).
    """
    body = bytearray()
    while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
        body += await reader.readexactly(size + 2)
        del body[-2:]
    await reader.readuntil(b"\r\n")  # the empty trailer
    return bytes(body)
