"""The dashboard's figures and the panel's words, without a server."""

from __future__ import annotations

from typing import Any

from balancer.panel import stats
from balancer.panel.words import (
    explain_issue,
    explain_status,
    format_ms,
    outcome_badge,
    outcome_matches,
    request_row,
)


def record(finished_at: float, **fields: Any) -> dict[str, Any]:
    return {
        "finished_at": finished_at,
        "outcome": "done",
        "generated_tokens": 10,
        "tokens_per_second": 20.0,
        "time_to_first_token_ms": 100.0,
        "queue_wait_ms": 1.0,
        **fields,
    }


def test_each_request_counts_in_the_bucket_it_finished_in() -> None:
    now = 1_000_002.0  # the newest bucket is [1_000_000, 1_000_005)
    series = stats.chart_series(
        [
            record(now, tokens_per_second=10.0),
            record(now - 1, tokens_per_second=30.0, time_to_first_token_ms=None),
            record(now - 6, outcome="504", tokens_per_second=None),
            record(now - 400),  # outside the window
        ],
        now=now,
    )
    assert series["end"] == 1_000_005.0
    assert len(series["requests"]) == stats.WINDOW_S // stats.BUCKET_S
    assert series["requests"][-2:] == [1, 2]
    assert series["errors"][-2:] == [1, 0]
    assert series["tokens_per_second"][-2:] == [None, 20.0]
    # A request without a first token does not pull the mean down.
    assert series["time_to_first_token_ms"][-1] == 100.0
    assert series["queue_wait_ms"][:-2] == [None] * (len(series["requests"]) - 2)


def test_a_rate_needs_two_tokens_at_least() -> None:
    now = 1_000_002.0
    one_token = record(now, generated_tokens=1, tokens_per_second=140_000.0)
    series = stats.chart_series([one_token, record(now)], now=now)
    assert series["tokens_per_second"][-1] == 20.0
    assert stats.summary([one_token], now=now)["tokens_per_second"] is None
    assert request_row(one_token)["tokens_per_second"] is None


def test_bucket_edges_do_not_move_between_snapshots() -> None:
    records = [record(1_000_001.0)]
    first = stats.chart_series(records, now=1_000_001.5)
    second = stats.chart_series(records, now=1_000_004.5)
    assert first == second


def test_summary_covers_the_last_minute() -> None:
    now = 5_000.0
    figures = stats.summary(
        [
            record(now - 10, generated_tokens=7, tokens_per_second=10.0),
            record(now - 20, outcome="502", generated_tokens=3),
            record(now - 30, outcome="cancelled", tokens_per_second=None),
            record(now - 120),
        ],
        now=now,
    )
    assert figures["requests"] == 3
    assert figures["errors"] == 1
    assert figures["generated_tokens"] == 20
    assert figures["tokens_per_second"] == 15.0


def test_issues_are_explained_in_plain_words() -> None:
    assert "does not exist" in explain_issue({"ModelFileDoesNotExist": "/m.gguf"})
    assert "/m.gguf" in explain_issue({"ModelFileDoesNotExist": "/m.gguf"})
    stopped = explain_issue({"EngineStopped": {"error": "the engine loop ended: x"}})
    assert stopped.startswith("The agent's decode loop stopped (the engine loop")
    stalled = explain_issue({"EngineStalled": {"error": "not gone round for 31 s"}})
    assert "stuck (not gone round for 31 s)" in stalled
    assert "override" in explain_issue("UnableToFindChatTemplate")
    compile_error = explain_issue(
        {
            "ChatTemplateDoesNotCompile": {
                "error": "unexpected '}'",
                "template_content": "{{",
            }
        }
    )
    assert compile_error == "The chat template does not compile: unexpected '}'."
    hub = explain_issue(
        {"HuggingFaceModelDoesNotExist": {"model_path": "a/b/main/c.gguf"}}
    )
    assert hub == "Hugging Face has no model a/b/main/c.gguf."
    local = {"ModelFileDoesNotExist": {"model_path": "/m.gguf"}}
    assert (
        explain_issue(local) == "The model file /m.gguf does not exist on this agent."
    )
    assert explain_issue({"SomethingNew": 3}) == "SomethingNew: 3"
    assert explain_status("Fresh").startswith("Applying")
    assert explain_status("Nonsense") == "Unknown state: Nonsense"


def test_outcomes_become_badges_and_filters() -> None:
    assert outcome_badge("done").tone == "ok"
    assert outcome_badge("cancelled").tone == "muted"
    for code in ("502", "503", "504", "ChatTemplateError"):
        assert outcome_badge(code).tone == "error"
    assert "Buffer full" in outcome_badge("503").title
    failed = {"outcome": "504"}
    assert outcome_matches(failed, "errors")
    assert not outcome_matches(failed, "done")
    assert outcome_matches(failed, "all")
    assert outcome_matches({"outcome": "cancelled"}, "cancelled")


def test_durations_read_well() -> None:
    assert format_ms(3.21) == "3.2 ms"
    assert format_ms(381.4) == "381 ms"
    assert format_ms(12_400) == "12.4 s"
    assert format_ms(None) == "\N{EN DASH}"


def test_a_projection_that_cannot_be_loaded_is_explained() -> None:
    issue = {"MultimodalProjectionCannotBeLoaded": {"model_path": "/p/mmproj.gguf"}}
    sentence = explain_issue(issue)
    assert "multimodal projection /p/mmproj.gguf cannot be loaded" in sentence
