"""Fleet and request metrics: StatsD over UDP and Prometheus at ``/metrics``.

Fleet gauges (slots, buffer, per agent) describe shared state, so with several
web replicas only one of them sends them to StatsD at a time: the one holding a
short Redis lease.  Request counters and timings are each replica's own: every
replica sends its requests' figures to StatsD, and adds them to counters in
Redis, which ``/metrics`` reads, so any replica answers for the whole tier.

- ``counters``: the tier-wide request counters in Redis, written and read.
- ``statsd_reporting``: the StatsD client, request figures, the gauge loop.
- ``prometheus``: the collector behind ``/metrics`` and its text.
"""

from __future__ import annotations

from balancer.metrics.counters import count_request, count_requests, store_requests
from balancer.metrics.prometheus import prometheus_text
from balancer.metrics.statsd_reporting import report_fleet, send_request, statsd_client

__all__ = [
    "count_request",
    "count_requests",
    "prometheus_text",
    "report_fleet",
    "send_request",
    "statsd_client",
    "store_requests",
]
