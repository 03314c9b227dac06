"""Figures for the dashboard's charts, from request log records.

Framework-free.  Records are ``balancer.request_log.RequestRecord``s;
each counts in the time bucket it finished in.  Bucket edges are multiples of
the bucket length, so that two snapshots taken a moment apart agree on every
bucket but the newest.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

WINDOW_S = 300
BUCKET_S = 5
# The figures each chart plots: a record field, averaged per bucket.
SERIES = ("tokens_per_second", "time_to_first_token_ms", "queue_wait_ms")
# A rate needs two tokens at least: the time of one token is no duration.
MIN_TOKENS_FOR_RATE = 2
# Outcomes that are no failure of the platform.
CALM_OUTCOMES = ("done", "cancelled")


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def figure(record: Mapping[str, Any], name: str) -> float | None:
    """One of ``SERIES`` of a record; None where unknown or meaningless."""
    if name == "tokens_per_second":
        generated = _number(record.get("generated_tokens")) or 0
        if generated < MIN_TOKENS_FOR_RATE:
            return None
    return _number(record.get(name))


def window_end(now: float, bucket_s: int = BUCKET_S) -> float:
    """The end of the newest bucket: ``now`` rounded up to a bucket edge."""
    return float(math.ceil(now / bucket_s) * bucket_s)


def chart_series(
    records: Iterable[Mapping[str, Any]],
    *,
    now: float,
    window_s: int = WINDOW_S,
    bucket_s: int = BUCKET_S,
) -> dict[str, Any]:
    """Per bucket of the last ``window_s``: requests, errors, and the means of
    ``SERIES`` (None where no request finished)."""
    count = window_s // bucket_s
    end = window_end(now, bucket_s)
    start = end - count * bucket_s
    buckets: list[list[Mapping[str, Any]]] = [[] for _ in range(count)]
    for record in records:
        finished = _number(record.get("finished_at"))
        if finished is None or not start <= finished < end:
            continue
        buckets[int((finished - start) // bucket_s)].append(record)
    series: dict[str, Any] = {
        "bucket_s": bucket_s,
        "window_s": count * bucket_s,
        "end": end,
        "requests": [len(bucket) for bucket in buckets],
        "errors": [
            sum(1 for r in bucket if str(r.get("outcome")) not in CALM_OUTCOMES)
            for bucket in buckets
        ],
    }
    for name in SERIES:
        series[name] = [
            _mean(
                [
                    value
                    for value in (figure(record, name) for record in bucket)
                    if value is not None
                ]
            )
            for bucket in buckets
        ]
    return series


def summary(
    records: Iterable[Mapping[str, Any]], *, now: float, last_s: int = 60
) -> dict[str, Any]:
    """Headline figures of the requests that finished in the last ``last_s``."""
    recent = [
        record
        for record in records
        if (finished := _number(record.get("finished_at"))) is not None
        and now - last_s <= finished <= now
    ]
    figures: dict[str, Any] = {
        "last_s": last_s,
        "requests": len(recent),
        "errors": sum(1 for r in recent if str(r.get("outcome")) not in CALM_OUTCOMES),
        "generated_tokens": sum(
            int(_number(r.get("generated_tokens")) or 0) for r in recent
        ),
    }
    for name in SERIES:
        figures[name] = _mean(
            [v for v in (figure(r, name) for r in recent) if v is not None]
        )
    return figures
