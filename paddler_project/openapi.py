"""The schema of the whole HTTP surface: drf-spectacular's of the DRF views,
with the plain views' paths added (a postprocessing hook)."""

from __future__ import annotations

from typing import Any

from balancer.api import openapi as management
from inference import openapi as inference


def add_plain_views(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    paths = result.setdefault("paths", {})
    for described in (management.PATHS, inference.PATHS):
        for path, item in described.items():
            paths.setdefault(path, {}).update(item)
    components = result.setdefault("components", {})
    components.setdefault("schemas", {}).update(inference.COMPONENTS)
    components.setdefault("securitySchemes", {}).update(inference.SECURITY_SCHEMES)
    result["paths"] = dict(sorted(paths.items()))
    return result
