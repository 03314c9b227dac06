"""The results page's tables (bench.report, bench.common), without running a
benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")  # a benchmark-only requirement

from bench import common, dispatch, report

MEDIANS = [
    {
        "replicas": 1,
        "tokens_per_stream": 64,
        "tokens": 4096,
        "seconds": 0.35,
        "tokens_per_s": 11651.0,
        "requests_per_s": 182.04,
        "messages_per_s": 190.58,
        "tokens_per_message": 59.36,
    },
    {
        "replicas": 2,
        "tokens_per_stream": 64,
        "tokens": 4096,
        "seconds": 0.25,
        "tokens_per_s": 16031.0,
        "requests_per_s": 250.48,
        "messages_per_s": 268.79,
        "tokens_per_message": 56.88,
    },
]


def dispatch_result(**fields: Any) -> dict[str, Any]:
    return {
        "name": "dispatch",
        "title": "Dispatch capacity",
        "machine": "2 cores",
        "model": "a model",
        "columns": dispatch.COLUMNS,
        "notes": [],
        "goals": [],
        **fields,
    }


def table_lines(section: str) -> list[str]:
    return [line for line in section.splitlines() if line.startswith("|")]


def test_rows_that_are_figures_are_shown_as_the_benchmark_tabulates_them() -> None:
    # A dispatch result written while its medians (dicts) replaced the table's
    # cells under "rows": the table showed their keys in every row.
    lines = table_lines(report.section(dispatch_result(rows=MEDIANS), None))
    assert lines[2:] == [
        "| 64 | 1 | 11651 | 182.0 | 191 | 59.4 | 1.00x |",
        "| 64 | 2 | 16031 | 250.5 | 269 | 56.9 | 1.38x |",
    ]
    assert not any("tokens_per_stream" in line for line in lines)


def test_a_result_with_cells_and_medians_shows_its_cells() -> None:
    result = dispatch_result(
        rows=[[str(cell) for cell in row] for row in dispatch.table_rows(MEDIANS)],
        medians=MEDIANS,
    )
    lines = table_lines(report.section(result, None))
    assert lines[2] == "| 64 | 1 | 11651 | 182.0 | 191 | 59.4 | 1.00x |"
    assert report.dispatch_medians(result) == MEDIANS


def test_a_table_refuses_a_row_that_is_not_its_cells() -> None:
    with pytest.raises(ValueError, match="not a row of 2 cells"):
        common.table(["a", "b"], [{"a": 1, "b": 2}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="not a row of 2 cells"):
        common.table(["a", "b"], [[1, 2, 3]])


def test_raw_figures_may_not_replace_the_table(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(common, "software", lambda: "Python")
    with pytest.raises(ValueError, match="replace the document's rows"):
        common.report(
            "dispatch",
            title="Dispatch capacity",
            columns=["a"],
            rows=[[1]],
            notes=[],
            data={"rows": MEDIANS},
        )
    assert list(tmp_path.iterdir()) == []
