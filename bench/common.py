"""Shared pieces of the benchmarks: the fleet they run on and how they report.

Benchmarks print their figures and write them as JSON and a Markdown table
under ``docs/benchmarks/``.  Every figure is compared with a baseline measured
in the same run, on the same machine and model.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "paddler_project.settings")

RESULTS = ROOT / "docs" / "benchmarks"
MODEL = ROOT / "var" / "models" / "gemma3-270m-q4_k_m.gguf"


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


def report(
    name: str,
    *,
    title: str,
    columns: list[str],
    rows: list[list[Any]],
    notes: list[str],
    data: dict[str, Any],
) -> None:
    """Print the table and write ``docs/benchmarks/<name>.{json,md}``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    header = f"| {' | '.join(columns)} |\n|{'---|' * len(columns)}\n"
    body = "".join(f"| {' | '.join(str(cell) for cell in row)} |\n" for row in rows)
    context = f"Machine: {machine()}. Model: Gemma 3 270M Q4_K_M (demo model)."
    markdown = f"## {title}\n\n{context}\n\n{header}{body}\n" + "".join(
        f"- {note}\n" for note in notes
    )
    print(markdown)
    (RESULTS / f"{name}.md").write_text(markdown)
    (RESULTS / f"{name}.json").write_text(
        json.dumps({"machine": machine(), **data}, indent=2) + "\n"
    )
