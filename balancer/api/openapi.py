"""OpenAPI descriptions of the management streams and ``/metrics``.

Plain async views (``balancer.views``), so written here; the snapshots they
stream are the schemas drf-spectacular generates for the plain GETs.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

OPERATOR: list[Schema] = [{"managementToken": []}, {"staffSession": []}]
UNAUTHENTICATED = {"401": {"description": "No management token or staff session"}}


def sse_operation(summary: str, operation_id: str, snapshot: str) -> Schema:
    return {
        "get": {
            "tags": ["management"],
            "summary": summary,
            "operationId": operation_id,
            "security": OPERATOR,
            "responses": {
                "200": {
                    "description": 'Server-Sent Events: a "data: " line with '
                    f"the {snapshot} as JSON whenever it changes (the first at "
                    'once), and ": keep-alive" comments while it does not.',
                    "content": {
                        "text/event-stream": {
                            "schema": {"type": "string"},
                            "x-line-schema": {
                                "$ref": f"#/components/schemas/{snapshot}"
                            },
                        }
                    },
                },
                **UNAUTHENTICATED,
            },
        }
    }


PATHS: dict[str, Schema] = {
    "/api/v1/agents/stream": sse_operation(
        "The agents, as they change", "agents_stream", "AgentsSnapshot"
    ),
    "/api/v1/buffered_requests/stream": sse_operation(
        "The buffer, as it changes", "buffered_requests_stream", "BufferedRequests"
    ),
    "/metrics": {
        "get": {
            "tags": ["management"],
            "summary": "Prometheus metrics",
            "operationId": "metrics",
            "security": OPERATOR,
            "responses": {
                "200": {
                    "description": "Prometheus text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                **UNAUTHENTICATED,
            },
        }
    },
}
